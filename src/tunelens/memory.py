"""How much memory a training cell will take, before it runs: the dry run's estimate and budget.

Libraries give pieces (accelerate's ``estimate-memory`` counts weights only; DeepSpeed's
estimators cover ZeRO states but not activations or LoRA), so the sum is ours. It adds up what a
step holds at its peak, for the model's real shape (counted on the meta device, so a 7B config
costs nothing to inspect):

- **weights**: every parameter in the training dtype; QLoRA's linear weights at 4 bits plus their
  quantisation constants; LoRA/DoRA adapters in float32 (peft up-casts them).
- **gradients** and **optimizer states** of the trainable parameters only (AdamW: two states in
  the parameter's dtype; 8-bit AdamW: two bytes).
- **activations** saved for the backward pass, per token and layer, for a Llama-style block:
  norms, projections, attention probabilities and the gated MLP, ~``10h + 4kv + 4i + heads·s``
  values (after Korthikanti et al. 2022, "Reducing Activation Recomputation in Large Transformer
  Models", adapted to the gated MLP and grouped-query attention), plus each adapter's input under
  LoRA dropout. With gradient checkpointing only every layer's input is kept, and one layer is
  recomputed at a time; that holds on the CPU because training then pins glibc's mmap threshold
  (:mod:`tunelens.train.heap`): without it freed activations stayed mapped, ~1 GB on SmolLM2.
- **logits**: never batch × length × vocabulary (that would be a gigabyte for SmolLM2's 49k
  vocabulary at 8 × 256, in float32, three times): TRL's fused LM head projects at most 4,096
  scored positions at a time onto a tile of the vocabulary, 32,768 columns in place on CUDA, 4,096
  columns on the CPU where its torch fallback holds about six float32 copies of a tile
  (:func:`tunelens.train.trainer_args.small_vocab_tiles`): ~0.2 GB at 8 × 256.
- **runtime**: the process itself (Python, torch, transformers, TRL), measured here at ~0.72 GB on
  the CPU; a CUDA context on a GPU.

Sequences are taken at ``max_length`` (the peak, not the mean), so the estimate is an upper bound
for instruction data. The time is a floor: the step's multiply-adds at this machine's measured
matrix-multiply rate; small models spend most of their time elsewhere.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path

from tunelens.config import ModelSpec, TrainConfig
from tunelens.errors import TunelensError
from tunelens.train.catalog import UNTRAINED
from tunelens.train.grpo_settings import GRPO

GB = 1024**3
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
RUNTIME_BYTES = {"cpu": 0.72 * GB, "cuda": 0.5 * GB}
# TRL's fused LM head: scored positions per tile, and (vocabulary columns, float32 copies) per device
HEAD_TOKENS = 4096
HEAD_TILES = {"cpu": (4096, 6), "cuda": (32768, 1)}
QLORA_BYTES = 0.5 + 4 / 64 / 8  # 4-bit weights, double-quantised absmax per 64 values


@dataclass
class Shape:
    """What the estimate needs of a model: its parameters and the sizes of its blocks."""

    params: int
    linear: list[tuple[int, int]]  # (in, out) of every linear layer in the decoder blocks
    layers: int
    per_layer_params: int
    hidden: int
    intermediate: int
    kv_dim: int
    heads: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shape:
        """Count on the meta device: exact for any architecture transformers can build."""
        import torch
        from accelerate import init_empty_weights
        from transformers import AutoModelForCausalLM

        with init_empty_weights():
            model = AutoModelForCausalLM.from_config(config)
        model.tie_weights()  # tied embeddings are one tensor, as in a loaded model
        head = model.get_output_embeddings()
        linear = [(m.in_features, m.out_features) for m in model.modules()
                  if isinstance(m, torch.nn.Linear) and m is not head]
        text = getattr(config, "text_config", None) or config
        hidden = text.hidden_size
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or hidden // heads
        kv = (getattr(text, "num_key_value_heads", None) or heads) * head_dim
        layers = text.num_hidden_layers
        params = sum(p.numel() for p in model.parameters())
        blocks = [m for m in model.modules()
                  if isinstance(m, torch.nn.ModuleList) and len(m) == layers]
        per_layer = sum(p.numel() for p in blocks[0][0].parameters()) if blocks else 0
        return cls(params, linear, layers, per_layer, hidden,
                   getattr(text, "intermediate_size", 4 * hidden), kv, heads, text.vocab_size)


@dataclass
class MemoryEstimate:
    """Bytes at the peak of a training step, by what holds them."""

    weights: float
    gradients: float
    optimizer: float
    activations: float
    logits: float
    runtime: float
    trainable: int
    flops_per_step: float

    @property
    def total(self) -> float:
        return (self.weights + self.gradients + self.optimizer + self.activations + self.logits
                + self.runtime)

    def parts_gb(self) -> dict[str, float]:
        names = ("weights", "gradients", "optimizer", "activations", "logits", "runtime")
        return {k: getattr(self, k) / GB for k in names} | {"total": self.total / GB}


def training_memory(shape: Shape, strategy: str, train: TrainConfig, dtype: str = "float32",
                    device: str = "cpu") -> MemoryEstimate:
    """The peak of one training step of ``strategy`` on a model of ``shape``."""
    e = DTYPE_BYTES.get(dtype, 4)
    adapters = strategy in ("lora", "qlora", "dora")
    lora = sum(train.lora.rank * (i + o) + (o if strategy == "dora" else 0) for i, o in shape.linear)
    trainable = {"full": shape.params, "freeze": _top_layers(shape, train.freeze_top_k)}.get(
        strategy, lora)
    linear_params = sum(i * o for i, o in shape.linear)
    if strategy == "qlora":
        weights = linear_params * QLORA_BYTES + (shape.params - linear_params) * e
    else:
        weights = shape.params * e
    weights += lora * 4 if adapters else 0
    state_bytes = 2 if "8bit" in str(getattr(train, "optimizer", "adamw")) else 2 * e
    tokens = train.batch_size * train.max_length
    per_token_layer = (10 * shape.hidden + 4 * shape.kv_dim + 4 * shape.intermediate
                       + shape.heads * train.max_length)
    if adapters:  # LoRA dropout makes a copy of every adapted layer's input
        per_token_layer += sum(i for i, _ in shape.linear) / max(shape.layers, 1)
    if train.gradient_checkpointing:
        activations = tokens * (shape.layers * shape.hidden + per_token_layer) * e
    else:
        activations = tokens * shape.layers * per_token_layer * e
    flops_per_token = (6 if strategy == "full" else 4) * shape.params
    if train.gradient_checkpointing:
        flops_per_token += 2 * shape.params
    return MemoryEstimate(
        weights=weights,
        gradients=trainable * (4 if adapters else e),
        optimizer=trainable * (state_bytes if not adapters else 8),
        activations=activations,
        logits=head_tiles(tokens, shape.vocab, device),
        runtime=RUNTIME_BYTES["cuda" if device == "cuda" else "cpu"],
        trainable=trainable,
        flops_per_step=flops_per_token * tokens * train.gradient_accumulation_steps,
    )


def head_tiles(tokens: int, vocab: int, device: str = "cpu") -> float:
    """Bytes of the fused LM head's tile at its peak (every position taken as scored: an upper
    bound for instruction data, exact for causal)."""
    columns, copies = HEAD_TILES["cuda" if device == "cuda" else "cpu"]
    return min(tokens, HEAD_TOKENS) * min(columns, vocab) * 4 * copies


def _top_layers(shape: Shape, k: int) -> int:
    """'freeze' trains the top k blocks, the final norm and the head (about the embedding)."""
    return k * shape.per_layer_params + shape.vocab * shape.hidden + shape.hidden


def model_config(spec: ModelSpec, zoo_root: Path):
    """The config of a study's model without loading weights or building anything: a zoo rung
    from its preset, a GGUF file's header, a folder's ``config.json``, a hub id from the local
    cache; None if unknown."""
    from tunelens.matrix import ZOO_PREFIX, zoo_reference

    if spec.path.startswith(ZOO_PREFIX):
        from tunelens.models.zoo import rung_config

        preset, name = zoo_reference(spec)
        return rung_config(preset, name)
    from tunelens.models import references

    if references.is_gguf_reference(spec.path):  # read from the file: no conversion for a dry run
        return references.config_of(spec.path)
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(spec.path, local_files_only=True,
                                          trust_remote_code=spec.trust_remote_code)
    except (OSError, ValueError):
        return None


def study_estimates(study, cells, zoo_root: Path, device: str = "cpu"
                    ) -> dict[str, MemoryEstimate | None]:
    """Per trained model of a study (its ``train_name``): the training peak, None when the model's
    shape cannot be known offline (a hub id not in the local cache); untrained cells (strategy
    ``none``) have no entry."""
    shapes: dict[str, Shape | None] = {}
    out: dict[str, MemoryEstimate | None] = {}
    for cell in cells:
        spec = cell.model
        if cell.identity.strategy == UNTRAINED:
            continue  # prompting only: nothing is trained
        if spec.name not in shapes:
            config = model_config(spec, zoo_root)
            shapes[spec.name] = None if config is None else Shape.of(config)
        shape = shapes[spec.name]
        strategy = cell.identity.strategy
        train = study.tune.train_for(study.train, strategy)
        if strategy == GRPO:  # the peak is its supervised start's (GRPO trains the same weights)
            strategy = train.grpo.sft_strategy
        out[cell.train_name] = None if shape is None else training_memory(
            shape, strategy, train, _dtype(spec, shape), device)
    return out


def _dtype(spec: ModelSpec, shape: Shape) -> str:
    """The training dtype: as the study asks; ``auto`` trains in float32 here (the estimate's
    upper bound when a checkpoint declares a 16-bit type)."""
    return spec.dtype if spec.dtype in DTYPE_BYTES else "float32"


def machine_memory_gb(device: str = "cpu") -> float:
    """What this machine has: the GPU's memory on CUDA, else physical RAM."""
    if device == "cuda":
        import torch

        return torch.cuda.get_device_properties(0).total_memory / GB
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / GB


