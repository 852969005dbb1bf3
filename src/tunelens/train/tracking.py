"""MLflow tracking of training runs, through MlflowClient (no global active run, no autolog).

The default store is a SQLite file in the study folder: a run written to a study's ``models/``
folder (:class:`~tunelens.layout.StudyLayout`) is tracked in ``<study>/mlflow.db`` with its
artefacts in ``<study>/mlartifacts``; a run folder anywhere else is tracked in ``mlflow.db`` beside
it (``<out>/../mlflow.db``), artefacts in ``mlartifacts/`` beside the database. MLflow's own default
artefact root is ``./mlruns`` of whatever folder the command runs from, so every experiment we
create for a local store gets an explicit ``artifact_location``. Any other URI
(``--tracking-uri http://...``) is used as given, with the server's artefact store.

When an MLflow run is already active on the same store (the study runner's parent run), the
training run is created in its experiment, nested under it, unless another experiment is asked for.

The run is created before training starts, so an unreachable server fails the command early,
and filled in at the end in a few batched calls (params, per-step losses, run.json), which keeps
tracking off the training loop's hot path. A process killed with SIGKILL cannot end its runs; the
study runner marks the runs it left ``RUNNING`` as ``KILLED`` when the study is resumed
(:func:`mark_killed`, keyed on the :data:`STUDY_TAG` every run of a study carries).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunelens.config import Study, TrackingConfig
from tunelens.errors import TunelensError
from tunelens.layout import StudyLayout

DEFAULT_EXPERIMENT = "tunelens"
STUDY_TAG = "tunelens.study"  # the study folder a run belongs to: what a resume looks for


def study_of(out: Path) -> StudyLayout | None:
    """The study whose ``models/`` folder holds the run folder ``out``, if it is one."""
    out = Path(out).resolve()
    layout = StudyLayout(out.parent.parent)
    return layout if layout.models == out.parent else None


def default_store(out: Path) -> StudyLayout:
    """Whose ``mlflow.db`` and ``mlartifacts`` a run written to ``out`` is tracked in by default:
    its study's, or, for a run folder anywhere else, the folder beside it, laid out the same way."""
    return study_of(out) or StudyLayout(Path(out).resolve().parent)


def default_store_dir(out: Path) -> Path:
    """The folder that holds the default SQLite store for a run written to ``out``."""
    return default_store(out).root


def resolve_uri(out: Path, tracking: TrackingConfig | None) -> str:
    if tracking is not None and tracking.uri:
        return tracking.uri
    return f"sqlite:///{default_store(out).mlflow_db}"


def local_artifacts(uri: str, fallback: Path | None = None) -> str | None:
    """Where artefacts of a new experiment on ``uri`` go: ``fallback`` (e.g. the study's
    ``mlartifacts``) or ``mlartifacts`` beside a SQLite file; None for a server, which has its own.
    """
    if uri.startswith(("http://", "https://", "databricks")):
        return None
    if fallback is None and uri.startswith("sqlite:///"):
        fallback = StudyLayout(Path(uri[len("sqlite:///"):]).parent).mlflow_artifacts
    return Path(fallback).resolve().as_uri() if fallback is not None else None


