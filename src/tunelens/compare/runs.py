"""What a study folder holds, run by run: identities read, files found, failures noted.

The comparison and the report both start from the same question — which runs exist, what did
each produce, which failed — and a study is often incomplete (a cell failed, a stage was
skipped, the study has one model). So discovery is lenient about what is *missing* and strict
about what is *malformed*: a run without metrics is simply a run without metrics, but a metrics
file that is not JSON stops the comparison with the file named.

Who a run is comes from data, never from its file names: the identities the study runner wrote
to ``runs/<run>.json`` and the ``identity`` a trained model records in its ``run.json``
(:class:`tunelens.layout.RunIdentity`). Every path comes from :class:`tunelens.layout.StudyLayout`.
An output file that no identity accounts for is reported as *unrecorded* (see
:func:`unrecorded_outputs`) rather than guessed at from its name.

Replicates: runs that differ only by ``identity.seed`` are replicates of one cell: a study's
``seeds`` retrain every cell once per seed (``<run>__s<seed>``). A replicate without a model
folder of its own (a model attributed again by hand with another seed) uses the seedless run's
model. The tests of differences use every seed of a cell, the training run being the unit of
analysis (:mod:`tunelens.compare.distinct`), and the seed-to-seed noise floor of agreement
compares the seeds of each cell.
:func:`primary_runs` picks one replicate per cell (the one without a seed, else the lowest seed)
for what shows one run per cell: the heat-maps, the agreement matrix, the concentration figure.
The report's tables summarise every seed of a cell instead (:mod:`tunelens.compare.cells`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd

from tunelens.contracts import MetricsFile, read_object
from tunelens.errors import TunelensError
from tunelens.io import read_json
from tunelens.layout import RunIdentity, StudyLayout
from tunelens.train.catalog import ARM_JOIN, STRATEGY_ORDER

__all__ = ["RunInfo", "discover_runs", "primary_runs", "read_attributions", "read_targets",
           "strategy_key", "unrecorded_outputs"]

TARGETS = ("reference", "generation")  # what explain attributes (explanation.target)
ATTRIBUTION_COLUMNS = ("example_id", "position", "token", "start", "end", "category", "score")
TRAINING_KEYS = ("trainable_params", "total_params", "val_loss_before", "val_loss_after",
                 "wall_seconds", "tokens_per_second", "peak_rss_mb")
# the per-run outputs of a study: (folder attribute of StudyLayout, file suffix)
OUTPUTS = (("predictions_dir", ".jsonl"), ("metrics_dir", ".json"), ("attributions_dir", ".parquet"))


def strategy_key(strategy: str) -> tuple[int, str]:
    """Strategies (or arms ``<strategy> · <prompt>``) in the catalog's order (most to fewest
    trained weights), unknown ones last."""
    base = strategy.partition(ARM_JOIN)[0]
    order = STRATEGY_ORDER.index(base) if base in STRATEGY_ORDER else len(STRATEGY_ORDER)
    return (order, strategy)


@dataclass
class RunInfo:
    """One run of a study and everything the comparison needs to know about it."""

    identity: RunIdentity
    status: str = "ok"
    error: str | None = None
    params: float | None = None
    run_json: dict | None = None
    model_dir: str | None = None  # the models/ folder its run.json came from (RAG twins share one)
    aggregate: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, tuple[float, float]] = field(default_factory=dict)
    per_example: pd.DataFrame | None = None
    attributions: Path | None = None
    predictions: Path | None = None

    name = property(lambda self: self.identity.name)
    model = property(lambda self: self.identity.model)
    strategy = property(lambda self: self.identity.strategy)
    objective = property(lambda self: self.identity.objective)
    rag = property(lambda self: self.identity.rag)
    seed = property(lambda self: self.identity.seed)
    prompt = property(lambda self: self.identity.prompt)
    arm = property(lambda self: self.identity.arm)  # what comparisons set against each other

    @property
    def cell(self) -> str:
        """The run without its seed: replicates share it."""
        return self.identity.cell

    @property
    def group(self) -> tuple[str, str, bool]:
        """Runs compared strategy against strategy: same model, objective and retrieval."""
        return (self.model, self.objective, self.rag)

    def summary(self) -> dict:
        """The JSON-ready row of ``stats/runs.json`` (what the report's tables read)."""
        rj = self.run_json or {}
        return {
            "name": self.name, "cell": self.cell, "model": self.model, "strategy": self.strategy,
            "prompt": self.prompt, "arm": self.arm, "objective": self.objective, "rag": self.rag,
            "seed": self.seed, "status": self.status,
            "error": self.error, "params": self.params, "model_dir": self.model_dir,
            "training": {k: _finite(rj.get(k)) for k in TRAINING_KEYS} if rj else None,
            "train_loss": _loss_curve(rj.get("train_loss")),
            "aggregate": self.aggregate,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "has_metrics": bool(self.aggregate) or self.per_example is not None,
            "has_attributions": self.attributions is not None,
        }


def read_status(layout: StudyLayout) -> dict[str, dict]:
    """Cells recorded by the study runner in ``status.json``, by run name."""
    path = layout.status
    if not path.exists():
        return {}
    raw = read_json(path)
    cells = raw.get("cells") if isinstance(raw, dict) else raw
    if not isinstance(cells, list):
        raise TunelensError(f"{path}: expected {{\"cells\": [...]}}")
    out = {}
    for i, cell in enumerate(cells):
        if not isinstance(cell, dict) or "run" not in cell:
            raise TunelensError(f"{path}: cells.{i} has no 'run'")
        out[str(cell["run"])] = cell
    return out


def trained_models(layout: StudyLayout) -> dict[str, dict]:
    """``models/<folder>/run.json`` by folder name."""
    out = {}
    for path in sorted(layout.models.glob("*/run.json")):
        raw = read_json(path)
        if not isinstance(raw, dict):
            raise TunelensError(f"{path}: expected a JSON object")
        out[path.parent.name] = raw
    return out


def identities(layout: StudyLayout, models: dict[str, dict]) -> tuple[dict[str, RunIdentity], dict[str, str]]:
    """Every run the study records — ``runs/*.json``, then the ``identity`` of each trained model —
    and, for identities read from a model's ``run.json``, the folder it lives in (by train name:
    a model trained outside a study may sit in a folder named otherwise)."""
    found = {r.name: r for r in layout.identities()}
    folders: dict[str, str] = {}
    for folder, raw in models.items():
        if "identity" in raw:
            run = RunIdentity.from_dict(raw["identity"], origin=str(layout.models / folder / "run.json"))
            found.setdefault(run.name, run)
            folders.setdefault(run.train_name, folder)
    return dict(sorted(found.items())), folders


def discover_runs(study_dir: Path) -> list[RunInfo]:
    """Every recorded run of the study folder, with whatever it produced, sorted by name."""
    layout = StudyLayout(Path(study_dir))
    if not layout.root.is_dir():
        raise TunelensError(f"{layout.root}: no such study folder")
    status = read_status(layout)
    models = trained_models(layout)
    known, folders = identities(layout, models)
    runs = []
    for name, identity in known.items():
        run = RunInfo(identity)
        cell = status.get(name, {})
        run.status = str(cell.get("status", "ok"))
        run.error = cell.get("error")
        _attach_model(run, layout, models, folders)
        _load_metrics(run, layout.metrics(identity))
        attr, pred = layout.attributions(identity), layout.predictions(identity)
        run.attributions = attr if attr.exists() else None
        run.predictions = pred if pred.exists() else None
        if run.status == "ok" and not run.aggregate and run.attributions is None and name not in status:
            run.status = "incomplete"
        runs.append(run)
    _assign_sizes(runs)
    return runs


def unrecorded_outputs(study_dir: Path, runs: list[RunInfo]) -> list[dict]:
    """Outputs and status cells no run identity accounts for, one failure row per name.

    They are left out of the comparison: which model, strategy or seed produced them is not
    recorded, and reading it back out of a file name is how studies get mixed up.
    """
    layout = StudyLayout(Path(study_dir))
    known = {r.name for r in runs}
    trained = known | {r.identity.train_name for r in runs} | {r.model_dir for r in runs if r.model_dir}
    files: dict[str, list[str]] = {}
    for folder, suffix in OUTPUTS:
        base = getattr(layout, folder)
        for path in sorted(base.glob(f"*{suffix}")):
            name = path.name[: -len(suffix)]
            if name not in known:
                files.setdefault(name, []).append(path.relative_to(layout.root).as_posix())
    for path in sorted(layout.models.glob("*/run.json")):
        if path.parent.name not in trained:
            files.setdefault(path.parent.name, []).append(path.relative_to(layout.root).as_posix())
    for name in read_status(layout):
        if name not in known:
            files.setdefault(name, []).append(layout.status.name)
    return [{"run": name, "status": "unrecorded",
             "error": f"no run identity recorded for {', '.join(paths)}"}
            for name, paths in sorted(files.items())]


def primary_runs(runs: list[RunInfo]) -> list[RunInfo]:
    """One replicate per cell: the run without a seed if there is one, else the lowest seed."""
    best: dict[str, RunInfo] = {}
    for r in runs:
        cur = best.get(r.cell)
        if cur is None or (-1 if r.seed is None else r.seed) < (-1 if cur.seed is None else cur.seed):
            best[r.cell] = r
    return sorted(best.values(), key=lambda r: r.name)


def read_attributions(path: Path, target: str = "reference") -> pd.DataFrame:
    """The rows of an attribution table explaining ``target`` ("reference" or "generation"),
    with ``example_id`` as text and a category on every row. A table without a ``target``
    column (written before explain could do both) holds reference rows only."""
    frames = read_targets(path)
    return frames[target] if target in frames else frames["reference"].iloc[0:0].copy()


def read_targets(path: Path) -> dict[str, pd.DataFrame]:
    """An attribution table read once and split by ``target``: ``{"reference": ..., "generation":
    ..., ...}``, a target the table does not explain mapping to an empty frame."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise TunelensError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in ("example_id", "position", "score") if c not in frame.columns]
    if missing:
        raise TunelensError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    if "target" not in frame.columns:
        frame["target"] = "reference"
    frame["target"] = frame["target"].fillna("reference").astype(str)
    frame["example_id"] = frame["example_id"].astype(str)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype(float)
    if "category" not in frame.columns:
        frame["category"] = "OTHER"
    frame["category"] = frame["category"].fillna("OTHER").astype(str)
    for col in ("token", "start", "end"):
        if col not in frame.columns:
            frame[col] = None
    frame = frame.sort_values(["example_id", "position"], kind="stable").reset_index(drop=True)
    out = {t: frame.iloc[0:0].copy() for t in TARGETS}
    out.update({str(t): part.reset_index(drop=True) for t, part in frame.groupby("target", sort=True)})
    return out


def _attach_model(run: RunInfo, layout: StudyLayout, models: dict[str, dict],
                  folders: dict[str, str]) -> None:
    """The run's trained model: its own (RAG runs share their twin's, by ``train_name``), else,
    for a replicate with no model of its own (attributed again), the seedless run's model."""
    candidates = [run.identity]
    if run.seed is not None:
        candidates.append(replace(run.identity, seed=None))
    for identity in candidates:
        folder = folders.get(identity.train_name, layout.model_dir(identity).name)
        if folder in models:
            run.run_json, run.model_dir = models[folder], folder
            return


