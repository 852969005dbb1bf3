"""The study runner: expand the matrix, run every stage for every cell, resume what was done.

Orchestration is ours because no library ties these stages together: Hydra/MLflow Projects
launch jobs but do not know that a RAG cell reuses the model of its non-RAG twin, that a stage is
done only when its output *and* everything that made it are unchanged, or that one failing cell
must not stop the other eleven.

Resumability: every stage output has a stamp in ``<out>/.stamps/`` holding
:func:`tunelens.fingerprint.fingerprint` of the stage's settings and of the *content* of every
file it reads (an edited row of the source file re-runs the data stage and everything after it;
a ``touch`` re-runs nothing). A stage is skipped when its output exists and its stamp matches.
Outputs are written atomically by the stages, so an interrupted study leaves no half-written
file that could be mistaken for a finished one.

Before any work the runner checks what it can (the matrix is not empty, every model path can
be found, the folder can be written); while the study runs it holds the folder's lock and its
own SIGINT handler (:mod:`tunelens.guard`) and a parent MLflow run
(:func:`tunelens.train.tracking.track_study`). Every path comes from
:class:`~tunelens.layout.StudyLayout`.
"""

from __future__ import annotations

import os
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from tunelens.config import (
    ExplanationConfig,
    GenerationConfig,
    ModelSpec,
    Study,
    TrackingConfig,
    TrainConfig,
    dump_study,
    override,
)
from tunelens.errors import TunelensError
from tunelens.fingerprint import fingerprint
from tunelens.guard import Interrupts, check_study_folder, study_lock
from tunelens.io import read_json, read_jsonl, write_json, write_text
from tunelens.layout import RunIdentity, StudyLayout
from tunelens.matrix import (
    ZOO_PREFIX,
    Cell,
    check_grpo,
    check_model_paths,
    default_zoo_root,
    expand_matrix,
    prompt_settings,
    resolve_model_path,
)
from tunelens.train.grpo_settings import GRPO

STAGES = ("train", "generate", "evaluate", "explain")
# Where a study's cells run (``tunelens run --backend``); every backend writes the same folder.
BACKENDS = {"local": "this machine: one process, or --jobs worker processes (tunelens.parallel)",
            "ray": "tasks on a Ray cluster, one per training group (tunelens.ray_backend)"}
# How a base model is loaded and prompted: part of what a training is (its stamp).
MODEL_SETTINGS = {"dtype", "trust_remote_code", "prompt_format"}
# What the bundled dataset is generated from: its stamp hashes this folder's content.
BUNDLED_SOURCE = Path(__file__).parent / "data" / "compliance"
# What explain reads of a predictions row when its target is the reference (not the prediction);
# topic and source choose the stratified sample of examples.
REFERENCE_FIELDS = ("id", "prompt", "rendered_prompt", "reference", "completion", "topic", "source")


@dataclass
class CellStatus:
    identity: RunIdentity
    status: str = "pending"  # ok | failed | pending
    error: str | None = None
    stages: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    @property
    def run(self) -> str:
        return self.identity.name

    def to_dict(self) -> dict:
        """A cell of ``status.json``: the run's identity fields, then how it went."""
        who = {k: v for k, v in self.identity.to_dict().items() if k != "name"}
        return {"run": self.run, **who, "status": self.status, "error": self.error,
                "stages": self.stages, "skipped": self.skipped}


class Stamps:
    """Per-output stamps: a stage is done when its output exists and its stamp matches."""

    def __init__(self, folder: Path):
        self.root = Path(folder)

    def done(self, key: str, output: Path, stamp: str) -> bool:
        f = self.root / f"{key}.json"
        if not (output.exists() and f.exists()):
            return False
        try:
            return read_json(f).get("stamp") == stamp
        except (TunelensError, AttributeError):  # unreadable: no stamp, the stage runs again
            return False

    def mark(self, key: str, stamp: str) -> None:
        write_json(self.root / f"{key}.json", {"stamp": stamp, "time": time.time()})


def reference_view(predictions: Path) -> str:
    """A fingerprint of what explain reads of a predictions file when it explains the reference:
    a new prediction text must not re-run attribution of the same prompts and references."""
    rows = read_jsonl(predictions)
    return fingerprint([{k: row.get(k) for k in REFERENCE_FIELDS} for row in rows])


