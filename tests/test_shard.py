"""Sharded attribution: the shards, merged, are the parquet and heat-map of one run, and a rerun
runs only the shards not finished.

The shards run one after another in this process (the worker pool swapped for a loop over the
same :func:`~tunelens.explain.shard.explain_shard`): spawning workers costs seconds of imports
each, and what could differ from an unsharded run (the sample, the ids, the order, the merge,
the heat-map) is all in the parent. Ray tasks run shards for real in tests/test_ray.py.
"""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunelens.config import ExplanationConfig
from tunelens.explain import shard
from tunelens.explain.run import explain_run
from tunelens.explain.shard import _chunks, explain_sharded

CLAUSES = [
    ("The clear width of a stair shall be not less than 900 mm.", "RULE 1 stair.width >= 900 mm"),
    ("Ramps shall have a slope not steeper than 1:12.", "RULE 2 ramp.slope <= 8.33 %"),
    ("Exit access travel distance shall not exceed 60 m.", "RULE 3 exit.travel_distance <= 60 m"),
    ("Doors shall provide a clear opening of at least 815 mm.", "RULE 4 door.width >= 815 mm"),
    ("Handrails shall be at least 865 mm above the nosing.", "RULE 5 handrail.height >= 865 mm"),
]


class Stop(Exception):
    pass


def _in_process(ran: list[str], stop_after: int | None = None):
    """The shard runner of ``explain_sharded`` as a loop in this process, recording each shard."""

    def run(jobs, model, config, settings, address, threads):
        for job in jobs:
            if stop_after is not None and len(ran) == stop_after:
                raise Stop  # as a Ctrl-C between shards
            ran.append(job["data"].name)
            yield job, shard.explain_shard(model, job, config, settings)

    return run


def test_shards_merge_to_the_unsharded_parquet_and_heatmap_and_resume(micro_model_dir, tmp_path,
                                                                      monkeypatch):
    """Three shards, both targets, a sample of four of five rows without ids (known by line
    number): stopped after one shard, the rerun runs the other two, and the merged parquet and
    heat-map are the single run's, row for row."""
    rows = [{"prompt": clause, "reference": rule, "prediction": rule.replace("RULE", "RULE 9"),
             "topic": ["stairs", "ramps"][i % 2], "source": "test"}
            for i, (clause, rule) in enumerate(CLAUSES)]
    rows[2]["prediction"] = ""  # no generation to explain: counted, in one shard only
    data = tmp_path / "preds.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = ExplanationConfig(target="both", max_examples=4, n_samples=3, method="shapley", seed=3)
    one = explain_run(str(micro_model_dir), data, tmp_path / "one.parquet", config, progress=False)
    out, ran = tmp_path / "two.parquet", []
    monkeypatch.setattr(shard, "_on_processes", _in_process(ran, stop_after=1))
    with pytest.raises(Stop):
        explain_sharded(str(micro_model_dir), data, out, config, shards=3, progress=False)
    assert ran == ["shard-0.jsonl"] and not out.exists()
    monkeypatch.setattr(shard, "_on_processes", _in_process(ran))
    two = explain_sharded(str(micro_model_dir), data, out, config, shards=3, progress=False)
    assert ran == ["shard-0.jsonl", "shard-1.jsonl", "shard-2.jsonl"]
    a, b = pd.read_parquet(tmp_path / "one.parquet"), pd.read_parquet(out)
    pd.testing.assert_frame_equal(a, b)
    assert a.example_id.nunique() == 4 and set(a.target) == {"reference", "generation"}
    assert (tmp_path / "one.html").read_text() == (tmp_path / "two.html").read_text()
    for key in ("examples", "attributions", "features", "generation_skipped"):
        assert one[key] == two[key], key
    assert two["shards"] == 3 and not (tmp_path / ".two.parquet.shards").exists()


def test_chunks_are_contiguous_and_never_empty():
    ids = [str(i) for i in range(7)]
    assert _chunks(ids, 3) == [["0", "1", "2"], ["3", "4"], ["5", "6"]]
    assert _chunks(ids[:2], 4) == [["0"], ["1"]]
