"""Merged export: the standalone checkpoint computes what base + adapter computed."""

from __future__ import annotations

import json

import pytest
import torch
from _train_data import one_torch_thread, write_data  # noqa: F401

from tunelens.cli import main
from tunelens.config import TrackingConfig, TrainConfig
from tunelens.errors import TunelensError
from tunelens.models.loading import load_for_inference, load_model
from tunelens.train import export_merged, train

CFG = TrainConfig(max_steps=4, learning_rate=2e-2, full_learning_rate=5e-3, batch_size=4,
                  max_length=256, warmup_ratio=0.0, logging_steps=2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("export-data"))


def _logits(model, tokenizer) -> torch.Tensor:
    ids = tokenizer(["The width of a stair shall be not less than 900 mm.",
                     "RULE ramp.slope <= 8.33 %"], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**ids).logits.float()


# qlora's reference runs the 4-bit base through bitsandbytes' CPU inference kernel, which computes
# in bf16 on CPUs that have AVX512-BF16: the merged fp32 model matches it to bf16 rounding, and
# matches the generic (fp32) 4-bit path as tightly as the other adapters.
@pytest.mark.parametrize(("strategy", "tolerance"), [("lora", 1e-4), ("dora", 1e-4), ("qlora", 5e-3)])
def test_merged_export_matches_base_plus_adapter(strategy, tolerance, micro_model_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    train(str(micro_model_dir), data_dir, run, strategy, "instruct", CFG, TrackingConfig(enabled=False))
    tuned, tokenizer = load_for_inference(str(run))
    expected = _logits(tuned, tokenizer)
    base, _ = load_model(str(micro_model_dir))
    effect = (_logits(base, tokenizer) - expected).abs().max().item()  # what the adapter changed
    assert effect > 1e-2

    out = export_merged(run, tmp_path / "merged")
    assert not (out / "adapter_config.json").exists() and (out / "model.safetensors").exists()
    merged, merged_tok = load_model(str(out))
    assert type(merged).__name__ == "LlamaForCausalLM"  # no PEFT wrapper, no 4-bit layers
    assert all(type(m).__name__ == "Linear" for n, m in merged.named_modules() if n.endswith("proj"))
    merged_logits = _logits(merged, merged_tok)
    assert (merged_logits - expected).abs().max().item() <= tolerance * effect
    if strategy == "qlora":
        fresh, _ = load_for_inference(str(run))
        for module in fresh.modules():  # before any forward: bnb repacks at the first one
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
        generic = _logits(fresh, tokenizer)
        assert (merged_logits - generic).abs().max().item() <= 1e-4 * effect
    provenance = json.loads((out / "export.json").read_text())
    assert provenance["merged"] and provenance["strategy"] == strategy
    assert (provenance["dequantized_from"] is not None) == (strategy == "qlora")


def test_cli_export_of_a_full_run(micro_model_dir, data_dir, tmp_path):
    run = tmp_path / "run"
    train(str(micro_model_dir), data_dir, run, "full", "causal",
          CFG.model_copy(update={"max_steps": 2}), TrackingConfig(enabled=False))
    assert main(["export", "--model", str(run), "--merge", "--out", str(tmp_path / "x")]) == 0
    a, tok = load_model(str(run))
    b, _ = load_model(str(tmp_path / "x"))
    torch.testing.assert_close(_logits(a, tok), _logits(b, tok))


def test_export_rejects_unfinished_run(tmp_path, capsys):
    unfinished = tmp_path / "run"
    unfinished.mkdir()
    (unfinished / "adapter_config.json").write_text("{}")
    with pytest.raises(TunelensError, match="no run.json"):
        export_merged(unfinished, tmp_path / "out")
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(tmp_path / "o")]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


# -- hub-ready export: the model card ---------------------------------------------------------

