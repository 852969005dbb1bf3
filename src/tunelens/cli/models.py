"""Verbs that make models: zoo build, train, export."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import OUT_HELP, _existing, app, console, err_console, zoo_app
from tunelens.errors import TunelensError


@zoo_app.command("build")
def zoo_build_cmd(
    preset: str = typer.Option(..., "--preset", help="Ladder recipe: 'quick' (4 models, ~19k to "
                               "~0.8M parameters, seconds; for tests) or 'demo' (4 models, ~40k "
                               "to ~2.1M parameters, a minute or two; for the demo study)."),
    out: Path = typer.Option(..., "--out", help="Zoo folder: one checkpoint per model plus "
                             "ladder.json. " + OUT_HELP),
    force: bool = typer.Option(False, "--force", help="Rebuild even if --out already holds an "
                               "identical build (same preset, corpus, code and libraries)."),
) -> None:
    """Train a BPE tokenizer and a ladder of small Llama models from scratch on the bundled
    corpus; each is saved as a checkpoint that AutoModelForCausalLM loads unchanged."""
    from rich.table import Table

    from tunelens.models.zoo import build_zoo

    entries = build_zoo(preset, out, force=force)
    table = Table(title=f"zoo '{preset}' in {out}")
    for col in ("name", "params", "tokens seen", "final loss", "seconds"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for e in entries:
        table.add_row(e["name"], f"{e['params']:,}", f"{e['tokens_seen']:,}",
                      f"{e['final_loss']:.3f}", f"{e['seconds']:.1f}")
    console.print(table)


@app.command("train")
def train_cmd(
    model: str = typer.Option(..., "--model", help="Base model: a local checkpoint folder or a "
                              "Hugging Face hub id (needs the hub or its cache)."),
    data: Path = typer.Option(..., "--data", help="Folder with train.jsonl and val.jsonl (rows: "
                              "id, topic, source, prompt, completion)."),
    strategy: str = typer.Option(..., "--strategy", help="full | lora | qlora (4-bit NF4 base + "
                                 "LoRA) | dora | freeze (train only the top layers and the head)."),
    objective: str = typer.Option(..., "--objective", help="instruct (prompt -> completion, loss "
                                  "on the completion only) | causal (loss on every token, packed)."),
    out: Path = typer.Option(..., "--out", help="Run folder: adapter or weights, tokenizer, "
                             "run.json. " + OUT_HELP),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Optimizer steps "
                                         "(default: train.max_steps of the config)."),
    config: Path | None = typer.Option(None, "--config", help="Study YAML whose 'train' and "
                                       "'tracking' sections are used (default: built-in defaults)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI "
                                            "(default: sqlite:///<study>/mlflow.db for --out "
                                            "<study>/models/<run>, else mlflow.db beside --out)."),
    run_name: str | None = typer.Option(None, "--run-name", help="MLflow run name (default: the "
                                        "name of --out)."),
) -> None:
    """Fine-tune a model with TRL's SFTTrainer; Ctrl-C checkpoints, rerunning resumes."""
    from rich.table import Table

    from tunelens.config import TrackingConfig, TrainConfig, load_study, parse_study
    from tunelens.train import train

    study = load_study(config) if config else None
    train_cfg = study.train if study else TrainConfig()
    tracking_cfg = study.tracking if study else TrackingConfig()
    if max_steps is not None or tracking_uri is not None:
        raw = {"train": train_cfg.model_dump(), "tracking": tracking_cfg.model_dump()}
        if max_steps is not None:
            raw["train"]["max_steps"] = max_steps
        if tracking_uri is not None:
            raw["tracking"]["uri"] = tracking_uri
        merged = parse_study(raw, origin="command line")
        train_cfg, tracking_cfg = merged.train, merged.tracking
    try:
        info = train(model, data, out, strategy, objective, config=train_cfg, tracking=tracking_cfg,
                     run_name=run_name, progress=True)
    except KeyboardInterrupt:
        err_console.print(f"[bold yellow]interrupted:[/] checkpoint saved under {out.parent}/"
                          f".{out.name}.partial; rerun the same command to resume")
        raise typer.Abort() from None  # main() turns it into exit code 130
    table = Table(title=f"{strategy}/{objective} -> {out}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("trainable / total params", f"{info['trainable_params']:,} / {info['total_params']:,}"),
            ("steps", str(info["global_step"])),
            ("val loss before -> after", f"{info['val_loss_before']:.4f} -> {info['val_loss_after']:.4f}"),
            ("wall seconds", f"{info['wall_seconds']:.1f}"),
            ("tokens / s", f"{info['tokens_per_second'] or 0:,.0f}"),
            ("peak RSS MB", f"{info['peak_rss_mb']:,.0f}")]
    if info.get("mlflow"):
        rows.append(("MLflow", f"{info['mlflow']['tracking_uri']} run {info['mlflow']['run_id']}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("export")
def export_cmd(
    model: Path = typer.Option(..., "--model", help="A finished training run folder (with run.json)."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge adapter weights into the base "
                               "(qlora: into the de-quantized fp32 base). The only export mode."),
    out: Path = typer.Option(..., "--out", help="Standalone checkpoint folder. " + OUT_HELP),
) -> None:
    """Write a standalone checkpoint (no PEFT needed) from a training run."""
    from tunelens.train import export_merged

    if not merge:
        raise TunelensError("export: only merged export exists; pass --merge")
    path = export_merged(_existing(model, "folder"), out)
    console.print(f"merged checkpoint written to [bold]{path}[/]")
