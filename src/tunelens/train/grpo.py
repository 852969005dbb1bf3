"""Strategy ``grpo``: a supervised start, then TRL's GRPOTrainer with the rule checker as reward.

TRL does the reinforcement learning (sampling groups, group-relative advantages, the clipped loss,
the KL term to a reference policy); what is ours is where it starts, what it is rewarded with
(:mod:`tunelens.train.rewards`) and the run folder's life cycle, which is the supervised runner's
(:mod:`tunelens.train.runner`: partial folder, Ctrl-C checkpoint, resume, run.json last).

The start (``train.grpo``, :mod:`tunelens.train.grpo_settings`):

* ``init_from``: a finished training run folder. GRPO trains what that run trained: its adapter,
  or its weights (all of them for ``full``, the top layers for ``freeze``).
* otherwise an SFT stage inside this run: ``sft_strategy`` for ``sft_steps`` (default: the
  study's ``train.max_steps``) with the run's own seed, i.e. exactly the training of the study's
  cell of that strategy, so SFT and SFT+GRPO are a matched pair. This keeps a study cell one
  independent unit (its own stamp, any ``--jobs`` worker, no ordering between cells). The stage is
  trained into ``.<run>.sft/`` beside the run, reused on a rerun when its fingerprint matches
  (also from a finished run's ``sft/``, so changing only GRPO settings does not retrain it), and
  kept in the finished run as ``<run>/sft/`` for the record.

For an adapter start the reference policy of the KL term is a frozen copy of the start's adapter
(TRL's ``ref`` adapter, dropped before saving); for whole weights TRL loads the start again.
run.json keeps the supervised losses as ``train_loss`` (the loss figure stays comparable across
strategies) and adds ``rewards``: per GRPO step the weighted reward, each reward's mean, the KL
and the completion length, which the report draws (:mod:`tunelens.report.rewards`) and MLflow
gets per step as ``reward`` and ``reward/<name>``.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from tunelens.config import TrackingConfig, TrainConfig
from tunelens.errors import TunelensError
from tunelens.fingerprint import fingerprint
from tunelens.io import read_json
from tunelens.models.quantized import use_autograd_4bit
from tunelens.models.run_settings import ModelSettings
from tunelens.train.callbacks import InterruptCheckpoint, PeakMemory, RichProgress, SessionTokens
from tunelens.train.catalog import UNTRAINED
from tunelens.train.grpo_settings import GRPO, GrpoConfig
from tunelens.train.heap import pin_mmap_threshold
from tunelens.train.rewards import REWARD_FUNCS, REWARDS
from tunelens.train.runner import (
    CHECKPOINTS,
    RunInputs,
    Session,
    finish,
    fit,
    log_run,
    partial_dir,
    prepare_resume,
    quiet_run,
    read_inputs,
)
from tunelens.train.strategies import StrategySpec, apply_strategy, count_params, load_base
from tunelens.train.tracking import Tracker
from tunelens.train.trainer_args import cpu_lm_head, grpo_args, sft_config

SFT = "sft"  # the finished run's folder holding its supervised start


@dataclass(frozen=True)
class Start:
    """The supervised start: a finished run folder, its run.json, and whether this run trained it."""

    folder: Path
    info: dict
    inside: bool

    @property
    def strategy(self) -> str:
        """What the start trained (a grpo run's own start, when starting from a grpo run)."""
        recorded = self.info.get(GRPO, {}).get("start_strategy") if self.info.get("strategy") == GRPO \
            else self.info.get("strategy")
        return recorded if isinstance(recorded, str) else "full"

    @property
    def is_adapter(self) -> bool:
        return (self.folder / "adapter_config.json").is_file()

    def spec(self, config: TrainConfig) -> StrategySpec:
        """How the start is loaded: its strategy's, over a base quantized as the start recorded
        (an ``init_from`` run may have used other 4-bit settings than this run's config), by the
        rule inference and export read it with (:func:`~tunelens.models.loading.recorded_quantization`)."""
        from dataclasses import replace

        from tunelens.models.loading import recorded_quantization

        spec = StrategySpec.from_config(self.strategy, config)
        recorded = recorded_quantization(self.info) if self.is_adapter else None
        return spec if recorded is None else replace(spec, quantization=recorded)


def sft_dir(out: Path) -> Path:
    return out.parent / f".{out.name}.{SFT}"


def train_grpo(model: str, data_dir: Path, out: Path, objective: str, config: TrainConfig,
               tracking: TrackingConfig | None, run_name: str | None, *, callbacks: list | None,
               progress: bool, identity: dict | None, settings: ModelSettings) -> dict:
    """:func:`tunelens.train.train` for strategy ``grpo`` (same arguments, same run folder)."""
    if objective != "instruct":
        raise TunelensError(f"strategy grpo samples completions for prompts: it needs objective "
                            f"'instruct', not '{objective}'")
    out = Path(out)
    inputs = read_inputs(model, data_dir, GRPO, objective, config, identity, settings)
    if config.release_memory:  # memory over time: see tunelens.train.heap
        pin_mmap_threshold()
    start = supervised_start(inputs, out, progress)
    started = time.perf_counter()
    with quiet_run(), cpu_lm_head():
        session = build_grpo_trainer(inputs, start, partial_dir(out), callbacks, progress)
        key = fingerprint(inputs.fingerprint(), files=[start.folder])
        resume, resume_from = prepare_resume(session.work, key)
        tracker = None
        if tracking is None or tracking.enabled:
            tracker = Tracker(out, tracking, run_name or out.name)
        result, val_after = fit(session, resume, resume_from, tracker)
        _drop_reference_adapter(session.trainer.model)
        extra = grpo_record(session, start, resume, time.perf_counter() - started)
        if start.inside:  # the supervised start goes with the run
            shutil.rmtree(session.work / SFT, ignore_errors=True)
            shutil.move(str(start.folder), str(session.work / SFT))
        info = finish(session, out, result, resume, val_after, resume_from, tracker, extra)
    if tracker is not None:
        log_rewards(tracker, info["rewards"])
        log_run(tracker, inputs, info, out)
    return info


# -- the supervised start ----------------------------------------------------------------------

def supervised_start(inputs: RunInputs, out: Path, progress: bool) -> Start:
    """``init_from`` as given, else this run's SFT stage: reused when an identical one is on disk,
    else trained (into ``.<run>.sft/``, with the runner's own resume)."""
    grpo = inputs.config.grpo
    folder = grpo.start_folder()
    if folder is not None:
        if not (folder / "run.json").is_file():
            raise TunelensError(f"train.grpo.init_from: {folder}: not a finished training run "
                                "(no run.json)")
        info = read_json(folder / "run.json")
        if info.get("strategy") == UNTRAINED:
            raise TunelensError(f"train.grpo.init_from: {folder}: an untrained run (strategy none) "
                                "is no supervised start")
        trained_on = info.get("base_model")  # else the run would be filed under a model it is not
        if isinstance(trained_on, str) and trained_on != inputs.base_model:
            raise TunelensError(f"train.grpo.init_from: {folder} was trained from {trained_on}, "
                                f"not from this run's model {inputs.base_model}")
        return Start(folder, info, inside=False)
    from tunelens.train.runner import train

    strategy, target = grpo.sft_strategy, sft_dir(out)
    config = inputs.config.model_copy(update={"max_steps": grpo.sft_steps or inputs.config.max_steps,
                                              GRPO: GrpoConfig()})  # GRPO settings don't make the SFT
    identity = {**inputs.identity, "strategy": strategy}
    key = read_inputs(inputs.model, inputs.data_dir, strategy, inputs.objective, config, identity,
                      inputs.settings).fingerprint()
    for candidate in (target, out / SFT):
        if _finished(candidate, key):
            if candidate != target:
                shutil.rmtree(target, ignore_errors=True)
                shutil.copytree(candidate, target)
            return Start(target, read_json(target / "run.json"), inside=True)
    s = inputs.settings
    info = train(inputs.model, inputs.data_dir, target, strategy, inputs.objective, config,
                 TrackingConfig(enabled=False), progress=progress, identity=identity, dtype=s.dtype,
                 trust_remote_code=s.trust_remote_code, prompt_format=s.prompt_format,
                 instruction=s.instruction)
    return Start(target, info, inside=True)


def _finished(folder: Path, key: str) -> bool:
    try:
        return read_json(folder / "run.json")["data"]["fingerprint"] == key
    except (TunelensError, KeyError, TypeError):
        return False


def load_policy(start: Start, inputs: RunInputs):
    """(model, tokenizer): the start with what it trained trainable again."""
    from tunelens.models.loading import adapter_base

    spec = start.spec(inputs.config)
    dtype, remote = inputs.settings.dtype, inputs.settings.trust_remote_code
    if not start.is_adapter:
        model, tokenizer = load_base(str(start.folder), spec, dtype, remote)
        return apply_strategy(model, spec), tokenizer
    from peft import PeftModel

    base, tokenizer = load_base(adapter_base(start.folder, start.info), spec, dtype, remote)
    if spec.quantization is not None:  # qlora: the 4-bit base prepared as the SFT stage had it
        from peft import prepare_model_for_kbit_training

        base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=False)
        use_autograd_4bit(base)
    return PeftModel.from_pretrained(base, str(start.folder), is_trainable=True), tokenizer


