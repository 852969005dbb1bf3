"""A micro study (one zoo model, one strategy, a 60-row source file) run for real: stamps keyed on
content, Ctrl-C and SIGKILL in a subprocess, MLflow kept inside the study folder."""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tunelens.config import load_study
from tunelens.layout import StudyLayout
from tunelens.study import STAGES, StudyRunner

pytestmark = pytest.mark.slow

MICRO_YAML = """
name: micro
models: [{{name: q1, path: "zoo:quick/tl-q1"}}]
strategies: [lora]
objectives: [instruct]
data: {{source: "{source}", val_fraction: 0.15, test_fraction: 0.2}}
train: {{max_steps: 3, batch_size: 4, max_length: 96, logging_steps: 1}}
generation: {{max_new_tokens: 10, max_examples: 3}}
evaluation: {{bootstrap_samples: 20}}
explanation: {{max_examples: 2}}
comparison: {{bootstrap_samples: 20, permutations: 20}}
report: {{heatmap_examples: 1}}
"""
ENTRY = "from tunelens.cli import entry; entry()"


@pytest.fixture(scope="module")
def zoo_root(quick_zoo_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("zoo-root")
    (root / "quick").symlink_to(quick_zoo_dir, target_is_directory=True)
    return root


@pytest.fixture()
def micro(tmp_path):
    """(study YAML, source JSONL): 20 bundled clauses each of stairs, ramps and doors."""
    from tunelens.data.compliance.dataset import bundled_rows

    rows, per_topic = [], {}
    for row in bundled_rows(seed=0):
        if row["topic"] in ("stairs", "ramps", "doors") and per_topic.get(row["topic"], 0) < 20:
            per_topic[row["topic"]] = per_topic.get(row["topic"], 0) + 1
            rows.append({k: row[k] for k in ("id", "topic", "source", "prompt", "completion")})
    source = tmp_path / "clauses.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    study = tmp_path / "micro.yaml"
    study.write_text(MICRO_YAML.format(source=source))
    return study, source


def _run(study_file: Path, out: Path, zoo_root: Path, **changes) -> list[tuple[str, str]]:
    """Run the study in this process; return the (cell, stage) pairs that ran."""
    study = load_study(study_file)
    for section, values in changes.items():
        study = study.model_copy(update={section: getattr(study, section).model_copy(update=values)})
    events: list[tuple[str, str, str]] = []
    statuses = StudyRunner(study, out, zoo_root=zoo_root, origin=str(study_file),
                           on_event=lambda *e: events.append(e)).run()
    assert [s.status for s in statuses] == ["ok"]
    return [(cell, stage) for cell, stage, state in events if state == "done"
            and stage in ("data", *STAGES)]


def _aggregates(out: Path) -> dict:
    return {p.stem: json.loads(p.read_text())["aggregate"]
            for p in sorted(StudyLayout(out).metrics_dir.glob("*.json"))}


def _rerun_changes(study_file, out, zoo_root, cell, **changes) -> tuple[list, bool]:
    """Rerun; return what ran and whether the predictions changed (evaluate reads only them)."""
    predictions = StudyLayout(out).predictions_dir / f"{cell}.jsonl"
    before = predictions.read_bytes()
    ran = _run(study_file, out, zoo_root, **changes)
    return ran, predictions.read_bytes() != before


def test_stamps_follow_the_content_of_what_each_stage_reads(micro, zoo_root, tmp_path,
                                                            monkeypatch, capfd):
    study_file, source = micro
    monkeypatch.chdir(tmp_path)  # MLflow must not fall back to ./mlruns of the working folder
    out = tmp_path / "study"
    cell = "q1__lora__instruct__s0"
    every = [("data", "data")] + [(cell, s) for s in STAGES]
    assert _run(study_file, out, zoo_root) == every
    assert "━" not in capfd.readouterr().err  # no stage draws its own bar inside a study
    layout = StudyLayout(out)
    status = json.loads(layout.status.read_text())["cells"][0]
    assert (status["run"], status["model"], status["strategy"], status["rag"]) == \
        (cell, "q1", "lora", False)
    assert json.loads((layout.runs / f"{cell}.json").read_text())["objective"] == "instruct"
    assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
    assert list(layout.mlflow_artifacts.rglob("run.json"))  # the training run's artefacts

    os.utime(source)  # touched, not changed: nothing runs again
    assert _run(study_file, out, zoo_root) == []

    trained_ids = {json.loads(line)["id"] for line in (layout.data / "train.jsonl").open()}
    lines = source.read_text().splitlines()
    i = next(i for i, line in enumerate(lines) if json.loads(line)["id"] in trained_ids)
    row = json.loads(lines[i])
    lines[i] = json.dumps({**row, "completion": row["completion"] + " edited"})
    source.write_text("\n".join(lines) + "\n")  # one training row edited: data, then the rest
    ran, changed = _rerun_changes(study_file, out, zoo_root, cell)
    assert ran == [e for e in every if e != (cell, "evaluate") or changed]

    # generation settings feed generate, evaluate and explain (target 'both' explains the output)
    ran, changed = _rerun_changes(study_file, out, zoo_root, cell,
                                  generation={"max_new_tokens": 1})  # shorter than any output
    assert changed and ran == [(cell, "generate"), (cell, "evaluate"), (cell, "explain")]
    _run(study_file, out, zoo_root, explanation={"target": "reference"})
    # explaining the reference only, explain reads the references, not the generations
    ran, changed = _rerun_changes(study_file, out, zoo_root, cell,
                                  generation={"max_new_tokens": 1},
                                  explanation={"target": "reference"})
    assert changed and ran == [(cell, "generate"), (cell, "evaluate")]


def test_each_seed_trains_its_own_model_and_a_seed_reruns_identically(micro, zoo_root, tmp_path,
                                                                      monkeypatch):
    """Two seeds: two models per cell, with different weights and losses; the seed-1 replicate
    of a one-seed study is the seed-1 replicate of the two-seed study, metric for metric."""
    from safetensors.numpy import load_file

    study_file, _ = micro
    monkeypatch.chdir(tmp_path)
    study = load_study(study_file)
    two = study.model_copy(update={"seeds": [0, 1]})
    statuses = StudyRunner(two, tmp_path / "two", zoo_root=zoo_root).run()
    assert [s.run for s in statuses] == ["q1__lora__instruct__s0", "q1__lora__instruct__s1"]
    assert all(s.status == "ok" for s in statuses)
    layout = StudyLayout(tmp_path / "two")
    runs = [json.loads(layout.run_json(s.identity).read_text()) for s in statuses]
    assert [r["identity"]["seed"] for r in runs] == [0, 1]
    assert runs[0]["train_loss"] != runs[1]["train_loss"]
    weights = [load_file(next(layout.model_dir(s.identity).glob("*.safetensors")))
               for s in statuses]
    assert any((weights[0][k] != weights[1][k]).any() for k in weights[0])
    for s in statuses:
        assert layout.predictions(s.identity).exists() and layout.attributions(s.identity).exists()
    assert layout.report.exists()  # compare and report read a study of replicates

    one = study.model_copy(update={"seeds": [1]})
    StudyRunner(one, tmp_path / "one", zoo_root=zoo_root).run()
    again = _aggregates(tmp_path / "one")
    assert list(again) == ["q1__lora__instruct__s1"]
    assert again["q1__lora__instruct__s1"] == _aggregates(tmp_path / "two")["q1__lora__instruct__s1"]


def test_parallel_jobs_give_the_serial_results_and_resume_serially(micro, zoo_root, tmp_path):
    """--jobs 2: the seeds train in two worker processes, with the same metrics as one process,
    their progress reaches the parent, their MLflow runs nest under the study run, and a serial
    rerun finds every stage done (the same stamps)."""
    import mlflow

    study_file, _ = micro
    study = load_study(study_file).model_copy(update={"seeds": [0, 1]})
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    StudyRunner(study, serial, zoo_root=zoo_root).run()
    events: list[tuple[str, str, str]] = []
    runner = StudyRunner(study, parallel, zoo_root=zoo_root, jobs=2, threads=1,
                         on_event=lambda *e: events.append(e))
    statuses = runner.run()
    assert [s.status for s in statuses] == ["ok", "ok"]
    assert _aggregates(parallel) == _aggregates(serial)
    done = {(cell, stage) for cell, stage, state in events if state == "done"}
    assert {(s.run, stage) for s in statuses for stage in STAGES} <= done
    status = json.loads(StudyLayout(parallel).status.read_text())
    assert status["jobs"] == 2 and status["wall_seconds"] > 0
    assert all(c["stages"].keys() == set(STAGES) for c in status["cells"])

    client = mlflow.MlflowClient(f"sqlite:///{StudyLayout(parallel).mlflow_db}")
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    parent = [r for r in runs if r.info.run_name.startswith("study:")]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent[0].info.run_id]
    assert len(parent) == 1 and {r.info.run_name for r in children} == {s.run for s in statuses}

    events.clear()
    StudyRunner(study, parallel, zoo_root=zoo_root, on_event=lambda *e: events.append(e)).run()
    assert not [e for e in events if e[1] in STAGES and e[2] == "done"]


