"""One row per cell: each per-run number summarised over the cell's seeds.

A study trained with ``seeds: [0, 1, 2]`` has three training runs per cell; the report's tables
show the cell, not its first seed. For every number a table shows (a corpus score, a training
statistic, a run's mean concentration or enrichment) the cell gets the mean over its seeds, the
lowest and highest seed (the seed-to-seed spread, in the metric's own units) and the number of
seeds. The spread is the range, not an interval: with two or three seeds a t-interval is wider
than the range itself and says little more than it, while "the seeds scored between 17.5 and
18.3" needs no statistics to read. What is *tested* stays elsewhere (seed-level tests in
:mod:`tunelens.compare.seeded`); this module only summarises, it decides nothing.
"""

from __future__ import annotations

import math

import pandas as pd

from tunelens.compare.concentration import EXTRA_METRICS, METRICS
from tunelens.compare.runs import TRAINING_KEYS, RunInfo

__all__ = ["cell_index", "concentration_cells", "enrichment_cells", "members", "over_seeds", "per_cell"]


def over_seeds(values: list) -> dict | None:
    """``{"mean", "min", "max", "n"}`` of the finite per-seed values; None when there are none."""
    x = [float(v) for v in values if isinstance(v, int | float) and not isinstance(v, bool)
         and math.isfinite(float(v))]
    if not x:
        return None
    return {"mean": sum(x) / len(x), "min": min(x), "max": max(x), "n": len(x)}


def _seed_key(r: RunInfo) -> int:
    return -1 if r.seed is None else r.seed


def members(runs: list[RunInfo], primaries: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """Cell -> its runs (seeds ascending), cells in the order of ``primaries``."""
    out: dict[str, list[RunInfo]] = {p.cell: [] for p in primaries}
    for r in sorted(runs, key=_seed_key):
        if r.cell in out:
            out[r.cell].append(r)
    return out


def per_cell(cells: dict[str, list[RunInfo]], value_of) -> dict[str, dict]:
    """Cell -> key -> :func:`over_seeds`, where ``value_of(run)`` gives a run's ``{key: value}``
    (None for a run that has no such numbers); keys in first-seen order, cells without any left out."""
    out: dict[str, dict] = {}
    for cell, runs in cells.items():
        rows = [v for v in (value_of(r) for r in runs) if v]
        keys = list(dict.fromkeys(k for row in rows for k in row))
        summary = {k: s for k in keys if (s := over_seeds([row.get(k) for row in rows])) is not None}
        if summary:
            out[cell] = summary
    return out


def _distinct_models(runs: list[RunInfo]) -> list[RunInfo]:
    """One run per trained model: a replicate that only re-ran attribution reuses its cell's
    model and must not count that training twice."""
    seen: set[str] = set()
    out = []
    for r in runs:
        if r.run_json and r.model_dir not in seen:
            seen.add(r.model_dir)
            out.append(r)
    return out


def cell_index(runs: list[RunInfo], primaries: list[RunInfo]) -> list[dict]:
    """The ``cells`` of ``stats/runs.json``: each cell's identity, runs and seeds, its quality
    aggregates (corpus BLEU/chrF as evaluate wrote them) and training statistics over seeds."""
    cells = members(runs, primaries)
    quality = per_cell(cells, lambda r: r.aggregate)
    trained = {c: _distinct_models(rs) for c, rs in cells.items()}
    training = per_cell(trained, lambda r: {k: r.run_json.get(k) for k in TRAINING_KEYS})
    out = []
    for p in primaries:
        rs = cells[p.cell]
        out.append({"cell": p.cell, "model": p.model, "strategy": p.strategy, "arm": p.arm,
                    "prompt": p.prompt, "objective": p.objective,
                    "rag": p.rag, "params": p.params, "runs": [r.name for r in rs],
                    "seeds": [r.seed for r in rs], "model_dirs": [r.model_dir for r in rs],
                    "evaluated": [r.name for r in rs if r.aggregate],
                    "aggregate": quality.get(p.cell, {}), "training": training.get(p.cell, {})})
    return out


def concentration_cells(cells: dict[str, list[RunInfo]], conc: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Cell -> each concentration measure (a run's mean over its examples) over seeds, with the
    examples and features per example of a run."""
    def value_of(r: RunInfo) -> dict | None:
        frame = conc.get(r.name)
        if frame is None or not len(frame):
            return None
        return {"n_examples": len(frame), "mean_features": float(frame["n_features"].mean()),
                **{m: float(frame[m].mean()) for m in (*METRICS, *EXTRA_METRICS)}}
    return per_cell(cells, value_of)


def enrichment_cells(cells: dict[str, list[RunInfo]], shares: dict[str, pd.DataFrame],
                     counts: dict[str, pd.DataFrame]) -> dict[str, dict]:
    """Cell -> category -> enrichment over seeds: each run's mean share of |attribution| ÷ its
    mean share of features (the point estimate of
    :func:`tunelens.compare.category_shares.enrichment`)."""
    return per_cell(cells, lambda r: enrichment_point(shares[r.name], counts[r.name])
                    if r.name in shares else None)


def enrichment_point(shares: pd.DataFrame, counts: pd.DataFrame) -> dict[str, float]:
    """Category -> mean share of |attribution| ÷ mean share of features over ``shares``' examples
    (columns of ``shares`` are category names); a category with no features is left out."""
    counts = counts.reindex(index=shares.index, fill_value=0.0)
    out = {}
    for c in shares.columns:
        if c in counts.columns and len(shares) and counts[c].mean() > 0:
            out[c] = float(shares[c].mean() / counts[c].mean())
    return out
