"""What guards a study, without training anything: the folder check, the lock, Ctrl-C, exit codes,
and where MLflow puts things."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tunelens.cli import main
from tunelens.config import parse_study
from tunelens.errors import TunelensError
from tunelens.guard import Interrupts, check_study_folder, study_lock
from tunelens.layout import StudyLayout
from tunelens.study import CellStatus, StudyRunner

STUDY_YAML = """
name: tiny
models: [{name: t, path: "org/tiny-model"}]
"""


@pytest.fixture()
def study_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(STUDY_YAML)
    return path


# -- the study folder ------------------------------------------------------------------------

def test_out_that_is_a_file_is_refused_in_one_line(tmp_path, study_file, capsys):
    out = tmp_path / "taken"
    out.write_text("not a folder")
    assert main(["run", str(study_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out}: is a file, expected a folder" in err and len(err.strip().splitlines()) == 1


def test_a_file_where_the_study_expects_a_folder_is_refused(tmp_path):
    (tmp_path / "models").write_text("oops")
    with pytest.raises(TunelensError, match=r"models: is a file where the study expects a folder"):
        check_study_folder(StudyLayout(tmp_path))


def test_an_unwritable_place_is_refused_before_any_work(tmp_path, study_file, capsys):
    # /proc refuses new files even to root, for whom os.access says yes on a read-only mount
    out = "/proc/tunelens-study/nested"
    assert main(["run", str(study_file), "--out", out]) == 2
    err = capsys.readouterr().err
    assert "cannot write there, /proc is not writable" in err


def test_an_existing_study_folder_that_takes_no_files_is_refused():
    """The study writes *into* its folder: an existing folder that refuses files (here /proc, which
    refuses even root) fails the check although its parent is writable."""
    with pytest.raises(TunelensError, match=r"status.json: cannot write there, /proc is not writable"):
        check_study_folder(StudyLayout("/proc"))


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_refused(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(TunelensError, match="not writable"):
            check_study_folder(StudyLayout(ro / "study"))
    finally:
        ro.chmod(0o755)


# -- one run at a time -------------------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from tunelens.guard import study_lock
    from tunelens.layout import StudyLayout
    with study_lock(StudyLayout(sys.argv[1])):
        print("held", flush=True)
        time.sleep(60)
""")