def _start(study_file: Path, out: Path, zoo_root: Path, *extra: str, **popen) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", ENTRY, "run", str(study_file), "--out", str(out),
                             "--zoo", str(zoo_root), "--threads", "1", *extra],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **popen)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    """Until ``path`` exists (the study got past its imports and checks)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.05)


def test_first_ctrl_c_stops_the_study_with_exit_code_130(micro, zoo_root, tmp_path):
    study_file, _ = micro
    out = tmp_path / "study"
    proc = _start(study_file, out, zoo_root)
    _wait_for(StudyLayout(out).stamps / "data.json", proc)
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert not StudyLayout(out).report.exists()


@pytest.mark.parametrize("whom", ["parent", "terminal"])
def test_ctrl_c_stops_parallel_workers_and_a_rerun_finishes(micro, zoo_root, tmp_path, whom):
    """--jobs 2, interrupted once training runs: SIGINT to the parent alone, or to the whole
    process group as a terminal's Ctrl-C does. The study stops with 130 and leaves no worker
    behind; a serial rerun finishes every cell."""
    study_file, _ = micro
    study_file.write_text(study_file.read_text() + "seeds: [0, 1]\n")
    out = tmp_path / "study"
    proc = _start(study_file, out, zoo_root, "--jobs", "2", start_new_session=True)
    _wait_for(StudyLayout(out).mlflow_db, proc)  # the study's run exists: workers are next
    time.sleep(3.0)
    if whom == "parent":
        proc.send_signal(signal.SIGINT)
    else:
        os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=90)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    deadline = time.monotonic() + 10  # multiprocessing's resource tracker ends on its own
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _group_alive(proc.pid), subprocess.run(
        ["ps", "-o", "pid,args", "-g", str(proc.pid)], capture_output=True, text=True).stdout
    statuses = StudyRunner(load_study(study_file), out, zoo_root=zoo_root).run()
    assert [s.status for s in statuses] == ["ok", "ok"]
    assert StudyLayout(out).report.exists()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_at_a_random_moment_then_rerun_gives_the_same_metrics(micro, zoo_root, tmp_path):
    """Killed with SIGKILL anywhere (mid-write, mid-step, holding the lock and MLflow runs), a rerun
    finishes with the metrics of a study never interrupted."""
    import mlflow

    study_file, _ = micro
    started = time.monotonic()
    _run(study_file, tmp_path / "whole", zoo_root)
    duration = time.monotonic() - started
    expected = _aggregates(tmp_path / "whole")
    assert expected
    for seed in (0, 1, 2):
        out = tmp_path / f"killed-{seed}"
        proc = _start(study_file, out, zoo_root)
        _wait_for(out / ".lock.pid", proc)  # past imports and checks: the work begins
        time.sleep(random.Random(seed).uniform(0.0, duration))
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
        _run(study_file, out, zoo_root)
        assert _aggregates(out) == expected, f"seed {seed}"
        client = mlflow.MlflowClient(f"sqlite:///{StudyLayout(out).mlflow_db}")
        running = client.search_runs([e.experiment_id for e in client.search_experiments()],
                                     "attributes.status = 'RUNNING'")
        assert running == [], f"seed {seed}: runs left RUNNING"
