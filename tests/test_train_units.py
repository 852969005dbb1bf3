"""The pieces of the training engine: strategies, objectives' loss masks, curriculum, unfreezing,
and one-line errors on bad input."""

from __future__ import annotations

import json
import sys

import pytest
import torch
from _train_data import clause_rows, one_torch_thread, write_data  # noqa: F401

from tunelens.cli import main
from tunelens.config import LoraConfig, TrackingConfig, TrainConfig
from tunelens.data.templates import render_causal, render_prompt
from tunelens.errors import TunelensError
from tunelens.train import StrategySpec, apply_strategy, train
from tunelens.train.callbacks import GradualUnfreezing
from tunelens.train.curriculum import example_losses, order
from tunelens.train.objectives import format_rows, to_dataset
from tunelens.train.strategies import count_params, load_base
from tunelens.train.trainer_args import completion_positions_only, sft_config

OFF = TrackingConfig(enabled=False)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("unit-data"))


def _trainable(model) -> set[str]:
    return {n for n, p in model.named_parameters() if p.requires_grad}


def test_lora_targets_only_named_modules(micro_model):
    model, _ = micro_model
    spec = StrategySpec("lora", lora=LoraConfig(rank=4, target_modules=["q_proj", "v_proj"]))
    tuned = apply_strategy(model, spec)
    names = _trainable(tuned)
    assert names and all("lora_" in n for n in names)
    assert {n.split(".")[-4] for n in names} == {"q_proj", "v_proj"}
    trainable, total = count_params(tuned)
    # 2 layers x 2 modules x (A: 4x32 + B: 32x4)
    assert trainable == 2 * 2 * (4 * 32 + 32 * 4) and total > trainable


def test_freeze_trains_top_layers_and_head(micro_model):
    model, _ = micro_model
    names = _trainable(apply_strategy(model, StrategySpec("freeze", freeze_top_k=1)))
    assert "lm_head.weight" in names and "model.norm.weight" in names
    assert any(n.startswith("model.layers.1.") for n in names)
    assert not any(n.startswith(("model.layers.0.", "model.embed_tokens")) for n in names)


def test_dropout_override_reaches_attention(micro_model):
    model, _ = micro_model
    apply_strategy(model, StrategySpec("full", dropout=0.3))
    assert model.config.attention_dropout == 0.3
    assert all(layer.self_attn.attention_dropout == 0.3 for layer in model.model.layers)


def test_qlora_base_is_4bit_nf4(micro_model_dir):
    import bitsandbytes as bnb

    spec = StrategySpec.from_config("qlora", TrainConfig())
    model, _ = load_base(str(micro_model_dir), spec)
    tuned = apply_strategy(model, spec)
    base_layers = [m.base_layer for m in tuned.modules() if hasattr(m, "lora_A")]
    assert len(base_layers) == 14  # 7 linear modules x 2 layers, all adapted ('all-linear')
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in base_layers)
    state = base_layers[0].weight.quant_state
    assert state.quant_type == "nf4" and state.nested  # double quantisation
    assert {n for n in _trainable(tuned)} == {n for n, _ in tuned.named_parameters() if "lora_" in n}


def _prepared(model, tokenizer, rows, objective, tmp_path, packing=False):
    from datasets import Dataset
    from trl import SFTTrainer

    spec = StrategySpec("full")
    cfg = TrainConfig(max_length=256, packing=packing)  # an example is ~80 tokens
    trainer = SFTTrainer(model=model, args=sft_config(cfg, spec, objective, tmp_path),
                         train_dataset=Dataset.from_list(format_rows(rows, tokenizer, objective)),
                         processing_class=tokenizer)
    return trainer.train_dataset


def test_instruct_masks_prompt_and_ends_with_eos(micro_model, tmp_path):
    model, tokenizer = micro_model
    rows = clause_rows(4)
    prepared = _prepared(model, tokenizer, rows, "instruct", tmp_path)
    for row, ex in zip(rows, prepared, strict=True):
        prompt_ids = tokenizer(render_prompt(tokenizer, row["prompt"]))["input_ids"]
        n = len(prompt_ids)
        assert ex["input_ids"][:n] == prompt_ids  # TRL saw exactly render_prompt's text
        assert ex["labels"][:n] == [-100] * n
        assert ex["labels"][n:] == ex["input_ids"][n:] and len(ex["labels"]) > n
        assert ex["input_ids"][-1] == tokenizer.eos_token_id
        assert tokenizer.decode(ex["input_ids"][n:-1]).strip() == row["completion"]


