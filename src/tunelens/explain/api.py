"""``attribute``: the one entry point of the attribution engine (the DESIGN.md contract).

It validates the request, splits each prompt into features, tokenizes its target and hands one
:class:`~tunelens.explain.base.Job` per prompt to the method found by name in the registry. The
model-wide :class:`~tunelens.explain.scorer.Scorer` is built once and shared by all prompts.
Defaults not fixed by the contract come from :class:`tunelens.config.ExplanationConfig`.

A prompt longer than the model's context (less its target) loses context from its left, as
generation does (:mod:`tunelens.models.context`); features are never cut: a prompt whose features
do not fit is a one-line error. ``Attribution.truncated_chars`` says what was cut.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError
from tunelens.explain.base import Job, Options, get_method
from tunelens.explain.features import build_features, check_granularity, resolve_baseline
from tunelens.explain.result import Attribution
from tunelens.explain.scorer import Scorer
from tunelens.models.context import prompt_budget, warn_truncated

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
        baseline: ``unk``, ``pad``, ``mask`` (that token), ``delete`` (tokens removed),
            ``sample`` (random vocabulary tokens, averaged over ``baseline_trials``) or ``auto``
            (unk, else a pad that is not EOS, else a space:
            :func:`~tunelens.explain.features.resolve_baseline`); each result's ``baseline``
            names the one that ran.
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
    windows = _check_request(tokenizer, prompts, targets, granularity, baseline, spans, feature_window)
    estimator = get_method(method)(**method_options)
    options = _options(n_samples=n_samples, seed=seed, batch_size=batch_size, per_target=per_target,
                       baseline_trials=baseline_trials, memory_budget_mb=memory_budget_mb,
                       reuse_prefix=reuse_prefix)
    scorer = _scorer(model, options)
    results = []
    for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True)):
        job, cut = _job(model, tokenizer, i, prompt, target, granularity, baseline,
                        spans[i] if granularity == "span" else None, windows[i], options, scorer)
        result = estimator.explain(job)
        result.truncated_chars = cut
        results.append(result)
        if progress is not None:
            progress(i + 1)
    warn_truncated(sum(r.truncated_chars > 0 for r in results), len(results))
    return results


def prepare_job(model, tokenizer, prompt: str, target: str, granularity: str, baseline: str, *,
                spans: Sequence[Span] | None = None, feature_window: Span | None = None,
                scorer: Scorer | None = None, **options: Any) -> Job:
    """The :class:`Job` :func:`attribute` hands its method for one prompt: checked, split into
    features and fitted into the context exactly as there, so that code scoring other rankings of
    the same features (:mod:`tunelens.explain.faithfulness`) sees the features the scores are of.
    ``options`` are :class:`Options` fields; the unset ones take ExplanationConfig's defaults."""
    windows = _check_request(tokenizer, [prompt], [target], granularity, baseline,
                             None if spans is None else [spans], feature_window)
    opts = _options(**(dict.fromkeys(Options.__dataclass_fields__) | options))  # unknown: TypeError
    return _job(model, tokenizer, 0, prompt, target, granularity, baseline, spans, windows[0], opts,
                scorer or _scorer(model, opts))[0]


def _scorer(model, options: Options) -> Scorer:
    """The batched scorer one call's options ask for."""
    return Scorer(model, batch_size=options.batch_size, memory_budget_mb=options.memory_budget_mb,
                  reuse_prefix=options.reuse_prefix)


def _check_request(tokenizer, prompts: list, targets: list, granularity: str, baseline: str, spans,
                   feature_window) -> list:
    """Fail before any model call on a malformed request; the feature window of each prompt."""
    if len(prompts) != len(targets):
        raise TunelensError(f"{len(prompts)} prompts but {len(targets)} targets: need one target per prompt")
    check_granularity(granularity)
    resolve_baseline(tokenizer, baseline)  # the tokenizer has that token
    if granularity == "span" and (spans is None or len(spans) != len(prompts)):
        raise TunelensError("granularity 'span' needs spans: one list of (start, end) per prompt")
    return _per_prompt(feature_window, len(prompts), "feature_window")


def _options(**given) -> Options:
    """Options of one call: what was given, else ExplanationConfig's defaults."""
    options = Options(**{k: _default(k) if v is None else v for k, v in given.items()})
    if options.n_samples < 1 or options.baseline_trials < 1:
        raise TunelensError("n_samples and baseline_trials must be at least 1")
    return options


def _job(model, tokenizer, i: int, prompt, target, granularity: str, baseline: str, spans, window,
         options: Options, scorer: Scorer) -> tuple[Job, int]:
    """Prompt ``i`` split into features and fitted into the model's context beside its target
    (:meth:`Features.fit`), and the characters of context that fitting cut."""
    if not isinstance(prompt, str) or not isinstance(target, str):
        raise TunelensError(f"prompt and target {i} must be strings")
    if not target:
        raise TunelensError(f"target {i} is empty: nothing to attribute to")
    features = build_features(tokenizer, prompt, granularity, spans, window)
    target_ids = np.asarray(tokenizer(target, add_special_tokens=False)["input_ids"], dtype=np.int64)
    features, cut = features.fit(prompt_budget(model, len(target_ids), what="the target"))
    job = Job(model=model, tokenizer=tokenizer, prompt=prompt, target=target, features=features,
              target_ids=target_ids, baseline=resolve_baseline(tokenizer, baseline).name,
              granularity=granularity, options=options,
              scorer=scorer, rng=np.random.default_rng([*_seeds(options.seed), i]))
    return job, cut


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
