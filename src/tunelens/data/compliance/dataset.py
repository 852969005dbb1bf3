"""The bundled code-compliance dataset: seeded generated clauses plus hand-written ones.

Hand-written clauses (handwritten.jsonl) paraphrase US federal regulations that are in the public
domain (2010 ADA Standards for Accessible Design, OSHA 29 CFR 1910); their section numbers are
kept as rule ids. Rows marked ``holdout`` have topics (elevators, signage, ladders, ...) or
phrasings ("the employer must ensure ...", tables, two-part conditions) that the generator never
produces: they belong in the TEST split so that generalisation beyond the templates is measured.
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

from tunelens.contracts import Row, RowId, Text, read_rows
from tunelens.data.compliance.facts import TOPICS_GENERATED
from tunelens.data.compliance.generator import generate

GENERATED_ROWS = 620
ROW_KEYS = ("id", "topic", "source", "prompt", "completion", "holdout")


class HandwrittenRow(Row):
    """A line of handwritten.jsonl (its source is implied; ``cites`` names the regulation)."""

    id: RowId
    topic: Text
    prompt: Text
    completion: Text
    holdout: bool = False


@lru_cache(maxsize=1)
def _handwritten() -> tuple[dict, ...]:
    with resources.as_file(resources.files("tunelens.data.compliance") / "handwritten.jsonl") as path:
        rows = read_rows(path, HandwrittenRow, unique_ids=True)
    return tuple({"id": r.id, "topic": r.topic, "source": "handwritten", "prompt": r.prompt,
                  "completion": r.completion, "holdout": r.holdout} for r in rows)


def handwritten_rows() -> list[dict]:
    return [dict(r) for r in _handwritten()]


def bundled_rows(seed: int = 0) -> list[dict]:
    """Hand-written rows first (fixed), then GENERATED_ROWS generated ones for ``seed``."""
    return handwritten_rows() + generate(GENERATED_ROWS, seed=seed)


TOPICS: list[str] = TOPICS_GENERATED + sorted({r["topic"] for r in _handwritten()} - set(TOPICS_GENERATED))
