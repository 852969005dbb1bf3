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
    python benchmarks/train_throughput.py --demo --steps 400 --threads 1   # one demo cell

``--demo`` trains what ``tunelens demo`` trains: the demo ladder's largest model on the bundled
clause data with the demo study's ``train`` settings. The ``before`` rows switch off the CPU
saving of :mod:`tunelens.train.trainer_args` (TRL's fused LM head scoring only labelled positions)
in the same run, interleaved with the others, so the "after / before" ratios are measured under
the same load; the last columns divide by the TRL-defaults row.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS = ("tunelens full", "tunelens full before", "tunelens lora", "tunelens lora before",
        "tunelens qlora", "TRL defaults (full)")
PEER = "TRL defaults (full)"


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


def demo_data(folder: Path) -> Path:
    """The demo study's own splits (the bundled clauses), as ``tunelens demo`` builds them."""
    from tunelens.data.build import build_bundled

    build_bundled(folder, demo_study().data)
    return folder


def demo_study():
    from tunelens.config import load_study
    from tunelens.study import bundled_example

    return load_study(bundled_example("code-compliance.yaml"))


def base_model(work: Path, preset: str = "quick") -> str:
    """The largest model of a ladder; a fresh Llama of the quick size if the zoo cannot be built."""
    try:
        from tunelens.models.zoo import build_zoo

        return max(build_zoo(preset, work / "zoo"), key=lambda e: e["params"])["path"]
    except Exception as exc:  # noqa: BLE001 - fall back, and say so
        print(f"(zoo unavailable: {exc}; using a fresh 128-wide, 4-layer Llama)", file=sys.stderr)
        from tunelens.models.zoo import new_llama, save_checkpoint, train_tokenizer

        texts = [json.loads(line)["prompt"] for line in (work / "data" / "train.jsonl").open()]
        tokenizer = train_tokenizer(texts * 4, vocab_size=512)
        model = new_llama(tokenizer, hidden_size=128, num_layers=4, num_heads=4, intermediate_size=344)
        return str(save_checkpoint(model, tokenizer, work / "fresh"))


def switch_off_cpu_savings() -> None:
    """The settings before the CPU saving: TRL's fused LM head scores every position."""
    from tunelens.train import runner

    runner.completion_positions_only = contextlib.nullcontext


def one(run: str, model: str, data: Path, steps: int, work: Path, demo: bool = False) -> dict:
    """Run one configuration in this process and return its measurements."""
    from tunelens.config import TrackingConfig, TrainConfig

    if run.startswith("tunelens"):
        from tunelens.train import train

        strategy = run.split()[1]
        if run.endswith("before"):
            switch_off_cpu_savings()
        config = demo_study().train if demo else TrainConfig()
        started = time.perf_counter()
        info = train(model, data, work / strategy, strategy, "instruct",
                     config.model_copy(update={"max_steps": steps}), TrackingConfig(enabled=False))
        return {"trainable": info["trainable_params"], "total": info["total_params"],
                "steps": info["global_step"], "tokens_per_second": info["tokens_per_second"],
                "peak_rss_mb": info["peak_rss_mb"], "wall_seconds": info["wall_seconds"],
                "run_seconds": time.perf_counter() - started, "val_loss": info["val_loss_after"]}
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
    started = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[peak])
    trained = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - trained
    n_params = sum(p.numel() for p in trainer.model.parameters())
    return {"trainable": n_params, "total": n_params, "steps": trainer.state.global_step,
            "tokens_per_second": trainer.state.num_input_tokens_seen / result.metrics["train_runtime"],
            "peak_rss_mb": peak.peak_rss_mb, "wall_seconds": wall,
            "run_seconds": time.perf_counter() - started, "val_loss": None}


def measure(runs: tuple[str, ...], model: str, data: Path, work: Path, args) -> dict[str, list[dict]]:
    """Every run ``--repeat`` times, interleaved (run A, B, ..., then A, B, ... again), so a change
    of load on a shared machine falls on all of them alike; each is its own subprocess."""
    results: dict[str, list[dict]] = {}
    for rep in range(args.repeat):
        for run in runs:
            cmd = [sys.executable, __file__, "--one", run, "--model", model, "--data", str(data),
                   "--work", str(work / f"{run.replace(' ', '_')}_{rep}"), "--steps", str(args.steps)]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--demo"] if args.demo else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                print(f"{run} failed:\n{proc.stderr[-3000:]}", file=sys.stderr)
                continue
            results.setdefault(run, []).append(json.loads(line[len("RESULT "):]))
    return results


def medians(results: dict[str, list[dict]]) -> dict[str, dict]:
    """Per run, the median of each measurement over the repeats."""
    out = {}
    for run, reps in results.items():
        out[run] = {k: (statistics.median(r[k] for r in reps) if isinstance(v, float | int) else v)
                    for k, v in reps[0].items()}
        out[run]["repeats"] = len(reps)
    return out


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def print_table(results: dict[str, dict], title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    peer = results.get(PEER, {})
    table = Table(title=title)
    for col in ("run", "trainable / total params", "steps", "tokens/s", "peak RSS MB", "train s",
                "run s", "val loss", "after / before", "tokens/s vs TRL", "run s vs TRL"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run, r in results.items():
        before = results.get(f"{run} before") if not run.endswith("before") else None
        table.add_row(run, f"{r['trainable']:,} / {r['total']:,}", str(r["steps"]),
                      f"{r['tokens_per_second']:,.0f}", f"{r['peak_rss_mb']:,.0f}",
                      f"{r['wall_seconds']:.1f}", f"{r['run_seconds']:.1f}",
                      "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}",
                      ratio(before and before["run_seconds"], r["run_seconds"]),
                      ratio(r["tokens_per_second"], peer.get("tokens_per_second")),
                      ratio(r["run_seconds"], peer.get("run_seconds")))
    Console(width=max(Console().width, 180)).print(table)
    print("after / before: how many times faster a whole run (load, train, validation, save) got; "
          "run s vs TRL: below 1x is faster than plain TRL")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="causal LM folder (default: largest quick-ladder model)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo ladder's largest model, bundled data and demo train settings")
    parser.add_argument("--repeat", type=int, default=1, help="repeats per run; medians are shown")
    parser.add_argument("--runs", help="comma-separated subset of: " + ", ".join(RUNS))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.one:
        result = one(args.one, args.model, Path(args.data), args.steps, Path(args.work), args.demo)
        print("RESULT " + json.dumps(result))
        return
    runs = tuple(r.strip() for r in args.runs.split(",")) if args.runs else RUNS
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        data = demo_data(work / "data") if args.demo else write_data(work / "data")
        model = args.model or base_model(work, "demo" if args.demo else "quick")
        results = medians(measure(runs, model, data, work, args))
    print_table(results, f"training throughput: {Path(model).name}, {args.steps} steps, torch threads "
                         f"{args.threads or 'default'}, median of {args.repeat}")


if __name__ == "__main__":
    main()
