"""train: fine-tuning strategies (full, lora, qlora, dora, freeze), objectives and export.

Names are resolved on first use (PEP 562), so ``tunelens.train.catalog`` — the registry of
strategy and objective names that the config reads — imports without torch or transformers.
"""

from tunelens.lazy import exports

__all__, __getattr__ = exports(__name__, export="export_merged", runner="train",
                                  strategies="StrategySpec apply_strategy")
