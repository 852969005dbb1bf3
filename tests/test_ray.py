"""A study on a real Ray cluster (``ray start --head`` on loopback, 2 CPUs, stopped afterwards):
the same run folders, metrics and attributions as the local backend, a worker killed mid-task
loses no cell, and a study resumes across backends. Then the backend flags, checked before any
work.

Attribution sharded over Ray tasks (``--explain-shards``) is not run here: each shard task is a
fresh worker importing torch, 10-20 s on a busy 2-core machine; tests/test_shard.py checks the
merge, and docs/scale-out.md records the run by hand."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd
import pytest

from tunelens.config import load_study
from tunelens.layout import StudyLayout
from tunelens.study import STAGES, StudyRunner

STUDY_YAML = """
name: on-ray
models: [{{name: m, path: "{model}"}}]
strategies: [full]
objectives: [instruct]
data: {{source: "{source}", val_fraction: 0.2, test_fraction: 0.2}}
train: {{max_steps: 2, batch_size: 4, max_length: 128, logging_steps: 1}}
generation: {{max_new_tokens: 4, max_examples: 2}}
evaluation: {{bootstrap_samples: 10}}
explanation: {{max_examples: 2}}
comparison: {{bootstrap_samples: 10, permutations: 10}}
report: {{heatmap_examples: 0, dpi: 50}}
tracking: {{enabled: false}}
"""


@contextlib.contextmanager
def _cluster():
    """A Ray head on loopback with 2 CPUs, in its own session: at the end every process of that
    session (head, raylet, workers) is killed by id, whatever happened. Yields (address, a
    callable that waits until the head is up)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    temp = tempfile.mkdtemp(prefix="tunelens-ray")  # Ray's socket paths must stay short
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--num-cpus", "2",
         "--port", str(port), "--node-ip-address", "127.0.0.1", "--include-dashboard=false",
         "--disable-usage-stats", "--temp-dir", temp],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)

    def ready() -> str:
        _, err = head.communicate(timeout=120)
        assert head.returncode == 0, err
        return f"127.0.0.1:{port}"

    try:
        yield ready
    finally:
        with contextlib.suppress(Exception):
            import ray

            ray.shutdown()
        for pid in _session(head.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(temp, ignore_errors=True)


def _session(sid: int) -> list[int]:
    """The processes of session ``sid`` (field 6 of /proc/PID/stat)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid:
                out.append(int(stat.parent.name))
    return out


def _running_task(name: str) -> int | None:
    """The worker process whose title says it is running task ``name`` (Ray sets ray::<name>)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if cmdline.read_bytes().startswith(f"ray::{name}".encode()):
                return int(cmdline.parent.name)
    return None


@pytest.fixture()
def study_file(micro_model_dir, tmp_path):
    from tunelens.data.compliance.dataset import bundled_rows

    rows, per_topic = [], {}
    for row in bundled_rows(seed=0):
        if row["topic"] in ("stairs", "ramps", "doors") and per_topic.get(row["topic"], 0) < 10:
            per_topic[row["topic"]] = per_topic.get(row["topic"], 0) + 1
            rows.append({k: row[k] for k in ("id", "topic", "source", "prompt", "completion")})
    source = tmp_path / "clauses.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    path = tmp_path / "study.yaml"
    path.write_text(STUDY_YAML.format(model=micro_model_dir, source=source))
    return path


def _outputs(out: Path) -> tuple[list[str], dict]:
    """The study folder's run files (relative names) and each run's aggregate metrics."""
    layout = StudyLayout(out)
    files = sorted(str(p.relative_to(out)) for sub in (layout.models, layout.predictions_dir,
                   layout.metrics_dir, layout.attributions_dir, layout.runs)
                   for p in sub.rglob("*") if p.is_file() and "checkpoint" not in str(p))
    metrics = {p.stem: json.loads(p.read_text())["aggregate"] for p in layout.metrics_dir.glob("*.json")}
    return files, metrics


def _done(events: list[tuple[str, str, str]]) -> list[tuple[str, str]]:
    return [(cell, stage) for cell, stage, state in events if state == "done" and stage in STAGES]


@pytest.mark.slow
def test_a_study_on_ray_matches_local_survives_a_killed_worker_and_resumes_across(study_file,
                                                                                   tmp_path):
    pytest.importorskip("ray")
    study = load_study(study_file)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    with _cluster() as ready:
        StudyRunner(study, local).run()  # while the head starts
        address = ready()
        killed: list[int] = []
        events: list[tuple[str, str, str]] = []

        def on_event(cell: str, stage: str, state: str) -> None:
            events.append((cell, stage, state))
            if (stage, state) == ("train", "running") and not killed:
                pid = _running_task(f"tunelens:{cell}")
                assert pid is not None, "no Ray worker is running the cell's task"
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)

        statuses = StudyRunner(study, on_ray, backend="ray", address=address,
                               on_event=on_event).run()
        assert killed and [s.status for s in statuses] == ["ok"]
        assert [e for e in events if e[1:] == ("train", "running")] == \
            [(statuses[0].run, "train", "running")] * 2  # the task ran again after the kill
        status = json.loads(StudyLayout(on_ray).status.read_text())
        assert status["backend"] == "ray" and set(status["cells"][0]["stages"]) == set(STAGES)
        ray_files, ray_metrics = _outputs(on_ray)
        local_files, local_metrics = _outputs(local)
        assert ray_files == local_files and ray_metrics.keys() == local_metrics.keys()
        attributions = StudyLayout(local).attributions(statuses[0].identity)
        pd.testing.assert_frame_equal(
            pd.read_parquet(attributions), pd.read_parquet(on_ray / attributions.relative_to(local)))
        for run, aggregate in ray_metrics.items():
            for metric, value in aggregate.items():
                expected = local_metrics[run][metric]
                assert value == (expected if expected is None else pytest.approx(expected, abs=1e-6))

        events.clear()  # the local study resumed on Ray: every stage was done
        StudyRunner(study, local, backend="ray", address=address,
                    on_event=lambda *e: events.append(e)).run()
        assert _done(events) == [] and any(e[2] == "skipped" for e in events)
    events.clear()  # and the Ray study resumed locally
    skipped = [(stage, "skipped") for stage in STAGES]
    StudyRunner(study, on_ray, on_event=lambda *e: events.append(e)).run()
    assert _done(events) == [] and len([e for e in events if e[1:] in skipped]) == len(STAGES)


