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
from tunelens.compare import category_shares, concentration, scale
from tunelens.compare.intervals import mean_interval
from tunelens.compare.runs import (
    RunInfo,
    discover_runs,
    primary_runs,
    read_attributions,
    strategy_key,
    unrecorded_outputs,
)
from tunelens.compare.significance import compare_paired
from tunelens.config import ComparisonConfig
from tunelens.errors import TunelensError
from tunelens.evaluate import specs
from tunelens.fingerprint import fingerprint
from tunelens.io import json_safe, read_json, write_json
from tunelens.layout import StudyLayout

STEPS = ("attributions", "concentration", "tests", "agreement", "scale", "write")
# per-example numbers that are bookkeeping, not quality
QUALITY_SKIP = {"n", "count", "length", "prediction_length", "reference_length", "judge_attempts"}
STAT_FILES = ("runs", "concentration", "category_shares", "tests", "agreement", "scale")
INPUTS_FILE = "inputs.json"  # the fingerprint of what the statistics were computed from
STATS_FORMAT = 2  # bumped when the layout of stats/*.json changes; older files are recomputed


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
    primaries = sorted(primary_runs(runs), key=lambda r: (r.params or 0, r.model, strategy_key(r.strategy),
                                                           r.objective, r.rag))
    attributions = {r.name: read_attributions(r.attributions) for r in runs if r.attributions}
    tick("attributions")
    conc = {n: concentration.per_example(a, cfg.top_k) for n, a in attributions.items()}
    shares = {n: category_shares.per_example(a) for n, a in attributions.items()}
    result = {"concentration": _concentration_summary(primaries, conc, cfg),
              "category_shares": _shares_summary(primaries, shares, cfg)}
    tick("concentration")
    result["tests"] = _tests(primaries, conc, shares, cfg)
    tick("tests")
    result["agreement"] = _agreement(runs, primaries, attributions, cfg)
    tick("agreement")
    result["scale"] = {"threshold_per_decade": cfg.plateau_threshold, "confidence": cfg.confidence,
                       "curves": _scale_curves(primaries, conc, cfg)}
    tick("scale")
    result["runs"] = _run_index(study_dir, runs, primaries, attributions, unrecorded)
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
                           cfg: ComparisonConfig) -> dict:
    names = [r.name for r in primaries if r.name in conc]
    return {
        "top_k": cfg.top_k, "metrics": list(concentration.METRICS),
        "per_run": {n: {"n_examples": int(len(conc[n])),
                        **{m: _interval(conc[n][m], cfg, i) for i, m in enumerate(concentration.METRICS)}}
                    for n in names},
        "per_example": {n: conc[n].reset_index().to_dict(orient="records") for n in names},
    }


def _tests(primaries: list[RunInfo], conc: dict, shares: dict, cfg: ComparisonConfig) -> dict:
    return {"alpha": cfg.alpha, "confidence": cfg.confidence, "permutations": cfg.permutations,
            "permutation_test": "paired sign-flip on the mean difference (two-sided)",
            "correction": "Holm, over the pairwise comparisons of one metric in one group",
            "groups": _distinctness(primaries, conc, shares, cfg)}


def _agreement(runs: list[RunInfo], primaries: list[RunInfo], attributions: dict,
               cfg: ComparisonConfig) -> dict:
    # cell -> its runs, the primary first, cells in the order of the primaries (size, strategy)
    replicates: dict[str, list[str]] = {p.cell: [p.name] for p in primaries}
    for r in sorted(runs, key=lambda r: -1 if r.seed is None else r.seed):
        if r.name not in replicates[r.cell]:
            replicates[r.cell].append(r.name)
    vectors = {n: agreement_mod.example_vectors(a) for n, a in attributions.items()}
    return agreement_mod.agreement(vectors, replicates, cfg.top_k, cfg.bootstrap_samples,
                                   cfg.confidence, cfg.seed)


def _run_index(study_dir: Path, runs: list[RunInfo], primaries: list[RunInfo], attributions: dict,
               unrecorded: list[dict]) -> dict:
    primary_names = [r.name for r in primaries]
    failures = [{"run": r.name, "status": r.status, "error": r.error}
                for r in runs if r.status not in ("ok",)]
    return {"format": STATS_FORMAT, "study": str(study_dir), "runs": [r.summary() for r in runs],
            "primary": primary_names, "failures": failures + unrecorded,
            "n_attributed": sum(1 for n in primary_names if n in attributions),
            "sizes": {r.model: r.params for r in primaries}}


# -- pieces -------------------------------------------------------------------------------------


def _interval(values, cfg: ComparisonConfig, offset: int = 0) -> dict:
    return mean_interval(values, cfg.bootstrap_samples, cfg.confidence, cfg.seed + offset)


def _shares_summary(primaries: list[RunInfo], shares: dict[str, pd.DataFrame],
                    cfg: ComparisonConfig) -> dict:
    cats: list[str] = []
    for r in primaries:
        if r.name in shares:
            cats += [c for c in shares[r.name].columns if c not in cats]
    per_run = {r.name: {c: _interval(shares[r.name][c], cfg) for c in cats}
               for r in primaries if r.name in shares}
    per_strategy: dict[str, dict] = {}
    per_model: dict[str, dict] = {}
    for key_of, target in ((lambda r: r.strategy, per_strategy), (lambda r: r.model, per_model)):
        members: dict[str, list[str]] = {}
        for r in primaries:
            if r.name in per_run:
                members.setdefault(key_of(r), []).append(r.name)
        for key, names in members.items():
            target[key] = {"runs": names,
                           "shares": {c: float(np.mean([per_run[n][c]["mean"] for n in names]))
                                      for c in cats}}
    for r in primaries:
        if r.model in per_model:
            per_model[r.model]["params"] = r.params
    return {"categories": cats, "per_run": per_run, "per_strategy": _ordered(per_strategy),
            "per_model": dict(sorted(per_model.items(), key=lambda kv: (kv[1].get("params") or 0, kv[0])))}


