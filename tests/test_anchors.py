"""Anchors: the search is brute force where it claims to be, and reads a rule writer correctly."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from tunelens.errors import TunelensError
from tunelens.explain.anchors import clause_words, explain_rule, find_anchor, perturbed


def brute_force(f, n: int, threshold: float, keep: float) -> tuple[tuple[int, ...], float]:
    """Every subset, smallest first, exact precision over all 2**n inputs (independently coded)."""
    masks = np.array(list(itertools.product([False, True], repeat=n)), dtype=bool)
    kept = np.array([f(m) for m in masks], dtype=float)
    weight = keep ** masks.sum(axis=1) * (1 - keep) ** (~masks).sum(axis=1)
    for size in range(n + 1):
        best = None
        for subset in itertools.combinations(range(n), size):
            holds = masks[:, list(subset)].all(axis=1)
            p = float((weight * kept)[holds].sum() / weight[holds].sum())
            if p >= threshold - 1e-12 and (best is None or p > best[1] + 1e-12):
                best = (subset, p)
        if best is not None:
            return best
    raise AssertionError("the full set always qualifies")


def random_rule(n: int, rng: np.random.Generator):
    """A random monotone-ish boolean function: a few random conjunctions, true on the full input."""
    terms = [rng.choice(n, size=rng.integers(1, min(n, 3) + 1), replace=False) for _ in range(3)]
    noise = rng.random(2 ** n) < 0.1  # and a few arbitrary exceptions, so precision is not monotone
    code = 2 ** np.arange(n)[::-1]

    def f(mask):
        value = any(mask[t].all() for t in terms) ^ bool(noise[int(mask @ code)])
        return value or bool(mask.all())

    return f


@pytest.mark.parametrize("n", [3, 5, 8])
def test_search_equals_brute_force_up_to_eight_features(n):
    rng = np.random.default_rng(n)
    for trial in range(6):
        f = random_rule(n, rng)
        threshold, keep = (0.95, 0.5) if trial % 2 == 0 else (0.7, 0.3)
        calls = []

        def decide(masks, f=f, calls=calls):
            calls.append(len(masks))
            return np.array([f(m) for m in masks])

        found = find_anchor(decide, n, threshold=threshold, keep=keep)
        features, precision = brute_force(f, n, threshold, keep)
        assert found.features == features and found.exact
        assert found.precision == pytest.approx(precision)
        assert found.coverage == pytest.approx(keep ** len(features))
        assert sum(calls) == found.decisions <= 2 ** n  # every input decided at most once


def test_beam_finds_a_planted_anchor_among_many_words():
    def decide(masks):
        return masks[:, 3] & masks[:, 11]

    found = find_anchor(decide, 16, exhaustive=10, exact_free=6, samples=128)
    assert found.features == (3, 11) and not found.exact and found.precision == 1.0
    cut = find_anchor(decide, 16, exhaustive=10, exact_free=6, samples=128, budget=200)
    assert not cut.met and len(cut.features) == 1 and cut.sentence("x").startswith("no anchor")
    with pytest.raises(TunelensError):
        find_anchor(decide, 16, keep=1.0)


def writer(clauses: list[str]) -> list[str]:
    """A rule writer that needs 'least'/'most', the number and its unit, and nothing else."""
    out = []
    for clause in clauses:
        m = re.search(r"(\d+) (mm|in)\b", clause)
        words = set(clause.split())
        op = ">=" if "least" in words else "<=" if "most" in words else "="
        out.append(f"RULE 1: ramp.clear_width {op} {m.group(1)} {m.group(2)}" if m else
                   "RULE 1: ramp.clear_width = 0")
    return out


def test_explain_rule_names_the_words_that_keep_the_limit():
    clause = "The ramp width shall be at least 915 mm."
    spans = clause_words(clause)
    assert [clause[s:e] for s, e in spans][-3:] == ["least", "915", "mm"]
    assert perturbed(clause, spans, np.array([True] * 6 + [False] * 3)) == "The ramp width shall be at."
    corpus = [clause, "Doors shall be at least 915 mm wide.", "Ramps: 1:12 at most."]
    found = explain_rule(writer, clause, corpus=corpus)
    assert found["anchor"] == ["least", "915", "mm"] and found["precision"] == 1.0
    assert found["sentence"].startswith("keeps `>= 915 mm` while the clause keeps {least, 915, mm}")
    assert found["data_coverage"] == pytest.approx(2 / 3)
    # the unit field needs the quantity, not the comparator: a smaller anchor for a smaller question
    assert explain_rule(writer, clause, field="unit")["anchor"] == ["915", "mm"]
    with pytest.raises(TunelensError, match="unknown field"):
        explain_rule(writer, clause, field="colour")
