"""data build (the bundled set through the shared pipeline) and data validate (file:line errors)."""

from __future__ import annotations

import json

import pytest

from tunelens.cli import main
from tunelens.config import DataConfig
from tunelens.data.prepare import prepare
from tunelens.data.validate import looks_like_compliance, validate
from tunelens.errors import TunelensError

UNITS = ["mm", "in", "m"]


def rule_rows(n: int) -> list[dict]:
    import random

    rng = random.Random(0)
    words = [f"w{i}" for i in range(300)]
    return [{"id": f"r{i:03d}", "topic": ["stair", "ramp"][i % 2],
             "prompt": " ".join(rng.choice(words) for _ in range(14)) + ".",
             "completion": f"RULE {i}.1: stair.riser_height <= {100 + i} {UNITS[i % 3]}"}
            for i in range(n)]


@pytest.fixture()
def prepared(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rule_rows(40)))
    prepare(src, tmp_path / "data", DataConfig())
    return tmp_path / "data"


def rewrite(path, line: int, **changes):
    lines = path.read_text().splitlines()
    row = json.loads(lines[line - 1])
    row.update(changes)
    lines[line - 1] = json.dumps(row)
    path.write_text("\n".join(lines) + "\n")


def test_validate_passes_and_checks_rules(prepared):
    summary = validate(prepared)
    assert summary["compliance"] is True and summary["rows"] == 40
    assert summary["rules_checked"] == 40 and summary["designs_checked"] >= 80
    assert validate(prepared, compliance=False)["designs_checked"] == 0


def test_validate_names_file_and_line_of_a_broken_rule(prepared):
    rewrite(prepared / "test.jsonl", 2, completion="RULE 9.9 stair.riser_height <= 10 mm")
    with pytest.raises(TunelensError, match=r"test\.jsonl:2: rule does not parse"):
        validate(prepared)
    assert validate(prepared, compliance=False)["compliance"] is False


@pytest.mark.parametrize(
    ("split", "line", "changes", "message"),
    [
        ("val", 2, {"prompt": "  "}, r"val\.jsonl:2: field 'prompt': is empty"),
        ("train", 3, {"topic": 7}, r"train\.jsonl:3: field 'topic': .*valid string, got number"),
        ("test", 1, {"source": None}, r"test\.jsonl:1: field 'source': .*valid string, got null"),
        ("test", 2, {"prompt": 5}, r"test\.jsonl:2: field 'prompt': .*valid string, got number"),
        ("train", 1, {"completion": ["RULE"]}, r"train\.jsonl:1: field 'completion': .*got array"),
        ("val", 1, {"id": 2.0}, r"val\.jsonl:1: field 'id': must be a string or an integer"),
    ],
)
def test_validate_names_file_and_line_of_a_broken_row(prepared, split, line, changes, message):
    rewrite(prepared / f"{split}.jsonl", line, **changes)
    with pytest.raises(TunelensError, match=message):
        validate(prepared)


def test_validate_finds_repeated_ids_and_leaks(prepared):
    train = [json.loads(x) for x in (prepared / "train.jsonl").read_text().splitlines()]
    rewrite(prepared / "test.jsonl", 1, id=train[2]["id"])
    first = train[2]["id"]
    repeat = rf"test\.jsonl:1: duplicate id '{first}' \(first at .*train\.jsonl:3\)"
    with pytest.raises(TunelensError, match=repeat):
        validate(prepared)
    rewrite(prepared / "test.jsonl", 1, id="fresh", prompt=train[4]["prompt"] + " w1")
    with pytest.raises(TunelensError, match=r"test\.jsonl:1: prompt is a near-duplicate of .*train\.jsonl:5"):
        validate(prepared)


def test_validate_missing_split_and_folder(prepared, tmp_path):
    (prepared / "val.jsonl").write_text("")  # an empty val split is allowed
    assert validate(prepared)["splits"]["val"] == 0
    (prepared / "test.jsonl").unlink()
    with pytest.raises(TunelensError, match=r"test\.jsonl: no such file"):
        validate(prepared)
    with pytest.raises(TunelensError, match="no such folder"):
        validate(tmp_path / "nope")


def test_compliance_detection():
    rows = [{"completion": "RULE 1: a.b <= 1 mm"}, {"completion": "free text"}]
    assert looks_like_compliance(rows) and not looks_like_compliance(rows[1:])


def test_cli_validate(prepared, capsys):
    assert main(["data", "validate", "--input", str(prepared)]) == 0
    assert "40 rules parsed and run" in " ".join(capsys.readouterr().out.split())
    rewrite(prepared / "train.jsonl", 4, completion="RULE 1: stair.riser_height <=")
    assert main(["data", "validate", "--input", str(prepared)]) == 2
    err = capsys.readouterr().err.strip()
    assert "train.jsonl:4: rule does not parse" in err and "\n" not in err
    assert main(["data", "validate", "--input", str(prepared), "--no-compliance"]) == 0


# --- the bundled dataset ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from tunelens.data.build import build_bundled

    out = tmp_path_factory.mktemp("bundled") / "data"
    return out, build_bundled(out, DataConfig())


def test_build_writes_600_plus_rows_with_holdout_in_test(built):
    from tunelens.data.compliance.dataset import bundled_rows

    out, card = built
    splits = {n: [json.loads(x) for x in (out / f"{n}.jsonl").read_text().splitlines()]
              for n in ("train", "val", "test")}
    assert sum(len(v) for v in splits.values()) == card["rows"]["kept"] >= 600
    holdout = {r["id"] for r in bundled_rows(seed=0) if r["holdout"]}
    assert holdout and holdout <= {r["id"] for r in splits["test"]}
    assert set(card["holdout"]["ids"]) == holdout
    assert all(set(r) == {"id", "topic", "source", "prompt", "completion"}
               for rows in splits.values() for r in rows)
    assert {r["source"] for r in splits["train"]} <= {"generated", "handwritten"}
    assert len(card["topics"]) >= 5


def test_validate_passes_on_build_output(built):
    out, card = built
    summary = validate(out)
    assert summary["compliance"] is True and summary["rows"] == card["rows"]["kept"]


def test_cli_build_is_deterministic(built, tmp_path, capsys):
    out, _ = built
    assert main(["data", "build", "--out", str(tmp_path / "again")]) == 0
    assert "rows per topic" in " ".join(capsys.readouterr().out.split())
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes()
