"""Fine-tuning strategies: a spec says *what* to train, one function makes the model train that.

This follows PEFT's own pattern (a config object, then ``get_peft_model``): :class:`StrategySpec`
is built from a :class:`~tunelens.config.TrainConfig`, :func:`apply_strategy` turns a loaded base
model into the model the trainer optimises. The adapter strategies are PEFT's; what is ours is
the small amount of glue PEFT has no notion of:

* ``full``: every weight is trained (optionally unfrozen gradually, see ``callbacks``).
* ``lora`` / ``dora``: PEFT LoRA adapters (DoRA is LoRA with ``use_dora``) on ``target_modules``.
* ``qlora``: the base is loaded 4-bit NF4 with double quantisation (bitsandbytes), prepared with
  ``prepare_model_for_kbit_training`` (norms and head in fp32, input grads on) and LoRA on top.
* ``freeze``: only the top ``freeze_top_k`` decoder layers, the final norm and the LM head are
  trained; embeddings and every lower layer stay fixed. (With tied embeddings the head *is* the
  embedding matrix, so it trains too.)
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelens.config import LoraConfig, QuantConfig, TrainConfig
from tunelens.errors import TunelensError, check_choice
from tunelens.models.quantized import use_autograd_4bit
from tunelens.train.catalog import ADAPTER_STRATEGIES, STRATEGIES

# Gradient checkpointing for every strategy: non-reentrant (see tunelens.train.trainer_args).
CHECKPOINTING = {"use_reentrant": False}


@dataclass(frozen=True)
class StrategySpec:
    """What to train. ``quantization`` is set only for strategies that load the base quantized."""

    strategy: str
    lora: LoraConfig = field(default_factory=LoraConfig)
    quantization: QuantConfig | None = None
    freeze_top_k: int = 1
    gradual_unfreezing: bool = False
    dropout: float | None = None
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        check_strategy(self.strategy)

    @property
    def is_adapter(self) -> bool:
        return self.strategy in ADAPTER_STRATEGIES

    @classmethod
    def from_config(cls, strategy: str, config: TrainConfig) -> StrategySpec:
        check_strategy(strategy)
        return cls(
            strategy=strategy,
            lora=config.lora,
            quantization=config.quantization if strategy == "qlora" else None,
            freeze_top_k=config.freeze_top_k,
            gradual_unfreezing=config.gradual_unfreezing and strategy == "full",
            dropout=config.dropout,
            gradient_checkpointing=config.gradient_checkpointing,
        )


def check_strategy(strategy: str) -> None:
    check_choice(strategy, STRATEGIES, "unknown strategy")


def apply_strategy(model, spec: StrategySpec):
    """Return the model to optimise: the base with the right weights trainable, or a PeftModel."""
    if spec.dropout is not None:
        set_dropout(model, spec.dropout)
    return _APPLY[spec.strategy](model, spec)


def _train_everything(model, spec: StrategySpec):
    for p in model.parameters():
        p.requires_grad_(True)
    return model


def _train_top(model, spec: StrategySpec):
    return _freeze_all_but_top(model, spec.freeze_top_k)


def _lora(model, spec: StrategySpec):
    return _add_lora(model, spec.lora, use_dora=spec.strategy == "dora")


def _qlora(model, spec: StrategySpec):
    if not getattr(model, "is_loaded_in_4bit", False):
        raise TunelensError(
            "strategy 'qlora' needs a 4-bit base: load it with "
            "load_model(path, quantization=spec.quantization)"
        )
    from peft import prepare_model_for_kbit_training

    model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=spec.gradient_checkpointing,
                                            gradient_checkpointing_kwargs=dict(CHECKPOINTING))
    use_autograd_4bit(model)  # a model being trained keeps the autograd-capable 4-bit path
    return _add_lora(model, spec.lora, use_dora=False)


def _add_lora(model, lora: LoraConfig, use_dora: bool):
    import peft

    targets = lora.target_modules
    if isinstance(targets, list) and any(t.split(".")[-1] == "lm_head" for t in targets):
        raise TunelensError(
            "train.lora.target_modules: 'lm_head' cannot carry an adapter (TRL computes log-probs "
            "from its weight directly); remove it"
        )
    config = peft.LoraConfig(
        r=lora.rank,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        use_dora=use_dora,
        bias="none",
        task_type="CAUSAL_LM",
    )
    try:
        return peft.get_peft_model(model, config)
    except ValueError as exc:
        if "not found in the base model" in str(exc) or "No modules were targeted" in str(exc):
            raise TunelensError(
                f"train.lora.target_modules {targets} match no module of this model; its linear "
                f"modules are: {', '.join(linear_module_names(model))}"
            ) from None
        raise


def linear_module_names(model) -> list[str]:
    """Distinct last name parts of the model's linear layers (what target_modules may name)."""
    import torch

    names = {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) or type(module).__name__.startswith("Linear")
    }
    return sorted(n for n in names if n)