# -- the trainer ---------------------------------------------------------------------------------

def build_grpo_trainer(inputs: RunInputs, start: Start, work: Path, callbacks: list | None,
                       progress: bool) -> Session:
    """TRL's GRPOTrainer on the start, prompts rendered as generation renders them."""
    from datasets import Dataset
    from transformers import PrinterCallback, set_seed
    from trl import GRPOTrainer

    from tunelens.train.objectives import format_rows

    config, settings = inputs.config, inputs.settings
    set_seed(config.seed)
    policy, tokenizer = load_policy(start, inputs)
    fmt = settings.record(tokenizer)["prompt_format"]
    prompts = format_rows(inputs.train_rows, tokenizer, "instruct", fmt, settings.instruction)
    rows = [{"prompt": p["prompt"], "reference": r["completion"]}
            for p, r in zip(prompts, inputs.train_rows, strict=True)]
    peak, interrupt, tokens = PeakMemory(), InterruptCheckpoint(), SessionTokens()
    bar = RichProgress(f"{GRPO}/{inputs.objective}") if progress else None
    trainer = GRPOTrainer(
        model=policy, reward_funcs=list(REWARD_FUNCS), args=grpo_args(config, work / CHECKPOINTS),
        train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
        callbacks=[peak, interrupt, tokens, *(callbacks or []), *([bar] if bar else [])],
    )
    trainer.remove_callback(PrinterCallback)
    _one_adapter_dtype(trainer.model, start.spec(config))
    val = format_rows(inputs.val_rows, tokenizer, "instruct", fmt, settings.instruction)
    return Session(inputs=inputs, trainer=trainer, tokenizer=tokenizer, work=work, peak=peak,
                   interrupt=interrupt, tokens=tokens, bar=bar, params=count_params(trainer.model),
                   measure=lambda: _val_loss(trainer.model, tokenizer, val, config, start, work))