def test_a_second_run_on_a_locked_folder_exits_2_naming_the_holder(tmp_path, study_file, capsys):
    out = tmp_path / "study"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["run", str(study_file), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"study folder {out} is in use by another tunelens process (PID {holder.pid})" in err
        assert not (out / "study.yaml").exists()  # nothing of the refused run was written
    finally:
        holder.kill()
        holder.wait()
    with study_lock(StudyLayout(out)):  # the kernel released the killed holder's lock
        assert StudyLayout(out).lock_pid.read_text() == str(os.getpid())
    assert not StudyLayout(out).lock_pid.exists()


# -- Ctrl-C ------------------------------------------------------------------------------------

def test_interrupt_handler_records_and_raises_and_is_restored():
    before = signal.getsignal(signal.SIGINT)
    with Interrupts() as stop:
        assert signal.getsignal(signal.SIGINT) == stop.handler
        stop.check()  # nothing asked yet
        with pytest.raises(KeyboardInterrupt):
            stop.handler(signal.SIGINT, None)
        assert stop.requested
        with pytest.raises(KeyboardInterrupt):  # even if the first was swallowed by a __del__
            stop.check()
    assert signal.getsignal(signal.SIGINT) == before


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
def test_a_ctrl_c_swallowed_in_a_destructor_still_stops_the_study(tmp_path):
    """Python drops an exception raised in __del__; the runner must stop at the next check."""

    class Noisy:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(10_000):  # the handler runs in this loop; Python drops its raise
                pass

    events = []
    runner = StudyRunner(parse_study({"models": [{"name": "t", "path": "org/tiny"}]}),
                         tmp_path / "s", on_event=lambda *e: events.append(e))
    with runner.interrupts:
        Noisy()  # collected at once: the interrupt is printed as "ignored", not raised
        time.sleep(0.05)
        assert runner.interrupts.requested
        with pytest.raises(KeyboardInterrupt):
            runner.event("data", "data", "running")
    assert events == []


# -- exit codes ----------------------------------------------------------------------------------

def _fake_run(statuses=None, exc=None):
    def run(self):
        if exc is not None:
            raise exc
        return statuses
    return run


def test_exit_code_1_lists_the_failed_cells(monkeypatch, study_file, tmp_path, capsys):
    from tunelens.layout import RunIdentity

    ok = CellStatus(RunIdentity("t", "lora", "instruct"), status="ok")
    bad = CellStatus(RunIdentity("t", "full", "instruct"), status="failed", error="ValueError: x")
    monkeypatch.setattr(StudyRunner, "run", _fake_run([ok, bad]))
    assert main(["run", str(study_file), "--out", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert "failed t__full__instruct: ValueError: x" in err and "t__lora__instruct" not in err


def test_exit_code_0_when_every_cell_ran(monkeypatch, study_file, tmp_path):
    from tunelens.layout import RunIdentity

    ok = CellStatus(RunIdentity("t", "lora", "instruct"), status="ok")
    monkeypatch.setattr(StudyRunner, "run", _fake_run([ok]))
    assert main(["run", str(study_file), "--out", str(tmp_path / "s")]) == 0


def test_exit_code_130_when_interrupted(monkeypatch, study_file, tmp_path, capsys):
    monkeypatch.setattr(StudyRunner, "run", _fake_run(exc=KeyboardInterrupt()))
    assert main(["run", str(study_file), "--out", str(tmp_path / "s")]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_exit_code_2_for_bad_input_and_usage_errors(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such file" in capsys.readouterr().err
    assert main(["no-such-verb"]) == 2  # Typer's usage error, through the public exception type
    assert main(["run", "x.yaml", "--threads", "0"]) == 2


def test_help_documents_the_exit_codes(capsys):
    for verb in ("run", "demo"):
        assert main([verb, "--help"]) == 0
        text = " ".join(capsys.readouterr().out.split())
        assert "Exit codes: 0 every cell ran; 1 some cells failed" in text
        assert "130 interrupted" in text


# -- MLflow --------------------------------------------------------------------------------------

def test_study_tracking_keeps_artifacts_in_the_study_and_marks_stale_runs_killed(
        tmp_path, monkeypatch):
    import mlflow

    from tunelens.train.tracking import STUDY_TAG, track_study

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "study"
    out.mkdir()
    layout = StudyLayout(out)
    study = parse_study({"name": "tiny", "models": [{"name": "t", "path": "org/tiny"}]})
    previous = mlflow.get_tracking_uri()
    try:
        with track_study(study, layout) as tracking:
            run = mlflow.active_run()
            mlflow.log_text("hello", "note.txt")
            client = mlflow.MlflowClient(tracking.uri)
            exp = client.get_experiment(run.info.experiment_id)
            stale = client.create_run(exp.experiment_id, tags={STUDY_TAG: str(out.resolve())})
            other = client.create_run(exp.experiment_id, tags={STUDY_TAG: "/elsewhere"})
        assert exp.artifact_location == layout.mlflow_artifacts.resolve().as_uri()
        assert list(layout.mlflow_artifacts.rglob("note.txt"))
        assert not (tmp_path / "mlruns").exists() and not (tmp_path / "mlartifacts").exists()
        assert client.get_run(stale.info.run_id).info.status == "RUNNING"
        with track_study(study, layout):  # the resume
            pass
        assert client.get_run(stale.info.run_id).info.status == "KILLED"
        assert client.get_run(other.info.run_id).info.status == "RUNNING"  # not this study's
        assert client.get_run(run.info.run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri(previous)


def test_training_runs_of_a_study_are_tagged_with_the_study_and_use_its_store(tmp_path):
    from tunelens.train.tracking import default_store_dir, resolve_uri, study_of

    study = tmp_path / "s"
    assert study_of(study / "models" / "r") == StudyLayout(study.resolve())
    assert study_of(tmp_path / "elsewhere" / "r") is None
    assert default_store_dir(study / "models" / "r") == study.resolve()
    assert resolve_uri(study / "models" / "r", None) == f"sqlite:///{study.resolve() / 'mlflow.db'}"
    assert resolve_uri(tmp_path / "x" / "r", None) == f"sqlite:///{(tmp_path / 'x').resolve() / 'mlflow.db'}"


def test_a_new_sqlite_store_appears_complete_or_not_at_all(tmp_path):
    """MLflow migrates a new database in many transactions; a kill among them used to leave one
    that no later run could open ("table ... already exists")."""
    from mlflow import MlflowClient

    from tunelens.train.tracking import ensure_sqlite_store

    db = tmp_path / "mlflow.db"
    (tmp_path / ".mlflow.db.999.tmp").write_text("half a schema")  # left by a killed attempt
    ensure_sqlite_store(f"sqlite:///{db}", clean=True)
    assert db.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["mlflow.db"]
    assert [e.name for e in MlflowClient(f"sqlite:///{db}").search_experiments()] == ["Default"]


def test_compare_and_report_check_their_out_before_any_work(tmp_path, capsys):
    study = tmp_path / "study"
    study.mkdir()
    a_file = tmp_path / "stats.json"
    a_file.write_text("{}")
    assert main(["compare", "--study", str(study), "--out", str(a_file)]) == 2
    assert f"{a_file}: is a file, expected a folder" in capsys.readouterr().err
    assert main(["report", "--study", str(study), "--out", str(tmp_path)]) == 2
    assert f"{tmp_path}: is a folder, expected a file path" in capsys.readouterr().err


def test_a_worker_asked_to_stop_checkpoints_training_at_the_next_step(monkeypatch):
    """A SIGINT sent to the parent alone reaches no worker: training polls the stop flag."""
    from types import SimpleNamespace

    from tunelens.train import callbacks

    cb = callbacks.InterruptCheckpoint()
    control = SimpleNamespace(should_save=False, should_training_stop=False)
    state = SimpleNamespace(global_step=7)
    cb.on_step_end(None, state, control)
    assert not control.should_training_stop  # nobody asked
    monkeypatch.setattr(callbacks, "external_stop", lambda: True)
    cb.on_step_end(None, state, control)
    assert control.should_save and control.should_training_stop and cb.interrupted_at == 7
