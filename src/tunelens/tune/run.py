"""``tune_study``: hyper-parameter search for each strategy of a study, on the study's own data.

Each trial is one tunelens training (:func:`tunelens.train.train`) of the study's tuned model
(``tune.model``, default the first) with the study's first objective and seed, at settings Optuna
proposes; its validation loss after training is what is minimised, and the validation loss at
each periodic evaluation is what the pruner sees (:class:`~tunelens.tune.pruning.PruneOnEval`).
The data stage and zoo models are the study runner's own (:class:`tunelens.study.StudyRunner`,
into ``<out>/data``), so trials read exactly the splits ``tunelens run`` would.

``<out>`` holds ``optuna.db`` (unless ``--storage``), ``data/``, ``trials/<strategy>/trial-NNN/
run.json`` (a trial's losses and settings; weights are not kept: ``tunelens run best.yaml``
trains the winners), ``tuning.json``, ``figures/*.png`` and ``best.yaml``.
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from tunelens.config import ModelSpec, Study, TrackingConfig, TrainConfig
from tunelens.errors import TunelensError
from tunelens.fingerprint import fingerprint
from tunelens.guard import study_lock
from tunelens.io import check_writable
from tunelens.layout import StudyLayout
from tunelens.tune import search as opt
from tunelens.tune.space import PARAMS, TUNABLE, UNTUNED, StrategySpace, merge, overrides

TRIALS = "trials"


@dataclass
class Plan:
    """What a tuning will do, checked before anything is written."""

    study: Study
    out: Path
    trials: int
    storage: str
    name: str
    model: ModelSpec
    strategies: list[str]
    objective: str
    seed: int
    spaces: dict[str, StrategySpace] = field(default_factory=dict)

    def base_train(self, strategy: str) -> TrainConfig:
        """The settings a trial starts from: the study's (with any earlier tuning's best laid
        over), at the first seed, with periodic evaluations for the pruner to see."""
        s = self.study
        return s.tune.train_for(s.train, strategy).model_copy(update={"seed": self.seed})

    def eval_steps(self, max_steps: int) -> int:
        return self.study.train.eval_steps or max(1, max_steps // self.study.tune.evaluations)


def plan_tuning(study: Study, out: Path, trials: int, storage: str | None = None,
                strategies: list[str] | None = None, name: str | None = None,
                origin: str = "study") -> Plan:
    """Every check that needs no work: trials, strategies, the tuned model and its path, the
    output folder. Writes nothing."""
    from tunelens.matrix import check_model_paths

    if trials < 1:
        raise TunelensError(f"--trials {trials}: run at least one trial")
    chosen = list(dict.fromkeys(strategies or [s for s in study.strategies if s in TUNABLE]))
    unknown = [s for s in chosen if s not in study.strategies]
    if unknown:
        raise TunelensError(f"{origin}: strategy {', '.join(unknown)} is not in the study "
                            f"(strategies: {', '.join(study.strategies)})")
    untuned = [s for s in chosen if s in UNTUNED]
    if untuned or not chosen:
        why = "; ".join(f"{s} {UNTUNED[s]}" for s in untuned) or "none of its strategies trains"
        raise TunelensError(f"{origin}: nothing to tune ({why})")
    if not study.models:
        raise TunelensError(f"{origin}: no models to tune (models: is empty)")
    names = [m.name for m in study.models]
    wanted = study.tune.model or names[0]
    if wanted not in names:
        raise TunelensError(f"{origin}: tune.model '{wanted}' is not a study model ({', '.join(names)})")
    check_model_paths(study, origin)
    check_writable(out, "dir")
    plan = Plan(study=study, out=Path(out), trials=trials, storage=opt.storage_url(out, storage),
                name=name or study.name, model=study.models[names.index(wanted)], strategies=chosen,
                objective=study.objectives[0], seed=study.seeds[0])
    for strategy in chosen:
        plan.spaces[strategy] = study.tune.space_for(strategy, plan.base_train(strategy).model_dump())
    return plan


@dataclass
class Context:
    """What every trial of one strategy shares."""

    plan: Plan
    strategy: str
    base_model: str
    data_dir: Path


def run_trial(trial, ctx: Context) -> float:
    """Train at the trial's settings; the validation loss after training, or TrialPruned."""
    import optuna

    from tunelens.layout import RunIdentity
    from tunelens.train import train
    from tunelens.train.runner import partial_dir
    from tunelens.tune.pruning import PruneOnEval

    plan, strategy = ctx.plan, ctx.strategy
    params = {name: opt.suggest(trial, name, rng, PARAMS[name][0])
              for name, rng in plan.spaces[strategy].dimensions().items()}
    base = plan.base_train(strategy)
    config = TrainConfig.model_validate(merge(base.model_dump(), overrides(strategy, params)))
    config = config.model_copy(update={"eval_steps": plan.eval_steps(config.max_steps)})
    folder = plan.out / TRIALS / strategy / f"trial-{trial.number:03d}"
    prune, spec = PruneOnEval(trial), plan.model
    identity = RunIdentity(spec.name, strategy, plan.objective, seed=plan.seed)
    try:
        info = train(ctx.base_model, ctx.data_dir, folder, strategy, plan.objective, config=config,
                     tracking=TrackingConfig(enabled=False), run_name=f"{identity.name}__t{trial.number}",
                     callbacks=[prune], identity=identity.to_dict(), dtype=spec.dtype,
                     trust_remote_code=spec.trust_remote_code, prompt_format=spec.prompt_format)
    except KeyboardInterrupt:  # a trial is never resumed (a rerun starts new ones): drop its checkpoint
        shutil.rmtree(partial_dir(folder), ignore_errors=True)
        raise
    keep_record_only(folder)
    trial.set_user_attr("run", str(folder))
    trial.set_user_attr("val_loss_before", info["val_loss_before"])
    loss = info["val_loss_after"]
    if prune.pruned_at is not None:
        trial.set_user_attr("pruned_at", prune.pruned_at)
        raise optuna.TrialPruned(f"pruned at step {prune.pruned_at}")
    return loss if loss is not None and math.isfinite(loss) else float("nan")


