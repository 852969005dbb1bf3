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

    python benchmarks/train_throughput.py --smollm2 --steps 4 --threads 1

``--smollm2`` trains ``smollm2-135m`` (its de-quantised cached folder, given to both) with LoRA at
TrainConfig's defaults (batch 8, max length 256, rank 8, every linear, float32) on the bundled
clauses, with and without gradient checkpointing, beside plain TRL's SFTTrainer + peft on the same
settings (``TRL lora [gc]``, compared with the tunelens row of the same checkpointing);
``before fix`` undoes the memory fix in the same run: 4,096-column vocabulary tiles
(:func:`tunelens.train.trainer_args.small_vocab_tiles`) and glibc's mmap threshold pinned
(:mod:`tunelens.train.heap`; the ``gc`` rows of tunelens ask for it with ``train.release_memory``,
which is off by default). Validation is cut to 16 rows (it is not measured).
Measured here, 4 steps, 1 thread, load average 2.9 / 2.7 / 3.7 (2 cores shared with two other
jobs: times move with the load, peaks do not; the same runs at load ~5 gave 1,468 / 2,654 MB):

    run                          tokens/s   peak RSS MB   peak vs TRL   peak after / before
    tunelens lora                      95         5,034         0.87x
    TRL lora                           75         5,768
    tunelens lora gc                   44         1,478         0.43x                 0.54x
    tunelens lora gc before fix        68         2,756         0.80x
    TRL lora gc                        57         3,442

Of the 1.3 GB saved with checkpointing, ~1.1 GB were freed activations glibc kept mapped (the
pin); the pin costs page faults, so that run's tokens/s dropped 1.55x, which is why it is a
choice of its own (``train.release_memory``): checkpointing alone stays under 3 GB (the ``before
fix`` row). Without checkpointing the peak is the saved activations (~4.5 GB at
8 x 256 by :mod:`tunelens.memory`; the bundled rows are shorter).

``--shape smollm2-135m`` trains SmolLM2-135M's shape with fresh weights (``benchmarks/_shapes.py``)
where the checkpoint cannot travel. On one NVIDIA H200 (torch 2.11 + CUDA 13, bitsandbytes 0.50),
20 steps of batch 8 of the short generated rows (about 250 tokens a step), one run each:

    run              precision   tokens/s   peak GPU MB   train s   run s   vs TRL lora: tokens/s, run s, peak
    tunelens qlora   bfloat16       1,173           808       7.2    12.5
    tunelens lora    bfloat16       1,694         1,278       5.1    10.0   1.30x, 1.26x, 0.98x
    TRL lora         float32        1,301         1,302       6.6     7.9

At 250 tokens a step the GPU waits on Python and kernel launches (4 steps/s), so these rows
compare overheads, not arithmetic; tunelens' whole run is longer by its validation before and
after training and its save. The ``TRL lora`` row keeps the float32 given to it for the CPU
comparison, so its tokens/s is not precision-matched. QLoRA needs 0.63x LoRA's GPU memory.
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

from _shapes import SHAPES, fresh_checkpoint  # noqa: E402 - benchmarks/ is the script's folder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RUNS = ("tunelens full", "tunelens full before", "tunelens lora", "tunelens lora before",
        "tunelens qlora", "TRL defaults (full)")
PEER = "TRL defaults (full)"
SMOLLM2_RUNS = ("tunelens lora", "TRL lora", "tunelens lora gc", "tunelens lora gc before fix", "TRL lora gc")
BEFORE = (" before", " before fix")  # a run's "before" row: one of these suffixes


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


def smollm2_data(folder: Path, n_val: int = 16) -> Path:
    """The bundled clauses, with the validation split cut to ``n_val`` rows: validation is not what
    is measured (the peak is sampled during training) and costs minutes on SmolLM2."""
    demo_data(folder)
    val = (folder / "val.jsonl").read_text().splitlines(keepends=True)
    (folder / "val.jsonl").write_text("".join(val[:n_val]))
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


