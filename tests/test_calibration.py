"""Calibration: the findings a report states, on simulated studies whose truth is known.

No training and no study folder: each simulated study is a set of runs (strategies × seeds) with
per-example quality scores, fed to the same functions ``compare_study`` and the findings use —
:func:`tunelens.compare.distinct.tests` (the tests of ``stats/tests.json``),
:func:`tunelens.compare.multiplicity.report_family` (the report-wide BH family) and
:func:`tunelens.report.differences.significant_differences` (the sentences). A *headline
finding* is a difference sentence marked headline, or a best run said to be ahead of the
runner-up.

The data: score = 50 + example difficulty (sd 10, shared by every run: examples are crossed
with runs) + run effect (sd 2 per training run: seed noise) + noise (sd 5 per example and run),
plus a planted shift for one strategy in the power study. The run-level standard deviation is
then sqrt(2² + 5²/n) ≈ 2.2 with n = 30 examples.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunelens.compare.distinct import tests as run_tests
from tunelens.compare.multiplicity import report_family
from tunelens.compare.runs import RunInfo
from tunelens.config import ComparisonConfig
from tunelens.layout import RunIdentity
from tunelens.report.differences import significant_differences

CFG = ComparisonConfig(bootstrap_samples=10, permutations=100)  # intervals do not decide findings
STRATEGIES = ("full", "lora", "qlora")
METRICS = ("chrf", "semantic_similarity")
N_EXAMPLES, SEED_SD, NOISE_SD = 30, 2.0, 5.0
RUN_SD = float(np.sqrt(SEED_SD**2 + NOISE_SD**2 / N_EXAMPLES))


def simulate(rng: np.random.Generator, seeds=(0, 1, 2), effect: float = 0.0) -> list[RunInfo]:
    """One study: every strategy from one distribution, ``full`` shifted by ``effect`` points."""
    ids = [f"ex{i:03d}" for i in range(N_EXAMPLES)]
    difficulty = {m: rng.normal(0, 10, N_EXAMPLES) for m in METRICS}
    runs = []
    for strategy in STRATEGIES:
        for seed in seeds:
            shift = effect if strategy == "full" else 0.0
            per = {m: 50 + difficulty[m] + shift + rng.normal(0, SEED_SD)
                   + rng.normal(0, NOISE_SD, N_EXAMPLES) for m in METRICS}
            run = RunInfo(RunIdentity("m", strategy, "instruct", False, seed))
            run.per_example = pd.DataFrame(per, index=ids)
            runs.append(run)
    return runs


def headline_findings(runs: list[RunInfo]) -> int:
    tests = run_tests(runs, {}, {}, CFG)
    tests["family"] = report_family(tests, CFG.fdr_q, CFG.alpha)
    differences = [f for f in significant_differences(tests) if f.headline]
    ahead = [b for b in tests["best"].values() if b["significant"] and b["direction"] > 0]
    return len(differences) + len(ahead)


def rate(studies: int, seed: int, **kwargs) -> float:
    rng = np.random.default_rng(seed)
    return sum(headline_findings(simulate(rng, **kwargs)) > 0 for _ in range(studies)) / studies


def test_a_null_study_rarely_states_a_headline_finding():
    """All strategies from one distribution, 3 seeds: at most 5% of 200 studies state anything."""
    null_rate = rate(200, seed=2026)
    print(f"\nnull studies with any headline finding: {null_rate:.3f}")
    assert null_rate <= 0.05


def test_one_seed_never_makes_a_headline_even_when_the_examples_differ():
    """A big shift between single runs is significant over examples, yet never a headline."""
    rng = np.random.default_rng(7)
    runs = simulate(rng, seeds=(0,), effect=8.0)
    tests = run_tests(runs, {}, {}, CFG)
    tests["family"] = report_family(tests, CFG.fdr_q, CFG.alpha)
    found = significant_differences(tests)
    assert found and all(not f.headline and "one seed per strategy" in f.text for f in found)
    assert all(m["single_seed"] for g in tests["groups"] for m in g["metrics"].values())


def test_power_of_a_planted_effect():
    """Power to state "full differs" for a planted shift (the numbers in docs/statistics.md)."""
    rows = []
    for seeds in ((0, 1, 2), (0, 1, 2, 3, 4)):
        for size in (2.0, 4.0):
            power = rate(60, seed=11, seeds=seeds, effect=size * RUN_SD)
            rows.append((len(seeds), size, power))
    print("\nseeds  shift (run sd)  power")
    for n_seeds, size, power in rows:
        print(f"{n_seeds:5d}  {size:14.1f}  {power:.2f}")
    power = {(n, s): p for n, s, p in rows}
    assert power[5, 4.0] >= 0.8  # a large effect with five seeds is found
    # a larger effect, or more seeds, gives more power
    assert power[3, 4.0] > power[3, 2.0] and power[5, 2.0] > power[3, 2.0]
