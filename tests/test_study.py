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
    assert names[:6] == ["s__full__instruct", "s__lora__instruct", "s__qlora__instruct",
                         "m__full__instruct", "m__lora__instruct", "m__qlora__instruct"]
    assert names[6:] == ["s__lora__causal", "s__lora__instruct__rag"]


def test_cells_carry_their_identity_as_data():
    cell = expand_matrix(_study(rag={"enabled": [True]}))[0]
    assert isinstance(cell, Cell)
    assert cell.identity == RunIdentity("s", "full", "instruct", True)
    assert (cell.identity.strategy, cell.identity.objective, cell.identity.rag) == ("full", "instruct", True)


def test_rag_cells_share_the_model_of_their_twin():
    cells = expand_matrix(_study(rag={"enabled": [False, True]}))
    rag = [c for c in cells if c.identity.rag]
    assert len(rag) == 6
    assert all(c.train_name == c.name.removesuffix("__rag") for c in rag)


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
