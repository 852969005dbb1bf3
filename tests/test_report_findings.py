"""The findings section: significant results lead, the rest is summarised, the list stays short.

The statistics are built with the real ``compare_paired`` on synthetic per-example values whose
differences are known by construction, so the sentences are checked against what the tests say.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tunelens.compare.multiplicity import report_family
from tunelens.compare.significance import compare_paired
from tunelens.report.differences import significant_differences, too_small
from tunelens.report.findings import digest
from tunelens.report.tables import quality
from tunelens.report.wording import fmt_p

ALPHA = 0.05


def _group(model: str, values: dict[str, dict[str, np.ndarray]], objective: str = "instruct",
           seeded: bool = True) -> dict:
    """A tests.json group: ``values[metric][strategy]`` are aligned per-example arrays."""
    metrics = {}
    for metric, per in values.items():
        kind = "concentration" if metric in ("gini", "entropy", "top_k_share") else \
            "category" if metric.startswith("share_") else "quality"
        metrics[metric] = {**compare_paired(per, ALPHA, permutations=200), "kind": kind}
        if seeded:  # stands for a seed-level result: the findings treat both shapes alike
            metrics[metric]["single_seed"] = False
            for row in metrics[metric]["pairwise"]:
                row["single_seed"] = False
    strategies = list(next(iter(values.values())))
    return {"model": model, "objective": objective, "rag": False, "metrics": metrics, "skipped": {},
            "runs": {s: f"{model}__{s}__{objective}" for s in strategies}}


def _run(model: str, strategy: str, aggregate: dict, objective: str = "instruct") -> dict:
    return {"name": f"{model}__{strategy}__{objective}", "model": model, "strategy": strategy,
            "objective": objective, "rag": False, "seed": None, "params": 1e6, "aggregate": aggregate,
            "intervals": {k: [v - 1, v + 1] for k, v in aggregate.items()}, "has_metrics": True,
            "has_attributions": True, "training": None, "model_dir": f"{model}__{strategy}__{objective}"}


def _cells(runs: list[dict]) -> list[dict]:
    """stats/runs.json's cells for runs of one seed each: every summary has n = 1."""
    return [{"cell": r["name"], "model": r["model"], "strategy": r["strategy"], "objective": r["objective"],
             "rag": r["rag"], "params": r["params"], "runs": [r["name"]], "seeds": [r["seed"]],
             "model_dirs": [r["model_dir"]], "evaluated": [r["name"]], "training": {},
             "aggregate": {k: {"mean": v, "min": v, "max": v, "n": 1} for k, v in r["aggregate"].items()}}
            for r in runs]


def _stats(groups: list[dict], runs: list[dict]) -> dict:
    return {"runs": {"runs": runs, "cells": _cells(runs), "primary": [r["name"] for r in runs],
                     "failures": [],
                     "n_attributed": len(runs), "sizes": {r["model"]: r["params"] for r in runs}},
            "tests": {"alpha": ALPHA, "groups": groups,
                      "family": report_family({"groups": groups}, 0.05, ALPHA)},
            "category_shares": {"per_strategy": {}},
            "scale": {"curves": [], "confidence": 0.95, "threshold_per_decade": 0.01},
            "agreement": {"pairs": [], "noise_floor": None, "top_k": 5}}


def _one_real_difference():
    """Model s: full far more concentrated than LoRA. Models m..p: three strategies, no difference."""
    rng = np.random.default_rng(3)
    base = rng.uniform(0.3, 0.5, 16)
    groups = [_group("s", {"gini": {"full": base + 0.25 + rng.normal(0, 0.02, 16), "lora": base}})]
    runs = [_run("s", "full", {"chrf": 40.0}), _run("s", "lora", {"chrf": 35.0})]
    for model in ("m", "n", "o", "p"):
        alike = {s: rng.uniform(0.3, 0.5, 16) for s in ("full", "lora", "qlora")}
        groups.append(_group(model, {"gini": alike}))
        runs += [_run(model, s, {"chrf": 30.0}) for s in ("full", "lora", "qlora")]
    return _stats(groups, runs)