def test_instruct_mask_survives_packing(micro_model, tmp_path):
    model, tokenizer = micro_model
    rows = clause_rows(6)
    packed = _prepared(model, tokenizer, rows, "instruct", tmp_path, packing=True)
    n_prompt = sum(len(tokenizer(render_prompt(tokenizer, r["prompt"]))["input_ids"]) for r in rows)
    labels = [lab for ex in packed for lab in ex["labels"]]
    assert sum(lab == -100 for lab in labels) == n_prompt
    assert len(packed) < len(rows)  # examples really were packed together


def test_causal_trains_on_every_token(micro_model, tmp_path):
    model, tokenizer = micro_model
    rows = clause_rows(4)
    prepared = _prepared(model, tokenizer, rows, "causal", tmp_path)
    for row, ex in zip(rows, prepared, strict=True):
        expected = tokenizer(render_causal(row["prompt"], row["completion"]) + tokenizer.eos_token)
        assert ex["input_ids"] == expected["input_ids"]
        assert ex["labels"] == ex["input_ids"] and -100 not in ex["labels"]


def test_curriculum_orders_by_length_and_by_base_loss(micro_model):
    model, tokenizer = micro_model
    examples = format_rows(clause_rows(12), tokenizer, "instruct")
    by_len = order(examples, "length", tokenizer)
    lengths = [len(tokenizer(e["prompt"] + e["completion"])["input_ids"]) for e in by_len]
    assert lengths == sorted(lengths)
    losses = example_losses(model, tokenizer, examples)
    by_loss = order(examples, "loss", tokenizer, model)
    assert [losses[examples.index(e)] for e in by_loss] == sorted(losses)
    # the per-example loss is the model's own completion-only loss
    ex = examples[0]
    ids = tokenizer(ex["prompt"] + ex["completion"], return_tensors="pt")["input_ids"]
    labels = ids.clone()
    labels[0, : len(tokenizer(ex["prompt"])["input_ids"])] = -100
    with torch.no_grad():
        reference = model(input_ids=ids, labels=labels).loss.item()
    assert losses[0] == pytest.approx(reference, rel=1e-4)


def test_gradual_unfreezing_opens_top_down(micro_model):
    model, _ = micro_model
    cb = GradualUnfreezing()
    cb._build(model)  # groups: head+norm, layer 1, layer 0, embeddings
    assert len(cb.groups) == 4
    seen = []
    for step in range(8):
        cb._apply(step, 8)
        layers = model.model.layers
        seen.append((model.lm_head.weight.requires_grad, layers[1].mlp.up_proj.weight.requires_grad,
                     layers[0].mlp.up_proj.weight.requires_grad,
                     model.model.embed_tokens.weight.requires_grad))
    assert seen[0] == (True, False, False, False)
    assert seen[2] == (True, True, False, False)
    assert seen[4] == (True, True, True, False)
    assert seen[7] == (True, True, True, True)


