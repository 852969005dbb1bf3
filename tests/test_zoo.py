"""The model ladder: what it is trained on, what it saves, and how builds are cached and replaced."""

from __future__ import annotations

import json
import os
import random
import stat

import pytest

from tunelens.cli import main
from tunelens.errors import TunelensError
from tunelens.models import zoo
from tunelens.models.zoo import LADDER_FILE, Preset, Rung, build_zoo, pretraining_texts, read_ladder


def standin_rows(n: int = 120, seed: int = 0) -> list[dict]:
    """Clause/rule rows shaped like the bundled dataset's, every tenth one held out."""
    rng = random.Random(seed)
    things = ["stair", "ramp", "door", "corridor", "handrail", "guard", "landing"]
    props = ["width", "height", "slope", "length", "depth"]
    rows = []
    for i in range(n):
        thing, prop, value = rng.choice(things), rng.choice(props), rng.randint(10, 2000)
        rows.append({
            "id": f"r{i}", "topic": thing, "source": "generated",
            "prompt": f"The {prop} of a {thing} serving {rng.randint(1, 300)} occupants shall be "
                      f"not less than {value} mm unless the building is sprinklered. ({i})",
            "completion": f"RULE {rng.randint(100, 999)}.{i} {thing}.{prop} >= {value} mm",
            "holdout": i % 10 == 0,
        })
    return rows


TINY = Preset(name="tiny", vocab_size=300, block_size=32, batch_size=4, steps=6, max_positions=64,
              seed=0, rungs=(Rung("t1", 8, 1, 2, 16, 3e-3), Rung("t2", 16, 1, 2, 32, 3e-3)))


@pytest.fixture()
def tiny_preset(monkeypatch):
    monkeypatch.setitem(zoo.PRESETS, "tiny", TINY)
    return "tiny"


# --- what the ladder is trained on ---------------------------------------------------------------

def test_pretraining_texts_drop_holdout_rows_and_split_pairs():
    rows = standin_rows()
    clauses, rules = pretraining_texts(rows)
    held = [r for r in rows if r["holdout"]]
    kept = [r for r in rows if not r["holdout"]]
    assert sorted(clauses) == sorted(r["prompt"] for r in kept)
    assert sorted(rules) == sorted(r["completion"] for r in kept)
    seen = set(clauses) | set(rules)
    assert not any(r["prompt"] in seen or r["completion"] in seen for r in held)
    # no document holds a clause together with its rule
    assert not any(r["completion"] in c for c in clauses for r in kept)


def test_pretraining_texts_are_unique_and_seeded():
    rows = standin_rows()
    doubled = rows + [dict(r, id=r["id"] + "b") for r in rows]
    assert pretraining_texts(doubled) == pretraining_texts(rows)
    assert pretraining_texts(rows, seed=1) != pretraining_texts(rows, seed=0)


def test_pretraining_texts_refuse_an_all_holdout_corpus():
    with pytest.raises(TunelensError, match="no non-holdout"):
        pretraining_texts([dict(r, holdout=True) for r in standin_rows(10)])


def test_unknown_preset_is_one_line(tmp_path):
    with pytest.raises(TunelensError, match=r"unknown preset 'huge': expected one of quick, demo"):
        build_zoo("huge", tmp_path / "zoo")
    assert main(["zoo", "build", "--preset", "huge", "--out", str(tmp_path / "z")]) == 2
    assert not (tmp_path / "z").exists()


# --- the quick ladder ----------------------------------------------------------------------------

