"""compare: concentration, distinctness tests, agreement and scale curves across the runs of a study."""

from tunelens.compare.api import STAT_FILES, STEPS, compare_study, input_fingerprint, load_stats
from tunelens.compare.runs import RunInfo, discover_runs, primary_runs, read_attributions, strategy_key

__all__ = ["STAT_FILES", "STEPS", "RunInfo", "compare_study", "discover_runs", "input_fingerprint",
           "load_stats", "primary_runs", "read_attributions", "strategy_key"]