def test_gradual_unfreezing_keeps_bottom_frozen_early(micro_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = TrainConfig(max_steps=2, full_learning_rate=1e-2, batch_size=4, max_length=256,
                      gradual_unfreezing=True, warmup_ratio=0.0)
    info = train(str(micro_model_dir), data_dir, tmp_path / "gu", "full", "instruct", cfg, OFF)
    assert info["trainable_params"] == info["total_params"]
    before = load_file(micro_model_dir / "model.safetensors")
    after = load_file(tmp_path / "gu" / "model.safetensors")
    # 2 steps over 4 groups: step 0 trains the head, step 1 head + layers 1 and 0; never embeddings
    assert after["model.embed_tokens.weight"].equal(before["model.embed_tokens.weight"])
    assert not after["lm_head.weight"].equal(before["lm_head.weight"])
    assert not after["model.layers.0.mlp.up_proj.weight"].equal(before["model.layers.0.mlp.up_proj.weight"])


# ---- bad input: one line, non-zero exit, nothing written ----------------------------------------


def _cli(model, data, out, strategy="lora", objective="instruct"):
    return main(["train", "--model", str(model), "--data", str(data), "--strategy", strategy,
                 "--objective", objective, "--out", str(out), "--max-steps", "1"])


def _nothing_written(parent, out):
    return not out.exists() and not any(p.name.startswith(f".{out.name}") for p in parent.iterdir())


@pytest.mark.parametrize(("strategy", "objective", "message"), [
    ("lorax", "instruct", "'lorax': expected one of full, lora, qlora, dora, freeze"),
    ("lora", "chat", "'chat': expected one of instruct, causal"),
])
def test_cli_rejects_unknown_strategy_or_objective(strategy, objective, message, micro_model_dir,
                                                   data_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(micro_model_dir, data_dir, out, strategy, objective) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert _nothing_written(tmp_path, out)


def test_qlora_without_bitsandbytes(monkeypatch, micro_model_dir, data_dir, tmp_path):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import now raises ImportError
    out = tmp_path / "run"
    with pytest.raises(TunelensError, match="needs bitsandbytes"):
        train(str(micro_model_dir), data_dir, out, "qlora", "instruct", TrainConfig(max_steps=1), OFF)
    assert _nothing_written(tmp_path, out)


def test_target_modules_that_match_nothing(micro_model_dir, data_dir, tmp_path):
    cfg = TrainConfig(max_steps=1, lora=LoraConfig(target_modules=["qkv_proj"]))
    out = tmp_path / "run"
    with pytest.raises(TunelensError, match=r"match no module.*q_proj"):
        train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg)
    assert _nothing_written(tmp_path, out)
    assert not (tmp_path / "mlflow.db").exists()


def test_data_without_needed_fields(micro_model_dir, tmp_path, capsys):
    data = write_data(tmp_path / "data")
    rows = [json.loads(line) for line in (data / "train.jsonl").read_text().splitlines()]
    del rows[2]["completion"]
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "run"
    assert _cli(micro_model_dir, data, out) == 2
    assert "train.jsonl:3: field 'completion': missing" in capsys.readouterr().err
    assert _nothing_written(tmp_path, out)


def test_model_that_is_not_a_causal_lm(data_dir, tmp_path, capsys):
    from transformers import BertConfig

    encoder = tmp_path / "encoder"
    BertConfig(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
               architectures=["BertModel"]).save_pretrained(encoder)
    out = tmp_path / "run"
    assert _cli(encoder, data_dir, out) == 2
    assert "not a causal language model" in capsys.readouterr().err
    assert _nothing_written(tmp_path, out)


def test_to_dataset_has_trl_columns(micro_model):
    _, tokenizer = micro_model
    rows = clause_rows(3)
    assert to_dataset(rows, tokenizer, "instruct").column_names == ["prompt", "completion"]
    assert to_dataset(rows, tokenizer, "causal").column_names == ["text"]
    with pytest.raises(TunelensError, match="unknown objective"):
        format_rows(rows, tokenizer, "chat")


def test_packing_defaults_follow_the_objective(tmp_path):
    spec = StrategySpec("lora")
    assert sft_config(TrainConfig(), spec, "causal", tmp_path).packing is True
    assert sft_config(TrainConfig(), spec, "instruct", tmp_path).packing is False
    assert sft_config(TrainConfig(packing=True), spec, "instruct", tmp_path).packing is True
    curriculum = sft_config(TrainConfig(curriculum="length"), spec, "causal", tmp_path)
    assert curriculum.packing is False and curriculum.train_sampling_strategy == "sequential"
    full = sft_config(TrainConfig(learning_rate=1e-3), StrategySpec("full"), "causal", tmp_path)
    assert full.learning_rate == pytest.approx(2e-4) and full.gradient_checkpointing is False


def test_chat_template_prompt_ids_match_generation(micro_model, tmp_path):
    """With a chat template that writes BOS, TRL must see the ids generation encodes (one BOS)."""
    model, tokenizer = micro_model
    tokenizer.chat_template = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>\\n"
                               "{{ m['content'] }}\\n{% endfor %}{% if add_generation_prompt %}"
                               "<|assistant|>\\n{% endif %}")
    rows = clause_rows(2)
    prepared = _prepared(model, tokenizer, rows, "instruct", tmp_path)
    for row, ex in zip(rows, prepared, strict=True):
        text = render_prompt(tokenizer, row["prompt"])
        generation_ids = tokenizer(text, add_special_tokens=False)["input_ids"]  # as infer encodes it
        assert generation_ids[0] == tokenizer.bos_token_id and generation_ids[1] != tokenizer.bos_token_id
        assert ex["input_ids"][: len(generation_ids)] == generation_ids
        assert ex["labels"][: len(generation_ids)] == [-100] * len(generation_ids)
        assert ex["input_ids"][-1] == tokenizer.eos_token_id


def test_qlora_unpacks_weights_bitsandbytes_packed_for_cpu_inference(micro_model_dir, tmp_path):
    """An eval forward before training (the loss curriculum) lets bitsandbytes repack 4-bit weights
    for its no-autograd CPU kernel; apply_strategy must hand the trainer unpacked weights."""
    from transformers import AutoTokenizer

    from tunelens.models.zoo import new_llama, save_checkpoint
    from tunelens.train.strategies import load_base as load

    tokenizer = AutoTokenizer.from_pretrained(micro_model_dir)
    save_checkpoint(new_llama(tokenizer, hidden_size=64, num_layers=1, num_heads=2), tokenizer, tmp_path)
    spec = StrategySpec.from_config("qlora", TrainConfig())
    model, _ = load(str(tmp_path), spec)
    ids = torch.tensor([tokenizer("The width of a stair")["input_ids"]])
    model.eval()
    with torch.no_grad():
        before = model(input_ids=ids).logits
    packed = [m for m in model.modules() if getattr(getattr(m, "weight", None), "quant_state", None)
              is not None and getattr(m.weight.quant_state, "packing_format_for_cpu", False)]
    if not packed:
        pytest.skip("this CPU has no AVX512-BF16: bitsandbytes does not repack")
    tuned = apply_strategy(model, spec)
    assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in packed)
    tuned.eval()
    with torch.no_grad():
        torch.testing.assert_close(tuned(input_ids=ids).logits, before, atol=2e-2, rtol=0)


