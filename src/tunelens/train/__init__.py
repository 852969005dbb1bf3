"""train: fine-tuning strategies (full, lora, qlora, dora, freeze), objectives and export.

Names are resolved on first use (PEP 562), so ``tunelens.train.catalog`` — the registry of
strategy and objective names that the config reads — imports without torch or transformers.
"""

from tunelens.lazy import exports

_EXPORTS = {
    "export_merged": "tunelens.train.export",
    "train": "tunelens.train.runner",
    "StrategySpec": "tunelens.train.strategies",
    "apply_strategy": "tunelens.train.strategies",
}
__all__ = sorted(_EXPORTS)
__getattr__ = exports("tunelens.train", _EXPORTS)
