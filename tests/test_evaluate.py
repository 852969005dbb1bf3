"""evaluate: metrics equal their libraries, rule scores, bootstrap intervals, bad files, the CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import sacrebleu
from rouge_score import rouge_scorer

from tunelens.cli import main
from tunelens.config import EvaluationConfig
from tunelens.errors import TunelensError
from tunelens.evaluate import evaluate
from tunelens.evaluate.bootstrap import Resampler
from tunelens.evaluate.metrics import corpus_stats, ngram_jaccard

RULES = [
    "RULE 1011.5.2: stair.riser_height <= 178 mm",
    "RULE 1011.5.3: stair.tread_depth >= 279 mm",
    "RULE 405.2: ramp.slope <= 1:12",
    "RULE 1010.1.1: door.clear_width >= 815 mm IF door.accessible = true",
    "RULE 1020.2: corridor.width >= 1100 mm IF corridor.occupant_load >= 50",
    "RULE 1017.2: exit_access.travel_distance <= 60 m UNLESS building.sprinklered = true",
    "RULE 1014.2: handrail.height BETWEEN 865 mm AND 965 mm",
    "RULE 1009.3: stair.clear_width >= 900 mm",
]
# The same rules with one thing wrong each: a flipped comparator or a different value.
WRONG = [
    "RULE 1011.5.2: stair.riser_height >= 178 mm",
    "RULE 1011.5.3: stair.tread_depth <= 279 mm",
    "RULE 405.2: ramp.slope >= 1:12",
    "RULE 1010.1.1: door.clear_width <= 815 mm IF door.accessible = true",
    "RULE 1020.2: corridor.width <= 1100 mm IF corridor.occupant_load >= 50",
    "RULE 1017.2: exit_access.travel_distance >= 60 m UNLESS building.sprinklered = true",
    "RULE 1014.2: handrail.height BETWEEN 100 mm AND 200 mm",
    "RULE 1009.3: stair.clear_width <= 900 mm",
]
PROSE = [
    ("The clear width of a stair shall be not less than 900 mm.",
     "The stair must be at least 900 mm wide."),
    ("Ramps shall have a slope not steeper than 1:12.", "Ramp slopes may not exceed one in twelve."),
    ("Doors shall provide a clear opening of at least 815 mm.",
     "Doors shall provide a clear opening of at least 815 mm."),
    ("Handrails shall be between 865 mm and 965 mm high.", "Handrails go at 900 mm."),
    ("Exit access travel distance shall not exceed 60 m.", "Travel distance: 60 m at most."),
    ("Corridors shall be 1100 mm wide.", "Corridors  shall be\t1100 mm wide."),
]


def write_rows(path, pairs, samples=None):
    rows = []
    for i, (pred, ref) in enumerate(pairs):
        row = {"id": f"ex-{i}", "prompt": f"clause {i}", "reference": ref, "prediction": pred}
        if samples is not None:
            row["samples"] = samples[i]
        rows.append(row)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def small_config(**kw) -> EvaluationConfig:
    return EvaluationConfig(bootstrap_samples=200, **kw)


@pytest.fixture(scope="module")
def prose_result(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prose")
    preds = write_rows(folder / "p.jsonl", PROSE)
    return evaluate(preds, folder / "metrics.json", small_config()), folder


def test_text_metrics_equal_sacrebleu_and_rouge(prose_result):
    result, folder = prose_result
    preds = [p for p, _ in PROSE]
    refs = [r for _, r in PROSE]
    agg = result["aggregate"]
    assert agg["bleu"] == pytest.approx(sacrebleu.corpus_bleu(preds, [refs]).score)
    assert agg["chrf"] == pytest.approx(sacrebleu.corpus_chrf(preds, [refs]).score)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"])
    direct = [scorer.score(r, p) for p, r in zip(preds, refs, strict=True)]
    for name in ("rouge1", "rouge2", "rougeL"):
        assert agg[name] == pytest.approx(np.mean([d[name].fmeasure for d in direct]))
    for row, p, r, d in zip(result["per_example"], preds, refs, direct, strict=True):
        assert row["bleu"] == pytest.approx(sacrebleu.sentence_bleu(p, [r]).score)
        assert row["chrf"] == pytest.approx(sacrebleu.sentence_chrf(p, [r]).score)
        assert row["rougeL"] == pytest.approx(d["rougeL"].fmeasure)
    # what was returned is what was written
    assert json.loads((folder / "metrics.json").read_text()) == json.loads(json.dumps(result))


def test_sentence_scores_equal_sacrebleu_on_edge_cases():
    from tunelens.evaluate.metrics import text_metrics

    preds = ["", "stair", "a b c d e", "RULE 1: x.y <= 3 mm", "the the the the", "Mm 3 <= y.x"]
    refs = ["a rule", "stair", "a b c d f", "RULE 1: x.y <= 3 mm", "the cat", ""]
    values = text_metrics(preds, refs)
    for i, (p, r) in enumerate(zip(preds, refs, strict=True)):
        assert values["bleu"][i] == pytest.approx(sacrebleu.sentence_bleu(p, [r]).score)
        assert values["chrf"][i] == pytest.approx(sacrebleu.sentence_chrf(p, [r]).score)


def test_exact_match_semantic_similarity_and_scales(prose_result):
    result, _ = prose_result
    rows = result["per_example"]
    # row 2 is identical, row 5 differs only in whitespace
    assert [r["exact_match"] for r in rows] == [0.0, 0.0, 1.0, 0.0, 0.0, 1.0]
    assert rows[2]["semantic_similarity"] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= r["semantic_similarity"] <= 1.0 + 1e-6 for r in rows)
    agg = result["aggregate"]
    assert 0 < agg["bleu"] <= 100 and 0 < agg["chrf"] <= 100
    for key in ("rouge1", "rouge2", "rougeL", "ngram_jaccard", "exact_match", "semantic_similarity"):
        assert 0.0 <= agg[key] <= 1.0
    # prose references are not rules: rule metrics do not apply, and say so with null
    for key in ("rule_parse_rate", "rule_field_accuracy", "rule_exec_accuracy", "rule_exec_agreement"):
        assert agg[key] is None and result["intervals"][key] is None
        assert all(r[key] is None for r in rows)
    assert result["info"]["rule_scored_examples"] == 0


def test_semantic_similarity_ranks_paraphrase_above_unrelated():
    from tunelens.evaluate.metrics import semantic_similarity

    ref = "The stair must be at least 900 mm wide."
    sims = semantic_similarity(
        ["Stairs shall have a clear width of not less than 900 mm.",
         "Bananas are rich in potassium."], [ref, ref])
    assert sims[0] > sims[1] + 0.2


def test_ngram_jaccard_by_definition():
    # n=1: {a,b,c} vs {a,b,d} -> 2/4; n=2: {ab,bc} vs {ab,bd} -> 1/3; n=3: 0/2; n=4: neither has one
    assert ngram_jaccard("a b c", "a b d") == pytest.approx((0.5 + 1 / 3 + 0.0) / 3)
    assert ngram_jaccard("a  b\tc", "a b c") == 1.0
    assert ngram_jaccard("", "") == 1.0
    assert ngram_jaccard("x", "") == 0.0


def test_perfect_rules_score_one_and_wrong_rules_score_low(tmp_path):
    perfect = evaluate(write_rows(tmp_path / "a.jsonl", list(zip(RULES, RULES, strict=True))),
                       tmp_path / "a.json", small_config())
    agg = perfect["aggregate"]
    assert agg["rule_parse_rate"] == 1.0
    assert agg["rule_field_accuracy"] == 1.0
    assert agg["rule_exec_accuracy"] == 1.0 and agg["rule_exec_agreement"] == 1.0
    assert agg["exact_match"] == 1.0 and agg["bleu"] == pytest.approx(100.0)

    wrong = evaluate(write_rows(tmp_path / "b.jsonl", list(zip(WRONG, RULES, strict=True))),
                     tmp_path / "b.json", small_config())
    agg = wrong["aggregate"]
    assert agg["rule_parse_rate"] == 1.0
    # every wrong rule decides some sample design differently from its reference ...
    assert agg["rule_exec_accuracy"] == 0.0
    # ... but agrees on some (the designs straddle the threshold): partial credit stays below 1
    assert 0.0 < agg["rule_exec_agreement"] < 0.75
    # exactly one field (comparator or value) is wrong in each
    assert agg["rule_field_accuracy"] == pytest.approx(6 / 7)
    by_field = wrong["info"]["rule_field_accuracy_by_field"]
    assert by_field["id"] == by_field["element"] == by_field["unit"] == 1.0
    assert by_field["comparator"] + by_field["value"] == pytest.approx(1.0)
    # text overlap still looks good: this is why rule-level scores exist
    assert wrong["aggregate"]["rouge1"] > 0.9


def test_unparseable_predictions_score_zero(tmp_path):
    pairs = [(RULES[0], RULES[0]), ("stair riser at most 178", RULES[0]), ("", RULES[2]),
             ("RULE 1: stair.riser_height <= 178 parsecs", RULES[0])]
    result = evaluate(write_rows(tmp_path / "p.jsonl", pairs), tmp_path / "m.json", small_config())
    rows = result["per_example"]
    assert [r["rule_parse_rate"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert [r["rule_field_accuracy"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert [r["rule_exec_accuracy"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert [r["rule_exec_agreement"] for r in rows] == [1.0, 0.0, 0.0, 0.0]
    assert rows[1]["rule_fields"] is None and rows[0]["rule_fields"]["unit"] is True
    assert result["aggregate"]["rule_parse_rate"] == 0.25


def test_rule_metrics_only_over_rule_references(tmp_path):
    pairs = [(RULES[0], RULES[0]), (WRONG[1], RULES[1]), ("free text", "a prose reference")]
    result = evaluate(write_rows(tmp_path / "p.jsonl", pairs), tmp_path / "m.json", small_config())
    assert result["info"]["rule_scored_examples"] == 2
    assert result["per_example"][2]["rule_parse_rate"] is None
    assert result["aggregate"]["rule_parse_rate"] == 1.0
    lo, hi = result["intervals"]["rule_exec_accuracy"]
    assert lo <= result["aggregate"]["rule_exec_accuracy"] <= hi


def test_intervals_contain_the_estimate_and_are_seeded(prose_result, tmp_path):
    result, folder = prose_result
    for name, value in result["aggregate"].items():
        interval = result["intervals"][name]
        if value is None:
            continue
        lo, hi = interval
        assert lo <= value + 1e-9 and value <= hi + 1e-9, name
    again = evaluate(folder / "p.jsonl", tmp_path / "again.json", small_config())
    assert again["intervals"] == result["intervals"]
    other = evaluate(folder / "p.jsonl", tmp_path / "other.json", small_config(seed=1))
    assert other["intervals"]["bleu"] != result["intervals"]["bleu"]


def test_intervals_narrow_with_more_data():
    rng = np.random.default_rng(3)
    few, many = rng.random(20), rng.random(2000)
    lo_few, hi_few = Resampler(20, 500, seed=0).mean(few)
    lo_many, hi_many = Resampler(2000, 500, seed=0).mean(many)
    assert hi_many - lo_many < (hi_few - lo_few) / 4
    # the percentile interval of a mean is close to the normal one (mean ± 1.96 s / sqrt(n))
    half = 1.96 * many.std(ddof=1) / np.sqrt(many.size)
    assert (hi_many - lo_many) / 2 == pytest.approx(half, rel=0.15)


def test_corpus_bleu_resample_equals_sacrebleu_on_the_resampled_corpus():
    preds = [p for p, _ in PROSE] + WRONG
    refs = [r for _, r in PROSE] + RULES
    stats = corpus_stats(preds, refs)
    resampler = Resampler(len(preds), 20, seed=5)
    for name, direct in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        summed = resampler.summed(stats[name].stats)
        for counts, row in zip(resampler.counts[:3], summed[:3], strict=True):
            idx = np.repeat(np.arange(len(preds)), counts.astype(int))
            expected = direct([preds[i] for i in idx], [[refs[i] for i in idx]]).score
            assert stats[name].score(row) == pytest.approx(expected)


def test_samples_give_distinct_n_and_self_bleu(tmp_path):
    samples = [["a b a", "a b"], ["c d e f", "c d e f", "c d e g"], ["x y z w"]]
    pairs = [(s[0], s[0]) for s in samples]
    result = evaluate(write_rows(tmp_path / "p.jsonl", pairs, samples), tmp_path / "m.json",
                      small_config())
    agg = result["aggregate"]
    # unigrams: a b a | a b | c d e f x2 | c d e g | x y z w -> 21 tokens, 11 distinct
    assert agg["distinct_1"] == pytest.approx(11 / 21)
    # bigrams: 2+1+3+3+3+3 = 15, distinct: ab ba cd de ef eg xy yz zw = 9
    assert agg["distinct_2"] == pytest.approx(9 / 15)
    expected_second = np.mean([
        sacrebleu.sentence_bleu(s, [o for j, o in enumerate(samples[1]) if j != i]).score
        for i, s in enumerate(samples[1])
    ])
    rows = result["per_example"]
    assert rows[1]["self_bleu"] == pytest.approx(expected_second)
    assert rows[2]["self_bleu"] is None  # one sample: nothing to compare with
    assert agg["self_bleu"] == pytest.approx(np.mean([rows[0]["self_bleu"], expected_second]))
    for key in ("distinct_1", "distinct_2", "self_bleu"):
        lo, hi = result["intervals"][key]
        assert lo <= agg[key] <= hi
    assert result["info"]["interval_methods"]["distinct_2"] == "jackknife normal"


def test_distinct_n_jackknife_leaves_each_prompt_out():
    from tunelens.evaluate.diversity import DistinctStats

    samples = [["a b a", "a b"], ["c d e f", "c d"], ["a x"], ["q r s", "s r q"]]
    stats = DistinctStats.from_samples(samples, 1)
    for i, value in enumerate(stats.leave_one_out()):
        tokens = [t for j, s in enumerate(samples) if j != i for text in s for t in text.split()]
        assert value == pytest.approx(len(set(tokens)) / len(tokens))
    lo, hi = stats.interval(0.95)
    assert lo < stats.value() < hi


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, r"p\.jsonl: no such file"),
        ("", r"p\.jsonl: empty file"),
        ('{"id": 1, "reference": "a", "prediction": "b"}\n{"id": 2, "refer\n',
         r"p\.jsonl:2: malformed JSON"),
        ('{"id": 1, "reference": "a", "prediction": "b"}\n\n{"id": 2, "reference": "a"}\n',
         r"p\.jsonl:3: field 'prediction': missing"),
        ('{"id": 1, "prediction": "b"}\n', r"p\.jsonl:1: field 'reference': missing"),
        ('{"id": 1, "reference": "a", "prediction": null}\n',
         r"p\.jsonl:1: field 'prediction': .*string, got null"),
        ('{"id": 1, "reference": "a", "prediction": "b"}\n{"id": 1, "reference": "a", '
         '"prediction": "c"}\n', r"p\.jsonl:2: duplicate id '1' \(first at .*p\.jsonl:1\)"),
        ('{"id": 1, "reference": "a", "prediction": "b", "samples": "b"}\n',
         r"p\.jsonl:1: field 'samples': .*list, got string"),
    ],
)
def test_bad_prediction_files_fail_with_one_line_and_write_nothing(tmp_path, content, message):
    preds = tmp_path / "p.jsonl"
    if content is not None:
        preds.write_text(content, encoding="utf-8")
    out = tmp_path / "out" / "metrics.json"
    with pytest.raises(TunelensError, match=message) as info:
        evaluate(preds, out, small_config())
    assert "\n" not in str(info.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_cli_evaluate_prints_table_and_writes(tmp_path, capsys):
    preds = write_rows(tmp_path / "p.jsonl", list(zip(WRONG[:4], RULES[:4], strict=True)))
    out = tmp_path / "metrics.json"
    assert main(["evaluate", "--predictions", str(preds), "--out", str(out),
                 "--bootstrap-samples", "50", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert "95% CI" in printed and "rule_exec_accuracy" in printed and "chrf" in printed
    written = json.loads(out.read_text())
    assert set(written) >= {"aggregate", "intervals", "per_example", "info"}
    assert written["info"]["bootstrap_samples"] == 50 and written["info"]["seed"] == 4
    assert len(written["per_example"]) == 4


def test_cli_evaluate_bad_input_is_one_red_line(tmp_path, capsys):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"id": 1, "reference": "a"}\n', encoding="utf-8")
    code = main(["evaluate", "--predictions", str(bad), "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "p.jsonl:1" in err
    assert not (tmp_path / "m.json").exists()
    code = main(["evaluate", "--predictions", str(bad), "--out", str(tmp_path / "m.json"),
                 "--judge-url", "http://127.0.0.1:9"])
    assert code == 2 and "needs a model" in capsys.readouterr().err


def test_sacrebleu_private_api_is_pinned():
    """evaluate scores bootstrap resamples with two private sacrebleu methods (there is no public
    equivalent for chrF): a sacrebleu release that moves them must fail here, loudly."""
    from sacrebleu.metrics import BLEU, CHRF

    from tunelens.evaluate.metrics import SACREBLEU_PRIVATE, sacrebleu_private

    for metric in (BLEU(), CHRF()):
        for name in SACREBLEU_PRIVATE:
            assert callable(getattr(metric, name, None)), (
                f"sacrebleu {sacrebleu.__version__} moved {type(metric).__name__}.{name}, which "
                "tunelens/evaluate/metrics.py uses to score bootstrap resamples: update it")
    preds, refs = [p for p, _ in PROSE], [r for _, r in PROSE]
    for name, direct in (("bleu", sacrebleu.corpus_bleu), ("chrf", sacrebleu.corpus_chrf)):
        assert corpus_stats(preds, refs)[name].corpus_score() == pytest.approx(
            direct(preds, [refs]).score)

    class Moved:  # what a release without the method looks like
        pass

    with pytest.raises(RuntimeError, match=r"sacrebleu .* has no Moved\._compute_score_from_stats"):
        sacrebleu_private(Moved(), "_compute_score_from_stats")
