"""Optuna's side of a tuning: storage, sampler, pruner, one Optuna study per strategy.

Optuna does the searching (TPE), the pruning (median, Hyperband) and the bookkeeping (every
trial in a database, so a rerun adds trials and many workers can share one study through a
database URL); this module only chooses its settings and checks that a study it resumes was
searching the same thing.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tunelens.errors import TunelensError, first_line
from tunelens.io import printable
from tunelens.tune.space import ParamRange, StrategySpace, TuneConfig, current_value

BASELINE = "baseline"  # user attr of the trial run at the study's own settings
FINGERPRINT = "fingerprint"  # user attr of an Optuna study: what its trials searched


def storage_url(out: Path, storage: str | None) -> str:
    """``--storage`` as given, else SQLite in ``<out>/optuna.db``."""
    return storage or f"sqlite:///{Path(out).resolve() / 'optuna.db'}"


def study_name(name: str, strategy: str) -> str:
    return f"{name}:{strategy}"


def open_storage(url: str):
    """The Optuna storage at ``url`` (created if new); one line when it cannot be opened."""
    import optuna

    try:
        return optuna.storages.RDBStorage(url)
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy raises many kinds; all mean "cannot open"
        first = first_line(exc)
        raise TunelensError(f"--storage {url}: cannot open an Optuna storage ({printable(first)})") \
            from None


def make_pruner(cfg: TuneConfig, eval_steps: int, max_steps: int):
    import optuna

    if cfg.pruner == "none":
        return optuna.pruners.NopPruner()
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=eval_steps, max_resource=max_steps,
                                              reduction_factor=3)
    return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=0)


def open_search(storage, name: str, key: str, cfg: TuneConfig, seed: int, pruner):
    """The Optuna study ``name`` (created or resumed); a resumed one must have searched ``key``.

    The sampler's seed moves on with the trials already run, so a rerun does not replay the
    random start-up draws of the run before it.
    """
    import optuna

    existing = {s.study_name: s for s in storage.get_all_studies()}
    if name in existing and existing[name].user_attrs.get(FINGERPRINT) != key:
        raise TunelensError(f"Optuna study '{name}' in {storage.url} searched other settings, data, "
                            "model or space; use another --out or --storage (or --name)")
    search = optuna.create_study(storage=storage, study_name=name, direction="minimize",
                                 pruner=pruner, load_if_exists=True)
    if name not in existing:
        search.set_user_attr(FINGERPRINT, key)
    search.sampler = optuna.samplers.TPESampler(n_startup_trials=max(1, cfg.startup_trials),
                                                seed=seed + len(search.trials))
    return search


def enqueue_baseline(search, strategy: str, space: StrategySpace, train: dict) -> bool:
    """First trial of a new search: the study's own settings, so the tuned ones are measured
    against them under the same conditions. Returns whether every dimension could take the
    study's value (a value outside the space, or a model-default dropout, is sampled instead)."""
    if search.trials:
        return False
    params, complete = {}, True
    for name, rng in space.dimensions().items():
        value = current_value(name, strategy, train)
        if value is None or not contains(rng, value):
            complete = False
            continue
        params[name] = value
    search.enqueue_trial(params, user_attrs={BASELINE: complete})
    return complete


def contains(rng: ParamRange, value) -> bool:
    if rng.choices is not None:
        return value in rng.choices
    return rng.low <= value <= rng.high


def suggest(trial, name: str, rng: ParamRange, kind: type):
    """One parameter of ``trial`` from its range: categorical, integer or float."""
    if rng.choices is not None:
        return trial.suggest_categorical(name, list(rng.choices))
    if kind is int:
        return trial.suggest_int(name, int(rng.low), int(rng.high), step=int(rng.step or 1), log=rng.log)
    return trial.suggest_float(name, float(rng.low), float(rng.high), step=rng.step, log=rng.log)


def quiet_optuna() -> None:
    """Optuna logs a line per trial (our bar says it) and warns that its enqueue is experimental."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
