"""Help texts: every verb of the DESIGN contract is listed, defaults and choices come from config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tunelens.cli import main
from tunelens.config import ExplanationConfig, GenerationConfig, TrainConfig
from tunelens.explain.catalog import BASELINES, METHODS
from tunelens.train.catalog import OBJECTIVES, STRATEGIES

CLI = Path(__file__).parents[1] / "src" / "tunelens" / "cli"


def _help(capsys, *argv: str) -> str:
    assert main([*argv, "--help"]) == 0
    return " ".join(capsys.readouterr().out.split())  # undo the wrapping


def test_top_level_help_lists_every_verb_of_the_contract(capsys):
    text = _help(capsys)
    for verb in ("data", "zoo", "train", "export", "rag", "generate", "evaluate", "explain",
                 "compare", "report", "run", "demo", "categories"):
        assert re.search(rf"\b{verb}\b", text), verb
    for group, verbs in {"data": ("build", "prepare", "validate"), "zoo": ("build",),
                         "rag": ("index",)}.items():
        text = _help(capsys, group)
        assert all(v in text for v in verbs), (group, text)


@pytest.mark.parametrize("verb", [("train",), ("generate",), ("evaluate",), ("explain",),
                                  ("zoo", "build"), ("rag", "index"), ("export",)])
def test_every_verb_that_runs_a_model_takes_threads(verb, capsys):
    assert "--threads" in _help(capsys, *verb)


def test_helps_show_defaults_and_choices_from_config_and_registries(capsys):
    text = _help(capsys, "generate")
    assert f"(default: {GenerationConfig().max_new_tokens})" in text
    assert f"(default: {GenerationConfig().batch_size})" in text
    text = _help(capsys, "explain")
    assert f"(default: {ExplanationConfig().n_samples})" in text
    assert f"(default: {ExplanationConfig().max_examples})" in text
    assert all(name in text for name in METHODS) and all(name in text for name in BASELINES)
    text = _help(capsys, "train")
    assert f"(default: {TrainConfig().max_steps})" in text
    assert all(f"{name} (" in text for name in (*STRATEGIES, *OBJECTIVES))


def test_no_help_text_restates_a_default_as_a_literal():
    literal = re.compile(r"[Dd]efault:? \d|config default")
    offenders = [f"{p.name}:{i}" for p in CLI.glob("*.py")
                 for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert not offenders, offenders
