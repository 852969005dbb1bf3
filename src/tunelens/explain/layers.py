"""Layer-wise views of what fine-tuning changed: logit lens, base-vs-tuned CKA, relative weight change.

All three read the residual stream or the weights of the decoder layers of any Hugging Face causal
LM (PEFT adapters unmerged included). The residual stream is taken with hooks on the decoder
layers — the input of the first layer (the embeddings as the layers see them, after any scaling)
and the output of every layer — rather than ``output_hidden_states``, because transformers 5
returns the last entry *after* the final norm, which would be normalised twice by the lens and
would not be comparable with the other layers in CKA. Entry 0 is the embeddings, entry i the output
of decoder layer i (1-based), so every view has ``layers + 1`` rows.

Why ours: the logit lens (nostalgebraist 2020) and linear CKA (Kornblith et al. 2019) are a few
lines of linear algebra that need the model's own parts (its final norm and head); the libraries
that ship them (TransformerLens, nnsight) re-implement or wrap the architectures. Weight deltas of
adapters come from PEFT itself (``get_delta_weight``, or the variant's ``merge_safe`` for DoRA),
computed on copies, so the adapter is never merged into the model.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from tunelens.errors import TunelensError

_NORM_NAMES = ("norm", "final_layernorm", "ln_f", "final_layer_norm", "final_norm")


# -- model anatomy ---------------------------------------------------------------------------------

def inner_model(model):
    """The transformers model under a PEFT wrapper (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def decoder_layers(model) -> nn.ModuleList:
    """The model's stack of decoder layers: the ModuleList as long as ``num_hidden_layers``."""
    inner = inner_model(model)
    n = getattr(inner.config, "num_hidden_layers", None)
    for _, module in inner.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return module
    raise TunelensError(f"{type(inner).__name__}: cannot find its {n} decoder layers")


def final_norm(model) -> nn.Module:
    body = inner_model(model).base_model
    for name in _NORM_NAMES:
        module = getattr(body, name, None)
        if isinstance(module, nn.Module):
            return module
    raise TunelensError(
        f"{type(body).__name__}: cannot find its final norm (looked for {', '.join(_NORM_NAMES)})"
    )


def _device(model) -> torch.device:
    return next(model.parameters()).device


@contextlib.contextmanager
def evaluating(model):
    """Eval mode and no autograd for a view's forward passes; the training flag is restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        if was_training:
            model.train()


def residual_stream(model, input_ids: Sequence[int]):
    """(states [layers + 1, seq, hidden] on the model's device, the model's output) for one sequence."""
    layers = decoder_layers(model)
    states: list[torch.Tensor | None] = [None] * (len(layers) + 1)

    def take_input(module, args, kwargs):
        states[0] = args[0] if args else kwargs["hidden_states"]

    def take_output(i):
        def hook(module, args, output):
            states[i + 1] = output[0] if isinstance(output, tuple) else output
        return hook

    handles = [layers[0].register_forward_pre_hook(take_input, with_kwargs=True)]
    handles += [layer.register_forward_hook(take_output(i)) for i, layer in enumerate(layers)]
    ids = torch.as_tensor(np.asarray(input_ids, dtype=np.int64), device=_device(model))[None]
    try:
        with evaluating(model):
            out = model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    if any(s is None for s in states):
        raise TunelensError(
            f"{type(inner_model(model)).__name__}: not every decoder layer ran in the forward pass"
        )
    return torch.stack([s[0] for s in states]), out


# -- logit lens ------------------------------------------------------------------------------------

@dataclass
class LogitLens:
    """``logprobs[l, t]``: log p(target token t) read from the residual stream after layer l.

    Row 0 reads the embeddings, row ``layers`` the last layer (equal to the model's own log-probs).
    """

    logprobs: np.ndarray
    target_tokens: list[str]

    @property
    def final(self) -> np.ndarray:
        return self.logprobs[-1]


def logit_lens(model, tokenizer, prompt: str, target: str) -> LogitLens:
    """Apply the final norm and the LM head to every layer's hidden state at the target positions."""
    from tunelens.explain.scorer import Scorer

    prompt_ids = tokenizer(prompt)["input_ids"]
    target_ids = tokenizer(target, add_special_tokens=False)["input_ids"]
    if not prompt_ids or not target_ids:
        raise TunelensError("logit lens needs a non-empty prompt and target")
    ids = list(prompt_ids) + list(target_ids[:-1])
    states, out = residual_stream(model, ids)
    where = slice(len(prompt_ids) - 1, len(ids))
    head = inner_model(model).get_output_embeddings()
    post = Scorer(model)._postprocess
    with evaluating(model):
        logits = post(head(final_norm(model)(states[:, where]))).float()
        target = torch.as_tensor(target_ids, device=logits.device)
        lp = torch.log_softmax(logits, dim=-1).gather(-1, target.expand(len(states), -1)[..., None])[..., 0]
        own = torch.log_softmax(out.logits[0, where].float(), dim=-1).gather(-1, target[:, None])[:, 0]
    if not torch.allclose(lp[-1], own, atol=1e-3, rtol=1e-4):
        warnings.warn(f"{type(inner_model(model)).__name__}: final norm + head do not reproduce the model's "
                      "logits; logit-lens rows are approximate", stacklevel=2)
    return LogitLens(lp.double().cpu().numpy(), [tokenizer.decode([i]) for i in target_ids])


# -- representation similarity -----------------------------------------------------------------------

def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two [samples, features] matrices (Kornblith et al. 2019); widths may differ.

    ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F ‖Yᶜᵀ Yᶜ‖_F) on column-centred matrices, computed through the
    smaller of the feature or the sample Gram matrices (the two forms are equal).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(x) != len(y) or len(x) < 2:
        raise TunelensError("linear CKA needs the same number (at least 2) of samples in both matrices")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if len(x) <= min(x.shape[1], y.shape[1]):
        kx, ky = x @ x.T, y @ y.T
        hsic = float((kx * ky).sum())
    else:
        kx, ky = x.T @ x, y.T @ y
        hsic = float(np.square(y.T @ x).sum())
    denom = float(np.linalg.norm(kx) * np.linalg.norm(ky))
    return hsic / denom if denom > 0 else float("nan")


def layer_cka(base_model, tuned_model, tokenizer, prompts: str | Sequence[str], pooling: str = "token",
              skip_special: bool = True) -> np.ndarray:
    """Linear CKA between the two models' residual streams, per layer: an array of ``layers + 1``.

    ``pooling="token"`` (default): every token of every prompt is one sample, so even one prompt
    gives a well-defined CKA. ``pooling="mean"``: one sample per prompt, its tokens' mean (needs at
    least two prompts, and many for a stable value). Special tokens (BOS, chat markers) are left out
    by default: their states are outliers (attention sinks) that would dominate the similarity.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if pooling not in ("token", "mean"):
        raise TunelensError(f"unknown pooling '{pooling}' (expected 'token' or 'mean')")
    if not prompts:
        raise TunelensError("layer_cka needs at least one prompt")
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    per_model = []
    for model in (base_model, tuned_model):
        samples = []
        for prompt in prompts:
            ids = np.asarray(tokenizer(prompt)["input_ids"], dtype=np.int64)
            keep = np.array([not (skip_special and int(i) in special) for i in ids])
            if not keep.any():
                raise TunelensError(f"prompt {prompt[:40]!r} has no non-special tokens")
            states = residual_stream(model, ids)[0].double().cpu().numpy()[:, keep]
            samples.append(states.mean(axis=1, keepdims=True) if pooling == "mean" else states)
        per_model.append(np.concatenate(samples, axis=1))
    base, tuned = per_model
    if len(base) != len(tuned):
        raise TunelensError(f"the models have different depths ({len(base) - 1} and {len(tuned) - 1} layers)")
    return np.array([linear_cka(b, t) for b, t in zip(base, tuned, strict=True)])


# -- weight change -----------------------------------------------------------------------------------

def _dense(module: nn.Module) -> torch.Tensor:
    """A module's weight as a float64 matrix, dequantized if bitsandbytes packed it."""
    from peft.utils.integrations import dequantize_module_weight

    with torch.no_grad():
        return dequantize_module_weight(module).detach().double()


def _adapter_delta(module) -> torch.Tensor:
    """ΔW of a LoRA layer's active adapters over its base weight, computed without merging."""
    if module.merged:
        raise TunelensError("the adapter is merged into its base weights: pass the unmerged PeftModel")
    base = _dense(module.get_base_layer())
    if module.disable_adapters:
        return torch.zeros_like(base)
    with torch.no_grad():
        weight = base.to(module.lora_A[module.active_adapters[0]].weight.dtype)
        start = weight.clone()
        for name in module.active_adapters:
            if name not in module.lora_A:
                continue
            variant = getattr(module, "lora_variant", {}).get(name)
            if variant is None:
                weight = weight + module.get_delta_weight(name).to(weight.dtype)
            else:
                # merge_safe returns the merged weight and leaves the module as it was, except for
                # cache entries that only an unmerge would consume: drop those again
                cached = set(module._caches)
                weight = variant.merge_safe(module, name, weight.clone()).to(weight.dtype)
                for key in set(module._caches) - cached:
                    module._caches.pop(key)
        return (weight - start).double()


def _units(layer: nn.Module) -> dict[str, nn.Module]:
    """Weight-bearing units of a layer by name: LoRA layers as one unit each, other linear maps."""
    from peft.tuners.lora import LoraLayer
    from transformers.pytorch_utils import Conv1D

    units: dict[str, nn.Module] = {}
    inside: list[str] = []
    for name, module in layer.named_modules():
        if any(name.startswith(prefix + ".") for prefix in inside):
            continue
        if isinstance(module, LoraLayer):
            units[name] = module
            inside.append(name)
        elif isinstance(module, nn.Linear | Conv1D):
            units[name] = module
    return units


def weight_change(base_model, tuned_model) -> dict[int, float]:
    """Relative weight change per decoder layer: ‖ΔW‖_F / ‖W‖_F over the layer's linear weights.

    The layer's linear weights are taken together: sqrt(Σ‖ΔWᵢ‖²) / sqrt(Σ‖Wᵢ‖²), so a large matrix
    counts for its size. For a PEFT model, ΔW of an adapted layer is the adapter's own update
    (scale · B·A for LoRA; for DoRA the merged weight minus the base, from PEFT's ``merge_safe``)
    over the weight it wraps, without merging; other layers are compared with ``base_model``.
    For a fully fine-tuned model, ΔW = tuned − base. 4-bit weights are dequantized first.
    Embeddings, the LM head and norms are not in any layer. Keys are 0-based layer indices.
    """
    from peft.tuners.lora import LoraLayer

    base_layers, tuned_layers = decoder_layers(base_model), decoder_layers(tuned_model)
    if len(base_layers) != len(tuned_layers):
        raise TunelensError(
            f"the models have different depths ({len(base_layers)} and {len(tuned_layers)} layers)"
        )
    change = {}
    for i, (base_layer, tuned_layer) in enumerate(zip(base_layers, tuned_layers, strict=True)):
        base_units = _units(base_layer)
        delta_sq = weight_sq = 0.0
        for name, unit in _units(tuned_layer).items():
            if isinstance(unit, LoraLayer):
                delta = _adapter_delta(unit)
                weight = _dense(unit.get_base_layer())
            else:
                if name not in base_units:
                    raise TunelensError(f"layer {i}: base model has no weight '{name}'")
                reference = base_units[name]
                weight = _dense(reference.get_base_layer() if isinstance(reference, LoraLayer) else reference)
                other = _dense(unit)
                if other.shape != weight.shape:
                    raise TunelensError(f"layer {i}: '{name}' is {tuple(other.shape)} in the tuned model "
                                        f"but {tuple(weight.shape)} in the base")
                delta = other - weight.to(other.device)
            delta_sq += float(delta.square().sum())
            weight_sq += float(weight.square().sum())
        change[i] = float(np.sqrt(delta_sq / weight_sq)) if weight_sq > 0 else 0.0
    return change
