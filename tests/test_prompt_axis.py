"""Prompts as a study axis and strategy ``none`` (prompting only): names, rendering, the untrained
run, and a study comparing two prompt formats end to end on a micro model."""

from __future__ import annotations

import json

import pytest

from tunelens.config import parse_study
from tunelens.data.templates import named_prompt, pick_shots
from tunelens.errors import TunelensError
from tunelens.layout import RunIdentity
from tunelens.matrix import expand_matrix
from tunelens.models.run_settings import ModelSettings, recorded_settings


def _study(**extra):
    return parse_study({"models": [{"name": "m", "path": "m"}], **extra})


def test_named_prompts_resolve_and_unknown_ones_are_refused():
    assert named_prompt("few-shot-3").shots == 3 and named_prompt("plain").format == "plain"
    assert named_prompt("few-shot-0") is None and named_prompt("few-shot-17") is None
    study = _study(prompts=["terse", "few-shot-2"],
                   prompt_templates={"terse": {"format": "plain", "instruction": "Rule:"}})
    assert study.prompt("terse").instruction == "Rule:"
    with pytest.raises(TunelensError, match="unknown prompt 'fancy'"):
        _study(prompts=["fancy"])
    with pytest.raises(TunelensError, match="lower-case"):
        _study(prompts=["Bad_Name"], prompt_templates={"Bad_Name": {}})
    with pytest.raises(TunelensError, match="unique"):
        _study(prompts=["plain", "plain"])


def test_the_prompt_is_a_cell_dimension_with_its_own_training():
    study = _study(strategies=["none", "lora"], prompts=["plain", "few-shot-2"], seeds=[0, 1])
    cells = expand_matrix(study)
    assert len(cells) == 2 * 2 * 2
    names = [c.name for c in cells]
    assert "m__lora__instruct__few-shot-2__s1" in names
    ident = next(c.identity for c in cells if c.name == "m__lora__instruct__few-shot-2__s1")
    assert ident.arm == "lora · few-shot-2" and ident.cell == "m__lora__instruct__few-shot-2"
    assert RunIdentity.from_dict(ident.to_dict()) == ident
    assert "prompt" not in RunIdentity("m", "lora", "instruct").to_dict()  # old records unchanged
    assert expand_matrix(_study())[0].name == "m__lora__instruct__s0"  # no axis, no dimension


def test_shots_instruction_and_format_render_and_are_read_back(micro_model, tmp_path):
    _, tokenizer = micro_model
    rows = [{"id": f"r{i}", "prompt": f"clause {i}", "completion": f"RULE {i}: x <= {i}"} for i in range(9)]
    shots = pick_shots(rows, 2)
    assert shots == pick_shots(list(reversed(rows)), 2)  # fixed whatever the row order
    settings = ModelSettings(prompt_format="plain", instruction="Write the rule.", shots=tuple(shots))
    text = settings.render(tokenizer, "Doors shall be 32 in wide.")
    assert text.startswith("### Instruction:\nWrite the rule.\n### Example clause:\n" + shots[0]["prompt"])
    assert text.endswith("### Clause:\nDoors shall be 32 in wide.\n### Rule:\n")
    (tmp_path / "run.json").write_text(json.dumps(settings.record(tokenizer)))
    back = ModelSettings.of(str(tmp_path), shots=shots)  # shots are given, the rest is recorded
    assert back.render(tokenizer, "x") == settings.render(tokenizer, "x")
    assert "shots" not in settings.record(tokenizer)
    (tmp_path / "run.json").write_text(json.dumps({"instruction": 3}))
    with pytest.raises(TunelensError, match="instruction"):
        recorded_settings(str(tmp_path))


