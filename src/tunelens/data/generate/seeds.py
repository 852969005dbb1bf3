"""Seeds for data generation: clause rows (JSONL/CSV/TSV) or whole documents cut into clauses.

Tables are read by the ``data prepare`` readers (:mod:`tunelens.data.tables`: file:line in every
message); text and Markdown documents are cut here, since no library knows what a building-code
clause is: each list item is a clause, each paragraph is one (a paragraph over
``MAX_CLAUSE_CHARS`` is cut at sentence ends), and the latest Markdown heading is its topic.
Text goes through the same normalisation as ``data prepare`` (:func:`normalise_text`).

A seed is ``{id, clause, rule|None, topic, source, where}``; ``rule`` comes from a
``completion``/``rule`` column when the table has one. Ids are the table's, else content hashes.
"""

from __future__ import annotations

import re
from pathlib import Path

from tunelens.data.prepare import content_id, normalise_text
from tunelens.data.tables import FORMATS, read_records
from tunelens.errors import TunelensError, check_choice
from tunelens.io import read_text

DOCUMENTS = (".txt", ".md", ".markdown")
CLAUSE_KEYS = ("prompt", "clause", "text")
RULE_KEYS = ("completion", "rule")
MAX_CLAUSE_CHARS = 600
_HEADING = re.compile(r"^\s{0,3}#{1,6}\s+(.*?)\s*#*\s*$")
_ITEM = re.compile(r"^\s*(?:[-*+]|\d+[.)])\s+")
_SENTENCE_END = re.compile(r"(?<=[.;])\s+(?=[A-Z(0-9])")


def read_seeds(path: Path) -> list[dict]:
    """Every seed of ``path``; an unknown format, an empty file or a repeated id is one line."""
    path = Path(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        raise TunelensError(f"{path}: no such file")
    check_choice(suffix, sorted((*FORMATS, *DOCUMENTS)), f"{path}: unknown seed format")
    if suffix in FORMATS:  # the tables `data prepare` reads
        seeds = _table_seeds(path)
    else:
        seeds = document_seeds(read_text(path), path)
    if not seeds:
        raise TunelensError(f"{path}: no clauses to seed from")
    first: dict[str, str] = {}
    for seed in seeds:
        if seed["id"] in first:
            raise TunelensError(f"{seed['where']}: duplicate id '{seed['id']}' "
                                f"(first at {first[seed['id']]})")
        first[seed["id"]] = seed["where"]
    return seeds


def _table_seeds(path: Path) -> list[dict]:
    records, columns = read_records(path)
    clause_key = next((k for k in CLAUSE_KEYS if k in columns), None)
    if clause_key is None:
        raise TunelensError(f"{path}: no clause column (one of {', '.join(CLAUSE_KEYS)}; "
                            f"columns: {', '.join(columns) or 'none'})")
    rule_key = next((k for k in RULE_KEYS if k in columns), None)
    seeds = []
    for where, record in records:
        clause = record.get(clause_key)
        if not isinstance(clause, str):
            raise TunelensError(f"{where}: {clause_key}: expected text, got "
                                f"{type(clause).__name__}")
        rule = record.get(rule_key) if rule_key else None
        seeds.append(_seed(clause, rule if isinstance(rule, str) else None, where,
                           record.get("id"), record.get("topic"), record.get("source")))
    return [s for s in seeds if s["clause"]]


def document_seeds(text: str, path: Path) -> list[dict]:
    """Clauses of a text or Markdown document (module docstring), each with its line."""
    seeds, topic, block, start = [], None, [], 0

    def flush() -> None:
        if block:
            for piece in _pieces(" ".join(block)):
                seeds.append(_seed(piece, None, f"{path}:{start}", None, topic, path.name))
            block.clear()

    for number, line in enumerate(normalise_text(text).splitlines(), start=1):
        heading = _HEADING.match(line)
        if heading or not line.strip() or _ITEM.match(line):
            flush()
        if heading:
            topic = heading.group(1) or topic
            continue
        if line.strip():
            if not block:
                start = number
            block.append(_ITEM.sub("", line).strip())
    flush()
    return seeds


def _pieces(paragraph: str) -> list[str]:
    if len(paragraph) <= MAX_CLAUSE_CHARS:
        return [paragraph]
    pieces, current = [], ""
    for sentence in _SENTENCE_END.split(paragraph):
        if current and len(current) + len(sentence) + 1 > MAX_CLAUSE_CHARS:
            pieces.append(current)
            current = ""
        current = f"{current} {sentence}".strip()
    return [*pieces, current] if current else pieces


def _seed(clause: str, rule: str | None, where: str, row_id, topic, source) -> dict:
    clause = normalise_text(clause)
    rule = normalise_text(rule) if rule else None
    return {"id": str(row_id) if row_id not in (None, "") else content_id(clause, rule or ""),
            "clause": clause, "rule": rule or None,
            "topic": str(topic) if topic not in (None, "") else "unspecified",
            "source": str(source) if source not in (None, "") else "seed", "where": where}
