"""The compliance rule language: parsing (lark, grammar.lark), the :class:`Rule` type and fieldwise
comparison of a predicted rule with a reference.

The language is ours because it is what the models learn to write: one compact, regular line per
clause (see docs/rule-language.md). lark does the parsing (LALR, so errors name the token that was
expected); this module turns lark's tree into frozen dataclasses, checks what the grammar cannot
(known units, numeric BETWEEN bounds, comparators that need numbers) and renders a canonical text.

Fields of a rule (:meth:`Rule.fields`) describe its *first* requirement; everything else (further
requirements of a compound rule, conditions, exceptions) is folded into the ``conditions`` field,
so compound and conditional rules are scored on one more field rather than on a different shape.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from tunelens.data.compliance import units

FIELDS = ("id", "element", "property", "comparator", "value", "unit", "conditions")
NUMERIC_COMPARATORS = frozenset({"<=", ">=", "<", ">"})
VALUE_REL_TOL = 2e-3  # 1:12 vs 8.33 %, 7 in vs 177.8 mm; not 812.8 mm vs 815 mm (0.27 %)

_NAME_RE = re.compile(r"^[a-z_][a-z0-9_]*$")
_BARE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9.()\[\]\-_/]*$")

_READABLE = {
    "COMPARATOR": "a comparator (<= >= < > = !=)",
    "NUMBER": "a number",
    "UNIT": "a unit",
    "NAME": "a name",
    "BARE_ID": "a rule id",
    "STRING": "a quoted string",
    "RATIO": "a ratio like 1:12",
    "DOT": "'.'",
    "COLON": "':'",
    "RULE": "'RULE'",
    "AND": "'AND'",
    "IF": "'IF'",
    "UNLESS": "'UNLESS'",
    "BETWEEN": "'BETWEEN'",
    "TRUE": "'true'",
    "FALSE": "'false'",
    "$END": "end of rule",
}


class RuleSyntaxError(ValueError):
    """A rule text that is not in the language; the message says where and what was expected."""


def fmt_number(x: float) -> str:
    """Canonical number text: no exponent, no trailing zeros (178, 0.5, 8.33)."""
    if math.isfinite(x) and x == int(x) and abs(x) < 1e15:
        return str(int(x))
    return f"{x:.6f}".rstrip("0").rstrip(".")


@dataclass(frozen=True)
class Value:
    """A right-hand side: a number with optional unit, a ratio, a boolean or a word."""

    kind: str  # "number" | "ratio" | "bool" | "word"
    number: float | None = None  # magnitude; for a ratio rise/run
    unit: str = ""  # canonical unit symbol; "" for a count, "ratio" for a ratio
    text: str = ""  # canonical text of the value alone ("178", "1:12", "true", "assembly")

    @property
    def numeric(self) -> bool:
        return self.kind in ("number", "ratio")

    def render(self) -> str:
        if self.kind == "number" and self.unit:
            return f"{self.text} {self.unit}"
        return self.text

    @staticmethod
    def of_number(x: float, unit: str = "") -> Value:
        return Value("number", float(x), unit, fmt_number(x))

    @staticmethod
    def of_ratio(rise: float, run: float) -> Value:
        return Value("ratio", rise / run, "ratio", f"{fmt_number(rise)}:{fmt_number(run)}")

    @staticmethod
    def of_bool(b: bool) -> Value:
        return Value("bool", None, "", "true" if b else "false")

    @staticmethod
    def of_word(w: str) -> Value:
        text = w if _NAME_RE.match(w) and w not in ("true", "false") else f'"{w}"'
        return Value("word", None, "", text)

    @property
    def word(self) -> str:
        return self.text.strip('"')


@dataclass(frozen=True)
class Atom:
    """One comparison ``element.property COMPARATOR value`` (or ``BETWEEN value AND upper``)."""

    element: str
    property: str
    comparator: str  # <= >= < > = != between
    value: Value
    upper: Value | None = None

    @property
    def path(self) -> str:
        return f"{self.element}.{self.property}"

    def render(self) -> str:
        if self.comparator == "between":
            return f"{self.path} BETWEEN {self.value.render()} AND {self.upper.render()}"
        return f"{self.path} {self.comparator} {self.value.render()}"


@dataclass(frozen=True)
class Rule:
    """A parsed rule: requirements (all must hold), conditions (all must hold for the rule to
    apply) and exceptions (each a conjunction; any that holds exempts)."""

    id: str
    requirements: tuple[Atom, ...]
    conditions: tuple[Atom, ...] = ()
    exceptions: tuple[tuple[Atom, ...], ...] = ()

    @property
    def text(self) -> str:
        rid = self.id if _BARE_ID_RE.match(self.id) else f'"{self.id}"'
        parts = [f"RULE {rid}: " + " AND ".join(a.render() for a in self.requirements)]
        if self.conditions:
            parts.append("IF " + " AND ".join(a.render() for a in self.conditions))
        parts.extend("UNLESS " + " AND ".join(a.render() for a in exc) for exc in self.exceptions)
        return " ".join(parts)

    def __str__(self) -> str:
        return self.text

    @property
    def atoms(self) -> tuple[Atom, ...]:
        return self.requirements + self.conditions + tuple(a for exc in self.exceptions for a in exc)

    def fields(self) -> dict[str, str]:
        """Normalised strings for FIELDS; see the module docstring for compound rules."""
        first = self.requirements[0]
        if first.comparator == "between":
            value = f"{first.value.text}..{first.upper.text}"
        else:
            value = first.value.text.strip('"')
        return {
            "id": " ".join(self.id.split()),
            "element": first.element,
            "property": first.property,
            "comparator": first.comparator,
            "value": value,
            "unit": first.value.unit,
            "conditions": _conditions_text(self),
        }


def _conditions_text(rule: Rule) -> str:
    parts = [f"AND {a}" for a in sorted(a.render() for a in rule.requirements[1:])]
    if rule.conditions:
        parts.append("IF " + " AND ".join(sorted(a.render() for a in rule.conditions)))
    exceptions = sorted(" AND ".join(sorted(a.render() for a in exc)) for exc in rule.exceptions)
    parts.extend(f"UNLESS {e}" for e in exceptions)
    return " ".join(parts)


# ---------------------------------------------------------------------------------------- parsing


@lru_cache(maxsize=1)
def _parser() -> Lark:
    grammar = resources.files("tunelens.data.compliance").joinpath("grammar.lark").read_text()
    return Lark(grammar, parser="lalr", propagate_positions=False, maybe_placeholders=False)


class _Semantic(Exception):
    def __init__(self, message: str, token: Token | None = None):
        where = f"column {token.column}: " if token is not None and token.column is not None else ""
        super().__init__(where + message)


@v_args(inline=True)
class _ToRule(Transformer):
    def start(self, rid, reqs, *rest):
        conditions: tuple[Atom, ...] = ()
        exceptions: list[tuple[Atom, ...]] = []
        for kind, atoms in rest:
            if kind == "if":
                conditions = atoms
            else:
                exceptions.append(atoms)
        return Rule(rid, reqs, conditions, tuple(exceptions))

    def rule_id(self, tok):
        text = tok[1:-1] if tok.type == "STRING" else str(tok)
        text = " ".join(text.split())
        if not text:
            raise _Semantic("empty rule id", tok)
        return text

    def requirements(self, *atoms):
        return tuple(atoms)

    def condition(self, *atoms):
        return ("if", tuple(atoms))

    def exception(self, *atoms):
        return ("unless", tuple(atoms))

    def path(self, element, prop):
        return (str(element), str(prop), element)

    def compare(self, path, comparator, value):
        element, prop, tok = path
        comparator = str(comparator)
        if comparator in NUMERIC_COMPARATORS and not value.numeric:
            raise _Semantic(f"comparator '{comparator}' needs a number, got '{value.render()}'", tok)
        return Atom(element, prop, comparator, value)

    def between(self, path, low, high):
        element, prop, tok = path
        if not (low.numeric and high.numeric):
            raise _Semantic("BETWEEN needs two numbers", tok)
        high_in_low = units.convert(high.number, high.unit, low.unit)
        if high_in_low is None:
            raise _Semantic(f"BETWEEN bounds '{low.render()}' and '{high.render()}' are not comparable", tok)
        if high_in_low < low.number:
            raise _Semantic(f"BETWEEN bounds reversed: '{low.render()}' is above '{high.render()}'", tok)
        return Atom(element, prop, "between", low, high)

    def quantity(self, number, unit=None):
        if unit is None:
            return Value.of_number(float(number))
        canonical = units.canonical_unit(str(unit))
        if canonical is None or canonical == "ratio":
            known = " ".join(u for u in units.UNITS if u != "ratio")
            raise _Semantic(f"unknown unit '{unit}' (known: {known})", unit)
        return Value.of_number(float(number), canonical)

    def ratio(self, tok):
        rise, run = (float(x) for x in str(tok).split(":"))
        if run == 0:
            raise _Semantic(f"ratio '{tok}' has a zero run", tok)
        return Value.of_ratio(rise, run)

    def true(self):
        return Value.of_bool(True)

    def false(self):
        return Value.of_bool(False)

    def word(self, tok):
        return Value.of_word(str(tok))

    def text(self, tok):
        return Value.of_word(str(tok)[1:-1])


def _expected(names) -> str:
    readable = sorted({_READABLE.get(n, repr(n)) for n in names})
    if len(readable) > 6:
        readable = readable[:6] + ["..."]
    return ", ".join(readable)


def _syntax_message(text: str, err: UnexpectedInput) -> str:
    col = getattr(err, "column", None)
    where = f"column {col}" if isinstance(col, int) and col > 0 else "end of rule"
    if isinstance(err, UnexpectedCharacters):
        got = repr(text[err.pos_in_stream]) if err.pos_in_stream < len(text) else "end of rule"
        return f"{where}: unexpected character {got}; expected {_expected(err.allowed)}"
    if isinstance(err, UnexpectedEOF):
        return f"rule ends too early; expected {_expected(err.expected)}"
    if isinstance(err, UnexpectedToken):
        if err.token.type == "$END":
            return f"rule ends too early; expected {_expected(err.expected)}"
        return f"{where}: unexpected {err.token.value!r}; expected {_expected(err.expected)}"
    return str(err).splitlines()[0]


def parse_rule(text: str) -> Rule:
    """Parse one rule line; :class:`RuleSyntaxError` (a ValueError) says where it went wrong."""
    if not isinstance(text, str):
        raise RuleSyntaxError(f"a rule is text, got {type(text).__name__}")
    line = text.strip()
    if not line:
        raise RuleSyntaxError("empty rule")
    if "\n" in line:
        raise RuleSyntaxError("a rule is one line")
    try:
        tree = _parser().parse(line)
        return _ToRule().transform(tree)
    except UnexpectedInput as err:
        raise RuleSyntaxError(_syntax_message(line, err)) from None
    except VisitError as err:
        if isinstance(err.orig_exc, _Semantic):
            raise RuleSyntaxError(str(err.orig_exc)) from None
        raise


def try_parse(text: str) -> Rule | None:
    """The rule, or None when ``text`` is not a rule (for scoring model outputs)."""
    try:
        return parse_rule(text)
    except RuleSyntaxError:
        return None


# ---------------------------------------------------------------------------------- comparison


def values_match(pred: Value, ref: Value) -> bool:
    """Equal values: numbers after converting ``pred`` into ``ref``'s unit (relative tolerance
    VALUE_REL_TOL, so 1:12 equals 8.33 % and 7 in equals 177.8 mm), anything else by text."""
    if pred.numeric and ref.numeric:
        converted = units.convert(pred.number, pred.unit, ref.unit)
        return converted is not None and math.isclose(converted, ref.number, rel_tol=VALUE_REL_TOL,
                                                      abs_tol=1e-9)
    return pred.kind == ref.kind and pred.word == ref.word


def atoms_match(pred: Atom, ref: Atom) -> bool:
    if (pred.path, pred.comparator) != (ref.path, ref.comparator):
        return False
    if not values_match(pred.value, ref.value):
        return False
    return ref.upper is None or (pred.upper is not None and values_match(pred.upper, ref.upper))


def _same_multiset(pred, ref, match) -> bool:
    if len(pred) != len(ref):
        return False
    left = list(ref)
    for p in pred:
        hit = next((i for i, r in enumerate(left) if match(p, r)), None)
        if hit is None:
            return False
        left.pop(hit)
    return True


def conditions_match(pred: Rule, ref: Rule) -> bool:
    """The ``conditions`` field compared structurally (order-free, values after unit conversion)."""
    return (
        _same_multiset(pred.requirements[1:], ref.requirements[1:], atoms_match)
        and _same_multiset(pred.conditions, ref.conditions, atoms_match)
        and _same_multiset(
            pred.exceptions, ref.exceptions, lambda a, b: _same_multiset(a, b, atoms_match)
        )
    )


def field_matches(pred: Rule, ref: Rule) -> dict[str, bool]:
    """Per-field equality of a predicted rule with the reference.

    ``value`` compares numerically after converting the prediction into the reference's unit
    (see :func:`values_match`); ``unit`` compares the symbols as written; ``conditions`` compares
    the folded rest of the rule structurally; the other fields compare their normalised strings.
    """
    pf, rf = pred.fields(), ref.fields()
    out = {k: pf[k] == rf[k] for k in ("id", "element", "property", "comparator", "unit")}
    p0, r0 = pred.requirements[0], ref.requirements[0]
    if r0.comparator == "between":
        out["value"] = (
            p0.comparator == "between"
            and values_match(p0.value, r0.value)
            and values_match(p0.upper, r0.upper)
        )
    else:
        out["value"] = p0.comparator != "between" and values_match(p0.value, r0.value)
    out["conditions"] = conditions_match(pred, ref)
    return {k: out[k] for k in FIELDS}
