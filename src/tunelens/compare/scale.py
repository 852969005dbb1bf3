"""How a metric moves with model size: a log-linear fit and where the gains stop.

The fit is ``metric ~ a + b·log10(params)`` (scipy's ``linregress``): ``b`` is the gain per
decade of parameters. The plateau is the smallest size from which every later step gains less
than ``threshold`` per decade — the curve is flat from there on; None when the last step still
gains at least that much. For quality metrics (higher is better) a drop counts as "no gain"; for
other metrics (concentration) the size of the change counts, in either direction. Metrics on a
0–100 scale (BLEU, chrF; :mod:`tunelens.evaluate.specs` says which) are divided by 100 for the
plateau test, so one threshold fits all.

Intervals: examples are resampled *paired* across the sizes (the same test examples feed every
model) with :func:`scipy.stats.bootstrap`; the fit, every point and the plateau are recomputed on
each resample. ``plateau.support`` is the share of resamples that put the plateau at the same size
as the full data — a plateau found on 2 of 10 resamples is not one to report.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from tunelens.evaluate import specs


def loglinear_fit(params, values) -> dict | None:
    x, y = np.log10(np.asarray(params, dtype=float)), np.asarray(values, dtype=float)
    if np.unique(x).size < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.linregress(x, y)
    r2 = float(res.rvalue ** 2) if np.isfinite(res.rvalue) else None
    p = float(res.pvalue) if x.size > 2 and np.isfinite(res.pvalue) else None
    return {"intercept": float(res.intercept), "slope": float(res.slope), "r2": r2, "p": p}


def plateau_index(params, values, threshold: float, direction: str = "higher") -> np.ndarray:
    """Index of the plateau size along the last axis of ``values``; -1 where there is none.

    ``values`` may carry leading batch axes (bootstrap resamples); ``params`` must be increasing.
    """
    logx = np.log10(np.asarray(params, dtype=float))
    v = np.asarray(values, dtype=float)
    gains = np.diff(v, axis=-1) / np.diff(logx)
    flat = gains < threshold if direction == "higher" else np.abs(gains) < threshold
    suffix_flat = np.flip(np.logical_and.accumulate(np.flip(flat, -1), axis=-1), -1)
    has = suffix_flat.any(axis=-1)
    first = np.argmax(suffix_flat, axis=-1)
    return np.where(has, first, -1)


def detect_plateau(params, values, threshold: float, direction: str = "higher") -> float | None:
    """The size past which the gain per decade stays below ``threshold`` (None: still rising)."""
    order = np.argsort(np.asarray(params, dtype=float))
    p, v = np.asarray(params, dtype=float)[order], np.asarray(values, dtype=float)[order]
    if p.size < 2:
        return None
    i = int(plateau_index(p, v, threshold, direction))
    return None if i < 0 else float(p[i])


def curve(metric: str, points: pd.DataFrame, per_example: pd.DataFrame | None, threshold: float,
          direction: str, samples: int, confidence: float, seed: int) -> dict | None:
    """One scale curve.

    ``points`` has one row per run (``run``, ``model``, ``params``, ``value``, optional ``lo``/``hi``),
    ``per_example`` (examples × runs, complete rows only) when the metric has per-example values.
    Runs of the same size are averaged into one point.
    """
    points = points.dropna(subset=["params", "value"]).sort_values("params")
    if points["params"].nunique() < 2:
        return None
    sizes = np.sort(points["params"].unique())
    by_size = [points[points["params"] == s] for s in sizes]
    values = np.array([g["value"].mean() for g in by_size])
    unit = specs.unit(metric)
    fit = loglinear_fit(sizes, values)
    plateau = detect_plateau(sizes, values / unit, threshold, direction)
    out = {"metric": metric, "direction": direction, "threshold_per_decade": threshold,
           "source": "per_example" if per_example is not None else "aggregate",
           "points": [], "fit": fit,
           "plateau": {"size": plateau, "support": None}}
    lo = hi = [None] * len(sizes)
    if per_example is not None and len(per_example) >= 2:
        cols = [[r for r in g["run"] if r in per_example.columns] for g in by_size]
        data = tuple(per_example[c].to_numpy(float).mean(axis=1) for c in cols)
        logx = np.log10(sizes)
        xc = logx - logx.mean()
        target = -1 if plateau is None else int(np.searchsorted(sizes, plateau))

        def statistic(*arrays, axis=-1):
            means = np.stack([a.mean(axis=axis) for a in arrays], axis=-1)
            slope = (means * xc).sum(axis=-1) / (xc ** 2).sum()
            idx = plateau_index(sizes, means / unit, threshold, direction)
            return np.concatenate([np.moveaxis(means, -1, 0), slope[None], (idx == target)[None]], 0)

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(data, statistic, n_resamples=samples, confidence_level=confidence,
                                  method="percentile", vectorized=True, paired=True,
                                  rng=np.random.default_rng(seed))
        low, high = res.confidence_interval.low, res.confidence_interval.high
        m = len(sizes)
        lo, hi = [_f(v) for v in low[:m]], [_f(v) for v in high[:m]]
        if fit is not None:
            fit["slope_lo"], fit["slope_hi"] = _f(low[m]), _f(high[m])
        out["plateau"]["support"] = float(np.mean(res.bootstrap_distribution[m + 1]))
        out["n_examples"] = int(len(per_example))
    elif {"lo", "hi"} <= set(points.columns):
        lo = [_f(g["lo"].mean()) for g in by_size]
        hi = [_f(g["hi"].mean()) for g in by_size]
    for s, g, v, a, b in zip(sizes, by_size, values, lo, hi, strict=True):
        out["points"].append({"params": float(s), "runs": list(g["run"]), "models": sorted(set(g["model"])),
                              "value": float(v), "lo": a, "hi": b})
    return out


def _f(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None

