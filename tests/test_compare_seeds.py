"""Seeds as replicates, the tested effect, the report-wide family and the seed-to-seed floor."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_compare import FAST, rid, write_run

from tunelens.compare import compare_study
from tunelens.compare.agreement import Features, noise_floor
from tunelens.compare.multiplicity import bh_threshold, collect, report_family
from tunelens.compare.seeded import compare_seeded, hierarchical_interval
from tunelens.compare.significance import compare_paired, hodges_lehmann
from tunelens.report.differences import significant_differences
from tunelens.report.findings import agreement_finding


def test_the_direction_is_the_tested_one_not_the_mean():
    """The issue's counter-example: the mean says a, the ranks (and Hodges–Lehmann) say b."""
    a, b = np.array([0.0] * 9 + [10.0]), np.array([0.1] * 9 + [0.0])
    row = compare_paired({"full": a, "lora": b}, 0.05, permutations=100)["pairwise"][0]
    assert row["mean_diff"] > 0.9 and row["rank_biserial"] < -0.6
    assert row["estimate"] == pytest.approx(-0.1) and row["direction"] == -1
    row["significant"] = True  # as if it had survived: the sentence follows the estimate
    group = {"model": "s", "objective": "instruct", "rag": False,
             "metrics": {"chrf": {"kind": "quality", "n": 10, "pairwise": [row]}}}
    text = significant_differences({"alpha": 0.05, "groups": [group]})[0].text
    assert text.startswith("LoRA scores higher than full fine-tuning in chrF")
    assert "Hodges–Lehmann difference 0.1 [" in text and "means, which point the other way" in text


def test_hodges_lehmann_interval_is_the_signed_rank_one():
    d = np.arange(1.0, 11.0)
    walsh = np.sort([(d[i] + d[j]) / 2 for i in range(10) for j in range(i, 10)])
    est, lo, hi = hodges_lehmann(d)
    # n = 10 at 95%: the 9th smallest and 9th largest of the 55 Walsh averages (Hollander & Wolfe)
    assert est == pytest.approx(5.5) and (lo, hi) == (walsh[8], walsh[46])


def _arms(rng, n_seeds: int, n: int, seed_sd: float, shift: float = 0.0):
    difficulty = rng.normal(0, 1, n)
    return {s: np.stack([difficulty + (shift if s == "full" else 0) + rng.normal(0, seed_sd)
                         + rng.normal(0, 0.1, n) for _ in range(n_seeds)]) for s in ("full", "lora")}


def test_seed_noise_alone_is_not_a_strategy_effect():
    """Runs that differ only by seed noise: example-level tests on one seed find a 'difference'
    almost every time; the seed-level test finds one about as often as alpha."""
    rng = np.random.default_rng(5)
    example_level = seed_level = 0
    for _ in range(60):
        arms = _arms(rng, 3, 40, seed_sd=0.5)
        first = {s: m[0] for s, m in arms.items()}
        example_level += compare_paired(first, 0.05, 50)["pairwise"][0]["p"] < 0.05
        res = compare_seeded(arms, {"full": [0, 1, 2], "lora": [0, 1, 2]}, 0.05, 50, 0.95)
        seed_level += res["pairwise"][0]["p"] < 0.05
        assert res["pairwise"][0]["test"] == "paired t-test on per-seed means"
    assert example_level >= 50 and seed_level <= 8


def test_unmatched_seeds_use_welch_and_the_interval_resamples_seeds():
    rng = np.random.default_rng(6)
    arms = _arms(rng, 4, 30, seed_sd=1.0, shift=0.3)
    row = compare_seeded(arms, {"full": [0, 1, 2, 3], "lora": [4, 5, 6, 7]}, 0.05, 400, 0.95)["pairwise"][0]
    assert row["test"] == "Welch t-test on per-seed means"
    assert row["estimate"] == pytest.approx(arms["full"].mean() - arms["lora"].mean())
    seedless = hierarchical_interval(arms["full"][:, :] * 0 + arms["full"].mean(axis=0),
                                     arms["lora"] * 0 + arms["lora"].mean(axis=0), 400, 0.95, 0)
    # seed noise widens the interval: far wider than resampling the seed-averaged examples only
    assert (row["ci_hi"] - row["ci_lo"]) > 3 * (seedless[1] - seedless[0])
    assert row["ci_lo"] < row["estimate"] < row["ci_hi"]


