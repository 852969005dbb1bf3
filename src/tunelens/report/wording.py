"""How the report writes numbers, names and lists, so every sentence uses the same vocabulary.

A finding is one sentence; the report is read by people who did not run the study, so strategies
get their usual names ("full fine-tuning", "LoRA") and every p-value is written the same way.
"""

from __future__ import annotations

from dataclasses import dataclass

PERCENT_METRICS = {"bleu", "chrf"}
STRATEGY_NAMES = {"full": "full fine-tuning", "lora": "LoRA", "qlora": "QLoRA", "dora": "DoRA",
                  "freeze": "top-layer fine-tuning"}
CONCENTRATION_LABELS = {"gini": "Gini", "top_k_share": "top-k share", "entropy": "normalised entropy"}


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
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt(x: float | None, metric: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:.1f}" if metric in PERCENT_METRICS else f"{x:.2f}"


def pct(x: float) -> str:
    """A share as a percentage; small shares keep one decimal so they do not all read 0%."""
    return f"{x:.0%}" if abs(x) >= 0.095 else f"{x:.1%}"


def strategy(name: str) -> str:
    return STRATEGY_NAMES.get(name, name)


def metric_label(metric: str) -> str:
    return CONCENTRATION_LABELS.get(metric, metric)


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
