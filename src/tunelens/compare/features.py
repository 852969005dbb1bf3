"""Which features the attribution measures count: tokens, or words when tokenizers differ.

Concentration and category enrichment count features, and a tokenizer that cuts "1011.5" into
five pieces gives a run five NUMBER features where another has one. Runs compared with each
other must therefore count the same unit. Words (tokens merged by their character spans,
:func:`tunelens.compare.concentration.to_words`) are the same unit whatever the tokenizer; tokens
are finer and are kept when every run shares one tokenizer.

A run's tokenizer is identified by the content of the ``tokenizer.json`` its model folder holds
(``train`` saves one next to every model); a run without one is identified by its base model (or
model name), so two such runs of different models are taken to differ — words are the safe
choice when in doubt. Attributions that explain both targets are measured on the reference rows.
"""

from __future__ import annotations

import pandas as pd

from tunelens.compare.concentration import to_words
from tunelens.compare.runs import RunInfo
from tunelens.fingerprint import fingerprint
from tunelens.layout import StudyLayout


def tokenizer_signature(run: RunInfo, layout: StudyLayout) -> str:
    """What identifies a run's tokenizer: its ``tokenizer.json`` content, else its base model."""
    if run.model_dir:
        path = layout.models / run.model_dir / "tokenizer.json"
        if path.exists():
            return "file:" + fingerprint([], files=[path])
    return "model:" + str((run.run_json or {}).get("base_model") or run.model)


def choose_level(runs: list[RunInfo], layout: StudyLayout, setting: str) -> str:
    """``token`` or ``word``: the configured level, or for ``auto`` words iff tokenizers differ."""
    if setting != "auto":
        return setting
    signatures = {tokenizer_signature(r, layout) for r in runs if r.attributions}
    return "word" if len(signatures) > 1 else "token"


def features(attributions: pd.DataFrame, level: str) -> pd.DataFrame:
    """One run's attribution rows (already one target, see ``runs.read_attributions``), merged
    into words if ``level`` says so."""
    return to_words(attributions) if level == "word" else attributions
