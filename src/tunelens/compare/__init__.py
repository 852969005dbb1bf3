"""compare: concentration, distinctness tests, agreement and scale curves across the runs of a study."""

from tunelens.compare.api import STAT_FILES, STEPS, compare_study, load_stats
from tunelens.compare.runs import CATEGORIES, RunInfo, discover_runs, primary_runs, read_attributions

__all__ = ["CATEGORIES", "STAT_FILES", "STEPS", "RunInfo", "compare_study", "discover_runs",
           "load_stats", "primary_runs", "read_attributions"]
