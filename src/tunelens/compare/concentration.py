"""How concentrated one example's attribution is: Gini, normalised entropy, top-k mass.

All three look at |score|, the size of a feature's effect whatever its sign, so a run that leans
hard on two tokens (pushing the target up or down) reads as concentrated. They are a few lines of
numpy each; no maintained library computes them on one vector without pulling in a framework
(scikit-learn has none of them, and the inequality packages on PyPI are unmaintained).

Conventions: Gini is the usual mean-absolute-difference form, 0 for a uniform vector and
(n-1)/n for a one-hot one; entropy is divided by log(n) so it runs from 0 (one-hot) to 1
(uniform). An example whose scores are all zero has no distribution and yields NaN, and is left
out of every comparison rather than counted as "uniform".
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("gini", "entropy", "top_k_share")


def gini(values) -> float:
    x = np.sort(np.abs(np.asarray(values, dtype=float)))
    n, total = x.size, x.sum()
    if n == 0 or not np.isfinite(total) or total <= 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * x) / (n * total) - (n + 1) / n)


def normalised_entropy(values) -> float:
    x = np.abs(np.asarray(values, dtype=float))
    n, total = x.size, x.sum()
    if n < 2 or not np.isfinite(total) or total <= 0:
        return float("nan")
    p = x[x > 0] / total
    return float(-np.sum(p * np.log(p)) / np.log(n))


def top_k_share(values, k: int) -> float:
    x = np.abs(np.asarray(values, dtype=float))
    total = x.sum()
    if x.size == 0 or not np.isfinite(total) or total <= 0:
        return float("nan")
    return float(np.sort(x)[::-1][:k].sum() / total)


def per_example(attributions: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """One row per example of one run: its three concentration numbers and feature count."""
    rows = []
    for example_id, group in attributions.groupby("example_id", sort=True):
        s = group["score"].to_numpy(dtype=float)
        s = s[np.isfinite(s)]
        rows.append({"example_id": example_id, "gini": gini(s), "entropy": normalised_entropy(s),
                     "top_k_share": top_k_share(s, top_k), "n_features": int(s.size)})
    frame = pd.DataFrame(rows, columns=["example_id", *METRICS, "n_features"])
    return frame.set_index("example_id")
