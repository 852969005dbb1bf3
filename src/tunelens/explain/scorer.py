"""The scorer: log p(target | input) for many perturbed inputs of one prompt, batched.

Why ours and not Captum's or Inseq's forward function: both run one perturbation per forward pass
and compute logits over the whole vocabulary at every position. Here

* perturbed inputs are scored in padding-aware batches (right padding, so every real token keeps
  its position id and the causal mask never lets it see a pad), the target teacher-forced in the
  same pass;
* the LM head is applied only at the positions that predict target tokens: hidden states come
  from the model body, are gathered, and only then projected onto the vocabulary (once per model
  this path is checked against the full model's logits; models that post-process logits in ways
  we do not know fall back to the full forward);
* the unperturbed prompt is run once and its KV cache kept; a batch of perturbations whose first
  perturbed position is ``p`` starts from the cached prefix ``[0, p)`` expanded over the batch,
  so only the suffix is recomputed. Perturbations are sorted by ``p`` and cut into batches by a
  small dynamic programme that trades the prefix a batch loses (it can only reuse the shortest
  one among its rows) against the fixed cost of another pass. Layers with sliding windows or
  other non-plain caches disable this reuse;
* the batch size follows a memory estimate (sequence length × hidden size × layers, the KV cache
  and the gathered logits) unless given.

Results are per target token, so per-target attribution matrices cost nothing extra.
"""

from __future__ import annotations

import contextlib
import inspect
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from tunelens.errors import TunelensError
from tunelens.explain.packing import pack, pair_up

MAX_BATCH = 256
PASS_COST_TOKENS = {"cpu": 64, "cuda": 1024}
HEAD_CHUNK_BYTES = {"cpu": 4 * 2**20, "cuda": 256 * 2**20}
# at least this many positions per head chunk: the head's weight (113 MB for SmolLM2's 49k vocabulary)
# is read once per chunk, and 4 MiB chunks of 21 positions made the head memory-bound (2x slower)
HEAD_MIN_ROWS = 256
# positions per packed pass: on CPU, 1024 keeps a layer's MLP activations near the cache (the
# element-wise SiLU and products ran 2.5x slower on 4,000-position batches); matmuls lose nothing
PACK_TOKENS = {"cpu": 1024, "cuda": 16384}


@dataclass
class Prepared:
    """One prompt and target after the unperturbed pass: its log-probs and (maybe) its KV cache."""

    prompt_ids: np.ndarray
    target_ids: np.ndarray
    logprobs: np.ndarray
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)


