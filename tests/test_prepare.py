"""data prepare: loading with column mapping, cleaning, de-duplication, split, leakage check, errors."""

from __future__ import annotations

import csv
import itertools
import json
import random

import pytest

from tunelens.cli import main
from tunelens.config import DataConfig
from tunelens.data.dedup import (
    LeakageError,
    assert_no_leakage,
    find_leaks,
    jaccard,
    lsh_params,
    shingles,
)
from tunelens.data.prepare import normalise_text, prepare, split_rows

VOCAB = [f"w{i}" for i in range(400)]
TOPICS = ["stair", "ramp", "door", "corridor"]


def make_rows(n: int, seed: int = 0, topics=TOPICS) -> list[dict]:
    """Clauses of 16 random words: distinct rows share almost no 3-word shingle."""
    rng = random.Random(seed)
    return [{"id": f"r{i:03d}", "topic": topics[i % len(topics)],
             "prompt": " ".join(rng.choice(VOCAB) for _ in range(16)) + ".",
             "completion": f"RULE {i}: stair.riser_height <= {100 + i} mm"} for i in range(n)]


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def read_splits(folder):
    return {name: [json.loads(x) for x in (folder / f"{name}.jsonl").read_text().splitlines()]
            for name in ("train", "val", "test")}


def test_normalise_text():
    raw = "\ufeffＴｈｅ  width\u00a0shall\tbe ９００ ｍｍ\u200b.  \r\n\r\n\r\n\r\n  indented   line  \n"
    assert normalise_text(raw) == "The width shall be 900 mm.\n\n  indented line"
    assert normalise_text("m\u00b2 \ufb01re") == "m2 fire"
    assert normalise_text(" \t\n ") == ""


def test_drops_with_reasons_and_lines(tmp_path):
    rows = make_rows(40)
    rows[3]["prompt"] = " \u200b "
    rows[5]["completion"] = None
    rows[7]["prompt"] = "abc"
    rows[9]["completion"] = "x" * 300
    src = write_jsonl(tmp_path / "in.jsonl", rows)
    card = prepare(src, tmp_path / "out", DataConfig(min_chars=5, max_chars=200))
    dropped = {d["id"]: d for d in card["dropped"]["rows"]}
    assert {k: dropped[k]["reason"] for k in ("r003", "r005", "r007", "r009")} == {
        "r003": "empty_prompt", "r005": "empty_completion", "r007": "prompt_too_short",
        "r009": "completion_too_long"}
    assert dropped["r007"]["where"].endswith("in.jsonl:8")
    assert card["rows"]["input"] == 40 and card["rows"]["kept"] == 36
    written = [r["id"] for rows_ in read_splits(tmp_path / "out").values() for r in rows_]
    assert sorted(written) == sorted(r["id"] for r in rows if r["id"] not in dropped)


