"""The package's front door: config validation, atomic I/O, CLI error handling, micro model."""

from __future__ import annotations

import json

import pytest

from tunelens.cli import main
from tunelens.config import dump_study, load_study, parse_study
from tunelens.errors import TunelensError
from tunelens.io import atomic_path, read_jsonl, write_jsonl
from tunelens.layout import RunIdentity


def test_defaults_fill_every_section():
    study = parse_study({"models": [{"name": "s", "path": "x"}]})
    assert study.train.lora.rank == 8
    assert study.strategies == ["lora"]
    text = dump_study(study)
    assert "near_duplicate_threshold" in text and "bootstrap_samples" in text


def test_unknown_key_names_its_path():
    with pytest.raises(TunelensError, match=r"unknown key 'train\.lora\.rnak'"):
        parse_study({"train": {"lora": {"rnak": 4}}})


def test_bad_value_names_its_path_and_expectation():
    with pytest.raises(TunelensError, match=r"'strategies\.0'.*'full'"):
        parse_study({"strategies": ["fullest"]})
    with pytest.raises(TunelensError, match=r"'train\.learning_rate'.*greater than 0"):
        parse_study({"train": {"learning_rate": -1}})


def test_load_study_reports_malformed_yaml(tmp_path):
    p = tmp_path / "s.yaml"
    p.write_text("models: [\n  - name: a\n")
    with pytest.raises(TunelensError, match="malformed YAML"):
        load_study(p)


def test_run_name_contract():
    assert RunIdentity("s", "lora", "instruct").name == "s__lora__instruct"
    assert RunIdentity("s", "qlora", "causal", rag=True).name == "s__qlora__causal__rag"
    assert RunIdentity("s", "qlora", "causal", rag=True, seed=2).train_name == "s__qlora__causal__s2"


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.jsonl"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"a": 1}\n{"a": \n', r"f\.jsonl:2: malformed JSON line"),
        ("", r"f\.jsonl: empty file"),
        ('[1, 2]\n', r"f\.jsonl:1: expected a JSON object"),
        ('{"b": 1}\n', r"f\.jsonl:1: missing field\(s\) a"),
    ],
)
def test_read_jsonl_names_file_and_line(tmp_path, content, message):
    p = tmp_path / "f.jsonl"
    p.write_text(content)
    with pytest.raises(TunelensError, match=message):
        read_jsonl(p, required=["a"])


def test_read_jsonl_rejects_non_utf8(tmp_path):
    p = tmp_path / "f.jsonl"
    p.write_bytes('{"a": "caf\u00e9"}\n'.encode("latin-1"))
    with pytest.raises(TunelensError, match="not UTF-8"):
        read_jsonl(p)


def test_write_then_read_roundtrip(tmp_path):
    rows = [{"a": 1, "t": "é"}, {"a": 2, "t": "x"}]
    write_jsonl(tmp_path / "r.jsonl", rows)
    assert read_jsonl(tmp_path / "r.jsonl") == rows


def test_cli_user_error_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["categories", "--input", str(tmp_path / "missing.jsonl"),
                 "--out", str(tmp_path / "o.jsonl")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "no such file" in err and "\n" not in err


def test_micro_model_loads_and_runs(micro_model):
    import torch

    model, tok = micro_model
    ids = tok("The clear width of a stair", return_tensors="pt").input_ids
    assert ids[0, 0].item() == tok.bos_token_id
    with torch.no_grad():
        logits = model(ids).logits
    assert logits.shape == (1, ids.shape[1], len(tok))
    assert json.loads((tok.name_or_path and "{}") or "{}") == {}


def test_atomic_outputs_get_normal_permissions(tmp_path):
    import os
    import stat

    write_jsonl(tmp_path / "r.jsonl", [{"a": 1}])
    mode = stat.S_IMODE(os.stat(tmp_path / "r.jsonl").st_mode)
    assert mode & stat.S_IROTH, oct(mode)
