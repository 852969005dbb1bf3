"""Design property values and the truth of one rule atom on one value.

Shared by the checker (verdicts) and the sample-design builder (which picks values that make an
atom true or false), so both read designs the same way. Schema: see :mod:`checker`.
"""

from __future__ import annotations

import enum
import math
import re
from typing import Any

from tunelens.data.compliance import units
from tunelens.data.compliance.rules import VALUE_REL_TOL, Atom, Rule

# Values within VALUE_REL_TOL (0.2 %) count as equal, as in field matching: printed unit
# equivalents are rounded (7 in is "178 mm", 1:12 is "8.33 %"), and a rule that matches the
# reference's value field should also agree with it on the boundary design.
REL_TOL = VALUE_REL_TOL
_RATIO_RE = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*:\s*(\d+(?:\.\d+)?)\s*$")


class Verdict(enum.StrEnum):
    PASS = "PASS"
    FAIL = "FAIL"
    NOT_APPLICABLE = "NOT_APPLICABLE"


def design_value(raw: Any) -> tuple | None:
    """A design property as ("bool", b) | ("word", s) | ("number", magnitude, unit); None if unusable."""
    if isinstance(raw, bool):
        return ("bool", raw)
    if isinstance(raw, int | float):
        return ("number", float(raw), "") if math.isfinite(raw) else None
    if isinstance(raw, str):
        m = _RATIO_RE.match(raw)
        if m and float(m.group(2)) != 0:
            return ("number", float(m.group(1)) / float(m.group(2)), "ratio")
        return ("word", raw)
    if isinstance(raw, dict) and "value" in raw:
        value, unit = raw["value"], raw.get("unit") or ""
        if isinstance(value, str):
            ratio = design_value(value)
            return ratio if ratio and ratio[0] == "number" and not unit else None
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        canonical = units.canonical_unit(str(unit)) if unit else ""
        return None if canonical is None else ("number", float(value), canonical)
    return None


def _cmp(x: float, comparator: str, v: float) -> bool:
    tol = REL_TOL * max(abs(v), abs(x)) + 1e-12
    if comparator == "<=":
        return x <= v + tol
    if comparator == ">=":
        return x >= v - tol
    if comparator == "<":
        return x < v - tol
    if comparator == ">":
        return x > v + tol
    if comparator == "=":
        return abs(x - v) <= tol
    if comparator == "!=":
        return abs(x - v) > tol
    raise ValueError(comparator)


def eval_atom(atom: Atom, raw: Any) -> bool | None:
    """Whether one design value satisfies the atom; None when missing or not comparable."""
    dv = design_value(raw)
    if dv is None:
        return None
    ref = atom.value
    if ref.numeric:
        if dv[0] != "number":
            return None
        x = units.convert(dv[1], dv[2], ref.unit)
        if x is None:
            return None
        if atom.comparator == "between":
            high = units.convert(atom.upper.number, atom.upper.unit, ref.unit)
            return high is not None and _cmp(x, ">=", ref.number) and _cmp(x, "<=", high)
        return _cmp(x, atom.comparator, ref.number)
    if dv[0] != ref.kind or atom.comparator not in ("=", "!="):
        return None
    same = dv[1] == (ref.text == "true") if ref.kind == "bool" else dv[1] == ref.word
    return same if atom.comparator == "=" else not same


def subject_type(rule: Rule) -> str:
    """The element type a rule is checked on: its first requirement not on the building."""
    return next((a.element for a in rule.requirements if a.element != "building"), "building")