def _fake_study_run(micro_model_dir, root, name="tl__lora__instruct__s0"):
    """A study folder with one finished full-weight run, its metrics and attributions (made
    directly: training and explaining are tested elsewhere)."""
    import shutil

    import pandas as pd

    run = root / "models" / name
    shutil.copytree(micro_model_dir, run)
    (root / "study.yaml").write_text("name: fake\n")
    (run / "run.json").write_text(json.dumps({
        "strategy": "full", "objective": "instruct", "base_model": "org/base-model",
        "trainable_params": 10, "total_params": 20, "train_loss": [], "val_loss_before": 3.5,
        "val_loss_after": 2.25, "wall_seconds": 4.0, "tokens_per_second": None, "peak_rss_mb": None,
        "data": {"train_rows": 40, "val_rows": 10, "fingerprint": "abc"}}))
    (root / "metrics").mkdir()
    (root / "metrics" / f"{name}.json").write_text(json.dumps({
        "aggregate": {"chrf": 41.25, "rule_exec_accuracy": 0.375},
        "intervals": {"chrf": [38.5, 44.0], "rule_exec_accuracy": [0.25, 0.5]},
        "per_example": [{"id": "a"}, {"id": "b"}], "info": {"confidence": 0.9}}))
    (root / "attributions").mkdir()
    rows = [{"example_id": ex, "position": j, "token": tok, "start": 0, "end": 1, "category": cat,
             "score": score, "method": "occlusion", "target_logprob": -3.0, "target": "reference",
             "baseline": "unk"}
            for ex in ("a", "b")
            for j, (tok, cat, score) in enumerate([(" width", "OTHER", 0.1), (" 900", "NUMBER", 0.9),
                                                   (" mm", "UNIT", -0.3)])]
    pd.DataFrame(rows).to_parquet(root / "attributions" / f"{name}.parquet")
    return run


def test_export_writes_a_hub_ready_card(micro_model_dir, tmp_path, monkeypatch):
    from huggingface_hub import HfApi, ModelCard

    run = _fake_study_run(micro_model_dir, tmp_path / "study")
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo, **kw: calls.append(("create", repo)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    assert main(["export", str(run), "--out", str(tmp_path / "hub")]) == 0
    assert not calls  # nothing leaves the machine without --push
    out = tmp_path / "hub"
    assert (out / "model.safetensors").exists() and (out / "tokenizer.json").exists()
    card = ModelCard.load(out / "README.md")  # the hub's own loader parses the YAML header
    assert card.data.base_model == "org/base-model" and card.data.library_name == "transformers"
    assert "full" in card.data.tags
    scores = {r.metric_type: r.metric_value for r in card.data.eval_results}
    assert scores == {"chrf": 41.25, "rule_exec_accuracy": 0.375}
    assert "41.2 [38.5, 44.0]" in card.text and "90% bootstrap intervals" in card.text
    assert "| NUMBER | 69% |" in card.text  # 0.9 / (0.1 + 0.9 + 0.3), the same in both examples
    assert (out / "attribution_heatmap.png").read_bytes()[:4] == b"\x89PNG"
    assert "(attribution_heatmap.png)" in card.text

    assert main(["export", str(run), "--out", str(tmp_path / "pushed"), "--push", "me/model"]) == 0
    assert calls[0] == ("create", "me/model")
    assert calls[1][1]["repo_id"] == "me/model" and calls[1][1]["folder_path"] == str(tmp_path / "pushed")


def test_export_keeps_an_adapter_unmerged(micro_model_dir, tmp_path):
    from huggingface_hub import ModelCard
    from peft import LoraConfig, get_peft_model

    run = tmp_path / "lora"
    base, tokenizer = load_model(str(micro_model_dir))
    get_peft_model(base, LoraConfig(r=2, target_modules=["q_proj"])).save_pretrained(run)
    tokenizer.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({
        "strategy": "lora", "objective": "instruct", "base_model": str(micro_model_dir),
        "trainable_params": 1, "total_params": 2, "train_loss": [], "val_loss_before": None,
        "val_loss_after": None, "wall_seconds": 1.0, "tokens_per_second": None, "peak_rss_mb": None}))
    assert main(["export", "--model", str(run), "--no-merge", "--out", str(tmp_path / "a")]) == 0
    out = tmp_path / "a"
    assert (out / "adapter_model.safetensors").exists() and not (out / "model.safetensors").exists()
    card = ModelCard.load(out / "README.md")
    assert card.data.library_name == "peft" and card.data.base_model is None  # a local base
    assert "Evaluation" not in card.text and not (out / "attribution_heatmap.png").exists()
    tuned, _ = load_for_inference(str(out))
    assert type(tuned).__name__.startswith("Peft")
