"""Every reader, fed any bytes, returns valid rows or raises one TunelensError line naming the file.

Property-based (hypothesis): each reader gets raw bytes and near-valid files (well-formed rows
with odd values, then cut or corrupted) and must either return what its contract promises or
raise :class:`TunelensError` whose one-line message starts with the file's path, with a line
number inside the file where it gives one. Any other exception type is a bug. Example counts are
kept modest so the suite stays fast; ``derandomize`` keeps every run of the suite the same.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
import tempfile
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tunelens.config import DataConfig, Study, load_study
from tunelens.contracts import (
    DatasetRow,
    MetricsFile,
    PredictionRow,
    RunIdentityRecord,
    RunRecord,
    read_object,
    read_rows,
)
from tunelens.data.tables import load_table
from tunelens.errors import TunelensError
from tunelens.io import read_json, read_jsonl, write_json, write_jsonl
from tunelens.layout import RunIdentity, StudyLayout

FUZZ = settings(max_examples=120, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- strategies ---------------------------------------------------------------------------------

# Text with the characters readers trip on: line separators JSON allows raw, NUL, BOM, CR.
odd_chars = st.sampled_from(["\u2028", "\u2029", "\x85", "\x00", "\ufeff", "\r", "\t", "\x1c", "é", "\ud7ff"])
texts = st.text(st.one_of(st.characters(codec="utf-8"), odd_chars), max_size=12)
numbers = st.one_of(st.integers(), st.integers(min_value=10**300, max_value=10**310),
                    st.floats(allow_nan=True, allow_infinity=True))
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)), max_leaves=8)
FIELD_NAMES = ["id", "topic", "source", "prompt", "completion", "reference", "prediction", "samples",
               "strategy", "objective", "base_model", "trainable_params", "total_params", "train_loss",
               "val_loss_before", "val_loss_after", "wall_seconds", "tokens_per_second", "peak_rss_mb",
               "aggregate", "intervals", "per_example", "info", "model", "rag", "seed", "name"]
keys = st.one_of(st.sampled_from(FIELD_NAMES), texts)
objects = st.dictionaries(keys, json_values, max_size=8)
valid_rows = st.fixed_dictionaries({"id": st.one_of(texts, st.integers()), "topic": texts,
                                    "source": texts, "prompt": texts, "completion": texts,
                                    "reference": texts, "prediction": texts})


def _dump(obj) -> str:
    """JSON as a careless writer makes it: NaN and Infinity tokens included."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=True)


@st.composite
def corrupted(draw, data: bytes) -> bytes:
    """``data`` as it arrives after a crash or a bad editor: cut, a byte flipped, a BOM, CRLF."""
    if draw(st.booleans()):
        data = data.replace(b"\n", draw(st.sampled_from([b"\n", b"\r\n", b"\r"])))
    if draw(st.booleans()) and data:
        data = data[: draw(st.integers(0, len(data)))]
    if draw(st.booleans()) and data:
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([draw(st.integers(0, 255))]) + data[at + 1:]
    if draw(st.booleans()):
        data = b"\xef\xbb\xbf" + data
    return data


@st.composite
def jsonl_bytes(draw) -> bytes:
    rows = draw(st.lists(st.one_of(valid_rows, objects, json_values), max_size=5))
    text = "\n".join(_dump(r) for r in rows) + draw(st.sampled_from(["", "\n", "\n\n"]))
    return draw(corrupted(text.encode("utf-8", "surrogatepass")))


@st.composite
def json_bytes(draw) -> bytes:
    obj = draw(st.one_of(objects, json_values, st.fixed_dictionaries(
        {"aggregate": st.dictionaries(texts, numbers | st.none(), max_size=3),
         "intervals": st.dictionaries(texts, st.lists(numbers, max_size=3) | st.none(), max_size=2),
         "per_example": st.lists(st.fixed_dictionaries({"id": st.one_of(texts, st.integers())}),
                                 max_size=3)})))
    indent = draw(st.sampled_from([None, 2]))
    text = json.dumps(obj, ensure_ascii=False, indent=indent)
    return draw(corrupted(text.encode("utf-8", "surrogatepass")))