def test_one_significant_difference_is_listed_and_the_rest_summarised_in_one_sentence():
    stats = _one_real_difference()
    rows = [r for g in stats["tests"]["groups"] for r in g["metrics"]["gini"]["pairwise"]]
    real = stats["tests"]["groups"][0]["metrics"]["gini"]["pairwise"][0]
    nulls = [r for r in rows if not r["significant"]]
    assert real["significant"] and len(nulls) == len(rows) - 1 == 12  # the construction holds

    d = digest(stats, ["chrf"])
    differences = [f for f in d.headline if f.kind == "difference"]
    assert len(differences) == 1 and differences[0].significant
    text = differences[0].text
    assert text.startswith("Full fine-tuning attributions are more concentrated than LoRA on s: ")
    assert f"Gini {real['mean_a']:.2f} vs {real['mean_b']:.2f}" in text
    assert f"{fmt_p(real['p_holm'])} (Holm)" in text and f"r = {real['rank_biserial']:.2f}" in text
    assert "n = 16 paired examples" in text

    summaries = [f.text for f in d.context if f.kind == "summary"]
    assert len(summaries) == 1
    smallest = min(r["p_holm"] for r in nulls)
    assert summaries[0].startswith("No other difference in attribution concentration")
    assert "12 comparisons" in summaries[0] and f"smallest Holm-adjusted {fmt_p(smallest)}" in summaries[0]
    # the null pairs are not written out one by one
    assert not any(re.search(r"\bon [mnop]\b", f.text) for f in d.bullets)
    assert d.headline[1].kind == "best" and "s__full__instruct at 40.0" in d.headline[1].text


def _p_of(text: str) -> float:
    m = re.search(r"p (<|=) (\d\.\d+) \(Holm\)", text)
    return 0.0 if m.group(1) == "<" else float(m.group(2))


def test_the_cap_holds_and_what_was_left_out_is_counted():
    rng = np.random.default_rng(0)
    offsets = {"full": 0.4, "freeze": 0.3, "dora": 0.2, "lora": 0.1, "qlora": 0.0}
    groups, runs = [], []
    for objective in ("instruct", "causal"):
        base = rng.uniform(0.2, 0.4, 14)
        # gini: every pair far apart; chrf: neighbours close, so p-values spread out
        values = {"gini": {s: base + o + rng.normal(0, 0.005, 14) for s, o in offsets.items()},
                  "chrf": {s: 100 * (base + o / 4 + rng.normal(0, 0.03, 14)) for s, o in offsets.items()}}
        groups.append(_group("s", values, objective))
        runs += [_run("s", s, {"chrf": 30 + 100 * o}, objective) for s, o in offsets.items()]
    stats = _stats(groups, runs)
    every = significant_differences(stats["tests"])
    n_sig = sum(r["significant"] for g in groups for m in g["metrics"].values() for r in m["pairwise"])
    assert len(every) == n_sig > 20  # one sentence per (pair, metric, objective): nothing to merge here
    for topic in ("concentration", "quality"):  # strongest first within a kind of test
        ps = [_p_of(f.text) for f in every if f.topic == topic]
        assert ps == sorted(ps)

    for cap in (12, 8):
        d = digest(stats, ["chrf"], cap=cap)
        assert len(d.bullets) <= cap
        shown = [f for f in d.headline if f.kind == "difference"]
        assert shown and all(f.significant for f in shown)
        assert {f.topic for f in shown} == {"concentration", "quality"}  # neither kind crowded out
        for topic in ("concentration", "quality"):  # the strongest of each kind are the ones kept
            kept = [f.text for f in shown if f.topic == topic]
            assert kept == [f.text for f in every if f.topic == topic][: len(kept)]
        assert any(f.kind == "best" for f in d.headline)  # never traded for another difference
        left = [f.text for f in d.context if f.kind == "left_out"]
        assert len(left) == 1 and f"{len(every) - len(shown)} significant differences" in left[0]