def _load_metrics(run: RunInfo, path: Path) -> None:
    """Aggregates, intervals and numeric per-example scores of a metrics file
    (:class:`tunelens.contracts.MetricsFile`; a malformed one is one error naming the file)."""
    if not path.exists():
        return
    metrics = read_object(path, MetricsFile)
    run.aggregate = {k: v for k, v in ((k, _finite(v)) for k, v in metrics.aggregate.items())
                     if v is not None}
    run.intervals = {k: pair for k, iv in metrics.intervals.items()
                     if (pair := _interval(iv)) is not None}
    rows = [example.model_dump() for example in metrics.per_example]
    if not rows:
        return
    frame = pd.DataFrame(rows)
    numeric = {}
    for col in frame.columns:
        if col == "id":
            continue
        values = frame[col]
        if values.map(lambda v: v is None or isinstance(v, bool | int | float)).all():
            numeric[col] = pd.to_numeric(values.astype(object).map(_to_float),
                                         errors="coerce").to_numpy(float)
    run.per_example = pd.DataFrame(numeric, index=frame["id"].astype(str))


def _assign_sizes(runs: list[RunInfo]) -> None:
    """One size per base model, so all strategies of a model sit at the same x.

    ``base_params`` wins when a run records it. Otherwise the smallest ``total_params`` of the
    model's non-QLoRA runs (a LoRA count includes its small adapter; a 4-bit count halves the
    packed weights, so QLoRA counts are used only when nothing else is there).
    """
    by_model: dict[str, list[tuple[bool, float, bool]]] = {}
    for r in runs:
        rj = r.run_json or {}
        base, total = _finite(rj.get("base_params")), _finite(rj.get("total_params"))
        if base is not None:
            by_model.setdefault(r.model, []).append((True, base, False))
        elif total is not None:
            by_model.setdefault(r.model, []).append((False, total, r.strategy == "qlora"))
    sizes = {}
    for model, rows in by_model.items():
        based = [v for is_base, v, _ in rows if is_base]
        plain = [v for is_base, v, q in rows if not is_base and not q]
        quant = [v for is_base, v, q in rows if not is_base and q]
        sizes[model] = max(based) if based else min(plain) if plain else max(quant)
    for r in runs:
        r.params = sizes.get(r.model)


def _interval(value) -> tuple[float, float] | None:
    if isinstance(value, list | tuple) and len(value) == 2:
        lo, hi = _finite(value[0]), _finite(value[1])
        if lo is not None and hi is not None:
            return (lo, hi)
    return None


def _to_float(v) -> float:
    return float("nan") if v is None else float(v)


def _finite(v) -> float | None:
    if isinstance(v, bool):
        return float(v)
    if isinstance(v, int | float | np.floating | np.integer) and math.isfinite(float(v)):
        return float(v)
    return None


def _loss_curve(raw) -> list[dict]:
    if not isinstance(raw, list):
        return []
    out = []
    for row in raw:
        if isinstance(row, dict) and None not in (_finite(row.get("step")), _finite(row.get("loss"))):
            out.append({"step": float(row["step"]), "loss": float(row["loss"])})
    return out