@st.composite
def csv_bytes(draw) -> bytes:
    header = draw(st.lists(st.one_of(st.sampled_from(["id", "prompt", "completion", "topic"]), texts),
                           min_size=1, max_size=4))
    width = st.integers(max(0, len(header) - 1), len(header) + 1)
    rows = draw(st.lists(width.flatmap(lambda n: st.lists(texts, min_size=n, max_size=n)), max_size=4))
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=draw(st.sampled_from([",", "\t"])))
    for row in [header, *rows]:
        writer.writerow(row)
    return draw(corrupted(buffer.getvalue().encode("utf-8", "surrogatepass")))


PARQUET_COLUMNS = {
    "text": st.lists(st.one_of(st.none(), texts.map(lambda t: t.encode("utf-8", "replace").decode())),
                     min_size=2, max_size=2),
    "int": st.lists(st.one_of(st.none(), st.integers(-2**63, 2**63 - 1)), min_size=2, max_size=2),
    "float": st.lists(st.floats(), min_size=2, max_size=2),
    "bool": st.lists(st.booleans(), min_size=2, max_size=2),
    "binary": st.lists(st.binary(max_size=4), min_size=2, max_size=2),
    "list": st.lists(st.lists(st.text(max_size=3), max_size=2), min_size=2, max_size=2),
}


@st.composite
def parquet_bytes(draw) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    names = draw(st.lists(st.sampled_from(["id", "prompt", "completion", "topic", "source", "x"]),
                          min_size=1, max_size=5))
    arrays = [pa.array(draw(PARQUET_COLUMNS[draw(st.sampled_from(sorted(PARQUET_COLUMNS)))]))
              for _ in names]
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_arrays(arrays, names=names), buffer)
    data = buffer.getvalue()
    if draw(st.booleans()):
        data = draw(corrupted(data))
    return data


STUDY_KEYS = ["name", "models", "strategies", "objectives", "prompts", "prompt_templates",
              "extra_cells", "data", "train", "rag", "generation", "evaluation", "explanation",
              "comparison", "report", "tracking", "tune"]
YAML_SNIPPETS = ["2024-99-99", "1" * 5000, "0x" + "f" * 5000, "!!python/object:os.system x", "*a",
                 "&a [*a]", ".nan", ".inf", "{a: 1, a: 2}", "? [1, 2]\n: x", "- !!binary AAAA", "~",
                 "!!float 'x'", "!!int 'x'", "!!timestamp 'x'", "%YAML 9.9\n---\nx", "\t- x"]


@st.composite
def yaml_bytes(draw) -> bytes:
    kind = draw(st.sampled_from(["dump", "snippet", "text"]))
    if kind == "dump":
        obj = draw(st.dictionaries(st.one_of(st.sampled_from(STUDY_KEYS), texts), json_values, max_size=4))
        text = yaml.safe_dump(obj, allow_unicode=True)
    elif kind == "snippet":
        key = draw(st.sampled_from([*STUDY_KEYS, "name"]))
        text = f"{key}: {draw(st.sampled_from(YAML_SNIPPETS))}\n"
    else:
        text = draw(texts)
    return draw(corrupted(text.encode("utf-8", "surrogatepass")))


# -- the property -------------------------------------------------------------------------------


def refuses_well(exc: TunelensError, path: Path, data: bytes) -> None:
    """One line, starting with the file's path; a line number, if any, lies inside the file."""
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    assert message.startswith(str(path)), message
    match = re.match(re.escape(str(path)) + r":(\d+):", message)
    if match:
        lines = len(data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").split(b"\n"))
        assert 1 <= int(match.group(1)) <= lines, (message, lines)


def scratch(name: str, data: bytes) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="fuzz-"))
    path = folder / name
    path.write_bytes(data)
    return path


