"""How a metric moves with model size: a trend, and a plateau only after a gain.

Points. A curve's point at one size is the *run's own aggregate* — corpus BLEU/chrF as the
tables show them, the mean over examples for every other metric — averaged over the runs of
that size (seeds). One number per metric, the same in tables and curves.

Tests. Every test resamples the test examples *paired* across sizes (the same examples feed
every model) and, where a size has several runs (seeds), resamples those runs too: a
hierarchical bootstrap, seeds then examples. What is resampled is the per-example score, so for
a corpus metric the test is on the **sentence-level** score (``test_level: "sentence"``), which
is said wherever the result is shown.

* ``trend``: the least-squares slope of the metric against log10(parameters) (gain per decade),
  its percentile interval and a two-sided bootstrap p-value.
* ``plateau``: a piecewise-linear curve that rises and then stays flat, the break (``break``) at
  one of the inner sizes (least squares over the candidates). The flat part is tested, not read off
  a point estimate of the last step. It is a plateau when **both** the rise before the break is
  significantly above 0 **and** the slope after it is significantly below ``threshold`` per
  decade (in whole units of the metric's scale: BLEU and chrF are divided by 100). Its p-value is
  the larger of the two (an intersection–union test); ``size`` is the break where it passes, else
  None. Sizes close together make the slope after the break noisy, so noise alone does not pass
  the second test.
* ``verdict``: ``plateau``, ``rising``, ``falling``, ``did not learn`` (a quality metric with no
  significant rise anywhere — e.g. 0 at every size; never called a plateau), ``flat`` (a
  descriptive metric such as concentration with no significant change), ``too few sizes`` (two
  sizes that differ: a rise, but not a shape) or ``untested`` (no per-example scores to resample).

Trend and plateau each carry ``p`` and ``finding`` (true for the metrics a report may state,
``ComparisonConfig.scale_findings``): the report gathers every p marked so into one
Benjamini–Hochberg family before it turns any of them into a sentence, and states nothing else.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy import stats

from tunelens.evaluate import specs

# metrics whose aggregate is a corpus score (summed sufficient statistics,
# tunelens.evaluate.metrics.corpus_stats) while their per-example value is a sentence score
CORPUS_METRICS = frozenset({"bleu", "chrf"})
VERDICTS = ("plateau", "rising", "falling", "did not learn", "flat", "too few sizes", "untested")


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


def tested_level(metric: str) -> str:
    """What the bootstrap resamples: ``sentence`` scores of a corpus metric, else ``example``."""
    return "sentence" if metric in CORPUS_METRICS else "example"


def slopes(logx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Least-squares slope along the last axis of ``values`` against ``logx``."""
    xc = logx - logx.mean()
    return (values * xc).sum(axis=-1) / (xc ** 2).sum()


def hinge_rise(logx: np.ndarray, values: np.ndarray, k: int) -> np.ndarray:
    """Rise before the break at ``k`` of the least-squares fit ``a + b·min(x, x_k)``."""
    h = np.minimum(logx, logx[k])
    b = slopes(h, values) if np.ptp(h) > 0 else np.zeros(values.shape[:-1])
    return b * (logx[k] - logx[0])