def keep_record_only(folder: Path) -> None:
    """A trial keeps its ``run.json`` (losses, settings); weights of hundreds of trials would fill
    a disk, and the winners are retrained by ``tunelens run best.yaml``."""
    for path in folder.iterdir():
        if path.name != "run.json":
            shutil.rmtree(path) if path.is_dir() else path.unlink()


def search_key(plan: Plan, strategy: str, ctx: Context) -> str:
    """What one Optuna study's trials mean: model, objective, starting settings, space, and the
    content of the data (and of a local model)."""
    files = [ctx.data_dir / "train.jsonl", ctx.data_dir / "val.jsonl"]
    local = Path(ctx.base_model).exists()
    spec = plan.model.model_dump(mode="json", exclude={"name"})
    return fingerprint("tune", strategy, plan.objective, None if local else ctx.base_model, spec,
                       plan.base_train(strategy).model_dump(mode="json"),
                       plan.spaces[strategy].model_dump(mode="json"),
                       files=files + ([Path(ctx.base_model)] if local else []))


@dataclass
class TuneResult:
    out: Path
    storage: str
    summary: dict
    best_yaml: Path | None
    figures: dict[str, Path]


def tune_study(study: Study, out: Path, trials: int, *, storage: str | None = None,
               strategies: list[str] | None = None, name: str | None = None,
               zoo_root: Path | None = None, origin: str = "study", progress: bool = False) -> TuneResult:
    """Run ``trials`` more trials per strategy (a rerun adds to the same Optuna studies), then
    write ``tuning.json``, the figures and ``best.yaml`` into ``out``."""
    from tunelens.tune.outputs import write_outputs

    plan = plan_tuning(study, out, trials, storage, strategies, name, origin)
    created = not plan.out.exists()
    plan.out.mkdir(parents=True, exist_ok=True)
    try:
        opt.quiet_optuna()
        storage_obj = opt.open_storage(plan.storage)
    except TunelensError:
        if created:
            shutil.rmtree(plan.out, ignore_errors=True)
        raise
    with study_lock(StudyLayout(plan.out)):  # workers sharing --storage each use their own --out
        contexts = _prepare(plan, zoo_root)
        searches = {s: _search(plan, storage_obj, ctx) for s, ctx in contexts.items()}
        _optimise(plan, searches, contexts, progress)
        summary, best_yaml, figures = write_outputs(plan, searches)
    return TuneResult(out=plan.out, storage=plan.storage, summary=summary, best_yaml=best_yaml,
                      figures=figures)


def _prepare(plan: Plan, zoo_root: Path | None) -> dict[str, Context]:
    """The study's data stage into ``<out>/data`` and its tuned base model (built if a zoo rung)."""
    from tunelens.study import StudyRunner

    kwargs = {"zoo_root": zoo_root} if zoo_root is not None else {}
    runner = StudyRunner(plan.study, plan.out, **kwargs)
    runner.prepare_data()
    base = runner.model_path(plan.model)
    return {s: Context(plan, s, base, runner.layout.data) for s in plan.strategies}


def _search(plan: Plan, storage, ctx: Context):
    base = plan.base_train(ctx.strategy)
    steps = plan.spaces[ctx.strategy].max_steps  # Hyperband's largest budget: the most steps a trial takes
    most = base.max_steps if steps is None else int(max(steps.values()))
    pruner = opt.make_pruner(plan.study.tune, plan.eval_steps(base.max_steps), most)
    search = opt.open_search(storage, opt.study_name(plan.name, ctx.strategy),
                             search_key(plan, ctx.strategy, ctx), plan.study.tune, plan.seed, pruner)
    opt.enqueue_baseline(search, ctx.strategy, plan.spaces[ctx.strategy], base.model_dump())
    return search


def _optimise(plan: Plan, searches: dict, contexts: dict[str, Context], progress: bool) -> None:
    """``plan.trials`` trials per strategy, one strategy after another, under one bar per strategy."""
    from tunelens.progress import item_bar
    from tunelens.runtime import quiet_libraries

    quiet_libraries()
    with item_bar(progress, fields=("best",)) as bar:
        for strategy, search in searches.items():
            task = bar.add_task(f"tune {strategy}", total=plan.trials, best=_best_text(search))

            def advance(study, trial, task=task) -> None:
                bar.update(task, advance=1, best=_best_text(study))

            search.optimize(lambda trial, s=strategy: run_trial(trial, contexts[s]),
                            n_trials=plan.trials, callbacks=[advance], catch=(RuntimeError,))


def _best_text(search) -> str:
    from tunelens.format import DASH, number

    try:
        return f"val loss {number(search.best_value, 4)}"
    except ValueError:  # no finished trial yet
        return DASH
