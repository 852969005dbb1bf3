"""evaluate: text metrics, rule-level scores and an LLM judge, each with a bootstrap interval.

Names are resolved on first use (PEP 562), so the metric registry (``tunelens.evaluate.specs``)
imports without the metric libraries.
"""

from tunelens.lazy import exports

__all__, __getattr__ = exports(__name__, api="evaluate judge_config load_predictions")
