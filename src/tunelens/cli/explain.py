"""The explain verb: token attributions of a run."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import OUT_HELP, _existing, app, console
from tunelens.errors import TunelensError


@app.command("explain")
def explain_cmd(
    model: str = typer.Option(..., "--model", help="Training run folder (full weights or a "
                              "LoRA/QLoRA adapter over its base) or any model path/id."),
    data: Path = typer.Option(..., "--data", help="JSONL of dataset rows (id, prompt, completion) "
                              "or predictions rows (id, prompt, reference, prediction)."),
    out: Path = typer.Option(..., "--out", help="Attributions parquet (example_id, position, token, "
                             "start, end, category, score); a token heat-map <stem>.html is "
                             "written beside it. " + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'explanation' section "
                                "supplies the defaults below."),
    method: str = typer.Option(None, "--method", help="occlusion (leave one out), shapley "
                               "(permutation sampling), lime, kernel_shap, or a gradient method "
                               "(saliency, input_x_gradient, integrated_gradients). Default: occlusion."),
    granularity: str = typer.Option(None, "--granularity", help="Features: token, word (sub-words "
                                    "joined by whitespace) or span (the tagged categories' "
                                    "spans). Default: token."),
    baseline: str = typer.Option(None, "--baseline", help="What replaces a feature: unk, pad or "
                                 "mask token, delete (remove it), sample (random tokens, "
                                 "averaged). Default: unk."),
    target: str = typer.Option(None, "--target", help="reference (the completion) or generation "
                               "(the row's prediction). Default: reference."),
    n_samples: int = typer.Option(None, "--n-samples", help="Permutations (shapley) or masks "
                                  "(lime, kernel_shap) per example. Default: 64."),
    max_examples: int = typer.Option(None, "--max-examples", help="Only the first N rows. Default: 24."),
    batch_size: int = typer.Option(None, "--batch-size", help="Perturbations per forward pass. "
                                   "Default: sized from --memory-budget-mb."),
    memory_budget_mb: float = typer.Option(None, "--memory-budget-mb", help="Memory one batch "
                                           "of perturbations may use. Default: 1024."),
    seed: int = typer.Option(None, "--seed", help="Seed of the sampling methods. Default: 0."),
    heatmap: bool = typer.Option(None, "--heatmap/--no-heatmap", help="Write the HTML heat-map "
                                 "Default: yes."),
) -> None:
    """Attribute each example's target to the tokens of its clause (batched perturbations);
    resumable: rerunning after an interruption skips the finished examples."""
    from pydantic import ValidationError
    from rich.table import Table

    from tunelens.config import ExplanationConfig, format_validation_error, load_study
    from tunelens.explain import explain_run

    base = load_study(_existing(config)).explanation if config else ExplanationConfig()
    flags = {"method": method, "granularity": granularity, "baseline": baseline, "target": target,
             "n_samples": n_samples, "max_examples": max_examples, "batch_size": batch_size,
             "memory_budget_mb": memory_budget_mb, "seed": seed, "heatmap": heatmap}
    try:
        cfg = ExplanationConfig.model_validate(
            {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise TunelensError(f"explain: {format_validation_error(exc)}") from None
    summary = explain_run(model, _existing(data), out, cfg)
    table = Table(title=f"explain -> {out}")
    for col in ("examples", "resumed", "features", "method", "forward passes", "perturbations",
                "seconds"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["examples"]), str(summary["resumed"]), str(summary["features"]),
                  summary["method"], str(summary["forward_passes"]), str(summary["perturbations"]),
                  f"{summary['seconds']:.1f}")
    console.print(table)
    if summary["heatmap"]:
        console.print(f"heat-map: {summary['heatmap']}", highlight=False)