def ensure_sqlite_store(uri: str, clean: bool = False) -> None:
    """Create a new SQLite store complete in a temporary file, then rename it into place.

    MLflow creates its schema in dozens of migration steps, each its own transaction: a process
    killed among them (SIGKILL, a power cut) leaves a database that every later run fails to open
    ("table ... already exists"). A file renamed into place only when complete cannot be
    half-made. ``clean`` removes temporary files of earlier, killed attempts (only safe while
    holding the study's lock).
    """
    if not uri.startswith("sqlite:///"):
        return
    db = Path(uri[len("sqlite:///"):])
    if clean:
        for stale in db.parent.glob(f".{db.name}.*.tmp"):
            stale.unlink(missing_ok=True)
    if db.exists():
        return
    from mlflow import MlflowClient

    db.parent.mkdir(parents=True, exist_ok=True)
    tmp = db.with_name(f".{db.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        MlflowClient(tracking_uri=f"sqlite:///{tmp}").search_experiments(max_results=1)
        os.replace(tmp, db)
    finally:
        tmp.unlink(missing_ok=True)


def ensure_experiment(client, name: str, artifact_location: str | None) -> str:
    """The id of experiment ``name``, created with ``artifact_location`` when it is new."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def mark_killed(client, experiment_id: str, study_root: Path) -> int:
    """Mark ``KILLED`` the runs of this study still ``RUNNING``; return how many.

    Only called while the study's lock is held, so no live process owns such a run: it was left
    by one killed before it could end it.
    """
    root = str(Path(study_root).resolve())
    stale = [r for r in client.search_runs([experiment_id], "attributes.status = 'RUNNING'",
                                           max_results=5000)
             if r.data.tags.get(STUDY_TAG) == root]
    for run in stale:
        client.set_terminated(run.info.run_id, "KILLED")
    return len(stale)


@contextlib.contextmanager
def track_study(study: Study, layout: StudyLayout) -> Iterator[TrackingConfig]:
    """A parent MLflow run for a study while it runs; its training runs log nested under it.

    The experiment is created with its artefacts in the study's ``mlartifacts`` (MLflow's
    default is ``./mlruns`` of the working folder), and runs an earlier, killed attempt left
    ``RUNNING`` are marked ``KILLED`` (the caller holds the study's lock, so no live process owns
    them). Yields the tracking settings the stages get, with the store's URI filled in.
    """
    if not study.tracking.enabled:
        yield study.tracking
        return
    import mlflow

    _quiet()
    uri = study.tracking.uri or f"sqlite:///{layout.mlflow_db.resolve()}"
    try:
        ensure_sqlite_store(uri, clean=True)
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment = ensure_experiment(client, study.tracking.experiment or study.name,
                                       local_artifacts(uri, layout.mlflow_artifacts))
        mark_killed(client, experiment, layout.root)
        mlflow.set_tracking_uri(uri)
        mlflow.start_run(experiment_id=experiment, run_name=f"study:{study.name}",
                         tags={STUDY_TAG: str(layout.root.resolve())})
        mlflow.log_params({"models": ",".join(m.name for m in study.models),
                           "strategies": ",".join(study.strategies),
                           "objectives": ",".join(study.objectives)})
    except Exception as exc:  # noqa: BLE001 - any store or connection failure is the user's to fix
        raise TunelensError(f"MLflow tracking at {uri} failed: {first_line(exc)}") from None
    status = "FAILED"
    try:
        yield study.tracking.model_copy(update={"uri": uri})
        status = "FINISHED"
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    finally:
        mlflow.end_run(status=status)


_ADOPTED: tuple[str, str] | None = None  # (store URI, run id) of a parallel study's run


def adopt_study_run(uri: str, run_id: str) -> None:
    """In a worker process of a parallel study (:mod:`tunelens.parallel`): nest training runs
    under the study run the parent started (MLflow's active run is per process)."""
    global _ADOPTED
    _ADOPTED = (uri, run_id)


def study_run(uri: str):
    """The run a training run nests under: this process's active run on the same store, else the
    adopted study run of a parallel study, else none."""
    import mlflow

    active = mlflow.active_run()
    if active is not None:
        return active if mlflow.get_tracking_uri() == uri else None
    if _ADOPTED is not None and _ADOPTED[0] == uri:
        return mlflow.MlflowClient(tracking_uri=uri).get_run(_ADOPTED[1])
    return None


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """One MLflow run for one training run."""

    def __init__(self, out: Path, tracking: TrackingConfig | None, run_name: str) -> None:
        from mlflow import MlflowClient

        _quiet()  # after the import: mlflow sets its own log level when first imported
        self.uri = resolve_uri(out, tracking)
        asked = tracking.experiment if tracking else None
        self.experiment_name = asked or DEFAULT_EXPERIMENT
        study = study_of(out)
        tags = {"tunelens.out": str(Path(out).resolve())}
        if study is not None:
            tags[STUDY_TAG] = str(study.root.resolve())
        parent = study_run(self.uri)  # e.g. the study runner's run: nest under it
        try:
            ensure_sqlite_store(self.uri)
            self.client = MlflowClient(tracking_uri=self.uri)
            if parent is not None and asked:  # nest only if the parent is in the asked experiment
                if self.client.get_experiment(parent.info.experiment_id).name != asked:
                    parent = None
            if parent is not None:
                self.experiment_id = parent.info.experiment_id
                self.experiment_name = self.client.get_experiment(self.experiment_id).name
                tags["mlflow.parentRunId"] = parent.info.run_id
            else:
                artifacts = study.mlflow_artifacts if study is not None else None
                self.experiment_id = ensure_experiment(self.client, self.experiment_name,
                                                       local_artifacts(self.uri, artifacts))
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        except Exception as exc:  # any store/connection failure is the user's to fix
            raise TunelensError(f"MLflow tracking at {self.uri} failed: {first_line(exc)}") from None
        self.run_id = run.info.run_id

    def finish(self, params: dict[str, Any], run_info: dict, files: list[Path]) -> None:
        """Log params, per-step metrics, summary metrics and small files; mark the run finished."""
        from mlflow.entities import Metric, Param

        now = int(time.time() * 1000)
        flat = {k: _param_value(v) for k, v in _flatten(params).items()}
        param_list = [Param(k[:250], v) for k, v in sorted(flat.items())]
        metrics = [Metric("train_loss", r["loss"], now, r["step"]) for r in run_info.get("train_loss", [])]
        metrics += [Metric("val_loss", r["loss"], now, r["step"]) for r in run_info.get("val_loss", [])]
        for key in ("val_loss_before", "val_loss_after", "wall_seconds", "tokens_per_second",
                    "peak_rss_mb", "trainable_params", "total_params"):
            if isinstance(run_info.get(key), int | float):
                metrics.append(Metric(key, float(run_info[key]), now, run_info.get("global_step", 0)))
        for i in range(0, len(param_list), 100):
            self.client.log_batch(self.run_id, params=param_list[i:i + 100])
        for i in range(0, len(metrics), 1000):
            self.client.log_batch(self.run_id, metrics=metrics[i:i + 1000])
        for path in files:
            if path.is_file():
                self.client.log_artifact(self.run_id, str(path))
        self.client.set_terminated(self.run_id, "FINISHED")

    def fail(self, status: str = "FAILED") -> None:
        try:
            self.client.set_terminated(self.run_id, status)
        except Exception:  # noqa: BLE001 - tracking must never hide the real error
            pass


def first_line(exc: BaseException) -> str:
    """The first line of an error's message (MLflow's carry SQL and stack dumps below it)."""
    text = str(exc)
    return text.splitlines()[0] if text.strip() else repr(exc)


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: obj}


def _param_value(value: Any) -> str:
    text = str(value) if not isinstance(value, list) else ",".join(map(str, value))
    return text[:6000]