def explain_stamp(config: ExplanationConfig, model_dir: Path, predictions: Path) -> str:
    """Explain's stamp: the model, the settings, and of the predictions only what the target
    reads (the reference alone, or with ``generation``/``both`` the model's own output too)."""
    cfg = config.model_dump(mode="json")
    if config.target == "reference":
        return fingerprint("explain", cfg, reference_view(predictions), files=[model_dir])
    return fingerprint("explain", cfg, files=[model_dir, predictions])


S = TypeVar("S", TrainConfig, GenerationConfig, ExplanationConfig)


def seeded(section: S, seed: int | None) -> S:
    """A stage's settings with the cell's seed laid over them: the seed of a replicate drives its
    training (init, data order, dropout), its sampling and its attribution, and so enters every
    stamp through those settings. A cell without a seed keeps the configured one."""
    return override(section, origin="seeds", seed=seed)


# -- the runner --------------------------------------------------------------------------------

@dataclass
class StudyRunner:
    """Runs a study into ``out``; ``on_event(cell, stage, state)`` feeds a live progress view.

    ``origin`` names the study file in error messages.
    """

    study: Study
    out: Path
    zoo_root: Path = field(default_factory=default_zoo_root)
    on_event: Callable[[str, str, str], None] = lambda cell, stage, state: None
    origin: str = "study"
    jobs: int = 1  # cells in parallel worker processes (tunelens.parallel)
    threads: int | None = None  # torch threads per worker; default: the cores shared out
    backend: str = "local"  # or "ray": the cells as tasks on a Ray cluster (tunelens.ray_backend)
    address: str | None = None  # the Ray cluster's; None: RAY_ADDRESS, else a new local one
    explain_shards: int = 1  # a cell's attribution split over this many workers (explain.shard)

    def __post_init__(self):
        self.out = Path(self.out)
        self.layout = StudyLayout(self.out)
        self.stamps = Stamps(self.layout.stamps)
        self.timings: dict[str, float] = {}
        self.wall_seconds: float | None = None
        self.interrupts = Interrupts()
        self._model_paths: dict[str, str] = {}

    def worker_state(self, group: list) -> dict:
        """What a worker process needs to run ``group`` as this runner would (picklable)."""
        models = {cell.model.name for cell, _ in group}
        # absolute: a Ray worker does not share this process's working folder
        return {"study": self.study, "out": self.out.absolute(),
                "zoo_root": Path(self.zoo_root).absolute(), "origin": self.origin,
                "backend": self.backend, "address": self.address, "threads": self.threads,
                "explain_shards": self.explain_shards,
                "model_paths": {k: str(Path(v).absolute()) if Path(v).exists() else v
                                for k, v in self._model_paths.items() if k in models}}

    @classmethod
    def for_worker(cls, state: dict, on_event: Callable[[str, str, str], None]) -> StudyRunner:
        """The runner inside a worker process, with the base models the parent resolved."""
        runner = cls(state["study"], state["out"], zoo_root=state["zoo_root"], on_event=on_event,
                     origin=state["origin"], backend=state["backend"], address=state["address"],
                     threads=state["threads"], explain_shards=state["explain_shards"])
        runner._model_paths.update(state["model_paths"])
        return runner

    def event(self, cell: str, stage: str, state: str) -> None:
        """Report progress; a Ctrl-C that a library swallowed stops the study here."""
        self.interrupts.check()
        self.on_event(cell, stage, state)

    def model_path(self, spec: ModelSpec) -> str:
        """The base model's path, building zoo models once per study run (timed as 'zoo').

        A zoo build is reported as stage 'zoo' of the model: it draws its own bars per rung, so a
        live view pauses while it runs.
        """
        if spec.name not in self._model_paths:
            zoo = spec.path.startswith(ZOO_PREFIX)
            if zoo:
                self.event(spec.name, "zoo", "running")
            self._model_paths[spec.name] = self._timed("zoo", resolve_model_path, spec,
                                                       self.zoo_root, self._zoo_threads())
            if zoo:
                self.event(spec.name, "zoo", "done")
        return self._model_paths[spec.name]

    def _zoo_threads(self) -> int | None:
        """A ladder is built before any cell runs: with parallel jobs, every worker's cores are
        idle then, so the build gets them all."""
        if self.jobs <= 1:
            return self.threads
        return min(os.cpu_count() or 1, self.jobs * (self.threads or 1))

    def _timed(self, stage: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            self.timings[stage] = self.timings.get(stage, 0.0) + time.perf_counter() - t0

    # -- study-wide stages ---------------------------------------------------------------------

    def prepare_data(self) -> None:
        data_dir, cfg = self.layout.data, self.study.data
        source = BUNDLED_SOURCE if cfg.source == "bundled" else Path(cfg.source)
        stamp = fingerprint("data", cfg.model_dump(mode="json"), files=[source])
        if self.stamps.done("data", self.layout.split("test"), stamp):
            self.event("data", "data", "skipped")
            return
        self.event("data", "data", "running")
        if cfg.source == "bundled":
            from tunelens.data.build import build_bundled

            self._timed("data", build_bundled, data_dir, cfg)
        else:
            from tunelens.data.prepare import prepare

            self._timed("data", prepare, source, data_dir, cfg)
        self.stamps.mark("data", stamp)
        self.event("data", "data", "done")

    def rag_index(self) -> None:
        index_dir, cfg = self.layout.rag, self.study.rag
        corpus = Path(cfg.corpus) if cfg.corpus else self.layout.split("train")
        files = [corpus]
        if cfg.embedding_model and Path(cfg.embedding_model).is_dir():
            files.append(Path(cfg.embedding_model))
        stamp = fingerprint("rag", cfg.model_dump(mode="json", exclude={"enabled", "k"}),
                            files=files)
        if not self.stamps.done("rag", index_dir, stamp):
            from tunelens.infer.rag import build_index

            self.event("rag", "rag", "running")
            self._timed("rag", build_index, corpus, index_dir, cfg.embedding_model)
            self.stamps.mark("rag", stamp)
            self.event("rag", "rag", "done")

    # -- one cell --------------------------------------------------------------------------------

    def run_stage(self, cell: Cell, status: CellStatus, name: str, output: Path,
                  stamp_of: Callable[[], str], fn: Callable[[], object]) -> None:
        """Run one stage of a cell unless its output exists with the stamp of its current inputs.

        The stamp is computed just before the stage, from the content of its inputs as they are
        now (a model trained a moment ago by the stage before is hashed as written).
        """
        key = f"{name}__{cell.train_name if name == 'train' else cell.name}"
        stamp = stamp_of()
        if self.stamps.done(key, output, stamp):
            status.skipped.append(name)
            self.event(cell.name, name, "skipped")
            return
        self.event(cell.name, name, "running")
        t0 = time.perf_counter()
        self._timed(name, fn)
        status.stages[name] = round(time.perf_counter() - t0, 2)
        self.stamps.mark(key, stamp)
        self.event(cell.name, name, "done")

    def run_cell(self, cell: Cell, status: CellStatus, tracking: TrackingConfig | None) -> None:
        from tunelens.evaluate import evaluate
        from tunelens.infer.generate import generate_predictions

        s, run, layout = self.study, cell.identity, self.layout
        gen, expl = seeded(s.generation, cell.seed), seeded(s.explanation, cell.seed)
        base = self.model_path(cell.model)
        model_dir, pred = layout.model_dir(run), layout.predictions(run)
        metrics, attr = layout.metrics(run), layout.attributions(run)
        rag = layout.rag if cell.identity.rag else None  # built by rag_index() before the cells
        test = layout.split("test")
        stage = self.run_stage
        stage(cell, status, "train", layout.run_json(run),
              lambda: self._train_stamp(cell, base),
              lambda: self._train(cell, base, model_dir, tracking))
        shots = self._shots(cell)
        stage(cell, status, "generate", pred,
              lambda: fingerprint("generate", gen.model_dump(mode="json"),
                                  s.rag.k if rag else None, *([shots] if shots else []),
                                  files=[model_dir, test] + ([rag] if rag else [])),
              lambda: generate_predictions(str(model_dir), test, pred, config=gen,
                                           rag_index=rag, rag_k=s.rag.k if rag else None,
                                           progress=False, shots=shots))
        stage(cell, status, "evaluate", metrics,
              lambda: fingerprint("evaluate", s.evaluation.model_dump(mode="json"), files=[pred]),
              lambda: evaluate(pred, metrics, config=s.evaluation, progress=False))
        stage(cell, status, "explain", attr, lambda: explain_stamp(expl, model_dir, pred),
              lambda: self._explain(model_dir, pred, attr, expl))
        from tunelens.explain.check_stages import run_checks  # each only when switched on

        run_checks(self, cell, status, base, expl.seed)

    def _explain(self, model_dir: Path, pred: Path, attr: Path, config: ExplanationConfig) -> None:
        """A cell's attribution: in this process, or split over ``explain_shards`` workers of the
        study's backend (the same parquet: :mod:`tunelens.explain.shard`)."""
        if self.explain_shards > 1:
            from tunelens.explain.shard import explain_sharded

            explain_sharded(str(model_dir), pred, attr, config, self.explain_shards,
                            backend=self.backend, address=self.address, threads=self.threads,
                            progress=False)
            return
        from tunelens.explain import explain_run

        explain_run(str(model_dir), pred, attr, config=config, progress=False)

    def _train_stamp(self, cell: Cell, base: str) -> str:
        local = Path(base).exists()  # a local model is known by its content, a hub id by its name
        files = ([Path(base)] if local else []) + [self.layout.split("train"), self.layout.split("val")]
        run, config = cell.identity, self._train_config(cell)
        grpo = run.strategy == GRPO
        if grpo and config.grpo.start_folder() is not None:
            files.append(config.grpo.start_folder())  # the supervised run it starts from
        return fingerprint("train", None if local else base, run.strategy, run.objective,
                           # GRPO's settings are no other strategy's concern: tuning them
                           # retrains no SFT cell
                           config.model_dump(mode="json", exclude=None if grpo else {"grpo"}),
                           cell.model.model_dump(mode="json", include=MODEL_SETTINGS),
                           *([self._trained_prompt(cell)] if cell.identity.prompt else []),
                           files=files)

    def _train_config(self, cell: Cell) -> TrainConfig:
        """The cell's training settings: the study's, with the strategy's tuned ones laid over them
        (a study written by ``tunelens tune``), and the cell's seed."""
        return seeded(self.study.tune.train_for(self.study.train, cell.identity.strategy), cell.seed)

    def _trained_prompt(self, cell: Cell) -> dict:
        """What training sees of the cell's prompt: its format and instruction."""
        settings = prompt_settings(self.study, cell.model, cell.identity.prompt)
        return {k: settings[k] for k in ("prompt_format", "instruction")}

    def _shots(self, cell: Cell) -> list[dict]:
        """The cell's few-shot examples (fixed rows of the training split), placed by generation."""
        from tunelens.data.templates import pick_shots

        n = prompt_settings(self.study, cell.model, cell.identity.prompt)["shots"]
        return pick_shots(read_jsonl(self.layout.split("train")), n) if n else []

    def _train(self, cell: Cell, base: str, model_dir: Path, tracking: TrackingConfig | None) -> None:
        from tunelens.train import train

        # the trained model is the one its RAG twin and its few-shot prompts share
        run = replace(cell.identity, rag=False, prompt=cell.identity.train_prompt or cell.identity.prompt,
                      train_prompt=None)
        spec, prompt = cell.model, self._trained_prompt(cell)
        train(base, self.layout.data, model_dir, run.strategy, run.objective,
              config=self._train_config(cell), tracking=tracking,
              run_name=run.name, identity=run.to_dict(),  # run.json records who the run is
              dtype=spec.dtype, trust_remote_code=spec.trust_remote_code,
              prompt_format=prompt["prompt_format"], instruction=prompt["instruction"])

    # -- the whole study -------------------------------------------------------------------------

    def check(self) -> list[Cell]:
        """The cells, once everything that needs no work is checked: the matrix is not empty,
        every model can be found, the study folder can be written. Writes nothing."""
        from tunelens.models.run_settings import check_dtype

        cells = expand_matrix(self.study, self.origin)
        check_model_paths(self.study, self.origin)
        check_grpo(self.study, cells, self.origin)
        for i, spec in enumerate(self.study.models):
            if spec.dtype != "auto":  # auto is known only once the checkpoint's config is read
                check_dtype(spec.dtype, f"{self.origin}: models.{i}.dtype")
        check_study_folder(self.layout)
        if self.backend == "ray":  # connects; a cell no node can hold is refused here
            from tunelens.ray_backend import check_cluster

            check_cluster(self, cells)
        return cells

    def run(self) -> list[CellStatus]:
        """Run every cell; return their statuses (a failing cell is recorded, the rest go on).

        Everything that can be checked without work is checked before anything is written.
        With ``jobs`` > 1 the cells run in worker processes (:mod:`tunelens.parallel`), with
        ``backend`` "ray" as tasks on a Ray cluster (:mod:`tunelens.ray_backend`).
        Raises KeyboardInterrupt when interrupted (rerun to resume).
        """
        from tunelens.train.tracking import track_study

        cells = self.check()
        started = time.perf_counter()
        self.out.mkdir(parents=True, exist_ok=True)
        with study_lock(self.layout), self.interrupts:
            write_text(self.layout.study_yaml, dump_study(self.study))
            for cell in cells:
                self.layout.write_identity(cell.identity)
            self.prepare_data()
            if any(c.identity.rag for c in cells):
                self.rag_index()
            statuses = [CellStatus(c.identity) for c in cells]
            groups = training_groups(cells, statuses)
            try:
                with track_study(self.study, self.layout) as tracking:
                    self._run_groups(groups, statuses, tracking)
                self._finish(statuses)
            finally:
                self.wall_seconds = time.perf_counter() - started
                self.write_status(statuses)
        return statuses

    def _run_groups(self, groups: list[list[tuple[Cell, CellStatus]]], statuses: list[CellStatus],
                    tracking: TrackingConfig | None) -> None:
        """The cells on the chosen backend: Ray tasks, local worker processes, or this process."""
        if self.backend == "ray":
            from tunelens.ray_backend import run_on_ray

            run_on_ray(self, groups, statuses, tracking)
        elif self.jobs > 1 and len(groups) > 1:
            from tunelens.parallel import run_parallel

            run_parallel(self, groups, statuses, tracking)
        else:
            self._run_serial(groups, statuses, tracking)

    def _run_serial(self, groups: list[list[tuple[Cell, CellStatus]]], statuses: list[CellStatus],
                    tracking: TrackingConfig | None) -> None:
        for group in groups:
            for cell, st in group:
                try:
                    self.run_one(cell, st, tracking)
                finally:
                    self.write_status(statuses)

    def run_one(self, cell: Cell, st: CellStatus, tracking: TrackingConfig | None) -> None:
        """Run one cell's stages; a failure is recorded in ``st``, an interrupt goes up."""
        try:
            self.run_cell(cell, st, tracking)
            st.status = "ok"
        except KeyboardInterrupt:
            st.status, st.error = "failed", "interrupted"
            raise
        except Exception as exc:  # noqa: BLE001 - a failing cell is recorded, the rest go on
            self.record_failure(cell, st, exc)

    def record_failure(self, cell: Cell, st: CellStatus, exc: BaseException) -> None:
        """A failed cell: the first line of the error in its status, the traceback in its log."""
        st.status = "failed"
        st.error = f"{type(exc).__name__}: {exc}".splitlines()[0]
        trace = "".join(traceback.format_exception(exc))
        write_text(self.layout.log(cell.identity), trace)
        self.on_event(cell.name, "cell", "failed")  # no interrupt check: this may run in one

    def _finish(self, statuses: list[CellStatus]) -> None:
        """Compare and report the cells that worked; with none, there is nothing to compare."""
        from tunelens.compare import compare_study
        from tunelens.report import write_report

        if not any(st.status == "ok" for st in statuses):
            return
        self.event("study", "compare", "running")
        self._timed("compare", compare_study, self.out, self.study.comparison)
        self.event("study", "compare", "done")
        self.event("study", "report", "running")
        self._timed("report", write_report, self.out, self.study.report)
        self.event("study", "report", "done")

    def write_status(self, statuses: list[CellStatus]) -> None:
        """``status.json``: every cell's state, the seconds per stage summed over every process
        (with parallel jobs more than the wall clock), and the wall clock once the study ends."""
        write_json(self.layout.status, {
            "cells": [st.to_dict() for st in statuses],
            "stage_seconds": {k: round(v, 2) for k, v in self.timings.items()},
            "jobs": self.jobs,
            "backend": self.backend,
            "wall_seconds": None if self.wall_seconds is None else round(self.wall_seconds, 2),
        })


def training_groups(cells: list[Cell], statuses: list[CellStatus]
                    ) -> list[list[tuple[Cell, CellStatus]]]:
    """The cells that share one training, in matrix order: a RAG cell runs after its non-RAG
    twin, which trains the model both use (one group is one worker's unit of work)."""
    groups: dict[str, list[tuple[Cell, CellStatus]]] = {}
    for cell, st in zip(cells, statuses, strict=True):
        groups.setdefault(cell.train_name, []).append((cell, st))
    return list(groups.values())


def bundled_example(name: str) -> Path:
    """A study YAML shipped with the package (``examples/`` in the source tree links to them)."""
    path = Path(__file__).parent / "examples" / name
    if not path.exists():
        raise TunelensError(f"no bundled example named {name}")
    return path
