"""The one metric registry: every metric evaluate and compare produce has a spec, and the places
that used to keep their own lists (compare's scale units and plateau directions, the report's
tables and wording) read it."""

from __future__ import annotations

import pytest

from tunelens.config import EvaluationConfig
from tunelens.evaluate import specs
from tunelens.evaluate.api import score
from tunelens.evaluate.judge import Judgement, Verdict

RULE = "RULE 1011.5.2: stair.riser_height <= 178 mm"
ROWS = [
    {"id": "a", "prompt": "c", "reference": RULE, "prediction": RULE,
     "samples": ["a b c", "a b d"]},
    {"id": "b", "prompt": "c", "reference": RULE, "prediction": "RULE 1: x.y >= 3 mm",
     "samples": ["x y", "x z"]},
    {"id": "c", "prompt": "c", "reference": "prose", "prediction": "other prose", "samples": []},
]


def test_every_aggregate_of_a_real_evaluation_has_a_spec():
    judgements = [Judgement(Verdict(4.0, 5.0, None), 1), Judgement(None, 3),
                  Judgement(Verdict(2.0, 2.0, "x"), 1)]
    result = score(ROWS, EvaluationConfig(bootstrap_samples=20), judgements)
    keys = list(result["aggregate"])
    assert {"bleu", "rule_exec_accuracy", "judge_accuracy", "distinct_2", "self_bleu"} <= set(keys)
    missing = [k for k in keys if specs.spec(k) is None]
    assert not missing, f"metrics without a MetricSpec in tunelens/evaluate/specs.py: {missing}"
    assert keys == specs.ordered(keys)  # metrics.json lists them in the registry's order
    assert list(result["intervals"]) == keys


def test_concentration_measures_have_specs():
    from tunelens.compare.concentration import EXTRA_METRICS, METRICS

    for name in (*METRICS, *EXTRA_METRICS):
        s = specs.spec(name)
        assert s is not None and s.family == "concentration" and s.greater_is_better is None


def test_derived_views_agree_with_the_registry():
    from tunelens.report.api import QUALITY_TABLES
    from tunelens.report.wording import fmt, metric_label

    assert specs.unit("bleu") == specs.unit("chrf") == 100.0 and specs.unit("rougeL") == 1.0
    assert specs.lower_is_better("self_bleu") and not specs.lower_is_better("bleu")
    assert specs.better("self_bleu") == specs.better("gini") == "any"
    assert specs.better("chrf") == specs.better("a_custom_metric") == "higher"
    assert specs.spec("ter") is None  # never produced, so not registered
    tabled = [m for _, names in QUALITY_TABLES for m in names]
    quality = [s.name for s in specs.METRICS.values() if s.family != "concentration"]
    assert sorted(tabled) == sorted(quality)  # every quality metric has a table, once
    assert fmt(41.26, "chrf") == "41.3" and fmt(0.4126, "rougeL") == "0.41" and fmt(None) == "n/a"
    assert metric_label("gini") == "Gini" and metric_label("unknown_thing") == "unknown_thing"


@pytest.mark.parametrize("field", ["name", "scale", "greater_is_better", "family", "label"])
def test_specs_are_frozen(field):
    with pytest.raises(AttributeError):
        setattr(specs.METRICS["bleu"], field, None)


def test_registry_imports_without_the_metric_libraries():
    import subprocess
    import sys

    code = ("import sys, tunelens.evaluate.specs; "
            "print(any(m in sys.modules for m in ('sacrebleu', 'torch', 'rouge_score', 'numpy')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
