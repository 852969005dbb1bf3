"""The memory estimate of a training cell: counted on the real model shape, close to the measured
peak of a real training, and a study that cannot fit is refused before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from _train_data import write_data

from tunelens.cli import main
from tunelens.config import TrainConfig
from tunelens.errors import TunelensError
from tunelens.memory import GB, Shape, check_budget, training_memory

# Llama-2-7B's shape: a folder holding only this config.json stands for the model, offline.
LLAMA_7B = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096,
            "intermediate_size": 11008, "num_hidden_layers": 32, "num_attention_heads": 32,
            "num_key_value_heads": 32, "vocab_size": 32000, "max_position_embeddings": 4096,
            "rms_norm_eps": 1e-5, "torch_dtype": "float16"}
ENTRY = "from tunelens.cli import entry; entry()"


@pytest.fixture()
def llama_7b(tmp_path) -> Path:
    folder = tmp_path / "llama-7b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_7B))
    return folder


def _study(tmp_path: Path, model: Path, strategy: str, dtype: str, checkpointing: bool) -> Path:
    path = tmp_path / f"{strategy}.yaml"
    path.write_text(f"name: big\nmodels: [{{name: l7, path: '{model}', dtype: {dtype}}}]\n"
                    f"strategies: [{strategy}]\n"
                    f"train: {{gradient_checkpointing: {str(checkpointing).lower()}}}\n")
    return path


def test_a_7b_shape_is_counted_on_the_meta_device(llama_7b):
    from transformers import AutoConfig

    shape = Shape.of(AutoConfig.from_pretrained(llama_7b))
    assert shape.params == 6_738_415_616  # Llama-2-7B's published parameter count
    est = training_memory(shape, "full", TrainConfig(), "float32")
    assert est.weights / GB == pytest.approx(25.1, abs=0.1)
    assert est.optimizer == 2 * est.weights  # AdamW: two float32 states per weight
    lora = training_memory(shape, "lora", TrainConfig(), "bfloat16")
    assert lora.trainable == 8 * sum(i + o for i, o in shape.linear)
    assert lora.total < est.total / 3


def test_dry_run_refuses_full_float32_7b_in_24_gb_and_accepts_lora_with_checkpointing(
        llama_7b, tmp_path, capsys):
    full = _study(tmp_path, llama_7b, "full", "float32", checkpointing=False)
    assert main(["run", str(full), "--dry-run", "--memory-gb", "24"]) == 2
    err = capsys.readouterr().err
    assert "l7__full__instruct" in err and "GB" in err and len(err.strip().splitlines()) == 1
    lora = _study(tmp_path, llama_7b, "lora", "bfloat16", checkpointing=True)
    assert main(["run", str(lora), "--dry-run", "--memory-gb", "24"]) == 0
    assert "l7__lora__instruct" in capsys.readouterr().out


def test_the_budget_names_the_largest_cell():
    shape = Shape(params=10, linear=[(2, 2)], layers=1, per_layer_params=10, hidden=2,
                  intermediate=4, kv_dim=2, heads=1, vocab=8)
    small = training_memory(shape, "lora", TrainConfig())
    big = training_memory(shape, "full", TrainConfig(batch_size=64))
    with pytest.raises(TunelensError, match=r"cell b needs .* \(and 1 more cells\)"):
        check_budget([("a", small), ("b", big), ("c", None)], small.total / GB * 0.5, "s.yaml")
    check_budget([("a", small), ("c", None)], small.total / GB * 1.01, "s.yaml")
    with pytest.raises(TunelensError, match=r"per worker with 2 at once"):  # --jobs 2: half each
        check_budget([("a", small)], small.total / GB * 1.01, "s.yaml", workers=2)


@pytest.mark.parametrize("strategy", ["full", "lora"])
def test_estimate_is_within_30_percent_of_a_measured_training_peak(quick_zoo_dir, tmp_path,
                                                                     strategy):
    """A real training in a fresh process (as `tunelens train` runs): its sampled peak RSS, and
    the trainable parameters peft reports, against the estimate for the same settings."""
    from transformers import AutoConfig

    model = quick_zoo_dir / "tl-q4"
    data = write_data(tmp_path / "data")
    out = tmp_path / "run"
    cmd = [sys.executable, "-c", ENTRY, "train", "--model", str(model), "--data", str(data),
           "--strategy", strategy, "--objective", "causal", "--out", str(out), "--max-steps", "3",
           "--threads", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((out / "run.json").read_text())
    shape = Shape.of(AutoConfig.from_pretrained(model))
    est = training_memory(shape, strategy, TrainConfig(), "float32")
    assert est.trainable == run["trainable_params"]
    measured = run["peak_rss_mb"] * 1024**2
    assert abs(est.total - measured) / measured < 0.30, (est.parts_gb(), measured / GB)


@pytest.mark.parametrize(("device", "tile"), [("cpu", 4096 * 4 * 6), ("cuda", 32768 * 4)])
def test_logits_are_the_fused_heads_tile_not_full_logits(device, tile):
    """TRL's fused LM head never holds batch x length x vocabulary: with SmolLM2's 49k vocabulary
    at 8 x 256 the term is one tile per scored position (at most 4,096 positions at a time)."""
    shape = Shape(params=10, linear=[(2, 2)], layers=1, per_layer_params=10, hidden=2,
                  intermediate=4, kv_dim=2, heads=1, vocab=49152)
    est = training_memory(shape, "lora", TrainConfig(batch_size=8, max_length=256), device=device)
    assert est.logits == 8 * 256 * tile
    assert est.logits < 8 * 256 * 49152 * 4  # less than one copy of the full logits
    bigger = training_memory(shape, "lora", TrainConfig(batch_size=64, max_length=256), device=device)
    assert bigger.logits == 4096 * tile  # tiles of at most 4,096 positions
    small = Shape(**{**vars(shape), "vocab": 400})
    assert training_memory(small, "lora", TrainConfig(), device=device).logits == 8 * 256 * 400 * 4 * (
        6 if device == "cpu" else 1)
