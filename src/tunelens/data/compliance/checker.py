"""Executing a rule against a building design: PASS, FAIL or NOT_APPLICABLE.

Execution is how a predicted rule is judged by what it *does* rather than how it is spelt: two
rules that agree on every design (``<= 1:12`` and ``<= 8.33 %``) are the same rule. No library
checks designs written in our rule language, so this module is ours; pint does the units
(:mod:`units`).

A design is JSON (documented in docs/rule-language.md)::

    {"building": {"sprinklered": true, "occupancy": "assembly", "stories": 3},
     "elements": [{"type": "stair", "id": "stair_1",
                   "riser_height": {"value": 7, "unit": "in"}, "occupant_load": 60}]}

A property value is a boolean, a word (string), a bare number (a count, or a slope as a fraction),
a ratio string ``"1:14"``, or ``{"value": <number or "a:b">, "unit": <unit symbol>}``.

Semantics. The rule's *subject* is the element type of its first requirement not on ``building``
(else the building itself). The rule is checked once per subject element: ``<subject>.p`` reads
that element, ``building.p`` reads the building, any other ``<type>.p`` must hold for every element
of that type. For one subject: an unmet condition, or one exception whose atoms all hold, makes it
NOT_APPLICABLE; else a violated requirement makes it FAIL; else a requirement whose property is
missing or not comparable (a length against a count) makes it NOT_APPLICABLE (the design cannot
be assessed); else PASS. Over subjects: any FAIL is FAIL, else any PASS is PASS, else
NOT_APPLICABLE (also when the design has no subject element).
"""

from __future__ import annotations

import copy
from functools import lru_cache

from tunelens.data.compliance.designs import Verdict, eval_atom, subject_type
from tunelens.data.compliance.rules import Atom, Rule
from tunelens.data.compliance.samples import build_samples

__all__ = ["Verdict", "check", "execution_agreement", "sample_designs", "subject_type"]

# --------------------------------------------------------------------------------- checking


def _atom_truth(atom: Atom, subject: str, target: dict, design: dict) -> bool | None:
    if atom.element == subject:
        props = target
    elif atom.element == "building":
        props = design.get("building") or {}
    else:
        others = [e for e in design.get("elements") or [] if isinstance(e, dict)
                  and e.get("type") == atom.element]
        truths = [eval_atom(atom, e.get(atom.property)) for e in others]
        if not truths or any(t is None for t in truths):
            return None
        return all(truths)
    if not isinstance(props, dict) or atom.property not in props:
        return None
    return eval_atom(atom, props[atom.property])


def _check_one(rule: Rule, subject: str, target: dict, design: dict) -> Verdict:
    def truth(a):
        return _atom_truth(a, subject, target, design)

    if not all(truth(a) is True for a in rule.conditions):
        return Verdict.NOT_APPLICABLE
    if any(all(truth(a) is True for a in exc) for exc in rule.exceptions):
        return Verdict.NOT_APPLICABLE
    results = [truth(a) for a in rule.requirements]
    if any(r is False for r in results):
        return Verdict.FAIL
    if any(r is None for r in results):
        return Verdict.NOT_APPLICABLE
    return Verdict.PASS


def check(rule: Rule, design: dict) -> Verdict:
    """The rule's verdict on a design (semantics in the module docstring)."""
    if not isinstance(design, dict):
        raise ValueError("a design is a JSON object with 'building' and 'elements'")
    subject = subject_type(rule)
    if subject == "building":
        targets = [design.get("building") or {}]
    else:
        elements = design.get("elements") or []
        targets = [e for e in elements if isinstance(e, dict) and e.get("type") == subject]
    verdicts = {_check_one(rule, subject, t, design) for t in targets}
    for v in (Verdict.FAIL, Verdict.PASS):
        if v in verdicts:
            return v
    return Verdict.NOT_APPLICABLE


def execution_agreement(pred: Rule, ref: Rule) -> float:
    """Share of the reference's sample designs on which ``pred`` gives the reference's verdict.

    Never raises for a parsed ``pred``: a rule about other elements or properties simply finds
    nothing to check and disagrees wherever the reference passes or fails.
    """
    designs = _samples(ref)
    if not designs:
        return 0.0
    agree = 0
    for design, verdict in designs:
        try:
            agree += check(pred, design) == verdict
        except Exception:  # noqa: BLE001 - a weird prediction disagrees, it does not crash scoring
            pass
    return agree / len(designs)


@lru_cache(maxsize=4096)
def _samples(rule: Rule) -> tuple:
    return tuple(build_samples(rule, check))


def sample_designs(rule: Rule) -> list[tuple[dict, Verdict]]:
    """Deterministic designs with the verdict the rule must give: at least one PASS and one FAIL
    (for a satisfiable rule), and NOT_APPLICABLE ones for each condition and exception."""
    return copy.deepcopy(list(_samples(rule)))