def _one_adapter_dtype(model, spec: StrategySpec) -> None:
    """A QLoRA start's adapters (policy and KL reference) in the 4-bit base's compute dtype.

    TRL's GRPOTrainer copies the start's adapter into its ``ref`` adapter in float32, then casts
    only the trainable one to bfloat16 (its QLoRA default; SFTTrainer, which measures the
    validation loss, does the same). The two then differ from step 0: measured on a
    micro model, groups with zero advantage (nothing to learn) still moved the adapter by 0.086 in
    3 steps through the KL term alone. And bfloat16 rounds away updates of GRPO's size (1e-4 on
    weights near 0.02, whose bfloat16 spacing is 1.2e-4). Both back in the compute dtype (the
    qlora SFT stage's adapter comes saved in bfloat16, so this costs it no precision)."""
    import torch

    if spec.quantization is None or not hasattr(model, "peft_config"):
        return
    dtype = getattr(torch, spec.quantization.compute_dtype)
    for name, param in model.named_parameters():
        if "lora_" in name and param.dtype != dtype:
            param.data = param.data.to(dtype)


def _val_loss(model, tokenizer, val: list[dict], config: TrainConfig, start: Start, work: Path) -> float:
    """The policy's completion loss on the validation split, measured as the SFT runner measures
    it (TRL's SFTTrainer.evaluate), so it compares with every other run's ``val_loss_after``."""
    from datasets import Dataset
    from transformers import PrinterCallback
    from trl import SFTTrainer

    spec = start.spec(config)
    rows = Dataset.from_list(val)  # SFTTrainer wants a train set too; it is never trained on
    evaluator = SFTTrainer(model=model, args=sft_config(config, spec, "instruct", work / CHECKPOINTS),
                           train_dataset=rows, eval_dataset=rows, processing_class=tokenizer)
    evaluator.remove_callback(PrinterCallback)
    _one_adapter_dtype(model, spec)  # SFTTrainer, too, casts a QLoRA adapter to bfloat16
    return evaluator.evaluate()["eval_loss"]


