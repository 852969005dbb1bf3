"""Gradient attributions on the input embeddings, through Captum: saliency, input×gradient, IG.

The target function is the one the perturbation methods attribute: log p(target | prompt), the
target teacher-forced after the prompt. Gradients are taken with respect to the prompt's input
embeddings (what ``model.get_input_embeddings()`` returns, i.e. exactly what the model sees for
those ids), and a token's score is the reduction of its embedding-sized attribution vector:

* ``saliency``: the L2 norm of ∂ log p / ∂ e (``norm="l1"``: the sum of absolute values) — a
  magnitude, never negative;
* ``input_x_gradient``: the signed sum over the embedding dimension of e ⊙ ∂ log p / ∂ e;
* ``integrated_gradients``: the signed sum of (e − e') ⊙ ∫ ∂ log p / ∂ e along the straight path
  from the baseline e' to e (Sundararajan et al. 2017). The baseline replaces only the feature
  positions by the embedding of the ``baseline`` token (``sample``: random tokens, IG averaged
  over ``baseline_trials``); special tokens and context outside ``feature_window`` keep their
  embeddings, so the scores of all features add up to log p(target | prompt) −
  log p(target | every feature replaced) — the same two endpoints occlusion's scores relate.

A feature's score is the sum of its tokens' scores, over the engine's own :class:`Features`, so
gradient and perturbation results line up feature by feature. ``per_target[t]`` attributes
log p(target token t) alone; ``scores`` attributes the whole sequence (for the signed methods
that is the column sum; for saliency it is the norm of the gradient of the summed log-prob).

Why not Captum's ``LLMGradientAttribution``: it runs one full attribution per target token, each
with its own forward over prompt + target prefix, and attributes every prompt token. Here Captum's
``Saliency``/``InputXGradient``/``IntegratedGradients`` get one forward function that scores all
target tokens in one teacher-forced pass (the LM head applied only where targets are predicted,
via ``logits_to_keep``), and all target tokens are attributed in one batched call: the prompt is
repeated once per target token and Captum's per-example ``target`` picks each copy's column.

PEFT adapters are used unmerged (the forward goes through the wrapped model). 4-bit models work
as long as the embedding layer is not quantized (bitsandbytes leaves it in float by default). On
the CPU, bitsandbytes repacks a 4-bit layer for its AVX512-BF16 kernel at the first eval-mode
forward without gradients, and that kernel has no backward: gradients through it are silently
wrong (only the residual path carries them). :func:`differentiable_4bit` unpacks such layers and
keeps them unpacked for the gradient passes.
"""

from __future__ import annotations

import contextlib
import inspect
from dataclasses import replace

import numpy as np
import torch

from tunelens.errors import TunelensError
from tunelens.explain.base import AttributionMethod, Job, register
from tunelens.explain.features import baseline_token, sample_replacements
from tunelens.explain.result import Attribution

MAX_ROWS = 256


@contextlib.contextmanager
def differentiable_4bit(model):
    """Keep bitsandbytes' 4-bit CPU layers on their generic (differentiable) path for a while."""
    from tunelens.models.quantized import restore_fast_4bit, use_autograd_4bit

    switched = use_autograd_4bit(model)
    try:
        yield
    finally:
        restore_fast_4bit(switched)


class TargetLogProbs:
    """Captum's forward function: prompt embeddings [B, P, H] -> [B, T + 1] log-probs.

    Column t < T is log p(target token t | prompt, target[:t]); column T is their sum.
    """

    def __init__(self, model, target_ids: torch.Tensor):
        self.model = model
        self.target_ids = target_ids
        self.n_target = len(target_ids)
        embed = model.get_input_embeddings()
        with torch.no_grad():
            self.target_embeds = embed(target_ids[:-1]).detach()[None]
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        self.keep_kwargs = (
            {"logits_to_keep": self.n_target}
            if "logits_to_keep" in inspect.signature(inner.forward).parameters else {}
        )
        self.calls = 0

    def __call__(self, prompt_embeds: torch.Tensor) -> torch.Tensor:
        rows = prompt_embeds.shape[0]
        embeds = torch.cat([prompt_embeds, self.target_embeds.expand(rows, -1, -1)], dim=1)
        logits = self.model(inputs_embeds=embeds, use_cache=False, **self.keep_kwargs).logits
        logits = logits[:, -self.n_target:]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        picked = logprobs.gather(-1, self.target_ids.expand(rows, -1).unsqueeze(-1)).squeeze(-1)
        self.calls += 1
        return torch.cat([picked, picked.sum(dim=-1, keepdim=True)], dim=-1)


