"""The study runner's own logic: the matrix, stamps for resuming, zoo references."""

from __future__ import annotations

import pytest

from tunelens.config import ModelSpec, parse_study
from tunelens.errors import TunelensError
from tunelens.study import Stamps, estimate, expand_matrix, fingerprint, resolve_model_path


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


def test_rag_cells_share_the_model_of_their_twin():
    cells = expand_matrix(_study(rag={"enabled": [False, True]}))
    rag = [c for c in cells if c.rag]
    assert len(rag) == 6
    assert all(c.train_name == c.name.removesuffix("__rag") for c in rag)


def test_extra_cell_with_unknown_model_is_one_clear_error():
    with pytest.raises(TunelensError, match=r"extra_cells\.0\.model: unknown model 'xl'"):
        expand_matrix(_study(extra_cells=[{"model": "xl"}]))


def test_estimate_counts_trainings_once_per_trained_model():
    study = _study(rag={"enabled": [False, True]})
    est = estimate(study, expand_matrix(study))
    assert est["cells"] == 12 and est["trainings"] == 6
    assert est["train_steps"] == 6 * study.train.max_steps


def test_stamps_skip_only_when_output_and_settings_match(tmp_path):
    stamps = Stamps(tmp_path)
    out = tmp_path / "o.json"
    a, b = fingerprint("x", {"lr": 1}), fingerprint("x", {"lr": 2})
    assert a != b
    stamps.mark("k", a)
    assert not stamps.done("k", out, a)  # no output yet
    out.write_text("{}")
    assert stamps.done("k", out, a)
    assert not stamps.done("k", out, b)  # settings changed


def test_zoo_reference_must_name_a_model():
    spec = ModelSpec(name="s", path="zoo:quick")
    with pytest.raises(TunelensError, match="expected zoo:<preset>/<name>"):
        resolve_model_path(spec, zoo_root=None)
    assert resolve_model_path(ModelSpec(name="s", path="some/hub-id"), zoo_root=None) == "some/hub-id"
