"""How codes write numbers, quantities, comparators and clause identifiers, for the generator.

Each renderer returns the clause text and the value the reference rule uses for it. The policy
for the reference (documented in docs/rule-language.md): where a clause states dual units, the
rule takes the metric value as written (``32 inches (815 mm)`` -> ``815 mm``); otherwise the unit
as written; slopes stated as a ratio (in any spelling) become ``1:n``, stated as a percentage
``%``; spelled-out numbers become digits.
"""

from __future__ import annotations

import random

from tunelens.data.compliance.rules import fmt_number

_ONES = [
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0..999 (codes spell out small counts and some dimensions)."""
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + (f"-{_ONES[ones]}" if ones else "")
    hundreds, rest = divmod(n, 100)
    return f"{_ONES[hundreds]} hundred" + (f" {number_words(rest)}" if rest else "")


def num(x: float, rng: random.Random, spell: float = 0.0) -> str:
    """Digits, or words with probability ``spell`` for whole numbers up to 99."""
    if x == int(x) and 0 <= x < 100 and rng.random() < spell:
        return number_words(int(x))
    return fmt_number(x)


def mm_of_inches(inches: float, convention: str) -> int:
    """Metric equivalents as US codes print them: ADA rounds to 5 mm, the IBC to 1 mm."""
    mm = inches * 25.4
    return int(round(mm / 5) * 5) if convention == "ada" else int(round(mm))


# ------------------------------------------------------------------------------- quantities
# A renderer takes a base value (US customary where the code family has one, else metric) and
# returns (clause text, rule value text).


def _len_small(v, rng, style):
    inches, metric_mm = v
    conv = rng.choice(["ada", "ibc"])
    mm = mm_of_inches(inches, conv) if inches is not None else metric_mm
    word = "inch" if inches == 1 else rng.choice(["inches", "inches", "in."])
    if style == "us_dual" and inches is not None:
        return f"{num(inches, rng, 0.3)} {word} ({mm} mm)", f"{mm} mm"
    if style == "us_only" and inches is not None:
        return f"{num(inches, rng, 0.3)} {word}", f"{fmt_number(inches)} in"
    if style == "metric_dual" and inches is not None:
        return f"{mm} mm ({fmt_number(inches)} in.)", f"{mm} mm"
    mm = metric_mm if metric_mm is not None else mm
    if style == "metric" and mm >= 1000 and mm % 100 == 0 and rng.random() < 0.5:
        m = fmt_number(mm / 1000)
        return f"{m} {rng.choice(['m', 'metres', 'meters'])}", f"{m} m"
    return f"{mm} {rng.choice(['mm', 'mm', 'millimetres', 'millimeters'])}", f"{mm} mm"


def _len_large(v, rng, style):
    feet, metres = v
    if style in ("us_dual", "metric_dual") and feet is not None:
        if rng.random() < 0.5:
            mm = int(round(feet * 304.8))
            return f"{num(feet, rng, 0.2)} feet ({mm} mm)", f"{mm} mm"
        m = fmt_number(round(feet * 0.3048, 1))
        return f"{num(feet, rng, 0.2)} feet ({m} m)", f"{m} m"
    if style == "us_only" and feet is not None:
        return f"{num(feet, rng, 0.2)} {rng.choice(['feet', 'ft'])}", f"{fmt_number(feet)} ft"
    m = metres if metres is not None else round(feet * 0.3048, 1)
    return f"{fmt_number(m)} {rng.choice(['m', 'metres', 'meters'])}", f"{fmt_number(m)} m"


def _area(v, rng, style):
    sqft, sqm = v
    if style in ("us_dual", "metric_dual") and sqft is not None:
        m2 = fmt_number(round(sqft * 0.092903, 1))
        return f"{fmt_number(sqft)} square feet ({m2} m2)", f"{m2} m2"
    if style == "us_only" and sqft is not None:
        return f"{fmt_number(sqft)} {rng.choice(['square feet', 'sq ft', 'ft2'])}", f"{fmt_number(sqft)} ft2"
    m2 = fmt_number(sqm if sqm is not None else round(sqft * 0.092903, 1))
    return f"{m2} {rng.choice(['m2', 'm²', 'square metres', 'square meters'])}", f"{m2} m2"


def _slope(run, rng, style):
    pct = fmt_number(round(100 / run, 2))
    forms = [
        (f"1:{fmt_number(run)}", True),
        (f"1 in {fmt_number(run)}", True),
        (f"one unit vertical in {fmt_number(run)} units horizontal", True),
        (f"1:{fmt_number(run)} ({pct} percent)", True),
        (f"{pct} percent", False),
        (f"{pct}%", False),
    ]
    text, is_ratio = rng.choice(forms)
    return text, (f"1:{fmt_number(run)}" if is_ratio else f"{pct} %")


def _angle(deg, rng, style):
    return rng.choice([f"{fmt_number(deg)} degrees", f"{fmt_number(deg)}°"]), f"{fmt_number(deg)} deg"


def _force(lbf, rng, style):
    newton = lbf * 4.44822
    if style == "us_only":
        return f"{fmt_number(lbf)} {rng.choice(['pounds', 'pounds-force', 'lbf'])}", f"{fmt_number(lbf)} lbf"
    if newton >= 500:
        kn = fmt_number(round(newton / 1000, 2))
        if style in ("us_dual", "metric_dual"):
            return f"{fmt_number(lbf)} pounds ({kn} kN)", f"{kn} kN"
        return f"{kn} kN", f"{kn} kN"
    n = fmt_number(round(newton, 1))
    if style in ("us_dual", "metric_dual"):
        return f"{num(lbf, rng, 0.3)} pounds ({n} N)", f"{n} N"
    return f"{n} {rng.choice(['N', 'newtons'])}", f"{n} N"


def _lux(v, rng, style):
    fc, lux = v
    if style in ("us_dual", "metric_dual") and fc is not None:
        lx = int(round(fc * 10.764))
        return f"{fmt_number(fc)} footcandle{'s' if fc != 1 else ''} ({lx} lux)", f"{lx} lux"
    lx = lux if lux is not None else int(round(fc * 10.764))
    return f"{lx} {rng.choice(['lux', 'lx'])}", f"{lx} lux"


def _time(v, rng, style):
    amount, unit = v
    if unit == "h":
        word = "hour" if amount == 1 else "hours"
        if rng.random() < 0.3 and amount == int(amount):
            return f"{number_words(int(amount))} {word}", f"{fmt_number(amount)} h"
        return f"{fmt_number(amount)} {word}", f"{fmt_number(amount)} h"
    if unit == "min":
        return f"{fmt_number(amount)} minutes", f"{fmt_number(amount)} min"
    return f"{num(amount, rng, 0.3)} seconds", f"{fmt_number(amount)} s"


def _count(n, rng, style):
    return num(n, rng, 0.5), fmt_number(n)


def _pct(p, rng, style):
    return rng.choice([f"{fmt_number(p)} percent", f"{fmt_number(p)}%"]), f"{fmt_number(p)} %"


def _airflow(v, rng, style):
    cfm, ls = v
    if style in ("us_dual", "metric_dual") and cfm is not None:
        lps = int(round(cfm * 0.4719))
        return f"{fmt_number(cfm)} cfm ({lps} L/s)", f"{lps} L/s"
    if style == "us_only" and cfm is not None:
        return f"{fmt_number(cfm)} {rng.choice(['cfm', 'cubic feet per minute'])}", f"{fmt_number(cfm)} cfm"
    lps = ls if ls is not None else int(round(cfm * 0.4719))
    return f"{fmt_number(lps)} {rng.choice(['L/s', 'litres per second'])}", f"{fmt_number(lps)} L/s"


def _ach(n, rng, style):
    return f"{fmt_number(n)} air changes per hour", f"{fmt_number(n)} ach"


RENDERERS = {
    "len_small": _len_small,
    "len_large": _len_large,
    "area": _area,
    "slope": _slope,
    "angle": _angle,
    "force": _force,
    "lux": _lux,
    "time": _time,
    "count": _count,
    "pct": _pct,
    "airflow": _airflow,
    "ach": _ach,
}
US_STYLES = ["us_dual", "us_dual", "us_only", "metric", "metric_dual"]


def render(qty: str, value, rng: random.Random, style: str) -> tuple[str, str]:
    return RENDERERS[qty](value, rng, style)


# ------------------------------------------------------------------------------ comparators

MAX = [
    "shall not exceed {q}",
    "shall be not more than {q}",
    "shall be {q} maximum",
    "shall not be greater than {q}",
    "shall be a maximum of {q}",
    "shall be no more than {q}",
    "shall not be more than {q}",
    "is limited to {q}",
    "must not exceed {q}",
    "shall be {q} max.",
    "shall be limited to a maximum of {q}",
]
MIN = [
    "shall be not less than {q}",
    "shall be {q} minimum",
    "shall be at least {q}",
    "shall not be less than {q}",
    "shall be a minimum of {q}",
    "must be at least {q}",
    "shall be no less than {q}",
    "shall be {q} min.",
    "must not be less than {q}",
]
GT = ["shall exceed {q}", "shall be greater than {q}", "shall be more than {q}"]
LT = ["shall be less than {q}", "must be less than {q}", "shall be under {q}"]
RANGE = [
    "shall be between {a} and {b}",
    "shall be not less than {a} and not more than {b}",
    "shall be {a} minimum and {b} maximum",
    "shall be from {a} to {b}",
    "shall be within {a} and {b}",
    "shall be at least {a} but not more than {b}",
    "shall not be less than {a} nor greater than {b}",
]
NOUN_MAX = [
    "The maximum {m} shall be {q}",
    "The {m} shall not exceed {q}",
    "Maximum {m}: {q}",
    "{A} {m} of more than {q} is not permitted",
]
NOUN_MIN = [
    "The minimum {m} shall be {q}",
    "The {m} shall be not less than {q}",
    "Minimum {m}: {q}",
    "{A} {m} of less than {q} is not permitted",
]
HAVING_MAX = [
    "shall have a {h} of not more than {q}",
    "shall have a maximum {h} of {q}",
    "shall have a {h} not exceeding {q}",
]
HAVING_MIN = [
    "shall have a {h} of not less than {q}",
    "shall have a minimum {h} of {q}",
    "shall have a {h} of at least {q}",
    "shall be provided with a {h} of not less than {q}",
]
COUNT_MIN = ["shall have not less than {q}", "shall be provided with at least {q}",
             "shall have a minimum of {q}", "shall be served by not fewer than {q}"]
COUNT_MAX = ["shall have not more than {q}", "shall contain no more than {q}", "shall have a maximum of {q}"]
SLOPE_MAX = ["shall not be steeper than {q}", "shall have a slope not steeper than {q}"]
COMPARATOR = {"max": "<=", "min": ">=", "gt": ">", "lt": "<"}
PHRASES = {"max": MAX, "min": MIN, "gt": GT, "lt": LT}


# ------------------------------------------------------------------------------ identifiers


def clause_label(rng: random.Random) -> tuple[str, str]:
    """(label as printed, how the body follows it): several code families' numbering."""
    r = rng.randint
    letter = rng.choice("abcdefgh")
    style = rng.choice(["ibc", "ibc", "clause", "osha", "nz", "section", "irc", "para", "reg", "art"])
    if style == "ibc":
        label = f"{r(101, 1299)}.{r(1, 12)}" + (f".{r(1, 9)}" if rng.random() < 0.7 else "")
        if rng.random() < 0.3:
            label += f".{r(1, 6)}"
        return label, rng.choice(["title", "space"])
    if style == "clause":
        label = f"Clause {r(1, 12)}.{r(1, 9)}.{r(1, 12)}" + (f"({letter})" if rng.random() < 0.6 else "")
        return label, rng.choice(["colon", "dash"])
    if style == "osha":
        return f"{r(1904, 1926)}.{r(21, 160)}({letter})({r(1, 12)})", "space"
    if style == "nz":
        return f"{rng.choice('BCDEFGHK')}{r(1, 4)} {r(1, 9)}.{r(1, 9)}" + (
            f".{r(1, 9)}" if rng.random() < 0.4 else ""
        ), "space"
    if style == "section":
        return f"Section {r(1, 30)}.{r(1, 20)}" + (f".{r(1, 9)}" if rng.random() < 0.5 else ""), "colon"
    if style == "irc":
        return f"R{r(301, 399)}.{r(1, 9)}.{r(1, 9)}", "title"
    if style == "para":
        return f"§ {r(1, 60)}.{r(1, 30)}", "space"
    if style == "reg":
        return f"Reg. {r(1, 40)}({r(1, 9)})", "space"
    return f"Article {r(1, 200)}.{r(1, 9)}", "colon"


def with_label(label: str, how: str, title: str, body: str, rng: random.Random) -> str:
    if rng.random() < 0.06:
        return f"[{label}] {body}"
    if how == "title":
        return f"{label} {title}. {body}"
    if how == "colon":
        return f"{label}: {body}"
    if how == "dash":
        return f"{label} — {body}"
    return f"{label} {body}"
