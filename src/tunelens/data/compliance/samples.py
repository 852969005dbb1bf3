"""Sample designs for a rule: the test cases execution accuracy is measured on.

For a rule we want a handful of designs whose verdicts pin down what the rule does, so that a
predicted rule that differs in any field (comparator, value, unit, condition, exception) gives a
different verdict on at least one of them:

* PASS well inside the limit (values written in another unit: mm as in, 1:12 as %), and PASS
  exactly at the limit (separates ``<`` from ``<=``);
* FAIL just past each requirement's limit (5 %, or 1 for counts), on both sides of a BETWEEN;
* NOT_APPLICABLE for each condition left unmet (at its bound where possible) and each exception
  triggered, with the first requirement *violated*, so a prediction that drops the condition
  says FAIL, not N/A;
* FAIL for two subject elements of which one fails (checks the any-FAIL aggregation).

Values are found per property path by trying candidates (the bounds, fractions and multiples of
them, midpoints) until every atom on that path has the wanted truth, using the same atom
evaluation as the checker; scenarios with no solution (a contradictory rule) are skipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable

from tunelens.data.compliance import units
from tunelens.data.compliance.designs import Verdict, eval_atom, subject_type
from tunelens.data.compliance.rules import Atom, Rule

ALT_UNIT = {
    "mm": "in", "cm": "in", "in": "mm", "m": "ft", "ft": "m", "m2": "ft2", "ft2": "m2",
    "N": "lbf", "lbf": "N", "kN": "lbf", "lux": "fc", "fc": "lux", "h": "min", "min": "h",
    "ratio": "%", "%": "ratio", "deg": "%", "kPa": "psf", "psf": "kPa", "L/s": "cfm", "cfm": "L/s",
}

Constraint = tuple[Atom, bool]


def _round(x: float) -> float:
    return float(f"{x:.7g}")


def _bounds(atoms: Iterable[Atom], unit: str) -> list[float]:
    out = []
    for a in atoms:
        for v in (a.value, a.upper):
            if v is not None and v.numeric:
                c = units.convert(v.number, v.unit, unit)
                if c is not None:
                    out.append(c)
    return sorted(set(out))


def _numeric_candidates(bounds: list[float], style: str, integer: bool) -> list[float]:
    def mults(ms):
        return [b * m for b in bounds for m in ms]

    steps = [b + d for b in bounds for d in (1, -1, 2, -2, 0.5, -0.5, 0.1, -0.1)]
    mids = [(a + b) / 2 for a, b in zip(bounds, bounds[1:], strict=False)]
    interior = mids + mults([0.9, 1.1, 0.8, 1.25, 0.5, 2.0]) + steps
    near = mults([1.05, 0.95, 1.02, 0.98])
    if integer:
        near = [b + d for b in bounds for d in (1, -1)] + near
        interior = mids + [b + d for b in bounds for d in (2, -2, 3, -3)] + interior
    order = {
        "interior": interior + near + bounds,
        "near": near + steps + mids + interior + bounds,
        "boundary": bounds + interior + near,
    }[style] + [0.0, 1.0, 10.0]
    if bounds and min(bounds) >= 0:
        order = [x for x in order if x >= 0]
    if integer:
        order = [float(round(x)) for x in order]
    seen, out = set(), []
    for x in order:
        key = _round(x)
        if key not in seen:
            seen.add(key)
            out.append(key)
    return out


def _render(x: float, unit: str, style: str, ratio_texts: dict[float, str], integer: bool):
    """A design value for magnitude ``x`` in ``unit``: interior values use another unit."""
    if integer:
        return int(x)
    if style == "interior" and unit in ALT_UNIT:
        alt = ALT_UNIT[unit]
        converted = units.convert(x, unit, alt)
        if converted is not None:
            unit, x = alt, converted
            if unit == "ratio":
                return f"1:{_round(1 / x):g}" if x > 0 else {"value": _round(x), "unit": "ratio"}
            return {"value": _round(x), "unit": unit}
    if unit == "ratio":
        if _round(x) in ratio_texts:
            return ratio_texts[_round(x)]
        return {"value": _round(x), "unit": "ratio"}
    if unit == "":
        return _round(x)
    return {"value": _round(x), "unit": unit}


def _candidates(atoms: list[Atom], style: str) -> list:
    numeric = [a for a in atoms if a.value.numeric]
    if numeric:
        unit = numeric[0].value.unit
        bounds = _bounds(numeric, unit)
        integer = unit == "" and all(b == int(b) for b in bounds)
        ratio_texts = {_round(a.value.number): a.value.text for a in numeric if a.value.kind == "ratio"}
        return [_render(x, unit, style, ratio_texts, integer)
                for x in _numeric_candidates(bounds, style, integer)]
    if any(a.value.kind == "bool" for a in atoms):
        return [True, False]
    words = list(dict.fromkeys(a.value.word for a in atoms if a.value.kind == "word"))
    return words + ["other"]


def _solve(atoms: list[Atom], wants: list[Constraint], style: str):
    for raw in _candidates(atoms, style):
        if all(eval_atom(a, raw) is want for a, want in wants):
            return raw
    return None


def _design(rule: Rule, wants: list[Constraint], style: str) -> dict | None:
    subject = subject_type(rule)
    by_path: dict[tuple[str, str], list[Atom]] = {}
    for a in rule.atoms:
        by_path.setdefault((a.element, a.property), []).append(a)
    building: dict = {}
    elements: dict[str, dict] = {}
    if subject != "building":
        elements[subject] = {"type": subject, "id": f"{subject}_1"}
    for (element, prop), atoms in by_path.items():
        path_wants = [(a, w) for a, w in wants if (a.element, a.property) == (element, prop)]
        raw = _solve(atoms, path_wants, style)
        if raw is None:
            return None
        target = building if element == "building" else elements.setdefault(
            element, {"type": element, "id": f"{element}_1"})
        target[prop] = raw
    return {"building": building, "elements": list(elements.values())}


def _violations(atom: Atom) -> list[list[Constraint]]:
    """Ways to make one requirement false (both sides of a BETWEEN)."""
    if atom.comparator == "between":
        below = Atom(atom.element, atom.property, "<", atom.value)
        above = Atom(atom.element, atom.property, ">", atom.upper)
        return [[(atom, False), (below, True)], [(atom, False), (above, True)]]
    return [[(atom, False)]]


def scenarios(rule: Rule) -> list[tuple[dict, Verdict]]:
    """The designs and the verdicts they are built to have (before any check)."""
    reqs = rule.requirements
    cond_on = [(c, True) for c in rule.conditions]
    exc_off = [(exc[0], False) for exc in rule.exceptions]
    plan: list[tuple[Verdict, str, list[Constraint], list[Constraint]]] = []
    all_req = [(r, True) for r in reqs]
    plan.append((Verdict.PASS, "interior", all_req + cond_on + exc_off, []))
    plan.append((Verdict.PASS, "boundary", all_req + cond_on + exc_off, []))
    fails = []
    for i, r in enumerate(reqs):
        others = [(x, True) for j, x in enumerate(reqs) if j != i]
        for viol in _violations(r):
            fails.append(viol)
            plan.append((Verdict.FAIL, "near", others + viol + cond_on + exc_off, []))
    first_fail = _violations(reqs[0])[0] + [(x, True) for x in reqs[1:]]
    for j, c in enumerate(rule.conditions):
        rest = [(x, True) for k, x in enumerate(rule.conditions) if k != j]
        # at the condition's own bound when possible: separates "> 50" from ">= 50"
        plan.append((Verdict.NOT_APPLICABLE, "boundary", rest + [(c, False)] + exc_off, first_fail))
    for k, exc in enumerate(rule.exceptions):
        other_off = [(e[0], False) for m, e in enumerate(rule.exceptions) if m != k]
        plan.append((Verdict.NOT_APPLICABLE, "near", [(a, True) for a in exc] + other_off + cond_on,
                     first_fail))
    out: list[tuple[dict, Verdict]] = []
    for verdict, style, wants, preferred in plan:
        design = _design(rule, wants + preferred, style) if preferred else None
        design = design or _design(rule, wants, style)
        if design is not None:
            out.append((design, verdict))
    mixed = _mixed(rule, out)
    if mixed is not None:
        out.append((mixed, Verdict.FAIL))
    return out


def _mixed(rule: Rule, designs: list[tuple[dict, Verdict]]) -> dict | None:
    subject = subject_type(rule)
    if subject == "building" or rule.requirements[0].element != subject:
        return None
    passing = next((d for d, v in designs if v is Verdict.PASS), None)
    failing = next((d for d, v in designs if v is Verdict.FAIL), None)
    if passing is None or failing is None:
        return None
    ok = next(e for e in passing["elements"] if e["type"] == subject)
    design = json.loads(json.dumps(failing))
    design["elements"].append({**ok, "id": f"{subject}_2"})
    return design


def build_samples(rule: Rule, verdict_of: Callable[[Rule, dict], Verdict]) -> list[tuple[dict, Verdict]]:
    """Scenarios whose built verdict the checker confirms, without duplicates."""
    seen, out = set(), []
    for design, verdict in scenarios(rule):
        key = json.dumps(design, sort_keys=True)
        if key in seen or verdict_of(rule, design) is not verdict:
            continue
        seen.add(key)
        out.append((design, verdict))
    return out
