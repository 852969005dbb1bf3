"""Is a dataset folder fit to train and evaluate on? The first problem is reported as file:line.

A folder may come from ``data build``, ``data prepare`` or a user's own hands, so nothing is
taken on trust: every row of every split must have the dataset fields as non-empty strings, ids
must be unique across splits, no near-duplicate prompt may cross splits (with the settings in
``data_card.json`` when there is one, else the defaults), and for compliance data every reference
rule must parse and run on its sample designs with the verdicts the checker expects, at least one
PASS and one FAIL (a rule that never fails cannot tell a compliant design from another).
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ValidationError

from tunelens.config import DataConfig, format_validation_error
from tunelens.contracts import DatasetRow, check_unique_ids, read_rows
from tunelens.data.dedup import find_leaks
from tunelens.data.prepare import CARD, SPLITS, Step
from tunelens.errors import TunelensError
from tunelens.io import read_json

RULE_PREFIX = "RULE"


def _read_split(path: Path) -> list[DatasetRow]:
    """The split's rows (each knows its ``file:line``); an empty val split is legitimate."""
    if not path.exists():
        raise TunelensError(f"{path}: no such file (a dataset folder holds {', '.join(SPLITS)})")
    return read_rows(path, DatasetRow, allow_empty=True)


def _settings(folder: Path) -> DataConfig:
    card = folder / CARD
    if not card.exists():
        return DataConfig()
    raw = read_json(card)
    try:
        return DataConfig.model_validate(raw.get("config", {}) if isinstance(raw, dict) else {})
    except ValidationError as exc:
        raise TunelensError(f"{card}: {format_validation_error(exc)}") from None


def looks_like_compliance(rows: list[dict]) -> bool:
    """Most completions start with the rule keyword: the folder holds compliance rules."""
    starts = [r["completion"].lstrip().startswith(RULE_PREFIX) for r in rows]
    return bool(starts) and sum(starts) * 2 >= len(starts)


def check_rule(text: str) -> int:
    """Parse ``text`` and run it on its sample designs; return how many designs were checked.

    Raises ``ValueError`` with the reason when the rule does not parse, a verdict differs from
    the one the sample expects, or the samples lack a PASS or a FAIL.
    """
    from tunelens.data.compliance.checker import check, sample_designs
    from tunelens.data.compliance.rules import RuleSyntaxError, parse_rule

    try:
        rule = parse_rule(text)
    except RuleSyntaxError as exc:
        raise ValueError(f"rule does not parse: {exc}") from None
    try:
        samples = sample_designs(rule)
        seen = set()
        for design, expected in samples:
            verdict = check(rule, design)
            if verdict != expected:
                raise ValueError(f"rule gives {_name(verdict)} on a sample design that expects "
                                 f"{_name(expected)}: {design}")
            seen.add(_name(verdict))
    except ValueError:
        raise
    except Exception as exc:  # the checker crashing on a reference rule is a data problem to report
        raise ValueError(f"rule fails to run on its sample designs ({type(exc).__name__}: {exc})") from None
    missing = {"PASS", "FAIL"} - seen
    if missing:
        raise ValueError(f"rule's sample designs give no {' and no '.join(sorted(missing))} verdict")
    return len(samples)


def _name(verdict) -> str:
    return str(getattr(verdict, "value", verdict))


def validate(input_dir: Path, compliance: bool | None = None, on_step: Step | None = None) -> dict:
    """Check a dataset folder; raise :class:`TunelensError` at the first problem, else summarise.

    ``compliance=None`` decides from the data (most completions start with ``RULE``).
    """
    folder = Path(input_dir)
    if not folder.is_dir():
        raise TunelensError(f"{folder}: no such folder")
    step = on_step or (lambda _: None)
    step("reading")
    config = _settings(folder)
    splits: dict[str, list[DatasetRow]] = {}
    for name in SPLITS:
        path = folder / f"{name}.jsonl"
        splits[name] = _read_split(path)
        if not splits[name] and name != "val":
            raise TunelensError(f"{path}: empty split, no rows")
    check_unique_ids((row.id, row.where) for rows in splits.values() for row in rows)
    step("checking leakage")
    _check_leaks(splits, config)
    all_rows = [row for rows in splits.values() for row in rows]
    if compliance is None:
        compliance = looks_like_compliance([row.model_dump() for row in all_rows])
    designs = 0
    if compliance:
        step("checking rules")
        for row in all_rows:
            try:
                designs += check_rule(row.completion)
            except ValueError as exc:
                raise TunelensError(f"{row.where}: {exc}") from None
    return {"input": str(folder), "rows": len(all_rows),
            "splits": {name: len(rows) for name, rows in splits.items()},
            "compliance": compliance, "rules_checked": len(all_rows) if compliance else 0,
            "designs_checked": designs, "leakage_pairs": 0,
            "topics": len({r.topic for r in all_rows}), "card": (folder / CARD).exists()}


def _check_leaks(splits: dict[str, list[DatasetRow]], config: DataConfig) -> None:
    """No prompt may be a near-duplicate of one in another split (with the card's settings)."""
    leaks = find_leaks({name: [r.model_dump() for r in rows] for name, rows in splits.items()},
                       config.near_duplicate_threshold, config.shingle_size,
                       config.minhash_permutations, config.seed)
    if leaks:
        leak = leaks[0]
        where = {row.id: row.where for rows in splits.values() for row in rows}
        raise TunelensError(f"{where[leak.id_b]}: prompt is a near-duplicate of {where[leak.id_a]} "
                            f"(Jaccard {leak.jaccard:.2f} >= {config.near_duplicate_threshold}); "
                            f"{len(leaks)} cross-split pair(s) in all")
