"""Are strategies distinct? Paired tests across strategies of one model, example by example.

The tests themselves come from scipy: Friedman (the omnibus test over k paired samples),
Wilcoxon signed-rank (each pair), and :func:`scipy.stats.permutation_test` for the permutation
check. Two small pieces scipy does not ship are written here: Holm's step-down adjustment
(statsmodels has it, but a 10-line function does not justify that dependency) and the
matched-pairs rank-biserial correlation (the effect size that goes with Wilcoxon; pingouin has it,
with pandas-heavy baggage).

Permutation test: a paired sign-flip test on the mean difference. Under "no difference", the two
values of an example are exchangeable, so swapping them within a pair (``permutation_type=
"samples"``) is the null; the statistic is mean(a - b) and the test is two-sided. It answers a
slightly different question from Wilcoxon (means, not ranks), which is why both are reported.

Multiplicity: the Holm family is the set of pairwise comparisons of one metric in one group
(model × objective × rag). Each metric is its own question, so metrics are not pooled.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
from scipy import stats


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values, in the input order (monotone, capped at 1)."""
    p = np.asarray(pvalues, dtype=float)
    m = p.size
    if m == 0:
        return p
    order = np.argsort(p, kind="stable")
    scaled = (m - np.arange(m)) * p[order]
    adjusted_sorted = np.minimum(np.maximum.accumulate(scaled), 1.0)
    out = np.empty(m)
    out[order] = adjusted_sorted
    return out


def rank_biserial(a, b) -> float:
    """Matched-pairs rank-biserial r = (T+ − T−) / (T+ + T−) over non-zero differences.

    Positive when ``a`` tends to exceed ``b``; 1 when every non-zero difference favours ``a``.
    Zero differences are dropped, as in Wilcoxon's default ``zero_method="wilcox"``.
    """
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    d = d[d != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    return float((ranks[d > 0].sum() - ranks[d < 0].sum()) / ranks.sum())


def sign_flip_p(a, b, permutations: int, seed: int) -> float:
    """Two-sided paired permutation p-value of mean(a − b) (exact when 2^n ≤ permutations)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if np.all(a == b):
        return 1.0
    res = stats.permutation_test((a, b), _mean_diff, permutation_type="samples", vectorized=True,
                                 n_resamples=permutations, alternative="two-sided",
                                 rng=np.random.default_rng(seed))
    return float(res.pvalue)


def wilcoxon(a, b) -> tuple[float, float]:
    """(statistic, p) of the two-sided signed-rank test; p = 1 when no pair differs."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    if np.all(d == 0):
        return 0.0, 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
    return float(res.statistic), float(res.pvalue)


def friedman(samples: list[np.ndarray]) -> dict | None:
    """Friedman χ², p and Kendall's W (its effect size); None for fewer than 3 samples."""
    k = len(samples)
    n = len(samples[0]) if samples else 0
    if k < 3 or n < 2:
        return None
    if all(np.array_equal(samples[0], s) for s in samples[1:]):
        return {"statistic": 0.0, "p": 1.0, "kendall_w": 0.0, "n": n, "k": k}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.friedmanchisquare(*samples)
    chi2, p = float(res.statistic), float(res.pvalue)
    if not np.isfinite(p):
        return {"statistic": 0.0, "p": 1.0, "kendall_w": 0.0, "n": n, "k": k}
    return {"statistic": chi2, "p": p, "kendall_w": chi2 / (n * (k - 1)), "n": n, "k": k}


def compare_paired(values: dict[str, np.ndarray], alpha: float, permutations: int,
                   seed: int = 0) -> dict:
    """Friedman over all labels, then every pair: Wilcoxon + Holm, rank-biserial, permutation.

    ``values[label]`` are aligned arrays (same examples, same order). Pairs are ordered as the
    labels are given, ``a`` before ``b``; effect sizes are signed towards ``a``.
    """
    labels = list(values)
    arrays = [np.asarray(values[k], dtype=float) for k in labels]
    out: dict = {"labels": labels, "n": int(arrays[0].size) if arrays else 0,
                 "means": {k: float(np.mean(v)) for k, v in zip(labels, arrays, strict=True)},
                 "medians": {k: float(np.median(v)) for k, v in zip(labels, arrays, strict=True)},
                 "friedman": friedman(arrays), "pairwise": []}
    pairs = list(itertools.combinations(range(len(labels)), 2))
    rows = []
    for i, j in pairs:
        a, b = arrays[i], arrays[j]
        w_stat, w_p = wilcoxon(a, b)
        rows.append({"a": labels[i], "b": labels[j], "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                     "mean_diff": float((a - b).mean()), "wilcoxon_statistic": w_stat, "p": w_p,
                     "rank_biserial": rank_biserial(a, b),
                     "permutation_p": sign_flip_p(a, b, permutations, seed + len(rows))})
    for key, adj in (("p", "p_holm"), ("permutation_p", "permutation_p_holm")):
        for row, p in zip(rows, holm([r[key] for r in rows]), strict=True):
            row[adj] = float(p)
    for row in rows:
        row["significant"] = bool(row["p_holm"] < alpha)
    out["pairwise"] = rows
    return out


def _mean_diff(a, b, axis=-1):
    return np.mean(a - b, axis=axis)
