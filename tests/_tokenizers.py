"""Tiny tokenizers in the styles of real model families, trained locally with the ``tokenizers``
library (no hub access), and micro Llama checkpoints built on them.

* ``gpt2``: byte-level BPE whose unk, BOS and EOS are all ``<|endoftext|>``, no pad (GPT-2).
* ``llama3``: byte-level BPE without unk, BOS added, EOS ``<|eot_id|>``, a reserved pad token.
* ``sentencepiece``: SentencePiece-style BPE (metaspace ``▁``, byte fallback off) with
  ``<unk>``, ``<bos>``, ``<eos>``, ``<pad>`` (Gemma's special tokens). The ``sentencepiece``
  package is not installed here; transformers' fast Gemma tokenizer is this same pipeline.
* ``smollm2``: byte-level BPE with a ChatML chat template, BOS ``<|im_start|>`` written by the
  template, EOS = pad = ``<|im_end|>`` (the end-of-turn token), unk ``<|endoftext|>`` (SmolLM2).
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

# Llama 3's shape: the template writes BOS itself, and the tokenizer also adds BOS when encoding.
LLAMA3_CHAT = ("{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
               "'<|end_header_id|>\n\n' + message['content'] + '<|eot_id|>' }}{% endfor %}"
               "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
               "{% endif %}")
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + "
          "message['content'] + '<|im_end|>' + '\\n' }}{% endfor %}"
          "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")

STYLES = {
    "gpt2": dict(special={"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                          "unk_token": "<|endoftext|>"}, add_bos=False, spm=False),
    "llama3": dict(special={"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>",
                            "pad_token": "<|finetune_right_pad_id|>"}, add_bos=True, spm=False),
    "sentencepiece": dict(special={"bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
                                   "pad_token": "<pad>"}, add_bos=True, spm=True),
    "smollm2": dict(special={"bos_token": "<|im_start|>", "eos_token": "<|im_end|>",
                             "pad_token": "<|im_end|>", "unk_token": "<|endoftext|>"},
                    add_bos=False, spm=False, chat=CHATML),
}


def style_tokenizer(style: str, texts: list[str], vocab_size: int = 400,
                    chat_template: str | None = None) -> PreTrainedTokenizerFast:
    """A ``style`` tokenizer trained on ``texts``; ``chat_template`` replaces the style's own."""
    spec = STYLES[style]
    special = spec["special"]
    names = list(dict.fromkeys(special.values()))
    unk = special.get("unk_token")
    tok = Tokenizer(models.BPE(unk_token=unk if spec["spm"] else None))
    if spec["spm"]:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
        tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
        alphabet = sorted(set("".join(texts).replace(" ", "▁")) | {"▁"})
    else:
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        alphabet = pre_tokenizers.ByteLevel.alphabet()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=names, initial_alphabet=alphabet, show_progress=False))
    if spec["add_bos"]:
        bos = special["bos_token"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, **special)
    if chat_template or spec.get("chat"):
        fast.chat_template = chat_template or spec["chat"]
    return fast


def style_checkpoint(style: str, texts: list[str], out: Path, chat_template: str | None = None) -> Path:
    """A saved micro Llama (2 layers, hidden 32) on a ``style`` tokenizer."""
    from tunelens.models.zoo import new_llama, save_checkpoint

    tokenizer = style_tokenizer(style, texts, chat_template=chat_template)
    model = new_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    return save_checkpoint(model, tokenizer, out)
