"""Seeded generator of building-code clauses paired with their reference rules.

No public corpus pairs code clauses with machine-checkable rules in our language, so we write
clauses the way codes do and derive each rule from the same choices. What varies, per clause:

* the requirement (facts.py: 12 topics, ~90 element/property facts with realistic values:
  limits, ranges, counts, booleans) and, with some probability, a second requirement on the same
  element joined by "and" (a compound rule);
* the identifier style (``1011.5.2``, ``Clause 4.2.6(a)``, ``1910.23(b)(1)``, ``K1 2.4``,
  ``Section 3.2``, ``R311.7.5.1``, ``§ 12.4``, ``Reg. 7(2)``, ``Article 12.3``), with or without a
  title, colon or dash, sometimes in brackets;
* the quantity wording (phrasing.py): US units with metric in parentheses, US only, metric only,
  metric with US in parentheses; slopes as 1:12, "1 in 12", "one unit vertical in 12 units
  horizontal" or percent; angles, forces, illuminance, durations, air flow, areas; spelled-out
  numbers;
* the comparator wording (``shall not exceed``, ``maximum``, ``not less than``, ``at least``,
  ``between ... and ...``, "The minimum X shall be ...", "Maximum X: ...");
* conditions (``where``, ``in ... occupancies``, occupant-load thresholds, before or after the
  requirement) and exceptions (``unless``, ``except``, a trailing "Exception: ..." sentence)
  (conditions.py).

Near-duplicates (word 3-shingle Jaccard >= 0.6 with an earlier clause of the topic) are redrawn,
so the data stage's de-duplication (threshold 0.8) keeps nearly every generated row. The same
seed gives the same rows.
"""

from __future__ import annotations

import random
import re
from collections import defaultdict

from tunelens.data.compliance import conditions, phrasing
from tunelens.data.compliance.facts import FACTS, TOPICS_GENERATED, Fact
from tunelens.data.compliance.rules import parse_rule

NEAR_DUPLICATE = 0.6
P_CONDITION, P_EXCEPTION, P_COMPOUND, P_NOUN_FORM = 0.35, 0.3, 0.12, 0.2
_WORD = re.compile(r"\w+")


def _lower_first(s: str) -> str:
    return s[:1].lower() + s[1:] if s[1:2].islower() or s[1:2] == " " else s


def _requirement(fact: Fact, rng: random.Random, style: str) -> tuple[str, str, bool]:
    """(sentence without final period, rule atom, whether it starts with the subject)."""
    path = f"{fact.element}.{fact.prop}"
    if fact.kind in ("true", "false"):
        return rng.choice(fact.texts), f"{path} = {fact.kind}", True
    subject = rng.choice(fact.subjects)
    if fact.kind == "range":
        lo, hi = rng.choice(fact.values)
        style = "metric_mm" if style == "metric" else style  # both bounds in one unit
        state = rng.getstate()
        a, av = phrasing.render(fact.qty, lo, rng, style)
        rng.setstate(state)  # the same wording choices for the upper bound
        b, bv = phrasing.render(fact.qty, hi, rng, style)
        template = rng.choice(phrasing.RANGE)
        return f"{subject} {template.format(a=a, b=b)}", f"{path} BETWEEN {av} AND {bv}", True
    value = rng.choice(fact.values)
    q, qv = phrasing.render(fact.qty, value, rng, style)
    atom = f"{path} {phrasing.COMPARATOR[fact.kind]} {qv}"
    if fact.kind in ("max", "min") and rng.random() < P_NOUN_FORM:
        template = rng.choice(phrasing.NOUN_MAX if fact.kind == "max" else phrasing.NOUN_MIN)
        article = "An" if fact.measure[:1] in "aeiou" else "A"
        return template.format(m=fact.measure, q=q, A=article), atom, False
    if fact.noun:  # counts: "Each story shall have not less than two exits"
        q = f"{q} {fact.noun.removesuffix('s') if value == 1 else fact.noun}"
        template = rng.choice(phrasing.COUNT_MAX if fact.kind == "max" else phrasing.COUNT_MIN)
        return f"{subject} {template.format(q=q)}", atom, True
    having = fact.having and fact.having not in subject.lower() and fact.kind in ("max", "min")
    if having and rng.random() < 0.5:
        template = rng.choice(phrasing.HAVING_MAX if fact.kind == "max" else phrasing.HAVING_MIN)
        return f"{subject} {template.format(h=fact.having, q=q)}", atom, True
    if fact.qty == "slope" and fact.kind == "max" and rng.random() < 0.5:
        return f"{subject} {rng.choice(phrasing.SLOPE_MAX).format(q=q)}", atom, True
    return f"{subject} {rng.choice(phrasing.PHRASES[fact.kind]).format(q=q)}", atom, True


