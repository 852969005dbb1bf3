"""Are strategies distinct, and is the best run ahead of the runner-up? ``stats/tests.json``.

Every seed of a cell is used (:mod:`tunelens.compare.runs`: runs differing only by seed are
replicates). Per group (model × objective × rag) and metric, each strategy is a matrix of
seeds × test examples over the examples every run of the group has a value for. When every
strategy has two or more seeds and the seeds vary, the runs are the unit
(:func:`tunelens.compare.seeded.compare_seeded`: a t-test on per-seed means, a hierarchical
bootstrap interval). Otherwise the example-level tests are kept
(:func:`tunelens.compare.significance.compare_paired` on the seed-averaged per-example values),
and every result is marked ``single_seed: true``: the report says so beside the finding and never
makes it a headline, since one training run per strategy cannot separate a strategy from its seed.

The best run is judged by a paired test against the runner-up (``tests.json["best"]``), per
quality metric: cells ranked by their seed-averaged score as the tables show it (corpus BLEU/chrF),
the top two tested like any pair on per-example (sentence-level) scores. Every row that can
become a sentence is marked ``finding: true`` for the report-wide Benjamini–Hochberg family
(:mod:`tunelens.compare.multiplicity`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunelens.compare import concentration
from tunelens.compare.intervals import mean_interval
from tunelens.compare.runs import RunInfo, strategy_key
from tunelens.compare.seeded import compare_seeded, seeds_vary
from tunelens.compare.significance import compare_paired
from tunelens.config import ComparisonConfig
from tunelens.evaluate import specs

# per-example numbers that are bookkeeping, not quality
QUALITY_SKIP = {"n", "count", "length", "prediction_length", "reference_length", "judge_attempts"}
KIND_ORDER = {"concentration": 0, "quality": 1, "category": 2}

__all__ = ["QUALITY_SKIP", "aligned", "compare_arms", "series_by_metric", "tests"]


def tests(runs: list[RunInfo], conc: dict, shares: dict, cfg: ComparisonConfig) -> dict:
    """The content of ``stats/tests.json`` (before the report-wide family is applied)."""
    return {"alpha": cfg.alpha, "fdr_q": cfg.fdr_q, "confidence": cfg.confidence,
            "permutations": cfg.permutations,
            "permutation_test": "paired sign-flip on the mean difference (two-sided)",
            "correction": "Holm, over the pairwise comparisons of one metric in one group; "
                          "Benjamini-Hochberg over every test the report can state",
            "groups": _groups(runs, conc, shares, cfg), "best": _best(runs, cfg)}


def series_by_metric(run: RunInfo, conc: dict, shares: dict) -> dict[str, tuple[str, pd.Series]]:
    """Every per-example metric of a run, labelled by its kind."""
    out: dict[str, tuple[str, pd.Series]] = {}
    if run.name in conc:
        for m in concentration.METRICS:
            out[m] = ("concentration", conc[run.name][m])
    if run.name in shares:
        for c in shares[run.name].columns:
            out[f"share_{c}"] = ("category", shares[run.name][c])
    if run.per_example is not None:
        for m in run.per_example.columns:
            if m not in QUALITY_SKIP:
                out[m] = ("quality", run.per_example[m])
    return out


def aligned(series: dict) -> pd.DataFrame:
    """Examples × labels over the examples every label has a finite value for."""
    frame = pd.concat(series, axis=1, join="inner")
    return frame.replace([np.inf, -np.inf], np.nan).dropna()


def _seed_key(r: RunInfo) -> int:
    return -1 if r.seed is None else r.seed


def _arms(members: list[RunInfo]) -> dict[str, list[RunInfo]]:
    """Arm (strategy, with the prompt when the study names prompts) -> its runs (seeds), in
    catalog order, seeds ascending."""
    arms: dict[str, list[RunInfo]] = {}
    for r in sorted(members, key=lambda r: (strategy_key(r.arm), _seed_key(r))):
        arms.setdefault(r.arm, []).append(r)
    return arms


def _matrices(arms: dict[str, list[str]], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Arm -> its runs × examples (numpy indexing: this runs for every metric of every group)."""
    data, where = frame.to_numpy().T, {c: i for i, c in enumerate(frame.columns)}
    return {s: data[[where[c] for c in cols]] for s, cols in arms.items()}


