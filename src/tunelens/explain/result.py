"""The one result type every attribution method returns (perturbation, gradient or otherwise)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class Attribution:
    """Attribution of one target to the features of one prompt.

    ``tokens[j]`` is the text of feature j (a token, a word or a span), ``spans[j]`` its
    (start, end) character offsets in the prompt, ``scores[j]`` its attribution to the whole
    target sequence, and ``per_target[t, j]`` (when computed) its attribution to target token t.
    ``forward_passes`` counts model calls (a batch is one call) and ``perturbations`` the distinct
    perturbed inputs scored, so methods and tools can be compared on cost as well as values.
    ``truncated_chars`` counts the prompt characters cut from its start to fit the model's
    context (0 when it fitted; :mod:`tunelens.models.context`). ``baseline`` names the baseline
    that ran (``auto`` resolved: unk, pad, space or period).
    """

    tokens: list[str]
    scores: np.ndarray
    target_logprob: float
    spans: list[tuple[int, int]] = field(default_factory=list)
    per_target: np.ndarray | None = None
    target_tokens: list[str] = field(default_factory=list)
    method: str = "occlusion"
    forward_passes: int = 0
    granularity: str = "token"
    baseline: str = "unk"
    perturbations: int = 0
    truncated_chars: int = 0
