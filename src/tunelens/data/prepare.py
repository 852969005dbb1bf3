"""From a table of clauses to train/val/test files: clean, de-duplicate, split, check, describe.

One pipeline serves a user's own file (:func:`prepare`) and the bundled dataset
(:func:`tunelens.data.build.build_bundled`), so both are cleaned, de-duplicated and split the
same way. The steps, in order:

1. Normalise text: Unicode NFKC (full-width digits, ligatures, non-breaking spaces, "m²" ->
   "m2"), invisible format/control characters removed, runs of spaces collapsed (leading
   indentation kept), trailing spaces and extra blank lines dropped.
2. Drop rows that are empty, shorter than ``min_chars`` or longer than ``max_chars`` (checked on
   prompt and completion separately), each with its reason in the data card.
3. Drop exact duplicates (same prompt: ``exact_duplicate`` with the same completion,
   ``conflicting_duplicate`` with another), then near-duplicates of the prompt
   (:mod:`tunelens.data.dedup`). Earlier rows win; bundled hold-out rows come first.
4. Split with a seed, stratified by ``stratify_by``: within each stratum the rows are shuffled
   and dealt to train/val/test so every prefix stays closest to the fractions, which keeps both
   each stratum and the totals within one row of the target. Hold-out rows go to test on top.
   Since near-duplicates were removed, none can cross splits; :func:`~tunelens.data.dedup.
   assert_no_leakage` checks that on the result anyway and fails loudly if it ever finds one.
5. Write ``{train,val,test}.jsonl`` and ``data_card.json`` into a temporary folder that replaces
   ``out`` only at the end.

Rows carry exactly the dataset fields (id, topic, source, prompt, completion; TRL's
prompt/completion convention). Extra input columns are not carried: downstream stages read only
these fields and a free-form column could collide with the ones they add (``reference``,
``prediction``); the card lists the columns left out.
"""

from __future__ import annotations

import hashlib
import random
import re
import statistics
import unicodedata
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tunelens.config import DataConfig
from tunelens.contracts import DatasetRow, check_unique_ids
from tunelens.data.dedup import assert_no_leakage, deduplicate
from tunelens.data.tables import FIELDS, load_table
from tunelens.errors import TunelensError
from tunelens.io import atomic_dir, write_json, write_jsonl

SPLITS = ("train", "val", "test")
CARD = "data_card.json"
DEFAULT_TOPIC = "unspecified"
DEFAULT_SOURCE = "handwritten"
_SPACES = re.compile(r"(?<=\S)[ \t]+")
_BLANK_RUNS = re.compile(r"\n{3,}")

Step = Callable[[str], None]


def normalise_text(text: str) -> str:
    """NFKC, no invisible characters, single spaces, no trailing spaces or extra blank lines."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n")
    text = "".join(ch for ch in text if ch in "\n\t" or unicodedata.category(ch) not in ("Cc", "Cf"))
    lines = [_SPACES.sub(" ", line).rstrip() for line in text.split("\n")]
    return _BLANK_RUNS.sub("\n\n", "\n".join(lines)).strip("\n").strip()


def content_id(prompt: str, completion: str) -> str:
    """A stable id from the row's content: the same clause gets the same id in every run."""
    return "r" + hashlib.sha1(f"{prompt}\x1f{completion}".encode()).hexdigest()[:12]


def _assign_ids(rows: list[dict]) -> None:
    """Refuse repeated ids; give id-less rows a content id no other row has."""
    check_unique_ids((row["id"], row["_where"]) for row in rows if row["id"] is not None)
    taken = {row["id"] for row in rows if row["id"] is not None}
    for row in rows:
        if row["id"] is None:
            base = content_id(row["prompt"], row["completion"])
            row["id"], k = base, 1
            while row["id"] in taken:
                k += 1
                row["id"] = f"{base}-{k}"
            taken.add(row["id"])


def _drop_reason(row: dict, config: DataConfig) -> str | None:
    for field in ("prompt", "completion"):
        n = len(row[field])
        if n == 0:
            return f"empty_{field}"
        if n < config.min_chars:
            return f"{field}_too_short"
        if n > config.max_chars:
            return f"{field}_too_long"
    return None


