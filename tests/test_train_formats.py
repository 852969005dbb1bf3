"""Instruct models see their chat template: training, generation and attribution render the same
text in the run's prompt format, and padding never masks the label that teaches a model to stop."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from _tokenizers import LLAMA3_CHAT, style_checkpoint
from _train_data import one_torch_thread, write_data  # noqa: F401
from conftest import MICRO_CORPUS

from tunelens.config import ExplanationConfig, TrackingConfig, TrainConfig
from tunelens.errors import TunelensError
from tunelens.models.run_settings import ModelSettings, render
from tunelens.train import train

OFF = TrackingConfig(enabled=False)
QUICK = TrainConfig(max_steps=2, batch_size=4, logging_steps=1, warmup_ratio=0.0, max_length=128)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("format-data"), n_train=8, n_val=4)


@pytest.fixture(scope="module")
def smollm2_dir(tmp_path_factory):
    """Chat template, BOS written by the template, pad == EOS == the end-of-turn token."""
    return style_checkpoint("smollm2", MICRO_CORPUS, tmp_path_factory.mktemp("smol") / "m")


@pytest.fixture(scope="module")
def llama3_dir(tmp_path_factory):
    """A template that writes BOS on a tokenizer that adds BOS too (the doubled-BOS trap)."""
    return style_checkpoint("llama3", MICRO_CORPUS, tmp_path_factory.mktemp("l3") / "m", LLAMA3_CHAT)


def _session(model_dir, data_dir, work, prompt_format="auto"):
    from tunelens.train.runner import build_trainer, read_inputs

    inputs = read_inputs(str(model_dir), data_dir, "lora", "instruct", QUICK, None,
                         ModelSettings(prompt_format=prompt_format))
    return inputs, build_trainer(inputs, work, None, False)


def _prompt_len(example: dict) -> int:
    """Where TRL's completion starts: its first position with a label."""
    return next(i for i, label in enumerate(example["labels"]) if label != -100)


def test_padding_keeps_the_end_of_turn_label_when_pad_is_eos(smollm2_dir, data_dir, tmp_path):
    _, session = _session(smollm2_dir, data_dir, tmp_path / "work")
    tok, trainer = session.tokenizer, session.trainer
    assert tok.pad_token_id == tok.eos_token_id  # SmolLM2's shape
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    batch = trainer.data_collator(rows)
    lengths = [len(r["input_ids"]) for r in rows]
    assert min(lengths) < batch["labels"].shape[1]  # some rows really are padded
    for labels, row, n in zip(batch["labels"], rows, lengths, strict=True):
        prompt_len = _prompt_len(row)
        assert int(labels[n - 1]) == tok.eos_token_id  # the end-of-turn label survives padding
        assert (labels[n:] == -100).all() and (labels[:prompt_len] == -100).all()


@pytest.mark.parametrize("which", ["smollm2", "llama3", "plain"])
def test_training_sees_the_ids_generation_feeds(which, smollm2_dir, llama3_dir, micro_model_dir,
                                                data_dir, tmp_path):
    from tunelens.infer.batching import encode_prompts

    model_dir = {"smollm2": smollm2_dir, "llama3": llama3_dir, "plain": micro_model_dir}[which]
    inputs, session = _session(model_dir, data_dir, tmp_path / "work")
    tok, dataset = session.tokenizer, session.trainer.train_dataset
    fmt = "plain" if which == "plain" else "chat"
    for row, example in zip(inputs.train_rows, dataset, strict=True):
        rendered = render(tok, row["prompt"], (), fmt)
        prompt_ids = example["input_ids"][:_prompt_len(example)]
        assert prompt_ids == encode_prompts(tok, [rendered])[0]
    if which == "llama3":
        assert prompt_ids.count(tok.bos_token_id) == 1  # one BOS, not the template's and TRL's


def test_run_records_its_prompt_format_and_every_stage_reuses_it(smollm2_dir, data_dir, tmp_path):
    from tunelens.explain import explain_run
    from tunelens.infer.generate import generate_predictions

    chat, plain = tmp_path / "chat", tmp_path / "plain"
    assert train(str(smollm2_dir), data_dir, chat, "lora", "instruct", QUICK, OFF)["prompt_format"] == "chat"
    assert train(str(smollm2_dir), data_dir, plain, "lora", "instruct", QUICK, OFF,
                 prompt_format="plain")["prompt_format"] == "plain"
    test = data_dir / "val.jsonl"
    for run, start in ((chat, "<|im_start|>user\n"), (plain, "### Instruction:\n")):
        generate_predictions(str(run), test, run / "p.jsonl", progress=False)
        first = json.loads((run / "p.jsonl").read_text().splitlines()[0])
        assert first["rendered_prompt"].startswith(start)
    cfg = ExplanationConfig(max_examples=1, target="reference", heatmap=False)
    # the dataset rows carry no rendered prompt: explain renders it in the run's recorded format,
    # which is what generation used (same target log-probability as from the predictions' text)
    from_data = explain_run(str(plain), test, tmp_path / "a.parquet", cfg, progress=False)
    explain_run(str(plain), plain / "p.jsonl", tmp_path / "b.parquet", cfg, progress=False)
    as_chat = explain_run(str(plain), test, tmp_path / "c.parquet", cfg, progress=False,
                          prompt_format="chat")
    logp = {k: pd.read_parquet(tmp_path / f"{k}.parquet")["target_logprob"].iloc[0] for k in "abc"}
    assert from_data["prompt_format"] == "plain" and as_chat["prompt_format"] == "chat"
    assert logp["a"] == pytest.approx(logp["b"]) and logp["a"] != pytest.approx(logp["c"])
    frame = pd.read_parquet(tmp_path / "c.parquet")  # chat scaffolding is context, never a feature
    clauses = {r["id"]: r["prompt"] for r in map(json.loads, test.read_text().splitlines())}
    clause = clauses[frame["example_id"].iloc[0]]
    assert not frame["token"].str.contains("<|im_", regex=False).any()
    assert (frame["start"] >= 0).all() and (frame["end"] <= len(clause)).all()
    assert "".join(frame["token"]).replace(" ", "") == clause.replace(" ", "")  # the clause, whole


def test_chat_format_without_a_template_is_refused_before_anything_is_written(micro_model_dir,
                                                                              data_dir, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TunelensError, match="prompt format 'chat' but the tokenizer has no chat template"):
        train(str(micro_model_dir), data_dir, out, "lora", "instruct", QUICK, OFF, prompt_format="chat")
    assert not out.exists() and not any(tmp_path.iterdir())
