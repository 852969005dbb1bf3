"""Bad study YAML is one line naming the file (and line or key path), never a traceback."""

from __future__ import annotations

import pytest

from tunelens.cli import main
from tunelens.config import ExplanationConfig, default_of, load_study, override, parse_study
from tunelens.errors import TunelensError

MODELS = "models:\n  - {name: s, path: p1}\n"


def _yaml(tmp_path, text: str | bytes):
    path = tmp_path / "study.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


@pytest.mark.parametrize("content, message", [
    ("name: caf\xe9\n".encode("latin-1"), r"study\.yaml:1: not UTF-8"),
    ("models:\n\t- {name: s, path: p}\n", r"study\.yaml:2: malformed YAML \(found character"),
    ("- a\n- b\n", r"study\.yaml: expected a mapping of sections at the top level, got list"),
    ("just text\n", r"expected a mapping of sections at the top level, got str"),
    ("models:\n  - {name: s, path: 123}\n", r"study\.yaml: bad value for 'models\.0\.path': "
                                              r"Input should be a valid string"),
    ("models:\n  - {name: 5, path: p}\n", r"bad value for 'models\.0\.name'"),
    (MODELS + "extra_cells:\n  - {model: s, strategy: lora, promt: x}\n",
     r"study\.yaml: unknown key 'extra_cells\.0\.promt'"),
    (MODELS + "extra_cells:\n  - {model: s, strategy: lorra}\n",
     r"study\.yaml: bad value for 'extra_cells\.0\.strategy'"),
    (MODELS + "extra_cells:\n  - {strategy: lora}\n", r"'extra_cells\.0\.model': Field required"),
    (MODELS + "extra_cells:\n  - {model: xl}\n",
     r"study\.yaml: extra_cells\.0\.model: unknown model 'xl' \(models: s\)"),
])
def test_bad_study_yaml_is_one_line(tmp_path, content, message):
    with pytest.raises(TunelensError, match=message) as err:
        load_study(_yaml(tmp_path, content))
    assert "\n" not in str(err.value)


def test_cli_names_the_config_file_and_exits_2(tmp_path, capsys):
    bad = _yaml(tmp_path, b"data:\n  seed: \xff\n")
    assert main(["data", "build", "--config", str(bad), "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert "study.yaml:2" in err and "\n" not in err
    assert not (tmp_path / "d").exists()


def test_extra_cells_stay_plain_mappings():
    study = parse_study({"models": [{"name": "s", "path": "p"}],
                         "extra_cells": [{"model": "s", "objective": "causal", "rag": True}]})
    cell = study.extra_cells[0]
    assert cell == {"model": "s", "objective": "causal", "rag": True}
    assert cell.get("strategy", "lora") == "lora"


def test_checks_across_keys_name_their_keys():
    with pytest.raises(TunelensError, match=r"^data settings: val_fraction \+ test_fraction"):
        override(parse_study({}).data, origin="data settings", val_fraction=0.5, test_fraction=0.5)
    with pytest.raises(TunelensError, match=r"models: names must be unique"):
        parse_study({"models": [{"name": "s", "path": "a"}, {"name": "s", "path": "b"}]})


def test_override_and_default_of():
    base = ExplanationConfig(n_samples=8)
    assert override(base, n_samples=None) is base
    assert override(base, seed=3).n_samples == 8
    assert default_of(ExplanationConfig, "method") == "(default: occlusion)"
