"""MLflow tracking of training runs, through MlflowClient (no global active run, no autolog).

The default store is a SQLite file in the study folder: a run written to ``<study>/models/<run>``
(the study runner's layout) is tracked in ``sqlite:///<study>/mlflow.db``; a run folder anywhere
else is tracked in ``mlflow.db`` beside it (``<out>/../mlflow.db``). Artefacts of such a local
store go to ``mlartifacts/`` beside the database, never into the working directory. Any other URI
(``--tracking-uri http://...``) is used as given, with the server's artefact store.

When an MLflow run is already active on the same store with no experiment asked for (the study
runner's parent run), the training run is created in its experiment, nested under it.

The run is created before training starts, so an unreachable server fails the command early,
and filled in at the end in a few batched calls (params, per-step losses, run.json), which keeps
tracking off the training loop's hot path.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from tunelens.config import TrackingConfig
from tunelens.errors import TunelensError

DEFAULT_EXPERIMENT = "tunelens"
DB_NAME = "mlflow.db"


def default_store_dir(out: Path) -> Path:
    """The folder that holds the default SQLite store for a run written to ``out``."""
    out = Path(out).resolve()
    return out.parent.parent if out.parent.name == "models" else out.parent


def resolve_uri(out: Path, tracking: TrackingConfig | None) -> str:
    if tracking is not None and tracking.uri:
        return tracking.uri
    return f"sqlite:///{default_store_dir(out) / DB_NAME}"


def _quiet() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    for name in ("mlflow", "alembic", "sqlalchemy"):
        logging.getLogger(name).setLevel(logging.WARNING)


class Tracker:
    """One MLflow run for one training run."""

    def __init__(self, out: Path, tracking: TrackingConfig | None, run_name: str) -> None:
        from mlflow import MlflowClient

        _quiet()  # after the import: mlflow sets its own log level when first imported

        import mlflow

        self.uri = resolve_uri(out, tracking)
        asked = tracking.experiment if tracking else None
        self.experiment_name = asked or DEFAULT_EXPERIMENT
        tags = {"tunelens.out": str(Path(out).resolve())}
        parent = mlflow.active_run()  # e.g. the study runner's run: nest under it
        if parent is not None and (mlflow.get_tracking_uri() != self.uri or asked):
            parent = None
        try:
            self.client = MlflowClient(tracking_uri=self.uri)
            if parent is not None:
                self.experiment_id = parent.info.experiment_id
                self.experiment_name = self.client.get_experiment(self.experiment_id).name
                tags["mlflow.parentRunId"] = parent.info.run_id
            else:
                self.experiment_id = self._experiment(out)
            run = self.client.create_run(self.experiment_id, run_name=run_name, tags=tags)
        except Exception as exc:  # any store/connection failure is the user's to fix
            raise TunelensError(
                f"MLflow tracking at {self.uri} failed: {str(exc).splitlines()[0] if str(exc) else exc!r}"
            ) from None
        self.run_id = run.info.run_id

    def _experiment(self, out: Path) -> str:
        found = self.client.get_experiment_by_name(self.experiment_name)
        if found is not None:
            return found.experiment_id
        location = None
        if self.uri.startswith("sqlite:///"):
            location = (Path(self.uri[len("sqlite:///"):]).parent / "mlartifacts").resolve().as_uri()
        return self.client.create_experiment(self.experiment_name, artifact_location=location)

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
