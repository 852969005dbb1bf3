"""Faithfulness of attributions: do the features a method ranks highest really carry the output?

An attribution is a claim about the model: "these features raise log p(target)". It is checked by
removing features in the order the method ranks them and scoring the model again (DeYoung et al.
2020, ERASER; Petsiuk et al. 2018, RISE's deletion/insertion curves). All measures here are in
the attributions' own unit, the log-probability of the whole target sequence, and relative to
v(all) = log p(target | the unperturbed prompt):

* comprehensiveness at fraction q: v(all) - v(all but the top ⌈q·n⌉ features). Higher is more
  faithful: removing what the method calls important should hurt.
* sufficiency at q: v(all) - v(only the top ⌈q·n⌉ features). Lower is more faithful: what the
  method calls important should be enough on its own.
* AOPC (ERASER's aggregate): the mean of each over the fractions (1, 5, 10, 20 and 50 %).
* deletion curve: v(all but the top k) - v(all) for k = 0 … n, and its area over k/n in [0, 1]
  (trapezoid rule). Lower (more negative) is more faithful: the target's probability should fall fast.
* insertion curve: v(only the top k) - v(all), from the empty prompt up; its area, higher is
  more faithful.

"Removed" means exactly what it means for the perturbation methods (occlusion): a removed
feature's tokens are replaced by the baseline token of the attribution (``unk`` by default,
``delete`` drops them, ``sample`` averages over random tokens), everything else (the template,
special tokens, context outside the feature window) stays. Scoring with the baseline the scores
were computed against keeps the check consistent with occlusion's own definition; deleting
tokens instead would change positions and measure the model's reaction to a shorter prompt.
Ties in a ranking are broken by position (a stable sort), so a constant attribution ranks left
to right.

All perturbed prompts of one example (every fraction and curve point of every method) are
presence masks over the same features: they go to the batched scorer in one call through the
estimators' memoised :class:`~tunelens.explain.estimators.Coalitions`, so masks shared between
methods, or between a curve and a fraction, are scored once. A random ranking (seeded) is the
reference a method must beat: a method no better than chance does not explain the model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from math import ceil

import numpy as np

from tunelens.errors import TunelensError
from tunelens.explain.estimators import Coalitions

FRACTIONS = (0.01, 0.05, 0.10, 0.20, 0.50)
CURVE_POINTS = 21  # curve points at most (k = 0 … n evenly spaced); all n + 1 when n ≤ 20
RANDOM = "random"


@dataclass
class Faithfulness:
    """The faithfulness measures of one method's scores on one example (see the module docstring)."""

    method: str
    fractions: tuple[float, ...]
    comprehensiveness: np.ndarray  # one per fraction, log-prob units
    sufficiency: np.ndarray
    steps: np.ndarray  # features removed (deletion) or kept (insertion) at each curve point
    deletion: np.ndarray  # v(all but top k) - v(all) at each step
    insertion: np.ndarray  # v(only top k) - v(all) at each step
    n_features: int
    target_logprob: float

    @property
    def aopc_comprehensiveness(self) -> float:
        return float(np.mean(self.comprehensiveness))

    @property
    def aopc_sufficiency(self) -> float:
        return float(np.mean(self.sufficiency))

    @property
    def deletion_area(self) -> float:
        return _area(self.steps / self.n_features, self.deletion)

    @property
    def insertion_area(self) -> float:
        return _area(self.steps / self.n_features, self.insertion)

    @property
    def empty_drop(self) -> float:
        """v(all) - v(none): what removing every feature costs, the scale to read the others on."""
        return float(-self.deletion[-1])

    def curves_at(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(deletion, insertion) interpolated at fractions ``x`` of the features: curves of
        clauses of different lengths on one grid, to be averaged or drawn together."""
        where = self.steps / self.n_features
        return np.interp(x, where, self.deletion), np.interp(x, where, self.insertion)

    def summary(self) -> dict:
        """The flat record written per example and method (JSON-ready floats)."""
        out = {"method": self.method, "n_features": self.n_features,
               "target_logprob": self.target_logprob,
               "comprehensiveness": self.aopc_comprehensiveness, "sufficiency": self.aopc_sufficiency,
               "deletion_area": self.deletion_area, "insertion_area": self.insertion_area,
               "empty_drop": self.empty_drop}
        for q, c, s in zip(self.fractions, self.comprehensiveness, self.sufficiency, strict=True):
            out[f"comprehensiveness@{q:g}"] = float(c)
            out[f"sufficiency@{q:g}"] = float(s)
        return out


def _area(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.sum((x[1:] - x[:-1]) * (y[1:] + y[:-1]) / 2))


def top_counts(n: int, fractions: Sequence[float]) -> np.ndarray:
    """Features in the top fraction q of n: ⌈q·n⌉, at least 1 (a 1 % bin of a 20-token clause is
    its top token, as in ERASER's token bins)."""
    if any(not 0 < q <= 1 for q in fractions):
        raise TunelensError(f"fractions must lie in (0, 1], got {list(fractions)}")
    return np.array([max(1, ceil(q * n - 1e-9)) for q in fractions], dtype=np.int64)


def curve_steps(n: int, points: int = CURVE_POINTS) -> np.ndarray:
    """Numbers of features 0 … n at which the curves are scored (all when n + 1 ≤ points)."""
    if points < 2:
        raise TunelensError("a curve needs at least 2 points")
    return np.unique(np.round(np.linspace(0, n, min(n + 1, points))).astype(np.int64))


def ranking(scores: np.ndarray) -> np.ndarray:
    """Feature indices from most to least important (highest score first; ties left to right)."""
    return np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")


def masks_for(order: np.ndarray, counts: np.ndarray, steps: np.ndarray) -> dict[str, np.ndarray]:
    """Presence masks [k, n] of one ranking: without/with only the top ``counts``, and the curves."""
    n = len(order)

    def top(ks):
        masks = np.zeros((len(ks), n), dtype=bool)
        for row, k in enumerate(ks):
            masks[row, order[:k]] = True
        return masks

    return {"comprehensiveness": ~top(counts), "sufficiency": top(counts),
            "deletion": ~top(steps), "insertion": top(steps)}


def evaluate_rankings(value, scores: Mapping[str, np.ndarray], fractions: Sequence[float] = FRACTIONS,
                      points: int = CURVE_POINTS) -> dict[str, Faithfulness]:
    """Faithfulness of each method's scores under one value function (masks -> log-probs).

    ``value`` maps presence masks [m, n] to per-target-token log-probs [m, target tokens] and has
    ``full``, the unperturbed prompt's (a :class:`Coalitions`); every mask of every method is
    asked for in one call, so the scorer batches (and deduplicates) all of them together.
    """
    n = len(value.full_mask)
    counts, steps = top_counts(n, fractions), curve_steps(n, points)
    per_method = {}
    for name, s in scores.items():
        s = np.asarray(s, dtype=np.float64)
        if s.shape != (n,):
            raise TunelensError(f"method '{name}': {s.shape[0] if s.ndim else 0} scores for {n} features "
                                "(the attribution was computed on other features)")
        per_method[name] = masks_for(ranking(s), counts, steps)
    kinds = ("comprehensiveness", "sufficiency", "deletion", "insertion")
    stacked = np.concatenate([m[k] for m in per_method.values() for k in kinds])
    values = value(stacked).sum(axis=1)
    full = float(value.full.sum())
    out, at = {}, 0
    for name, masks in per_method.items():
        got = {}
        for kind in kinds:
            got[kind] = values[at:at + len(masks[kind])]
            at += len(masks[kind])
        out[name] = Faithfulness(name, tuple(fractions), full - got["comprehensiveness"],
                                 full - got["sufficiency"], steps, got["deletion"] - full,
                                 got["insertion"] - full, n, full)
    return out


def random_scores(n: int, seed: int | Sequence[int]) -> np.ndarray:
    """A seeded random attribution over n features: the chance reference every method must beat."""
    return np.random.default_rng(seed).random(n)


class _Value(Coalitions):
    """Coalitions that also knows the all-present mask's width (the feature count)."""

    @property
    def full_mask(self) -> np.ndarray:
        return np.ones(len(self.job.features), dtype=bool)


def faithfulness(model, tokenizer, prompt: str, target: str, scores: Mapping[str, np.ndarray], *,
                 granularity: str = "token", baseline: str = "unk",
                 spans: Sequence[tuple[int, int]] | None = None,
                 feature_window: tuple[int, int] | None = None,
                 fractions: Sequence[float] = FRACTIONS, points: int = CURVE_POINTS,
                 random_reference: int | Sequence[int] | None = None, seed: int | Sequence[int] = 0,
                 batch_size: int | None = None, memory_budget_mb: float | None = None,
                 baseline_trials: int | None = None, scorer=None) -> dict[str, Faithfulness]:
    """Faithfulness of each method's ``scores`` (one per feature) for one prompt and target.

    The features are rebuilt exactly as ``attribute`` built them (same ``granularity``,
    ``spans``, ``feature_window``), so ``scores`` are the ``Attribution.scores`` of those calls;
    ``baseline`` is what replaces a removed feature (use the attributions' own). With
    ``random_reference`` (a seed), a seeded random ranking is added under the name ``random``.
    ``scorer``: a :class:`~tunelens.explain.scorer.Scorer` of ``model`` to reuse across examples.
    """
    from tunelens.explain.api import prepare_job

    job = prepare_job(model, tokenizer, prompt, target, granularity, baseline, spans=spans,
                      feature_window=feature_window, scorer=scorer, n_samples=1, seed=seed,
                      batch_size=batch_size, per_target=False, baseline_trials=baseline_trials,
                      memory_budget_mb=memory_budget_mb)
    scores = dict(scores)
    if random_reference is not None:
        seeds = [random_reference] if isinstance(random_reference, int) else list(random_reference)
        scores[RANDOM] = random_scores(len(job.features), seeds)
    return evaluate_rankings(_Value(job), scores, fractions, points)


def mean_summary(results: Sequence[Faithfulness], grid: int = 11) -> dict:
    """Means over examples of each :meth:`Faithfulness.summary` number (one method), and the mean
    deletion and insertion curves on ``grid`` evenly spaced fractions of the features."""
    if not results:
        return {}
    rows = [r.summary() for r in results]
    keys = [k for k, v in rows[0].items() if isinstance(v, int | float) and not isinstance(v, bool)]
    x = np.linspace(0.0, 1.0, grid)
    deletion, insertion = np.mean([r.curves_at(x) for r in results], axis=0)
    return {"method": rows[0]["method"], "examples": len(rows),
            **{k: float(np.mean([row[k] for row in rows])) for k in keys},
            "curve_x": x.tolist(), "deletion_curve": deletion.tolist(), "insertion_curve": insertion.tolist()}