def test_report_family_applies_bh_over_families_and_holm_within():
    fam_a = [{"p": 0.001, "p_holm": 0.003, "finding": True}, {"p": 0.02, "p_holm": 0.04, "finding": True},
             {"p": 0.5, "p_holm": 0.5, "finding": True}]
    trend = {"metric": "gini", "p": 0.03, "finding": True}  # a family of one (no p_holm)
    plain = {"p": 0.0001}  # no marker: descriptive, never in the family
    results = {"tests": {"pairwise": fam_a}, "scale": {"curves": [trend, {"p": 0.9, "finding": True}]},
               "other": plain}
    assert [len(f) for f in collect(results)] == [3, 1, 1]
    family = report_family(results, q=0.05, alpha=0.05)
    # family p-values 0.003, 0.03, 0.9: BH keeps 0.003 (<= 0.05/3) and 0.03 (<= 0.1/3)
    assert family["tests"] == 5 and family["families"] == 3 and family["selected_families"] == 2
    assert family["bh_threshold"] == 0.03 == bh_threshold([0.003, 0.03, 0.9], 0.05)
    assert [r["significant"] for r in fam_a] == [True, False, False]  # 0.04 > q * 2/3
    assert trend["significant"] and "p_bh" not in plain


def test_identical_seed_replicates_make_no_floor():
    scores = np.array([0.9, 0.1, 0.5, 0.3])
    same = {f"ex{i}": Features(list(range(4)), scores + i, [None] * 4) for i in range(5)}
    vectors = {"a__s0": same, "a__s1": same, "b__s0": same}
    floor = noise_floor(vectors, {"a": ["a__s0", "a__s1"], "b": ["b__s0"]}, 2, 50, 0.95, 0)
    assert floor["degenerate"] and floor["n_cells"] == 1 and floor["n_pairs"] == 1
    runs = {"runs": [{"name": n, "strategy": s, "model": "m", "objective": "i", "rag": False}
                     for n, s in (("a__s0", "full"), ("b__s0", "lora"))]}
    pair = {"a": "a__s0", "b": "b__s0", "spearman": {"mean": 0.4, "lo": 0.3, "hi": 0.5}}
    text = agreement_finding({"pairs": [pair], "noise_floor": floor}, runs).text
    assert "no seed variation" in text and "below" not in text


def test_compare_study_uses_every_seed(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    for i, seed in enumerate((0, 1, 2)):
        for strategy, kind, q in (("full", "peaked", 0.8), ("lora", "spread", 0.4)):
            run = rid("s", strategy, seed=seed)
            write_run(study, run, 1e6, kind, q + 0.03 * i, 20, 10 * seed + len(kind))
    result = compare_study(study, FAST)
    group = result["tests"]["groups"][0]
    assert group["seeds"] == {"full": [0, 1, 2], "lora": [0, 1, 2]}
    chrf = group["metrics"]["chrf"]
    assert chrf["single_seed"] is False and chrf["pairwise"][0]["test"].startswith("paired t-test")
    family = result["tests"]["family"]
    assert family["tests"] >= len(group["metrics"]) and "p_bh" in chrf["pairwise"][0]
    assert result["tests"]["best"]["chrf"]["best"] == "s__full__instruct"
    floor = result["agreement"]["noise_floor"]
    assert floor["n_cells"] == 2 and floor["n_pairs"] == 6 and not floor["degenerate"]
    assert json.loads((study / "stats" / "tests.json").read_text())["family"] == family


def test_a_seed_difference_without_noise_is_not_certain():
    """Two seeds whose differences coincide (counts over the same examples often do) leave the t
    statistic undefined; the exact sign-flip test is what remains: p = 2 / 2^n, not 0."""
    from tunelens.compare.seeded import seed_test

    a = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]])  # per-seed means 2/3, 2/3
    b = a - 0.5                                       # the same difference in every seed
    assert seed_test(a, b, [0, 1], [0, 1]) == ("paired t-test on per-seed means", 0.5)
    five = np.repeat(a[:1], 5, axis=0)
    assert seed_test(five, five - 0.5, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])[1] == 2 / 2**5
    # unpaired (different seeds): the 6 splits of 2 + 2 per-seed means, the observed one extreme
    assert seed_test(a, b, [0, 1], [2, 3]) == ("Welch t-test on per-seed means", 2 / 6)
    assert seed_test(a, a, [0, 1], [0, 1])[1] == 1.0
