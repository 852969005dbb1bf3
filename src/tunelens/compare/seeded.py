"""Strategy effects with the training run as the unit: seeds are replicates, examples are crossed.

Two strategies trained with three seeds each are six training runs, not 3 × n examples. Testing
example by example (Wilcoxon over n test examples) treats one training run as if it were the
population of runs a strategy can produce, so run-to-run (seed) noise can come out significant.
Here each arm is a matrix, seeds × examples (the same test examples for every run), and:

* **Test**: a t-test on the per-seed means (one number per training run). When both arms were
  trained with the same seed values, seed *s* of one strategy and seed *s* of the other share
  their data order and initialisation, so they are paired (``scipy.stats.ttest_rel``); otherwise
  Welch's unequal-variance test (``ttest_ind(equal_var=False)``). This is the "summary statistic"
  approach to a crossed design: exact for normal seed means and a balanced design, and with few
  seeds deliberately conservative (2 degrees of freedom with 3 seeds). The example factor is
  averaged within each run, so the test cannot mistake example variance for a strategy effect.
* **Effect**: the difference of the grand means (the quantity the t-test is about), with a
  hierarchical bootstrap interval: each resample draws seeds with replacement within each
  strategy, then test examples with replacement (the same examples for both arms, since they are
  crossed), and recomputes the difference (Saravanan, Berman & Sober 2020).
* **Descriptive**: the Hodges–Lehmann estimate and rank-biserial r of the seed-averaged
  per-example differences, for comparison with the single-seed tests.

Degenerate seeds: when every run of an arm has the same per-seed mean (deterministic training,
or replicates that only re-ran attribution), the seeds carry no information about run-to-run
noise; the caller then falls back to the example-level test, flagged ``single_seed``.
"""

from __future__ import annotations

import itertools
import math
import warnings

import numpy as np
from scipy import stats

from tunelens.compare.significance import direction, hodges_lehmann, holm, rank_biserial

__all__ = ["compare_seeded", "hierarchical_interval", "seed_test", "seeds_vary"]


def seeds_vary(matrices: dict[str, np.ndarray]) -> bool:
    """True when every arm has two or more runs and at least one arm's per-seed means differ."""
    if any(m.shape[0] < 2 for m in matrices.values()):
        return False
    return any(np.ptp(m.mean(axis=1)) > 0 for m in matrices.values())


def seed_test(a: np.ndarray, b: np.ndarray, seeds_a: list, seeds_b: list) -> tuple[str, float]:
    """(test name, two-sided p) of per-seed means; paired when the seed values match. Where the
    seed-level values have no variance the t statistic is undefined, and the exact permutation
    test gives the p (:func:`extreme_permutation_p`)."""
    ma, mb = a.mean(axis=1), b.mean(axis=1)
    seeds_a, seeds_b = ([-1 if s is None else s for s in x] for x in (seeds_a, seeds_b))
    matched = sorted(seeds_a) == sorted(seeds_b) and len(set(seeds_a)) == len(seeds_a)
    if matched:
        order_a, order_b = np.argsort(seeds_a, kind="stable"), np.argsort(seeds_b, kind="stable")
        ma, mb = ma[order_a], mb[order_b]
        name, spread = "paired t-test on per-seed means", [ma - mb]
    else:
        name, spread = "Welch t-test on per-seed means", [ma, mb]
    if all(_constant(x) for x in spread):  # no noise: identical arms, or a difference without any
        same = np.isclose(ma.mean(), mb.mean(), rtol=0, atol=1e-12)
        return name, 1.0 if same else extreme_permutation_p(len(ma), len(mb), matched)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = stats.ttest_rel(ma, mb) if matched else stats.ttest_ind(ma, mb, equal_var=False)
    p = float(res.pvalue)
    return name, p if np.isfinite(p) else 1.0


def _constant(x: np.ndarray) -> bool:
    """No spread beyond float rounding (a mean over the same examples can differ in the last bit)."""
    return bool(np.ptp(x) <= 1e-12 * max(1.0, float(np.abs(x).max())))


