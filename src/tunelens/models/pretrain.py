"""Pre-training one ladder model from scratch: a packed causal-LM stream fed to transformers' Trainer.

Why Trainer and not a plain loop: it is the reference recipe (AdamW, warmup + cosine schedule,
gradient clipping, seeded sampler, token counting) that every fine-tuning strategy later in the
pipeline also runs on, so base models and fine-tuned models are trained by the same code path and
differ only in data and settings. Nothing here adds optimiser tricks.

Why packing: the corpus is many short documents (one clause or one rule each). Concatenating them
with EOS separators and cutting fixed-length blocks, as the ``run_clm`` example of transformers
does, wastes no compute on padding and makes "tokens seen" an exact count. Packed blocks let a
document attend to the end of the previous one; for language modelling of short, independent texts
that is the usual, harmless trade.
"""

from __future__ import annotations

import contextlib
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class PretrainResult:
    tokens_seen: int
    final_loss: float
    seconds: float
    loss_history: list[tuple[int, float]]


def pack_blocks(tokenizer, texts: Sequence[str], block_size: int) -> list[list[int]]:
    """Token ids of ``texts`` (BOS ... EOS each) concatenated and cut into full ``block_size`` blocks.

    The tail that does not fill a block is dropped; a corpus shorter than one block is an error,
    because there would be nothing to train on.
    """
    stream: list[int] = []
    eos = tokenizer.eos_token_id
    for ids in tokenizer(list(texts), add_special_tokens=True)["input_ids"]:
        stream.extend(ids)
        stream.append(eos)
    n_blocks = len(stream) // block_size
    if n_blocks == 0:
        raise ValueError(
            f"pre-training corpus has {len(stream)} tokens, fewer than one block of {block_size}"
        )
    return [stream[i * block_size:(i + 1) * block_size] for i in range(n_blocks)]


def pretrain(model, tokenizer, blocks: list[list[int]], *, steps: int, batch_size: int,
             learning_rate: float, seed: int, warmup_ratio: float = 0.1,
             weight_decay: float = 0.01, cpu_threads: int | None = 1,
             on_step: Callable[[int], None] | None = None) -> PretrainResult:
    """Train ``model`` in place on packed ``blocks`` for ``steps`` optimiser steps.

    Deterministic for a given seed on a given device: the weights come from the caller's seeded
    initialisation, the sample order from Trainer's seeded sampler, and Llama has no dropout by
    default. The final loss is the last logged training loss (the mean over the last logging
    window), which is what a model card of a pre-trained model usually reports.

    On the CPU the call runs with ``cpu_threads`` intra-op threads (torch's setting is restored
    afterwards; None keeps it). One thread is the default because a fixed thread count makes the
    float reductions, and so the weights, the same on every machine, and because matrices this
    small gain little from a second thread while losing badly when cores are shared (in one
    measurement on a loaded 2-core machine, a quick ladder took 18 s with one thread, 240 s with two).
    """
    with tempfile.TemporaryDirectory(prefix="tunelens-pretrain-") as tmp:
        args = _training_args(tmp, steps=steps, batch_size=batch_size, learning_rate=learning_rate,
                              seed=seed, warmup_ratio=warmup_ratio, weight_decay=weight_decay)
        trainer = _trainer(model, tokenizer, blocks, args, on_step)
        start = time.perf_counter()
        with _threads(cpu_threads if model.device.type == "cpu" else None):
            trainer.train()
        seconds = time.perf_counter() - start
    history = [(int(e["step"]), float(e["loss"])) for e in trainer.state.log_history if "loss" in e]
    model.eval()
    return PretrainResult(
        tokens_seen=int(trainer.state.num_input_tokens_seen),
        final_loss=history[-1][1],
        seconds=seconds,
        loss_history=history,
    )


def _training_args(output_dir: str, *, steps: int, batch_size: int, learning_rate: float, seed: int,
                   warmup_ratio: float, weight_decay: float):
    """The reference recipe: AdamW, warmup + cosine, seeded sampler, ten loss logs, no saving."""
    import torch
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, round(warmup_ratio * steps)),
        weight_decay=weight_decay,
        logging_strategy="steps",
        logging_steps=max(1, steps // 10),
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        log_level="error",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
        include_num_input_tokens_seen="all",
    )


def _trainer(model, tokenizer, blocks: list[list[int]], args, on_step: Callable[[int], None] | None):
    """A Trainer over the packed blocks that reports each finished step to ``on_step``."""
    from datasets import Dataset
    from transformers import DataCollatorForLanguageModeling, PrinterCallback, Trainer, TrainerCallback

    class _StepCallback(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if on_step is not None:
                on_step(state.global_step)

    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_dict({"input_ids": blocks}),
        data_collator=DataCollatorForLanguageModeling(tokenizer, mlm=False),
        callbacks=[_StepCallback()],
    )
    trainer.remove_callback(PrinterCallback)  # progress is the caller's; no raw log dicts
    return trainer


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    import torch

    previous = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