class GradientMethod(AttributionMethod):
    """Shared driver: embeddings in, Captum attributions per requested output column, features out.

    ``signed`` methods are linear in the target function, so the sequence score is the column
    sum of the per-target rows and needs no extra row; saliency's norm is not, so its sequence
    score is computed from the gradient of the summed log-prob itself.
    """

    signed = True

    def explain(self, job: Job) -> Attribution:
        model = job.model
        embed = model.get_input_embeddings()
        if embed is None or not torch.is_floating_point(embed.weight):
            dtype = None if embed is None else embed.weight.dtype
            raise TunelensError(
                f"{type(model).__name__}: gradient methods need a float input-embedding layer (found "
                f"{dtype}); load it without quantizing the embeddings or use a perturbation method"
            )
        device = embed.weight.device
        n_target = len(job.target_ids)
        columns = list(range(n_target)) if job.options.per_target else []
        if not self.signed or not columns:
            columns.append(n_target)
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode(False), torch.enable_grad(), differentiable_4bit(model):
                prompt_ids = torch.as_tensor(job.features.input_ids, device=device)
                forward = TargetLogProbs(model, torch.as_tensor(job.target_ids, device=device))
                inputs = embed(prompt_ids).detach()[None]
                with torch.no_grad():
                    full = forward(inputs)[0, n_target].item()
                context = self.prepare(job, inputs)
                token_scores = np.zeros((len(columns), len(prompt_ids)))
                chunk = self._rows_per_pass(job, len(prompt_ids) + n_target - 1)
                for start in range(0, len(columns), chunk):
                    cols = columns[start:start + chunk]
                    token_scores[start:start + len(cols)] = self.token_scores(
                        forward, inputs.repeat(len(cols), 1, 1).requires_grad_(), cols, context, chunk
                    )
        finally:
            if was_training:
                model.train()
        per_feature = np.stack([token_scores[:, g].sum(axis=1) for g in job.features.groups], axis=1)
        rows = per_feature[:n_target] if job.options.per_target else per_feature
        result = job.result(rows, full, self.name, forward_passes=forward.calls,
                            perturbations=self.perturbations(job))
        if columns[-1] == n_target:
            result = replace(result, scores=per_feature[-1].astype(np.float64))
        return result

    def prepare(self, job: Job, inputs: torch.Tensor):
        """Whatever :meth:`token_scores` needs for this job beyond the inputs (IG: its baselines)."""
        return None

    def token_scores(self, forward, inputs, cols, context, rows_per_pass: int) -> np.ndarray:
        """[len(cols), prompt tokens] scores of each prompt token for output column cols[i]."""
        raise NotImplementedError

    def perturbations(self, job: Job) -> int:
        return 0

    @staticmethod
    def _rows_per_pass(job: Job, seq: int) -> int:
        """Sequences per forward+backward: ``batch_size``, else sized from ``memory_budget_mb``.

        Backward keeps every layer's activations, so the estimate is per layer, times layers,
        plus the kept logits (rough on purpose: it only has to keep a batch within the budget).
        """
        if job.options.batch_size:
            return int(job.options.batch_size)
        cfg = job.model.config
        hidden = getattr(cfg, "hidden_size", 1024)
        layers = getattr(cfg, "num_hidden_layers", 24)
        heads = getattr(cfg, "num_attention_heads", 16)
        inter = getattr(cfg, "intermediate_size", None) or 4 * hidden
        vocab = getattr(cfg, "vocab_size", 32000)
        itemsize = job.model.get_input_embeddings().weight.element_size()
        acts = layers * seq * (12 * hidden + 3 * inter + 2 * heads * seq) * itemsize
        logits = len(job.target_ids) * vocab * 4 * 3
        per_row = float(acts + logits)
        return int(max(1, min(MAX_ROWS, job.options.memory_budget_mb * 2**20 // per_row)))


@register("saliency")
class SaliencyMethod(GradientMethod):
    """|∂ log p / ∂ e| per token: the L2 norm (default) or L1 norm of the embedding gradient."""

    signed = False

    def __init__(self, norm: str = "l2", **unknown):
        super().__init__(**unknown)
        if norm not in ("l2", "l1"):
            raise TunelensError(f"saliency: unknown norm '{norm}' (expected 'l2' or 'l1')")
        self.norm = norm

    def token_scores(self, forward, inputs, cols, context, rows_per_pass):
        from captum.attr import Saliency

        grads = Saliency(forward).attribute(inputs, target=cols, abs=False).detach().double()
        if self.norm == "l2":
            return torch.linalg.vector_norm(grads, dim=-1).cpu().numpy()
        return grads.abs().sum(dim=-1).cpu().numpy()


@register("input_x_gradient")
class InputXGradientMethod(GradientMethod):
    """e ⊙ ∂ log p / ∂ e summed over the embedding dimension (signed)."""

    def token_scores(self, forward, inputs, cols, context, rows_per_pass):
        from captum.attr import InputXGradient

        attr = InputXGradient(forward).attribute(inputs, target=cols)
        return attr.detach().double().sum(dim=-1).cpu().numpy()


@register("integrated_gradients")
class IntegratedGradientsMethod(GradientMethod):
    """Integrated gradients from the baseline-token embedding at the feature positions.

    ``n_steps`` and ``integration`` (``gausslegendre`` or ``riemann_trapezoid``, ...) are Captum's
    ``n_steps`` and ``method``; more steps bring the scores' sum closer to the endpoint difference.
    """

    def __init__(self, n_steps: int = 50, integration: str = "gausslegendre", **unknown):
        super().__init__(**unknown)
        if n_steps < 1:
            raise TunelensError("integrated_gradients: n_steps must be at least 1")
        self.n_steps, self.integration = n_steps, integration

    def perturbations(self, job: Job) -> int:
        return self.n_steps * (job.options.baseline_trials if job.baseline == "sample" else 1)

    def prepare(self, job: Job, inputs: torch.Tensor) -> list[torch.Tensor]:
        """One baseline [P, H] per trial: the prompt with its feature positions replaced."""
        n_tok = len(job.features.input_ids)
        if job.baseline == "delete":
            raise TunelensError(
                "integrated_gradients needs a baseline embedding: use baseline unk, pad, mask or sample "
                "(not delete)"
            )
        if job.baseline == "sample":
            replacements = [sample_replacements(job.tokenizer, n_tok, job.rng)
                            for _ in range(job.options.baseline_trials)]
        else:
            replacements = [np.full(n_tok, baseline_token(job.tokenizer, job.baseline))]
        embed = job.model.get_input_embeddings()
        positions = torch.as_tensor(np.concatenate(job.features.groups), device=inputs.device)
        baselines = []
        for replacement in replacements:
            with torch.no_grad():
                swapped = embed(torch.as_tensor(replacement, device=inputs.device)).detach()
            baseline = inputs[0].clone()
            baseline[positions] = swapped[positions]
            baselines.append(baseline)
        return baselines

    def token_scores(self, forward, inputs, cols, context, rows_per_pass):
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(forward)
        total = np.zeros((len(cols), inputs.shape[1]))
        for baseline in context:
            attr = ig.attribute(
                inputs, baselines=baseline[None].expand_as(inputs), target=cols, n_steps=self.n_steps,
                method=self.integration, internal_batch_size=max(rows_per_pass, len(cols)),
            )
            total += attr.detach().double().sum(dim=-1).cpu().numpy()
        return total / len(context)