def extreme_permutation_p(n_a: int, n_b: int, paired: bool) -> float:
    """Two-sided p of an exact permutation test whose observed arrangement is the most extreme.

    Where the seed-level differences have no variance the t statistic is undefined (infinite),
    and calling that p = 0 would make two seeds whose differences happen to coincide -- common
    with counts such as a false-positive rate over the same examples -- a certain finding. The
    exact test is what is left: paired, the 2^n sign flips of the per-seed differences (all of
    one sign: p = 2 / 2^n, 0.5 for two seeds); unpaired, the C(n_a + n_b, n_a) splits of the
    per-seed means into the two arms (p = 2 / C)."""
    arrangements = 2.0**n_a if paired else float(math.comb(n_a + n_b, n_a))
    return min(1.0, 2.0 / arrangements)


def hierarchical_interval(a: np.ndarray, b: np.ndarray, samples: int, confidence: float,
                          seed: int) -> tuple[float | None, float | None]:
    """Percentile interval of mean(a) − mean(b): seeds resampled within each arm, then examples
    (one draw of examples shared by both arms, the examples being crossed with the runs)."""
    rng = np.random.default_rng(seed)
    n = a.shape[1]
    examples = rng.integers(0, n, size=(samples, n))
    diffs = _resampled_means(a, examples, rng) - _resampled_means(b, examples, rng)
    if not np.all(np.isfinite(diffs)):
        return None, None
    tail = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(diffs, [tail, 1.0 - tail])
    return float(lo), float(hi)


def _resampled_means(m: np.ndarray, examples: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    per_seed = m[:, examples].mean(axis=2)  # seeds × samples: each run's mean over the example draw
    k, samples = per_seed.shape
    seeds = rng.integers(0, k, size=(samples, k))
    return np.take_along_axis(per_seed.T, seeds, axis=1).mean(axis=1)


def compare_seeded(values: dict[str, np.ndarray], seeds: dict[str, list], alpha: float, samples: int,
                   confidence: float, seed: int = 0) -> dict:
    """Every pair of arms (``values[label]``: seeds × examples): per-seed t-test + Holm, grand
    mean difference with its hierarchical interval, and descriptive rank statistics.

    The output has the shape of :func:`tunelens.compare.significance.compare_paired` (``labels``,
    ``n``, ``means``, ``pairwise`` rows with ``p``, ``p_holm``, ``estimate``, ``direction``...) so
    the report reads both alike; ``friedman`` is None (the omnibus is left to the pairs).
    """
    labels = list(values)
    mats = {k: np.asarray(values[k], dtype=float) for k in labels}
    flat = {k: m.mean(axis=0) for k, m in mats.items()}  # seed-averaged, per example
    out: dict = {"labels": labels, "n": int(next(iter(mats.values())).shape[1]) if mats else 0,
                 "seeds": {k: list(seeds[k]) for k in labels},
                 "means": {k: float(m.mean()) for k, m in mats.items()},
                 "medians": {k: float(np.median(v)) for k, v in flat.items()},
                 "friedman": None, "single_seed": False, "pairwise": []}
    rows = []
    for a, b in itertools.combinations(labels, 2):
        test, p = seed_test(mats[a], mats[b], seeds[a], seeds[b])
        est = float(mats[a].mean() - mats[b].mean())
        lo, hi = hierarchical_interval(mats[a], mats[b], samples, confidence, seed + len(rows))
        r = rank_biserial(flat[a], flat[b])
        rows.append({"a": a, "b": b, "mean_a": float(mats[a].mean()), "mean_b": float(mats[b].mean()),
                     "mean_diff": est, "p": p, "test": test, "estimate": est,
                     "estimate_kind": "mean_difference", "ci_lo": lo, "ci_hi": hi,
                     "direction": direction(est, r), "rank_biserial": r,
                     "hodges_lehmann": hodges_lehmann(flat[a] - flat[b], confidence)[0],
                     "seeds_a": len(seeds[a]), "seeds_b": len(seeds[b]),
                     "permutation_p": None, "single_seed": False, "finding": True})
    for row, adjusted in zip(rows, holm([r["p"] for r in rows]), strict=True):
        row["p_holm"] = float(adjusted)
        row["permutation_p_holm"] = None
        row["significant"] = bool(row["p_holm"] < alpha)
    out["pairwise"] = rows
    return out