def clean_rows(rows: list[dict], config: DataConfig) -> tuple[list[dict], list[dict]]:
    """Normalise every text field, give id-less rows content ids, drop unusable rows.

    Returns ``(kept, dropped)``; each dropped entry is ``{id, where, reason}``.
    """
    for row in rows:
        for field in ("topic", "source", "prompt", "completion"):
            row[field] = normalise_text(row[field])
        row["topic"] = row["topic"] or DEFAULT_TOPIC
        row["source"] = row["source"] or DEFAULT_SOURCE
    _assign_ids(rows)
    kept, dropped = [], []
    for row in rows:
        reason = _drop_reason(row, config)
        if reason is None:
            kept.append(row)
        else:
            dropped.append({"id": row["id"], "where": row["_where"], "reason": reason})
    return kept, dropped


def remove_duplicates(rows: list[dict], config: DataConfig) -> tuple[list[dict], list[dict]]:
    """Drop exact then near duplicates of the prompt; hold-out rows win over the others."""
    ordered = sorted(rows, key=lambda r: not r.get("_holdout", False))  # stable: input order
    by_prompt: dict[str, dict] = {}
    unique, dropped = [], []
    for row in ordered:
        first = by_prompt.setdefault(row["prompt"], row)
        if first is row:
            unique.append(row)
            continue
        same = first["completion"] == row["completion"]
        dropped.append({"id": row["id"], "where": row["_where"], "duplicate_of": first["id"],
                        "reason": "exact_duplicate" if same else "conflicting_duplicate"})
    near = deduplicate([r["prompt"] for r in unique], config.near_duplicate_threshold,
                       config.shingle_size, config.minhash_permutations, config.seed)
    for j, (i, score) in sorted(near.items()):
        dropped.append({"id": unique[j]["id"], "where": unique[j]["_where"], "reason": "near_duplicate",
                        "duplicate_of": unique[i]["id"], "jaccard": round(score, 4)})
    gone = {unique[j]["id"] for j in near}
    kept_ids = {r["id"] for r in unique if r["id"] not in gone}
    return [r for r in rows if r["id"] in kept_ids], dropped


def _stratum(row: dict, config: DataConfig) -> str:
    if config.stratify_by is None:
        return ""
    if "_stratum" in row:
        return row["_stratum"]
    return row["source"] if config.stratify_by == "source" else row["topic"]


def split_rows(rows: list[dict], config: DataConfig) -> dict[str, list[dict]]:
    """Seeded, stratified train/val/test split; rows marked ``_holdout`` all go to test.

    Within a stratum, rows are sorted by id then shuffled with a seed derived from (seed,
    stratum), so the split does not depend on the file's row order or on other strata. Rows are
    then dealt, stratum after stratum, to the split furthest below its share so far.
    """
    fractions = {"train": 1.0 - config.val_fraction - config.test_fraction,
                 "val": config.val_fraction, "test": config.test_fraction}
    strata: dict[str, list[dict]] = {}
    for row in rows:
        if not row.get("_holdout", False):
            strata.setdefault(_stratum(row, config), []).append(row)
    counts = dict.fromkeys(SPLITS, 0)
    assigned: dict[str, str] = {}
    for key in sorted(strata):
        members = sorted(strata[key], key=lambda r: r["id"])
        random.Random(f"{config.seed}:{key}").shuffle(members)
        for row in members:
            k = sum(counts.values()) + 1
            name = max(SPLITS, key=lambda s: (fractions[s] * k - counts[s], -SPLITS.index(s)))
            counts[name] += 1
            assigned[row["id"]] = name
    splits: dict[str, list[dict]] = {name: [] for name in SPLITS}
    for row in rows:
        splits[assigned.get(row["id"], "test")].append(row)
    return splits


def _lengths(values: list[int]) -> dict:
    if not values:
        return {"min": 0, "max": 0, "mean": 0.0, "median": 0.0}
    return {"min": min(values), "max": max(values), "mean": round(statistics.fmean(values), 1),
            "median": float(statistics.median(values))}


def _split_summary(rows: list[dict]) -> dict:
    summary = {"rows": len(rows), "topics": dict(sorted(Counter(r["topic"] for r in rows).items())),
               "sources": dict(sorted(Counter(r["source"] for r in rows).items())), "length": {}}
    for field in ("prompt", "completion"):
        summary["length"][f"{field}_chars"] = _lengths([len(r[field]) for r in rows])
        summary["length"][f"{field}_words"] = _lengths([len(r[field].split()) for r in rows])
    return summary


