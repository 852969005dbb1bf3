"""evaluate: text metrics, rule-level scores and an LLM judge, each with a bootstrap interval.

Names are resolved on first use (PEP 562), so the metric registry (``tunelens.evaluate.specs``)
imports without the metric libraries.
"""

from tunelens.lazy import exports

_EXPORTS = {
    "evaluate": "tunelens.evaluate.api",
    "judge_config": "tunelens.evaluate.api",
    "load_predictions": "tunelens.evaluate.api",
}
__all__ = sorted(_EXPORTS)
__getattr__ = exports("tunelens.evaluate", _EXPORTS)
