"""The CUDA paths in one run: each strategy trained on the GPU, then generation and occlusion of
each run there, its attributions checked against the same run explained on the CPU.

The CPU development machine runs every strategy in float32 and QLoRA through bitsandbytes' CPU
kernels; a GPU takes other paths: bf16 autocast (``train.precision: auto`` picks it where the GPU
supports it), the 4-bit NF4 base placed on the GPU at load (``device_map``) and bitsandbytes' CUDA
kernels, runs placed on the GPU for inference (``models.loading.place_on_device``), the batched
occlusion scorer with the GPU's batch sizes. This script goes through all of them with the
largest quick-ladder model (built here: pretrained on the bundled corpus, so the loss has
something to learn) and prints, per strategy: the precision used, the validation loss before and
after, the peak GPU memory, tokens/s, and for the trained run: generation on the GPU, occlusion
on the GPU and on the CPU (``CUDA_VISIBLE_DEVICES=``), and the largest difference between their
scores. ``train``, ``generate`` and ``explain`` are the CLI's own verbs, each in its own process.

    python benchmarks/gpu_paths.py [--steps 40] [--strategies full,lora,qlora,dora]

Nothing here is timed against a peer (train_throughput.py and attribution_speed.py do that); it
checks that the paths run and agree. On one NVIDIA H200 (torch 2.11 + CUDA 13, bitsandbytes 0.50,
``--steps 20 --strategies qlora,full``; the CLI's seconds are mostly its imports):

    strategy  precision  val loss        peak GPU MB  tokens/s  generate s  explain gpu/cpu s  max |Δ|
    qlora     bfloat16   3.533 -> 2.531         84.4     5,653        16.7        16.5 / 16.4  4.8e-01
    full      bfloat16   3.516 -> 1.979         91.0    34,533        12.2        12.9 / 11.8  7.5e-06

The QLoRA run's attributions differ between the devices by up to 0.48 where the full run's agree
to float32 rounding. Not yet explained; the likely cause is the 4-bit base, quantized at load by
bitsandbytes' CUDA kernels on one device and its CPU kernels on the other (the compute dtype is
float32 on both). Until that is settled, compare QLoRA attributions made on one kind of device.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from train_throughput import write_data  # noqa: E402 - benchmarks/ is the script's folder

CLI = [sys.executable, "-c", "from tunelens.cli import entry; entry()"]


def cli(args: list[str], cpu: bool = False) -> float:
    """Run one tunelens verb in its own process; its wall seconds. A failure prints its stderr."""
    env = dict(os.environ, **({"CUDA_VISIBLE_DEVICES": ""} if cpu else {}))
    started = time.perf_counter()
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"tunelens {args[0]} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return time.perf_counter() - started


def train_one(model: str, data: Path, out: Path, strategy: str, steps: int) -> dict:
    from tunelens.config import TrackingConfig, TrainConfig
    from tunelens.train import train

    config = TrainConfig().model_copy(update={"max_steps": steps})
    return train(model, data, out, strategy, "instruct", config, TrackingConfig(enabled=False))


def scores_gap(a: Path, b: Path) -> float:
    import pandas as pd

    left, right = pd.read_parquet(a), pd.read_parquet(b)
    merged = left.merge(right, on=["example_id", "position"], suffixes=("_gpu", "_cpu"))
    assert len(merged) == len(left) == len(right), "GPU and CPU explained different features"
    return float((merged["score_gpu"] - merged["score_cpu"]).abs().max())


def check(strategy: str, model: str, data: Path, work: Path, steps: int) -> dict:
    info = train_one(model, data, work / strategy, strategy, steps)
    run = work / strategy
    row = {"strategy": strategy, "precision": info.get("precision"),
           "val loss": f"{info['val_loss_before']:.3f} -> {info['val_loss_after']:.3f}",
           "peak GPU MB": info.get("peak_gpu_mb"), "tokens/s": round(info["tokens_per_second"])}
    preds = work / f"{strategy}-preds.jsonl"
    row["generate s"] = round(cli(["generate", "--model", str(run), "--data", str(data / "val.jsonl"),
                                   "--out", str(preds), "--max-new-tokens", "24"]), 1)
    row["sample"] = json.loads(preds.read_text().splitlines()[0])["prediction"][:40]
    explained = {}
    for where in ("gpu", "cpu"):
        out = work / f"{strategy}-{where}.parquet"
        row[f"explain {where} s"] = round(cli(["explain", "--model", str(run), "--data",
                                               str(data / "val.jsonl"), "--out", str(out),
                                               "--max-examples", "4", "--no-heatmap"],
                                              cpu=where == "cpu"), 1)
        explained[where] = out
    row["max |Δ| gpu-cpu"] = f"{scores_gap(explained['gpu'], explained['cpu']):.1e}"
    return row


def main() -> None:
    import torch
    from rich.console import Console
    from rich.table import Table

    from tunelens.models.zoo import build_zoo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--strategies", default="full,lora,qlora,dora")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device: this script checks the GPU paths", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_data(work / "data")
        model = max(build_zoo("quick", work / "zoo"), key=lambda e: e["params"])["path"]
        rows = []
        for strategy in args.strategies.split(","):
            try:
                rows.append(check(strategy, model, data, work, args.steps))
            except Exception as exc:  # noqa: BLE001 - one strategy's failure is a row, not the end
                rows.append({"strategy": strategy, "precision": f"FAILED: {str(exc)[-300:]}"})
            print(json.dumps(rows[-1]), flush=True)  # each row as it comes: a long run is read early
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    table = Table(title=f"CUDA paths on {name}: {Path(model).name}, {args.steps} steps each")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    for col in columns:
        table.add_column(col)
    for r in rows:
        table.add_row(*(str(r.get(c, "-")) for c in columns))
    Console(width=220).print(table)


if __name__ == "__main__":
    main()
