"""The model-randomisation sanity check (Adebayo et al. 2018, "Sanity checks for saliency maps").

An explanation of a trained model must depend on what the model learnt. The check re-draws the
weights from the architecture's initialiser and explains the same inputs again: a method whose
scores barely move (high rank correlation with the trained model's scores) explains the input or
the architecture, not the model — Adebayo et al. found exactly that for guided backprop, which
works as an edge detector. Both score vectors are also judged with the faithfulness measures on
the *trained* model (:mod:`tunelens.explain.faithfulness`): the randomised model's scores should
have lost their comprehensiveness.

Two variants, as in the paper: the full randomisation (every weight) and the cascading one, which
randomises block by block from the top (the LM head with the final norm, then the decoder layers
from the last down, then the embeddings) and shows how far down a method's scores still follow
the trained weights. The copies are made with ``copy.deepcopy``; the trained model is not touched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tunelens.explain.faithfulness import Faithfulness, faithfulness

FAITHFULNESS_OPTIONS = ("granularity", "baseline", "feature_window", "batch_size", "memory_budget_mb",
                        "baseline_trials")


def blocks_top_down(model) -> list[tuple[str, list]]:
    """(name, modules) of the blocks the cascading check randomises, from the output down."""
    from tunelens.explain.layers import decoder_layers, final_norm, inner_model

    inner = inner_model(model)
    layers = decoder_layers(model)
    blocks = [("head", [inner.get_output_embeddings(), final_norm(model)])]
    blocks += [(f"layer {i}", [layers[i]]) for i in reversed(range(len(layers)))]
    return blocks + [("embeddings", [inner.get_input_embeddings()])]


def randomised_copy(model, seed: int = 0, top: int | None = None):
    """A copy of ``model`` with its weights re-drawn from its architecture's initialiser.

    ``top=None`` re-draws every weight (the full randomisation); ``top=k`` only the first k
    blocks of :func:`blocks_top_down` (the cascading one). Uses the model's own
    ``_init_weights`` (transformers' initialiser, as ``from_config`` draws it), else each
    module's ``reset_parameters``. With tied input and output embeddings the head's step also
    re-draws the embeddings (they are one tensor).
    """
    import copy

    import torch

    clone = copy.deepcopy(model)
    inner = clone.get_base_model() if hasattr(clone, "get_base_model") else clone
    init = getattr(inner, "_init_weights", None)
    roots = [clone] if top is None else [m for _, ms in blocks_top_down(clone)[:top] for m in ms]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for root in roots:
            for module in root.modules():
                if init is not None:
                    init(module)
                elif hasattr(module, "reset_parameters"):
                    module.reset_parameters()
    return clone.eval()


def rank_correlations(a: Sequence[np.ndarray], b: Sequence[np.ndarray]) -> np.ndarray:
    """Spearman's ρ of each pair of score vectors (NaN where one is constant)."""
    from scipy import stats

    out = []
    for x, y in zip(a, b, strict=True):
        flat = np.ptp(x) == 0 or np.ptp(y) == 0
        out.append(float("nan") if flat else float(stats.spearmanr(x, y).statistic))
    return np.array(out)


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else float("nan")


@dataclass
class RandomisationCheck:
    """Scores of the trained model against scores of its randomised copy, on the same examples.

    ``rank_correlation[i]``: Spearman's ρ between the two score vectors of example i. ``trained``
    and ``randomised``: the faithfulness of each, both judged on the *trained* model. A method
    passes when ρ is low (its scores depend on what the model learnt) and the randomised scores
    explain the trained model worse. ``cascade``: (block randomised down to, mean ρ) per step
    of the cascading check, when it ran.
    """

    method: str
    rank_correlation: np.ndarray
    trained: list[Faithfulness]
    randomised: list[Faithfulness]
    cascade: list[tuple[str, float]] | None = None

    @property
    def mean_rank_correlation(self) -> float:
        return _mean(self.rank_correlation)

    def passed(self, max_correlation: float = 0.5) -> bool:
        """ρ below ``max_correlation`` on average and comprehensiveness lost by randomising."""
        trained = np.mean([f.aopc_comprehensiveness for f in self.trained])
        randomised = np.mean([f.aopc_comprehensiveness for f in self.randomised])
        return bool(self.mean_rank_correlation < max_correlation and randomised < trained)


def randomisation_check(model, tokenizer, prompts: Sequence[str], targets: Sequence[str],
                        method: str = "occlusion", *, seed: int = 0, cascade: bool = False,
                        explain: Callable | None = None, **options) -> RandomisationCheck:
    """Attribute with ``model`` and with :func:`randomised_copy` of it; compare the two.

    ``explain(model) -> [scores per prompt]`` replaces ``attribute(model, ..., method=method,
    **options)`` (e.g. to check a method outside the registry); ``options`` also set the features
    the faithfulness measures rebuild (granularity, baseline, spans, feature_window). With
    ``cascade`` the scores are also taken after each step of the cascading randomisation (one
    more attribution pass per block).
    """
    from tunelens.explain.api import attribute

    if explain is None:
        # only the sequence scores are compared: no per-target matrix (a gradient method would
        # take one backward pass per target token for it)
        given = {"per_target": False, **options}

        def explain(m):
            return [a.scores for a in attribute(m, tokenizer, list(prompts), list(targets),
                                                method=method, **given)]
    trained = explain(model)
    randomised = explain(randomised_copy(model, seed))
    steps = None
    if cascade:
        names = [name for name, _ in blocks_top_down(model)]
        steps = [(name, _mean(rank_correlations(trained, explain(randomised_copy(model, seed, top=k)))))
                 for k, name in enumerate(names, start=1)]
    checks = [faithfulness(model, tokenizer, prompt, target,
                           {"trained": trained[i], "randomised": randomised[i]},
                           **_per_prompt_options(options, i))
              for i, (prompt, target) in enumerate(zip(prompts, targets, strict=True))]
    return RandomisationCheck(method, rank_correlations(trained, randomised),
                              [c["trained"] for c in checks], [c["randomised"] for c in checks], steps)


def _per_prompt_options(options: dict, i: int) -> dict:
    """The faithfulness options of prompt i from ``attribute``-style options (spans and windows
    may be given per prompt)."""
    kept = {k: v for k, v in options.items() if k in FAITHFULNESS_OPTIONS}
    window = kept.get("feature_window")
    if window is not None and not (len(window) == 2 and isinstance(window[0], int | np.integer)):
        kept["feature_window"] = window[i]
    if options.get("spans") is not None:
        kept["spans"] = options["spans"][i]
    return kept