def outcome(read, path: Path, data: bytes):
    """What ``read(path)`` returns, or None after checking the error it raised."""
    try:
        return read(path)
    except TunelensError as exc:
        refuses_well(exc, path, data)
        return None


# -- JSON and JSONL -----------------------------------------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=200), jsonl_bytes()))
@example(b'{"prompt": "a\xe2\x80\xa8b"}\n')  # U+2028 inside a string: one line, not two
@example(b'{"x": NaN}\n{"x": 1}')
@example(b'{"x": 1e999}')
@example(b"[" * 100_000)
@example(b'{"x": ' + b"9" * 5000 + b"}")
@example(b"\xef\xbb\xbf" + b'{"x": 1}')
@example(b'{"x": "\x00"}\r\n\r\n{"y": 2}\r\n')
def test_jsonl_readers(data):
    path = scratch("rows.jsonl", data)
    rows = outcome(read_jsonl, path, data)
    if rows is not None:
        assert rows and all(isinstance(r, dict) for r in rows)
        assert not any(isinstance(v, float) and not math.isfinite(v) for r in rows for v in r.values())
    for model in (DatasetRow, PredictionRow):
        typed = outcome(lambda p, m=model: read_rows(p, m, allow_empty=True), path, data)
        for row in typed or []:
            assert isinstance(row, model) and re.fullmatch(re.escape(str(path)) + r":\d+", row.where)
            assert isinstance(row.id, str) and row.id.strip()


@FUZZ
@given(st.one_of(st.binary(max_size=200), json_bytes()))
@example(b'{"a": [1, 2,\n  NaN]}')
@example(b'{"a": "NaN", "b": -Infinity}')
def test_json_and_documents(data):
    path = scratch("run.json", data)
    outcome(read_json, path, data)
    for model in (RunRecord, MetricsFile, RunIdentityRecord):
        document = outcome(lambda p, m=model: read_object(p, m), path, data)
        assert document is None or isinstance(document, model)


def test_nan_token_error_names_its_line(tmp_path):
    path = tmp_path / "m.json"
    path.write_text('{"a": 1,\n "b": "NaN",\n "c": [1,\n  -Infinity]}')
    with pytest.raises(TunelensError, match=r"m\.json:4: -Infinity is not JSON"):
        read_json(path)


@FUZZ
@given(st.lists(st.dictionaries(texts, json_values, max_size=4), min_size=1, max_size=4))
@example([{"prediction": "a\u2028b\x85c\u2029d\x1ce\x0bf", "score": float("nan")}])  # one line each
def test_jsonl_round_trip_under_the_nan_policy(rows):
    """What write_jsonl writes, read_jsonl reads back: same rows, non-finite floats as null."""
    path = Path(tempfile.mkdtemp(prefix="fuzz-")) / "rows.jsonl"
    try:
        write_jsonl(path, rows)
    except UnicodeEncodeError:  # a lone surrogate cannot be UTF-8: not a reader's concern
        return
    assert read_jsonl(path) == json.loads(json.dumps(_finite(rows)))


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_finite(v) for v in obj]
    return obj


def test_writers_never_write_nan(tmp_path):
    import numpy as np

    write_json(tmp_path / "m.json", {"a": float("nan"), "b": [np.float32("inf"), np.float64(2.5)],
                                     "c": np.array([1.0, np.nan]), "d": (1, -float("inf"))})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert read_json(tmp_path / "m.json") == {"a": None, "b": [None, 2.5], "c": [1.0, None],
                                              "d": [1, None]}


# -- tables (data prepare) ----------------------------------------------------------------------


def check_table(path: Path, data: bytes) -> None:
    result = outcome(lambda p: load_table(p, DataConfig()), path, data)
    if result is None:
        return
    rows, facts = result
    assert rows and facts["format"] in ("jsonl", "csv", "tsv", "parquet")
    for row in rows:
        assert row["_where"].startswith(str(path))
        assert row["id"] is None or (isinstance(row["id"], str) and row["id"].strip())
        assert all(isinstance(row[f], str) for f in ("topic", "source", "prompt", "completion"))


