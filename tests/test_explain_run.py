"""The explain stage: parquet contract, clause-relative offsets, categories, resume, heat-map, CLI."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from tunelens.cli import main
from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError
from tunelens.explain import run as run_module
from tunelens.explain.run import explain_run

ROWS = [
    {"id": "a", "prompt": "The clear width of a stair shall be not less than 900 mm.",
     "completion": "RULE 1011.5.2 stair.width >= 900 mm"},
    {"id": "b", "prompt": "Ramps shall have a slope not steeper than 1:12.",
     "completion": "RULE K1-2.4 ramp.slope <= 8.33 %"},
    {"id": "c", "prompt": "Exit access travel distance shall not exceed 60 m.",
     "completion": "RULE 1017.2 exit.travel_distance <= 60 m"},
]


@pytest.fixture()
def data(tmp_path):
    path = tmp_path / "test.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return path


def test_parquet_rows_follow_the_contract(micro_model_dir, data, tmp_path):
    out = tmp_path / "attributions" / "run.parquet"
    summary = explain_run(str(micro_model_dir), data, out, ExplanationConfig(granularity="word"),
                          progress=False)
    frame = pd.read_parquet(out)
    assert list(frame.columns)[:7] == ["example_id", "position", "token", "start", "end", "category",
                                       "score"]
    assert summary["examples"] == 3 and summary["features"] == len(frame)
    by_id = {r["id"]: r["prompt"] for r in ROWS}
    for row in frame.itertuples():
        assert by_id[row.example_id][row.start:row.end] == row.token  # offsets relative to the clause
    numbers = frame[frame.token.isin(["900", "60"])]
    assert set(numbers.category) == {"NUMBER"}
    assert set(frame[frame.token == "shall"].category) == {"MODAL"}
    assert frame.groupby("example_id").position.apply(lambda p: list(p) == list(range(len(p)))).all()
    html = out.with_suffix(".html").read_text()
    assert html.count('class="example"') == 3 and "title=" in html
    assert not list(out.parent.glob(".*"))  # no sidecar or temporary file left behind


def test_template_tokens_are_context_not_features(micro_model_dir, data, tmp_path):
    out = tmp_path / "run.parquet"
    explain_run(str(micro_model_dir), data, out, ExplanationConfig(max_examples=1), progress=False)
    frame = pd.read_parquet(out)
    assert "".join(frame.token) == next(r["prompt"] for r in ROWS if r["id"] == frame.example_id[0])
    assert not frame.token.str.contains("###").any()


def test_generation_target_needs_predictions(micro_model_dir, data, tmp_path):
    with pytest.raises(TunelensError, match=r"test\.jsonl:1: no 'prediction'"):
        explain_run(str(micro_model_dir), data, tmp_path / "x.parquet",
                    ExplanationConfig(target="generation"), progress=False)
    preds = tmp_path / "preds.jsonl"
    preds.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"],
                                         "reference": r["completion"], "prediction": "RULE 1 x.y >= 2 mm"})
                             + "\n" for r in ROWS))
    ref = explain_run(str(micro_model_dir), preds, tmp_path / "ref.parquet",
                      ExplanationConfig(target="reference"), progress=False)
    gen = explain_run(str(micro_model_dir), preds, tmp_path / "gen.parquet",
                      ExplanationConfig(target="generation"), progress=False)
    assert ref["features"] == gen["features"]
    a, b = pd.read_parquet(tmp_path / "ref.parquet"), pd.read_parquet(tmp_path / "gen.parquet")
    assert (a.target_logprob != b.target_logprob).all()


def _interrupt_at_third_example(monkeypatch, model: str, data, out, config) -> None:
    """Run explain with a Ctrl-C arriving as the third example starts (two finished)."""
    real = run_module.explain_example
    calls = []

    def flaky(llm, tok, ex, cfg):
        calls.append(ex["example_id"])
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(llm, tok, ex, cfg)

    monkeypatch.setattr(run_module, "explain_example", flaky)
    with pytest.raises(KeyboardInterrupt):
        explain_run(model, data, out, config, progress=False)
    monkeypatch.setattr(run_module, "explain_example", real)


def test_interrupted_run_resumes_where_it_stopped(micro_model_dir, data, tmp_path, monkeypatch):
    config = ExplanationConfig(method="shapley", n_samples=4, granularity="word")
    clean = tmp_path / "clean.parquet"
    explain_run(str(micro_model_dir), data, clean, config, progress=False)

    out = tmp_path / "run.parquet"
    _interrupt_at_third_example(monkeypatch, str(micro_model_dir), data, out, config)
    assert not out.exists()
    summary = explain_run(str(micro_model_dir), data, out, config, progress=False)
    assert summary["resumed"] == 2
    pd.testing.assert_frame_equal(pd.read_parquet(out), pd.read_parquet(clean))
    # other settings: nothing is reused
    _interrupt_at_third_example(monkeypatch, str(micro_model_dir), data, tmp_path / "again.parquet",
                                config)
    other = explain_run(str(micro_model_dir), data, tmp_path / "again.parquet",
                        config.model_copy(update={"seed": 1}), progress=False)
    assert other["resumed"] == 0


def test_cli_explain_writes_and_reports_errors(micro_model_dir, data, tmp_path, capsys):
    out = tmp_path / "cli.parquet"
    code = main(["explain", "--model", str(micro_model_dir), "--data", str(data), "--out", str(out),
                 "--method", "occlusion", "--granularity", "token", "--max-examples", "2"])
    assert code == 0 and out.exists() and out.with_suffix(".html").exists()
    ids = set(pd.read_parquet(out).example_id)
    assert len(ids) == 2 and ids < {"a", "b", "c"}
    assert main(["explain", "--model", str(micro_model_dir), "--data", str(tmp_path / "nope.jsonl"),
                 "--out", str(out)]) == 2
    assert "nope.jsonl: no such file" in capsys.readouterr().err
    assert main(["explain", "--model", str(micro_model_dir), "--data", str(data), "--out", str(out),
                 "--granularity", "letters"]) == 2
    assert "granularity" in capsys.readouterr().err


def test_every_catalog_name_resolves_to_its_class():
    from tunelens.explain.base import AttributionMethod, get_method
    from tunelens.explain.catalog import METHODS, PERTURBATION_METHODS

    assert set(PERTURBATION_METHODS) <= set(METHODS)
    for name in METHODS:
        cls = get_method(name)
        assert issubclass(cls, AttributionMethod) and cls.name == name, name
    with pytest.raises(TunelensError, match="unknown method 'nope'"):
        get_method("nope")


@pytest.mark.parametrize("method", ["attention", "rollout", "shapley_exact"])
def test_methods_newly_choosable_from_yaml_run_end_to_end(micro_model_dir, data, tmp_path, method):
    """These three were registered but not choosable from a study file; now they are, and run."""
    config = ExplanationConfig.model_validate({"method": method, "granularity": "word", "max_examples": 2,
                                               "heatmap": False})
    out = tmp_path / f"{method}.parquet"
    summary = explain_run(str(micro_model_dir), data, out, config, progress=False)
    frame = pd.read_parquet(out)
    assert summary["examples"] == 2 and set(frame.method) == {method}
    assert len(frame) == summary["features"] > 0 and frame.score.notna().all()
    if method != "shapley_exact":  # attention paid by the target rows: a share of at most 1 each
        assert (frame.score >= 0).all()


def test_resume_is_keyed_on_content_not_timestamps(micro_model_dir, data, tmp_path, monkeypatch):
    """Touching the model keeps finished examples; editing the data does not (regression: the
    stamp hashed size and mtime of the model files)."""
    import os
    import shutil

    model = shutil.copytree(micro_model_dir, tmp_path / "model")
    config = ExplanationConfig(heatmap=False)

    def interrupted_run(out):
        _interrupt_at_third_example(monkeypatch, str(model), data, out, config)

    out = tmp_path / "touched.parquet"
    interrupted_run(out)
    weights = model / "model.safetensors"
    later = weights.stat().st_mtime_ns + 10**10
    os.utime(weights, ns=(later, later))
    assert explain_run(str(model), data, out, config, progress=False)["resumed"] == 2

    out = tmp_path / "edited.parquet"
    interrupted_run(out)
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    rows[2]["completion"] = "RULE 9 other.field >= 1 m"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert explain_run(str(model), data, out, config, progress=False)["resumed"] == 0


def test_a_number_is_not_a_clause(micro_model_dir, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "a", "prompt": "Stairs.", "completion": "RULE 1"}\n\n'
                    '{"id": "b", "prompt": 5, "completion": "RULE 2"}\n')
    with pytest.raises(TunelensError, match=r"d\.jsonl:3: field 'prompt': .*string"):
        explain_run(str(micro_model_dir), data, tmp_path / "x.parquet", progress=False)
    data.write_text('{"id": "a", "prompt": "Stairs.", "completion": 7}\n')
    with pytest.raises(TunelensError, match=r"d\.jsonl:1: field 'completion': .*string"):
        explain_run(str(micro_model_dir), data, tmp_path / "x.parquet", progress=False)


def _bundled_like(n_per: dict[tuple[str, str], int]) -> list[dict]:
    """Rows in the order of the bundled test split: stratum after stratum, hand-written first."""
    return [{"id": f"{topic}-{source}-{i}", "topic": topic, "source": source,
             "prompt": f"Clause {i} about {topic}.", "completion": "RULE 1 x.y >= 1 m"}
            for (topic, source), n in n_per.items() for i in range(n)]


STRATA = {("stairs", "handwritten"): 6, ("ramps", "handwritten"): 2, ("stairs", "generated"): 20,
          ("ramps", "generated"): 12, ("doors", "generated"): 9, ("exits", "generated"): 1}


def test_the_sample_is_stratified_seeded_and_the_same_for_every_run(tmp_path):
    from tunelens.data.sample import stratified_sample, stratum

    rows = _bundled_like(STRATA)
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    one.write_text("".join(json.dumps({**r, "reference": r["completion"], "prediction": "RULE 2"})
                           + "\n" for r in rows))
    shuffled = rows[::-1]  # another run: other predictions, rows in another order
    two.write_text("".join(json.dumps({**r, "reference": r["completion"], "prediction": f"x{i}"})
                           + "\n" for i, r in enumerate(shuffled)))
    config = ExplanationConfig(max_examples=12, target="reference")
    ids_one = [ex["example_id"] for ex in run_module.read_examples(one, config)[0]]
    ids_two = [ex["example_id"] for ex in run_module.read_examples(two, config)[0]]
    assert len(ids_one) == 12 and sorted(ids_one) == sorted(ids_two)
    assert ids_one != [r["id"] for r in rows[:12]]  # not the first rows
    by_id = {r["id"]: r for r in rows}
    drawn = [stratum(by_id[i]) for i in ids_one]
    assert set(drawn) == set(STRATA)  # every topic x source stratum, the one-row one too
    # one each, the other six by largest deficit from the proportional 4.8, 2.88, 2.16
    assert [drawn.count(k) for k in STRATA] == [1, 1, 4, 3, 2, 1]
    items = [{"example_id": r["id"], **r} for r in rows]
    other_seed = stratified_sample(items, 12, seed=1)
    assert {i["example_id"] for i in other_seed} != set(ids_one)
    assert stratified_sample(items, 12, seed=1) == other_seed  # seeded, hence repeatable
    few = stratified_sample(items, 3, seed=0)  # fewer places than strata: one each of three
    assert len({stratum(i) for i in few}) == 3
    assert stratified_sample(items, None, 0) == items == stratified_sample(items, 999, 0)


def test_both_targets_go_to_one_parquet_with_a_target_column(micro_model_dir, tmp_path):
    preds = tmp_path / "preds.jsonl"
    predictions = {"a": "RULE 1 x.y >= 2 mm", "b": "", "c": "RULE 2 z >= 1 m"}
    preds.write_text("".join(json.dumps({"id": r["id"], "prompt": r["prompt"], "reference": r["completion"],
                                         "prediction": predictions[r["id"]]}) + "\n" for r in ROWS))
    both = explain_run(str(micro_model_dir), preds, tmp_path / "both.parquet", progress=False)
    assert ExplanationConfig().target == "both"
    assert (both["examples"], both["attributions"], both["generation_skipped"]) == (3, 5, 1)
    frame = pd.read_parquet(tmp_path / "both.parquet")
    assert frame.groupby("target").example_id.unique().map(sorted).to_dict() == \
        {"generation": ["a", "c"], "reference": ["a", "b", "c"]}
    for target in ("reference", "generation"):
        alone = explain_run(str(micro_model_dir), preds, tmp_path / f"{target}.parquet",
                            ExplanationConfig(target=target), progress=False)
        part = frame[frame.target == target].reset_index(drop=True)
        pd.testing.assert_frame_equal(part, pd.read_parquet(tmp_path / f"{target}.parquet"))
        assert alone["generation_skipped"] == (1 if target == "generation" else 0)
    html = (tmp_path / "both.html").read_text()
    assert html.count('class="example"') == 5 and "a · generation" in html
    # a dataset file has no generations: explained on the reference, the rest counted
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    ref_only = explain_run(str(micro_model_dir), data, tmp_path / "d.parquet", progress=False)
    assert (ref_only["attributions"], ref_only["generation_skipped"]) == (3, 3)
