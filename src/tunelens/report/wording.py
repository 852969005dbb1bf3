"""How the report writes numbers, names and lists, so every sentence uses the same vocabulary.

A finding is one sentence; the report is read by people who did not run the study, so strategies
get their usual names ("full fine-tuning", "LoRA", from :mod:`tunelens.train.catalog`), metrics
their labels (:mod:`tunelens.evaluate.specs`), and every number is written by
:mod:`tunelens.format`, the same way as in the tables and the CLI.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelens import format as formatting
from tunelens.evaluate import specs
from tunelens.train.catalog import strategy_label


@dataclass
class Finding:
    """One bullet of the findings section.

    ``kind`` says what the sentence is about (it decides where the bullet goes and what may be
    left out when the section is capped); ``significant`` marks a significant difference;
    ``topic`` is the kind of test behind a difference (concentration, quality, category).
    """

    kind: str
    text: str
    significant: bool = False
    headline: bool = True
    topic: str = ""


def fmt_p(p: float | None) -> str:
    """``p = 0.012`` / ``p < 0.001``: the one p-value format (:func:`tunelens.format.p_value`)."""
    return formatting.p_value(p, sentence=True)


def fmt(x: float | None, metric: str = "") -> str:
    """A metric's value in a sentence, with the decimals its scale calls for (0–100: one)."""
    return formatting.number(x, specs.digits(metric, sentence=True), missing="n/a")


pct = formatting.share
strategy = strategy_label


def arm_of(row: dict) -> str:
    """The strategy a stats row compares, with its prompt when the study names prompts."""
    return row.get("arm") or row["strategy"]

metric_label = specs.label


def join(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``."""
    items = list(items)
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + f" and {items[-1]}"


def capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else many or word + 's'}"
