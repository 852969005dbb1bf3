"""Perturbation estimators on the batched scorer: occlusion, Shapley sampling, LIME and KernelSHAP.

Each estimator only decides which coalitions (presence masks over features) to score and how to
combine their values; the :class:`Coalitions` value function turns masks into perturbed inputs,
removes duplicates (every Shapley permutation starts at the empty and ends at the full coalition),
hands all of them to the scorer at once and averages over sampled baselines. Values are per target
token, and every combination below is linear in them, so per-target matrices come for free and the
sequence score is their column sum.

Conventions follow Captum so results can be checked against it: a feature's score is
v(with it) - v(without it) in log-probability, i.e. positive when the feature makes the target
more likely; absent features take the baseline token (or are deleted).
"""

from __future__ import annotations

from math import factorial

import numpy as np

from tunelens.errors import TunelensError
from tunelens.explain.base import AttributionMethod, Job, register
from tunelens.explain.features import Perturber, baseline_token, sample_replacements
from tunelens.explain.result import Attribution

MAX_EXACT_FEATURES = 14


class Coalitions:
    """v(mask) per target token for one job: memoised, batched, averaged over baseline trials."""

    def __init__(self, job: Job):
        self.job = job
        self.scorer = job.scorer
        self.prepared = self.scorer.prepare(job.features.input_ids, job.target_ids)
        n_tok = len(job.features.input_ids)
        if job.baseline == "delete":
            replacements = [None]
        elif job.baseline == "sample":
            replacements = [sample_replacements(job.tokenizer, n_tok, job.rng)
                            for _ in range(job.options.baseline_trials)]
        else:
            replacements = [np.full(n_tok, baseline_token(job.tokenizer, job.baseline))]
        self.perturbers = [Perturber(job.features, r) for r in replacements]
        self.memo: dict[bytes, np.ndarray] = {}
        self.full = self.prepared.logprobs
        self.memo[np.ones(len(job.features), dtype=bool).tobytes()] = self.full

    def __call__(self, masks: np.ndarray) -> np.ndarray:
        masks = np.asarray(masks, dtype=bool)
        keys = [m.tobytes() for m in masks]
        todo: dict[bytes, int] = {}
        for i, key in enumerate(keys):
            if key not in self.memo and key not in todo:
                todo[key] = i
        if todo:
            fresh = masks[list(todo.values())]
            total = np.zeros((len(fresh), len(self.job.target_ids)))
            for perturber in self.perturbers:
                ids, first = perturber(fresh)
                total += self.scorer.score(self.prepared, ids, first)
            for key, row in zip(todo, total / len(self.perturbers), strict=True):
                self.memo[key] = row
        return np.stack([self.memo[k] for k in keys])

    @property
    def perturbations(self) -> int:
        return (len(self.memo) - 1) * len(self.perturbers)


class PerturbationMethod(AttributionMethod):
    """A method that scores coalitions: subclasses implement :meth:`estimate` only."""

    def explain(self, job: Job) -> Attribution:
        passes_before = job.scorer.forward_passes
        value = Coalitions(job)
        per_target = self.estimate(len(job.features), value, job)
        return job.result(per_target.T, value.full.sum(), self.name,
                          forward_passes=job.scorer.forward_passes - passes_before,
                          perturbations=value.perturbations)

    def estimate(self, n: int, value: Coalitions, job: Job) -> np.ndarray:
        """Attributions [features, target tokens] from values of the coalitions it asks for."""
        raise NotImplementedError


@register("occlusion")
class Occlusion(PerturbationMethod):
    """Leave-one-out: v(all) - v(all but j), Captum's ``FeatureAblation`` on the same features."""

    def estimate(self, n, value, job):
        return value.full[None, :] - value(~np.eye(n, dtype=bool))


@register("shapley")
class ShapleySampling(PerturbationMethod):
    """Shapley value sampling over random permutations (Castro et al. 2009, Captum's method).

    With ``antithetic`` each permutation is followed by its reverse: a feature early in one is
    late in the other, so the two marginal contributions are negatively correlated and their mean
    varies less (Mitchell et al. 2022, "Sampling permutations for Shapley value estimation").
    """

    def __init__(self, antithetic: bool = True):
        super().__init__()
        self.antithetic = antithetic

    def estimate(self, n, value, job):
        count = job.options.n_samples
        perms: list[np.ndarray] = []
        while len(perms) < count:
            perm = job.rng.permutation(n)
            perms.append(perm)
            if self.antithetic and len(perms) < count:
                perms.append(perm[::-1].copy())
        perms_arr = np.array(perms)
        steps = np.zeros((count, n + 1, n), dtype=bool)
        for i in range(n):
            steps[:, i + 1] = steps[:, i]
            steps[np.arange(count), i + 1, perms_arr[:, i]] = True
        values = value(steps.reshape(-1, n)).reshape(count, n + 1, -1)
        gains = values[:, 1:] - values[:, :-1]  # gain of adding perms[k, i]
        phi = np.zeros((n, values.shape[-1]))
        for k in range(count):
            phi[perms_arr[k]] += gains[k]
        return phi / count


