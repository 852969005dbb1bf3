"""What a tuning leaves in ``<out>``: ``tuning.json`` (every trial of every strategy's Optuna
study, the baseline and the best), the figures, and ``best.yaml`` (the study with the best
settings per strategy in ``tune.best``, which ``tunelens run`` trains with)."""

from __future__ import annotations

from pathlib import Path

from tunelens.config import dump_study, parse_study
from tunelens.io import write_json, write_text
from tunelens.tune.search import BASELINE
from tunelens.tune.space import merge, overrides

SUMMARY = "tuning.json"
BEST = "best.yaml"


def write_outputs(plan, searches: dict) -> tuple[dict, Path | None, dict[str, Path]]:
    """(the summary written to tuning.json, best.yaml or None when no trial finished, figures)."""
    from tunelens.report.tuning import draw

    summary = {"storage": plan.storage, "name": plan.name, "model": plan.model.name,
               "objective": plan.objective, "seed": plan.seed,
               "strategies": {s: summarise(search, plan.seed) for s, search in searches.items()}}
    out = Path(plan.out)
    write_json(out / SUMMARY, summary)
    figures = draw(summary, out / "figures", plan.study.report.dpi)
    return summary, write_best(plan, summary), figures


def summarise(search, seed: int = 0) -> dict:
    """One strategy's Optuna study as plain data: trials, counts, baseline, best, importance."""
    import optuna

    trials = [_trial(t) for t in search.trials]
    complete = [t for t in trials if t["state"] == "COMPLETE" and t["value"] is not None]
    counts = {state: sum(t["state"] == state for t in trials)
              for state in ("COMPLETE", "PRUNED", "FAIL", "RUNNING")}
    baseline = next((t for t in complete if t["baseline"]), None)
    best = min(complete, key=lambda t: t["value"]) if complete else None
    importance = None
    if len(complete) >= 2 and len({tuple(sorted(t["params"].items())) for t in complete}) >= 2:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=seed)
            importance = dict(optuna.importance.get_param_importances(search, evaluator=evaluator))
        except (RuntimeError, ValueError):  # e.g. every finished trial shares each value
            importance = None
    return {"study": search.study_name, "counts": {k.lower(): v for k, v in counts.items()},
            "baseline": None if baseline is None else {k: baseline[k] for k in ("number", "value")},
            "best": None if best is None else {k: best[k] for k in ("number", "value", "params")},
            "importance": importance, "trials": trials}


def _trial(t) -> dict:
    return {"number": t.number, "state": t.state.name, "value": t.value, "params": dict(t.params),
            "baseline": bool(t.user_attrs.get(BASELINE)), "pruned_at": t.user_attrs.get("pruned_at"),
            "run": t.user_attrs.get("run"),
            "intermediate": [[step, loss] for step, loss in sorted(t.intermediate_values.items())]}


def write_best(plan, summary: dict) -> Path | None:
    """``best.yaml``: the study, with each strategy's best settings in ``tune.best`` (laid over
    any earlier tuning's) and ``tune.tuned_from`` naming this folder; None when nothing finished."""
    study = plan.study
    best = dict(study.tune.best)
    for strategy, s in summary["strategies"].items():
        if s["best"] is not None:
            best[strategy] = merge(best.get(strategy, {}), overrides(strategy, s["best"]["params"]))
    if not best:
        return None
    raw = study.model_dump(mode="json")
    raw["tune"] |= {"best": best, "tuned_from": str(Path(plan.out).resolve())}
    tuned = parse_study(raw, origin=f"{plan.out / BEST}")
    path = Path(plan.out) / BEST
    write_text(path, dump_study(tuned))
    return path