def test_too_small_samples_are_called_out_with_the_smallest_attainable_p():
    rng = np.random.default_rng(1)

    def group(model, n, strategies):
        values = {"gini": {s: rng.uniform(0, 1, n) + i for i, s in enumerate(strategies)}}
        return _group(model, values, seeded=False)  # the Wilcoxon floor is for example-level tests

    tests = {"alpha": ALPHA, "groups": [group("a", 4, ("full", "lora", "qlora"))]}
    notes = [f.text for f in too_small(tests)]
    assert len(notes) == 1 and "2/2^4 = 0.125" in notes[0] and "0.375 after Holm over 3 pairs" in notes[0]
    assert "at least 7 paired examples" in notes[0]  # 3 x 2/2^7 = 0.047 < 0.05
    # with one pair, 5 examples still cannot reach 0.05 (2/32), 6 can (2/64)
    assert "2/2^5 = 0.062" in too_small({"alpha": ALPHA, "groups": [group("b", 5, ("full", "lora"))]})[0].text
    assert too_small({"alpha": ALPHA, "groups": [group("c", 6, ("full", "lora"))]}) == []
    # a perfectly separated pair at n = 6 is significant, so the note was right to stay silent
    assert group("d", 6, ("full", "lora"))["metrics"]["gini"]["pairwise"][0]["significant"]


def test_a_metric_at_zero_for_every_run_gets_one_line_only():
    rng = np.random.default_rng(2)
    zeros = np.zeros(10)
    groups = [_group("s", {"exact_match": {"full": zeros, "lora": zeros},
                           "rule_exec_accuracy": {"full": zeros, "lora": zeros},
                           "chrf": {"full": rng.uniform(20, 40, 10), "lora": rng.uniform(20, 40, 10)}})]
    runs = [_run("s", s, {"exact_match": 0.0, "rule_exec_accuracy": 0.0, "chrf": c})
            for s, c in (("full", 31.0), ("lora", 29.0))]
    d = digest(_stats(groups, runs), ["rule_exec_accuracy", "chrf"])
    mentions = [f for f in d.bullets if "exact_match" in f.text]
    assert [f.kind for f in mentions] == ["zero"]
    best = next(f.text for f in d.bullets if f.kind == "best")
    assert best.startswith("The best run on chrf (corpus score), the main quality metric here "
                           "(rule_exec_accuracy is 0")
    summary = next(f.text for f in d.bullets if f.kind == "summary")
    assert "1 comparison over 1 metric" in summary  # the zero metrics are not counted as comparisons


def test_quality_tables_split_by_family_and_zero_columns_are_named():
    agg = {"bleu": 1.0, "chrf": 5.0, "rouge1": 0.1, "rouge2": 0.0, "rougeL": 0.1, "ngram_jaccard": 0.01,
           "semantic_similarity": 0.2, "exact_match": 0.0, "rule_parse_rate": 0.5, "rule_field_accuracy": 0.0,
           "rule_exec_accuracy": 0.25, "rule_exec_agreement": 0.0, "judge_accuracy": 0.4, "novel": 1.0}
    runs = [_run("s", "full", agg), _run("s", "lora", {**agg, "chrf": 6.0, "rouge2": 0.01})]
    q = quality(_cells(runs), runs)
    titles = [t["title"] for t in q["tables"]]
    assert titles == ["Similarity to the reference", "Rule level", "Judge and diversity"]
    assert all(len(t["columns"]) <= 8 for t in q["tables"])
    assert q["tables"][1]["columns"] == ["rule_parse_rate", "rule_exec_accuracy"]
    assert "novel" in q["tables"][2]["columns"] and "rouge2" in q["tables"][0]["columns"]
    assert set(q["zero"]) == {"exact_match", "rule_field_accuracy", "rule_exec_agreement"}
    chrf = q["tables"][0]["columns"].index("chrf")
    assert [row["cells"][chrf]["best"] for row in q["tables"][0]["rows"]] == [False, True]
    # one seed: the row says n = 1, the value the evaluation's interval over examples, labelled as such
    assert q["tables"][0]["rows"][1]["cells"][chrf]["spread"] == "examples 5.0 – 7.0"
    assert q["tables"][0]["rows"][1]["seeds"] == "n = 1"


@pytest.mark.parametrize("cap", [4, 6])
def test_required_findings_survive_a_small_cap(cap):
    d = digest(_one_real_difference(), ["chrf"], cap=cap)
    kinds = [f.kind for f in d.bullets]
    assert "best" in kinds and "summary" in kinds
