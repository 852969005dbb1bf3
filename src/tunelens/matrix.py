"""The study's matrix: its cells, the checks made on it before any work, and an estimate of it.

A study is models × strategies × objectives × prompts × retrieval × seeds (plus
``extra_cells``; without ``prompts`` there is no prompt dimension); each
cell is a base model and a :class:`~tunelens.layout.RunIdentity`, and every cell is one seed's
replicate: trained, generated, scored and attributed with that seed. Everything here is known from the config
alone, so ``tunelens run --dry-run`` and the checks before any work use it without running
anything; :mod:`tunelens.study` runs the cells.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tunelens.config import ModelSpec, Study
from tunelens.errors import TunelensError
from tunelens.explain.check_stages import enabled_checks
from tunelens.layout import RunIdentity
from tunelens.models import references
from tunelens.models.loading import looks_like_path
from tunelens.train.catalog import UNTRAINED
from tunelens.train.grpo_settings import GRPO

ZOO_PREFIX = "zoo:"


@dataclass(frozen=True)
class Cell:
    """One cell of the matrix: a base model and who the run is. RAG cells share the trained
    model of their non-RAG twin of the same seed."""

    model: ModelSpec
    identity: RunIdentity

    @classmethod
    def of(cls, model: ModelSpec, strategy: str, objective: str, rag: bool = False,
           seed: int | None = None, prompt: str | None = None, study: Study | None = None) -> Cell:
        """The cell; with ``study``, a prompt that trains like an earlier one of the study (same
        format and instruction) shares that prompt's trained model."""
        shared = training_prompt(study, model, prompt) if study is not None and prompt else None
        return cls(model, RunIdentity(model.name, strategy, objective, bool(rag), seed, prompt,
                                      shared if shared != prompt else None))

    @property
    def seed(self) -> int | None:
        return self.identity.seed

    @property
    def name(self) -> str:
        return self.identity.name

    @property
    def train_name(self) -> str:
        return self.identity.train_name


def expand_matrix(study: Study, origin: str = "study") -> list[Cell]:
    """models × strategies × objectives × prompts × rag × seeds, then ``extra_cells`` (each
    with its own seed, else every seed of the study); duplicates dropped, order kept.

    The seed varies fastest, so a cell's replicates sit together and a RAG cell comes after the
    twin of its seed. Strategy, objective and rag values are validated by the config (from the
    registries in :mod:`tunelens.train.catalog`); a study with no cell is refused here, before
    anything runs.
    """
    models = {m.name: m for m in study.models}
    prompts = study.prompts or [None]
    cells = [Cell.of(m, s, o, r, seed, p, study) for m in study.models for s in study.strategies
             for o in study.objectives for p in prompts for r in study.rag.enabled
             for seed in study.seeds]
    for i, extra in enumerate(study.extra_cells):
        if extra.get("model") not in models:
            raise TunelensError(f"{origin}: extra_cells.{i}.model: unknown model "
                                f"'{extra.get('model')}' (models: {', '.join(models) or 'none'})")
        seeds = [extra["seed"]] if "seed" in extra else study.seeds
        cells += [Cell.of(models[extra["model"]], extra.get("strategy", study.strategies[0]),
                          extra.get("objective", study.objectives[0]), extra.get("rag", False), seed,
                          extra.get("prompt", prompts[0]), study)
                  for seed in seeds]
    if not cells:
        raise TunelensError(f"{origin}: the study has no cells: list at least one model under "
                            "'models'")
    seen: set[str] = set()
    return [c for c in cells if not (c.name in seen or seen.add(c.name))]


def prompt_settings(study: Study, model: ModelSpec, prompt: str | None) -> dict:
    """How a cell prompts its model: its named prompt's format (``auto``: the model's
    ``prompt_format``), instruction and number of few-shot examples; without a named prompt, the
    model's ``prompt_format`` alone."""
    named = study.prompt(prompt) if prompt else None
    if named is None:
        return {"prompt_format": model.prompt_format, "instruction": None, "shots": 0}
    return {"prompt_format": model.prompt_format if named.format == "auto" else named.format,
            "instruction": named.instruction, "shots": named.shots}


def training_prompt(study: Study, model: ModelSpec, prompt: str) -> str:
    """The first of the study's prompts that trains ``model`` as ``prompt`` does (training sees
    the format and instruction, never the few-shot examples)."""
    def trains(p):
        s = prompt_settings(study, model, p)
        return (s["prompt_format"], s["instruction"])

    return next((p for p in study.prompts if trains(p) == trains(prompt)), prompt)


# -- checks made before any work -------------------------------------------------------------