class Scorer:
    """Per-target-token log-probabilities of a target under many variants of a prompt."""

    def __init__(self, model, batch_size: int | None = None, memory_budget_mb: float = 1024.0,
                 reuse_prefix: bool = True):
        self.model = model
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = inner.get_output_embeddings() if hasattr(inner, "get_output_embeddings") else None
        body = getattr(inner, "base_model", None)
        if head is None or body is None or body is inner:
            raise TunelensError(
                f"{type(inner).__name__} has no language-model head: load it with "
                "AutoModelForCausalLM (tunelens.models.loading.load_model)"
            )
        self.head, self.body, self.config = head, body, inner.config
        self.batch_size = batch_size
        self.memory_budget = memory_budget_mb * 2**20
        self.reuse_prefix = reuse_prefix
        self.device = next(model.parameters()).device
        # fixed cost of one forward pass, in tokens of work: Python and kernel-launch overhead
        self.pass_cost = PASS_COST_TOKENS.get(self.device.type, PASS_COST_TOKENS["cpu"])
        self.pad_id = _pad_id(self.config)
        self.max_positions = getattr(self.config, "max_position_embeddings", None)
        # transformers 5 renamed the forward's ``past_key_values`` to ``cache`` (the old name warns)
        takes_cache = "cache" in inspect.signature(body.forward).parameters
        self.cache_kw = "cache" if takes_cache else "past_key_values"
        self.head_only: bool | None = None  # decided on the first prompt
        self.packs: bool | None = None  # packed rows checked on the first prompt with a cache
        self.dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
        self.forward_passes = 0
        self.scored = 0

    # -- public --------------------------------------------------------------------------------

    def prepare(self, prompt_ids: Sequence[int], target_ids: Sequence[int]) -> Prepared:
        """Run the unperturbed prompt + target once: its log-probs and the prefix KV cache."""
        prompt_ids = np.asarray(prompt_ids, dtype=np.int64)
        target_ids = np.asarray(target_ids, dtype=np.int64)
        if len(target_ids) == 0:
            raise TunelensError("empty target: nothing to attribute to")
        if len(prompt_ids) == 0:
            raise TunelensError("empty prompt: nothing to attribute")
        total = len(prompt_ids) + len(target_ids)
        if self.max_positions and total > self.max_positions:
            raise TunelensError(
                f"prompt ({len(prompt_ids)} tokens) + target ({len(target_ids)} tokens) exceed the "
                f"model's context of {self.max_positions} positions"
            )
        with self._inference():
            if self.head_only is None:
                self.head_only = self._head_matches(prompt_ids, target_ids)
            logprobs, cache = self._batch([prompt_ids], 0, target_ids, None, keep_cache=self.reuse_prefix)
            prepared = Prepared(prompt_ids, target_ids, logprobs[0], cache)
            if self.packs is None and cache is not None:
                self.packs = self._packing_matches(prepared)
        return prepared

    def score(self, prepared: Prepared, variants: Sequence[np.ndarray],
              first_changed: Sequence[int]) -> np.ndarray:
        """Log-probs [n, target tokens] of the target after each variant of the prompt.

        ``first_changed[i]`` is a position before which variant i equals the unperturbed prompt
        (any lower bound is correct; a tight one lets more of the cached prefix be reused).
        """
        n = len(variants)
        out = np.empty((n, len(prepared.target_ids)), dtype=np.float64)
        if n == 0:
            return out
        lengths = np.array([len(v) for v in variants])
        if lengths.min() == 0:
            raise TunelensError("a perturbation left the prompt empty (deletion baseline without BOS?)")
        shared = np.minimum(np.asarray(first_changed), lengths - 1)
        if prepared.cache is None:
            shared = np.zeros_like(shared)
        order = np.argsort(-shared, kind="stable")
        plan = self._plan(shared[order], lengths[order], len(prepared.target_ids))
        if prepared.cache is not None and self.packs and not self.batch_size:
            n_target = len(prepared.target_ids)
            rows, width = pair_up(lengths - shared + n_target - 1)
            plain = sum((b - a) * int(lengths[order[a:b]].max() - shared[order[a:b]].min() + n_target - 1)
                        for a, b in plan)
            if len(rows) * width < plain:  # positions computed, padding included
                self._score_packed(prepared, variants, shared, rows, width, out)
                return out
        with self._inference():
            for start, stop in plan:
                rows = order[start:stop]
                prefix = int(shared[rows].min())
                logprobs, _ = self._batch([variants[i] for i in rows], prefix, prepared.target_ids,
                                          prepared.cache)
                out[rows] = logprobs
        return out

    def _score_packed(self, prepared: Prepared, variants, shared: np.ndarray, rows: list[list[int]],
                      width: int, out: np.ndarray) -> None:
        """Score packed rows (:mod:`tunelens.explain.packing`) in batches the memory budget allows."""
        n_target = len(prepared.target_ids)
        prefix = int(shared.max())
        per_row = self.row_bytes(np.array([prefix]), np.array([width]), n_target)[0]
        cap = PACK_TOKENS.get(self.device.type, PACK_TOKENS["cuda"]) // width
        size = int(max(1, min(MAX_BATCH, cap, self.memory_budget // max(per_row, 1))))
        with self._inference():
            for start in range(0, len(rows), size):
                batch = rows[start:start + size]
                index = [i for row in batch for i in row]
                local = {i: k for k, i in enumerate(index)}
                packed = pack([variants[i] for i in index], shared[index], prepared.target_ids,
                              [[local[i] for i in row] for row in batch], width, self.pad_id, self.dtype,
                              self.device)
                past = self._expanded(prepared.cache, packed.prefix, len(batch))
                given = {self.cache_kw: past, "use_cache": past is not None,
                         "position_ids": packed.positions}
                out[index] = self._pick(packed.ids, packed.mask, given, packed.gather_rows,
                                        packed.gather_cols, prepared.target_ids)

    def _packing_matches(self, prepared: Prepared) -> bool:
        """Do two packed copies of the unperturbed prompt, scored from different cached prefixes,
        reproduce its log-probs? (Architectures that ignore ``position_ids`` or 4-D masks fail.)"""
        n = len(prepared.prompt_ids)
        shared = np.array([n // 3, (2 * n) // 3])
        out = np.empty((2, len(prepared.target_ids)))
        suffix = n - shared + len(prepared.target_ids) - 1
        self._score_packed(prepared, [prepared.prompt_ids] * 2, shared, [[0, 1]], int(suffix.sum()), out)
        self.forward_passes -= 1
        self.scored -= 2
        half = self.dtype in (torch.float16, torch.bfloat16)
        return bool(np.allclose(out, prepared.logprobs[None], atol=5e-2 if half else 1e-4, rtol=1e-4))

    # -- batching ------------------------------------------------------------------------------

    def _plan(self, shared: np.ndarray, lengths: np.ndarray, n_target: int) -> list[tuple[int, int]]:
        """Cut rows (sorted by shared prefix, longest first) into batches of least total cost.

        A batch costs a fixed ``pass_cost`` (in tokens) plus rows × the tokens each recomputes:
        its padded length past the shortest shared prefix in the batch. Larger batches amortise
        the fixed cost but lose cached prefix; an exact dynamic programme over contiguous cuts
        settles the trade-off. Batches never exceed the memory budget (or ``batch_size``).
        """
        n = len(shared)
        if self.batch_size:
            return [(i, min(i + self.batch_size, n)) for i in range(0, n, self.batch_size)]
        best = np.full(n + 1, np.inf)
        best[0] = 0.0
        cut = np.zeros(n + 1, dtype=np.int64)
        for stop in range(1, n + 1):
            first = max(0, stop - MAX_BATCH)
            # batch = rows [start, stop) for start in first..stop-1, scanned backwards
            prefix = np.minimum.accumulate(shared[first:stop][::-1])
            longest = np.maximum.accumulate(lengths[first:stop][::-1])
            rows = np.arange(1, stop - first + 1)
            suffix = longest - prefix + n_target
            cost = best[first:stop][::-1] + self.pass_cost + rows * suffix
            fits = rows * self.row_bytes(prefix, suffix, n_target) <= self.memory_budget
            fits[0] = True  # one row always runs, whatever the estimate says
            cost[~fits] = np.inf
            k = int(np.argmin(cost))
            best[stop], cut[stop] = cost[k], stop - 1 - k
        bounds, stop = [], n
        while stop > 0:
            bounds.append((int(cut[stop]), stop))
            stop = int(cut[stop])
        return bounds[::-1]

    def row_bytes(self, prefix, suffix, n_target: int):
        """Rough peak memory of one row: KV cache, one layer's activations, attention, logits."""
        cfg = self.config
        hidden = getattr(cfg, "hidden_size", 1024)
        layers = getattr(cfg, "num_hidden_layers", 24)
        heads = getattr(cfg, "num_attention_heads", 16)
        kv_heads = getattr(cfg, "num_key_value_heads", None) or heads
        head_dim = getattr(cfg, "head_dim", None) or hidden // heads
        inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
        vocab = getattr(cfg, "vocab_size", 32000)
        keys = np.asarray(prefix) + np.asarray(suffix)
        itemsize = 4 if self.device.type == "cpu" else 2
        cache = 2 * layers * keys * kv_heads * head_dim * itemsize * 2  # copy made when extended
        acts = suffix * (6 * hidden + 3 * inter) * itemsize
        attn = heads * suffix * keys * 4
        # head-only scoring projects a bounded chunk at a time; the full model projects everything
        logits = 0 if self.head_only else suffix * vocab * 4 * 3
        return cache + acts + attn + logits

    def _batch(self, rows: list[np.ndarray], prefix: int, target: np.ndarray, cache,
               keep_cache: bool = False):
        """One forward pass over ``rows`` (each = prompt variant), target appended to each."""
        n_rows, n_target = len(rows), len(target)
        # the last target token is never an input: nothing is predicted from it
        suffixes = [np.concatenate([r[prefix:], target[:-1]]) for r in rows]
        width = max(len(s) for s in suffixes)
        ids = np.full((n_rows, width), self.pad_id, dtype=np.int64)
        mask = np.zeros((n_rows, prefix + width), dtype=np.int64)
        mask[:, :prefix] = 1
        for i, s in enumerate(suffixes):
            ids[i, :len(s)] = s
            mask[i, prefix:prefix + len(s)] = 1
        # hidden state at suffix index (len(row) - prefix - 1 + t) predicts target token t
        starts = np.array([len(r) - prefix - 1 for r in rows])
        gather = torch.as_tensor(starts[:, None] + np.arange(n_target)[None, :], device=self.device)
        ids_t = torch.as_tensor(ids, device=self.device)
        mask_t = torch.as_tensor(mask, device=self.device)
        past = self._expanded(cache, prefix, n_rows)
        given = {self.cache_kw: past, "use_cache": keep_cache or past is not None}
        row_index = torch.arange(n_rows, device=self.device)[:, None]
        kept = [] if keep_cache else None
        scores = self._pick(ids_t, mask_t, given, row_index, gather, target, kept)
        return scores, (_plain_layers(kept[0]) if keep_cache else None)

    def _expanded(self, cache, prefix: int, n_rows: int):
        """The cached prefix ``[0, prefix)`` as a cache for ``n_rows`` rows (views, no copies)."""
        if prefix <= 0 or cache is None:
            return None
        from transformers import DynamicCache

        return DynamicCache(ddp_cache_data=[
            (k[:, :, :prefix].expand(n_rows, -1, -1, -1), v[:, :, :prefix].expand(n_rows, -1, -1, -1))
            for k, v in cache
        ])

    def _pick(self, ids, mask, given: dict, rows: torch.Tensor, cols: torch.Tensor, target: np.ndarray,
              kept: list | None = None) -> np.ndarray:
        """One forward pass; log p(target token t) read at ``[rows, cols[:, t]]`` for each output row.

        With ``head_only`` the head runs only at those positions. ``kept`` receives the cache.
        """
        n_out, n_target = cols.shape
        target_t = torch.as_tensor(target, device=self.device).expand(n_out, -1).reshape(-1, 1)
        if self.head_only:
            out = self.body(input_ids=ids, attention_mask=mask, **given)
            picked = out.last_hidden_state[rows, cols].reshape(n_out * n_target, -1)
            picked_lp = self._head_logprobs(picked, target_t).view(n_out, n_target)
        else:
            out = self.model(input_ids=ids, attention_mask=mask, **given)
            logits = out.logits[rows, cols].reshape(n_out * n_target, -1)
            picked_lp = torch.log_softmax(logits.float(), dim=-1).gather(-1, target_t).view(n_out, n_target)
        self.forward_passes += 1
        self.scored += n_out
        if kept is not None:
            kept.append(out[self.cache_kw])
        return picked_lp.double().cpu().numpy()

    def _head_logprobs(self, hidden: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """log p(target) from hidden states [positions, hidden], the head applied in chunks.

        On CPU each chunk's logits (``HEAD_CHUNK_BYTES``, at least ``HEAD_MIN_ROWS`` positions) are
        normalised soon after they are written: with a large vocabulary, projecting all positions
        at once and then reading the logits back for the log-softmax is memory-bound (up to 2x
        slower with a 16k vocabulary, see benchmarks/attribution_speed.py), and so are chunks too
        small to amortise reading the head's weight. It also bounds the logits' memory.
        """
        out = torch.empty(len(hidden), dtype=torch.float32, device=hidden.device)
        vocab = getattr(self.config, "vocab_size", None) or 32000
        chunk_bytes = HEAD_CHUNK_BYTES.get(self.device.type, HEAD_CHUNK_BYTES["cuda"])
        step = max(HEAD_MIN_ROWS, chunk_bytes // (4 * vocab))
        for start in range(0, len(hidden), step):
            chunk = slice(start, start + step)
            logits = self._postprocess(self.head(hidden[chunk])).float()
            out[chunk] = torch.log_softmax(logits, dim=-1).gather(-1, target[chunk])[:, 0]
        return out

    # -- checks --------------------------------------------------------------------------------

    def _postprocess(self, logits: torch.Tensor) -> torch.Tensor:
        """Logit transforms some architectures apply after the head (Gemma, Cohere, Granite)."""
        cfg = self.config
        if getattr(cfg, "logit_scale", None):
            logits = logits * cfg.logit_scale
        if getattr(cfg, "logits_scaling", None):
            logits = logits / cfg.logits_scaling
        cap = getattr(cfg, "final_logit_softcapping", None)
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _head_matches(self, prompt_ids: np.ndarray, target_ids: np.ndarray) -> bool:
        """Does body → gathered positions → head reproduce the model's own log-probs?"""
        self.head_only = True
        ours, _ = self._batch([prompt_ids], 0, target_ids, None)
        self.head_only = False
        theirs, _ = self._batch([prompt_ids], 0, target_ids, None)
        self.forward_passes -= 2
        self.scored -= 2
        weight = next(self.head.parameters(), None)
        half = weight is not None and weight.dtype in (torch.float16, torch.bfloat16)
        if np.allclose(ours, theirs, atol=5e-2 if half else 1e-3, rtol=1e-4):
            return True
        warnings.warn(
            f"{type(self.model).__name__}: head-only scoring does not match the model's logits; "
            "using full forward passes (slower)", stacklevel=3,
        )
        return False

    @contextlib.contextmanager
    def _inference(self):
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                yield
        finally:
            if was_training:
                self.model.train()


def _plain_layers(cache) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """The (keys, values) of each layer if every layer is a plain growing cache, else None."""
    from transformers.cache_utils import DynamicLayer

    layers = getattr(cache, "layers", None)
    if not layers or any(type(layer) is not DynamicLayer for layer in layers):
        return None
    return [(layer.keys, layer.values) for layer in layers]


def _pad_id(config) -> int:
    """Any valid token id works as padding (pads are masked and never read); prefer the model's."""
    for name in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(config, name, None)
        if isinstance(value, list | tuple):
            value = value[0] if value else None
        if value is not None:
            return int(value)
    return 0
