"""The study's check stages (faithfulness, probes, layer views) and their report sections, on a
micro study of the conftest micro Llama (2 layers): full fine-tuning and LoRA, a few steps each."""

from __future__ import annotations

import json

import pytest

from tunelens.config import load_study
from tunelens.explain.check_stages import CHECK_STAGES, run_checks
from tunelens.layout import StudyLayout
from tunelens.study import StudyRunner

MICRO_YAML = """
name: checks
models: [{{name: m, path: "{model}"}}]
strategies: [full, lora]
objectives: [instruct]
data: {{source: "{source}", val_fraction: 0.15, test_fraction: 0.25}}
train: {{max_steps: 3, batch_size: 4, max_length: 96, logging_steps: 1}}
generation: {{max_new_tokens: 24, max_examples: 3}}
evaluation: {{bootstrap_samples: 20}}
explanation: {{max_examples: 2}}
comparison: {{bootstrap_samples: 20, permutations: 20}}
report: {{heatmap_examples: 1}}
checks:
  faithfulness: {{enabled: true, points: 5}}
  probes: {{enabled: true, kinds: [number, jurisdiction], max_examples: 4}}
  layers: {{enabled: true, max_examples: 2}}
"""


@pytest.fixture(scope="module")
def study(micro_model_dir, tmp_path_factory):
    """The micro study with every check on, run once; returns (its folder, the events)."""
    from tunelens.data.compliance.dataset import bundled_rows

    tmp = tmp_path_factory.mktemp("checks")
    rows = [{k: r[k] for k in ("id", "topic", "source", "prompt", "completion")}
            for r in bundled_rows(seed=0) if r["topic"] in ("stairs", "ramps", "doors")][:40]
    source = tmp / "clauses.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp / "checks.yaml").write_text(MICRO_YAML.format(source=source, model=micro_model_dir))
    events = []
    out = tmp / "study"
    statuses = StudyRunner(load_study(tmp / "checks.yaml"), out,
                           on_event=lambda *e: events.append(e)).run()
    assert [s.status for s in statuses] == ["ok", "ok"], [s.error for s in statuses]
    return out, events


def test_every_check_writes_its_json_per_run(study):
    out, events = study
    layout = StudyLayout(out)
    for run in layout.identities():
        faith = json.loads(layout.check("faithfulness", run).read_text())
        methods = faith["methods"]
        assert "random" in methods and "occlusion" in methods
        assert 0.0 <= methods["occlusion"]["beats_random_comprehensiveness"] <= 1.0
        probes = json.loads(layout.check("probes", run).read_text())
        assert set(probes["kinds"]) == {"number", "jurisdiction"}
        assert probes["examples"] == 4
        layers = json.loads(layout.check("layers", run).read_text())
        depth = layers["layers"]
        assert len(layers["weight_change"]) == depth
        assert len(layers["cka"]) == len(layers["logit_lens"]["tuned"]) == depth + 1
        assert max(layers["weight_change"]) > 0  # both strategies trained something
        ran = {stage for cell, stage, state in events if cell == run.name and state == "done"}
        assert set(CHECK_STAGES) <= ran


def test_report_shows_the_three_sections_with_their_figures(study):
    out, _ = study
    html = (out / "report.html").read_text()
    for section, figure in (("faithfulness", "faithfulness.png"), ("robustness", "robustness.png"),
                            ("layers", "layers.png")):
        assert f'<section id="{section}">' in html
        assert (out / "figures" / figure).stat().st_size > 0
    assert "full fine-tuning" in html and "LoRA" in html
    assert "nats against" in html or "no method's top tokens" in html
    assert html.count("Robustness: ") == 2  # a sentence per strategy (few steps: rules may not parse)
    assert "the weights moved most in layer" in html and "(2 layers)" in html


def test_findings_name_the_best_and_worst_probe_kind_with_intervals():
    from tunelens.layout import RunIdentity
    from tunelens.report.checks import robustness_findings, robustness_summary

    def probes(kind, correct):
        return [{"kind": kind, "status": "scored", "correct": c} for c in correct]

    run = RunIdentity("m", "lora", "instruct", seed=0)
    data = {"kinds": {"number": {}, "jurisdiction": {}},
            "probes": probes("jurisdiction", [True] * 9 + [False]) + probes("number", [True, False] * 5)
            + [{"kind": "number", "status": "unparsed", "correct": None}]}
    summary = robustness_summary([(run, data)])
    assert summary["lora"]["jurisdiction"]["n"] == 10 and summary["lora"]["number"]["rate"] == 0.5
    lo, hi = summary["lora"]["jurisdiction"]["interval"]
    assert lo < 0.9 <= hi
    (text,) = robustness_findings(summary)
    assert text.startswith("Robustness: LoRA's rule stayed when a place was renamed in 90% [")
    assert "but followed a doubled number in only 50% [" in text and text.endswith("of 10 (1 run).")
    # a kind with one scored probe (rate 0) is in the table, not in the sentence
    data["probes"] += probes("section", [False])
    (text,) = robustness_findings(robustness_summary([(run, data)]))
    assert "section" not in text and "but followed a doubled number in only 50%" in text


def test_checks_are_skipped_while_their_inputs_are_unchanged(study):
    from tunelens.matrix import expand_matrix
    from tunelens.study import CellStatus, seeded

    out, _ = study
    config = load_study(out / "study.yaml")
    events = []
    runner = StudyRunner(config, out, on_event=lambda *e: events.append(e))
    for cell in expand_matrix(config):
        run_checks(runner, cell, CellStatus(cell.identity), runner.model_path(cell.model),
                   seeded(config.explanation, cell.seed).seed)
    assert {(stage, state) for _, stage, state in events} == {(s, "skipped") for s in CHECK_STAGES}


def test_a_check_switched_off_writes_nothing(study):
    out, _ = study
    study_cfg = load_study(out / "study.yaml")
    off = study_cfg.model_copy(update={"checks": type(study_cfg.checks)()})
    runner = StudyRunner(off, out / "elsewhere")
    calls = []
    runner.run_stage = lambda *args: calls.append(args)
    from tunelens.matrix import expand_matrix

    for cell in expand_matrix(off):
        run_checks(runner, cell, None, "unused", 0)
    assert calls == [] and not (out / "elsewhere").exists()
    assert load_study(out / "study.yaml").checks.probes.enabled  # written as resolved
    assert not type(study_cfg.checks)().faithfulness.enabled  # off by default


def test_probe_kinds_are_the_probe_modules_and_unknown_ones_fail_at_load():
    from tunelens.config import parse_study
    from tunelens.errors import TunelensError
    from tunelens.explain.checks_settings import PROBE_KINDS
    from tunelens.explain.probes import KINDS

    assert PROBE_KINDS == tuple(KINDS)
    with pytest.raises(TunelensError, match=r"checks\.probes\.kinds.*unknown probe kind"):
        parse_study({"models": [{"name": "m", "path": "p"}], "checks": {"probes": {"kinds": ["color"]}}})


def test_the_checks_of_a_cell_share_one_load_made_only_when_one_runs(monkeypatch, tmp_path):
    from tunelens.explain.check_stages import OneLoad

    calls = []
    monkeypatch.setattr("tunelens.models.loading.load_placed",
                        lambda model, settings: calls.append((model, settings.dtype)) or ("llm", "tok"))
    loaded = OneLoad(tmp_path)
    assert calls == []  # every check skipped: nothing loaded
    assert loaded() == ("llm", "tok") and loaded() == ("llm", "tok")
    assert calls == [(str(tmp_path), "float32")]  # once, in the run's recorded (here: default) dtype
