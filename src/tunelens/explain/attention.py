"""Attention views: raw maps per layer and head, their means, attention rollout, and two methods.

Attention weights are what the model computes, not an explanation of its output (Jain & Wallace
2019); they are here because comparing where a base and a tuned model *look* is cheap (one forward
pass) and a common question. Rollout (Abnar & Zuidema 2020) follows attention through the layers:
each layer's head-averaged map is mixed with the identity for the residual connection,
Â = ½A + ½I, rows re-normalised, and the maps multiplied from the first layer up; row i of the
result says how much position i at the top draws on each input position. Rows sum to 1.

Two registered methods put attention in the same :class:`Attribution` as every other method:
``attention`` (the mean over heads, and over layers unless ``layer`` is given) and ``rollout``.
Row t of ``per_target`` is the attention of the position that *predicts* target token t (the last
prompt token for t = 0, target token t − 1 after that) — the query whose output is scored by
log p(target token t), as in the other methods — summed over each feature's tokens. Special tokens
and context outside ``feature_window`` are not features, so a row sums to at most 1. ``scores`` is
the sum over target tokens; ``target_logprob`` comes from the same forward pass.

Maps need the eager attention kernel (SDPA and flash kernels never form the weights); the model is
switched to it for the call and back afterwards.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from tunelens.errors import TunelensError
from tunelens.explain.base import AttributionMethod, Job, register
from tunelens.explain.layers import evaluating, inner_model
from tunelens.explain.result import Attribution


@dataclass
class AttentionMaps:
    """Attention of one prompt + target: ``maps[layer, head, query, key]`` over ``tokens``."""

    tokens: list[str]
    n_prompt: int
    maps: np.ndarray

    def heads_mean(self) -> np.ndarray:
        """[layers, seq, seq]: the mean over heads."""
        return self.maps.mean(axis=1)

    def mean(self) -> np.ndarray:
        """[seq, seq]: the mean over heads and layers."""
        return self.maps.mean(axis=(0, 1))

    def rollout(self, residual: bool = True) -> np.ndarray:
        """[seq, seq]: attention rollout through all layers (see the module docstring)."""
        return attention_rollout(self.maps, residual)


def attention_rollout(maps: np.ndarray, residual: bool = True) -> np.ndarray:
    """Rollout of [layers, heads, seq, seq] (or head-averaged [layers, seq, seq]) maps.

    ``residual=False`` multiplies the raw head-averaged maps, without the identity term.
    """
    maps = np.asarray(maps, dtype=np.float64)
    if maps.ndim == 4:
        maps = maps.mean(axis=1)
    if maps.ndim != 3 or maps.shape[1] != maps.shape[2]:
        raise TunelensError(f"attention rollout needs [layers, (heads,) seq, seq] maps, got {maps.shape}")
    seq = maps.shape[-1]
    rolled = np.eye(seq)
    for layer in maps:
        if residual:
            layer = 0.5 * layer + 0.5 * np.eye(seq)
        layer = layer / layer.sum(axis=-1, keepdims=True)
        rolled = layer @ rolled
    return rolled


@contextlib.contextmanager
def eager_attention(model):
    """Switch the model to the eager attention kernel (the one that returns weights) for a while."""
    inner = inner_model(model)
    before = getattr(inner.config, "_attn_implementation", None)
    if before in (None, "eager"):
        yield
        return
    try:
        inner.set_attn_implementation("eager")
    except (ValueError, AttributeError) as exc:
        raise TunelensError(f"{type(inner).__name__}: cannot switch to eager attention ({exc})") from None
    try:
        yield
    finally:
        inner.set_attn_implementation(before)


def forward_attentions(model, input_ids) -> tuple[torch.Tensor, torch.Tensor]:
    """(attentions [layers, heads, seq, seq], logits [seq, vocab]) of one sequence, on the model's device."""
    device = next(model.parameters()).device
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=device)[None]
    with eager_attention(model), evaluating(model):
        out = model(input_ids=ids, output_attentions=True, use_cache=False)
    if not out.attentions or any(a is None for a in out.attentions):
        raise TunelensError(f"{type(inner_model(model)).__name__} returned no attention weights")
    return torch.stack([a[0] for a in out.attentions]), out.logits[0]


def attention_maps(model, tokenizer, prompt: str, target: str = "") -> AttentionMaps:
    """Attention per layer and head over ``prompt`` (special tokens added) followed by ``target``."""
    prompt_ids = list(tokenizer(prompt)["input_ids"])
    target_ids = list(tokenizer(target, add_special_tokens=False)["input_ids"]) if target else []
    if not prompt_ids:
        raise TunelensError("attention maps need a non-empty prompt")
    ids = prompt_ids + target_ids
    attentions, _ = forward_attentions(model, ids)
    return AttentionMaps([tokenizer.decode([i]) for i in ids], len(prompt_ids),
                         attentions.float().cpu().numpy())


class AttentionView(AttributionMethod):
    """Shared driver: one forward pass, a [seq, seq] map, rows at the target-predicting positions."""

    def token_map(self, attentions: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def explain(self, job: Job) -> Attribution:
        prompt = job.features.input_ids
        ids = np.concatenate([prompt, job.target_ids[:-1]])
        attentions, logits = forward_attentions(job.model, ids)
        where = slice(len(prompt) - 1, len(ids))
        target = torch.as_tensor(job.target_ids, device=logits.device)
        logprob = torch.log_softmax(logits[where].float(), dim=-1).gather(-1, target[:, None]).sum()
        rows = self.token_map(attentions.double().cpu().numpy())[where]
        per_target = np.stack([rows[:, g].sum(axis=1) for g in job.features.groups], axis=1)
        return job.result(per_target, float(logprob), self.name, forward_passes=1)


@register("attention")
class RawAttention(AttentionView):
    """Mean attention over heads (``head`` picks one) and layers (``layer`` picks one, 0-based)."""

    def __init__(self, layer: int | None = None, head: int | None = None, **unknown):
        super().__init__(**unknown)
        self.layer, self.head = layer, head

    def token_map(self, attentions):
        layers, heads = attentions.shape[:2]
        for what, value, size in (("layer", self.layer, layers), ("head", self.head, heads)):
            if value is not None and not -size <= value < size:
                raise TunelensError(f"attention: {what} {value} out of range (the model has {size})")
        picked = attentions if self.layer is None else attentions[[self.layer]]
        picked = picked if self.head is None else picked[:, [self.head]]
        return picked.mean(axis=(0, 1))


@register("rollout")
class Rollout(AttentionView):
    """Attention rollout (Abnar & Zuidema 2020); ``residual=False`` drops the identity term."""

    def __init__(self, residual: bool = True, **unknown):
        super().__init__(**unknown)
        self.residual = residual

    def token_map(self, attentions):
        return attention_rollout(attentions, self.residual)
