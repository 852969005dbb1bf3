"""Bootstrap intervals over examples, one convention for every statistic of the comparison.

scipy's :func:`scipy.stats.bootstrap` does the resampling. The percentile method is used rather
than BCa because many of our samples are small and some are degenerate (every example scoring 0
on exact match); BCa's jackknife then fails where the percentile interval is simply a point.
"""

from __future__ import annotations

import warnings

import numpy as np
from scipy import stats


def mean_interval(values, samples: int = 1000, confidence: float = 0.95, seed: int = 0) -> dict:
    """``{"mean", "lo", "hi", "n"}`` of the finite values; lo/hi are None below two values."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    out = {"mean": float(x.mean()) if x.size else None, "lo": None, "hi": None, "n": int(x.size)}
    if x.size < 2:
        return out
    if np.ptp(x) == 0:
        out["lo"] = out["hi"] = float(x[0])
        return out
    res = bootstrap((x,), _mean, samples=samples, confidence=confidence, seed=seed)
    out["lo"], out["hi"] = res
    return out


def bootstrap(data: tuple, statistic, samples: int, confidence: float, seed: int,
              paired: bool = False) -> tuple[float | None, float | None]:
    """Percentile interval of a vectorised statistic; (None, None) when it is undefined."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.bootstrap(data, statistic, n_resamples=samples, confidence_level=confidence,
                              method="percentile", vectorized=True, paired=paired,
                              rng=np.random.default_rng(seed))
    lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return None, None
    return lo, hi


def _mean(x, axis=-1):
    return np.mean(x, axis=axis)
