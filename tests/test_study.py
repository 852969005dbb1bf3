"""The study runner's own logic: the matrix, stamps for resuming, checks made before any work."""

from __future__ import annotations

import json

import pytest

from tunelens.config import ModelSpec, parse_study
from tunelens.errors import TunelensError
from tunelens.fingerprint import fingerprint
from tunelens.layout import RunIdentity, StudyLayout
from tunelens.matrix import Cell, check_model_paths, estimate, expand_matrix, resolve_model_path
from tunelens.study import Stamps, StudyRunner, reference_view


def _study(**kw):
    raw = {"models": [{"name": "s", "path": "p1"}, {"name": "m", "path": "p2"}],
           "strategies": ["full", "lora", "qlora"], "objectives": ["instruct"]}
    raw.update(kw)
    return parse_study(raw)


def test_matrix_is_the_full_product_plus_extra_cells_without_duplicates():
    study = _study(extra_cells=[{"model": "s", "strategy": "lora", "objective": "causal"},
                                {"model": "s", "strategy": "lora", "objective": "instruct",
                                 "rag": True},
                                {"model": "s", "strategy": "full", "objective": "instruct"}])
    names = [c.name for c in expand_matrix(study)]
    assert names[:6] == ["s__full__instruct__s0", "s__lora__instruct__s0", "s__qlora__instruct__s0",
                         "m__full__instruct__s0", "m__lora__instruct__s0", "m__qlora__instruct__s0"]
    assert names[6:] == ["s__lora__causal__s0", "s__lora__instruct__rag__s0"]


def test_every_cell_is_trained_once_per_seed_and_extra_cells_may_pick_one():
    study = _study(seeds=[0, 1], rag={"enabled": [False, True]},
                   extra_cells=[{"model": "s", "objective": "causal", "seed": 7},
                                {"model": "m", "objective": "causal"}])
    cells = expand_matrix(study)
    names = [c.name for c in cells]
    assert names[:4] == ["s__full__instruct__s0", "s__full__instruct__s1",
                         "s__full__instruct__rag__s0", "s__full__instruct__rag__s1"]
    assert names[-3:] == ["s__full__causal__s7", "m__full__causal__s0", "m__full__causal__s1"]
    assert len(cells) == 2 * 3 * 2 * 2 + 3 and all(c.seed == c.identity.seed for c in cells)
    rag = [c for c in cells if c.identity.rag]
    assert {c.train_name for c in rag} == {c.name for c in cells if c.identity.rag is False
                                           and c.identity.objective == "instruct"}
    assert all(c.train_name.endswith(f"__s{c.seed}") for c in rag)  # the twin of its own seed


@pytest.mark.parametrize("seeds, message", [
    ([], "'seeds'.*at least one"), ([1, 1], "'seeds'.*unique"), ([-1], r"seeds\.0"),
    (["1"], r"seeds\.0"),
])
def test_seeds_are_a_non_empty_list_of_unique_non_negative_integers(seeds, message):
    with pytest.raises(TunelensError, match=message):
        _study(seeds=seeds)
    with pytest.raises(TunelensError, match=r"extra_cells\.0\.seed"):
        _study(extra_cells=[{"model": "s", "seed": -2}])


def test_a_cells_seed_drives_training_generation_and_explanation():
    from tunelens.study import seeded

    study = _study(train={"seed": 5}, seeds=[3])
    for section in (study.train, study.generation, study.explanation):
        assert seeded(section, 3).seed == 3 and section.seed != 3
        assert seeded(section, None) is section  # a run outside a study keeps its own seed
    assert seeded(study.explanation, 3).sample_seed == study.explanation.sample_seed


def test_cells_carry_their_identity_as_data():
    cell = expand_matrix(_study(rag={"enabled": [True]}))[0]
    assert isinstance(cell, Cell)
    assert cell.identity == RunIdentity("s", "full", "instruct", True, 0)
    assert (cell.identity.strategy, cell.identity.objective, cell.identity.rag) == ("full", "instruct", True)


def test_rag_cells_share_the_model_of_their_twin():
    cells = expand_matrix(_study(rag={"enabled": [False, True]}))
    rag = [c for c in cells if c.identity.rag]
    assert len(rag) == 6
    assert all(c.train_name == c.name.replace("__rag__", "__") for c in rag)


def test_extra_cell_with_unknown_model_names_the_study_file():
    study = _study().model_copy(update={"extra_cells": [{"model": "xl"}]})  # past the config
    with pytest.raises(TunelensError, match=r"^my\.yaml: extra_cells\.0\.model: unknown model 'xl'"):
        expand_matrix(study, origin="my.yaml")


def test_an_empty_study_fails_before_anything_is_written(tmp_path):
    with pytest.raises(TunelensError, match=r"^empty\.yaml: the study has no cells"):
        expand_matrix(parse_study({}), origin="empty.yaml")
    out = tmp_path / "study"
    with pytest.raises(TunelensError, match="no cells"):
        StudyRunner(parse_study({}), out, origin="empty.yaml").run()
    assert not out.exists()


def test_estimate_counts_trainings_once_per_trained_model():
    study = _study(rag={"enabled": [False, True]})
    est = estimate(study, expand_matrix(study))
    assert est["cells"] == 12 and est["trainings"] == 6
    assert est["train_steps"] == 6 * study.train.max_steps


def test_estimate_counts_the_check_stages_retrieval_twins_run():
    """Faithfulness runs on every cell; probes and layer views only on a cell with its own model
    (a retrieval twin shares its twin's), so 12 cells, 6 of them twins: 12 + 6 + 6."""
    study = _study(rag={"enabled": [False, True]})
    assert estimate(study, expand_matrix(study))["check_stages"] == 0  # checks are off by default
    on = {"enabled": True}
    checked = _study(rag={"enabled": [False, True]},
                     checks={"faithfulness": on, "probes": on, "layers": on})
    assert estimate(checked, expand_matrix(checked))["check_stages"] == 12 + 6 + 6
    only = _study(rag={"enabled": [False, True]}, checks={"probes": on})
    assert estimate(only, expand_matrix(only))["check_stages"] == 6