def test_exact_and_near_duplicates_are_removed(tmp_path):
    rows = make_rows(60)
    near = dict(rows[2], id="near2", prompt=rows[2]["prompt"][:-1] + " w999.")
    rows += [dict(rows[0], id="same0"), dict(rows[1], id="conflict1", completion="RULE x: a.b = 1"),
             dict(rows[4], id="case4", prompt=rows[4]["prompt"].upper()), near]
    assert jaccard(shingles(near["prompt"], 3), shingles(rows[2]["prompt"], 3)) >= 0.8
    card = prepare(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", DataConfig())
    reasons = {d["id"]: (d["reason"], d["duplicate_of"]) for d in card["dropped"]["rows"]}
    assert reasons == {"same0": ("exact_duplicate", "r000"), "conflict1": ("conflicting_duplicate", "r001"),
                       "case4": ("near_duplicate", "r004"), "near2": ("near_duplicate", "r002")}
    assert card["rows"]["kept"] == 60


def test_no_near_duplicate_crosses_splits(tmp_path):
    """Clusters of near-copies (chains, too): an exhaustive pairwise check, not the LSH one."""
    rng = random.Random(1)
    rows = make_rows(80)
    for k in range(30):  # chains: each copy changes one more word of the previous one
        base = rows[k]
        words = base["prompt"].split()
        for step in range(1, 4):
            words[-step] = rng.choice(VOCAB)
            rows.append(dict(base, id=f"c{k}-{step}", prompt=" ".join(words)))
    config = DataConfig(near_duplicate_threshold=0.7)
    prepare(write_jsonl(tmp_path / "in.jsonl", rows), tmp_path / "out", config)
    splits = read_splits(tmp_path / "out")
    assert sum(len(v) for v in splits.values()) >= 80
    for (a, rows_a), (b, rows_b) in itertools.combinations(splits.items(), 2):
        for x in rows_a:
            for y in rows_b:
                assert jaccard(shingles(x["prompt"], 3), shingles(y["prompt"], 3)) < 0.7, (a, b)


def test_leakage_check_catches_a_crafted_leak():
    rows = make_rows(30)
    leak = dict(rows[0], id="leak", prompt=rows[0]["prompt"].replace(".", " w1."))
    splits = {"train": rows[:20], "val": rows[20:25], "test": rows[25:] + [leak]}
    found = find_leaks(splits, 0.8, 3)
    assert [(f.split_a, f.id_a, f.split_b, f.id_b) for f in found] == [("train", "r000", "test", "leak")]
    with pytest.raises(LeakageError, match=r"train row 'r000' and test row 'leak'"):
        assert_no_leakage(splits, 0.8, 3)
    assert_no_leakage({"train": rows[:20] + [leak], "test": rows[20:]}, 0.8, 3)  # same split: fine


@pytest.mark.parametrize("threshold", [0.5, 0.7, 0.8, 0.9, 0.95])
def test_lsh_params_favour_recall(threshold):
    bands, rows = lsh_params(threshold, 128)
    assert bands * rows <= 128
    assert 1 - (1 - threshold**rows) ** bands >= 0.99


def test_split_is_stratified_and_seeded():
    rows = make_rows(200, topics=["a"] * 3 + ["b"])  # a: 150 rows, b: 50 rows
    config = DataConfig(val_fraction=0.1, test_fraction=0.2, seed=3)
    splits = split_rows(rows, config)
    for topic, n in (("a", 150), ("b", 50)):
        for name, frac in (("val", 0.1), ("test", 0.2)):
            got = sum(r["topic"] == topic for r in splits[name])
            assert abs(got - n * frac) <= 1, (topic, name, got)
    assert [len(splits[s]) for s in ("train", "val", "test")] == [140, 20, 40]
    again = split_rows(list(reversed(rows)), config)  # row order does not matter
    assert {r["id"] for r in again["test"]} == {r["id"] for r in splits["test"]}
    other = split_rows(rows, config.model_copy(update={"seed": 4}))
    assert {r["id"] for r in other["test"]} != {r["id"] for r in splits["test"]}
    held = [dict(r, _holdout=True) for r in rows[:5]] + rows[5:]
    held_split = split_rows(held, config)
    assert {r["id"] for r in held[:5]} <= {r["id"] for r in held_split["test"]}


def test_prepare_is_deterministic(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(50))
    prepare(src, tmp_path / "a", DataConfig(seed=7))
    prepare(src, tmp_path / "b", DataConfig(seed=7))
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "data_card.json"):
        a = (tmp_path / "a" / name).read_text().replace(str(tmp_path / "a"), "")
        assert a == (tmp_path / "b" / name).read_text().replace(str(tmp_path / "b"), "")


def test_csv_with_column_mapping_and_generated_ids(tmp_path):
    rows = make_rows(30)
    src = tmp_path / "in.csv"
    with src.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["clause", "rule", "area", "notes"])
        for i, r in enumerate(rows):
            prompt = r["prompt"] + (',\n"quoted", too' if i == 0 else "")
            writer.writerow([prompt, r["completion"], r["topic"], "x"])
    config = DataConfig(prompt_column="clause", completion_column="rule", topic_column="area")
    card = prepare(src, tmp_path / "out", config)
    assert card["ids_generated"] and card["dropped_columns"] == ["notes"]
    out = [r for rows_ in read_splits(tmp_path / "out").values() for r in rows_]
    assert len(out) == 30 and all(r["id"].startswith("r") and len(r["id"]) == 13 for r in out)
    assert set(out[0]) == {"id", "topic", "source", "prompt", "completion"}
    assert {r["topic"] for r in out} == set(TOPICS)
    assert sum(r["prompt"].endswith('.,\n"quoted", too') for r in out) == 1
    # the same content in another order gets the same ids
    src2 = tmp_path / "in2.csv"
    with src.open(newline="", encoding="utf-8") as fh:
        records = list(csv.reader(fh))
    with src2.open("w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows([records[0], *reversed(records[1:])])
    prepare(src2, tmp_path / "out2", config)
    assert sorted(r["id"] for r in out) == sorted(
        r["id"] for rows_ in read_splits(tmp_path / "out2").values() for r in rows_)


def test_parquet_and_stratify_by_another_column(tmp_path):
    import pandas as pd

    rows = make_rows(40)
    df = pd.DataFrame({"key": [r["id"] for r in rows], "text": [r["prompt"] for r in rows],
                       "target": [r["completion"] for r in rows],
                       "difficulty": ["hard" if i % 4 == 0 else "easy" for i in range(40)]})
    df.to_parquet(tmp_path / "in.parquet")
    config = DataConfig(id_column="key", prompt_column="text", completion_column="target",
                        stratify_by="difficulty", test_fraction=0.25, val_fraction=0.0)
    card = prepare(tmp_path / "in.parquet", tmp_path / "out", config)
    splits = read_splits(tmp_path / "out")
    hard = {r["id"] for r in rows[::4]}
    assert sum(r["id"] in hard for r in splits["test"]) in (2, 3)
    assert splits["val"] == [] and card["rows"]["test"] == 10
    assert {r["topic"] for r in splits["train"]} == {"unspecified"}
    assert any("topic" in note for note in card["notes"])


def test_cli_prepare_with_config_and_flags(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", [dict(r, clause=r.pop("prompt")) for r in make_rows(30)])
    study = tmp_path / "study.yaml"
    study.write_text("data:\n  prompt_column: clause\n  test_fraction: 0.3\n")
    code = main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "out"),
                 "--config", str(study), "--val-fraction", "0.2"])
    assert code == 0, capsys.readouterr().err
    card = json.loads((tmp_path / "out" / "data_card.json").read_text())
    assert (card["config"]["val_fraction"], card["config"]["test_fraction"]) == (0.2, 0.3)
    assert (card["rows"]["val"], card["rows"]["test"]) == (6, 9)
    assert "rows per topic" in capsys.readouterr().out


