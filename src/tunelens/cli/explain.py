"""The explain verb: token attributions of a run."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, console, err_console
from tunelens.config import ExplanationConfig, override
from tunelens.errors import check_choice
from tunelens.explain.catalog import BASELINES, GRANULARITIES, METHODS
from tunelens.format import choices, number
from tunelens.io import check_writable

_x = partial(opt.field_option, ExplanationConfig)


@app.command("explain")
def explain_cmd(
    model: str = opt.model_option(),
    data: Path = typer.Option(..., "--data", help="JSONL of dataset rows (id, prompt, completion) "
                              "or predictions rows (id, prompt, reference, prediction); "
                              "--target generation needs predictions rows (with both, rows "
                              "without a prediction are explained on the reference only)."),
    out: Path = opt.out_option("Attributions parquet (example_id, position, token, start, end, "
                           "category, score); a token heat-map <stem>.html is written beside it."),
    config: Path = opt.config_option("'explanation' section"),
    method: str = _x("method", "--method", choices(METHODS)),
    granularity: str = _x("granularity", "--granularity", "Features: " + choices(GRANULARITIES)),
    baseline: str = _x("baseline", "--baseline", "What replaces a feature: "
                       + choices(BASELINES)),
    target: str = _x("target", "--target", "reference (the completion), generation (the row's "
                     "prediction) or both (one parquet, a 'target' column)"),
    n_samples: int = _x("n_samples", "--n-samples", "Permutations (shapley) or masks (lime, "
                        "kernel_shap) per example"),
    max_examples: int = _x("max_examples", "--max-examples", "A sample of N rows, stratified by "
                           "topic and source (seeded by the config's sample_seed)"),
    batch_size: int = typer.Option(None, "--batch-size", help="Perturbations per forward pass "
                                   "(default: sized from --memory-budget-mb)."),
    memory_budget_mb: float = _x("memory_budget_mb", "--memory-budget-mb", "Memory one batch of "
                                 "perturbations may use"),
    seed: int = opt.seed_option("the sampling methods", ExplanationConfig),
    heatmap: bool = _x("heatmap", "--heatmap/--no-heatmap", "Write the HTML heat-map"),
    dtype: str = opt.dtype_option(trained=False),
    trust_remote_code: bool = opt.trust_remote_code_option(trained=False),
    prompt_format: str = opt.prompt_format_option(trained=False),
    threads: int = opt.threads_option(),
    shards: int = typer.Option(1, "--shards", min=1, help="Split the examples over this many "
                               "workers (each loads the model; --threads each) and merge their "
                               "parquet files in order: the same output as one worker."),
    backend: str = typer.Option("local", "--backend", help="Where --shards run: local (worker "
                                "processes) or ray (tasks on a Ray cluster; pip install ray)."),
    address: str = opt.address_option(),
) -> None:
    """Attribute each example's target to the tokens of its clause (batched perturbations);
    resumable: rerunning after an interruption skips the finished examples (and shards)."""
    from tunelens.ray_backend import check_backend

    check_choice(method, METHODS, "--method", optional=True)
    check_choice(granularity, GRANULARITIES, "--granularity", optional=True)
    check_choice(baseline, BASELINES, "--baseline", optional=True)
    opt.check_model_settings(dtype, prompt_format)
    opt.existing(data)
    check_writable(out, "file")
    check_backend(backend, address)
    cfg = override(opt.section(config, "explanation"), origin="explain", method=method,
                   granularity=granularity, baseline=baseline, target=target, n_samples=n_samples,
                   max_examples=max_examples, batch_size=batch_size,
                   memory_budget_mb=memory_budget_mb, seed=seed, heatmap=heatmap)
    opt.set_threads(threads)
    settings = {"dtype": dtype, "trust_remote_code": trust_remote_code,
                "prompt_format": prompt_format}
    _print_explained(out, _explain(model, data, out, cfg, settings, shards, backend, address,
                                   threads))


def _explain(model: str, data: Path, out: Path, cfg, settings: dict, shards: int, backend: str,
             address: str | None, threads: int | None) -> dict:
    """One process, or the examples split over ``shards`` workers of ``backend``."""
    if shards > 1 or backend == "ray":
        from tunelens.explain.shard import explain_sharded

        return explain_sharded(model, data, out, cfg, shards, backend=backend, address=address,
                               threads=threads, **settings)
    from tunelens.explain import explain_run

    return explain_run(model, data, out, cfg, **settings)


def _print_explained(out: Path, summary: dict) -> None:
    opt.print_table(f"explain -> {out}", ("examples", "resumed", "features", "method", "baseline",
                                          "forward passes", "perturbations", "seconds"),
                    [(summary["examples"], summary["resumed"], summary["features"], summary["method"],
                      summary["baseline"], summary["forward_passes"], summary["perturbations"],
                      number(summary["seconds"], 1))])
    if summary.get("truncated_examples"):
        err_console.print(f"[yellow]{summary['truncated_examples']} example(s) did not fit the "
                          "model's context: the context around the clause was cut from the left",
                          highlight=False)
    if summary.get("generation_skipped"):
        err_console.print(f"{summary['generation_skipped']} example(s) explained on the reference "
                          "only: no generation, or an empty one", highlight=False)
    if summary["heatmap"]:
        console.print(f"heat-map: {summary['heatmap']}", highlight=False)
