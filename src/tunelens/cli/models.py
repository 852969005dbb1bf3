"""Verbs that make models: zoo build, train, export."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, console, err_console, zoo_app
from tunelens.config import TrackingConfig, TrainConfig, default_of, override
from tunelens.errors import TunelensError, check_choice
from tunelens.format import choices, number
from tunelens.io import check_writable
from tunelens.train.catalog import OBJECTIVES, STRATEGIES


@zoo_app.command("build")
def zoo_build_cmd(
    preset: str = typer.Option(..., "--preset", help="Ladder recipe: 'quick' (4 models, ~19k to "
                               "~0.8M parameters, seconds; for tests) or 'demo' (4 models, ~40k "
                               "to ~2.1M parameters, a minute or two; for the demo study)."),
    out: Path = opt.out_option("Zoo folder: one checkpoint per model plus ladder.json."),
    force: bool = typer.Option(False, "--force", help="Rebuild even if --out already holds an "
                               "identical build (same preset, corpus, code and libraries)."),
    threads: int = opt.threads_option(),
) -> None:
    """Train a BPE tokenizer and a ladder of small Llama models from scratch on the bundled
    corpus; each is saved as a checkpoint that AutoModelForCausalLM loads unchanged."""
    check_writable(out, "dir")
    opt.set_threads(threads)
    from tunelens.models.zoo import build_zoo

    entries = build_zoo(preset, out, force=force, threads=threads)
    opt.print_table(f"zoo '{preset}' in {out}", ("name", "params", "tokens seen", "final loss",
                                                "seconds"),
                    ((e["name"], e["params"], e["tokens_seen"], e["final_loss"],
                      number(e["seconds"], 1)) for e in entries), left=1)


@app.command("train")
def train_cmd(
    model: str = typer.Option(..., "--model", help="Base model: a local checkpoint folder, a .gguf "
                              "file, a packaged model's short name (smollm2-135m, gemma3-270m) "
                              "or a hub id (needs the hub or its cache)."),
    data: Path = typer.Option(..., "--data", help="Folder with train.jsonl and val.jsonl (rows: "
                              "id, topic, source, prompt, completion)."),
    strategy: str = typer.Option(..., "--strategy", help=choices(STRATEGIES) + "."),
    objective: str = typer.Option(..., "--objective", help=choices(OBJECTIVES) + "."),
    out: Path = opt.out_option("Run folder: adapter or weights, tokenizer, run.json."),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Optimizer steps "
                                         + default_of(TrainConfig, "max_steps") + "."),
    config: Path | None = opt.config_option("'train' and 'tracking' sections"),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help=TrackingConfig.model_fields[
        "uri"].description + "."),
    run_name: str | None = typer.Option(None, "--run-name", help="MLflow run name (default: the "
                                        "name of --out)."),
    dtype: str = opt.dtype_option(trained=True),
    trust_remote_code: bool = opt.trust_remote_code_option(trained=True),
    prompt_format: str = opt.prompt_format_option(trained=True),
    optimizer: str = typer.Option(None, "--optimizer", help="adamw, adamw_8bit or paged_adamw_8bit "
                                  "(bitsandbytes) " + default_of(TrainConfig, "optimizer") + "."),
    gradient_checkpointing: bool = typer.Option(
        None, "--gradient-checkpointing/--no-gradient-checkpointing", help="Recompute activations "
        "in the backward pass: less memory, slower " + default_of(TrainConfig, "gradient_checkpointing")
        + "."),
    launcher: str = typer.Option("none", "--launcher", help="none: train in this process; "
                                 "accelerate: in --num-processes processes started by `accelerate "
                                 "launch` (DDP; on a CPU over gloo), one run folder written once. "
                                 "See docs/scale-out.md."),
    num_processes: int = typer.Option(1, "--num-processes", help="Processes with --launcher "
                                      "accelerate (one per GPU; on a CPU, split the cores). Each "
                                      "takes its own batch: a step sees N x the batch size."),
    accelerate_config: Path | None = typer.Option(None, "--accelerate-config", help="An `accelerate "
                                                  "config` YAML for --launcher accelerate: FSDP or "
                                                  "DeepSpeed ZeRO-2/3 on GPUs (configs/accelerate/)."),
    threads: int = opt.threads_option(),
) -> None:
    """Fine-tune a model with TRL's SFTTrainer, in one process or several (--launcher); Ctrl-C
    checkpoints, rerunning resumes. The run records its dtype, remote-code setting and prompt
    format for generate and explain."""
    check_choice(strategy, STRATEGIES, "--strategy", optional=True)
    check_choice(objective, OBJECTIVES, "--objective", optional=True)
    opt.check_model_settings(dtype, prompt_format)
    from tunelens.train.launch import check_launch

    check_launch(launcher, num_processes, strategy, accelerate_config)
    check_writable(out, "dir")
    train_cfg = override(opt.section(config, "train"), origin="train", max_steps=max_steps,
                         optimizer=optimizer, gradient_checkpointing=gradient_checkpointing)
    tracking_cfg = override(opt.section(config, "tracking"), origin="train", uri=tracking_uri)
    opt.existing(data, "folder")
    opt.set_threads(threads)
    from tunelens.train import train
    from tunelens.train.launch import launch_train

    settings = dict(config=train_cfg, tracking=tracking_cfg, run_name=run_name, progress=True,
                    dtype=dtype, trust_remote_code=trust_remote_code, prompt_format=prompt_format)
    try:
        if launcher == "accelerate":
            info = launch_train(model, data, out, strategy, objective, num_processes=num_processes,
                                accelerate_config=accelerate_config, threads=threads, **settings)
        else:
            info = train(model, data, out, strategy, objective, **settings)
    except KeyboardInterrupt:
        from tunelens.train.runner import resumable_checkpoint

        saved = resumable_checkpoint(out)
        err_console.print("[bold yellow]interrupted:[/] " + (
            f"checkpoint {saved}; rerun the same command to resume" if saved else
            "no checkpoint was written yet; rerunning starts over"), highlight=False)
        raise typer.Abort() from None  # main() turns it into exit code 130
    _print_run(info, f"{strategy}/{objective} -> {out}")


def _print_run(info: dict, title: str) -> None:
    rows = [("trainable / total params", f"{info['trainable_params']:,} / {info['total_params']:,}"),
            ("steps", info["global_step"]),
            ("val loss before -> after",
             f"{number(info['val_loss_before'], 4)} -> {number(info['val_loss_after'], 4)}"),
            ("wall seconds", number(info["wall_seconds"], 1)),
            ("tokens / s", number(info["tokens_per_second"], 0)),
            ("peak RSS MB", number(info["peak_rss_mb"], 0))]
    if info.get("mlflow"):
        rows.append(("MLflow", f"{info['mlflow']['tracking_uri']} run {info['mlflow']['run_id']}"))
    opt.print_table(title, ("measure", "value"), rows, left=1)


@app.command("export")
def export_cmd(
    run: Path = typer.Argument(None, help="A finished training run folder (with run.json)."),
    model: Path = typer.Option(None, "--model", help="The run folder, as a flag (same as RUN)."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge adapter weights into the "
                               "base (qlora: into the de-quantized fp32 base) for a standalone "
                               "checkpoint, or keep the adapter as it was trained (small; loads "
                               "over its base with PEFT). Full-weight runs are exported as they are."),
    out: Path = opt.out_option("Hub-ready folder: safetensors weights (merged or adapter), the "
                               "tokenizer, export.json and a model card (README.md)."),
    metrics: Path = typer.Option(None, "--metrics", help="metrics/<run>.json for the card "
                                 "(default: the run's own in its study, if any)."),
    attributions: Path = typer.Option(None, "--attributions", help="attributions/<run>.parquet "
                                      "for the card's attribution summary and heat-map (default: "
                                      "the run's own in its study, if any)."),
    push: str = typer.Option(None, "--push", help="Also upload the folder to this hub model "
                             "repository (owner/name) with huggingface_hub; the token comes from "
                             "HF_TOKEN or `hf auth login`."),
    threads: int = opt.threads_option(),
) -> None:
    """Write a hub-ready folder from a training run: weights, tokenizer and a model card with
    its metrics (with intervals) and what the model attends to; optionally push it."""
    if (run is None) == (model is None):
        raise TunelensError("export: give the run folder once, as RUN or --model")
    source = run or model
    opt.existing(source, "folder")
    for given in (metrics, attributions):
        if given is not None:
            opt.existing(given)
    check_writable(out, "dir")
    opt.set_threads(threads)
    from tunelens.train.export import export_run

    done = export_run(source, out, merge=merge, metrics=metrics, attributions=attributions, push=push)
    kind = "adapter" if done["adapter"] else "merged checkpoint" if done["merged"] else "checkpoint"
    console.print(f"{kind} and model card written to [bold]{done['out']}[/]", highlight=False)
    if done["url"]:
        console.print(f"pushed: {done['url']}", highlight=False)