def compare_arms(arms: dict[str, list[str]], frame: pd.DataFrame, seeds: dict[str, list],
             cfg: ComparisonConfig, offset: int) -> dict:
    """Seed-level when every arm has varying seeds, else example-level marked ``single_seed``."""
    mats = _matrices(arms, frame)
    if seeds_vary(mats):
        return compare_seeded(mats, seeds, cfg.alpha, cfg.bootstrap_samples, cfg.confidence,
                              cfg.seed + offset)
    out = compare_paired({s: m.mean(axis=0) for s, m in mats.items()}, cfg.alpha, cfg.permutations,
                         cfg.seed + offset, cfg.confidence)
    out["single_seed"], out["seeds"] = True, seeds
    return out


def _groups(runs: list[RunInfo], conc: dict, shares: dict, cfg: ComparisonConfig) -> list:
    by_group: dict[tuple, list[RunInfo]] = {}
    for r in runs:
        if series_by_metric(r, conc, shares):  # a failed or unevaluated run has nothing to compare
            by_group.setdefault(r.group, []).append(r)
    out = []
    for (model, objective, rag), members in sorted(
            by_group.items(), key=lambda kv: (kv[1][0].params or 0, kv[0])):
        arms = _arms(members)
        if len(arms) < 2:
            continue
        per_run = {r.name: series_by_metric(r, conc, shares) for r in members}
        metric_names = sorted(set.intersection(*(set(v) for v in per_run.values())),
                              key=lambda m: (KIND_ORDER[per_run[members[0].name][m][0]], m))
        seeds = {s: [r.seed for r in rs] for s, rs in arms.items()}
        result = {"model": model, "objective": objective, "rag": rag,
                  "runs": {s: rs[0].name for s, rs in arms.items()}, "seeds": seeds,
                  "metrics": {}, "skipped": {}}
        for i, metric in enumerate(metric_names):
            kind = per_run[members[0].name][metric][0]
            frame = aligned({r.name: per_run[r.name][metric][1] for r in members})
            if len(frame) < 2:
                result["skipped"][metric] = f"{len(frame)} example(s) common to all strategies"
                continue
            if kind == "category" and float(frame.to_numpy().sum()) == 0.0:
                continue  # a category no strategy ever attributes to is not a question
            names = {s: [r.name for r in rs] for s, rs in arms.items()}
            stats_ = compare_arms(names, frame, seeds, cfg, i)
            stats_["kind"] = kind
            stats_["intervals"] = {s: mean_interval(m.mean(axis=0), cfg.bootstrap_samples,
                                                    cfg.confidence, cfg.seed + i)
                                   for s, m in _matrices(names, frame).items()}
            result["metrics"][metric] = stats_
        out.append(result)
    return out


def _ranking(arms: dict[str, list[RunInfo]], metric: str, frame: pd.DataFrame) -> dict[str, float]:
    """Cell -> the score cells are ranked by: the mean over seeds of each run's own aggregate
    (corpus BLEU/chrF, the number the report's tables and best-run sentence quote) when every run
    has one, else the mean per-example score."""
    if all(r.aggregate.get(metric) is not None for rs in arms.values() for r in rs):
        return {c: float(np.mean([r.aggregate[metric] for r in rs])) for c, rs in arms.items()}
    return {c: float(m.mean()) for c, m in
            _matrices({c: [r.name for r in rs] for c, rs in arms.items()}, frame).items()}


def _best(runs: list[RunInfo], cfg: ComparisonConfig) -> dict:
    """Per quality metric: the top cell against the runner-up, paired by example; cells ranked
    as the tables rank them (:func:`_ranking`), the test on sentence-level scores."""
    cells: dict[str, list[RunInfo]] = {}
    for r in runs:
        if r.per_example is not None:
            cells.setdefault(r.cell, []).append(r)
    metrics = sorted({m for rs in cells.values() for r in rs for m in r.per_example.columns
                      if m not in QUALITY_SKIP and specs.better(m) == "higher"})
    out = {}
    for i, metric in enumerate(metrics):
        arms = {c: sorted(rs, key=_seed_key) for c, rs in cells.items()
                if all(metric in r.per_example.columns for r in rs)}
        if len(arms) < 2:
            continue
        frame = aligned({r.name: r.per_example[metric] for rs in arms.values() for r in rs})
        if len(frame) < 2:
            continue
        means = _ranking(arms, metric, frame)
        ranked = sorted(arms, key=lambda c: -means[c])
        top, second = ranked[:2]
        pair = {c: [r.name for r in arms[c]] for c in (top, second)}
        res = compare_arms(pair, frame, {c: [r.seed for r in arms[c]] for c in pair}, cfg, 1000 + i)
        out[metric] = {"best": top, "runner_up": second, "n": res["n"], "cells": len(arms),
                       "single_seed": res["single_seed"], **res["pairwise"][0]}
    return out
