"""Counterfactual and robustness probes: edit a clause in one controlled way, see what the rule does.

An attribution says where a model looked; a probe says whether it *reacts* as a reader of the code
would. Each probe kind edits a clause in one way whose correct effect on the rule is known:

========================  ==========================================  =====================
kind                      edit                                        the rule must
========================  ==========================================  =====================
``number``                every quantity's number doubled             follow (values x2)
``unit``                  each quantity in another unit (pint):       stay (same verdicts)
                          915 mm -> 36.02 in
``section``               the clause's own id renumbered (405.5->7)   follow (new id)
``occupancy``             an occupancy group renamed (assembly ->     follow (the condition)
                          educational)
``jurisdiction``          a place name swapped (or, where none is     stay
                          named, "Applies in X." added, X renamed)
``person``                a phrase describing people (wheelchair      stay
                          users, children) made neutral ("people")
========================  ==========================================  =====================

"Follow" and "stay" are judged against the model's *own* rule on the unedited clause (the base
rule), not the reference: a probe measures consistency, not accuracy. The expected rule is the
base rule with the edit applied (values doubled, id renumbered, ...); the rule after the edit is
*correct* when it parses, has the expected id and gives the expected rule's verdict on every one
of that rule's sample designs (the rule checker, :mod:`tunelens.evaluate.rules`), so ``36 in``
for ``915 mm`` counts as the same rule. A base rule that does not parse leaves nothing to compare
(``unparsed``); an edit the base rule does not depend on (no occupancy condition to follow) is
``not_applicable``. Rates get percentile bootstrap intervals (:mod:`tunelens.evaluate.bootstrap`).

With an attributor, each probe also reports the share of absolute attribution on the edited
span before and after the edit: a model that follows numbers should attribute its rule to them.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from tunelens.data.compliance import units
from tunelens.data.compliance.categories import tag
from tunelens.data.compliance.rules import Rule, Value, fmt_number
from tunelens.data.compliance.samples import ALT_UNIT
from tunelens.errors import TunelensError
from tunelens.evaluate.bootstrap import Resampler
from tunelens.evaluate.rules import parsed_rule, verdict_errors

# kind -> what the rule must do when the clause is edited that way
KINDS: dict[str, str] = {"number": "follow", "unit": "stay", "section": "follow",
                         "occupancy": "follow", "jurisdiction": "stay", "person": "stay"}
FACTOR = 2.0  # the number probe's scale: exact in every unit, so dual units stay consistent
PASS_RATE = 0.9  # a kind passes when at least this share of its scored probes is correct
VALUE_TOL = 2e-3  # as tunelens.data.compliance.rules.VALUE_REL_TOL: 7 in == 177.8 mm
JURISDICTIONS = ("Springfield", "Shelbyville", "Ontario", "Bavaria", "Texas", "Kent", "Osaka",
                 "Quebec", "California", "New York", "England", "Wales", "Scotland", "Victoria")
# IBC occupancy groups: the word and its letter ("Group A (assembly)")
OCCUPANCIES = {"assembly": "A", "business": "B", "educational": "E", "factory": "F",
               "institutional": "I", "mercantile": "M", "residential": "R", "storage": "S"}
PERSONS = ("persons with disabilities", "people with disabilities", "individuals with disabilities",
           "disabled persons", "disabled people", "wheelchair users", "elderly persons",
           "older people", "the elderly", "visually impaired persons", "blind persons", "children",
           "women", "men")
NEUTRAL_PERSON = "people"
_PLAIN_NUMBER = re.compile(r"^\d+(?:\.\d+)?$")


@dataclass
class Edit:
    """One probe: ``before`` (the clause, or it with a neutral addition) and ``after`` (edited);
    ``spans_before``/``spans_after`` the edited characters; ``expect(base)`` the rule the edit
    calls for given the base rule (None: the base rule does not depend on what was edited)."""

    kind: str
    before: str
    after: str
    spans_before: list[tuple[int, int]]
    spans_after: list[tuple[int, int]]
    change: str
    expect: Callable[[Rule], Rule | None]


@dataclass(frozen=True)
class _Quantity:
    start: int  # the number
    end: int
    unit_end: int
    value: float
    unit: str  # canonical rule unit; "" when the tagger's unit is not one (occupants, risers)


def _quantities(clause: str) -> list[_Quantity]:
    """Numbers written in digits directly followed by a unit (the tagger's reading)."""
    spans = tag(clause)
    out = []
    for number, unit in zip(spans, spans[1:], strict=False):
        text = number.text.replace(",", "")
        if number.category != "NUMBER" or unit.category != "UNIT" or not _PLAIN_NUMBER.match(text):
            continue
        symbol = unit.text.strip().rstrip(".")
        canonical = units.canonical_unit(symbol) or units.canonical_unit(symbol.lower()) or ""
        out.append(_Quantity(number.start, number.end, unit.end, float(text), canonical))
    return out


def _replace(text: str, edits: list[tuple[int, int, str]]) -> tuple[str, list, list]:
    """``text`` with each (start, end) replaced; the spans in the old and in the new text."""
    out, before, after, pos, shift = [], [], [], 0, 0
    for start, end, new in sorted(edits):
        out.append(text[pos:start] + new)
        before.append((start, end))
        after.append((start + shift, start + shift + len(new)))
        shift += len(new) - (end - start)
        pos = end
    return "".join(out) + text[pos:], before, after


def _same_rule(base: Rule) -> Rule:
    return base


def _map_values(base: Rule, change: Callable[[Value], Value | None]) -> Rule | None:
    """``base`` with ``change`` applied to every value (None keeps it); None when none changed."""
    changed = False

    def atom(a):
        nonlocal changed
        new = {k: change(v) for k, v in (("value", a.value), ("upper", a.upper)) if v is not None}
        new = {k: v for k, v in new.items() if v is not None}
        changed |= bool(new)
        return replace(a, **new)

    rule = Rule(base.id, tuple(atom(a) for a in base.requirements),
                tuple(atom(a) for a in base.conditions),
                tuple(tuple(atom(a) for a in exc) for exc in base.exceptions))
    return rule if changed else None


# -- the edits -------------------------------------------------------------------------------------

def number_edit(clause: str, rng: random.Random) -> Edit | None:
    """Every quantity's number times :data:`FACTOR`; the rule's values that came from them follow."""
    found = _quantities(clause)
    if not found:
        return None
    after, before_spans, after_spans = _replace(
        clause, [(q.start, q.end, fmt_number(q.value * FACTOR)) for q in found])

    def scaled(v: Value) -> Value | None:
        if v.kind != "number":
            return None
        for q in found:
            here = q.value if q.unit == v.unit or not q.unit else units.convert(q.value, q.unit, v.unit)
            if here is not None and abs(here - v.number) <= VALUE_TOL * max(abs(v.number), 1e-9):
                return Value.of_number(v.number * FACTOR, v.unit)
        return None

    shown = ", ".join(f"{fmt_number(q.value)} -> {fmt_number(q.value * FACTOR)}" for q in found)
    return Edit("number", clause, after, before_spans, after_spans, shown,
                lambda base: _map_values(base, scaled))


def _nice(x: float) -> str:
    """The shortest rounding of ``x`` within a tenth of the rule language's value tolerance."""
    for digits in range(2, 8):
        text = fmt_number(float(f"{x:.{digits}g}"))
        if abs(float(text) - x) <= VALUE_TOL / 10 * abs(x):
            return text
    return fmt_number(x)


def unit_edit(clause: str, rng: random.Random) -> Edit | None:
    """Each dimensional quantity restated in its other system's unit (mm <-> in, m <-> ft, ...)."""
    edits, shown = [], []
    for q in _quantities(clause):
        alt = ALT_UNIT.get(q.unit)
        if alt is None or q.unit in ("%", "ratio", "deg") or alt in ("%", "ratio"):
            continue
        converted = units.convert(q.value, q.unit, alt)
        if converted is None:
            continue
        edits.append((q.start, q.unit_end, f"{_nice(converted)} {alt}"))
        shown.append(f"{clause[q.start:q.unit_end]} -> {edits[-1][2]}")
    if not edits:
        return None
    after, before_spans, after_spans = _replace(clause, edits)
    return Edit("unit", clause, after, before_spans, after_spans, ", ".join(shown), _same_rule)


_LAST_NUMBER = re.compile(r"(\d+)(?=\D*$)")


def section_edit(clause: str, rng: random.Random) -> Edit | None:
    """The clause's first id renumbered (its last number + 1..3); the rule's id must follow."""
    ids = [s for s in tag(clause) if s.category == "RULE_ID" and _LAST_NUMBER.search(s.text)]
    if not ids:
        return None
    span = ids[0]
    m = _LAST_NUMBER.search(span.text)
    new_id = span.text[:m.start()] + str(int(m.group(1)) + rng.randint(1, 3)) + span.text[m.end():]
    after, before_spans, after_spans = _replace(clause, [(span.start, span.end, new_id)])
    old_full = span.text

    def expect(base: Rule) -> Rule | None:
        # the rule's id ends with the clause's id, with its keyword ("Section 405.5") or without
        for old, new in ((old_full, new_id), (_tail_id(old_full), _tail_id(new_id))):
            if old and base.id.endswith(old):
                return replace(base, id=base.id[:len(base.id) - len(old)] + new)
        return None

    return Edit("section", clause, after, before_spans, after_spans, f"{old_full} -> {new_id}",
                expect)


def _tail_id(text: str) -> str:
    """The id without its keyword: "Section 405.5" -> "405.5"."""
    return text.split()[-1] if text.split() else text


def jurisdiction_edit(clause: str, rng: random.Random) -> Edit | None:
    """A named place swapped for another; a clause naming none gets "Applies in X." and X swapped."""
    for name in JURISDICTIONS:
        for m in re.finditer(rf"\b{re.escape(name)}\b", clause):
            other = rng.choice([j for j in JURISDICTIONS if j != name and j not in clause])
            after, b, a = _replace(clause, [(m.start(), m.end(), other)])
            return Edit("jurisdiction", clause, after, b, a, f"{name} -> {other}", _same_rule)
    first, other = rng.sample(JURISDICTIONS, 2)
    before = f"{clause.rstrip()} Applies in {first}."
    start = len(before) - len(first) - 1
    after, b, a = _replace(before, [(start, start + len(first), other)])
    return Edit("jurisdiction", before, after, b, a, f"(added) {first} -> {other}", _same_rule)


_GROUP = re.compile(r"\bGroup ([A-Z])(?:-\d)? \((\w+)\)|\b(" + "|".join(OCCUPANCIES) + r")\b", re.I)


def occupancy_edit(clause: str, rng: random.Random) -> Edit | None:
    """An occupancy group renamed; a rule condition on ``building.occupancy`` must follow."""
    m = _GROUP.search(clause)
    if m is None or (m.group(2) or m.group(3)).lower() not in OCCUPANCIES:
        return None
    old = (m.group(2) or m.group(3)).lower()
    new = rng.choice([o for o in OCCUPANCIES if o != old])
    text = f"Group {OCCUPANCIES[new]} ({new})" if m.group(1) else _cased(new, m.group(3))
    after, b, a = _replace(clause, [(m.start(), m.end(), text)])

    def renamed(v: Value) -> Value | None:
        return Value.of_word(new) if v.kind == "word" and v.word.lower() == old else None

    return Edit("occupancy", clause, after, b, a, f"{old} -> {new}",
                lambda base: _map_values(base, renamed))


def _cased(word: str, like: str) -> str:
    return word.capitalize() if like[:1].isupper() else word


def person_edit(clause: str, rng: random.Random) -> Edit | None:
    """A phrase describing people replaced by the neutral "people"; the rule must not move."""
    for phrase in PERSONS:
        m = re.search(rf"\b{re.escape(phrase)}\b", clause, re.I)
        if m:
            after, b, a = _replace(clause, [(m.start(), m.end(), _cased(NEUTRAL_PERSON, m.group()))])
            return Edit("person", clause, after, b, a, f"{m.group()} -> {NEUTRAL_PERSON}", _same_rule)
    return None


EDITS: dict[str, Callable[[str, random.Random], Edit | None]] = {
    "number": number_edit, "unit": unit_edit, "section": section_edit,
    "occupancy": occupancy_edit, "jurisdiction": jurisdiction_edit, "person": person_edit,
}


# -- scoring ---------------------------------------------------------------------------------------

Generate = Callable[[list[str]], list[str]]
# (clauses, target rules) -> per clause: (clause-relative feature spans, attribution scores)
Attributor = Callable[[list[str], list[str]], list[tuple[list[tuple[int, int]], Sequence[float]]]]


def make_edits(clauses: Sequence[str], kinds: Sequence[str], seed: int = 0) -> list[Edit]:
    """Every applicable edit of every clause, each kind with its own seeded stream."""
    unknown = [k for k in kinds if k not in EDITS]
    if unknown:
        raise TunelensError(f"unknown probe kind(s) {', '.join(unknown)} (expected {', '.join(EDITS)})")
    edits = []
    for i, clause in enumerate(clauses):
        for kind in kinds:
            edit = EDITS[kind](clause, random.Random(f"{seed}:{i}:{kind}"))
            if edit is not None:
                edits.append(edit)
    return edits


def score_edit(edit: Edit, base_text: str, after_text: str) -> dict:
    """One probe's record: the rules before and after, what was expected, whether it happened."""
    record = {"kind": edit.kind, "clause": edit.before, "edited": edit.after, "change": edit.change,
              "rule_before": base_text, "rule_after": after_text, "expected": None,
              "status": "unparsed", "correct": None,
              "rule_changed": base_text.strip() != after_text.strip(), "verdict_changed": None}
    base = parsed_rule(base_text)
    if base is None:
        return record
    after = parsed_rule(after_text)
    # the checker's view: does the rule after the edit decide the base rule's designs differently?
    record["verdict_changed"] = verdict_errors(after, base).agreement < 1.0
    expected = edit.expect(base)
    if expected is None:
        record["status"] = "not_applicable"
        return record
    record["expected"] = expected.text
    record["status"] = "scored"
    record["correct"] = (after is not None and after.fields()["id"] == expected.fields()["id"]
                         and verdict_errors(after, expected).agreement >= 1.0)
    return record


def edited_share(spans: Sequence[tuple[int, int]], scores: Sequence[float],
                 edited: Sequence[tuple[int, int]]) -> float | None:
    """Share of the absolute attribution on features that overlap an edited span."""
    total = sum(abs(float(s)) for s in scores)
    if total == 0:
        return None
    on = sum(abs(float(s)) for (a, b), s in zip(spans, scores, strict=True)
             if any(a < e and s_ < b for s_, e in edited))
    return on / total


def run_probes(clauses: Sequence[str], generate: Generate, kinds: Sequence[str] = tuple(KINDS),
               seed: int = 0, attributor: Attributor | None = None, samples: int = 1000) -> dict:
    """Probe a rule writer (``generate``: clauses -> rules) on ``clauses``; a summary per kind
    (:func:`summarise`) and every probe's record."""
    edits = make_edits(clauses, kinds, seed)
    befores = list(dict.fromkeys(e.before for e in edits))
    base = dict(zip(befores, generate(befores), strict=True))
    afters = generate([e.after for e in edits])
    records = [score_edit(e, base[e.before], a) for e, a in zip(edits, afters, strict=True)]
    if attributor is not None:
        _attribute(edits, records, attributor)
    return {"kinds": summarise(records, kinds, samples, seed), "probes": records}


def _attribute(edits: list[Edit], records: list[dict], attributor: Attributor) -> None:
    """Each scored probe's share of attribution on its edited span, before and after the edit."""
    todo = [(e, r) for e, r in zip(edits, records, strict=True)
            if r["status"] == "scored" and r["rule_before"].strip() and r["rule_after"].strip()]
    if not todo:
        return
    clauses = [c for e, _ in todo for c in (e.before, e.after)]
    targets = [t for _, r in todo for t in (r["rule_before"], r["rule_after"])]
    found = attributor(clauses, targets)
    for k, (edit, record) in enumerate(todo):
        (sb, vb), (sa, va) = found[2 * k], found[2 * k + 1]
        record["edited_share_before"] = edited_share(sb, vb, edit.spans_before)
        record["edited_share_after"] = edited_share(sa, va, edit.spans_after)


def summarise(records: list[dict], kinds: Sequence[str], samples: int = 1000, seed: int = 0) -> dict:
    """Per kind: the rate of correct behaviour over scored probes with its bootstrap interval,
    ``passed`` (rate >= :data:`PASS_RATE`), how often the rule text and its verdicts moved, the
    mean attribution share on the edited span, and up to three examples (failures first)."""
    out = {}
    for kind in kinds:
        mine = [r for r in records if r["kind"] == kind]
        scored = [r for r in mine if r["status"] == "scored"]
        rate, interval = _mean(scored, "correct", samples, seed)
        out[kind] = {
            "expectation": KINDS[kind], "probes": len(mine), "scored": len(scored),
            "unparsed": sum(r["status"] == "unparsed" for r in mine),
            "not_applicable": sum(r["status"] == "not_applicable" for r in mine),
            "rate": rate, "interval": interval, "passed": rate is not None and rate >= PASS_RATE,
            "rule_changed": _mean(mine, "rule_changed", samples, seed)[0],
            "verdict_changed": _mean(mine, "verdict_changed", samples, seed)[0],
            "edited_share_before": _mean(scored, "edited_share_before", samples, seed)[0],
            "edited_share_after": _mean(scored, "edited_share_after", samples, seed)[0],
            "examples": sorted(scored, key=lambda r: bool(r["correct"]))[:3],
        }
    return out


def _mean(records: list[dict], key: str, samples: int, seed: int) -> tuple[float | None, list | None]:
    values = [float(r[key]) for r in records if r.get(key) is not None]
    if not values:
        return None, None
    interval = Resampler(len(values), samples, seed).mean(values)
    return sum(values) / len(values), list(interval) if interval else None
