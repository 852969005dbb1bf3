"""Our TrainConfig → TRL's SFTConfig, with the choices TRL's defaults get wrong for us made explicit.

TRL defaults gradient checkpointing and bf16 to on; we take both from the config (bf16 only where
a GPU supports it, since bf16 autocast on CPU is slow and changes the numbers). Packing defaults
to on for ``causal`` only: with the sdpa/eager attention of a CPU (no varlen kernel) a pack of
``max_length`` tokens costs attention over its whole length: on the quick ladder's largest model,
instruct training in packed 256-token blocks ran 2.3x fewer tokens/s than unpacked. Evaluation
is never packed, so a validation loss means the same thing whatever the training packing.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.config import TrainConfig
from tunelens.train.strategies import StrategySpec


def learning_rate(config: TrainConfig, spec: StrategySpec) -> float:
    """Adapters train at ``learning_rate``; whole-weight strategies at ``full_learning_rate``
    (default: a fifth of it), since updating every weight at adapter rates diverges."""
    if spec.is_adapter:
        return config.learning_rate
    return config.full_learning_rate or config.learning_rate / 5


def precision(config: TrainConfig) -> str:
    import torch

    if config.precision != "auto":
        return config.precision
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bfloat16"
    return "float32"


def sft_config(config: TrainConfig, spec: StrategySpec, objective: str, output_dir: Path,
               has_eval: bool = True):
    from trl import SFTConfig

    curriculum = config.curriculum != "none"
    packing = (objective == "causal" if config.packing is None else config.packing) and not curriculum
    periodic_eval = has_eval and (config.eval_steps is not None or config.early_stopping_patience)
    prec = precision(config)
    return SFTConfig(
        output_dir=str(output_dir),
        max_steps=config.max_steps,
        learning_rate=learning_rate(config, spec),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        gradient_checkpointing=config.gradient_checkpointing,
        max_length=config.max_length,
        weight_decay=config.weight_decay,
        neftune_noise_alpha=config.neftune_noise_alpha,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of max_steps
        lr_scheduler_type=config.scheduler,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=(config.eval_steps or config.logging_steps) if periodic_eval else None,
        metric_for_best_model="eval_loss" if periodic_eval else None,
        greater_is_better=False if periodic_eval else None,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        packing=packing,
        packing_strategy="bfd",
        eval_packing=False,
        completion_only_loss=objective == "instruct",
        dataset_text_field="text",
        train_sampling_strategy="sequential" if curriculum else "random",
        bf16=prec == "bfloat16",
        fp16=prec == "float16",
        include_num_input_tokens_seen="non_padding",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )
