"""Views of a model beyond token attribution: where it attends, what each layer predicts, what tuning changed.

A plain Python API, one function per question (each a forward pass or two on small inputs):

* :func:`attention_maps` — attention per layer and head over prompt + target
  (:class:`AttentionMaps`: ``maps[layer, head, query, key]``, ``heads_mean()``, ``mean()``,
  ``rollout()``); :func:`attention_rollout` for maps of your own. Registered as the attribution
  methods ``attention`` and ``rollout``: ``attribute(..., method="rollout")`` scores prompt
  features by the attention the target-predicting positions pay them.
* :func:`logit_lens` — log p of each target token read from every layer's residual stream
  (:class:`LogitLens`: ``logprobs[layers + 1, target tokens]``, last row = the model's own).
* :func:`layer_cka` — linear CKA between a base and a tuned model's residual streams per layer
  (``[layers + 1]``, 1 where nothing changed).
* :func:`weight_change` — ‖ΔW‖_F / ‖W‖_F per decoder layer, for full fine-tuning and for PEFT
  adapters (unmerged).

The code lives in :mod:`tunelens.explain.attention` and :mod:`tunelens.explain.layers`; this module
gathers them (and, imported by the method registry, registers the attention methods).
"""

from tunelens.explain.attention import AttentionMaps, attention_maps, attention_rollout
from tunelens.explain.layers import LogitLens, layer_cka, linear_cka, logit_lens, weight_change

__all__ = [
    "AttentionMaps",
    "LogitLens",
    "attention_maps",
    "attention_rollout",
    "layer_cka",
    "linear_cka",
    "logit_lens",
    "weight_change",
]
