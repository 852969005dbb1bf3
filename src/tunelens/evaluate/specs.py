"""What every metric is: its scale, which direction is better, its family and the name a reader sees.

``evaluate`` writes metrics, ``compare`` tests and fits them, the report tables and words them;
each needs to know, say, that BLEU is on a 0–100 scale or that a high self-BLEU is bad. This
registry is where that is said, once: the metric order of ``metrics.json``, compare's plateau
direction and scale unit, the report's quality tables, number of decimals and labels are all
derived from it. It imports nothing, so the config, the CLI and the report can read it without
loading the metric libraries. A test checks that every key of a real ``evaluate()`` aggregate
has a spec here.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SCALE_UNIT = {"percent": 100.0, "unit": 1.0, "likert": 1.0, "count": 1.0}


@dataclass(frozen=True)
class MetricSpec:
    """One metric.

    ``scale``: ``percent`` (0–100, sacrebleu's convention), ``unit`` (0–1), ``likert`` (a judge's
    1–5), ``count``. ``greater_is_better``: True / False, or None where neither is (how
    concentrated attributions are is a description, not a quality). ``family``: ``text``,
    ``semantic``, ``rule``, ``yardstick`` (the measures rule-generation papers report: tree and token
    edit distances, BERTScore), ``judge``, ``diversity``, ``concentration``.
    """

    name: str
    scale: str
    greater_is_better: bool | None
    family: str
    label: str

    @property
    def unit(self) -> float:
        """What one "whole" is on this scale (100 for a percentage), to compare gains across scales."""
        return SCALE_UNIT[self.scale]

    @property
    def digits(self) -> int:
        """Decimals in a table (percentages need fewer: 41.3 reads as well as 0.413)."""
        return 1 if self.scale == "percent" else 3

    @property
    def sentence_digits(self) -> int:
        """Decimals in a sentence of the findings."""
        return 1 if self.scale == "percent" else 2


_SPECS = (
    MetricSpec("bleu", "percent", True, "text", "BLEU"),
    MetricSpec("chrf", "percent", True, "text", "chrF"),
    MetricSpec("rouge1", "unit", True, "text", "ROUGE-1"),
    MetricSpec("rouge2", "unit", True, "text", "ROUGE-2"),
    MetricSpec("rougeL", "unit", True, "text", "ROUGE-L"),
    MetricSpec("ngram_jaccard", "unit", True, "text", "word n-gram Jaccard"),
    MetricSpec("semantic_similarity", "unit", True, "semantic", "semantic similarity"),
    MetricSpec("exact_match", "unit", True, "text", "exact match"),
    MetricSpec("rule_parse_rate", "unit", True, "rule", "rule parse rate"),
    MetricSpec("rule_field_accuracy", "unit", True, "rule", "rule field accuracy"),
    MetricSpec("rule_exec_accuracy", "unit", True, "rule", "rule execution accuracy"),
    MetricSpec("rule_exec_agreement", "unit", True, "rule", "rule execution agreement"),
    MetricSpec("rule_false_positive_rate", "unit", False, "rule", "rule false-positive rate"),
    MetricSpec("rule_false_negative_rate", "unit", False, "rule", "rule false-negative rate"),
    # what rule-generation papers report: edit distances (0 = the reference's own tree / tokens,
    # evaluate.structure) and BERTScore, here on the bundled MiniLM (another model's keys are
    # derived, see spec())
    MetricSpec("rule_tree_edit_distance", "unit", False, "yardstick", "rule tree edit distance"),
    MetricSpec("token_levenshtein", "unit", False, "yardstick", "token Levenshtein distance"),
    MetricSpec("bertscore_minilm_l6_precision", "unit", True, "yardstick", "BERTScore P (MiniLM-L6)"),
    MetricSpec("bertscore_minilm_l6_recall", "unit", True, "yardstick", "BERTScore R (MiniLM-L6)"),
    MetricSpec("bertscore_minilm_l6_f1", "unit", True, "yardstick", "BERTScore F1 (MiniLM-L6)"),
    MetricSpec("judge_accuracy", "likert", True, "judge", "judge accuracy"),
    MetricSpec("judge_relevance", "likert", True, "judge", "judge relevance"),
    MetricSpec("distinct_1", "unit", True, "diversity", "distinct-1"),
    MetricSpec("distinct_2", "unit", True, "diversity", "distinct-2"),
    MetricSpec("self_bleu", "percent", False, "diversity", "self-BLEU"),
    # how concentrated one example's attribution is (compare.concentration)
    MetricSpec("gini", "unit", None, "concentration", "Gini"),
    MetricSpec("entropy", "unit", None, "concentration", "normalised entropy"),
    MetricSpec("top_k_share", "unit", None, "concentration", "top-k share"),
    # Gini ÷ its expectation for as many exchangeable scores: 1 = as concentrated as noise
    MetricSpec("gini_adjusted", "unit", None, "concentration", "adjusted Gini"),
)
METRICS: dict[str, MetricSpec] = {s.name: s for s in _SPECS}

# The quality tables of the report: a title and the families it shows.
QUALITY_FAMILIES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Similarity to the reference", ("text", "semantic")),
    ("Rule level", ("rule",)),
    ("Edit distances and BERTScore", ("yardstick",)),
    ("Judge and diversity", ("judge", "diversity")),
)


_BERTSCORE = re.compile(r"^bertscore_([a-z0-9_]+?)_(precision|recall|f1)$")
_BERTSCORE_PART = {"precision": "P", "recall": "R", "f1": "F1"}


def spec(name: str) -> MetricSpec | None:
    """The metric's spec; BERTScore under a configured model (``bertscore_<model>_f1``, keys
    named by :mod:`tunelens.evaluate.bertscore`) gets one derived from the bundled model's."""
    found = METRICS.get(name)
    if found is None and (m := _BERTSCORE.match(name)):
        return MetricSpec(name, "unit", True, "yardstick",
                          f"BERTScore {_BERTSCORE_PART[m.group(2)]} ({m.group(1)})")
    return found


def of_family(*families: str) -> tuple[str, ...]:
    """Metric names of the given families, in registry order."""
    return tuple(s.name for s in _SPECS if s.family in families)


def label(name: str) -> str:
    """What a reader calls the metric; the key itself for one the registry does not know."""
    s = spec(name)
    return s.label if s else name


def is_percent(name: str) -> bool:
    s = spec(name)
    return s is not None and s.scale == "percent"


def unit(name: str) -> float:
    s = spec(name)
    return s.unit if s else 1.0


def lower_is_better(name: str) -> bool:
    s = spec(name)
    return s is not None and s.greater_is_better is False


def better(name: str) -> str:
    """``higher`` where a higher value is better (unknown metrics are taken as quality scores),
    else ``any`` (lower-is-better and descriptive metrics: the size of a change counts)."""
    s = spec(name)
    return "higher" if s is None or s.greater_is_better else "any"


def digits(name: str, sentence: bool = False) -> int:
    s = spec(name)
    if s is None:
        return 2 if sentence else 3
    return s.sentence_digits if sentence else s.digits


def ordered(names) -> list[str]:
    """``names`` in registry order, names the registry does not know after them as given."""
    names = list(names)
    known = [s.name for s in _SPECS if s.name in names]
    derived = [n for n in names if n not in METRICS and spec(n) is not None]
    return known + derived + [n for n in names if spec(n) is None]
