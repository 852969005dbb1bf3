"""The study runner: expand the matrix, run every stage for every cell, resume what was done.

Orchestration is ours because no library ties these stages together: Hydra/MLflow Projects
launch jobs but do not know that a RAG cell reuses the model of its non-RAG twin, that a stage is
done only when its output *and* the settings that made it are unchanged, or that one failing cell
must not stop the other eleven.

Resumability: every stage output has a stamp in ``<out>/.stamps/`` holding a hash of the stage's
inputs and settings. A stage is skipped when its output exists and its stamp matches; changing a
setting re-runs exactly the stages it feeds. Outputs are written atomically by the stages, so an
interrupted study leaves no half-written file that could be mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from tunelens.config import ModelSpec, Study, dump_study
from tunelens.errors import TunelensError
from tunelens.io import write_json, write_text
from tunelens.layout import RunIdentity

STAGES = ("train", "generate", "evaluate", "explain")
ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix. RAG cells share the trained model of their non-RAG twin."""

    model: ModelSpec
    strategy: str
    objective: str
    rag: bool = False

    @property
    def identity(self) -> RunIdentity:
        return RunIdentity(self.model.name, self.strategy, self.objective, self.rag)

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def train_name(self) -> str:
        return self.identity.train_name


@dataclass
class CellStatus:
    run: str
    status: str = "pending"  # ok | failed | pending
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)


def expand_matrix(study: Study) -> list[Cell]:
    """models × strategies × objectives × rag, then ``extra_cells``; duplicates dropped, order kept."""
    models = {m.name: m for m in study.models}
    cells: list[Cell] = []
    for m in study.models:
        for s in study.strategies:
            for o in study.objectives:
                for r in study.rag.enabled:
                    cells.append(Cell(m, s, o, r))
    for i, extra in enumerate(study.extra_cells):
        unknown = set(extra) - {"model", "strategy", "objective", "rag"}
        if unknown or "model" not in extra:
            raise TunelensError(f"extra_cells.{i}: expected keys model, strategy, objective, rag")
        if extra["model"] not in models:
            raise TunelensError(f"extra_cells.{i}.model: unknown model '{extra['model']}'")
        cells.append(Cell(models[extra["model"]], extra.get("strategy", study.strategies[0]),
                          extra.get("objective", study.objectives[0]), bool(extra.get("rag", False))))
    seen: set[str] = set()
    unique = [c for c in cells if not (c.name in seen or seen.add(c.name))]
    for c in unique:
        if c.strategy not in ("full", "lora", "qlora", "dora", "freeze"):
            raise TunelensError(f"{c.name}: unknown strategy '{c.strategy}'")
        if c.objective not in ("instruct", "causal"):
            raise TunelensError(f"{c.name}: unknown objective '{c.objective}'")
    return unique


def fingerprint(*parts) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Stamps:
    """Per-output stamps: a stage is done when its output exists and its stamp matches."""

    def __init__(self, root: Path):
        self.root = root / ".stamps"

    def done(self, key: str, output: Path, stamp: str) -> bool:
        f = self.root / f"{key}.json"
        return output.exists() and f.exists() and json.loads(f.read_text()).get("stamp") == stamp

    def mark(self, key: str, stamp: str) -> None:
        write_json(self.root / f"{key}.json", {"stamp": stamp, "time": time.time()})


def resolve_model_path(spec: ModelSpec, zoo_root: Path) -> str:
    """``zoo:<preset>/<name>`` names a ladder model, built on first use; anything else is as given."""
    if not spec.path.startswith(ZOO_PREFIX):
        return spec.path
    ref = spec.path[len(ZOO_PREFIX):]
    preset, _, name = ref.partition("/")
    if not name:
        raise TunelensError(f"models.{spec.name}.path: expected zoo:<preset>/<name>, got {spec.path}")
    from tunelens.models.zoo import build_zoo

    entries = build_zoo(preset, zoo_root / preset)
    for e in entries:
        if e["name"] == name:
            return str(e["path"])
    names = ", ".join(e["name"] for e in entries)
    raise TunelensError(f"models.{spec.name}.path: no model '{name}' in zoo preset '{preset}' ({names})")


