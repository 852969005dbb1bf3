"""Retrieval: the FAISS index round-trips, finds paraphrases, never returns the query itself, and
RAG puts the retrieved examples into the generation prompt end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tunelens.config import GenerationConfig
from tunelens.errors import TunelensError
from tunelens.infer.generate import generate_predictions
from tunelens.infer.rag import Retriever, build_index

CORPUS = [
    ("stair-width", "The clear width of a stair shall be not less than 900 mm.",
     "RULE stair.clear_width >= 900 mm"),
    ("ramp-slope", "Ramps shall have a slope not steeper than 1 in 12.", "RULE ramp.slope <= 8.33 %"),
    ("door-opening", "Doors shall provide a clear opening of at least 815 mm.",
     "RULE door.clear_opening >= 815 mm"),
    ("handrail-height", "Handrails shall be between 865 mm and 965 mm above the stair nosing.",
     "RULE handrail.height between 865 mm and 965 mm"),
    ("travel-distance", "Exit access travel distance shall not exceed 60 m in sprinklered buildings.",
     "RULE exit.travel_distance <= 60 m IF building.sprinklered"),
    ("guard-height", "Guards shall be at least 1070 mm high at open sides of walking surfaces.",
     "RULE guard.height >= 1070 mm"),
    ("riser-height", "Stair riser heights shall be 178 mm maximum.", "RULE stair.riser_height <= 178 mm"),
]


def _rows():
    return [{"id": i, "topic": "t", "source": "handwritten", "prompt": p, "completion": c}
            for i, p, c in CORPUS]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rag")
    corpus = _write(tmp / "train.jsonl", _rows())
    build_index(corpus, tmp / "index")
    return tmp / "index"


def test_index_round_trips(index_dir):
    retriever = Retriever(index_dir)
    assert retriever.manifest["count"] == len(CORPUS) == retriever.index.ntotal
    assert retriever.manifest["dimension"] == retriever.index.d == 384
    assert [r["id"] for r in retriever.rows] == [c[0] for c in CORPUS]
    assert [r["completion"] for r in retriever.rows] == [c[2] for c in CORPUS]
    stored = retriever.index.reconstruct_n(0, retriever.index.ntotal)
    assert np.allclose(np.linalg.norm(stored, axis=1), 1.0, atol=1e-5)  # cosine = inner product


@pytest.mark.parametrize("query, expected", [
    ("A stairway must be at least 900 millimetres wide.", "stair-width"),
    ("The gradient of a ramp may not exceed one in twelve.", "ramp-slope"),
    ("Maximum height of each stair riser is 178 mm.", "riser-height"),
    ("A guard on the open side of a walkway must be 1070 mm high or more.", "guard-height"),
])
def test_paraphrase_finds_its_row(index_dir, query, expected):
    hits = Retriever(index_dir).search([query], k=3)[0]
    assert hits[0]["id"] == expected
    assert len(hits) == 3
    assert hits[0]["score"] >= hits[1]["score"] >= hits[2]["score"]


def test_self_match_is_excluded(index_dir):
    retriever = Retriever(index_dir)
    own = CORPUS[0][1]
    by_text = retriever.search([own, "  the CLEAR width of a stair shall be not less than 900 mm. "], k=3)
    assert all(h["id"] != "stair-width" for hits in by_text for h in hits)
    assert [len(h) for h in by_text] == [3, 3]
    by_id = retriever.search(["A stairway must be at least 900 millimetres wide."], k=2,
                             ids=["stair-width"])[0]
    assert "stair-width" not in [h["id"] for h in by_id] and len(by_id) == 2
    everything = retriever.search(["stair"], k=len(CORPUS), ids=["ramp-slope"])[0]
    assert len(everything) == len(CORPUS) - 1  # asking for more than exists returns the rest


def test_bad_corpus_and_index(tmp_path):
    with pytest.raises(TunelensError, match="no such file"):
        build_index(tmp_path / "missing.jsonl", tmp_path / "i")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "x", "completion": "y"}\n{"prompt": "z"}\n')
    with pytest.raises(TunelensError, match=r"bad.jsonl:2: field 'completion': missing"):
        build_index(bad, tmp_path / "i")
    bad.write_text('{"prompt": "x", "completion": "y"}\n{"prompt": 5, "completion": "y"}\n')
    with pytest.raises(TunelensError, match=r"bad.jsonl:2: field 'prompt': .*string"):
        build_index(bad, tmp_path / "i")  # a number is not a clause (it was once read as "5")
    row = '{"id": "a", "prompt": "x", "completion": "y"}\n'
    bad.write_text(row + row)
    with pytest.raises(TunelensError, match=r"bad.jsonl:2: duplicate id 'a' \(first at .*bad.jsonl:1\)"):
        build_index(bad, tmp_path / "i")
    assert not (tmp_path / "i").exists()
    (tmp_path / "empty-dir").mkdir()
    with pytest.raises(TunelensError, match="not a tunelens index"):
        Retriever(tmp_path / "empty-dir")
    with pytest.raises(TunelensError, match="no such index folder"):
        Retriever(tmp_path / "nowhere")


def test_rag_generation_puts_retrieved_examples_in_the_prompt(index_dir, micro_model_dir, tmp_path):
    queries = [
        {"id": "q1", "prompt": "A stairway must be at least 900 millimetres wide.", "completion": "R1"},
        # a row that is also in the corpus must not retrieve itself
        {"id": "guard-height", "prompt": CORPUS[5][1], "completion": CORPUS[5][2]},
    ]
    data = _write(tmp_path / "test.jsonl", queries)
    config = GenerationConfig(max_new_tokens=4)
    summary = generate_predictions(str(micro_model_dir), data, tmp_path / "rag.jsonl", config,
                                   rag_index=index_dir, rag_k=2, progress=False)
    generate_predictions(str(micro_model_dir), data, tmp_path / "plain.jsonl", config, progress=False)
    rag = [json.loads(x) for x in (tmp_path / "rag.jsonl").read_text().splitlines()]
    plain = [json.loads(x) for x in (tmp_path / "plain.jsonl").read_text().splitlines()]
    corpus = {i: (p, c) for i, p, c in CORPUS}
    assert summary["rag_k"] == 2
    assert rag[0]["retrieved"][0] == "stair-width"
    assert "guard-height" not in rag[1]["retrieved"]
    for row, base in zip(rag, plain, strict=True):
        assert len(row["retrieved"]) == 2 and "retrieved" not in base
        assert row["rendered_prompt"] != base["rendered_prompt"]
        for rid in row["retrieved"]:
            clause, rule = corpus[rid]
            assert f"### Example clause:\n{clause}\n### Example rule:\n{rule}\n" in row["rendered_prompt"]
        assert row["rendered_prompt"].endswith(f"### Clause:\n{row['prompt']}\n### Rule:\n")


def test_cli_rag_index_and_generate(micro_model_dir, tmp_path):
    from tunelens.cli import main

    corpus = _write(tmp_path / "train.jsonl", _rows())
    assert main(["rag", "index", "--corpus", str(corpus), "--out", str(tmp_path / "idx")]) == 0
    assert json.loads((tmp_path / "idx" / "manifest.json").read_text())["count"] == len(CORPUS)
    data = _write(tmp_path / "test.jsonl", [{"id": "q", "prompt": "Ramps may not be steep."}])
    out = tmp_path / "p.jsonl"
    assert main(["generate", "--model", str(micro_model_dir), "--data", str(data), "--out", str(out),
                 "--rag", str(tmp_path / "idx"), "--rag-k", "1", "--max-new-tokens", "2"]) == 0
    row = json.loads(out.read_text())
    assert row["retrieved"] == ["ramp-slope"] and row["reference"] is None
    assert main(["rag", "index", "--out", str(tmp_path / "x")]) == 2  # no corpus given
    assert main(["generate", "--model", str(micro_model_dir), "--data", str(data), "--out",
                 str(tmp_path / "q.jsonl"), "--rag", str(tmp_path / "nowhere")]) == 2