@FUZZ
@given(st.one_of(st.binary(max_size=200), csv_bytes()), st.sampled_from(["in.csv", "in.tsv"]))
@example(b"prompt,completion\na\x00b,c\n", "in.csv")
@example(b"\xef\xbb\xbfprompt,completion\na,b\n", "in.csv")
@example(b"prompt,prompt,completion\na,b,c\n", "in.csv")
@example(b'prompt,completion\n"' + b"x" * 200_000 + b'",b\n', "in.csv")
def test_csv_table_reader(data, name):
    check_table(scratch(name, data), data)


@FUZZ
@given(st.one_of(st.binary(max_size=200), jsonl_bytes()))
@example(b'{"prompt": 5, "completion": "b"}')
def test_jsonl_table_reader(data):
    check_table(scratch("in.jsonl", data), data)


@FUZZ
@given(st.one_of(st.binary(max_size=200), parquet_bytes()))
@example(b"PAR1" + b"\x00" * 20 + b"PAR1")
def test_parquet_table_reader(data):
    check_table(scratch("in.parquet", data), data)


def test_table_reader_keeps_types_and_reads_a_bom(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"prompt": ["a clause", "b"], "completion": [1, 2]}), tmp_path / "t.parquet")
    with pytest.raises(TunelensError, match=r"t\.parquet row 1: column 'completion': .*got number"):
        load_table(tmp_path / "t.parquet", DataConfig())
    (tmp_path / "t.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\n5,6\n")
    rows, _ = load_table(tmp_path / "t.csv", DataConfig())  # CSV cells are text: "5" is a clause
    assert (rows[0]["prompt"], rows[0]["completion"], rows[0]["_where"]) == ("5", "6", f"{tmp_path}/t.csv:2")
    pq.write_table(pa.Table.from_arrays([pa.array(["a"]), pa.array(["b"]), pa.array(["c"])],
                                        names=["prompt", "prompt", "completion"]), tmp_path / "d.parquet")
    with pytest.raises(TunelensError, match=r"d\.parquet: repeated column name\(s\) 'prompt'"):
        load_table(tmp_path / "d.parquet", DataConfig())


# -- study YAML and run folders (config.py, layout.py) ------------------------------------------


@FUZZ
@given(st.one_of(st.binary(max_size=200), yaml_bytes()))
@example(b"name: 2024-99-99\n")
@example(b"name: " + b"1" * 5000 + b"\n")
@example(b"\xef\xbb\xbfname: s\n")
@example(b"models:\n  - {name: a, path: x}\n  - {name: a, path: y}\n")
@example(b"train: {'a\\nb': 1}\n")
def test_study_yaml_reader(data):
    path = scratch("study.yaml", data)
    study = outcome(load_study, path, data)
    assert study is None or isinstance(study, Study)


@FUZZ
@given(st.one_of(st.binary(max_size=200), json_bytes(),
                 st.fixed_dictionaries({"model": json_values, "strategy": json_values,
                                        "objective": json_values, "rag": json_values,
                                        "seed": json_values}).map(lambda d: _dump(d).encode())))
def test_run_identity_reader(data):
    layout = StudyLayout(Path(tempfile.mkdtemp(prefix="fuzz-")))
    layout.runs.mkdir()
    path = layout.runs / "x.json"
    path.write_bytes(data)
    found = outcome(lambda _: layout.identities(), path, data)
    assert found is None or all(isinstance(run, RunIdentity) for run in found)


def test_run_identity_is_read_strictly(tmp_path):
    layout = StudyLayout(tmp_path)
    layout.runs.mkdir()
    (layout.runs / "x.json").write_text('{"model": 5, "strategy": "lora", "objective": "causal", '
                                        '"rag": "false"}')
    with pytest.raises(TunelensError, match=r"x\.json: field 'model'"):
        layout.identities()