def estimate(study: Study, cells: list[Cell]) -> dict:
    """A rough count of the work: training steps, generated tokens, scored perturbations."""
    trained = {c.train_name for c in cells}
    gen = study.generation
    n_test = gen.max_examples or 100
    n_explain = min(study.explanation.max_examples or n_test, n_test)
    per_example = {"occlusion": 40, "shapley": 40 * study.explanation.n_samples,
                   "lime": study.explanation.n_samples}.get(study.explanation.method, 40)
    return {
        "cells": len(cells),
        "trainings": len(trained),
        "train_steps": len(trained) * study.train.max_steps,
        "generated_tokens_max": len(cells) * n_test * gen.max_new_tokens * gen.num_samples,
        "explained_examples": len(cells) * n_explain,
        "perturbations_approx": len(cells) * n_explain * per_example,
    }


def default_zoo_root() -> Path:
    return Path.home() / ".cache" / "tunelens" / "zoo"


@dataclass
class StudyRunner:
    """Runs a study into ``out``; ``on_event(cell, stage, state)`` feeds a live progress view."""

    study: Study
    out: Path
    zoo_root: Path = field(default_factory=default_zoo_root)
    on_event: Callable[[str, str, str], None] = lambda cell, stage, state: None

    def __post_init__(self):
        self.out = Path(self.out)
        self.stamps = Stamps(self.out)
        self.timings: dict[str, float] = {}
        self._model_paths: dict[str, str] = {}
        self.rag_stamp: str | None = None  # the index's stamp: RAG cells regenerate when it changes

    def model_path(self, spec: ModelSpec) -> str:
        """The base model's path, building zoo models once per study run (timed as 'zoo')."""
        if spec.name not in self._model_paths:
            self._model_paths[spec.name] = self._timed("zoo", resolve_model_path, spec, self.zoo_root)
        return self._model_paths[spec.name]

    # -- stages ------------------------------------------------------------------------------

    def _timed(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    def prepare_data(self) -> Path:
        data_dir = self.out / "data"
        cfg = self.study.data
        stamp = fingerprint("data", cfg.model_dump())
        if self.stamps.done("data", data_dir / "test.jsonl", stamp):
            self.on_event("data", "data", "skipped")
            return data_dir
        self.on_event("data", "data", "running")
        if cfg.source == "bundled":
            from tunelens.data.build import build_bundled

            self._timed("data", build_bundled, data_dir, cfg)
        else:
            from tunelens.data.prepare import prepare

            self._timed("data", prepare, Path(cfg.source), data_dir, cfg)
        self.stamps.mark("data", stamp)
        self.on_event("data", "data", "done")
        return data_dir

    def rag_index(self, data_dir: Path) -> Path:
        index_dir = self.out / "rag"
        corpus = Path(self.study.rag.corpus) if self.study.rag.corpus else data_dir / "train.jsonl"
        stamp = fingerprint("rag", self.study.rag.model_dump(), _file_hash(corpus))
        self.rag_stamp = stamp
        if not self.stamps.done("rag", index_dir, stamp):
            from tunelens.infer.rag import build_index

            self.on_event("rag", "rag", "running")
            self._timed("rag", build_index, corpus, index_dir, self.study.rag.embedding_model)
            self.stamps.mark("rag", stamp)
            self.on_event("rag", "rag", "done")
        return index_dir

    def run_cell(self, cell: Cell, data_dir: Path, rag_dir: Path | None, status: CellStatus,
                 tracking) -> None:
        s = self.study
        data_stamp = _file_hash(data_dir / "train.jsonl") + _file_hash(data_dir / "test.jsonl")
        model_dir = self.out / "models" / cell.train_name
        base_path = self.model_path(cell.model)
        train_stamp = fingerprint("train", base_path, cell.strategy, cell.objective,
                                  s.train.model_dump(), data_stamp)
        pred = self.out / "predictions" / f"{cell.name}.jsonl"
        gen_stamp = fingerprint("generate", train_stamp, s.generation.model_dump(), cell.rag,
                                self.rag_stamp if cell.rag else None)
        metrics = self.out / "metrics" / f"{cell.name}.json"
        eval_stamp = fingerprint("evaluate", gen_stamp, s.evaluation.model_dump())
        attr = self.out / "attributions" / f"{cell.name}.parquet"
        explain_stamp = fingerprint("explain", gen_stamp, s.explanation.model_dump())

        def stage(name: str, key: str, output: Path, stamp: str, fn) -> None:
            if self.stamps.done(key, output, stamp):
                status.skipped.append(name)
                self.on_event(cell.name, name, "skipped")
                return
            self.on_event(cell.name, name, "running")
            t0 = time.perf_counter()
            self._timed(name, fn)
            status.stages[name] = round(time.perf_counter() - t0, 2)
            self.stamps.mark(key, stamp)
            self.on_event(cell.name, name, "done")

        from tunelens.evaluate import evaluate
        from tunelens.explain import explain_run
        from tunelens.infer.generate import generate_predictions
        from tunelens.train import train

        stage("train", f"train__{cell.train_name}", model_dir / "run.json", train_stamp,
              lambda: train(base_path, data_dir, model_dir, cell.strategy, cell.objective,
                            config=s.train, tracking=tracking, run_name=cell.train_name))
        stage("generate", f"generate__{cell.name}", pred, gen_stamp,
              lambda: generate_predictions(str(model_dir), data_dir / "test.jsonl", pred,
                                           config=s.generation,
                                           rag_index=rag_dir if cell.rag else None,
                                           rag_k=s.rag.k if cell.rag else None))
        stage("evaluate", f"evaluate__{cell.name}", metrics, eval_stamp,
              lambda: evaluate(pred, metrics, config=s.evaluation))
        stage("explain", f"explain__{cell.name}", attr, explain_stamp,
              lambda: explain_run(str(model_dir), pred, attr, config=s.explanation))

    # -- the whole study ---------------------------------------------------------------------

    def run(self) -> list[CellStatus]:
        self.out.mkdir(parents=True, exist_ok=True)
        write_text(self.out / "study.yaml", dump_study(self.study))
        cells = expand_matrix(self.study)
        if not cells:
            raise TunelensError("the study has no cells: list at least one model under 'models'")
        data_dir = self.prepare_data()
        rag_dir = self.rag_index(data_dir) if any(c.rag for c in cells) else None
        statuses = [CellStatus(c.name) for c in cells]
        with _tracking(self.study, self.out) as tracking:
            for cell, st in zip(cells, statuses, strict=True):
                try:
                    self.run_cell(cell, data_dir, rag_dir, st, tracking)
                    st.status = "ok"
                except KeyboardInterrupt:
                    st.status, st.error = "failed", "interrupted"
                    self._write_status(statuses)
                    raise
                except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the rest go on
                    st.status = "failed"
                    st.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
                    (self.out / "logs").mkdir(exist_ok=True)
                    write_text(self.out / "logs" / f"{cell.name}.txt", traceback.format_exc())
                    self.on_event(cell.name, "cell", "failed")
                self._write_status(statuses)
        self._finish(statuses)
        return statuses

    def _finish(self, statuses: list[CellStatus]) -> None:
        from tunelens.compare import compare_study
        from tunelens.report import write_report

        if not any(st.status == "ok" for st in statuses):
            raise TunelensError("every cell failed; see the logs/ folder of the study")
        self.on_event("study", "compare", "running")
        self._timed("compare", compare_study, self.out, self.study.comparison)
        self.on_event("study", "compare", "done")
        self.on_event("study", "report", "running")
        self._timed("report", write_report, self.out, self.study.report)
        self.on_event("study", "report", "done")
        self._write_status(statuses)

    def _write_status(self, statuses: list[CellStatus]) -> None:
        write_json(self.out / "status.json", {
            "cells": [st.__dict__ for st in statuses],
            "stage_seconds": {k: round(v, 2) for k, v in self.timings.items()},
        })


class _tracking:
    """A parent MLflow run for the study; stages log their own runs nested under it."""

    def __init__(self, study: Study, out: Path):
        self.study, self.out = study, out

    def __enter__(self):
        import mlflow

        uri = self.study.tracking.uri or f"sqlite:///{(self.out / 'mlflow.db').resolve()}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment(self.study.tracking.experiment or self.study.name)
        self.run = mlflow.start_run(run_name=f"study:{self.study.name}")
        mlflow.log_params({"models": ",".join(m.name for m in self.study.models),
                           "strategies": ",".join(self.study.strategies),
                           "objectives": ",".join(self.study.objectives)})
        return self.study.tracking.model_copy(update={"uri": uri})

    def __exit__(self, exc_type, exc, tb):
        import mlflow

        mlflow.end_run(status="FAILED" if exc_type else "FINISHED")
        return False


def _file_hash(path: Path) -> str:
    if not path.exists():
        return "missing"
    if path.is_dir():
        return fingerprint(sorted((p.name, p.stat().st_size) for p in path.iterdir()))
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def bundled_example(name: str) -> Path:
    """A study YAML shipped with the package (``examples/`` in the source tree links to them)."""
    path = Path(__file__).parent / "examples" / name
    if not path.exists():
        raise TunelensError(f"no bundled example named {name}")
    return path
