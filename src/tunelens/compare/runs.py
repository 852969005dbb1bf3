"""What a study folder holds, run by run: names parsed, files found, failures noted.

The comparison and the report both start from the same question — which runs exist, what did
each produce, which failed — and a study is often incomplete (a cell failed, a stage was
skipped, the study has one model). So discovery is lenient about what is *missing* and strict
about what is *malformed*: a run without metrics is simply a run without metrics, but a metrics
file that is not JSON stops the comparison with the file named.

Replicates: a run name may end in ``__seed<N>`` (``s__lora__instruct__seed1``). Runs that differ
only by that suffix are replicates of one cell (retrained with another seed, or the same model
attributed twice with another explanation seed: ``attributions/<run>__seed1.parquet`` without a
model folder of its own). The comparison uses one replicate per cell (the unsuffixed one, else the
lowest seed) and uses the others only for the seed-to-seed noise floor of agreement.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from tunelens.errors import TunelensError
from tunelens.io import read_json

CATEGORIES = ("RULE_ID", "NUMBER", "UNIT", "COMPARATOR", "MODAL", "CONDITION", "OTHER")
ATTRIBUTION_COLUMNS = ("example_id", "position", "token", "start", "end", "category", "score")
INTERVAL_KEYS = ("intervals", "aggregate_ci", "ci", "confidence_intervals")
TRAINING_KEYS = ("trainable_params", "total_params", "val_loss_before", "val_loss_after",
                 "wall_seconds", "tokens_per_second", "peak_rss_mb")
_SEED = re.compile(r"^seed(\d+)$")


@dataclass
class RunInfo:
    """One run of a study and everything the comparison needs to know about it."""

    name: str
    model: str
    strategy: str
    objective: str
    rag: bool = False
    seed: int | None = None
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

    @property
    def cell(self) -> str:
        """The name without its seed suffix: replicates share it."""
        return "__".join([self.model, self.strategy, self.objective] + (["rag"] if self.rag else []))

    @property
    def group(self) -> tuple[str, str, bool]:
        """Runs compared strategy against strategy: same model, objective and retrieval."""
        return (self.model, self.objective, self.rag)

    def summary(self) -> dict:
        """The JSON-ready row of ``stats/runs.json`` (what the report's tables read)."""
        rj = self.run_json or {}
        return {
            "name": self.name, "cell": self.cell, "model": self.model, "strategy": self.strategy,
            "objective": self.objective, "rag": self.rag, "seed": self.seed, "status": self.status,
            "error": self.error, "params": self.params, "model_dir": self.model_dir,
            "training": {k: _finite(rj.get(k)) for k in TRAINING_KEYS} if rj else None,
            "train_loss": _loss_curve(rj.get("train_loss")),
            "aggregate": self.aggregate,
            "intervals": {k: list(v) for k, v in self.intervals.items()},
            "has_metrics": bool(self.aggregate) or self.per_example is not None,
            "has_attributions": self.attributions is not None,
        }


def parse_run_name(name: str) -> dict | None:
    """``<model>__<strategy>__<objective>[__rag][__seed<N>]`` into its parts; None if not a run name."""
    parts = name.split("__")
    seed = None
    if parts and (m := _SEED.match(parts[-1])):
        seed = int(m.group(1))
        parts = parts[:-1]
    rag = bool(parts) and parts[-1] == "rag"
    if rag:
        parts = parts[:-1]
    if len(parts) < 3 or not all(parts):
        return None
    return {"model": "__".join(parts[:-2]), "strategy": parts[-2], "objective": parts[-1],
            "rag": rag, "seed": seed}


def read_status(study_dir: Path) -> dict[str, dict]:
    """Cells recorded by the study runner (``status.json``; ``runs.json`` accepted too)."""
    for fname in ("status.json", "runs.json"):
        path = study_dir / fname
        if not path.exists():
            continue
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
    return {}


def discover_runs(study_dir: Path) -> list[RunInfo]:
    """Every run the study folder mentions, with whatever it produced, sorted by name."""
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise TunelensError(f"{study_dir}: no such study folder")
    status = read_status(study_dir)
    names: set[str] = set(status)
    names |= {p.parent.name for p in (study_dir / "models").glob("*/run.json")}
    for sub, ext in (("metrics", ".json"), ("attributions", ".parquet"), ("predictions", ".jsonl")):
        names |= {p.name[: -len(ext)] for p in (study_dir / sub).glob(f"*{ext}")}
    runs = []
    for name in sorted(names):
        parts = parse_run_name(name)
        if parts is None:
            continue  # a stray file (e.g. metrics/summary.json) is not a run
        run = RunInfo(name=name, **parts)
        cell = status.get(name, {})
        run.status = str(cell.get("status", "ok"))
        run.error = cell.get("error")
        _load_run_json(run, study_dir, status)
        _load_metrics(run, study_dir / "metrics" / f"{name}.json")
        attr = study_dir / "attributions" / f"{name}.parquet"
        run.attributions = attr if attr.exists() else None
        pred = study_dir / "predictions" / f"{name}.jsonl"
        run.predictions = pred if pred.exists() else None
        if run.status == "ok" and not run.aggregate and run.attributions is None and name not in status:
            run.status = "incomplete"
        runs.append(run)
    _assign_sizes(runs)
    return runs


def primary_runs(runs: list[RunInfo]) -> list[RunInfo]:
    """One replicate per cell: the unsuffixed run if there is one, else the lowest seed."""
    best: dict[str, RunInfo] = {}
    for r in runs:
        cur = best.get(r.cell)
        if cur is None or (-1 if r.seed is None else r.seed) < (-1 if cur.seed is None else cur.seed):
            best[r.cell] = r
    return sorted(best.values(), key=lambda r: r.name)


def read_attributions(path: Path) -> pd.DataFrame:
    """An attribution table with ``example_id`` as text and a category on every row."""
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
        raise TunelensError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
    missing = [c for c in ("example_id", "position", "score") if c not in frame.columns]
    if missing:
        raise TunelensError(f"{path}: missing column(s) {', '.join(missing)}")
    frame = frame.copy()
    frame["example_id"] = frame["example_id"].astype(str)
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce").astype(float)
    if "category" not in frame.columns:
        frame["category"] = "OTHER"
    frame["category"] = frame["category"].fillna("OTHER").astype(str)
    for col in ("token", "start", "end"):
        if col not in frame.columns:
            frame[col] = None
    return frame.sort_values(["example_id", "position"], kind="stable").reset_index(drop=True)


def _load_run_json(run: RunInfo, study_dir: Path, status: dict) -> None:
    # A RAG cell shares the trained model of its non-RAG twin.
    candidates = [run.name, run.name.replace("__rag", "")] if run.rag else [run.name]
    if run.seed is not None:
        candidates.append(run.cell.replace("__rag", ""))
    for cand in candidates:
        path = study_dir / "models" / cand / "run.json"
        if path.exists():
            raw = read_json(path)
            if not isinstance(raw, dict):
                raise TunelensError(f"{path}: expected a JSON object")
            run.run_json, run.model_dir = raw, cand
            return


def _load_metrics(run: RunInfo, path: Path) -> None:
    if not path.exists():
        return
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise TunelensError(f"{path}: expected a JSON object with 'aggregate' and 'per_example'")
    agg = raw.get("aggregate", {})
    if not isinstance(agg, dict):
        raise TunelensError(f"{path}: 'aggregate' must be an object")
    run.aggregate = {k: v for k, v in ((k, _finite(v)) for k, v in agg.items()) if v is not None}
    for key in INTERVAL_KEYS:
        if isinstance(raw.get(key), dict):
            for metric, iv in raw[key].items():
                pair = _interval(iv)
                if pair is not None:
                    run.intervals[metric] = pair
            break
    rows = raw.get("per_example")
    if rows:
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise TunelensError(f"{path}: 'per_example' must be a list of objects")
        frame = pd.DataFrame(rows)
        if "id" not in frame.columns:
            raise TunelensError(f"{path}: per_example rows need an 'id'")
        frame["id"] = frame["id"].astype(str)
        numeric = {}
        for col in frame.columns:
            if col == "id":
                continue
            values = frame[col]
            if values.map(lambda v: v is None or isinstance(v, bool | int | float)).all():
                numeric[col] = pd.to_numeric(values.astype(object).map(_to_float),
                                             errors="coerce").to_numpy(float)
        run.per_example = pd.DataFrame(numeric, index=frame["id"]).groupby(level=0).mean()


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
    if isinstance(value, dict):
        value = (value.get("lo", value.get("low")), value.get("hi", value.get("high")))
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
