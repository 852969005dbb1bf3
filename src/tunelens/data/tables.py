"""Reading a user's table (JSONL, CSV, Parquet) into rows with the dataset's field names.

The readers are the standard ones (:func:`tunelens.io.iter_jsonl`, the ``csv`` module,
pyarrow) and every row is checked by one contract, :class:`tunelens.contracts.TableRow`; what
this module adds is the mapping from the user's column names to ours and error messages a user
can act on: every problem names the file and, for line-based formats, the line (a Parquet file
has rows, not lines, so its messages name the row), and the user's column, not our field.

Types are kept: every CSV cell is text, but a JSONL or Parquet number where a prompt or
completion should be is an error, not text (a prompt ``5`` is a wrong column far more often than
a clause). Ids may be integers (read as their text); a stratification column may hold any
scalar, since only equality matters there.

The stdlib ``csv`` module is used rather than pandas because it reports the physical line of
each record, and because pandas would silently turn "NA" or "null" clauses into missing values.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

from tunelens.config import DataConfig
from tunelens.contracts import TableRow, parse_row
from tunelens.errors import TunelensError, check_choice
from tunelens.io import iter_jsonl, json_kind, read_text

FORMATS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
           ".parquet": "parquet", ".pq": "parquet"}
FIELDS = ("id", "topic", "source", "prompt", "completion")

Records = list[tuple[str, dict]]


def load_table(path: Path, config: DataConfig) -> tuple[list[dict], dict]:
    """Rows ``{id|None, topic, source, prompt, completion, _where, _stratum}`` and load facts.

    ``id`` is None where the file has no id column (the caller makes content-based ids after
    cleaning); a null or missing text field is ``""`` (cleaning drops the row with its reason).
    Extra columns are not carried into the dataset: they are listed in the returned facts
    (``dropped_columns``) so the data card can say so.
    """
    path = Path(path)
    records, columns = read_records(path)
    if not records:
        raise TunelensError(f"{path}: empty file, no rows to read")
    return _map_columns(path, records, columns, config)


def read_records(path: Path) -> tuple[Records, list[str]]:
    """``([(file:line, row), ...], columns)`` of a JSONL, CSV, TSV or Parquet file, by its
    extension; an unknown extension, a missing file or a malformed row is one line."""
    path = Path(path)
    kind = FORMATS.get(check_choice(path.suffix.lower(), sorted(FORMATS), f"{path}: unknown extension"))
    if not path.exists():
        raise TunelensError(f"{path}: no such file")
    if path.is_dir():
        raise TunelensError(f"{path}: is a folder, expected a file")
    if kind == "jsonl":
        return _read_jsonl(path)
    if kind == "parquet":
        return _read_parquet(path)
    return _read_csv(path, "\t" if kind == "tsv" else ",")


def _read_jsonl(path: Path) -> tuple[Records, list[str]]:
    records = [(f"{path}:{line}", row) for line, row in iter_jsonl(path)]
    return records, list(dict.fromkeys(key for _, row in records for key in row))


def _read_csv(path: Path, delimiter: str) -> tuple[Records, list[str]]:
    text = read_text(path)
    if not text.strip():
        raise TunelensError(f"{path}: empty file, no rows to read")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    records = []
    try:
        header = next(reader)
        start = reader.line_num
        _check_header(path, header, "1")
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


def _read_parquet(path: Path) -> tuple[Records, list[str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as parquet:
            _check_header(path, parquet.schema_arrow.names, "")
            table = parquet.read()
        rows = table.to_pylist()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise TunelensError(f"{path}: not a readable Parquet file ({type(exc).__name__}: "
                            f"{_first_line(exc)})") from None
    return [(f"{path} row {i}", row) for i, row in enumerate(rows, start=1)], table.column_names


def _check_header(path: Path, columns: list[str], line: str) -> None:
    repeated = sorted({c for c in columns if columns.count(c) > 1})
    if repeated:
        where = f"{path}:{line}" if line else str(path)
        raise TunelensError(f"{where}: repeated column name(s) {_names(repeated)}")


def _names(columns: list[str]) -> str:
    return ", ".join(repr(c) for c in columns)


def _first_line(exc: Exception) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _map_columns(path: Path, records: Records, columns: list[str],
                 config: DataConfig) -> tuple[list[dict], dict]:
    mapping = {"id": config.id_column, "topic": config.topic_column, "source": "source",
               "prompt": config.prompt_column, "completion": config.completion_column}
    missing = [mapping[f] for f in ("prompt", "completion") if mapping[f] not in columns]
    if missing:
        raise TunelensError(f"{path}: missing column(s) {', '.join(missing)} "
                            f"(columns: {_names(columns) or 'none'}; set data.prompt_column / "
                            "data.completion_column to map yours)")
    has_id = config.id_column in columns
    stratum_column = _stratum_column(path, columns, config)
    rows = []
    for where, record in records:
        row = _row(record, mapping, where, has_id)
        if stratum_column is not None:
            row["_stratum"] = _stratum(record.get(stratum_column), where, stratum_column)
        rows.append(row)
    used = {*mapping.values(), stratum_column}
    facts = {
        "format": FORMATS[path.suffix.lower()],
        "columns": {"id": config.id_column if has_id else None,
                    "topic": config.topic_column if config.topic_column in columns else None,
                    "prompt": config.prompt_column, "completion": config.completion_column},
        "ids_generated": not has_id,
        "dropped_columns": [c for c in columns if c not in used],
    }
    return rows, facts


def _row(record: dict, mapping: dict[str, str], where: str, has_id: bool) -> dict:
    """One record as a pipeline row, checked by the :class:`TableRow` contract."""
    raw = {field: record[column] for field, column in mapping.items() if column in record}
    row = parse_row(raw, TableRow, where, require=("id",) if has_id else (),
                    label=lambda field: f"column {mapping.get(field.split('.')[0], field)!r}")
    return {"id": row.id, **{f: getattr(row, f) or "" for f in FIELDS[1:]}, "_where": where}


def _stratum_column(path: Path, columns: list[str], config: DataConfig) -> str | None:
    """The input column to stratify on, or None when stratifying on a dataset field (or not)."""
    by = config.stratify_by
    if by is None or by in ("topic", config.topic_column, "source"):
        return None
    if by not in columns:
        raise TunelensError(f"{path}: stratify_by column '{by}' not found "
                            f"(columns: {_names(columns)})")
    return by


def _stratum(value, where: str, column: str) -> str:
    """A stratum key: any scalar, as text (only equality matters); nothing else."""
    if value is None:
        return ""
    if isinstance(value, str | bool | int | float):
        return str(value)
    raise TunelensError(f"{where}: column {column!r} holds {json_kind(value)}, expected a scalar")
