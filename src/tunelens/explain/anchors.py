"""Rule-like explanations: the smallest set of clause words that keeps the model's rule (anchors).

An attribution ranks words; an anchor (Ribeiro, Singh & Guestrin, "Anchors: High-Precision
Model-Agnostic Explanations", AAAI 2018) is a sufficient condition: while the clause keeps these
words, the model keeps its answer with probability >= ``threshold`` however the other words are
perturbed. It reads as a rule: "keeps `>= 915 mm` while the clause keeps {36, inches, minimum}".

Perturbation: each word outside the anchor is kept with probability ``keep`` and otherwise
deleted (generation needs text, and a deleted word leaves no stand-in token the model could
read). *Precision* of an anchor is the probability that the answer is kept under that
distribution; *coverage* the probability that a perturbed clause holds the whole anchor
(``keep ** size``: short anchors cover more), and, given other clauses, the share of them that
contain every anchor word (``data_coverage``).

What is searched, and how exactly. Anchors are searched by size, smallest first: size 0 (the
answer survives any perturbation), then 1, 2, ...; the first size with an anchor of precision >=
``threshold`` wins, ties going to the higher precision, then to the earlier words. At a size with
at most ``exhaustive`` candidate sets all of them are tried, otherwise a beam: the ``beam`` most
precise anchors of the size below, each grown by one word (the paper's beam search). Precision is
exact (every perturbation of the free words enumerated, weighted) while at most ``exact_free``
words are free, else estimated from ``samples`` seeded draws. So for up to ``exact_free`` words
and ``C(n, n/2) <= exhaustive`` (8 words: 70 sets) the search *is* brute force, which a test
checks against an independent enumeration; beyond that it is the paper's approximation. Every
decision is memoised by mask and each size's new masks go to ``decide`` in one batch (batched
generation), so a mask is decided once however many anchors share it.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from tunelens.errors import TunelensError, check_choice

Decide = Callable[[np.ndarray], np.ndarray]  # masks [n, features] (True = word kept) -> kept?
# a word with its decimals, ratios, ids and percent signs: 36, 405.5, 1:12, 8.33%, clear_width
WORD = re.compile(r"\w+(?:[.:/]\w+)*%?")
FIELDS = ("limit", "rule", "id", "element", "property", "comparator", "value", "unit", "conditions")


@dataclass(frozen=True)
class Anchor:
    """The anchor found: feature indices, their texts, precision, coverage and its cost."""

    features: tuple[int, ...]
    words: tuple[str, ...]
    precision: float
    coverage: float
    exact: bool  # precision enumerated, not sampled
    decisions: int  # distinct perturbations decided
    data_coverage: float | None = None
    met: bool = True  # precision >= threshold; False when the budget ran out first


    def sentence(self, kept: str) -> str:
        """``keeps `kept` while the clause keeps {w1, w2}`` with precision and coverage."""
        stats = f"(precision {self.precision:.2f}, coverage {self.coverage:.2f})"
        if not self.met:
            return (f"no anchor keeps `{kept}` within the budget; the best found keeps "
                    f"{{{', '.join(self.words)}}} {stats}")
        if not self.words:
            return f"keeps `{kept}` whatever else the clause says {stats}"
        return f"keeps `{kept}` while the clause keeps {{{', '.join(self.words)}}} {stats}"


class _Precision:
    """Precision of anchors under the keep/delete distribution, decisions memoised by mask."""

    def __init__(self, decide: Decide, n: int, keep: float, samples: int, exact_free: int, seed: int):
        self.decide, self.n, self.keep = decide, n, keep
        self.samples, self.exact_free = samples, exact_free
        self.rng = np.random.default_rng(seed)
        self.memo: dict[bytes, bool] = {}

    def masks(self, anchor: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, bool]:
        """(masks, weights, exact) of the perturbations that keep ``anchor``."""
        free = [j for j in range(self.n) if j not in anchor]
        if len(free) <= self.exact_free:
            present = np.array(list(itertools.product([False, True], repeat=len(free))), dtype=bool)
            present = present.reshape(-1, len(free))
            k = present.sum(axis=1)
            weights = self.keep ** k * (1 - self.keep) ** (len(free) - k)
            exact = True
        else:
            present = self.rng.random((self.samples, len(free))) < self.keep
            weights = np.full(self.samples, 1.0 / self.samples)
            exact = False
        masks = np.ones((len(present), self.n), dtype=bool)
        masks[:, free] = present
        return masks, weights, exact

    def __call__(self, anchors: Sequence[tuple[int, ...]]) -> list[tuple[float, bool]]:
        """(precision, exact) of each anchor; the undecided masks of all of them in one batch."""
        drawn = [self.masks(a) for a in anchors]
        todo: dict[bytes, np.ndarray] = {}
        for masks, _, _ in drawn:
            for m in masks:
                key = m.tobytes()
                if key not in self.memo and key not in todo:
                    todo[key] = m
        if todo:
            kept = np.asarray(self.decide(np.array(list(todo.values()))), dtype=bool)
            self.memo.update(zip(todo, kept.tolist(), strict=True))
        out = []
        for masks, weights, exact in drawn:
            hits = np.array([self.memo[m.tobytes()] for m in masks], dtype=np.float64)
            out.append((float(weights @ hits / weights.sum()), exact))
        return out


def find_anchor(decide: Decide, n: int, threshold: float = 0.95, keep: float = 0.5,
                beam: int = 4, exhaustive: int = 256, samples: int = 64, exact_free: int = 10,
                seed: int = 0, words: Sequence[str] | None = None,
                budget: int | None = None) -> Anchor:
    """The smallest anchor of precision >= ``threshold`` (the search in the module docstring).

    ``decide(masks)`` says for each mask over the ``n`` features (True = kept) whether the model
    keeps its answer; the full mask is the unperturbed input. Always returns an anchor: all ``n``
    features keep the input itself. ``budget`` caps the distinct perturbations decided: once a
    size has used it up, the most precise anchor so far is returned with ``met`` False.
    """
    if n < 1:
        raise TunelensError("an anchor needs at least one feature")
    if not 0 < keep < 1 or not 0 < threshold <= 1:
        raise TunelensError("keep must be in (0, 1) and threshold in (0, 1]")
    precision = _Precision(decide, n, keep, samples, exact_free, seed)
    frontier: list[tuple[tuple[int, ...], float, bool]] = []
    for size in range(n + 1):
        if math.comb(n, size) <= exhaustive or not frontier:
            candidates = list(itertools.combinations(range(n), size))
        else:
            grown = {tuple(sorted({*a, j})) for a, _, _ in frontier for j in range(n) if j not in a}
            candidates = sorted(grown)
        scored = [(a, p, e) for a, (p, e) in zip(candidates, precision(candidates), strict=True)]
        # most precise first; ties to the earlier words (sorted tuples compare lexicographically)
        scored.sort(key=lambda t: (-round(t[1], 12), t[0]))
        met = scored[0][1] >= threshold - 1e-12
        if met or size == n or (budget is not None and len(precision.memo) >= budget):
            best, p, exact = scored[0]
            names = tuple(words[j] for j in best) if words is not None else tuple(map(str, best))
            return Anchor(best, names, p, keep ** size, exact, len(precision.memo), met=met or size == n)
        frontier = scored[:beam]
    raise AssertionError("unreachable: the full anchor has precision 1")  # pragma: no cover


def clause_words(clause: str) -> list[tuple[int, int]]:
    """The (start, end) of each word of ``clause`` (:data:`WORD`): the anchor's features."""
    return [(m.start(), m.end()) for m in WORD.finditer(clause)]


