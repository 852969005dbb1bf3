"""File contracts: strict types, one error format with file:line, one NaN policy, one line loop."""

from __future__ import annotations

import json

import pytest

from tunelens.contracts import (
    ClauseRow,
    DatasetRow,
    MetricsFile,
    PredictionRow,
    RunIdentityRecord,
    RunRecord,
    check_unique_ids,
    read_object,
    read_rows,
)
from tunelens.errors import TunelensError
from tunelens.io import iter_jsonl, read_jsonl, read_text

ROW = {"id": "r1", "topic": "stair", "source": "generated", "prompt": "A clause.",
       "completion": "RULE 1: a.b <= 1 mm"}


def write_lines(path, *lines: str):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_dataset_rows_keep_their_line_and_extra_keys(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", json.dumps(ROW), "", json.dumps(dict(ROW, id=7, note="x")))
    rows = read_rows(path, DatasetRow)
    assert [r.where for r in rows] == [f"{path}:1", f"{path}:3"]
    assert rows[1].id == "7" and rows[1].model_dump()["note"] == "x"  # an integer id is its text


@pytest.mark.parametrize(("change", "message"), [
    ({"prompt": 5}, r"d\.jsonl:2: field 'prompt': input should be a valid string, got number$"),
    ({"completion": None}, r"field 'completion': input should be a valid string, got null"),
    ({"topic": " \t"}, r"d\.jsonl:2: field 'topic': is empty$"),
    ({"id": True}, r"field 'id': must be a string or an integer, got boolean"),
    ({"prompt": 5, "topic": 1}, r"field 'topic': .*got number \(and 1 more\)"),
])
def test_dataset_row_problems_name_file_line_and_field(tmp_path, change, message):
    path = write_lines(tmp_path / "d.jsonl", json.dumps(ROW), json.dumps(dict(ROW, **change)))
    with pytest.raises(TunelensError, match=message):
        read_rows(path, DatasetRow)


def test_missing_field_and_empty_file(tmp_path):
    path = write_lines(tmp_path / "d.jsonl", json.dumps({k: v for k, v in ROW.items() if k != "source"}))
    with pytest.raises(TunelensError, match=r"d\.jsonl:1: field 'source': missing"):
        read_rows(path, DatasetRow)
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(TunelensError, match=r"e\.jsonl: empty file"):
        read_rows(tmp_path / "e.jsonl", DatasetRow)
    assert read_rows(tmp_path / "e.jsonl", DatasetRow, allow_empty=True) == []


def test_predictions_require_and_unique_ids(tmp_path):
    good = {"id": 1, "prompt": "p", "reference": None, "prediction": "", "samples": ["", "x"]}
    path = write_lines(tmp_path / "p.jsonl", json.dumps(good), json.dumps(dict(good, id="1")))
    assert read_rows(path, PredictionRow)[0].prediction == ""  # generating nothing is a prediction
    with pytest.raises(TunelensError, match=r"p\.jsonl:1: field 'reference': missing \(needed here\)"):
        read_rows(path, PredictionRow, require=("reference",))
    with pytest.raises(TunelensError, match=r"p\.jsonl:2: duplicate id '1' \(first at .*p\.jsonl:1\)"):
        read_rows(path, PredictionRow, unique_ids=True)
    write_lines(path, json.dumps(dict(good, samples=["a", 3])))
    with pytest.raises(TunelensError, match=r"p\.jsonl:1: field 'samples\.1': .*got number"):
        read_rows(path, PredictionRow)


def test_clause_rows_need_only_a_prompt(tmp_path):
    path = write_lines(tmp_path / "c.jsonl", json.dumps({"prompt": "A clause."}), json.dumps({"prompt": ""}))
    with pytest.raises(TunelensError, match=r"c\.jsonl:2: field 'prompt': is empty"):
        read_rows(path, ClauseRow)


def test_unique_ids_message_is_one_line():
    with pytest.raises(TunelensError) as info:
        check_unique_ids([("a\nb", "f:1"), ("a\nb", "f:2")])
    assert str(info.value) == "f:2: duplicate id 'a\\nb' (first at f:1)"


RUN = {"strategy": "lora", "objective": "instruct", "base_model": "m", "trainable_params": 10,
       "total_params": 100, "train_loss": [{"step": 1, "loss": 2.5}, {"step": 2, "loss": None}],
       "val_loss_before": 3.0, "val_loss_after": None, "wall_seconds": 1, "tokens_per_second": None,
       "peak_rss_mb": 512.5, "config": {"max_steps": 2}}


def test_run_record(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps(RUN))
    record = read_object(path, RunRecord)
    assert record.wall_seconds == 1.0 and record.model_dump()["config"] == {"max_steps": 2}
    for change, message in [({"trainable_params": 1000}, r"run\.json: trainable_params exceeds total_params"),
                            ({"train_loss": [{"step": "1", "loss": 1.0}]}, r"field 'train_loss\.0\.step'"),
                            ({"wall_seconds": -1}, r"field 'wall_seconds': input should be greater"),
                            ({"trainable_params": True}, r"field 'trainable_params': .*got boolean")]:
        path.write_text(json.dumps(dict(RUN, **change)))
        with pytest.raises(TunelensError, match=message):
            read_object(path, RunRecord)
    path.write_text("[1]")
    with pytest.raises(TunelensError, match=r"run\.json: expected a JSON object, got array"):
        read_object(path, RunRecord)


def test_metrics_file(tmp_path):
    path = tmp_path / "m.json"
    metrics = {"aggregate": {"bleu": 12.5, "chrf": None}, "intervals": {"bleu": [10, 15], "chrf": None},
               "per_example": [{"id": "a", "bleu": 3.0}, {"id": 2}], "info": {"examples": 2}}
    path.write_text(json.dumps(metrics))
    assert read_object(path, MetricsFile).aggregate == {"bleu": 12.5, "chrf": None}
    for change, message in [({"intervals": {"bleu": [15, 10]}}, r"'intervals\.bleu': lower bound above"),
                            ({"per_example": [{"id": "a"}, {"id": "a"}]}, r"per_example\.1: id 'a' repeats"),
                            ({"aggregate": {"bleu": "12"}}, r"'aggregate\.bleu': .*got string")]:
        path.write_text(json.dumps(dict(metrics, **change)))
        with pytest.raises(TunelensError, match=message):
            read_object(path, MetricsFile)
    path.write_text('{"aggregate": {"bleu": NaN}, "per_example": []}')
    with pytest.raises(TunelensError, match=r"m\.json:1: NaN is not JSON"):
        read_object(path, MetricsFile)


def test_run_identity_record():
    record = RunIdentityRecord.model_validate({"model": "s", "strategy": "lora", "objective": "causal"})
    assert (record.rag, record.seed) == (False, None)
    with pytest.raises(ValueError):
        RunIdentityRecord.model_validate({"model": "s", "strategy": "lora", "objective": "c", "rag": "false"})


def test_one_line_loop_counts_lines_as_editors_do(tmp_path):
    """CRLF and CR ends, a BOM and a raw U+2028 inside a string: line numbers stay right."""
    path = tmp_path / "x.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": "x\xe2\x80\xa8y"}\r\n\r\n{"a": 2}\r{"a": \r')
    assert read_text(path).startswith('{"a"')
    with pytest.raises(TunelensError, match=r"x\.jsonl:4: malformed JSON line"):
        read_jsonl(path)
    path.write_bytes(b'{"a": "x\xe2\x80\xa8y"}\r\n\r\n{"a": 2}\r')
    assert list(iter_jsonl(path)) == [(1, {"a": "x\u2028y"}), (3, {"a": 2})]
    path.write_bytes(b'{"a": 1}\r\n{"a": 2}\r\n{"b": "caf\xe9"}\n')
    with pytest.raises(TunelensError, match=r"x\.jsonl:3: not UTF-8 text"):
        read_jsonl(path)
