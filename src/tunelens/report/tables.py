"""The report's per-run tables, one row per cell: the mean over its seeds, the seed range, n.

``compare`` summarises every number over a cell's seeds (:mod:`tunelens.compare.cells`); here the
summaries become table cells. Each cell shows the mean and, under it, the lowest and highest seed
when the cell has several; a row with one seed says ``n = 1`` in its seeds column and, where there
is one, each value gives the interval over test examples instead (labelled "examples": it measures
that one run, not seed-to-seed noise). A value averaging fewer seeds than its row (a seed that
failed to evaluate) says how many: ``n = 1 of 2``.
Quality tables show each run's own aggregate — corpus BLEU and chrF as evaluate wrote them — so
one metric has one definition in every table; the paired tests (sentence-level) are elsewhere.
"""

from __future__ import annotations

from tunelens import format as formatting
from tunelens.evaluate import specs
from tunelens.report.wording import arm_of

# the quality tables, each narrow enough to read without scrolling; metrics no family names go last
QUALITY_TABLES = tuple((title, specs.of_family(*families)) for title, families in specs.QUALITY_FAMILIES)
TRAINING_COLUMNS = ("val_loss_before", "val_loss_after", "wall_seconds", "tokens_per_second", "peak_rss_mb")


def seed_cell(summary: dict | None, digits: int = 3, examples: dict | None = None,
              show=None, of: int | None = None) -> dict:
    """``{"value", "spread", "n", "mean"}`` of one table cell from an :func:`over_seeds` summary.

    ``spread``: "lo – hi" of the seeds when n ≥ 2; with one seed, the interval over examples
    (``examples``: ``{"lo", "hi"}`` or a pair) when there is one. ``of``: the seeds of the row;
    a value over fewer says so ("n = 1 of 2").
    """
    write = show or (lambda v: formatting.number(v, digits))
    if not summary:
        return {"value": formatting.DASH, "spread": "", "n": 0, "mean": None}
    n = summary["n"]
    parts = []
    if n >= 2:
        parts.append(f"{write(summary['min'])} – {write(summary['max'])}")
    else:
        lo, hi = (examples.get("lo"), examples.get("hi")) if isinstance(examples, dict) else \
            (examples or (None, None))
        if lo is not None and hi is not None:
            parts.append(f"examples {write(lo)} – {write(hi)}")
    if of is not None and n < of:
        parts.append(f"n = {n} of {of}")
    return {"value": write(summary["mean"]), "spread": "; ".join(parts), "n": n, "mean": summary["mean"]}


def seeds_label(cell: dict) -> str:
    """``0, 1, 2``; one seed: ``0 (n = 1)`` (a run without a seed: ``n = 1``)."""
    seeds = cell["seeds"]
    text = ", ".join(formatting.DASH if s is None else str(s) for s in seeds)
    if len(seeds) == 1:
        return "n = 1" if seeds[0] is None else f"{text} (n = 1)"
    return text


def quality(cells: list[dict], runs: list[dict]) -> dict:
    """Quality tables by family of metric, one row per cell; a metric that is 0 for every run
    is named, not tabled."""
    intervals = {r["name"]: r.get("intervals") or {} for r in runs}
    rows = [c for c in cells if c["aggregate"]]
    present = list(dict.fromkeys(k for c in rows for k in c["aggregate"]))
    zero = [k for k in present if all(c["aggregate"].get(k, {}).get("max", 0) in (0, None)
                                      and c["aggregate"].get(k, {}).get("min", 0) in (0, None) for c in rows)
            and any(k in c["aggregate"] for c in rows)]
    families = [(title, [k for k in keys if k in present]) for title, keys in QUALITY_TABLES]
    named = {k for _, keys in QUALITY_TABLES for k in keys}
    rest = [k for k in present if k not in named]
    if rest:
        families[-1] = (families[-1][0] if families[-1][1] else "Other metrics", families[-1][1] + rest)
    tables = []
    for title, keys in families:
        columns = [k for k in keys if k not in zero]
        if columns:
            body = [{"name": c["cell"], "seeds": seeds_label(c),
                     "cells": _quality_cells(c, columns, rows, intervals)} for c in rows]
            tables.append({"title": title, "columns": columns, "rows": body})
    return {"tables": tables, "zero": zero}


def _quality_cells(cell: dict, columns: list[str], rows: list[dict], intervals: dict) -> list[dict]:
    out = []
    for c in columns:
        summary = cell["aggregate"].get(c)
        # one seed: the evaluation's bootstrap interval of that run, over examples
        evaluated = cell.get("evaluated", cell["runs"])
        single = next((intervals[r].get(c) for r in evaluated if r in intervals), None)
        item = seed_cell(summary, specs.digits(c), single if summary and summary["n"] == 1 else None,
                         of=len(cell["runs"]))
        means = [r["aggregate"][c]["mean"] for r in rows if c in r["aggregate"]]
        target = (min(means) if specs.lower_is_better(c) else max(means)) if means else None
        item["best"] = summary is not None and summary["mean"] == target and len(set(means)) > 1
        out.append(item)
    return out


def training(cells: list[dict]) -> list[dict]:
    """One row per trained cell (a RAG cell shares its twin's models, so it is not repeated)."""
    seen, out = set(), []
    for c in cells:
        t = c.get("training") or {}
        key = tuple(c.get("model_dirs") or [c["cell"]])
        if not t or key in seen:
            continue
        seen.add(key)
        trainable, total = (t.get(k, {}).get("mean") for k in ("trainable_params", "total_params"))
        share = formatting.share(trainable / total, digits=2) if trainable and total else formatting.DASH
        digits = {"wall_seconds": 1, "tokens_per_second": 0, "peak_rss_mb": 0}
        out.append({"name": c["cell"], "strategy": arm_of(c), "seeds": seeds_label(c), "share": share,
                    "trainable": trainable, "total": total,
                    "cells": [seed_cell(t.get(k), digits.get(k, 3)) for k in TRAINING_COLUMNS]})
    return out


def concentration(per_cell: dict, per_run: dict, cells: list[dict]) -> list[dict]:
    """Concentration rows per cell; a one-seed cell gets its run's interval over examples."""
    out = []
    for c in cells:
        summary = per_cell.get(c["cell"])
        if not summary:
            continue
        single = per_run.get(c["runs"][0], {}) if summary["gini"]["n"] == 1 else {}
        out.append({"name": c["cell"], "seeds": seeds_label(c),
                    "examples": seed_cell(summary.get("n_examples"), 0),
                    "features": seed_cell(summary.get("mean_features"), 1),
                    "cells": [seed_cell(summary.get(m), 3, single.get(m))
                              for m in ("gini", "gini_adjusted", "entropy", "top_k_share")]})
    return out


def enrichment(per_cell: dict, per_run: dict, cells: list[dict], categories: list[str]) -> list[dict]:
    """Enrichment rows per cell (× suffix); a one-seed cell gets its run's interval over examples."""
    out = []
    for c in cells:
        summary = per_cell.get(c["cell"])
        if not summary:
            continue
        run = per_run.get(c["runs"][0], {})
        row = []
        for cat in categories:
            s = summary.get(cat)
            row.append(seed_cell(s, 2, run.get(cat) if s and s["n"] == 1 else None,
                                 show=lambda v: f"{v:.2f}×"))
        out.append({"name": c["cell"], "seeds": seeds_label(c), "cells": row})
    return out