def decoder_layers(model):
    """The model's stack of decoder blocks, found as the ModuleList as long as its layer count."""
    import torch

    n = model.config.get_text_config().num_hidden_layers
    for _, module in model.named_modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise TunelensError(f"{type(model).__name__}: cannot find its {n} decoder layers")


def top_module_params(model) -> list:
    """Parameters above the decoder stack: the LM head and whatever is neither layer nor embedding
    (the final norm, for a Llama)."""
    layer_ids = {id(p) for p in decoder_layers(model).parameters()}
    emb_ids = {id(p) for p in model.get_input_embeddings().parameters()}
    head = list(model.get_output_embeddings().parameters())
    rest = [p for p in model.parameters() if id(p) not in layer_ids | emb_ids]
    seen: set[int] = set()
    out = []
    for p in head + rest:
        if id(p) not in seen:
            seen.add(id(p))
            out.append(p)
    return out


def _freeze_all_but_top(model, k: int):
    layers = decoder_layers(model)
    if k > len(layers):
        raise TunelensError(f"train.freeze_top_k is {k} but the model has only {len(layers)} layers")
    for p in model.parameters():
        p.requires_grad_(False)
    for layer in list(layers)[-k:]:
        for p in layer.parameters():
            p.requires_grad_(True)
    for p in top_module_params(model):
        p.requires_grad_(True)
    return model


def _policy(model, spec: StrategySpec):
    """grpo trains what its supervised start trained (tunelens.train.grpo loads it so): an adapter
    loaded trainable stays as it is, whole weights all train."""
    return model if hasattr(model, "peft_config") else _train_everything(model, spec)


# One implementation per name of tunelens.train.catalog.STRATEGIES (a test checks they agree).
_APPLY = {
    "grpo": _policy,
    "full": _train_everything,
    "freeze": _train_top,
    "lora": _lora,
    "dora": _lora,
    "qlora": _qlora,
}


def set_dropout(model, p: float) -> None:
    """Override dropout everywhere: nn.Dropout modules, attention modules' rates and the config."""
    import torch

    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = p
        if isinstance(getattr(module, "attention_dropout", None), float):
            module.attention_dropout = p
    config = model.config.get_text_config()
    for key, value in list(vars(config).items()):
        if key.endswith("dropout") and isinstance(value, float):
            setattr(config, key, p)


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters; 4-bit weights count as their unpacked element count."""
    trainable = total = 0
    for p in model.parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":
            n = n * 2  # two 4-bit values per stored byte
        total += n
        if p.requires_grad:
            trainable += n
    return trainable, total


def load_base(model: str, spec: StrategySpec, dtype: str = "float32", trust_remote_code: bool = False):
    """(model, tokenizer) loaded the way the strategy needs (4-bit for qlora), in ``dtype``.

    A quantized model is placed at load time (the Trainer never moves one), so on a GPU machine
    it goes straight to the first GPU; an unquantized one is moved by the Trainer itself.
    """
    import torch

    from tunelens.models.loading import load_model

    device_map = "cuda:0" if spec.quantization is not None and torch.cuda.is_available() else None
    return load_model(model, dtype=dtype, quantization=spec.quantization, device_map=device_map,
                      trust_remote_code=trust_remote_code)