def perturbed(clause: str, spans: Sequence[tuple[int, int]], mask: np.ndarray) -> str:
    """``clause`` with the words whose mask is False deleted (one space where two would meet, none
    before punctuation or inside brackets)."""
    out, pos = [], 0
    for (s, e), kept in zip(spans, mask, strict=True):
        out.append(clause[pos:s])
        if kept:
            out.append(clause[s:e])
        pos = e
    out.append(clause[pos:])
    text = re.sub(r"\s+([.,;:)\]])", r"\1", re.sub(r"  +", " ", "".join(out)))
    return re.sub(r"([(\[])\s+", r"\1", text).strip()


def kept_text(rule, field: str) -> str:
    """What the anchor keeps, as shown: ``>= 915 mm`` for ``limit``, the whole rule, or a field."""
    if field == "rule":
        return rule.text
    if field == "limit":
        first = rule.requirements[0]
        return first.render()[len(first.path) + 1:]
    return rule.fields()[field]


def same(pred, ref, field: str) -> bool:
    """Does the parsed rule ``pred`` keep ``field`` of ``ref``? (None never does.)"""
    from tunelens.data.compliance.rules import field_matches

    if pred is None:
        return False
    matches = field_matches(pred, ref)
    if field == "rule":
        return all(matches.values())
    if field == "limit":
        return matches["comparator"] and matches["value"] and matches["unit"]
    return matches[field]


def explain_rule(generate: Callable[[list[str]], list[str]], clause: str, field: str = "limit",
                 corpus: Sequence[str] = (), **search) -> dict:
    """The anchor of the rule ``generate`` writes for ``clause`` (clauses -> rules, batched), for
    one ``field`` (:data:`FIELDS`; ``limit`` = comparator, value and unit); its sentence.

    ``corpus``: other clauses, for ``data_coverage``. ``search``: options of :func:`find_anchor`.
    """
    from tunelens.evaluate.rules import parsed_rule

    check_choice(field, FIELDS, "unknown field")
    rule_text = generate([clause])[0]
    rule = parsed_rule(rule_text)
    if rule is None:
        raise TunelensError(f"the model's rule for this clause does not parse: {rule_text[:80]!r}")
    spans = clause_words(clause)
    if not spans:
        raise TunelensError("the clause has no words to anchor on")

    def decide(masks: np.ndarray) -> np.ndarray:
        rules = generate([perturbed(clause, spans, m) for m in masks])
        return np.array([same(parsed_rule(r), rule, field) for r in rules], dtype=bool)

    words = [clause[s:e] for s, e in spans]
    anchor = find_anchor(decide, len(spans), words=words, **search)
    if corpus:
        anchor = _with_data_coverage(anchor, corpus)
    shown = kept_text(rule, field)
    return {"clause": clause, "rule": rule.text, "field": field, "kept": shown,
            "anchor": list(anchor.words), "positions": [spans[j] for j in anchor.features],
            "precision": anchor.precision, "coverage": anchor.coverage,
            "data_coverage": anchor.data_coverage, "exact": anchor.exact, "met": anchor.met,
            "decisions": anchor.decisions, "sentence": anchor.sentence(shown)}


def _with_data_coverage(anchor: Anchor, corpus: Sequence[str]) -> Anchor:
    """The share of ``corpus`` clauses holding every anchor word (case-insensitive, whole words)."""
    wanted = {w.lower() for w in anchor.words}
    held = sum(wanted <= {m.group().lower() for m in WORD.finditer(c)} for c in corpus)
    return replace(anchor, data_coverage=held / len(corpus))
