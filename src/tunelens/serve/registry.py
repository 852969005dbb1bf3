"""The models one server holds, loaded once at start, chosen per request by its ``model`` field.

Each is loaded the way generate and explain load it (:func:`tunelens.models.loading.load_for_inference`:
a run's recorded dtype, remote-code setting and prompt format), so a served run answers as the
study's generation did. An adapter stays unmerged (PEFT's layers add the low-rank update at every
step) unless ``merge`` asks for PEFT's ``merge_and_unload``: one matmul per layer instead of three,
at the price of a merged copy in memory while merging. QLoRA adapters stay unmerged: merging into
4-bit weights would round them (``tunelens export`` de-quantizes first, on purpose).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelens.errors import TunelensError
from tunelens.serve.settings import RunSpec


@dataclass
class ServedModel:
    """A loaded model and how to prompt it."""

    name: str
    path: str
    model: object
    tokenizer: object
    settings: object  # tunelens.models.run_settings.ModelSettings
    prompt_format: str  # resolved: chat or plain
    merged: bool
    created: int = field(default_factory=lambda: int(time.time()))

    def render(self, clause: str) -> str:
        """The model input for a clause, exactly as the generate stage renders it."""
        return self.settings.render(self.tokenizer, clause)


def load_served(spec: RunSpec, merge: bool) -> ServedModel:
    """Load one run (one line naming the run when it cannot be loaded)."""
    from tunelens.models.loading import load_for_inference, place_on_device
    from tunelens.models.run_settings import ModelSettings, resolve_prompt_format

    try:
        settings = ModelSettings.of(spec.path)
        model, tokenizer = load_for_inference(spec.path)
    except TunelensError as exc:
        raise TunelensError(f"model {spec.name!r}: {exc}") from None
    merged = False
    if merge and hasattr(model, "merge_and_unload") and not _quantized(model):
        model, merged = model.merge_and_unload(), True
    model.eval()
    fmt = resolve_prompt_format(tokenizer, settings.prompt_format)
    return ServedModel(spec.name, str(Path(spec.path)), place_on_device(model), tokenizer, settings,
                       fmt, merged)


def _quantized(model) -> bool:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "hf_quantizer", None) is not None


class Registry:
    """Served models by name; an unknown name is the client's error (404), listed in the reply;
    a request without one gets the only model, or a 422 when there are several."""

    def __init__(self, models: list[ServedModel]):
        self.models = {m.name: m for m in models}

    def get(self, name: str | None) -> ServedModel:
        from tunelens.serve.errors import ApiError

        if name is None and len(self.models) == 1:
            return next(iter(self.models.values()))
        if name is None:
            raise ApiError(422, f"model: required when several are served ({', '.join(self.models)})",
                           "missing_model", param="model")
        if name not in self.models:
            raise ApiError(404, f"model {name!r} is not served here (served: "
                           f"{', '.join(self.models)})", "model_not_found", param="model")
        return self.models[name]
