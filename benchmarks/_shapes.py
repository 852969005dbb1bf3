"""Real models' shapes with fresh weights, for speed and memory benchmarks on a machine the
checkpoints cannot reach (the GPU machine reaches no hub and takes at most 64 MiB along).

A training step or an attribution pass costs what the shape costs -- layers, widths, heads,
key/value heads, vocabulary rows -- whatever the weights hold, so a seeded fresh Llama of a real
model's configuration measures the real model's speed and memory. The tokenizer is a 2,048-token
BPE trained on the bundled clauses; the extra vocabulary rows are never emitted but are projected
and normalised over at every scored position, as in the real model.
"""

from __future__ import annotations

from pathlib import Path

SHAPES = {
    # the configurations published with each checkpoint (config.json), weights left out
    "smollm2-135m": dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9,
                         num_key_value_heads=3, intermediate_size=1536, vocab_size=49152,
                         tie_word_embeddings=True),
    "llama-3.2-1b": dict(hidden_size=2048, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, intermediate_size=8192, vocab_size=128256,
                         tie_word_embeddings=True),
}


def bundled_tokenizer(vocab_size: int = 2048):
    """(BPE tokenizer trained on the bundled clauses, rules and the plain template, those rows):
    the tokenizer every fresh benchmark model uses, so all see the same token ids."""
    from tunelens.data.compliance.dataset import bundled_rows
    from tunelens.data.templates import render_plain
    from tunelens.models.zoo import train_tokenizer

    rows = bundled_rows(seed=0)
    texts = [r["prompt"] for r in rows] + [r["completion"] for r in rows] + [render_plain("")] * 50
    return train_tokenizer(texts, vocab_size=vocab_size), rows


def fresh_model(shape: str, seed: int = 0):
    """(model, tokenizer): a seeded fresh Llama of ``shape``'s configuration, in eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tok, _ = bundled_tokenizer()
    config = LlamaConfig(max_position_embeddings=2048, bos_token_id=tok.bos_token_id,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SHAPES[shape])
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).eval(), tok


def fresh_checkpoint(shape: str, out: Path) -> str:
    """``fresh_model(shape)`` saved as a checkpoint folder that every loader takes."""
    from tunelens.models.zoo import save_checkpoint

    model, tok = fresh_model(shape)
    return str(save_checkpoint(model, tok, out))
