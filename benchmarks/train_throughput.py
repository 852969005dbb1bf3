"""Training throughput and peak memory of ``tunelens train`` (full, lora, qlora) beside plain TRL.

Same base model (the largest quick-ladder model, built here if no --model is given), same data
(clause -> rule rows rendered through the training template), same number of optimizer steps.
The peer is TRL's SFTTrainer with its own defaults (full fine-tuning, batch 8, no packing, gradient
checkpointing on, bf16 where a GPU has it), given only an output folder, the step count, token
counting so that its tokens/s is measured the same way (non-padding input tokens / train
runtime), and ``use_cpu`` on a machine without a GPU (TRL refuses to start there otherwise).
Every run is its own subprocess, and peak RSS is sampled the same way for all
(tunelens.train.callbacks.PeakMemory), so one run's memory does not leak into the next.

    python benchmarks/train_throughput.py                  # quick ladder's largest model
    python benchmarks/train_throughput.py --model PATH     # any causal LM folder
    python benchmarks/train_throughput.py --threads 1      # pin torch threads (busy machines)
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS = ("tunelens full", "tunelens lora", "tunelens qlora", "TRL defaults (full)")


def write_data(folder: Path, n_train: int = 160, n_val: int = 32) -> Path:
    rnd = random.Random(0)
    things = ["stair", "ramp", "door", "corridor", "handrail", "guard", "landing"]
    attrs = ["width", "slope", "height", "opening", "depth"]
    words = [("not less than", ">="), ("not more than", "<="), ("at least", ">=")]
    rows = []
    for i in range(n_train + n_val):
        thing, attr, (w, op) = rnd.choice(things), rnd.choice(attrs), rnd.choice(words)
        value = rnd.randint(1, 120) * 10
        rows.append({"id": f"b{i}", "topic": thing, "source": "generated",
                     "prompt": f"The {attr} of every {thing} shall be {w} {value} mm.",
                     "completion": f"RULE {thing}.{attr} {op} {value} mm"})
    folder.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:n_train]), ("val", rows[n_train:])):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in part))
    return folder


def base_model(work: Path) -> str:
    """The largest quick-ladder model; a fresh Llama of that size if the zoo cannot be built."""
    try:
        from tunelens.models.zoo import build_zoo

        return max(build_zoo("quick", work / "zoo"), key=lambda e: e["params"])["path"]
    except Exception as exc:  # noqa: BLE001 - fall back, and say so
        print(f"(zoo unavailable: {exc}; using a fresh 128-wide, 4-layer Llama)", file=sys.stderr)
        from tunelens.models.zoo import new_llama, save_checkpoint, train_tokenizer

        texts = [json.loads(line)["prompt"] for line in (work / "data" / "train.jsonl").open()]
        tokenizer = train_tokenizer(texts * 4, vocab_size=512)
        model = new_llama(tokenizer, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=344)
        return str(save_checkpoint(model, tokenizer, work / "fresh"))


def one(run: str, model: str, data: Path, steps: int, work: Path) -> dict:
    """Run one configuration in this process and return its measurements."""
    from tunelens.config import TrackingConfig, TrainConfig

    if run.startswith("tunelens"):
        from tunelens.train import train

        strategy = run.split()[1]
        info = train(model, data, work / strategy, strategy, "instruct",
                     TrainConfig(max_steps=steps), TrackingConfig(enabled=False))
        return {"trainable": info["trainable_params"], "total": info["total_params"],
                "steps": info["global_step"], "tokens_per_second": info["tokens_per_second"],
                "peak_rss_mb": info["peak_rss_mb"], "wall_seconds": info["wall_seconds"]}
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelens.io import read_jsonl
    from tunelens.train.callbacks import PeakMemory
    from tunelens.train.objectives import format_rows

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = format_rows(read_jsonl(data / "train.jsonl"), tokenizer, "instruct")
    peak = PeakMemory()
    import torch

    # TRL defaults bf16 on and refuses a CPU-only machine unless told: the one setting added there
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, report_to="none",
                     include_num_input_tokens_seen="non_padding", save_strategy="no",
                     **({} if torch.cuda.is_available() else {"use_cpu": True}))
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[peak])
    started = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - started
    n_params = sum(p.numel() for p in trainer.model.parameters())
    return {"trainable": n_params, "total": n_params, "steps": trainer.state.global_step,
            "tokens_per_second": trainer.state.num_input_tokens_seen / result.metrics["train_runtime"],
            "peak_rss_mb": peak.peak_rss_mb, "wall_seconds": wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="causal LM folder (default: largest quick-ladder model)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        print("RESULT " + json.dumps(one(args.one, args.model, Path(args.data), args.steps, Path(args.work))))
        return

    from rich.console import Console
    from rich.table import Table

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = write_data(work / "data")
        model = args.model or base_model(work)
        results = {}
        for run in RUNS:
            cmd = [sys.executable, __file__, "--one", run, "--model", model, "--data", str(data),
                   "--work", str(work / run.replace(" ", "_")), "--steps", str(args.steps)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{run} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            results[run] = json.loads(line[len("RESULT "):])

    table = Table(title=f"training throughput: {Path(model).name}, {args.steps} steps, "
                        f"torch threads {args.threads or 'default'}")
    for col in ("run", "trainable / total params", "steps", "tokens/s", "peak RSS MB", "wall s"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run, r in results.items():
        table.add_row(run, f"{r['trainable']:,} / {r['total']:,}", str(r["steps"]),
                      f"{r['tokens_per_second']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                      f"{r['wall_seconds']:.1f}")
    Console().print(table)


if __name__ == "__main__":
    main()