def test_strategy_and_objective_implementations_match_the_catalog():
    """The registry of names and the tables that implement them cannot drift apart."""
    from tunelens.train import catalog, objectives, strategies

    assert set(strategies._APPLY) == set(catalog.STRATEGIES) - {catalog.UNTRAINED}  # none: no model
    assert set(objectives._FORMAT) == set(catalog.OBJECTIVES)
    assert set(catalog.ADAPTER_STRATEGIES) <= set(catalog.STRATEGIES)
    assert sorted(catalog.STRATEGY_ORDER) == sorted(catalog.STRATEGIES)


def test_resume_key_follows_content_not_paths_or_times(micro_model_dir, tmp_path):
    """An interrupted run resumes only when everything it reads has the same content."""
    import os
    import shutil

    from tunelens.train.runner import read_inputs

    data = write_data(tmp_path / "data")
    model = shutil.copytree(micro_model_dir, tmp_path / "model")

    def key(config=TrainConfig(), model_path=model):
        return read_inputs(str(model_path), data, "lora", "instruct", config, None).fingerprint()

    base = key()
    os.utime(data / "train.jsonl", ns=(1, 1))  # touched, same bytes
    assert key() == base
    assert key(model_path=shutil.copytree(model, tmp_path / "moved")) == base  # same model elsewhere
    assert key(TrainConfig(max_steps=7)) != base

    val = (data / "val.jsonl").read_text()
    (data / "val.jsonl").write_text(val.replace("mm", "cm", 1))  # one edited row
    assert key() != base
    (data / "val.jsonl").write_text(val)
    assert key() == base

    config = json.loads((model / "config.json").read_text())  # a retrained or edited base model
    (model / "config.json").write_text(json.dumps({**config, "rms_norm_eps": 1e-5}))
    assert key() != base


def test_identity_is_checked_and_defaults_to_what_the_call_knows(micro_model_dir):
    from tunelens.train.runner import run_identity

    assert run_identity("org/model", "lora", "causal", None) == {
        "name": "org/model__lora__causal", "model": "org/model", "strategy": "lora",
        "objective": "causal", "rag": False, "seed": None}
    assert run_identity(str(micro_model_dir), "full", "instruct", None)["model"] == micro_model_dir.name
    given = {"model": "tl-d2", "strategy": "lora", "objective": "instruct", "seed": 2, "prompt": "p1"}
    assert run_identity("x", "lora", "instruct", given) == {
        "name": "tl-d2__lora__instruct__p1__s2", "model": "tl-d2", "strategy": "lora",
        "objective": "instruct", "rag": False, "seed": 2, "prompt": "p1"}
    with pytest.raises(TunelensError, match="identity is full/instruct but this run trains lora"):
        run_identity("x", "lora", "instruct", {**given, "strategy": "full"})
    with pytest.raises(TunelensError, match="field 'model': missing"):
        run_identity("x", "lora", "instruct", {"strategy": "lora"})
    with pytest.raises(TunelensError, match="field 'seed': input should be a valid integer"):
        run_identity("x", "lora", "instruct", {**given, "seed": "2"})


def test_scoring_labelled_positions_only_keeps_loss_and_gradients(micro_model, tmp_path):
    """The CPU speed-up must not change what is learned: same loss, same gradients, and TRL's own
    choice restored afterwards."""
    from datasets import Dataset
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    model, tokenizer = micro_model
    args = sft_config(TrainConfig(max_length=256), StrategySpec("full"), "instruct", tmp_path)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(format_rows(clause_rows(6), tokenizer, "instruct")))
    batch = next(iter(trainer.get_train_dataloader()))

    def loss_and_grads():
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch))
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    assert trl_utils._use_triton(torch.device("cpu")) is False  # else this test proves nothing
    every_loss, every_grads = loss_and_grads()
    with completion_positions_only():
        assert trl_utils._use_triton(torch.device("cpu")) is True
        compact_loss, compact_grads = loss_and_grads()
    assert trl_utils._use_triton(torch.device("cpu")) is False
    assert compact_loss == pytest.approx(every_loss, rel=1e-5)
    assert len(compact_grads) == len(every_grads)
    for a, b in zip(compact_grads, every_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)