@register("shapley_exact")
class ExactShapley(PerturbationMethod):
    """Exact Shapley values over all 2^n coalitions: the reference samplers are tested against."""

    def estimate(self, n, value, job):
        if n > MAX_EXACT_FEATURES:
            raise TunelensError(
                f"exact Shapley values need 2^{n} coalitions; use method 'shapley' above "
                f"{MAX_EXACT_FEATURES} features"
            )
        subsets = ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(bool)
        values = value(subsets)
        weights = np.array([factorial(s) * factorial(n - s - 1) / factorial(n) for s in range(n)])
        size = subsets.sum(axis=1)
        phi = np.zeros((n, values.shape[-1]))
        for j in range(n):
            without = np.flatnonzero(~subsets[:, j])
            with_j = without + 2**j
            phi[j] = (weights[size[without]][:, None] * (values[with_j] - values[without])).sum(axis=0)
        return phi


@register("lime")
class LinearSurrogate(PerturbationMethod):
    """A weighted linear model of v over random masks; its coefficients are the attributions.

    ``kernel="lime"``: masks with each feature present with probability 1/2, weighted by Captum's
    default similarity exp(-d²/2w²) with d the cosine distance to the unperturbed (all-present)
    mask, fitted by ridge regression with a small ``alpha`` (Captum defaults to a Lasso, which
    zeroes small coefficients). ``kernel="shap"``: KernelSHAP (Lundberg & Lee 2017) — coalition
    sizes drawn from the Shapley kernel, each mask paired with its complement, and an exact
    least-squares fit under the efficiency constraint sum(phi) = v(all) - v(none).
    """

    default_kernel = "lime"

    def __init__(self, kernel: str | None = None, kernel_width: float = 1.0, alpha: float = 1e-3,
                 paired: bool = True):
        super().__init__()
        kernel = kernel or self.default_kernel
        if kernel not in ("lime", "shap"):
            raise TunelensError(f"unknown kernel '{kernel}' (expected 'lime' or 'shap')")
        self.kernel, self.kernel_width, self.alpha, self.paired = kernel, kernel_width, alpha, paired

    def estimate(self, n, value, job):
        if self.kernel == "shap":
            return self._kernel_shap(n, value, job)
        masks = job.rng.random((job.options.n_samples, n)) < 0.5
        y = value(masks)
        present = masks.sum(axis=1)
        distance = 1.0 - np.sqrt(present / n)
        weights = np.exp(-(distance**2) / (2 * self.kernel_width**2))
        design = np.hstack([masks.astype(float), np.ones((len(masks), 1))])
        gram = design.T @ (weights[:, None] * design)
        gram[np.arange(n), np.arange(n)] += self.alpha
        coef = np.linalg.solve(gram, design.T @ (weights[:, None] * y))
        return coef[:n]

    def _kernel_shap(self, n, value, job):
        full, empty = value.full, value(np.zeros((1, n), dtype=bool))[0]
        total = full - empty
        if n == 1:
            return total[None, :]
        sizes = np.arange(1, n)
        probs = (n - 1) / (sizes * (n - sizes))
        probs /= probs.sum()
        count = job.options.n_samples
        rows = []
        while len(rows) < count:
            k = job.rng.choice(sizes, p=probs)
            mask = np.zeros(n, dtype=bool)
            mask[job.rng.choice(n, size=k, replace=False)] = True
            rows.append(mask)
            if self.paired and len(rows) < count:
                rows.append(~mask)
        masks = np.array(rows)
        y = value(masks) - empty[None, :]
        z = masks.astype(float)
        # eliminate the last feature with the constraint: phi_n = total - sum(phi_<n)
        design = z[:, :-1] - z[:, -1:]
        rhs = y - z[:, -1:] * total[None, :]
        head, *_ = np.linalg.lstsq(design, rhs, rcond=None)
        return np.vstack([head, total[None, :] - head.sum(axis=0, keepdims=True)])


@register("kernel_shap")
class KernelShap(LinearSurrogate):
    __doc__ = LinearSurrogate.__doc__
    default_kernel = "shap"