def _series_by_metric(run: RunInfo, conc: dict, shares: dict) -> dict[str, tuple[str, pd.Series]]:
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


def _aligned(series: dict[str, pd.Series]) -> pd.DataFrame:
    """Examples × labels over the examples every label has a finite value for."""
    frame = pd.concat(series, axis=1, join="inner")
    return frame.replace([np.inf, -np.inf], np.nan).dropna()


def _distinctness(primaries: list[RunInfo], conc: dict, shares: dict, cfg: ComparisonConfig) -> list:
    groups: dict[tuple, list[RunInfo]] = {}
    for r in primaries:
        groups.setdefault(r.group, []).append(r)
    out = []
    for (model, objective, rag), members in sorted(
            groups.items(), key=lambda kv: (kv[1][0].params or 0, kv[0])):
        # a run with nothing per example (failed, or not yet evaluated) has nothing to compare
        members = [r for r in sorted(members, key=lambda r: strategy_key(r.strategy))
                   if _series_by_metric(r, conc, shares)]
        if len({r.strategy for r in members}) < 2:
            continue
        per_run = {r.strategy: _series_by_metric(r, conc, shares) for r in members}
        metric_names = sorted(set.intersection(*(set(v) for v in per_run.values())),
                              key=lambda m: (_KIND_ORDER[per_run[members[0].strategy][m][0]], m))
        result = {"model": model, "objective": objective, "rag": rag,
                  "runs": {r.strategy: r.name for r in members}, "metrics": {}, "skipped": {}}
        for i, metric in enumerate(metric_names):
            kind = per_run[members[0].strategy][metric][0]
            frame = _aligned({s: per_run[s][metric][1] for s in per_run})
            if len(frame) < 2:
                result["skipped"][metric] = f"{len(frame)} example(s) common to all strategies"
                continue
            if kind == "category" and float(frame.to_numpy().sum()) == 0.0:
                continue  # a category no strategy ever attributes to is not a question
            stats_ = compare_paired({s: frame[s].to_numpy() for s in frame.columns}, cfg.alpha,
                                    cfg.permutations, cfg.seed + i)
            stats_["kind"] = kind
            stats_["intervals"] = {s: _interval(frame[s], cfg, i) for s in frame.columns}
            result["metrics"][metric] = stats_
        out.append(result)
    return out


def _scale_curves(primaries: list[RunInfo], conc: dict, cfg: ComparisonConfig) -> list:
    """One curve per (strategy, objective, rag) with two or more model sizes, per metric."""
    groups: dict[tuple, list[RunInfo]] = {}
    for r in primaries:
        if r.params:
            groups.setdefault((r.strategy, r.objective, r.rag), []).append(r)
    curves = []
    for (strategy, objective, rag), members in sorted(
            groups.items(), key=lambda kv: (strategy_key(kv[0][0]), kv[0][1], kv[0][2])):
        if len({r.params for r in members}) < 2:
            continue
        for i, (metric, values, is_aggregate) in enumerate(_scale_jobs(members, conc)):
            c = _scale_curve(metric, members, values, is_aggregate, cfg, cfg.seed + i)
            if c is not None:
                curves.append({"strategy": strategy, "objective": objective, "rag": rag, **c})
    return curves


def _scale_jobs(members: list[RunInfo], conc: dict) -> list[tuple[str, dict, bool]]:
    """(metric, run -> values, aggregate only?) sorted by metric: per-example series where the
    runs have them (concentration, quality), else the aggregate value (corpus-level metrics)."""
    per_example: dict[str, dict[str, pd.Series]] = {}
    for r in members:
        if r.name in conc:
            for m in concentration.METRICS:
                per_example.setdefault(m, {})[r.name] = conc[r.name][m]
        if r.per_example is not None:
            for m in r.per_example.columns:
                if m not in QUALITY_SKIP:
                    per_example.setdefault(m, {})[r.name] = r.per_example[m]
    aggregate_only: dict[str, dict[str, float]] = {}
    for r in members:
        for m, v in r.aggregate.items():
            if m not in per_example and m not in QUALITY_SKIP:
                aggregate_only.setdefault(m, {})[r.name] = v
    jobs = [(m, v, False) for m, v in per_example.items()]
    jobs += [(m, v, True) for m, v in aggregate_only.items()]
    return sorted(jobs, key=lambda j: j[0])


def _scale_curve(metric: str, members: list[RunInfo], values: dict, is_aggregate: bool,
                 cfg: ComparisonConfig, seed: int) -> dict | None:
    frame = None
    if is_aggregate:
        rows = []
        for r in members:
            if r.name in values:
                lo, hi = r.intervals.get(metric, (None, None))
                rows.append({"run": r.name, "model": r.model, "params": r.params,
                             "value": values[r.name], "lo": lo, "hi": hi})
    else:
        frame = _aligned(values)
        rows = [{"run": r.name, "model": r.model, "params": r.params,
                 "value": float(frame[r.name].mean())}
                for r in members if r.name in frame.columns and len(frame)]
    if not rows:
        return None
    return scale.curve(metric, pd.DataFrame(rows), frame if frame is not None and len(frame) >= 2
                       else None, cfg.plateau_threshold, specs.better(metric), cfg.bootstrap_samples,
                       cfg.confidence, seed)


_KIND_ORDER = {"concentration": 0, "quality": 1, "category": 2}


def _ordered(d: dict) -> dict:
    return dict(sorted(d.items(), key=lambda kv: strategy_key(kv[0])))