def test_estimate_counts_every_seed_as_a_training_and_both_targets_as_two():
    study = _study(rag={"enabled": [False, True]}, seeds=[0, 1, 2],
                   explanation={"max_examples": 4})
    est = estimate(study, expand_matrix(study))
    assert (est["cells"], est["seeds"], est["trainings"]) == (36, 3, 2 * 3 * 3)
    assert est["train_steps"] == 18 * study.train.max_steps
    assert est["explained_examples"] == 36 * 4 * 2
    one = study.model_copy(update={"explanation": study.explanation.model_copy(
        update={"target": "reference"})})
    assert estimate(one, expand_matrix(one))["explained_examples"] == 36 * 4


def test_stamps_skip_only_when_output_and_settings_match(tmp_path):
    stamps = Stamps(StudyLayout(tmp_path).stamps)
    out = tmp_path / "o.json"
    a, b = fingerprint("x", {"lr": 1}), fingerprint("x", {"lr": 2})
    assert a != b
    stamps.mark("k", a)
    assert (tmp_path / ".stamps" / "k.json").exists()
    assert not stamps.done("k", out, a)  # no output yet
    out.write_text("{}")
    assert stamps.done("k", out, a)
    assert not stamps.done("k", out, b)  # settings changed
    (tmp_path / ".stamps" / "k.json").write_text('{"stamp": ')  # cut short: not done, no crash
    assert not stamps.done("k", out, a)


def test_explain_reads_only_prompt_and_reference_fields_of_predictions(tmp_path):
    rows = [{"id": "a", "prompt": "p", "reference": "r", "prediction": "x", "rendered_prompt": "P"}]
    pred = tmp_path / "p.jsonl"
    pred.write_text(json.dumps(rows[0]) + "\n")
    before = reference_view(pred)
    pred.write_text(json.dumps({**rows[0], "prediction": "something else"}) + "\n")
    assert reference_view(pred) == before
    pred.write_text(json.dumps({**rows[0], "reference": "r2"}) + "\n")
    assert reference_view(pred) != before
    pred.write_text(json.dumps({**rows[0], "topic": "ramps"}) + "\n")  # the sample's strata
    assert reference_view(pred) != before


def test_zoo_reference_must_name_a_model():
    spec = ModelSpec(name="s", path="zoo:quick")
    with pytest.raises(TunelensError, match="expected zoo:<preset>/<name>"):
        resolve_model_path(spec, zoo_root=None)
    assert resolve_model_path(ModelSpec(name="s", path="some/hub-id"), zoo_root=None) == "some/hub-id"


@pytest.mark.parametrize("path, message", [
    ("./no/such/model", r"s\.yaml: models\.big\.path: \./no/such/model: no such model folder"),
    ("/abs/missing/model", r"models\.big\.path: /abs/missing/model: no such model folder"),
    ("zoo:nope/tl-q1", r"models\.big\.path: unknown zoo preset 'nope'"),
    ("zoo:quick/tl-q9", r"models\.big\.path: no model 'tl-q9' in zoo preset 'quick'"),
    ("zoo:quick", r"models\.big\.path: expected zoo:<preset>/<name>"),
])
def test_model_paths_are_checked_before_any_work(path, message, tmp_path):
    study = parse_study({"models": [{"name": "ok", "path": str(tmp_path)},
                                    {"name": "big", "path": path}]})
    with pytest.raises(TunelensError, match=message):
        check_model_paths(study, origin="s.yaml")
    out = tmp_path / "study"
    with pytest.raises(TunelensError, match=message.split(": ", 1)[-1]):
        StudyRunner(study, out, origin="s.yaml").run()
    assert not out.exists()  # refused before the data stage, before study.yaml


def test_hub_ids_and_existing_folders_pass_the_model_check(tmp_path):
    check_model_paths(parse_study({"models": [
        {"name": "a", "path": "org/model-1.5B"}, {"name": "b", "path": "gpt2"},
        {"name": "c", "path": str(tmp_path)}, {"name": "d", "path": "zoo:quick/tl-q2"}]}))


def test_dry_run_counts_the_seeds_of_the_quick_study(tmp_path, capsys):
    from tunelens.cli import main
    from tunelens.study import bundled_example

    assert main(["run", str(bundled_example("quick.yaml")), "--dry-run",
                 "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "22 cells" in out and "seeds 2, trainings 20, train steps 240" in " ".join(out.split())
    assert "q2__lora__instruct__rag__s1" in out and not (tmp_path / "s").exists()


def test_explain_stamp_reads_the_generation_unless_only_the_reference_is_explained(tmp_path):
    from tunelens.config import ExplanationConfig
    from tunelens.study import explain_stamp

    pred, model = tmp_path / "p.jsonl", tmp_path / "model"
    model.mkdir()
    row = {"id": "a", "prompt": "p", "reference": "r", "prediction": "x"}
    for target, follows in (("both", True), ("generation", True), ("reference", False)):
        config = ExplanationConfig(target=target)
        pred.write_text(json.dumps(row) + "\n")
        before = explain_stamp(config, model, pred)
        pred.write_text(json.dumps({**row, "prediction": "y"}) + "\n")
        assert (explain_stamp(config, model, pred) != before) is follows, target
    assert explain_stamp(ExplanationConfig(seed=1), model, pred) != \
        explain_stamp(ExplanationConfig(seed=2), model, pred)
