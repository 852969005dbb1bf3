"""``train(...)``: one fine-tuning run, from a data folder to a run folder with ``run.json``.

TRL's SFTTrainer does the training (no loop of ours); this module wires the pieces and owns the
run folder's life cycle, in five named steps: read the inputs, build the trainer, decide whether
to resume, fit, and finish (write and rename the run folder).

* Everything is written into ``<out parent>/.<out name>.partial/`` and renamed to ``out`` only
  when the run has finished, with ``run.json`` written last: a folder without ``run.json`` is never
  a finished run, and a failed run never replaces a good one.
* The first Ctrl-C asks the Trainer to checkpoint at the end of the current step and stop (see
  :class:`~tunelens.train.callbacks.InterruptCheckpoint`); the checkpoint is written by the
  Trainer's own save path into ``.partial/checkpoints/``. A second Ctrl-C stops at once and keeps
  only checkpoints already written (a half-done step is never saved). Rerunning the same command
  resumes from the last checkpoint with the Trainer's ``resume_from_checkpoint`` when the
  fingerprint in ``.partial/resume.json`` still matches: the settings plus the *content* of the
  base model (when it is a local path), ``train.jsonl`` and ``val.jsonl``. Anything different, an
  edited row included, starts over.
* ``run.json["identity"]`` records who the run is (model, strategy, objective, rag, seed) as data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from tunelens.config import TrackingConfig, TrainConfig
from tunelens.contracts import RunRecord
from tunelens.errors import TunelensError
from tunelens.fingerprint import fingerprint
from tunelens.io import read_json, write_json
from tunelens.layout import RunIdentity
from tunelens.models.run_settings import ModelSettings
from tunelens.train import curriculum
from tunelens.train.callbacks import (
    GradualUnfreezing,
    InterruptCheckpoint,
    PeakMemory,
    RichProgress,
    SessionTokens,
)
from tunelens.train.catalog import UNTRAINED
from tunelens.train.grpo_settings import GRPO
from tunelens.train.heap import pin_mmap_threshold
from tunelens.train.objectives import check_objective, format_rows, load_split
from tunelens.train.prompt_only import write_prompt_only
from tunelens.train.strategies import StrategySpec, apply_strategy, check_strategy, count_params, load_base
from tunelens.train.tracking import Tracker
from tunelens.train.trainer_args import check_optimizer, cpu_lm_head, precision, sft_config

CHECKPOINTS = "checkpoints"
RESUME = "resume.json"


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def resumable_checkpoint(out: Path) -> Path | None:
    """The checkpoint an interrupted run to ``out`` left (what a rerun would resume from, if its
    inputs are unchanged), or None: after a second Ctrl-C there may be none to promise."""
    found = _last_checkpoint(partial_dir(Path(out)) / CHECKPOINTS)
    return Path(found) if found else None


@dataclass
class RunInputs:
    """What a run reads and is asked to do, checked before any model is loaded."""

    model: str
    data_dir: Path
    strategy: str
    objective: str
    config: TrainConfig
    spec: StrategySpec
    train_rows: list[dict]
    val_rows: list[dict]
    identity: dict
    settings: ModelSettings = ModelSettings()

    @property
    def is_local(self) -> bool:
        return Path(self.model).exists()

    @property
    def base_model(self) -> str:
        """An absolute path for a local model (so run.json stays valid from any folder), else the id."""
        return str(Path(self.model).resolve()) if self.is_local else self.model

    def fingerprint(self) -> str:
        """Settings plus the content of everything training reads: the one resume key."""
        files = [Path(self.model)] if self.is_local else []
        files += [self.data_dir / "train.jsonl", self.data_dir / "val.jsonl"]
        model_id = None if self.is_local else self.model  # a moved copy of a local model is the same
        return fingerprint("train", model_id, self.strategy, self.objective,
                           self.config.model_dump(mode="json"), vars(self.settings), files=files)


@dataclass
class Session:
    """A built trainer and the callbacks the runner reads back after fitting."""

    inputs: RunInputs
    trainer: object
    tokenizer: object
    work: Path
    peak: PeakMemory
    interrupt: InterruptCheckpoint
    tokens: SessionTokens
    bar: RichProgress | None
    params: tuple[int, int]
    measure: object = None  # () -> validation loss, for a trainer whose evaluate() gives none (grpo)

    def val_loss(self) -> float:
        return self.measure() if self.measure is not None else self.trainer.evaluate()["eval_loss"]


def train(model: str, data_dir: Path, out: Path, strategy: str, objective: str,
          config: TrainConfig | None = None, tracking: TrackingConfig | None = None,
          run_name: str | None = None, *, callbacks: list | None = None,
          progress: bool = False, identity: dict | None = None, dtype: str | None = None,
          trust_remote_code: bool | None = None, prompt_format: str | None = None,
          instruction: str | None = None) -> dict:
    """Fine-tune ``model`` on ``data_dir/{train,val}.jsonl``; return the run.json written to ``out``.

    ``dtype``, ``trust_remote_code`` and ``prompt_format`` are the model's
    (:class:`~tunelens.config.ModelSpec`): the base is loaded and prompted that way, and run.json
    records them (the prompt format resolved) so later stages reload the run the same way; not
    given, they are what ``model``'s own run.json records (a run trained further), else the
    schema's defaults. ``instruction`` replaces the default instruction line (a study's named
    prompt; run.json keeps it). Strategy ``none`` trains nothing: ``out``
    gets a run.json pointing at the base (:mod:`tunelens.train.prompt_only`).
    ``callbacks`` are extra transformers ``TrainerCallback`` objects; ``progress`` shows a rich bar.
    ``identity`` is the run's :meth:`RunIdentity.to_dict` (the study passes it); without it the
    identity this call knows is recorded. Raises KeyboardInterrupt when interrupted (after
    checkpointing on the first Ctrl-C); rerun to resume.
    """
    out = Path(out)
    settings = ModelSettings.of(model, dtype, trust_remote_code, prompt_format, instruction)
    if strategy == UNTRAINED:
        return write_prompt_only(model, Path(data_dir), out, objective, settings, identity)
    if strategy == GRPO:  # a supervised start, then GRPO (tunelens.train.grpo)
        from tunelens.train.grpo import train_grpo

        return train_grpo(model, Path(data_dir), out, objective, config or TrainConfig(), tracking,
                          run_name, callbacks=callbacks, progress=progress, identity=identity,
                          settings=settings)
    inputs = read_inputs(model, Path(data_dir), strategy, objective, config or TrainConfig(), identity,
                         settings)
    if inputs.config.release_memory:  # memory over time: see tunelens.train.heap
        pin_mmap_threshold()
    with quiet_run(), cpu_lm_head():
        session = build_trainer(inputs, partial_dir(out), callbacks, progress)
        resume, resume_from = prepare_resume(session.work, inputs.fingerprint())
        tracker = None
        if tracking is None or tracking.enabled:
            tracker = Tracker(out, tracking, run_name or out.name)
        result, val_after = fit(session, resume, resume_from, tracker)
        info = finish(session, out, result, resume, val_after, resume_from, tracker)
    if tracker is not None:
        log_run(tracker, inputs, info, out)
    return info


def read_inputs(model: str, data_dir: Path, strategy: str, objective: str, config: TrainConfig,
                identity: dict | None, settings: ModelSettings | None = None) -> RunInputs:
    """Check the names and read both splits (``file:line`` on a bad row) before loading a model."""
    check_strategy(strategy)
    check_objective(objective)
    check_optimizer(config.optimizer)
    return RunInputs(
        model=model, data_dir=data_dir, strategy=strategy, objective=objective, config=config,
        spec=StrategySpec.from_config(strategy, config),
        train_rows=load_split(data_dir, "train"), val_rows=load_split(data_dir, "val"),
        identity=run_identity(model, strategy, objective, identity),
        settings=settings or ModelSettings(),
    )


def run_identity(model: str, strategy: str, objective: str, identity: dict | None) -> dict:
    """The identity to record: the caller's (checked against what is trained), else what we know.

    Without a study there is no short model name, so a local model is named by its folder.
    """
    if identity is None:
        name = Path(model).name if Path(model).exists() else model
        return RunIdentity(name, strategy, objective).to_dict()
    parsed = RunIdentity.from_dict(identity, origin="train(identity=...)")
    if (parsed.strategy, parsed.objective) != (strategy, objective):
        raise TunelensError(f"train(identity=...): identity is {parsed.strategy}/{parsed.objective} "
                            f"but this run trains {strategy}/{objective}")
    return {**identity, **parsed.to_dict()}


def prepare_resume(work: Path, key: str) -> tuple[dict, str | None]:
    """(resume state, checkpoint to resume from); a fresh start empties ``work`` first, so nothing
    of an older attempt can leak into this one."""
    resume = _resume_state(work, key)
    resume_from = _last_checkpoint(work / CHECKPOINTS) if "val_loss_before" in resume else None
    if resume_from is None:
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
    return resume, resume_from


def build_trainer(inputs: RunInputs, work: Path, callbacks: list | None, progress: bool) -> Session:
    """Load the base the strategy's way, format and order the rows, and build TRL's SFTTrainer."""
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import SFTTrainer

    config, spec, settings = inputs.config, inputs.spec, inputs.settings
    base, tokenizer = load_base(inputs.model, spec, settings.dtype, settings.trust_remote_code)
    fmt = settings.record(tokenizer)["prompt_format"]  # 'chat' without a template fails here
    train_examples = format_rows(inputs.train_rows, tokenizer, inputs.objective, fmt,
                                 settings.instruction)
    val_examples = format_rows(inputs.val_rows, tokenizer, inputs.objective, fmt, settings.instruction)
    train_examples = curriculum.order(train_examples, config.curriculum, tokenizer, base,
                                      batch_size=config.batch_size)
    set_seed(config.seed)
    tuned = apply_strategy(base, spec)

    peak, interrupt, tokens = PeakMemory(), InterruptCheckpoint(), SessionTokens()
    bar = RichProgress(f"{inputs.strategy}/{inputs.objective}") if progress else None
    trainer = SFTTrainer(
        model=tuned,
        args=sft_config(config, spec, inputs.objective, work / CHECKPOINTS),
        train_dataset=Dataset.from_list(train_examples),
        eval_dataset=Dataset.from_list(val_examples),
        processing_class=tokenizer,
        callbacks=[peak, interrupt, tokens, *(callbacks or []), *_optional_callbacks(spec, config, bar)],
    )
    trainer.remove_callback(PrinterCallback)  # the log dicts it prints are for notebooks
    return Session(inputs=inputs, trainer=trainer, tokenizer=tokenizer, work=work, peak=peak,
                   interrupt=interrupt, tokens=tokens, bar=bar, params=count_params(trainer.model))


def fit(session: Session, resume: dict, resume_from: str | None, tracker) -> tuple[object, float]:
    """Train (resuming if asked); return (the Trainer's result, validation loss after).

    The validation loss before training is measured once and kept in resume.json, so a resumed
    run reports the loss of the untrained model, not of its checkpoint.
    """
    trainer, work = session.trainer, session.work
    try:
        if "val_loss_before" not in resume:
            resume["val_loss_before"] = session.val_loss()
            write_json(work / RESUME, resume)
        started = time.perf_counter()
        try:
            result = trainer.train(resume_from_checkpoint=resume_from)
        finally:
            resume["wall_seconds"] = resume.get("wall_seconds", 0.0) + time.perf_counter() - started
            write_json(work / RESUME, resume)
            session.interrupt.restore()
            session.peak.stop()
            if session.bar is not None:
                session.bar.close()
        if session.interrupt.interrupted_at is not None:
            raise KeyboardInterrupt(f"interrupted at step {session.interrupt.interrupted_at}")
        return result, session.val_loss()
    except BaseException as exc:
        if tracker is not None:
            tracker.fail("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        if not isinstance(exc, KeyboardInterrupt) and _last_checkpoint(work / CHECKPOINTS) is None:
            shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming from
        raise


def finish(session: Session, out: Path, result, resume: dict, val_after: float,
           resume_from: str | None, tracker, extra: dict | None = None, *, model=None,
           state_dict: dict | None = None) -> dict:
    """Save weights, tokenizer and run.json (last) into the partial folder, then rename it to ``out``.
    ``extra`` keys are laid over run.json's (a strategy's own record); ``model`` and ``state_dict``
    replace the trainer's model and its weights (a launched run: the unwrapped model, and the
    weights gathered from every process where they were sharded, :mod:`tunelens.train.launch`)."""
    work = session.work
    info = {**_run_info(session, result, resume, val_after, resume_from, tracker), **(extra or {})}
    shutil.rmtree(work / CHECKPOINTS, ignore_errors=True)
    (work / RESUME).unlink(missing_ok=True)
    (model or session.trainer.model).save_pretrained(work, state_dict=state_dict)
    session.tokenizer.save_pretrained(work)
    RunRecord.model_validate(info)  # the contract other code reads run.json by
    write_json(work / "run.json", info)
    _replace(work, out)
    return info


def log_run(tracker: Tracker, inputs: RunInputs, info: dict, out: Path) -> None:
    """Log a finished run to MLflow; a store that fails is a warning (the run folder is saved)."""
    try:
        tracker.finish(
            params={"strategy": inputs.strategy, "objective": inputs.objective,
                    "base_model": inputs.base_model, "train": inputs.config.model_dump(mode="json")},
            run_info=info, files=[out / "run.json", out / "adapter_config.json"],
        )
    except Exception as exc:  # noqa: BLE001 - the run itself is saved; say so, keep it
        warnings.warn(f"MLflow logging to {tracker.uri} failed: {exc}", stacklevel=3)


def _optional_callbacks(spec: StrategySpec, config: TrainConfig, bar) -> list:
    from transformers import EarlyStoppingCallback

    extra: list = []
    if spec.gradual_unfreezing:
        extra.append(GradualUnfreezing())
    if config.early_stopping_patience:
        extra.append(EarlyStoppingCallback(config.early_stopping_patience))
    if bar is not None:
        extra.append(bar)
    return extra


def _run_info(session: Session, result, resume: dict, val_after: float, resumed_from: str | None,
              tracker) -> dict:
    inputs, trainer, config = session.inputs, session.trainer, session.inputs.config
    quant = inputs.spec.quantization
    history = trainer.state.log_history
    evals = {h["step"]: h["eval_loss"] for h in reversed(history) if "eval_loss" in h}
    runtime = result.metrics.get("train_runtime") or 0.0
    tokens = session.tokens.seen(trainer.state)
    return {
        "identity": inputs.identity,
        "strategy": inputs.strategy,
        "objective": inputs.objective,
        "base_model": inputs.base_model,
        **inputs.settings.record(session.tokenizer),
        "adapter": inputs.spec.is_adapter,
        "trainable_params": session.params[0],
        "total_params": session.params[1],
        "train_loss": [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h],
        "val_loss": [{"step": step, "loss": loss} for step, loss in sorted(evals.items())],
        "val_loss_before": resume["val_loss_before"],
        "val_loss_after": val_after,
        "global_step": trainer.state.global_step,
        "stopped_early": trainer.state.global_step < config.max_steps,
        "resumed_from_step": _step_of(resumed_from),
        "wall_seconds": round(resume["wall_seconds"], 3),
        "tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "peak_rss_mb": session.peak.peak_rss_mb,
        "peak_gpu_mb": session.peak.peak_gpu_mb,
        "precision": precision(config),
        "device": str(trainer.args.device),
        "quantization": quant.model_dump(mode="json") if quant else None,
        "config": config.model_dump(mode="json"),
        "data": {"dir": str(inputs.data_dir.resolve()), "train_rows": len(inputs.train_rows),
                 "val_rows": len(inputs.val_rows), "fingerprint": resume["fingerprint"]},
        "mlflow": None if tracker is None else {
            "tracking_uri": tracker.uri, "experiment": tracker.experiment_name, "run_id": tracker.run_id,
        },
        "versions": _versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl.__version__}


def _step_of(checkpoint: str | None) -> int | None:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else None


def _resume_state(work: Path, key: str) -> dict:
    """The saved state of an interrupted identical run that left a checkpoint, else a fresh one."""
    state: dict = {}
    if (work / RESUME).exists():
        with contextlib.suppress(Exception):
            state = read_json(work / RESUME)
        if state.get("fingerprint") != key or _last_checkpoint(work / CHECKPOINTS) is None:
            state = {}
    return state if state else {"fingerprint": key}


def _last_checkpoint(folder: Path) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    return get_last_checkpoint(str(folder)) if folder.is_dir() else None


def _replace(work: Path, out: Path) -> None:
    old = out.parent / f".{out.name}.old"
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        os.replace(out, old)
    os.replace(work, out)
    shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def quiet_run():
    """Silence library chatter (progress bars, deprecation notices) for the duration of a run."""
    import datasets
    import transformers

    verbosity = transformers.logging.get_verbosity()
    bars = datasets.is_progress_bar_enabled()
    hf_bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module=r"(transformers|trl|peft)\.")
            yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        if hf_bars:
            transformers.utils.logging.enable_progress_bar()
        if bars:
            datasets.enable_progress_bars()
