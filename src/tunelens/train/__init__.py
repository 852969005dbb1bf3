"""train: fine-tuning strategies (full, lora, qlora, dora, freeze), objectives and export."""

from tunelens.train.export import export_merged
from tunelens.train.runner import train
from tunelens.train.strategies import StrategySpec, apply_strategy

__all__ = ["StrategySpec", "apply_strategy", "export_merged", "train"]
