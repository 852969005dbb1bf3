"""``attribute``: the one entry point of the attribution engine (the DESIGN.md contract).

It validates the request, splits each prompt into features, tokenizes its target and hands one
:class:`~tunelens.explain.base.Job` per prompt to the method found by name in the registry. The
model-wide :class:`~tunelens.explain.scorer.Scorer` is built once and shared by all prompts.
Defaults not fixed by the contract come from :class:`tunelens.config.ExplanationConfig`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError
from tunelens.explain.base import Job, Options, get_method
from tunelens.explain.features import GRANULARITIES, baseline_token, build_features
from tunelens.explain.result import Attribution
from tunelens.explain.scorer import Scorer

Span = tuple[int, int]


def _default(name: str):
    return ExplanationConfig.model_fields[name].default


def attribute(model, tokenizer, prompts: str | Sequence[str], targets: str | Sequence[str],
              method: str = "occlusion", granularity: str = "token", baseline: str = "unk", *,
              spans: Sequence[Sequence[Span]] | None = None,
              feature_window: Span | Sequence[Span | None] | None = None,
              n_samples: int | None = None, seed: int | Sequence[int] | None = None,
              batch_size: int | None = None,
              per_target: bool = True, baseline_trials: int | None = None,
              memory_budget_mb: float | None = None, reuse_prefix: bool | None = None,
              progress: Callable[[int], None] | None = None,
              **method_options: Any) -> list[Attribution]:
    """Attribute each target's log-probability to the features of its prompt.

    Score of feature j = log p(target | prompt) - log p(target | prompt with j replaced by the
    baseline), as Captum's ``FeatureAblation`` under ``LLMAttribution`` for ``method="occlusion"``.

    Args:
        prompts, targets: one target text (reference completion or the model's own generation)
            per prompt; a single string is one prompt.
        method: a registered method: occlusion, shapley, shapley_exact, lime, kernel_shap, ...
        granularity: ``token``, ``word`` (sub-words grouped by whitespace) or ``span``.
        baseline: ``unk``, ``pad``, ``mask`` (that token), ``delete`` (tokens removed) or
            ``sample`` (random vocabulary tokens, averaged over ``baseline_trials``).
        spans: for ``granularity="span"``, the (start, end) character spans of each prompt.
        feature_window: (start, end) character range holding the features (one for all prompts
            or one per prompt); tokens outside it are context and never perturbed.
        n_samples: permutations (shapley) or masks (lime, kernel_shap).
        seed: seeds sampling; prompt i uses the stream (seed, i) (a sequence seed: (*seed, i)).
        batch_size: perturbations per forward pass; default: sized from ``memory_budget_mb``.
        per_target: keep the [target tokens × features] matrix as well as the sequence scores.
        reuse_prefix: score perturbations on top of the unperturbed prompt's cached prefix.
        progress: called with the number of prompts done after each one.
        method_options: options of the method itself (e.g. ``antithetic=False`` for shapley,
            ``kernel_width`` or ``alpha`` for lime).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    targets = [targets] if isinstance(targets, str) else list(targets)
    if len(prompts) != len(targets):
        raise TunelensError(f"{len(prompts)} prompts but {len(targets)} targets: need one target per prompt")
    if granularity not in GRANULARITIES:
        raise TunelensError(
            f"unknown granularity '{granularity}' (expected one of {', '.join(GRANULARITIES)})"
        )
    estimator = get_method(method)(**method_options)
    baseline_token(tokenizer, baseline)  # fail before any work if the tokenizer lacks it
    windows = _per_prompt(feature_window, len(prompts), "feature_window")
    if granularity == "span":
        if spans is None or len(spans) != len(prompts):
            raise TunelensError("granularity 'span' needs spans: one list of (start, end) per prompt")
    options = Options(
        n_samples=n_samples if n_samples is not None else _default("n_samples"),
        seed=seed if seed is not None else _default("seed"),
        batch_size=batch_size if batch_size is not None else _default("batch_size"),
        per_target=per_target,
        baseline_trials=baseline_trials if baseline_trials is not None else _default("baseline_trials"),
        memory_budget_mb=memory_budget_mb if memory_budget_mb is not None else _default("memory_budget_mb"),
        reuse_prefix=reuse_prefix if reuse_prefix is not None else _default("reuse_prefix"),
    )
    if options.n_samples < 1 or options.baseline_trials < 1:
        raise TunelensError("n_samples and baseline_trials must be at least 1")
    scorer = Scorer(model, batch_size=options.batch_size, memory_budget_mb=options.memory_budget_mb,
                    reuse_prefix=options.reuse_prefix)
    results = []
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        if not isinstance(prompt, str) or not isinstance(target, str):
            raise TunelensError(f"prompt and target {i} must be strings")
        if not target:
            raise TunelensError(f"target {i} is empty: nothing to attribute to")
        features = build_features(tokenizer, prompt, granularity,
                                  spans[i] if granularity == "span" else None, windows[i])
        target_ids = np.asarray(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=np.int64)
        job = Job(model=model, tokenizer=tokenizer, prompt=prompt, target=target, features=features,
                  target_ids=target_ids, baseline=baseline, granularity=granularity, options=options,
                  scorer=scorer, rng=np.random.default_rng([*_seeds(options.seed), i]))
        results.append(estimator.explain(job))
        if progress is not None:
            progress(i + 1)
    return results


def _seeds(seed) -> list[int]:
    return [int(seed)] if isinstance(seed, int | np.integer) else [int(s) for s in seed]


def _per_prompt(value, n: int, name: str) -> list:
    if value is None:
        return [None] * n
    if len(value) == 2 and all(isinstance(v, int | np.integer) for v in value):
        return [tuple(value)] * n
    if len(value) != n:
        raise TunelensError(f"{name}: give one (start, end) for all prompts or one per prompt")
    return [None if v is None else tuple(v) for v in value]
