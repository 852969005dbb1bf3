"""The bundled code-compliance dataset: seeded generated clauses plus hand-written ones.

Hand-written clauses (handwritten.jsonl) paraphrase US federal regulations that are in the public
domain (2010 ADA Standards for Accessible Design, OSHA 29 CFR 1910, one row 29 CFR 1926); their
section numbers are kept as rule ids. Rows marked ``holdout`` have topics (elevators, signage,
ladders, ...) or phrasings ("the employer must ensure ...", tables, two-part conditions) that the
generator never produces: they belong in the TEST split so that generalisation beyond the
templates is measured.

Each hand-written row carries a ``checked`` record: what its section number and values were
checked against (an official text, a mirror of it, or a page quoting it) and whether they held
(``verified``), had to be fixed (``corrected``, with what changed) or could not be checked
(``unverified``, with why). The record stays in the source file and in the data card's counts
(:func:`check_summary`); the dataset rows keep the contract's fields only. docs/dataset.md
describes the check.
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from importlib import resources
from typing import Literal

from pydantic import model_validator
from pydantic_core import PydanticCustomError

from tunelens.contracts import Contract, Row, RowId, Text, read_rows
from tunelens.data.compliance.facts import TOPICS_GENERATED
from tunelens.data.compliance.generator import generate

GENERATED_ROWS = 620
ROW_KEYS = ("id", "topic", "source", "prompt", "completion", "holdout")
CHECK_STATUSES = ("verified", "corrected", "unverified")
CHECK_KINDS = ("official", "mirror", "secondary")
CHECK_DOC = "docs/dataset.md"


class Check(Contract):
    """What a hand-written row was checked against, and the outcome.

    ``kind``: ``official`` (the publisher's own text), ``mirror`` (a verbatim copy of the
    official text, e.g. an eCFR mirror) or ``secondary`` (a third-party page quoting or
    summarising it). A correction or a failed check must say what happened (``note``).
    """

    status: Literal["verified", "corrected", "unverified"]
    source: Text
    kind: Literal["official", "mirror", "secondary"]
    note: str = ""

    @model_validator(mode="after")
    def _explained(self) -> Check:
        if self.status != "verified" and not self.note.strip():
            raise PydanticCustomError("check_note", "a {status} row needs a note saying why",
                                      {"status": self.status})
        return self


class HandwrittenRow(Row):
    """A line of handwritten.jsonl (its source is implied; ``cites`` names the regulation)."""

    id: RowId
    topic: Text
    cites: Text
    prompt: Text
    completion: Text
    holdout: bool = False
    checked: Check


@lru_cache(maxsize=1)
def _handwritten_file() -> tuple[HandwrittenRow, ...]:
    with resources.as_file(resources.files("tunelens.data.compliance") / "handwritten.jsonl") as path:
        return tuple(read_rows(path, HandwrittenRow, unique_ids=True))


@lru_cache(maxsize=1)
def _handwritten() -> tuple[dict, ...]:
    return tuple({"id": r.id, "topic": r.topic, "source": "handwritten", "prompt": r.prompt,
                  "completion": r.completion, "holdout": r.holdout} for r in _handwritten_file())


def handwritten_rows() -> list[dict]:
    return [dict(r) for r in _handwritten()]


def handwritten_checks() -> list[dict]:
    """Each hand-written row's id, citation and check record (the part the dataset rows omit)."""
    return [{"id": r.id, "cites": r.cites, **r.checked.model_dump()} for r in _handwritten_file()]


def check_summary() -> dict:
    """The counts the data card states: rows per check status and per kind of source."""
    checks = handwritten_checks()
    statuses = Counter(c["status"] for c in checks)
    return {"rows": len(checks), **{s: statuses[s] for s in CHECK_STATUSES},
            "by_kind": {k: sum(c["kind"] == k for c in checks) for k in CHECK_KINDS},
            "corrected_ids": [c["id"] for c in checks if c["status"] == "corrected"],
            "unverified_ids": [c["id"] for c in checks if c["status"] == "unverified"],
            "described_in": CHECK_DOC}


def bundled_rows(seed: int = 0) -> list[dict]:
    """Hand-written rows first (fixed), then GENERATED_ROWS generated ones for ``seed``."""
    return handwritten_rows() + generate(GENERATED_ROWS, seed=seed)


TOPICS: list[str] = TOPICS_GENERATED + sorted({r["topic"] for r in _handwritten()} - set(TOPICS_GENERATED))
