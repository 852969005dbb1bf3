"""The quick study end to end: every stage of every cell, resuming, a failing cell, MLflow runs."""

from __future__ import annotations

import json
import shutil

import pytest
import yaml

from tunelens.cli import main
from tunelens.config import load_study
from tunelens.matrix import expand_matrix
from tunelens.study import StudyRunner, bundled_example

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zoo_root(quick_zoo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo-root")
    (root / "quick").symlink_to(quick_zoo_dir, target_is_directory=True)
    return root


@pytest.fixture(scope="module")
def quick_study(zoo_root, tmp_path_factory):
    """The quick study, run once through the CLI; later tests read (and resume) its folder. Its
    checks (faithfulness, probes, layer views: ~20 s here) are switched off; test_study_checks.py
    runs them on a micro study."""
    base = tmp_path_factory.mktemp("study")
    raw = yaml.safe_load(bundled_example("quick.yaml").read_text())
    raw.pop("checks")
    (base / "quick.yaml").write_text(yaml.safe_dump(raw))
    out = base / "quick"
    code = main(["run", str(base / "quick.yaml"), "--out", str(out), "--zoo", str(zoo_root)])
    assert code == 0
    return out


def test_every_cell_writes_every_output(quick_study):
    study = load_study(quick_study / "study.yaml")
    cells = expand_matrix(study)
    status = json.loads((quick_study / "status.json").read_text())
    assert [c["status"] for c in status["cells"]] == ["ok"] * len(cells)
    for cell in cells:
        run = json.loads((quick_study / "models" / cell.train_name / "run.json").read_text())
        assert run["strategy"] == cell.identity.strategy and run["objective"] == cell.identity.objective
        preds = (quick_study / "predictions" / f"{cell.name}.jsonl").read_text().splitlines()
        assert len(preds) == study.generation.max_examples
        metrics = json.loads((quick_study / "metrics" / f"{cell.name}.json").read_text())
        assert 0.0 <= metrics["aggregate"]["rule_parse_rate"] <= 1.0
        assert (quick_study / "attributions" / f"{cell.name}.parquet").stat().st_size > 0
    assert list((quick_study / "stats").glob("*.json"))
    html = (quick_study / "report.html").read_text()
    assert "q2__lora__instruct__rag__s0" in html and "<img" in html


def test_rag_cell_reuses_its_twins_model_and_changes_the_prompt(quick_study):
    assert not (quick_study / "models" / "q2__lora__instruct__rag__s0").exists()
    rag = [json.loads(line) for line in
           (quick_study / "predictions" / "q2__lora__instruct__rag__s0.jsonl").read_text().splitlines()]
    assert all(row.get("retrieved") for row in rag)


def test_runs_are_tracked_as_children_of_the_study_run(quick_study):
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{quick_study / 'mlflow.db'}")
    exp = client.get_experiment_by_name("quick")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.info.run_name == "study:quick"]
    assert len(parents) == 1
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert len(children) >= 10  # one per trained model


def test_rerun_skips_everything_and_interrupted_work_resumes(quick_study, zoo_root):
    study = load_study(quick_study / "study.yaml")
    events: list[tuple[str, str, str]] = []
    runner = StudyRunner(study, quick_study, zoo_root=zoo_root,
                         on_event=lambda *e: events.append(e))
    runner.run()
    ran = [(c, s) for c, s, state in events if state == "done" and s in ("train", "generate",
                                                                         "evaluate", "explain")]
    assert ran == []
    # as if the study had been stopped during one cell's explain stage
    (quick_study / "attributions" / "q1__lora__instruct__s0.parquet").unlink()
    events.clear()
    StudyRunner(study, quick_study, zoo_root=zoo_root, on_event=lambda *e: events.append(e)).run()
    ran = [(c, s) for c, s, state in events if state == "done" and s in ("train", "generate",
                                                                         "evaluate", "explain")]
    assert ran == [("q1__lora__instruct__s0", "explain")]


def test_a_failing_cell_is_recorded_and_the_rest_go_on(quick_study, zoo_root, tmp_path):
    study = load_study(quick_study / "study.yaml")
    study = study.model_copy(update={
        "models": [study.models[0], study.models[0].model_copy(update={"name": "broken",
                                                                      "path": str(tmp_path)})],
        "strategies": ["lora"], "extra_cells": [], "rag": study.rag.model_copy(update={"enabled": [False]}),
    })
    out = tmp_path / "partial"
    shutil.copytree(quick_study / "data", out / "data")
    statuses = StudyRunner(study, out, zoo_root=zoo_root).run()
    by_run = {s.run: s for s in statuses}
    assert by_run["q1__lora__instruct__s0"].status == "ok"
    assert by_run["broken__lora__instruct__s0"].status == "failed"
    assert "cannot load" in by_run["broken__lora__instruct__s0"].error
    assert "broken__lora__instruct__s0" in (out / "report.html").read_text()


def test_dry_run_prints_the_matrix_and_runs_nothing(tmp_path, capsys):
    assert main(["run", str(bundled_example("code-compliance.yaml")), "--dry-run",
                 "--out", str(tmp_path / "s")]) == 0
    out = capsys.readouterr().out
    assert "d3__lora__instruct__rag" in out and "train steps" in out
    assert not (tmp_path / "s").exists()
