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
