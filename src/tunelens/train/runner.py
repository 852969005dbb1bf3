"""``train(...)``: one fine-tuning run, from a data folder to a run folder with ``run.json``.

TRL's SFTTrainer does the training (no loop of ours); this module wires the pieces and owns the
run folder's life cycle:

* Everything is written into ``<out parent>/.<out name>.partial/`` and renamed to ``out`` only
  when the run has finished, with ``run.json`` written last: a folder without ``run.json`` is never
  a finished run, and a failed run never replaces a good one.
* Ctrl-C checkpoints into ``.partial/checkpoints/``. Rerunning the same command (same model, data,
  strategy, objective and config: a fingerprint in ``.partial/resume.json`` checks it) resumes
  from that checkpoint with the Trainer's ``resume_from_checkpoint``; anything different starts over.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import time
import warnings
from pathlib import Path

from tunelens.config import TrackingConfig, TrainConfig
from tunelens.io import read_json, write_json
from tunelens.train import curriculum
from tunelens.train.callbacks import GradualUnfreezing, InterruptCheckpoint, PeakMemory, RichProgress
from tunelens.train.objectives import check_objective, format_rows, load_split
from tunelens.train.strategies import StrategySpec, apply_strategy, check_strategy, count_params, load_base
from tunelens.train.tracking import Tracker
from tunelens.train.trainer_args import precision, sft_config

CHECKPOINTS = "checkpoints"
RESUME = "resume.json"


def partial_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.partial"


def train(model: str, data_dir: Path, out: Path, strategy: str, objective: str,
          config: TrainConfig | None = None, tracking: TrackingConfig | None = None,
          run_name: str | None = None, *, callbacks: list | None = None,
          progress: bool = False) -> dict:
    """Fine-tune ``model`` on ``data_dir/{train,val}.jsonl``; return the run.json written to ``out``.

    ``callbacks`` are extra transformers ``TrainerCallback`` objects; ``progress`` shows a rich bar.
    Raises KeyboardInterrupt after checkpointing when interrupted; rerun to resume.
    """
    config = config or TrainConfig()
    check_strategy(strategy)
    check_objective(objective)
    out, data_dir = Path(out), Path(data_dir)
    spec = StrategySpec.from_config(strategy, config)
    train_rows = load_split(data_dir, "train")
    val_rows = load_split(data_dir, "val")
    base_model = str(Path(model).resolve()) if Path(model).exists() else model

    with _quiet_libraries():
        from transformers import PrinterCallback, set_seed
        from trl import SFTTrainer

        base, tokenizer = load_base(model, spec)
        train_examples = format_rows(train_rows, tokenizer, objective)
        val_examples = format_rows(val_rows, tokenizer, objective)
        train_examples = curriculum.order(train_examples, config.curriculum, tokenizer, base,
                                          batch_size=config.batch_size)
        set_seed(config.seed)
        tuned = apply_strategy(base, spec)

        work = partial_dir(out)
        checkpoint_dir = work / CHECKPOINTS
        resume = _resume_state(work, _fingerprint(base_model, data_dir, strategy, objective, config))
        resume_from = _last_checkpoint(checkpoint_dir) if "val_loss_before" in resume else None

        peak, interrupt = PeakMemory(), InterruptCheckpoint()
        bar = RichProgress(f"{strategy}/{objective}") if progress else None
        extra = [peak, interrupt, *(callbacks or []), *_optional_callbacks(spec, config, bar)]
        from datasets import Dataset

        trainer = SFTTrainer(
            model=tuned,
            args=sft_config(config, spec, objective, checkpoint_dir),
            train_dataset=Dataset.from_list(train_examples),
            eval_dataset=Dataset.from_list(val_examples),
            processing_class=tokenizer,
            callbacks=extra,
        )
        trainer.remove_callback(PrinterCallback)  # the log dicts it prints are for notebooks
        trainable, total = count_params(trainer.model)
        tracker = None
        if tracking is None or tracking.enabled:
            tracker = Tracker(out, tracking, run_name or out.name)

        if resume_from is None:  # a fresh start: nothing of an older attempt may leak in
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
        try:
            if "val_loss_before" not in resume:
                resume["val_loss_before"] = trainer.evaluate()["eval_loss"]
                write_json(work / RESUME, resume)
            started = time.perf_counter()
            try:
                result = trainer.train(resume_from_checkpoint=resume_from)
            except KeyboardInterrupt:
                if trainer.state.global_step > 0:
                    trainer._save_checkpoint(trainer.model, None)
                raise
            finally:
                resume["wall_seconds"] = resume.get("wall_seconds", 0.0) + time.perf_counter() - started
                write_json(work / RESUME, resume)
                interrupt.restore()
                peak.stop()
                if bar is not None:
                    bar.close()
            if interrupt.interrupted_at is not None:
                raise KeyboardInterrupt(f"interrupted at step {interrupt.interrupted_at}")
            val_after = trainer.evaluate()["eval_loss"]
        except BaseException as exc:
            if tracker is not None:
                tracker.fail("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
            if not isinstance(exc, KeyboardInterrupt) and _last_checkpoint(checkpoint_dir) is None:
                shutil.rmtree(work, ignore_errors=True)  # nothing worth resuming from
            raise

        info = _run_info(
            trainer=trainer, result=result, spec=spec, config=config, objective=objective,
            base_model=base_model, data_dir=data_dir, n_rows=(len(train_rows), len(val_rows)),
            params=(trainable, total), resume=resume, val_after=val_after, peak=peak,
            resumed_from=resume_from, tracker=tracker,
        )
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
        (work / RESUME).unlink(missing_ok=True)
        trainer.model.save_pretrained(work)
        tokenizer.save_pretrained(work)
        write_json(work / "run.json", info)
        _replace(work, out)

    if tracker is not None:
        try:
            tracker.finish(
                params={"strategy": strategy, "objective": objective, "base_model": base_model,
                        "train": config.model_dump(mode="json")},
                run_info=info, files=[out / "run.json", out / "adapter_config.json"],
            )
        except Exception as exc:  # noqa: BLE001 - the run itself is saved; say so, keep it
            warnings.warn(f"MLflow logging to {tracker.uri} failed: {exc}", stacklevel=2)
    return info


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


def _run_info(*, trainer, result, spec, config, objective, base_model, data_dir, n_rows, params,
              resume, val_after, peak, resumed_from, tracker) -> dict:
    import peft
    import torch
    import transformers
    import trl

    history = trainer.state.log_history
    train_loss = [{"step": h["step"], "loss": h["loss"]} for h in history if "loss" in h]
    evals = {h["step"]: h["eval_loss"] for h in reversed(history) if "eval_loss" in h}
    val_loss = [{"step": step, "loss": loss} for step, loss in sorted(evals.items())]
    runtime = result.metrics.get("train_runtime") or 0.0
    tokens = trainer.state.num_input_tokens_seen - getattr(trainer, "_initial_num_input_tokens_seen", 0)
    return {
        "strategy": spec.strategy,
        "objective": objective,
        "base_model": base_model,
        "adapter": spec.is_adapter,
        "trainable_params": params[0],
        "total_params": params[1],
        "train_loss": train_loss,
        "val_loss": val_loss,
        "val_loss_before": resume["val_loss_before"],
        "val_loss_after": val_after,
        "global_step": trainer.state.global_step,
        "stopped_early": trainer.state.global_step < config.max_steps,
        "resumed_from_step": _step_of(resumed_from),
        "wall_seconds": round(resume["wall_seconds"], 3),
        "tokens_per_second": round(tokens / runtime, 1) if runtime else None,
        "train_tokens": int(trainer.state.num_input_tokens_seen),
        "peak_rss_mb": peak.peak_rss_mb,
        "peak_gpu_mb": peak.peak_gpu_mb,
        "precision": precision(config),
        "device": str(trainer.args.device),
        "quantization": spec.quantization.model_dump(mode="json") if spec.quantization else None,
        "config": config.model_dump(mode="json"),
        "data": {"dir": str(data_dir.resolve()), "train_rows": n_rows[0], "val_rows": n_rows[1]},
        "mlflow": None if tracker is None else {
            "tracking_uri": tracker.uri, "experiment": tracker.experiment_name, "run_id": tracker.run_id,
        },
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "peft": peft.__version__, "trl": trl.__version__},
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def _step_of(checkpoint: str | None) -> int | None:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1]) if checkpoint else None


def _fingerprint(base_model: str, data_dir: Path, strategy: str, objective: str,
                 config: TrainConfig) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([base_model, strategy, objective, config.model_dump(mode="json")],
                        sort_keys=True).encode())
    for split in ("train", "val"):
        h.update((data_dir / f"{split}.jsonl").read_bytes())
    return h.hexdigest()


def _resume_state(work: Path, fingerprint: str) -> dict:
    """The saved state of an interrupted identical run that left a checkpoint, else a fresh one."""
    state: dict = {}
    if (work / RESUME).exists():
        with contextlib.suppress(Exception):
            state = read_json(work / RESUME)
        if state.get("fingerprint") != fingerprint or _last_checkpoint(work / CHECKPOINTS) is None:
            state = {}
    return state if state else {"fingerprint": fingerprint}


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
def _quiet_libraries():
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