def test_quick_ladder_spans_thirty_fold_and_loads_unchanged(quick_zoo_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entries = read_ladder(quick_zoo_dir)
    assert len(entries) >= 4
    params = [e["params"] for e in entries]
    assert params == sorted(params) and params[-1] / params[0] >= 30
    for entry in entries:
        model = AutoModelForCausalLM.from_pretrained(entry["path"])
        tok = AutoTokenizer.from_pretrained(entry["path"])
        assert sum(p.numel() for p in model.parameters()) == entry["params"]
        assert model.config.max_position_embeddings >= 256
        assert entry["tokens_seen"] > 0 and entry["final_loss"] > 0 and entry["seconds"] > 0
        ids = tok("The clear width of a stair shall be", return_tensors="pt")
        assert ids["input_ids"][0, 0].item() == tok.bos_token_id
        with torch.no_grad():
            loss = model(**ids, labels=ids["input_ids"]).loss.item()
        assert loss < 20
    assert entries[-1]["final_loss"] < entries[0]["final_loss"]  # the bigger model learned more
    # pre-training lowered the loss well below uniform guessing over the vocabulary
    vocab = json.loads((quick_zoo_dir / entries[0]["name"] / "config.json").read_text())["vocab_size"]
    assert entries[-1]["final_loss"] < 0.75 * float(torch.log(torch.tensor(float(vocab))))


def test_quick_ladder_card_and_ladder_file(quick_zoo_dir):
    ladder = json.loads((quick_zoo_dir / LADDER_FILE).read_text())
    assert ladder["preset"] == "quick"
    assert ladder["corpus"]["clauses"] > 0 and ladder["corpus"]["rules"] > 0
    for entry in ladder["models"]:
        assert not entry["path"].startswith("/")  # relative, so the folder can be moved
        card = (quick_zoo_dir / entry["path"] / "README.md").read_text()
        assert f"{entry['params']:,}" in card
        assert f"{entry['tokens_seen']:,}" in card
        assert str(entry["final_loss"]) in card
        umask = os.umask(0)
        os.umask(umask)
        weights = quick_zoo_dir / entry["path"] / "model.safetensors"
        assert stat.S_IMODE(weights.stat().st_mode) == 0o666 & ~umask  # not transformers' 0600


def test_cli_reuses_an_identical_build(quick_zoo_dir, capsys):
    before = (quick_zoo_dir / LADDER_FILE).stat().st_mtime_ns
    assert main(["zoo", "build", "--preset", "quick", "--out", str(quick_zoo_dir)]) == 0
    captured = capsys.readouterr()
    assert "reused" in captured.err
    assert "tl-q4" in captured.out and "final loss" in captured.out
    assert (quick_zoo_dir / LADDER_FILE).stat().st_mtime_ns == before


# --- determinism, caching, atomicity (a two-model tiny preset on stand-in rows) -----------------

def test_build_is_deterministic(tmp_path, tiny_preset):
    from safetensors.torch import load_file

    rows = standin_rows()
    first = build_zoo(tiny_preset, tmp_path / "a", rows=rows)
    second = build_zoo(tiny_preset, tmp_path / "b", rows=rows)
    assert [e["final_loss"] for e in first] == [e["final_loss"] for e in second]
    for a, b in zip(first, second, strict=True):
        wa = load_file(f"{a['path']}/model.safetensors")
        wb = load_file(f"{b['path']}/model.safetensors")
        assert wa.keys() == wb.keys()
        assert all((wa[k] == wb[k]).all() for k in wa)
    assert (tmp_path / "a" / "t1" / "tokenizer.json").read_text() == \
        (tmp_path / "b" / "t1" / "tokenizer.json").read_text()


def test_reuse_rebuild_and_force(tmp_path, tiny_preset, monkeypatch, capsys):
    rows = standin_rows()
    out = tmp_path / "zoo"
    build_zoo(tiny_preset, out, rows=rows)
    key = json.loads((out / LADDER_FILE).read_text())["build_key"]
    capsys.readouterr()

    build_zoo(tiny_preset, out, rows=rows)
    assert "reused" in capsys.readouterr().err

    build_zoo(tiny_preset, out, rows=rows[:-3])  # a different corpus is a different build
    assert "reused" not in capsys.readouterr().err
    assert json.loads((out / LADDER_FILE).read_text())["build_key"] != key

    monkeypatch.setitem(zoo.PRESETS, "tiny", Preset(**{**TINY.__dict__, "steps": 4}))
    build_zoo(tiny_preset, out, rows=rows[:-3])  # so is a changed recipe
    assert json.loads((out / LADDER_FILE).read_text())["models"][0]["steps"] == 4

    build_zoo(tiny_preset, out, force=True, rows=rows[:-3])
    assert "reused" not in capsys.readouterr().err

    (out / "t2" / "model.safetensors").unlink()  # an incomplete folder is rebuilt, not reused
    entries = build_zoo(tiny_preset, out, rows=rows[:-3])
    assert "reused" not in capsys.readouterr().err
    assert (out / "t2" / "model.safetensors").is_file() and len(entries) == 2


def test_failed_build_leaves_the_previous_one_untouched(tmp_path, tiny_preset, monkeypatch):
    from tunelens.models import pretrain

    rows = standin_rows()
    out = tmp_path / "zoo"
    build_zoo(tiny_preset, out, rows=rows)
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    ladder_before = (out / LADDER_FILE).read_text()
    real = pretrain.pretrain
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("power cut")
        return real(*args, **kwargs)

    monkeypatch.setattr(pretrain, "pretrain", failing)
    with pytest.raises(RuntimeError, match="power cut"):
        build_zoo(tiny_preset, out, force=True, rows=rows)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (out / LADDER_FILE).read_text() == ladder_before
    assert [p.name for p in tmp_path.iterdir()] == ["zoo"]  # no temporary folder left behind


def test_refuses_to_replace_a_folder_that_is_not_a_zoo(tmp_path, tiny_preset):
    out = tmp_path / "precious"
    out.mkdir()
    (out / "thesis.tex").write_text("years of work")
    with pytest.raises(TunelensError, match="not a zoo build"):
        build_zoo(tiny_preset, out, rows=standin_rows())
    assert (out / "thesis.tex").read_text() == "years of work"
    with pytest.raises(TunelensError, match="exists and is not a folder"):
        build_zoo(tiny_preset, out / "thesis.tex", rows=standin_rows())


def test_build_key_follows_the_content_of_the_code_that_builds(tmp_path, monkeypatch):
    """An edited source file of the builder is a different build; a touched one is not."""
    source = tmp_path / "builder.py"
    source.write_text("STEPS = 80\n")
    monkeypatch.setattr(zoo, "build_sources", lambda: [source])
    clauses, rules = pretraining_texts(standin_rows())
    key = zoo.build_key(TINY, clauses, rules)
    assert set(key) == {"preset", "corpus", "code", "versions", "hash"}
    os.utime(source, ns=(1, 1))
    assert zoo.build_key(TINY, clauses, rules) == key
    source.write_text("STEPS = 81\n")
    changed = zoo.build_key(TINY, clauses, rules)
    assert changed["code"] != key["code"] and changed["hash"] != key["hash"]
    assert changed["corpus"] == key["corpus"]
    assert zoo.build_key(TINY, clauses[1:], rules)["corpus"] != key["corpus"]


def test_build_sources_are_the_builders_own_files():
    from tunelens.models import card, pretrain

    names = {p.name for p in zoo.build_sources()}
    assert names == {"zoo.py", "pretrain.py", "card.py"}
    assert all(p.is_file() for p in zoo.build_sources())
    assert {pretrain.__file__, card.__file__} <= {str(p) for p in zoo.build_sources()}