def switch_off(run: str) -> None:
    """The settings before a CPU saving: ``before`` runs TRL's fused LM head as TRL does on a CPU
    (every position scored, 32k-column vocabulary tiles; :mod:`tunelens.train.trainer_args`),
    ``before fix`` keeps the labelled-positions saving and undoes the memory fix (small tiles, and
    glibc's mmap threshold pinned under gradient checkpointing: :mod:`tunelens.train.heap`)."""
    from tunelens.train import runner, trainer_args

    if run.endswith("before"):
        runner.cpu_lm_head = contextlib.nullcontext
    elif run.endswith("before fix"):
        trainer_args.small_vocab_tiles = contextlib.nullcontext
        runner.pin_mmap_threshold = lambda: False


def one(run: str, model: str, data: Path, steps: int, work: Path, demo: bool = False) -> dict:
    """Run one configuration in this process and return its measurements."""
    from tunelens.config import TrackingConfig, TrainConfig

    words = run.split()
    if words[0] != "tunelens":
        return one_trl(run, model, data, steps, work)
    from tunelens.train import train

    strategy = words[1]
    switch_off(run)
    config = demo_study().train if demo else TrainConfig()
    config = config.model_copy(update={"max_steps": steps, "gradient_checkpointing": "gc" in words,
                                       "release_memory": "gc" in words})
    started = time.perf_counter()
    info = train(model, data, work / strategy, strategy, "instruct", config, TrackingConfig(enabled=False))
    return {"trainable": info["trainable_params"], "total": info["total_params"],
            "steps": info["global_step"], "tokens_per_second": info["tokens_per_second"],
            "peak_rss_mb": info["peak_rss_mb"], "peak_gpu_mb": info.get("peak_gpu_mb"),
            "wall_seconds": info["wall_seconds"], "run_seconds": time.perf_counter() - started,
            "val_loss": info["val_loss_after"], "precision": info.get("precision")}


