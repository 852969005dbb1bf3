"""Where in the network did tuning act? One run's layer views, cheaply, as one JSON (study stage ``layers``).

The three views of :mod:`tunelens.explain.layers`, computed on the first few rows of the run's
predictions (the prompt as generation rendered it, the reference as target), so a study can show
them per strategy as small multiples:

- ``logit_lens``: per residual-stream entry (embeddings, then every decoder layer) the mean
  log-probability of the reference's tokens read through the final norm and head, for the tuned
  model and for its base on the same prompts: where the tuned model's answer appears, and how far
  above the base it sits;
- ``cka``: linear CKA between base and tuned residual streams per entry (1: the layer represents
  the prompts as the base does; lower: tuning changed it), every non-special token a sample;
- ``weight_change``: ‖ΔW‖/‖W‖ per decoder layer (a LoRA run's adapter update, unmerged).

Both models read the same token ids (the tuned run's tokenizer, which training saved from the
base's), so the CKA compares like with like. A run that is its base (strategy ``none``) gets CKA 1
and no weight change, which the report shows as such rather than hiding.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from tunelens.errors import TunelensError
from tunelens.io import read_jsonl, write_json


def _lens_mean(model, tokenizer, pairs: list[tuple[str, str]]) -> list[float]:
    """Mean over examples of the mean target-token log-prob, per residual-stream entry."""
    from tunelens.explain.layers import logit_lens

    rows = [logit_lens(model, tokenizer, prompt, target).logprobs.mean(axis=1) for prompt, target in pairs]
    return [float(v) for v in np.mean(rows, axis=0)]


def examples(predictions: Path, n: int) -> list[tuple[str, str]]:
    """(rendered prompt, reference) of the first ``n`` predictions rows that have both."""
    rows = [r for r in read_jsonl(Path(predictions)) if r.get("rendered_prompt") and r.get("reference")]
    if len(rows) < 2:
        raise TunelensError(f"{predictions}: layer views need at least 2 rows with a rendered prompt "
                            f"and a reference ({len(rows)} found)")
    return [(r["rendered_prompt"], r["reference"]) for r in rows[:n]]


def layer_views(model: str, base: str, predictions: Path, out: Path, max_examples: int = 4,
                loaded: tuple | None = None) -> dict:
    """Compute the run's layer views (``model`` tuned from ``base``) and write them to ``out``;
    ``loaded``: the run's model and tokenizer already loaded
    (:func:`~tunelens.models.loading.load_placed`)."""
    from tunelens.explain.layers import layer_cka, weight_change
    from tunelens.models.loading import load_model, load_placed, place_on_device
    from tunelens.models.run_settings import ModelSettings

    pairs = examples(predictions, max_examples)
    start = time.perf_counter()
    settings = ModelSettings.of(str(model))
    tuned, tokenizer = loaded or load_placed(str(model), settings)
    base_model, _ = load_model(str(base), dtype=settings.dtype, trust_remote_code=settings.trust_remote_code)
    base_model = place_on_device(base_model)
    tuned.eval()
    base_model.eval()
    cka = layer_cka(base_model, tuned, tokenizer, [p for p, _ in pairs])
    change = weight_change(base_model, tuned)
    report = {
        "model": str(model), "base": str(base), "predictions": str(predictions),
        "examples": len(pairs), "layers": len(change),
        "parameters": sum(p.numel() for p in base_model.parameters()),
        "logit_lens": {"tuned": _lens_mean(tuned, tokenizer, pairs),
                       "base": _lens_mean(base_model, tokenizer, pairs)},
        "cka": [float(v) for v in cka],
        "weight_change": [change[i] for i in sorted(change)],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_json(Path(out), report)
    return report
