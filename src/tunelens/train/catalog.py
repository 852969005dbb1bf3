"""The names of the fine-tuning strategies and objectives, and what each one means.

This is the registry every other place derives its choices from: the study schema's allowed
values (``config.py``), the CLI's help, the report's wording. It imports nothing, so reading a
config never loads torch. :mod:`tunelens.train.strategies` and :mod:`tunelens.train.objectives`
implement exactly these names (a test checks that both sides agree).
"""

from __future__ import annotations

# name -> (what a reader calls it, one line on what is trained)
STRATEGIES: dict[str, tuple[str, str]] = {
    "full": ("full fine-tuning", "every weight is trained"),
    "lora": ("LoRA", "low-rank adapters on the linear layers, the base frozen"),
    "qlora": ("QLoRA", "4-bit NF4 base + LoRA adapters"),
    "dora": ("DoRA", "weight-decomposed LoRA adapters"),
    "freeze": ("top-layer fine-tuning", "only the top layers, final norm and LM head are trained"),
    "none": ("prompting only", "nothing is trained: the base model, prompted"),
    "grpo": ("SFT + GRPO", "a supervised start, then group relative policy optimisation with the "
             "rule checker as reward (tunelens.train.grpo)"),
}
ADAPTER_STRATEGIES = ("lora", "qlora", "dora")
UNTRAINED = "none"  # the strategy that trains nothing (tunelens.train.prompt_only)
# The order strategies are listed in tables and figures: most to least trained.
STRATEGY_ORDER = ("grpo", "full", "freeze", "lora", "dora", "qlora", "none")

OBJECTIVES: dict[str, tuple[str, str]] = {
    "instruct": ("instruction tuning", "prompt -> completion, loss on the completion only"),
    "causal": ("continued pre-training", "loss on every token, packed"),
}


ARM_JOIN = " · "  # a comparison arm: the strategy, then the study's named prompt if any


def strategy_label(name: str) -> str:
    """What a reader calls a strategy, or an arm ``<strategy> · <prompt>``."""
    strategy, sep, prompt = name.partition(ARM_JOIN)
    label = STRATEGIES[strategy][0] if strategy in STRATEGIES else strategy
    return f"{label}{sep}{prompt}"