def one_trl(run: str, model: str, data: Path, steps: int, work: Path) -> dict:
    """Plain TRL: its defaults (``TRL defaults (full)``), or ``TRL lora [gc]``, our LoRA settings
    (TrainConfig's defaults: batch 8, max length 256, rank 8, alpha 16, every linear, float32)
    given to SFTTrainer and peft as a user would, with checkpointing as the run's name says."""
    import peft
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    from tunelens.config import TrainConfig
    from tunelens.io import read_jsonl
    from tunelens.train.callbacks import PeakMemory
    from tunelens.train.objectives import format_rows

    tokenizer = AutoTokenizer.from_pretrained(model)
    rows = format_rows(read_jsonl(data / "train.jsonl"), tokenizer, "instruct")
    peak = PeakMemory()
    # TRL defaults bf16 on and refuses a CPU-only machine unless told: the one setting added there
    settings = {} if torch.cuda.is_available() else {"use_cpu": True}
    lora = None
    if run != PEER:
        config = TrainConfig()
        settings |= {"per_device_train_batch_size": config.batch_size, "max_length": config.max_length,
                     "learning_rate": config.learning_rate, "bf16": False,
                     "gradient_checkpointing": run.endswith(" gc")}
        lora = peft.LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha,
                               lora_dropout=config.lora.dropout, target_modules=config.lora.target_modules,
                               task_type="CAUSAL_LM")
    args = SFTConfig(output_dir=str(work / "trl"), max_steps=steps, report_to="none",
                     include_num_input_tokens_seen="non_padding", save_strategy="no", **settings)
    started = time.perf_counter()
    trainer = SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), callbacks=[peak],
                         peft_config=lora)
    trained = time.perf_counter()
    result = trainer.train()
    wall = time.perf_counter() - trained
    params = list(trainer.model.parameters())
    return {"trainable": sum(p.numel() for p in params if p.requires_grad),
            "total": sum(p.numel() for p in params), "steps": trainer.state.global_step,
            "tokens_per_second": trainer.state.num_input_tokens_seen / result.metrics["train_runtime"],
            "peak_rss_mb": peak.peak_rss_mb, "peak_gpu_mb": peak.peak_gpu_mb, "wall_seconds": wall,
            "run_seconds": time.perf_counter() - started, "val_loss": None,
            "precision": "bfloat16" if trainer.args.bf16 else "float32"}


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
            print(run, line[len("RESULT "):], file=sys.stderr, flush=True)  # each run as it ends
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

    table = Table(title=title)
    gpu = any(r.get("peak_gpu_mb") for r in results.values())  # peaks on the GPU where training ran
    peak = "peak_gpu_mb" if gpu else "peak_rss_mb"
    for col in ("run", "trainable / total params", "precision", "steps", "tokens/s",
                "peak GPU MB" if gpu else "peak RSS MB", "train s", "run s", "val loss",
                "after / before", "peak after / before", "tokens/s vs TRL", "run s vs TRL", "peak vs TRL"):
        table.add_column(col, justify="left" if col == "run" else "right")
    for run, r in results.items():
        before = next((results[run + b] for b in BEFORE if run + b in results), None)
        peer = results.get(peer_of(run), {})
        table.add_row(run, f"{r['trainable']:,} / {r['total']:,}", str(r.get("precision", "-")),
                      str(r["steps"]), f"{r['tokens_per_second']:,.0f}", f"{r[peak] or 0:,.0f}",
                      f"{r['wall_seconds']:.1f}", f"{r['run_seconds']:.1f}",
                      "-" if r["val_loss"] is None else f"{r['val_loss']:.3f}",
                      ratio(before and before["run_seconds"], r["run_seconds"]),
                      ratio(r[peak], before and before[peak]),
                      ratio(r["tokens_per_second"], peer.get("tokens_per_second")),
                      ratio(r["run_seconds"], peer.get("run_seconds")),
                      ratio(r[peak], peer.get(peak)))
    Console(width=max(Console().width, 200)).print(table)
    print("after / before: how many times faster a whole run (load, train, validation, save) got; "
          "run s vs TRL: below 1x is faster than plain TRL; peak: below 1x is less memory; "
          f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def peer_of(run: str) -> str:
    """The plain-TRL row a run is compared with: ``TRL lora [gc]`` for a LoRA run when measured
    (same settings), else TRL's defaults."""
    if run.startswith("tunelens lora"):
        return "TRL lora gc" if " gc" in run else "TRL lora"
    return PEER


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="causal LM folder (default: largest quick-ladder model)")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--threads", type=int, help="torch threads in each run (default: torch's)")
    parser.add_argument("--demo", action="store_true",
                        help="the demo ladder's largest model, bundled data and demo train settings")
    parser.add_argument("--smollm2", action="store_true",
                        help="smollm2-135m LoRA at 8 x 256, with and without gradient checkpointing, "
                             "beside plain TRL on the same settings, and the small-tile fix undone")
    parser.add_argument("--shape", choices=sorted(SHAPES),
                        help="a real model's shape with fresh weights (benchmarks/_shapes.py), for a "
                             "machine its checkpoint cannot reach")
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
    runs = tuple(r.strip() for r in args.runs.split(",")) if args.runs else (
        SMOLLM2_RUNS if args.smollm2 else RUNS)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.smollm2:
            from tunelens.models import references

            args.model = references.resolve("smollm2-135m", progress=False)  # one folder for both
            data = smollm2_data(work / "data")
        else:
            data = demo_data(work / "data") if args.demo else write_data(work / "data")
        if args.shape:
            args.model = fresh_checkpoint(args.shape, work / args.shape)
        model = args.model or base_model(work, "demo" if args.demo else "quick")
        results = medians(measure(runs, model, data, work, args))
    name = ("smollm2-135m" if args.smollm2 else f"{args.shape} (fresh weights)" if args.shape
            else Path(model).name)
    print_table(results, f"training throughput: {name}, {args.steps} steps, torch threads "
                         f"{args.threads or 'default'}, median of {args.repeat}")


if __name__ == "__main__":
    main()
