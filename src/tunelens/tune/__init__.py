"""tune: hyper-parameter search with Optuna (``tunelens tune``), one search per strategy.

Names are resolved on first use (PEP 562): the config imports :mod:`tunelens.tune.space`, which
must not load Optuna, transformers or torch.
"""

from tunelens.lazy import exports

__all__, __getattr__ = exports(__name__, run="tune_study TuneResult")
