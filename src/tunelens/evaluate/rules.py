"""Rule-level scoring: does the prediction parse, do its fields match, does it decide the same way?

Text overlap rewards a rule that reads like the reference even when it says ``>=`` where the
reference says ``<=``. These scores look at the rule itself, through the compliance package's
parser and checker (the owner of the rule language): a prediction is *parsed* when the grammar
accepts it; its *field accuracy* is the share of the seven fields (id, element, property,
comparator, value, unit, conditions) equal to the reference's; its *execution agreement* is the
share of the reference's sample designs on which it gives the same verdict as the reference, and
its *execution accuracy* is 1 when it agrees on all of them, else 0. The all-or-nothing form is
the headline because it is what execution accuracy means elsewhere (text-to-SQL: same result or
not) and because the sample designs sit on both sides of every threshold, so a flipped comparator
still agrees on about half of them.

Where the verdicts differ, they differ in one of two ways that matter unequally to a user of a
compliance checker, so each has its own rate. A *positive* is a design the rule flags (FAIL).
*False-positive rate*: the share of the designs the reference does not flag (PASS or
NOT_APPLICABLE) that the prediction flags — false alarms. *False-negative rate*: the share of the
designs the reference flags that the prediction does not — missed violations. A rule with no
designs on one side (one that can never fail) has no rate on that side (None).

A prediction that does not parse scores 0 on parse, fields and execution; it flags nothing, as a
checker with a broken rule reports nothing: false-positive rate 0, false-negative rate 1 (read
the two beside the parse rate). A reference that does not parse means the data is not rule data:
the example gets no rule scores (None) rather than a misleading 0.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

RULE_FIELDS = ("id", "element", "property", "comparator", "value", "unit", "conditions")


@dataclass(frozen=True)
class VerdictErrors:
    """How a predicted rule's verdicts differ from the reference's on the reference's designs."""

    designs: int
    agreement: float  # share of designs with the same verdict
    false_positive_rate: float | None  # flagged by the prediction, not by the reference
    false_negative_rate: float | None  # flagged by the reference, not by the prediction


@dataclass(frozen=True)
class RuleScore:
    parsed: bool
    field_accuracy: float
    exec_accuracy: float
    exec_agreement: float
    fields: dict[str, bool] | None  # which fields matched; None when the prediction did not parse
    false_positive_rate: float | None = None
    false_negative_rate: float | None = None


@lru_cache(maxsize=8192)
def parsed_rule(text: str):
    """The parsed rule (frozen, so cached and shared), or None when ``text`` is not a rule."""
    from tunelens.data.compliance.rules import try_parse

    return try_parse(text.strip()) if isinstance(text, str) else None


def _rate(hits: int, total: int) -> float | None:
    return hits / total if total else None


def verdict_errors(pred, ref) -> VerdictErrors:
    """Compare the verdicts of two parsed rules on the reference's sample designs; ``pred`` None
    (no rule) flags nothing. A prediction the checker cannot run on a design disagrees there and
    does not flag it (as :func:`~tunelens.data.compliance.checker.execution_agreement`)."""
    from tunelens.data.compliance.checker import Verdict, check, sample_designs

    pairs = []
    for design, expected in sample_designs(ref):
        try:
            got = None if pred is None else check(pred, design)
        except Exception:  # noqa: BLE001 - a weird prediction disagrees, it does not crash scoring
            got = None
        pairs.append((expected, got))
    flagged = [(e == Verdict.FAIL, g == Verdict.FAIL) for e, g in pairs]
    negatives = sum(not e for e, _ in flagged)
    return VerdictErrors(
        designs=len(pairs),
        agreement=sum(e == g for e, g in pairs) / len(pairs) if pairs else 0.0,
        false_positive_rate=_rate(sum(g and not e for e, g in flagged), negatives),
        false_negative_rate=_rate(sum(e and not g for e, g in flagged), len(flagged) - negatives),
    )


def score_rule(prediction: str, reference: str) -> RuleScore | None:
    """Rule scores of one prediction; None when the reference is not a rule."""
    from tunelens.data.compliance.rules import field_matches

    ref = parsed_rule(reference)
    if ref is None:
        return None
    pred = parsed_rule(prediction)
    errors = verdict_errors(pred, ref)
    if pred is None:
        return RuleScore(parsed=False, field_accuracy=0.0, exec_accuracy=0.0, exec_agreement=0.0,
                         fields=None, false_positive_rate=errors.false_positive_rate,
                         false_negative_rate=errors.false_negative_rate)
    matches = {name: bool(ok) for name, ok in field_matches(pred, ref).items()}
    return RuleScore(
        parsed=True,
        field_accuracy=sum(matches.values()) / len(matches),
        exec_accuracy=float(errors.agreement >= 1.0),
        exec_agreement=errors.agreement,
        fields=matches,
        false_positive_rate=errors.false_positive_rate,
        false_negative_rate=errors.false_negative_rate,
    )


def field_breakdown(scores: list[RuleScore | None]) -> dict[str, float] | None:
    """Accuracy of each field over the rule-scored examples (an unparsed prediction misses all)."""
    scored = [s for s in scores if s is not None]
    if not scored:
        return None
    return {
        name: sum(bool(s.fields and s.fields.get(name)) for s in scored) / len(scored)
        for name in RULE_FIELDS
    }