BAD_INPUTS = [
    ("in.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": \n', r"in\.jsonl:2: malformed JSON"),
    ("in.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "c"}\n',
     r"in\.jsonl:2: column 'completion': missing"),
    ("in.jsonl", b'{"prompt": "a", "answer": "b"}\n', r"in\.jsonl: missing column\(s\) completion"),
    ("in.jsonl", b"", r"in\.jsonl: empty file"),
    ("in.jsonl", b'{"prompt": "a", "completion": "b"}\n{"prompt": "caf\xe9", "completion": "b"}\n',
     r"in\.jsonl:2: not UTF-8"),
    ("in.jsonl", b'{"prompt": ["a"], "completion": "b"}\n',
     r"in\.jsonl:1: column 'prompt': input should be a valid string, got array"),
    # defect 8: a number is not silently made text (in the user's column's name)
    ("in.jsonl", b'{"prompt": "a", "completion": "b"}\n{"clause": 5, "prompt": 5, "completion": "b"}\n',
     r"in\.jsonl:2: column 'prompt': input should be a valid string, got number"),
    ("in.jsonl", b'{"prompt": "a", "completion": NaN}\n', r"in\.jsonl:1: NaN is not JSON"),
    ("in.jsonl", b'{"prompt": "a", "completion": "b", "x": 1e999}\n',
     r"in\.jsonl:1: number 1e999 is out of a float's range"),
    ("in.jsonl", b'{"id": 1.5, "prompt": "a", "completion": "b"}\n',
     r"in\.jsonl:1: column 'id': must be a string or an integer, got number"),
    ("in.csv", b'prompt,completion\na,b\n"caf\xe9",d\n', r"in\.csv:3: not UTF-8"),
    ("in.jsonl",
     b'{"id": 1, "prompt": "a", "completion": "b"}\n{"id": 1, "prompt": "c", "completion": "d"}\n',
     r"in\.jsonl:2: duplicate id '1' \(first at .*in\.jsonl:1\)"),
    ("in.csv", b'prompt,completion\na,b\n"c,d,e\n', r"in\.csv:3: malformed CSV"),
    ("in.csv", b"prompt,completion\na,b\nc,d,e\n", r"in\.csv:3: 3 field\(s\), the header has 2"),
    ("in.csv", b"prompt,completion\n", r"in\.csv: empty file"),
    ("in.parquet", b"not parquet at all", r"in\.parquet: not a readable Parquet file"),
    ("in.xlsx", b"whatever", r"in\.xlsx: unknown extension '\.xlsx'"),
    ("missing.jsonl", None, r"missing\.jsonl: no such file"),
]


@pytest.mark.parametrize(("name", "content", "message"), BAD_INPUTS,
                         ids=[m.split(": ", 1)[-1][:22] for _, _, m in BAD_INPUTS])
def test_cli_bad_input_one_line_exit_2_nothing_left(tmp_path, capsys, name, content, message):
    import re

    src = tmp_path / name
    if content is not None:
        src.write_bytes(content)
    before = sorted(p.name for p in tmp_path.iterdir())
    code = main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err.startswith("error:") and "\n" not in err and re.search(message, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_cli_rejects_bad_settings_and_unsafe_out(tmp_path, capsys):
    src = write_jsonl(tmp_path / "in.jsonl", make_rows(20))
    assert main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "o"),
                 "--val-fraction", "0.5", "--test-fraction", "0.5"]) == 2
    assert "below 1" in capsys.readouterr().err
    assert main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "o"),
                 "--stratify-by", "nope"]) == 2
    assert "stratify_by column 'nope' not found" in capsys.readouterr().err
    keep = tmp_path / "mine"
    keep.mkdir()
    (keep / "precious.txt").write_text("x")
    assert main(["data", "prepare", "--input", str(src), "--out", str(keep)]) == 2
    assert "refusing to replace" in capsys.readouterr().err and (keep / "precious.txt").exists()
    assert main(["data", "prepare", "--input", str(src), "--out", str(tmp_path)]) == 2
    assert src.exists()
    # a folder written by prepare is replaced on a second run
    assert main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "o")]) == 0
    assert main(["data", "prepare", "--input", str(src), "--out", str(tmp_path / "o"),
                 "--seed", "1"]) == 0
    assert json.loads((tmp_path / "o" / "data_card.json").read_text())["config"]["seed"] == 1
