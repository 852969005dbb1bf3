"""The units the rule language accepts, and conversions between them through pint.

pint does the arithmetic; what is ours is the short, closed list of unit symbols a rule may use
(so a typo is a syntax error, not a silently new unit) and slope handling: codes state slopes as
ratios (1:12), percentages (8.33 %) or angles (4.76 degrees), and comparing an angle with a ratio
means taking its tangent, which a plain unit conversion (degree -> radian) would get wrong.
"""

from __future__ import annotations

import math
from functools import lru_cache

import pint

# language symbol -> pint expression; the keys are the canonical spellings written in rules.
UNITS: dict[str, str] = {
    "mm": "millimeter",
    "cm": "centimeter",
    "m": "meter",
    "km": "kilometer",
    "in": "inch",
    "ft": "foot",
    "yd": "yard",
    "m2": "meter ** 2",
    "ft2": "foot ** 2",
    "m3": "meter ** 3",
    "%": "percent",
    "ratio": "dimensionless",
    "deg": "degree",
    "N": "newton",
    "kN": "kilonewton",
    "lbf": "pound_force",
    "kg": "kilogram",
    "lb": "pound",
    "Pa": "pascal",
    "kPa": "kilopascal",
    "psf": "pound_force / foot ** 2",
    "lux": "lux",
    "fc": "footcandle",
    "s": "second",
    "min": "minute",
    "h": "hour",
    "L/s": "liter / second",
    "cfm": "foot ** 3 / minute",
    "m3/h": "meter ** 3 / hour",
    "ach": "1 / hour",
    "W": "watt",
}

# other spellings a rule may use; normalised to the canonical symbol above.
ALIASES: dict[str, str] = {
    "inch": "in",
    "inches": "in",
    "feet": "ft",
    "foot": "ft",
    "sqm": "m2",
    "sqft": "ft2",
    "percent": "%",
    "degree": "deg",
    "degrees": "deg",
    "minutes": "min",
    "hr": "h",
    "hours": "h",
    "sec": "s",
    "lx": "lux",
    "millimeter": "mm", "millimeters": "mm", "millimetre": "mm", "millimetres": "mm",
    "centimeter": "cm", "centimeters": "cm", "centimetre": "cm", "centimetres": "cm",
    "meter": "m", "meters": "m", "metre": "m", "metres": "m",
    "newton": "N", "newtons": "N", "second": "s", "seconds": "s", "hour": "h", "minute": "min",
}

ANGLE_UNITS = frozenset({"deg"})


@lru_cache(maxsize=1)
def registry() -> pint.UnitRegistry:
    ureg = pint.UnitRegistry()
    ureg.define("footcandle = lumen / foot ** 2 = fc_")
    return ureg


def canonical_unit(symbol: str) -> str | None:
    """The canonical language symbol for ``symbol``, or None when the language does not know it."""
    symbol = ALIASES.get(symbol, symbol)
    return symbol if symbol in UNITS else None


def to_si(magnitude: float, unit: str) -> tuple[float, str]:
    """The magnitude in SI base units and a dimensionality key (angles become slopes: tan)."""
    if unit in ANGLE_UNITS:
        return math.tan(math.radians(magnitude)), "slope"
    if unit == "":
        return float(magnitude), "dimensionless"
    q = registry().Quantity(magnitude, UNITS[unit]).to_base_units()
    dim = str(q.dimensionality)
    if dim == "dimensionless":
        return float(q.magnitude), "slope" if unit in ("%", "ratio") else "dimensionless"
    return float(q.magnitude), dim


def convert(magnitude: float, unit: str, target: str) -> float | None:
    """``magnitude unit`` expressed in ``target``; None when the two are not comparable.

    Percent, ratio and angle are all slopes; a bare number is comparable with a percent or
    ratio (0.0833 == 8.33 %) but not with a length.
    """
    if unit == target:
        return float(magnitude)
    value, dim = to_si(magnitude, unit)
    one, target_dim = to_si(1.0, target) if target not in ANGLE_UNITS else (None, "slope")
    slopeish = {"slope", "dimensionless"}
    if dim != target_dim and not (dim in slopeish and target_dim in slopeish):
        return None
    if target in ANGLE_UNITS:
        return math.degrees(math.atan(value))
    return value / one
