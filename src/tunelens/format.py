"""How numbers are written, everywhere: CLI tables, report tables and findings sentences.

One formatter each for a value, an interval, a p-value and a share, so a number printed by
``tunelens compare`` reads the same in ``report.html``. Missing values are an en dash in tables
and "n/a" in sentences (``missing=``).
"""

from __future__ import annotations

import math

DASH = "–"


def number(x, digits: int = 3, missing: str = DASH) -> str:
    """``digits`` decimals; thousands and up as whole numbers with separators; booleans as yes/no."""
    if x is None:
        return missing
    if isinstance(x, bool):
        return "yes" if x else "no"
    x = float(x)
    if not math.isfinite(x):
        return missing
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def interval(mean, lo=None, hi=None, digits: int = 3, missing: str = DASH) -> str:
    """``mean [lo, hi]``; just ``mean`` when the interval is missing."""
    if mean is None:
        return missing
    if lo is None or hi is None:
        return number(mean, digits, missing)
    return f"{number(mean, digits)} [{number(lo, digits)}, {number(hi, digits)}]"


def interval_of(d: dict | None, digits: int = 3, missing: str = DASH) -> str:
    """:func:`interval` of a ``{"mean", "lo", "hi"}`` mapping (the statistics files' shape)."""
    if not d:
        return missing
    return interval(d.get("mean"), d.get("lo"), d.get("hi"), digits, missing)


def p_value(p, sentence: bool = False) -> str:
    """``0.012`` / ``< 0.001`` in tables; ``p = 0.012`` / ``p < 0.001`` in sentences."""
    if p is None:
        return "p n/a" if sentence else DASH
    text = "< 0.001" if p < 0.001 else f"{p:.3f}"
    if not sentence:
        return text
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def share(x: float, digits: int | None = None) -> str:
    """A share as a percentage. By default small shares keep one decimal so they do not all read
    0%; ``digits`` fixes the decimals (an adapter on a large model is 0.04% of its weights)."""
    if digits is not None:
        return f"{x:.{digits}%}"
    return f"{x:.0%}" if abs(x) >= 0.095 else f"{x:.1%}"


def choices(table: dict) -> str:
    """``full (every weight is trained) | lora (...)``: a help text made from a registry, whose
    values are a description or a tuple ending in one."""
    return " | ".join(f"{name} ({v[-1] if isinstance(v, tuple) else v})" for name, v in table.items())
