"""Our TrainConfig → TRL's SFTConfig, with the choices TRL's defaults get wrong for us made explicit.

TRL defaults gradient checkpointing and bf16 to on; we take both from the config (bf16 only where
a GPU supports it, since bf16 autocast on CPU is slow and changes the numbers). Packing defaults
to on for ``causal`` only: with the sdpa/eager attention of a CPU (no varlen kernel) a pack of
``max_length`` tokens costs attention over its whole length: on the quick ladder's largest model,
instruct training in packed 256-token blocks ran 2.3x fewer tokens/s than unpacked. Evaluation
is never packed, so a validation loss means the same thing whatever the training packing.

On the CPU, :func:`completion_positions_only` makes TRL's fused LM head score only the positions
that have a label (TRL does so on CUDA already; elsewhere it scores every position, prompt and
padding included, and masks afterwards): the same loss and gradients, and over the demo's nine
instruct cells a quarter less training time (1.2x faster on its largest model, 2x on the smallest,
whose LM head is most of its compute; ``benchmarks/train_throughput.py --demo``). Drawing batches
by length (the Trainer's ``group_by_length``) would cut the ~36% padding of a random batch of the
demo's rows as well, but its long-to-short order within each mega-batch lowered the demo cell's
rule parse rate on both seeds tried, so batches stay random.

Gradient checkpointing, when asked for, is non-reentrant for every strategy
(:data:`CHECKPOINTING`): the reentrant variant computes no gradient for a checkpointed block
whose input does not require one, which is every block above a frozen embedding (``freeze``,
and LoRA/QLoRA without ``enable_input_require_grads``); the non-reentrant one needs no such hook.

The optimizer (``train.optimizer``) is torch's AdamW or bitsandbytes' 8-bit AdamW, plain or paged
(:data:`OPTIMIZERS`, the Trainer's ``optim`` names). 8-bit states take a quarter of AdamW's fp32
states; bitsandbytes keeps 32-bit states for tensors under 4096 elements. On a CPU the paged
variant runs as the plain 8-bit one (bitsandbytes falls back and warns): paging helps only under
GPU memory pressure. :func:`check_optimizer` runs one step of the chosen optimizer on a small
tensor before any model is loaded, so a bitsandbytes that is missing or cannot run here is one
line, not a failure after loading.

The same head also keeps its peak small on the CPU (:func:`small_vocab_tiles`): TRL projects the
scored positions onto the vocabulary in tiles of 32,768 columns, and its torch fallback for the
Triton kernel makes about six float32 copies of a tile (the scaled logits, a mask, a masked copy,
their exponentials, a product). With SmolLM2's 49k vocabulary that is ~0.6 GB at the 600 scored
positions of an 8 x 256 instruct batch, 1.6 GB when every position is scored; 4,096-column tiles
cut that eightfold, the online log-sum-exp gives the same loss and gradients, and the head alone
(600 positions, fused forward and backward) ran 1.7x faster on one thread: smaller tiles stay in
cache. ``benchmarks/train_throughput.py
--model smollm2-135m`` shows the whole run's peak before and after.

Private API, pinned: the switches are TRL's ``trl.trainer.utils._use_triton`` and
``trl.trainer.utils._CHUNKED_LOGPROB_CHUNK_SIZE``; ``tests/test_private_apis.py`` and
``tests/test_train_memory.py`` fail by name when TRL moves them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

from tunelens.config import TrainConfig
from tunelens.errors import TunelensError, first_line
from tunelens.train.strategies import CHECKPOINTING, StrategySpec

# train.optimizer -> (the Trainer's ``optim`` name, the bitsandbytes class, None for torch's)
CPU_VOCAB_TILE = 4096  # vocabulary columns per tile of TRL's fused LM head off CUDA
OPTIMIZERS = {"adamw": ("adamw_torch", None), "adamw_8bit": ("adamw_bnb_8bit", "AdamW8bit"),
              "paged_adamw_8bit": ("paged_adamw_8bit", "PagedAdamW8bit")}


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
    return SFTConfig(
        **shared_args(config, output_dir),
        max_steps=config.max_steps,
        learning_rate=learning_rate(config, spec),
        per_device_train_batch_size=config.batch_size,
        per_device_eval_batch_size=config.batch_size,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        max_length=config.max_length,
        neftune_noise_alpha=config.neftune_noise_alpha,
        logging_steps=config.logging_steps,
        eval_strategy="steps" if periodic_eval else "no",
        eval_steps=(config.eval_steps or config.logging_steps) if periodic_eval else None,
        metric_for_best_model="eval_loss" if periodic_eval else None,
        greater_is_better=False if periodic_eval else None,
        packing=packing,
        packing_strategy="bfd",
        eval_packing=False,
        completion_only_loss=objective == "instruct",
        dataset_text_field="text",
        train_sampling_strategy="sequential" if curriculum else "random",
        include_num_input_tokens_seen="non_padding",
    )


def shared_args(config: TrainConfig, output_dir: Path) -> dict:
    """The Trainer arguments every strategy's TRL config takes from ``train:`` alike."""
    prec = precision(config)
    return dict(
        output_dir=str(output_dir),
        gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs=dict(CHECKPOINTING) if config.gradient_checkpointing else None,
        optim=OPTIMIZERS[config.optimizer][0],
        weight_decay=config.weight_decay,
        warmup_steps=config.warmup_ratio,  # a float in [0, 1) is a ratio of max_steps
        lr_scheduler_type=config.scheduler,
        save_strategy="steps" if config.save_steps else "no",
        save_steps=config.save_steps or 500,
        save_total_limit=1,
        seed=config.seed,
        data_seed=config.seed,
        bf16=prec == "bfloat16",
        fp16=prec == "float16",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
    )