def zoo_reference(spec: ModelSpec, origin: str = "study") -> tuple[str, str]:
    """``(preset, name)`` of a ``zoo:<preset>/<name>`` path, or one line naming the model."""
    preset, _, name = spec.path[len(ZOO_PREFIX):].partition("/")
    if not preset or not name:
        raise TunelensError(f"{origin}: models.{spec.name}.path: expected zoo:<preset>/<name>, "
                            f"got {spec.path}")
    return preset, name


def check_model_paths(study: Study, origin: str = "study") -> None:
    """Every base model must be findable before the data stage: a zoo reference names a preset
    and a rung of it, a local path exists, a GGUF reference is installed and intact (a hub id is
    looked up when the model is loaded)."""
    for spec in study.models:
        where = f"{origin}: models.{spec.name}.path"
        if spec.path.startswith(ZOO_PREFIX):
            preset, name = zoo_reference(spec, origin)
            from tunelens.models.zoo import PRESETS

            if preset not in PRESETS:
                raise TunelensError(f"{where}: unknown zoo preset '{preset}' in {spec.path} "
                                    f"(presets: {', '.join(PRESETS)})")
            rungs = [r.name for r in PRESETS[preset].rungs]
            if name not in rungs:
                raise TunelensError(f"{where}: no model '{name}' in zoo preset '{preset}' "
                                    f"({', '.join(rungs)})")
        elif references.is_gguf_reference(spec.path) or references.unknown_short_name(spec.path):
            try:  # a .gguf file or a packaged model's short name: checked, not yet converted
                references.check(spec.path)
            except TunelensError as exc:
                raise TunelensError(f"{where}: {exc}") from None
        elif not Path(spec.path).expanduser().exists() and looks_like_path(spec.path):
            raise TunelensError(f"{where}: {spec.path}: no such model folder")


def check_grpo(study: Study, cells: list[Cell], origin: str = "study") -> None:
    """A ``grpo`` cell samples completions for prompts (objective ``instruct``) and starts from a
    supervised run that must exist when ``init_from`` names one."""
    grpo = [c for c in cells if c.identity.strategy == GRPO]
    for cell in grpo:
        if cell.identity.objective != "instruct":
            raise TunelensError(f"{origin}: {cell.name}: strategy grpo samples completions for "
                                "prompts: it needs objective 'instruct'")
    start = study.train.grpo.start_folder()
    if grpo and start is not None and not (start / "run.json").is_file():
        raise TunelensError(f"{origin}: train.grpo.init_from: {start} is not a finished training "
                            "run (no run.json)")


# -- zoo models and the estimate -------------------------------------------------------------

def resolve_model_path(spec: ModelSpec, zoo_root: Path, threads: int | None = None) -> str:
    """``zoo:<preset>/<name>`` names a ladder model, built on first use (pre-trained with
    ``threads`` torch threads); anything else is as given."""
    if not spec.path.startswith(ZOO_PREFIX):
        return spec.path
    preset, name = zoo_reference(spec)
    from tunelens.models.zoo import build_zoo

    entries = build_zoo(preset, zoo_root / preset, threads=threads)
    for e in entries:
        if e["name"] == name:
            return str(e["path"])
    names = ", ".join(e["name"] for e in entries)
    raise TunelensError(f"models.{spec.name}.path: no model '{name}' in zoo preset '{preset}' ({names})")


def estimate(study: Study, cells: list[Cell]) -> dict:
    """A rough count of the work: training steps, generated tokens, scored perturbations.

    Every seed is a training of its own (models × strategies × objectives × seeds, RAG twins
    sharing theirs); explaining ``both`` targets attributes each sampled example twice.
    """
    trained = {c.train_name: c.identity.strategy for c in cells if c.identity.strategy != UNTRAINED}

    def steps(strategy: str) -> int:  # GRPO trains its supervised start, then its own steps
        train = study.tune.train_for(study.train, strategy)
        if strategy != GRPO:
            return train.max_steps
        start = 0 if train.grpo.init_from else (train.grpo.sft_steps or train.max_steps)
        return start + train.grpo.steps

    gen = study.generation
    n_test = gen.max_examples or 100
    targets = 2 if study.explanation.target == "both" else 1
    n_explain = min(study.explanation.max_examples or n_test, n_test) * targets
    per_example = {"occlusion": 40, "shapley": 40 * study.explanation.n_samples,
                   "lime": study.explanation.n_samples}.get(study.explanation.method, 40)
    return {
        "cells": len(cells),
        "seeds": len({c.seed for c in cells}),
        "trainings": len(trained),
        "train_steps": sum(steps(s) for s in trained.values()),
        "generated_tokens_max": len(cells) * n_test * gen.max_new_tokens * gen.num_samples,
        "explained_examples": len(cells) * n_explain,
        "perturbations_approx": len(cells) * n_explain * per_example,
        "check_stages": sum(len(enabled_checks(study.checks, c.identity.rag)) for c in cells),
    }


def default_zoo_root() -> Path:
    return Path.home() / ".cache" / "tunelens" / "zoo"
