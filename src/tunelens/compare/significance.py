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

Effect = what was tested: each pair carries the Hodges–Lehmann estimate of the paired difference
(the median of the Walsh averages of a − b, the estimate that goes with the signed-rank test) and
its distribution-free interval from the signed-rank null distribution (exact up to 60 pairs, normal
approximation above). A finding's direction is the sign of that estimate, not of the mean: with
a = [0×9, 10], b = [0.1×9, 0] the mean difference is +0.91 but the ranks (and the estimate, −0.1)
say b is higher.

Multiplicity: the Holm family is the set of pairwise comparisons of one metric in one group
(model × objective × rag). Each metric is its own question, so metrics are not pooled. Across the
report every row also enters one Benjamini–Hochberg family (:mod:`tunelens.compare.multiplicity`),
which is why each row is marked ``finding: true``.
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


def hodges_lehmann(d, confidence: float = 0.95) -> tuple[float, float | None, float | None]:
    """(estimate, lo, hi) of the centre of the paired differences ``d`` (Hodges & Lehmann 1963).

    The interval is the usual one that inverts the signed-rank test: the Walsh averages between
    the C-th smallest and C-th largest, C the lower critical value of the signed-rank statistic.
    lo/hi are None when fewer than two differences are finite.
    """
    d = np.asarray(d, dtype=float)
    d = d[np.isfinite(d)]
    if d.size == 0:
        return float("nan"), None, None
    i, j = np.triu_indices(d.size)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    estimate = float(np.median(walsh))
    if d.size < 2:
        return estimate, None, None
    c = _signed_rank_critical(d.size, 1.0 - confidence)
    return estimate, float(walsh[c]), float(walsh[walsh.size - 1 - c])


def _signed_rank_critical(n: int, alpha: float) -> int:
    """0-based index of the lower interval end: C_α − 1, with C_α the number of signed-rank sums k
    with P(T+ <= k) <= alpha/2 (Hollander & Wolfe's C_α; 0 when none, giving the whole range)."""
    m = n * (n + 1) // 2
    if n <= 60:
        counts = np.zeros(m + 1)
        counts[0] = 1.0
        for k in range(1, n + 1):
            counts[k:] = counts[k:] + counts[:-k].copy()
        cdf = np.cumsum(counts) / 2.0 ** n
        c = int(np.searchsorted(cdf, alpha / 2.0, side="right"))  # cdf[c-1] <= alpha/2
    else:
        sd = np.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
        c = int(np.floor(m / 2.0 - stats.norm.ppf(1 - alpha / 2.0) * sd))
    return min(max(c - 1, 0), m // 2)


def direction(estimate: float, tiebreak: float = 0.0) -> int:
    """+1 when a is higher, −1 when b is, 0 when neither: the estimate decides, the tiebreak
    (the rank-biserial r) only when the estimate is exactly 0."""
    for v in (estimate, tiebreak):
        if np.isfinite(v) and v != 0:
            return 1 if v > 0 else -1
    return 0


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
                   seed: int = 0, confidence: float = 0.95) -> dict:
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
        hl, lo, hi = hodges_lehmann(a - b, confidence)
        r = rank_biserial(a, b)
        rows.append({"a": labels[i], "b": labels[j], "mean_a": float(a.mean()), "mean_b": float(b.mean()),
                     "mean_diff": float((a - b).mean()), "wilcoxon_statistic": w_stat, "p": w_p,
                     "test": "wilcoxon", "estimate": hl, "estimate_kind": "hodges_lehmann",
                     "ci_lo": lo, "ci_hi": hi, "direction": direction(hl, r), "rank_biserial": r,
                     "permutation_p": sign_flip_p(a, b, permutations, seed + len(rows)),
                     "single_seed": True, "finding": True})
    for key, adj in (("p", "p_holm"), ("permutation_p", "permutation_p_holm")):
        for row, p in zip(rows, holm([r[key] for r in rows]), strict=True):
            row[adj] = float(p)
    for row in rows:
        row["significant"] = bool(row["p_holm"] < alpha)
    out["pairwise"] = rows
    return out


def _mean_diff(a, b, axis=-1):
    return np.mean(a - b, axis=axis)