def best_break(logx: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Index of the break (1 … m-2) whose rise-then-flat fit has the least squared error."""
    m = logx.size
    sse = []
    for k in range(1, m - 1):
        h = np.minimum(logx, logx[k])
        hc = h - h.mean()
        b = (values * hc).sum(axis=-1) / (hc ** 2).sum()
        resid = values - values.mean(axis=-1, keepdims=True) - b[..., None] * hc
        sse.append((resid ** 2).sum(axis=-1))
    return np.argmin(np.stack(sse, axis=-1), axis=-1) + 1


def p_greater(dist: np.ndarray, bound: float) -> float:
    """One-sided bootstrap p-value of "the statistic is above ``bound``": (1 + #≤bound)/(B + 1)."""
    dist = np.asarray(dist, dtype=float)
    return float((1 + np.sum(dist <= bound)) / (dist.size + 1))


def p_two_sided(dist: np.ndarray) -> float:
    return float(min(1.0, 2 * min(p_greater(dist, 0.0), p_greater(-np.asarray(dist), 0.0))))


def resample_sizes(per_example: pd.DataFrame, runs_by_size: list[list[str]], samples: int, seed: int,
                   denominator: pd.DataFrame | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Per-size values on the data and on ``samples`` hierarchical resamples (seeds, then examples).

    A run's value is its mean over examples, or ``mean(per_example)/mean(denominator)`` for a
    ratio (enrichment); a size's value is the mean over its runs. Returns (m,), (samples, m).
    """
    rng = np.random.default_rng(seed)
    cols = [c for runs in runs_by_size for c in runs]
    x = per_example[cols].to_numpy(dtype=float)
    n = x.shape[0]
    weights = rng.multinomial(n, np.full(n, 1.0 / n), size=samples) / n
    run_means, full = weights @ x, x.mean(axis=0)
    if denominator is not None:
        d = denominator[cols].to_numpy(dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            run_means, full = run_means / (weights @ d), full / d.mean(axis=0)
    est, boot, start = [], [], 0
    for runs in runs_by_size:
        idx = np.arange(start, start + len(runs))
        start += len(runs)
        est.append(full[idx].mean())
        pick = idx[rng.integers(0, len(runs), (samples, len(runs)))] if len(runs) > 1 else \
            np.broadcast_to(idx, (samples, 1))
        boot.append(np.take_along_axis(run_means, pick, axis=1).mean(axis=1))
    return np.array(est), np.stack(boot, axis=1)


def assess(sizes, est: np.ndarray, boot: np.ndarray, threshold: float, direction: str, alpha: float,
           confidence: float, unit: float = 1.0, finding: bool = True) -> dict:
    """Trend, plateau and verdict of one curve from its per-size values and their resamples.

    ``finding``: whether its tests may become sentences (and so enter the report-wide family)."""
    logx = np.log10(np.asarray(sizes, dtype=float))
    ok = np.all(np.isfinite(boot), axis=1)
    boot = boot[ok]
    tail = (1 - confidence) / 2 * 100
    b_slope = slopes(logx, boot)
    trend = {"slope": float(slopes(logx, est)), "lo": _pct(b_slope, tail), "hi": _pct(b_slope, 100 - tail),
             "p": p_two_sided(b_slope) if b_slope.size else 1.0, "finding": finding}
    plateau = {"size": None, "support": None, "p": None, "finding": False}
    if logx.size >= 3:
        plateau = _plateau(logx, est / unit, boot / unit, threshold, direction, tail)
        plateau["break"] = float(np.asarray(sizes)[plateau.pop("k")])
        plateau["finding"] = finding
    verdict = _verdict(trend, plateau, logx.size, direction, alpha)
    # ``size`` only where the test found a plateau, so no reader takes a candidate break for one
    plateau["size"] = plateau.get("break") if verdict == "plateau" else None
    return {"trend": trend, "plateau": plateau, "verdict": verdict}


def _plateau(logx, est, boot, threshold: float, direction: str, tail: float) -> dict:
    k = int(best_break(logx, est))
    rise = hinge_rise(logx, boot, k)
    after = slopes(logx[k:], boot[:, k:])
    if direction == "higher":
        p_rise, p_flat = p_greater(rise, 0.0), p_greater(threshold - after, 0.0)
    else:  # a change of either sign, then no change
        p_rise = p_two_sided(rise)
        p_flat = max(p_greater(threshold - after, 0.0), p_greater(after + threshold, 0.0))
    support = float(np.mean(best_break(logx, boot) == k)) if boot.size else None
    return {"k": k, "support": support, "p": max(p_rise, p_flat), "finding": True,
            "p_rise": p_rise, "p_flat": p_flat, "rise": float(hinge_rise(logx, est, k)),
            "rise_lo": _pct(rise, tail), "rise_hi": _pct(rise, 100 - tail),
            "slope_after": float(slopes(logx[k:], est[k:])), "slope_after_lo": _pct(after, tail),
            "slope_after_hi": _pct(after, 100 - tail)}


def _verdict(trend: dict, plateau: dict, m: int, direction: str, alpha: float) -> str:
    if plateau.get("p") is not None and plateau["p"] < alpha:
        return "plateau"
    moved = trend["p"] < alpha
    if not moved:
        return "did not learn" if direction == "higher" else "flat"
    if m < 3:
        return "too few sizes"
    return "rising" if trend["slope"] > 0 else "falling"


def curve(metric: str, points: pd.DataFrame, per_example: pd.DataFrame | None, threshold: float,
          direction: str, samples: int, confidence: float, seed: int, alpha: float = 0.05,
          denominator: pd.DataFrame | None = None, finding: bool = True) -> dict | None:
    """One scale curve.

    ``points`` has one row per run (``run``, ``model``, ``params``, ``value``, optional ``lo``/``hi``):
    the run's aggregate. ``per_example`` (examples × runs, complete rows only) holds the scores the
    tests resample (``denominator`` likewise, for a ratio). Runs of one size are its seeds.
    """
    points = points.dropna(subset=["params", "value"]).sort_values("params")
    if points["params"].nunique() < 2:
        return None
    sizes = np.sort(points["params"].unique())
    by_size = [points[points["params"] == s] for s in sizes]
    values = np.array([g["value"].mean() for g in by_size])
    testable = per_example is not None and len(per_example) >= 2
    out = {"metric": metric, "direction": direction, "threshold_per_decade": threshold,
           "level": "corpus" if metric in CORPUS_METRICS else "example mean",
           "test_level": tested_level(metric) if testable else None,
           "source": "per_example" if testable else "aggregate", "points": [],
           "fit": loglinear_fit(sizes, values)}
    lo = hi = [None] * len(sizes)
    if testable:
        runs = [[r for r in g["run"] if r in per_example.columns] for g in by_size]
        est, boot = resample_sizes(per_example, runs, samples, seed, denominator)
        out.update(assess(sizes, est, boot, threshold, direction, alpha, confidence, specs.unit(metric),
                          finding))
        out["n_examples"] = int(len(per_example))
        if metric not in CORPUS_METRICS:  # the tested value is the point: its interval is the point's
            tail = (1 - confidence) / 2 * 100
            lo = [_pct(boot[:, j], tail) for j in range(len(sizes))]
            hi = [_pct(boot[:, j], 100 - tail) for j in range(len(sizes))]
    else:
        constant = bool(np.ptp(values) == 0)
        out.update({"trend": None, "plateau": {"size": None, "support": None, "p": None, "finding": False},
                    "verdict": ("did not learn" if direction == "higher" else "flat") if constant
                    else "untested"})
    if lo[0] is None and {"lo", "hi"} <= set(points.columns):
        lo = [_f(pd.to_numeric(g["lo"]).mean()) for g in by_size]
        hi = [_f(pd.to_numeric(g["hi"]).mean()) for g in by_size]
    for s, g, v, a, b in zip(sizes, by_size, values, lo, hi, strict=True):
        out["points"].append({"params": float(s), "runs": list(g["run"]), "models": sorted(set(g["model"])),
                              "value": float(v), "lo": a, "hi": b})
    return out


def _pct(dist: np.ndarray, q: float) -> float | None:
    dist = np.asarray(dist, dtype=float)
    dist = dist[np.isfinite(dist)]
    return float(np.percentile(dist, q)) if dist.size else None


def _f(v) -> float | None:
    return float(v) if v is not None and np.isfinite(v) else None