def _partner(fact: Fact, rng: random.Random) -> Fact | None:
    options = [f for f in FACTS if f.element == fact.element and f.prop != fact.prop
               and f.kind not in ("true", "false") and f.topic == fact.topic]
    return rng.choice(options) if options else None


def clause(fact: Fact, rng: random.Random) -> tuple[str, str]:
    """One clause about ``fact`` and its reference rule text (canonical)."""
    label, how = phrasing.clause_label(rng)
    style = rng.choice(phrasing.US_STYLES)
    sentence, atom, subject_first = _requirement(fact, rng, style)
    atoms = [atom]
    if fact.kind not in ("true", "false") and rng.random() < P_COMPOUND:
        other = _partner(fact, rng)
        if other is not None:
            s2, a2, first2 = _requirement(other, rng, style)
            if first2:
                sentence, atoms = f"{sentence}, and {_lower_first(s2)}", [atom, a2]
    cond = exc = None
    if fact.conds and rng.random() < P_CONDITION:
        cond = conditions.make(rng.choice(fact.conds), fact.element, fact.plural, rng)
    if fact.excs and rng.random() < P_EXCEPTION:
        exc = conditions.make(rng.choice(fact.excs), fact.element, fact.plural, rng)
    body = sentence
    if cond is not None:
        if subject_first and cond.prefix and rng.random() < 0.5:
            body = f"{rng.choice(cond.prefix)}, {_lower_first(body)}"
        else:
            body = f"{body} {rng.choice(cond.suffix)}"
    if exc is not None and exc.suffix and rng.random() < 0.5:
        body = f"{body.rstrip('.')}, {rng.choice(exc.suffix)}."
    elif exc is not None:
        body = f"{body.rstrip('.')}. {rng.choice(exc.sentence)}"
    elif not body.endswith("."):
        body = f"{body}."
    text = phrasing.with_label(label, how, fact.title, body[:1].upper() + body[1:], rng)
    rid = label.replace('"', "'")
    rule = f'RULE "{rid}": ' + " AND ".join(atoms)
    if cond is not None:
        rule += f" IF {cond.atom}"
    if exc is not None:
        rule += f" UNLESS {exc.atom}"
    return text, parse_rule(rule).text


def _shingles(text: str) -> frozenset[str]:
    words = _WORD.findall(text.casefold())
    return frozenset(" ".join(words[i:i + 3]) for i in range(max(1, len(words) - 2)))


def _too_close(s: frozenset[str], others: list[frozenset[str]]) -> bool:
    return any(len(s & o) / len(s | o) >= NEAR_DUPLICATE for o in others)


def generate(n: int = 620, seed: int = 0) -> list[dict]:
    """``n`` rows (id, topic, source, prompt, completion, holdout=False), balanced over topics."""
    rng = random.Random(seed)
    by_topic: dict[str, list[Fact]] = defaultdict(list)
    for f in FACTS:
        by_topic[f.topic].append(f)
    quotas = {t: n // len(TOPICS_GENERATED) + (i < n % len(TOPICS_GENERATED))
              for i, t in enumerate(TOPICS_GENERATED)}
    rows: list[dict] = []
    for topic in TOPICS_GENERATED:
        seen: list[frozenset[str]] = []
        prompts: set[str] = set()
        facts = by_topic[topic]
        tries = 0
        while len(seen) < quotas[topic]:
            tries += 1
            if tries > quotas[topic] * 50:
                raise RuntimeError(f"generator cannot find {quotas[topic]} distinct clauses for {topic}")
            # cycle through the facts so every one is used, then draw
            fact = facts[len(seen) % len(facts)] if len(seen) < len(facts) else rng.choice(facts)
            prompt, completion = clause(fact, rng)
            sh = _shingles(prompt)
            if prompt in prompts or _too_close(sh, seen):
                continue
            prompts.add(prompt)
            seen.append(sh)
            rows.append({"topic": topic, "source": "generated", "prompt": prompt,
                         "completion": completion, "holdout": False})
    rng.shuffle(rows)
    for i, row in enumerate(rows, start=1):
        row["id"] = f"gen-{i:04d}"
    return [{k: r[k] for k in ("id", "topic", "source", "prompt", "completion", "holdout")} for r in rows]
