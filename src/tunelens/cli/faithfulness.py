"""The faithfulness verb: how far to trust each attribution method's scores of a run.

A verb of its own rather than a flag on ``explain``: it reads attributions already computed (the
slow part), so methods computed by separate ``explain`` calls (one parquet each) are compared on
the same examples in one table, and re-measuring never recomputes an attribution.
"""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, console
from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError, check_choice
from tunelens.explain.catalog import BASELINES
from tunelens.explain.faithfulness import CURVE_POINTS, FRACTIONS
from tunelens.format import DASH, choices, share
from tunelens.io import check_writable

FRACTIONS_HELP = ("Fractions of the top features removed (comprehensiveness) or kept (sufficiency), "
                  "comma-separated; their mean is the AOPC.")


@app.command("faithfulness")
def faithfulness_cmd(
    model: str = opt.model_option(),
    data: Path = typer.Option(..., "--data", help="The JSONL the attributions were computed on "
                              "(the explain verb's --data)."),
    attributions: list[Path] = typer.Option(..., "--attributions", help="Attributions parquet of "
                                            "the explain verb; repeat for several methods."),
    out: Path = opt.out_option("JSON: per method the means over examples and the share of examples "
                               "beating a random ranking; per example and method every measure."),
    baseline: str = typer.Option(None, "--baseline", help="What replaces a removed feature: "
                                 + choices(BASELINES) + " (default: the attributions' own)."),
    fractions: str = typer.Option(",".join(f"{q:g}" for q in FRACTIONS), "--fractions", help=FRACTIONS_HELP),
    curve_points: int = typer.Option(CURVE_POINTS, "--curve-points", min=2, help="Points of the deletion and "
                                     "insertion curves at most (all when the clause has fewer features)."),
    seed: int = opt.seed_option("the random reference ranking", ExplanationConfig),
    batch_size: int = typer.Option(None, "--batch-size", help="Perturbations per forward pass "
                                   "(default: sized from the memory budget)."),
    dtype: str = opt.dtype_option(trained=False),
    trust_remote_code: bool = opt.trust_remote_code_option(trained=False),
    prompt_format: str = opt.prompt_format_option(trained=False),
    threads: int = opt.threads_option(),
) -> None:
    """Comprehensiveness, sufficiency (ERASER) and deletion/insertion areas of each method's
    attributions, in log-probability of the target, beside a random ranking: a method that does
    not beat it does not explain the model (docs/explanations.md)."""
    check_choice(baseline, BASELINES, "--baseline", optional=True)
    opt.check_model_settings(dtype, prompt_format)
    opt.existing(data)
    for path in attributions:
        opt.existing(path)
    check_writable(out, "file")
    if out.suffix != ".json":
        raise TunelensError(f"{out}: the output must be a .json file")
    opt.set_threads(threads)
    from tunelens.explain.faithfulness_run import faithfulness_run

    summary = faithfulness_run(model, data, attributions, out, baseline=baseline,
                               fractions=parse_fractions(fractions), points=curve_points,
                               seed=0 if seed is None else seed, batch_size=batch_size, dtype=dtype,
                               trust_remote_code=trust_remote_code, prompt_format=prompt_format)
    print_faithfulness(out, summary)


def parse_fractions(text: str) -> tuple[float, ...]:
    """``0.01,0.1`` -> (0.01, 0.1); one line for anything that is not fractions in (0, 1]."""
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise TunelensError(f"--fractions {text!r}: expected comma-separated numbers") from None
    if not values or any(not 0 < v <= 1 for v in values):
        raise TunelensError(f"--fractions {text!r}: expected numbers in (0, 1]")
    return values


def print_faithfulness(out: Path, summary: dict) -> None:
    """One row per method (random last): AOPCs, curve areas, how often it beats random."""
    methods = summary["methods"]
    names = [m for m in methods if m != "random"] + (["random"] if "random" in methods else [])
    rows = []
    for name in names:
        row = methods[name]
        beats = row.get("beats_random_comprehensiveness")
        rows.append((name, row["examples"], row["comprehensiveness"], row["sufficiency"],
                     row["deletion_area"], row["insertion_area"],
                     DASH if beats is None else share(beats)))
    opt.print_table(f"faithfulness -> {out}", ("method", "n", "compr. ↑", "suff. ↓", "del. area ↓",
                                               "ins. area ↑", "> random"), rows, left=1)
    console.print(f"log-probability of the target, features replaced by {summary['baseline']}; "
                  "compr./suff.: means over the top "
                  f"{', '.join(f'{100 * q:g} %' for q in summary['fractions'])} of features; "
                  "> random: share of examples where the method's comprehensiveness beats a random "
                  "ranking's", highlight=False)