def data_card(splits: dict[str, list[dict]], dropped: list[dict], facts: dict, config: DataConfig,
              n_input: int) -> dict:
    """What the folder holds and how it was made: counts, lengths, drops with reasons, settings."""
    topics = sorted({r["topic"] for rows in splits.values() for r in rows})
    holdout = [r["id"] for r in splits["test"] if r.get("_holdout", False)]
    return {
        "source": facts.get("source"),
        "format": facts.get("format"),
        "columns": facts.get("columns"),
        "ids_generated": facts.get("ids_generated", False),
        "dropped_columns": facts.get("dropped_columns", []),
        "config": config.model_dump(mode="json"),
        "rows": {"input": n_input, "dropped": len(dropped),
                 "kept": sum(len(rows) for rows in splits.values()),
                 **{name: len(rows) for name, rows in splits.items()}},
        "splits": {name: _split_summary(rows) for name, rows in splits.items()},
        "topics": {t: {name: sum(r["topic"] == t for r in rows) for name, rows in splits.items()}
                   for t in topics},
        "dropped": {"by_reason": dict(sorted(Counter(d["reason"] for d in dropped).items())),
                    "rows": dropped},
        "holdout": {"forced_to_test": len(holdout), "ids": holdout},
        "leakage": {"checked": True, "cross_split_pairs": 0, "field": "prompt",
                    "threshold": config.near_duplicate_threshold, "shingle_size": config.shingle_size},
    }


def run_pipeline(rows: list[dict], config: DataConfig, facts: dict,
                 on_step: Step | None = None) -> tuple[dict[str, list[dict]], dict]:
    """Clean, de-duplicate, split and check ``rows`` (as :func:`tunelens.data.tables.load_table`
    returns them, optionally with ``_holdout``); return the splits and the data card."""
    step = on_step or (lambda _: None)
    source = facts.get("source", "input")
    n_input = len(rows)
    step("cleaning")
    kept, dropped = clean_rows(rows, config)
    step("de-duplicating")
    kept, dup_dropped = remove_duplicates(kept, config)
    dropped += dup_dropped
    if not kept:
        reasons = ", ".join(f"{n} {r}" for r, n in Counter(d["reason"] for d in dropped).items())
        raise TunelensError(f"{source}: no rows left after cleaning ({reasons})")
    step("splitting")
    splits = split_rows(kept, config)
    for name in ("train", "test"):
        if not splits[name]:
            raise TunelensError(f"{source}: too few rows to split ({len(kept)} kept after cleaning; "
                                f"the {name} split would be empty)")
    step("checking leakage")
    assert_no_leakage(splits, config.near_duplicate_threshold, config.shingle_size,
                      config.minhash_permutations, config.seed)
    return splits, data_card(splits, dropped, facts, config, n_input)


def check_out(out: Path, inputs: tuple[Path, ...] = ()) -> None:
    """Refuse to replace a folder that is not a dataset folder, or one holding an input."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise TunelensError(f"{out}: exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not (out / CARD).exists():
        raise TunelensError(f"{out}: folder is not empty and holds no {CARD}; refusing to replace it")
    for path in inputs:
        if Path(path).resolve().is_relative_to(out.resolve()):
            raise TunelensError(f"{path}: the input lies inside the output folder {out}")


def write_dataset(out: Path, splits: dict[str, list[dict]], card: dict) -> None:
    """Write the splits and the card; ``out`` is replaced only once everything is written.

    Each row is checked against :class:`~tunelens.contracts.DatasetRow` first: what this stage
    writes is what every reader of a dataset folder accepts (a failure here is a bug).
    """
    with atomic_dir(out) as tmp:
        for name in SPLITS:
            rows = (DatasetRow.model_validate({f: r[f] for f in FIELDS}) for r in splits[name])
            write_jsonl(tmp / f"{name}.jsonl", (row.model_dump() for row in rows))
        write_json(tmp / CARD, card)


def prepare(input: Path, out: Path, config: DataConfig, on_step: Step | None = None) -> dict:
    """Turn a user's JSONL/CSV/Parquet file into a split dataset folder; return the data card."""
    input, out = Path(input), Path(out)
    check_out(out, (input,))
    if on_step:
        on_step("reading")
    rows, facts = load_table(input, config)
    facts["source"] = str(input)
    splits, card = run_pipeline(rows, config, facts, on_step)
    notes = []
    if facts["ids_generated"]:
        notes.append(f"no '{config.id_column}' column: ids are hashes of the cleaned content")
    if facts["columns"]["topic"] is None:
        notes.append(f"no '{config.topic_column}' column: every row has topic '{DEFAULT_TOPIC}'")
    if facts["dropped_columns"]:
        notes.append(f"columns not carried into the dataset: {', '.join(facts['dropped_columns'])}")
    card["notes"] = notes
    if on_step:
        on_step("writing")
    write_dataset(out, splits, card)
    return card