def test_prompts_that_differ_only_in_shots_share_a_training():
    study = parse_study({"models": [{"name": "m", "path": "m", "prompt_format": "plain"}],
                         "strategies": ["lora"], "prompts": ["plain", "few-shot-3", "terse"],
                         "prompt_templates": {"terse": {"format": "plain", "instruction": "Rule:"}}})
    by_prompt = {c.identity.prompt: c for c in expand_matrix(study)}
    plain = "m__lora__instruct__plain__s0"
    assert by_prompt["few-shot-3"].train_name == by_prompt["plain"].train_name == plain
    assert by_prompt["terse"].train_name == "m__lora__instruct__terse__s0"  # its instruction trains
    assert by_prompt["few-shot-3"].identity.train_prompt == "plain"
    auto = _study(strategies=["lora"], prompts=["plain", "few-shot-3"])  # auto may render as chat
    assert len({c.train_name for c in expand_matrix(auto)}) == 2


def test_strategy_none_writes_an_untrained_run_that_generates(micro_model_dir, tmp_path):
    from tunelens.config import GenerationConfig
    from tunelens.infer.generate import generate_predictions
    from tunelens.models.loading import model_sources
    from tunelens.train import train

    data = tmp_path / "data"
    data.mkdir()
    rows = [{"id": f"r{i}", "prompt": f"Ramps shall be {i} in wide.", "completion": f"RULE {i}: w >= {i} in"}
            for i in range(4)]
    for split in ("train", "val", "test"):
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    info = train(str(micro_model_dir), data, run, "none", "instruct", prompt_format="plain")
    assert info["trainable_params"] == 0 and info["total_params"] > 0 and info["prompt_only"]
    assert sorted(p.name for p in run.iterdir()) == ["run.json"]  # no weights copied
    assert micro_model_dir.resolve() in [p.resolve() for p in model_sources(str(run))]
    pred = tmp_path / "pred.jsonl"
    generate_predictions(str(run), data / "test.jsonl", pred,
                         GenerationConfig(max_new_tokens=4, max_examples=2), progress=False,
                         shots=pick_shots(rows, 1))
    first = json.loads(pred.read_text().splitlines()[0])
    assert "### Example clause:" in first["rendered_prompt"]  # the shot reached generation


@pytest.mark.slow
def test_a_study_compares_two_prompt_formats(micro_model_dir, tmp_path):
    from tunelens.study import StudyRunner

    study = parse_study({
        "name": "prompts", "models": [{"name": "micro", "path": str(micro_model_dir),
                                       "prompt_format": "plain"}],
        "strategies": ["none"], "prompts": ["plain", "few-shot-2"], "seeds": [0],
        "generation": {"max_new_tokens": 8, "max_examples": 6},
        "explanation": {"max_examples": 3}, "tracking": {"enabled": False},
        "evaluation": {"bootstrap_samples": 50}, "comparison": {"bootstrap_samples": 50},
    })
    statuses = StudyRunner(study, tmp_path / "s").run()
    assert [s.status for s in statuses] == ["ok", "ok"], [s.error for s in statuses]
    assert len(list((tmp_path / "s" / "models").iterdir())) == 1  # the shots' prompt trains as plain
    few = json.loads((tmp_path / "s" / "predictions" / "micro__none__instruct__few-shot-2__s0.jsonl"
                      ).read_text().splitlines()[0])
    assert few["rendered_prompt"].count("### Example clause:") == 2
    tests = json.loads((tmp_path / "s" / "stats" / "tests.json").read_text())
    arms = set(tests["groups"][0]["runs"])
    assert arms == {"none · plain", "none · few-shot-2"}
    html = (tmp_path / "s" / "report.html").read_text()
    assert "prompting only · few-shot-2" in html


def test_an_untrained_run_of_a_packaged_model_is_known_by_its_short_name(smollm2_dir, tmp_path):
    """Strategy none on ``smollm2-135m``: the base is a short name, resolved like any training's."""
    from tunelens.train import train

    data = tmp_path / "data"
    data.mkdir()
    row = {"id": "r0", "prompt": "Ramps shall be 36 in wide.", "completion": "RULE 1: w >= 36 in"}
    for split in ("train", "val"):
        (data / f"{split}.jsonl").write_text(json.dumps(row) + "\n")
    info = train("smollm2-135m", data, tmp_path / "run", "none", "instruct")
    assert info["base_model"] == "smollm2-135m" and 1.3e8 < info["total_params"] < 1.4e8
    assert info["prompt_format"] == "chat"  # an instruct model's template
