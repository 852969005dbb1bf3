"""Reading a user's table (JSONL, CSV, Parquet) into rows with the dataset's field names.

The readers are the standard ones (``json`` through :func:`tunelens.io.read_jsonl`, the
``csv`` module, pyarrow); what this module adds is the mapping from the user's column names to
ours and error messages a user can act on: every problem names the file and, for line-based
formats, the line (a Parquet file has rows, not lines, so its messages name the row).

The stdlib ``csv`` module is used rather than pandas because it reports the physical line of
each record, and because pandas would silently turn "NA" or "null" clauses into missing values.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

from tunelens.config import DataConfig
from tunelens.errors import TunelensError
from tunelens.io import read_jsonl

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet", ".pq": "parquet"}
FIELDS = ("id", "topic", "source", "prompt", "completion")


def load_table(path: Path, config: DataConfig) -> tuple[list[dict], dict]:
    """Rows ``{id|None, topic, source, prompt, completion, _where, _stratum}`` and load facts.

    ``id`` is None where the file has no id column (the caller makes content-based ids after
    cleaning). Extra columns are not carried into the dataset: they are listed in the returned
    facts (``dropped_columns``) so the data card can say so.
    """
    path = Path(path)
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise TunelensError(f"{path}: unknown extension '{path.suffix}' (expected one of "
                            f"{', '.join(sorted(FORMATS))})")
    if not path.exists():
        raise TunelensError(f"{path}: no such file")
    if path.is_dir():
        raise TunelensError(f"{path}: is a folder, expected a file")
    if kind == "jsonl":
        records, columns = _read_jsonl(path)
    elif kind == "parquet":
        records, columns = _read_parquet(path)
    else:
        records, columns = _read_csv(path, "\t" if kind == "tsv" else ",")
    if not records:
        raise TunelensError(f"{path}: empty file, no rows to read")
    return _map_columns(path, records, columns, config)


def _decode(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise TunelensError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                            "save the file as UTF-8") from None


def _read_jsonl(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    text = _decode(path)  # first, so an encoding error names its line
    rows = read_jsonl(path)
    linenos = [i for i, line in enumerate(text.splitlines(), start=1) if line.strip()]
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    return [(f"{path}:{n}", row) for n, row in zip(linenos, rows, strict=True)], list(columns)


def _read_csv(path: Path, delimiter: str) -> tuple[list[tuple[str, dict]], list[str]]:
    text = _decode(path)
    if not text.strip():
        raise TunelensError(f"{path}: empty file, no rows to read")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records = []
    try:
        header = next(reader)
        start = reader.line_num
        if len(set(header)) != len(header):
            raise TunelensError(f"{path}:1: repeated column name in header {header}")
        for fields in reader:
            where = f"{path}:{start + 1}"
            start = reader.line_num
            if not any(f.strip() for f in fields):
                continue
            if len(fields) != len(header):
                raise TunelensError(f"{where}: {len(fields)} field(s), the header has {len(header)}")
            records.append((where, dict(zip(header, fields, strict=True))))
    except csv.Error as exc:
        raise TunelensError(f"{path}:{reader.line_num}: malformed CSV ({exc})") from None
    return records, header


def _read_parquet(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise TunelensError(f"{path}: not a readable Parquet file ({exc})") from None
    rows = table.to_pylist()
    return [(f"{path} row {i}", row) for i, row in enumerate(rows, start=1)], table.column_names


def _map_columns(path: Path, records: list[tuple[str, dict]], columns: list[str],
                 config: DataConfig) -> tuple[list[dict], dict]:
    required = [config.prompt_column, config.completion_column]
    missing = [c for c in required if c not in columns]
    if missing:
        raise TunelensError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(columns: {', '.join(columns) or 'none'}; set data.prompt_column / "
                            "data.completion_column to map yours)")
    has_id = config.id_column in columns
    has_topic = config.topic_column in columns
    stratum_column = _stratum_column(path, columns, config)
    used = {config.prompt_column, config.completion_column, config.id_column, config.topic_column,
            "source"}
    rows = []
    for where, record in records:
        for column in required:
            if column not in record:
                raise TunelensError(f"{where}: missing column {column}")
        row = {
            "id": _identifier(record, config.id_column, where) if has_id else None,
            "topic": _text(record.get(config.topic_column), where, config.topic_column),
            "source": _text(record.get("source"), where, "source"),
            "prompt": _text(record[config.prompt_column], where, config.prompt_column),
            "completion": _text(record[config.completion_column], where, config.completion_column),
            "_where": where,
        }
        if stratum_column is not None:
            row["_stratum"] = _text(record.get(stratum_column), where, stratum_column)
        rows.append(row)
    facts = {
        "format": FORMATS[path.suffix.lower()],
        "columns": {"id": config.id_column if has_id else None, "topic": config.topic_column
                    if has_topic else None, "prompt": config.prompt_column,
                    "completion": config.completion_column},
        "ids_generated": not has_id,
        "dropped_columns": [c for c in columns if c not in used and c != stratum_column],
    }
    return rows, facts


def _stratum_column(path: Path, columns: list[str], config: DataConfig) -> str | None:
    """The input column to stratify on, or None when stratifying on a dataset field (or not)."""
    by = config.stratify_by
    if by is None or by in ("topic", config.topic_column, "source"):
        return None
    if by not in columns:
        raise TunelensError(f"{path}: stratify_by column '{by}' not found "
                            f"(columns: {', '.join(columns)})")
    return by


def _text(value, where: str, column: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return str(value)
    raise TunelensError(f"{where}: column '{column}' holds a {type(value).__name__}, expected text")


def _identifier(record: dict, column: str, where: str) -> str:
    value = _text(record.get(column), where, column).strip()
    if not value:
        raise TunelensError(f"{where}: empty or missing id in column '{column}'")
    return value
