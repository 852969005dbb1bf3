"""The small surface every attribution method shares, and the registry ``attribute`` dispatches on.

Like scikit-learn estimators, every method has the same shape: constructed with its own options,
then ``explain(job) -> Attribution`` for one prompt/target pair. A :class:`Job` carries everything a
method may need (model, tokenizer, features, target ids, the shared scorer, options, a seeded
generator), so a new method — a gradient method through Captum, an attention view — is one class
with ``@register("name")`` in its own module; ``attribute`` finds it by name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from tunelens.errors import TunelensError, check_choice
from tunelens.explain import catalog
from tunelens.explain.features import Features
from tunelens.explain.result import Attribution

METHODS: dict[str, type[AttributionMethod]] = {}


@dataclass
class Options:
    """Settings shared by all methods of one ``attribute`` call (defaults: ExplanationConfig)."""

    n_samples: int
    seed: int | tuple[int, ...]
    batch_size: int | None
    per_target: bool
    baseline_trials: int
    memory_budget_mb: float
    reuse_prefix: bool


@dataclass
class Job:
    """One prompt/target pair, tokenized and split into features, ready for any method."""

    model: Any
    tokenizer: Any
    prompt: str
    target: str
    features: Features
    target_ids: np.ndarray
    baseline: str
    granularity: str
    options: Options
    scorer: Any
    rng: np.random.Generator

    @property
    def target_tokens(self) -> list[str]:
        return [self.tokenizer.decode([int(i)]) for i in self.target_ids]

    def result(self, per_target: np.ndarray, target_logprob: float, method: str,
               forward_passes: int = 0, perturbations: int = 0) -> Attribution:
        """An :class:`Attribution` from a [target tokens, features] matrix (scores = its column sums)."""
        per_target = np.asarray(per_target, dtype=np.float64)
        return Attribution(
            tokens=list(self.features.texts),
            scores=per_target.sum(axis=0),
            target_logprob=float(target_logprob),
            spans=list(self.features.spans),
            per_target=per_target if self.options.per_target else None,
            target_tokens=self.target_tokens,
            method=method,
            forward_passes=forward_passes,
            granularity=self.granularity,
            baseline=self.baseline,
            perturbations=perturbations,
        )


class AttributionMethod:
    """Base of every method: options in the constructor, one ``explain`` per prompt/target pair."""

    name: ClassVar[str] = ""

    def __init__(self, **options: Any):
        if options:
            raise TunelensError(
                f"method '{self.name}' takes no option(s) {', '.join(sorted(options))}"
            )

    def explain(self, job: Job) -> Attribution:  # pragma: no cover - abstract
        raise NotImplementedError


def register(name: str):
    """Class decorator: make a method available to ``attribute(method=name)``."""

    if name not in catalog.METHODS:
        raise ValueError(f"method '{name}' is not listed in tunelens.explain.catalog.METHODS")

    def decorate(cls: type[AttributionMethod]) -> type[AttributionMethod]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return decorate


def get_method(name: str) -> type[AttributionMethod]:
    check_choice(name, catalog.METHODS, "unknown method")
    if name not in METHODS:
        importlib.import_module(catalog.METHODS[name][0])
    return METHODS[name]
