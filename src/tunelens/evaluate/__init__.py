"""evaluate: text metrics, rule-level scores and an LLM judge, each with a bootstrap interval."""

from tunelens.evaluate.api import evaluate, judge_config, load_predictions

__all__ = ["evaluate", "judge_config", "load_predictions"]