def _drop_reference_adapter(model) -> None:
    """TRL's frozen ``ref`` copy of the start's adapter is for the KL term only: not saved."""
    if "ref" in getattr(model, "peft_config", {}):
        model.delete_adapter("ref")


# -- what the run records ------------------------------------------------------------------------

def reward_curve(history: list[dict]) -> list[dict]:
    """Per GRPO step: the weighted reward (and its spread), each reward's mean, KL, length, loss."""
    rows = []
    for h in history:
        if "reward" not in h:
            continue
        row = {"step": h["step"], "reward": h["reward"], "reward_std": h.get("reward_std")}
        row |= {name: h.get(f"rewards/{name}/mean") for name in REWARDS}
        row |= {"kl": h.get("kl"), "completion_length": h.get("completions/mean_length"),
                "loss": h.get("loss")}
        rows.append(row)
    return rows


def grpo_record(session: Session, start: Start, resume: dict, seconds: float) -> dict:
    """The keys a grpo run.json has beyond a supervised one's (laid over them by ``finish``)."""
    trainer, grpo = session.trainer, session.inputs.config.grpo
    before = start.info.get("val_loss_before")
    quant = start.spec(session.inputs.config).quantization if start.is_adapter else None
    sft_seconds = start.info.get("wall_seconds", 0.0) if start.inside else 0.0
    return {
        "base_model": start.info.get("base_model", session.inputs.base_model),
        "adapter": start.is_adapter,
        "quantization": quant.model_dump(mode="json") if quant else None,  # the base it trained over
        "train_loss": start.info.get("train_loss", []),
        "val_loss_before": before if isinstance(before, float) else resume["val_loss_before"],
        "stopped_early": trainer.state.global_step < grpo.steps,
        "wall_seconds": round(resume.get("wall_seconds", seconds) + sft_seconds, 3),
        "peak_rss_mb": max(session.peak.peak_rss_mb, start.info.get("peak_rss_mb") or 0.0)
        if start.inside else session.peak.peak_rss_mb,
        "rewards": reward_curve(trainer.state.log_history),
        GRPO: {"start": SFT if start.inside else str(start.folder.resolve()),
               "start_strategy": start.strategy, "val_loss_start": resume["val_loss_before"],
               "settings": grpo.model_dump(mode="json")},
    }


def log_rewards(tracker: Tracker, rows: list[dict]) -> None:
    """Every step's rewards as MLflow metrics ``reward`` and ``reward/<name>``."""
    import warnings

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    names = {"reward": "reward", "kl": "kl", **{n: f"reward/{n}" for n in REWARDS}}
    metrics = [Metric(metric, float(r[key]), now, r["step"]) for r in rows
               for key, metric in names.items() if isinstance(r.get(key), int | float)]
    try:
        for i in range(0, len(metrics), 1000):
            tracker.client.log_batch(tracker.run_id, metrics=metrics[i:i + 1000])
    except Exception as exc:  # noqa: BLE001 - the run itself is saved; say so, keep it
        warnings.warn(f"MLflow logging to {tracker.uri} failed: {exc}", stacklevel=2)