def matmul_rate(threads: int | None = None, size: int = 512, seconds: float = 0.2) -> float:
    """This machine's float32 matrix-multiply rate (FLOP/s) over ``seconds``: the floor's unit."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        a @ b  # warm-up
        n, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            a @ b
            n += 1
        return 2 * size**3 * n / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)


def check_budget(rows: list[tuple[str, MemoryEstimate | None]], budget_gb: float,
                 origin: str, workers: int = 1) -> None:
    """Refuse, in one line, a study with a cell whose estimate exceeds its share of
    ``budget_gb``: with ``workers`` cells training at once, each gets ``budget_gb / workers``."""
    share = budget_gb / workers
    over = [(name, est) for name, est in rows if est is not None and est.total / GB > share]
    if over:
        name, est = max(over, key=lambda r: r[1].total)
        more = f" (and {len(over) - 1} more cells)" if len(over) > 1 else ""
        per = f" per worker with {workers} at once" if workers > 1 else ""
        raise TunelensError(
            f"{origin}: cell {name} needs about {est.total / GB:.1f} GB to train, more than the "
            f"{share:.1f} GB available{per}{more}; use a smaller batch or max_length, gradient "
            "checkpointing, LoRA/QLoRA, fewer --jobs, or --memory-gb if this machine has more")
