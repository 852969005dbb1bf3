"""Reference vs generation: is a run explained differently on what it wrote than on what it should have?

With ``explanation.target: both`` every sampled example is attributed twice over the same prompt
features: once scoring the reference rule, once scoring the model's own generation. A run that
writes wrong rules can lean on different tokens for what it wrote; this module puts the two side
by side per cell (``stats/targets.json``):

* per target, the cell's mean Gini of |attribution| and its enrichment per category (share of
  |attribution| ÷ share of features), each a mean over seeds with the lowest and highest seed
  (:mod:`tunelens.compare.cells`), on the examples explained under both targets;
* per cell, paired tests of reference against generation over those examples — the Gini, and the
  attribution share of every rule category the prompts contain (OTHER aside; all of them, chosen
  before any difference is seen, so the choice cannot favour one). The features are the same prompt
  tokens under both targets, so a category's share of features is the same and a difference in
  its share of |attribution| *is* a difference in its enrichment. Tests are those of
  :func:`tunelens.compare.distinct.compare_arms`: seed-level (paired t-test on per-seed means)
  when the cell's seeds vary, else Wilcoxon over examples marked ``single_seed``. Holm within the
  cell; every row is marked ``finding`` and so enters the report-wide Benjamini–Hochberg family
  (:mod:`tunelens.compare.multiplicity`).

With one target in the study there is nothing to compare: ``per_cell`` is empty and ``targets``
says which target was explained.
"""

from __future__ import annotations

import pandas as pd

from tunelens.compare import category_shares, concentration
from tunelens.compare.cells import enrichment_point, over_seeds
from tunelens.compare.distinct import aligned, compare_arms
from tunelens.compare.runs import TARGETS, RunInfo
from tunelens.compare.significance import holm
from tunelens.config import ComparisonConfig

__all__ = ["TARGETS", "compare_targets", "main_target"]


def main_target(frames: dict[str, dict[str, pd.DataFrame]]) -> str:
    """The target every other measure uses: the reference when any run explains it, else the
    generation (a study with ``explanation.target: generation``)."""
    present = {t for by_target in frames.values() for t, f in by_target.items() if len(f)}
    return "reference" if "reference" in present or not present else "generation"


def compare_targets(cells: dict[str, list[RunInfo]], measured: dict[str, dict[str, pd.DataFrame]],
                    cfg: ComparisonConfig, main: str) -> dict:
    """The content of ``stats/targets.json``; ``measured[run][target]``: feature-level rows."""
    present = [t for t in TARGETS if any(len(m.get(t, ())) for m in measured.values())]
    out = {"targets": present, "main": main, "per_cell": {}}
    if len(present) < 2:
        return out
    for i, (cell, runs) in enumerate(cells.items()):
        both = [r for r in runs if all(len(measured.get(r.name, {}).get(t, ())) for t in TARGETS)]
        if both:
            result = _cell(both, measured, cfg, 2000 + 10 * i)
            if result is not None:
                out["per_cell"][cell] = result
    return out


def _per_run(frames: dict[str, pd.DataFrame], top_k: int) -> dict[str, pd.DataFrame]:
    """Target -> examples × (gini, share_<category>...), over examples explained under both."""
    tables = {}
    for t in TARGETS:
        conc = concentration.per_example(frames[t], top_k)[["gini"]]
        shares = category_shares.per_example(frames[t]).add_prefix("share_")
        tables[t] = conc.join(shares, how="inner")
    common = tables[TARGETS[0]].index.intersection(tables[TARGETS[1]].index)
    columns = tables[TARGETS[0]].columns.union(tables[TARGETS[1]].columns, sort=False)
    return {t: tables[t].reindex(index=common, columns=columns, fill_value=0.0) for t in TARGETS}


def _shares(table: pd.DataFrame) -> pd.DataFrame:
    """The ``share_<category>`` columns of a per-example table, named by category."""
    cols = [c for c in table.columns if c.startswith("share_")]
    return table[cols].rename(columns=lambda c: c.removeprefix("share_"))


def _summary(tables: dict[str, dict[str, pd.DataFrame]], counts: dict[str, pd.DataFrame]) -> dict:
    """Target -> Gini and enrichment per category over seeds, and the top (most enriched,
    OTHER aside) category."""
    out = {}
    for t in TARGETS:
        enrich = {n: enrichment_point(_shares(tables[n][t]), counts[n]) for n in tables}
        cats = list(dict.fromkeys(c for e in enrich.values() for c in e))
        by_cat = {c: s for c in cats if (s := over_seeds([enrich[n].get(c) for n in tables]))}
        named = {c: s["mean"] for c, s in by_cat.items() if c != "OTHER"}
        out[t] = {"gini": over_seeds([float(tables[n][t]["gini"].mean()) for n in tables]),
                  "enrichment": by_cat, "top": max(named, key=named.get) if named else None}
    return out


def _cell(runs: list[RunInfo], measured: dict, cfg: ComparisonConfig, seed: int) -> dict | None:
    tables = {r.name: _per_run(measured[r.name], cfg.top_k) for r in runs}
    counts = {r.name: category_shares.feature_shares(measured[r.name][TARGETS[0]]) for r in runs}
    summary = _summary(tables, counts)
    # every rule category the prompts have, chosen before looking at any difference: testing only
    # the most enriched one would pick categories whose noise already points one way
    categories = [c for c in summary[TARGETS[0]]["enrichment"] if c != "OTHER"]
    names = {t: [f"{r.name}|{t}" for r in runs] for t in TARGETS}
    seeds = {t: [r.seed for r in runs] for t in TARGETS}
    rows = []
    for j, metric in enumerate(["gini", *(f"share_{c}" for c in categories)]):
        frame = aligned({f"{n}|{t}": tables[n][t][metric] for n in tables for t in TARGETS})
        if len(frame) < 2 or (metric != "gini" and not frame.to_numpy().any()):
            continue
        res = compare_arms(names, frame, seeds, cfg, seed + j)
        rows.append({**res["pairwise"][0], "metric": metric, "n": res["n"], "finding": True})
    if not rows and not any(summary[t]["gini"] for t in TARGETS):
        return None
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = float(adjusted)
        row["significant"] = bool(adjusted < cfg.alpha)
    first = runs[0]
    n = rows[0]["n"] if rows else len(tables[first.name][TARGETS[0]])
    return {"model": first.model, "strategy": first.strategy, "arm": first.arm, "objective": first.objective,
            "rag": first.rag, "runs": [r.name for r in runs], "seeds": [r.seed for r in runs],
            "n_examples": n, **summary, "tests": rows}
