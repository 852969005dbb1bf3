"""``compare_study``: the study folder in, ``stats/*.json`` out.

Files written (each atomically, after everything has been computed, so a failure leaves the old
set untouched): ``runs.json`` (the run index, failures included), ``concentration.json``,
``category_shares.json``, ``tests.json`` (distinctness across strategies), ``agreement.json``
and ``scale.json``, then ``inputs.json``: the content fingerprint of every file the statistics
were computed from (:func:`input_fingerprint`), which the report checks before reusing them.
NaN never reaches the JSON: an undefined number is ``null``.

Runs the study does not record an identity for are not compared; they are listed among the
failures as ``unrecorded`` (:func:`tunelens.compare.runs.unrecorded_outputs`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from tunelens.compare import agreement as agreement_mod
from tunelens.compare import category_shares, cells, concentration, distinct, multiplicity, scale, targets
from tunelens.compare.distinct import QUALITY_SKIP
from tunelens.compare.distinct import aligned as _aligned
from tunelens.compare.features import choose_level, features
from tunelens.compare.intervals import mean_interval
from tunelens.compare.runs import (
    RunInfo,
    discover_runs,
    primary_runs,
    read_targets,
    strategy_key,
    unrecorded_outputs,
)
from tunelens.config import ComparisonConfig
from tunelens.errors import TunelensError
from tunelens.evaluate import specs
from tunelens.fingerprint import fingerprint
from tunelens.io import json_safe, read_json, write_json
from tunelens.layout import StudyLayout

STEPS = ("attributions", "concentration", "tests", "agreement", "scale", "write")
STAT_FILES = ("runs", "concentration", "category_shares", "tests", "agreement", "scale", "targets")
INPUTS_FILE = "inputs.json"  # the fingerprint of what the statistics were computed from
STATS_FORMAT = 5  # bumped when the layout of stats/*.json changes; older files are recomputed


def input_fingerprint(study_dir: Path) -> str:
    """The content fingerprint of every file ``compare_study`` reads in a study folder.

    Run identities, the runner's status, each trained model's ``run.json`` (not its weights),
    every metrics and attribution file. A touched file keeps it; an edited, added or removed one
    changes it (folders are hashed with their file names).
    """
    layout = StudyLayout(Path(study_dir))
    run_jsons = sorted(layout.models.glob("*/run.json"))
    names = [p.relative_to(layout.root).as_posix() for p in run_jsons]
    return fingerprint(names, files=[layout.runs, layout.status, *run_jsons, layout.metrics_dir,
                                     layout.attributions_dir])


def compare_study(study_dir: Path, config: ComparisonConfig | None = None, out: Path | None = None,
                  progress: Callable[[str], None] | None = None) -> dict:
    """Compute every comparison statistic of a study and write them to ``out`` (``<study>/stats``).

    Returns the same objects that were written, keyed by file stem. ``progress(step)`` is called
    as each of :data:`STEPS` ends.
    """
    cfg = config or ComparisonConfig()
    study_dir = Path(study_dir)
    out = Path(out) if out is not None else StudyLayout(study_dir).stats
    tick = progress or (lambda step: None)
    runs = discover_runs(study_dir)
    inputs = {"format": STATS_FORMAT, "fingerprint": input_fingerprint(study_dir)}
    unrecorded = unrecorded_outputs(study_dir, runs)
    if not runs:
        hint = (f" ({len(unrecorded)} output(s) without one, e.g. {unrecorded[0]['run']})"
                if unrecorded else "")
        raise TunelensError(f"{study_dir}: no runs found (no run identities in runs/ or "
                            f"models/*/run.json){hint}")
    primaries = sorted(primary_runs(runs), key=lambda r: (r.params or 0, r.model, strategy_key(r.arm),
                                                           r.objective, r.rag))
    frames = {r.name: read_targets(r.attributions) for r in runs if r.attributions}
    main = targets.main_target(frames)
    attributions = {n: f[main] for n, f in frames.items()}
    tick("attributions")
    level = choose_level(runs, StudyLayout(study_dir), cfg.feature_level)
    by_target = {n: {t: features(f, level) for t, f in fs.items()} for n, fs in frames.items()}
    measured = {n: fs[main] for n, fs in by_target.items()}
    conc = {n: concentration.per_example(a, cfg.top_k) for n, a in measured.items()}
    shares = {n: category_shares.per_example(a) for n, a in measured.items()}
    counts = {n: category_shares.feature_shares(a) for n, a in measured.items()}
    replicates = cells.members(runs, primaries)
    result = {"concentration": {**_concentration_summary(primaries, conc, cfg, level), "target": main,
                                "per_cell": cells.concentration_cells(replicates, conc)},
              "category_shares": _shares_summary(primaries, shares, cfg, counts, level,
                                                 cells.enrichment_cells(replicates, shares, counts)),
              "targets": targets.compare_targets(replicates, by_target, cfg, main)}
    tick("concentration")
    result["tests"] = distinct.tests(runs, conc, shares, cfg)
    tick("tests")
    result["agreement"] = _agreement(runs, primaries, attributions, cfg)
    tick("agreement")
    result["scale"] = {"threshold_per_decade": cfg.plateau_threshold, "confidence": cfg.confidence,
                       "alpha": cfg.alpha,
                       "curves": _scale_curves(runs, conc, cfg, _enrichment_jobs(shares, counts))}
    tick("scale")
    result["runs"] = _run_index(study_dir, runs, primaries, attributions, unrecorded)
    # last: every p a sentence can come from, from any step above, in one BH family
    result["tests"]["family"] = multiplicity.report_family(result, cfg.fdr_q, cfg.alpha)
    result = json_safe(result)  # what the caller gets is what the files say (NaN policy: null)
    for stem in STAT_FILES:
        write_json(out / f"{stem}.json", result[stem])
    write_json(out / INPUTS_FILE, inputs)  # last: it vouches for the files above
    tick("write")
    return result


def load_stats(stats_dir: Path) -> dict | None:
    """The objects ``compare_study`` wrote; None if any file is missing or of another format."""
    paths = {stem: Path(stats_dir) / f"{stem}.json" for stem in STAT_FILES}
    if not all(p.exists() for p in paths.values()):
        return None
    stats = {stem: read_json(p) for stem, p in paths.items()}
    if not isinstance(stats["runs"], dict) or stats["runs"].get("format") != STATS_FORMAT:
        return None
    return stats


def stored_fingerprint(stats_dir: Path) -> str | None:
    """The input fingerprint ``compare_study`` stored with its statistics, if any."""
    path = Path(stats_dir) / INPUTS_FILE
    if not path.exists():
        return None
    raw = read_json(path)
    if not isinstance(raw, dict) or raw.get("format") != STATS_FORMAT:
        return None
    return raw.get("fingerprint")


# -- steps --------------------------------------------------------------------------------------


def _concentration_summary(primaries: list[RunInfo], conc: dict[str, pd.DataFrame],
                           cfg: ComparisonConfig, level: str = "token") -> dict:
    names = [r.name for r in primaries if r.name in conc]
    metrics = [*concentration.METRICS, *concentration.EXTRA_METRICS]
    return {
        "top_k": cfg.top_k, "metrics": list(concentration.METRICS), "adjusted": "gini_adjusted",
        "feature_level": level,
        "null": "gini_adjusted = Gini / ((n-1)/(2n)), the expected Gini of n i.i.d. exponential scores",
        "per_run": {n: {"n_examples": int(len(conc[n])), "mean_features": float(conc[n]["n_features"].mean())
                        if len(conc[n]) else None,
                        **{m: _interval(conc[n][m], cfg, i) for i, m in enumerate(metrics)}}
                    for n in names},
        "per_example": {n: conc[n].reset_index().to_dict(orient="records") for n in names},
    }


def _agreement(runs: list[RunInfo], primaries: list[RunInfo], attributions: dict,
               cfg: ComparisonConfig) -> dict:
    # cell -> its runs, the primary (lowest seed) first, cells in the order of the primaries
    replicates = {c: [r.name for r in rs] for c, rs in cells.members(runs, primaries).items()}
    vectors = {n: agreement_mod.example_vectors(a) for n, a in attributions.items()}
    return agreement_mod.agreement(vectors, replicates, cfg.top_k, cfg.bootstrap_samples,
                                   cfg.confidence, cfg.seed)


def _run_index(study_dir: Path, runs: list[RunInfo], primaries: list[RunInfo], attributions: dict,
               unrecorded: list[dict]) -> dict:
    primary_names = [r.name for r in primaries]
    failures = [{"run": r.name, "status": r.status, "error": r.error}
                for r in runs if r.status not in ("ok",)]
    return {"format": STATS_FORMAT, "study": str(study_dir), "runs": [r.summary() for r in runs],
            "primary": primary_names, "cells": cells.cell_index(runs, primaries),
            "failures": failures + unrecorded,
            "n_attributed": sum(1 for n in primary_names if n in attributions),
            "sizes": {r.model: r.params for r in primaries}}


# -- pieces -------------------------------------------------------------------------------------


def _interval(values, cfg: ComparisonConfig, offset: int = 0) -> dict:
    return mean_interval(values, cfg.bootstrap_samples, cfg.confidence, cfg.seed + offset)


def _shares_summary(primaries: list[RunInfo], shares: dict[str, pd.DataFrame], cfg: ComparisonConfig,
                    counts: dict[str, pd.DataFrame] | None = None, level: str = "token",
                    per_cell: dict | None = None) -> dict:
    """Shares of |attribution| per category and their enrichment (share ÷ share of features).

    ``per_cell``: each cell's enrichment over its seeds (:func:`cells.enrichment_cells`); a
    strategy's or model's enrichment is then the mean over its cells of those seed means, the
    numbers of the report's enrichment table, rather than of each cell's first seed."""
    cats: list[str] = []
    for r in primaries:
        if r.name in shares:
            cats += [c for c in shares[r.name].columns if c not in cats]
    per_run = {r.name: {c: _interval(shares[r.name][c], cfg) for c in cats}
               for r in primaries if r.name in shares}
    enrich = {n: category_shares.enrichment(shares[n].reindex(columns=cats, fill_value=0.0),
                                            counts[n], cfg.bootstrap_samples, cfg.confidence, cfg.seed)
              for n in per_run} if counts is not None else {}
    per_strategy: dict[str, dict] = {}
    per_model: dict[str, dict] = {}
    cell_of = {r.name: r.cell for r in primaries}
    for key_of, target in ((lambda r: r.arm, per_strategy), (lambda r: r.model, per_model)):
        members: dict[str, list[str]] = {}
        for r in primaries:
            if r.name in per_run:
                members.setdefault(key_of(r), []).append(r.name)
        for key, names in members.items():
            target[key] = {"runs": names,
                           "shares": {c: float(np.mean([per_run[n][c]["mean"] for n in names]))
                                      for c in cats},
                           "enrichment": {c: _mean_of([_enriched(n, c, enrich, per_cell, cell_of)
                                                       for n in names]) for c in cats}}
    for r in primaries:
        if r.model in per_model:
            per_model[r.model]["params"] = r.params
    return {"categories": cats, "feature_level": level, "per_run": per_run, "enrichment": enrich,
            "enrichment_per_cell": per_cell or {},
            "enrichment_definition": "mean share of |attribution| / mean share of features, per category",
            "per_strategy": _ordered(per_strategy),
            "per_model": dict(sorted(per_model.items(), key=lambda kv: (kv[1].get("params") or 0, kv[0])))}


def _enriched(name: str, category: str, enrich: dict, per_cell: dict | None, cell_of: dict) -> float | None:
    """A cell's enrichment in ``category``: the mean over its seeds where known, else its run's."""
    if per_cell is not None:
        return ((per_cell.get(cell_of[name]) or {}).get(category) or {}).get("mean")
    return enrich[name][category]["mean"] if name in enrich else None


def _mean_of(values: list) -> float | None:
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


# the categories of the published claim under test (arXiv 2604.15589: larger models rely more on
# numbers and rule ids): their enrichment gets a scale curve and a trend test
ENRICHMENT_TRENDS = ("NUMBER", "RULE_ID")


def _enrichment_jobs(shares: dict[str, pd.DataFrame], counts: dict[str, pd.DataFrame]) -> dict:
    """``enrichment_<category>`` -> run -> (mass-share series, feature-share series)."""
    jobs: dict[str, dict] = {}
    for name, table in shares.items():
        for c in ENRICHMENT_TRENDS:
            if c in table.columns and c in counts[name].columns and counts[name][c].sum() > 0:
                jobs.setdefault(f"enrichment_{c}", {})[name] = (
                    table[c], counts[name][c].reindex(table.index))
    return jobs


def _scale_curves(runs: list[RunInfo], conc: dict, cfg: ComparisonConfig,
                  extra: dict | None = None) -> list:
    """One curve per (arm, objective, rag) with two or more model sizes, per metric (an arm is
    the strategy, with the prompt when the study names prompts).

    Every run of a cell counts: runs of one size that differ by seed are its replicates.
    ``extra``: more (metric -> run -> (numerator, denominator) series) to fit, e.g. enrichment.
    """
    groups: dict[tuple, list[RunInfo]] = {}
    for r in runs:
        if r.params:
            groups.setdefault((r.arm, r.objective, r.rag), []).append(r)
    curves = []
    for (arm, objective, rag), members in sorted(
            groups.items(), key=lambda kv: (strategy_key(kv[0][0]), kv[0][1], kv[0][2])):
        if len({r.params for r in members}) < 2:
            continue
        for i, (metric, values, ratio) in enumerate(_scale_jobs(members, conc, extra or {})):
            c = _scale_curve(metric, members, values, ratio, cfg, cfg.seed + i)
            if c is not None:
                curves.append({"strategy": members[0].strategy, "arm": arm, "objective": objective,
                               "rag": rag, **c})
    return curves


def _scale_jobs(members: list[RunInfo], conc: dict, extra: dict) -> list[tuple[str, dict, dict | None]]:
    """(metric, run -> per-example series, run -> denominator series or None), sorted by metric.

    Every metric a run has per example (concentration, quality); a metric only aggregated
    (no per-example scores) gets empty series and is drawn, not tested.
    """
    per_example: dict[str, dict[str, pd.Series]] = {}
    for r in members:
        if r.name in conc:
            for m in (*concentration.METRICS, *concentration.EXTRA_METRICS):
                if m in conc[r.name]:
                    per_example.setdefault(m, {})[r.name] = conc[r.name][m]
        if r.per_example is not None:
            for m in r.per_example.columns:
                if m not in QUALITY_SKIP:
                    per_example.setdefault(m, {})[r.name] = r.per_example[m]
        for m in r.aggregate:
            if m not in QUALITY_SKIP:
                per_example.setdefault(m, {})
    jobs: list[tuple[str, dict, dict | None]] = [(m, v, None) for m, v in per_example.items()]
    for m, by_run in extra.items():
        jobs.append((m, {n: v[0] for n, v in by_run.items() if n in {r.name for r in members}},
                     {n: v[1] for n, v in by_run.items()}))
    return sorted(jobs, key=lambda j: j[0])


def _scale_curve(metric: str, members: list[RunInfo], values: dict, denominators: dict | None,
                 cfg: ComparisonConfig, seed: int) -> dict | None:
    """A curve whose points are each run's aggregate (corpus BLEU/chrF as in the tables) and
    whose tests resample the per-example (sentence-level) scores."""
    frame = _aligned(values) if values else None
    den = None
    if denominators is not None and frame is not None:
        den = _aligned({n: denominators[n] for n in frame.columns}).reindex(frame.index)
    rows = []
    for r in members:
        if metric in r.aggregate and r.aggregate[metric] is not None:
            lo, hi = r.intervals.get(metric, (None, None))
            rows.append({"run": r.name, "model": r.model, "params": r.params,
                         "value": r.aggregate[metric], "lo": lo, "hi": hi})
        elif frame is not None and r.name in frame.columns and len(frame):
            value = frame[r.name].mean() / (den[r.name].mean() if den is not None else 1.0)
            rows.append({"run": r.name, "model": r.model, "params": r.params, "value": float(value)})
    if not rows:
        return None
    testable = frame is not None and len(frame) >= 2 and all(r["run"] in frame.columns for r in rows)
    direction = "any" if denominators is not None else specs.better(metric)  # enrichment: descriptive
    return scale.curve(metric, pd.DataFrame(rows), frame if testable else None, cfg.plateau_threshold,
                       direction, cfg.bootstrap_samples, cfg.confidence, seed,
                       alpha=cfg.alpha, denominator=den if testable else None,
                       finding=metric in cfg.scale_findings)


def _ordered(d: dict) -> dict:
    return dict(sorted(d.items(), key=lambda kv: strategy_key(kv[0])))