@pytest.mark.parametrize(("verb", "args", "message"), [
    ("run", ["--address", "auto"], "--address names a Ray cluster: it needs --backend ray"),
    ("run", ["--backend", "ray", "--jobs", "2"], "--jobs is the local backend's"),
    ("run", ["--backend", "dask"], "--backend 'dask': expected one of local, ray"),
    ("run", ["--backend", "ray"], "--backend ray needs Ray, tunelens' 'scale' extra"),
    ("explain", ["--shards", "2", "--backend", "ray"], "--backend ray needs Ray"),
    ("explain", ["--shards", "2", "--address", "auto"], "--address names a Ray cluster"),
])
def test_backend_flags_are_checked_before_any_work(micro_model_dir, tmp_path, monkeypatch, capsys,
                                                   verb, args, message):
    """One line, exit 2, nothing written: a flag the backend would ignore, or Ray missing."""
    from tunelens.cli import main

    monkeypatch.setitem(sys.modules, "ray", None)  # as if the scale extra were not installed
    source, study_file, out = tmp_path / "rows.jsonl", tmp_path / "study.yaml", tmp_path / "out"
    source.write_text(json.dumps({"id": "a", "prompt": "A clause.", "completion": "RULE 1 a.b >= 1 mm"}))
    study_file.write_text(STUDY_YAML.format(model=micro_model_dir, source=source))
    where = ([str(study_file), "--out", str(out)] if verb == "run" else
             ["--model", str(micro_model_dir), "--data", str(source), "--out", str(out / "a.parquet")])
    assert main([verb, *where, *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and not out.exists()