def grpo_args(config: TrainConfig, output_dir: Path):
    """TRL's GRPOConfig for strategy ``grpo`` (``config.grpo``, the rest shared with SFT).

    Every step is logged (the reward curves are per step); a step draws ``prompts_per_step``
    prompts and samples each ``num_generations`` times, all in one generation batch, then scores
    the loss one prompt's group at a time (gradient accumulation over ``prompts_per_step``
    micro-batches: TRL's default ``dapo`` loss normalises by the tokens of the whole accumulated
    batch, so the step is the same; the memory of the loss is a group's, not the step's: on
    SmolLM2-135M, 64 sequences at once peaked at 20 GB on the CPU). Dropout is off, so the policy
    and the reference score the same tokens alike (TRL's advice with a KL term).
    """
    from trl import GRPOConfig

    grpo = config.grpo
    return GRPOConfig(
        **shared_args(config, output_dir),
        max_steps=grpo.steps,
        learning_rate=grpo.learning_rate,
        per_device_train_batch_size=grpo.num_generations,
        gradient_accumulation_steps=grpo.prompts_per_step,  # one generation batch per step
        num_generations=grpo.num_generations,
        max_completion_length=grpo.max_completion_length,
        temperature=grpo.temperature,
        beta=grpo.beta,
        reward_weights=grpo.rewards.as_list(),
        disable_dropout=True,
        logging_steps=1,
    )


def check_optimizer(name: str) -> None:
    """One step of ``name`` on a 4096-element tensor (the smallest bitsandbytes keeps in 8 bits)
    on the training device; a one-line error when it cannot run."""
    import warnings

    import torch

    class_name = OPTIMIZERS[name][1]
    if class_name is None:
        return
    try:
        import bitsandbytes as bnb
    except ImportError:
        raise TunelensError(f"train.optimizer {name} needs bitsandbytes: pip install "
                            "'bitsandbytes>=0.47'") from None
    device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        weight = torch.nn.Parameter(torch.ones(64, 64, device=device))
        optimizer = getattr(bnb.optim, class_name)([weight], lr=1e-3)
        weight.sum().backward()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "paged optimizers are not supported on CPU"
            optimizer.step()
    except Exception as exc:  # noqa: BLE001 - whatever bitsandbytes raises, it cannot run here
        first = first_line(exc)
        raise TunelensError(f"train.optimizer {name}: bitsandbytes {bnb.__version__} cannot run it on "
                            f"this machine's {device} ({first}); use adamw") from None


@contextlib.contextmanager
def completion_positions_only() -> Iterator[None]:
    """While open, TRL's fused LM head scores only labelled positions on every device.

    TRL (>= 1.x, ``trl.trainer.utils``) picks between scoring the labelled rows (``compact``) and
    scoring every position with ``_use_triton(device)``; the compact path is plain torch, and TRL
    avoids it off CUDA only so that compiled tiles keep one shape (an issue for XLA/Neuron, not
    for eager CPU). With instruct rows most positions are prompt or padding (a completion is ~30%
    of a row's tokens on the demo data). A TRL without that hook is left as is.
    """
    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        yield
        return
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        yield
        return
    trl_utils._use_triton = lambda device: original(device) or device.type == "cpu"
    try:
        yield
    finally:
        trl_utils._use_triton = original


@contextlib.contextmanager
def small_vocab_tiles(columns: int = CPU_VOCAB_TILE) -> Iterator[None]:
    """While open and training off CUDA, TRL's fused LM head works in tiles of ``columns``
    vocabulary columns (TRL's default, 32,768, is sized for GPU kernels; on the CPU its torch
    fallback keeps several float32 copies of a tile alive at once). The loss is the same online
    log-sum-exp over the tiles, so only rounding can differ. A TRL without the constant, or a
    CUDA machine, is left as is."""
    import torch

    try:
        from trl.trainer import utils as trl_utils
    except ImportError:  # pragma: no cover - TRL is a dependency
        yield
        return
    original = getattr(trl_utils, "_CHUNKED_LOGPROB_CHUNK_SIZE", None)
    if original is None or torch.cuda.is_available():
        yield
        return
    trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = min(columns, original)
    try:
        yield
    finally:
        trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE = original


@contextlib.contextmanager
def cpu_lm_head() -> Iterator[None]:
    """Both CPU savings of TRL's fused LM head, as training uses them (looked up here at call time,
    so the benchmark can switch either off to measure it)."""
    with completion_positions_only(), small_vocab_tiles():
        yield
