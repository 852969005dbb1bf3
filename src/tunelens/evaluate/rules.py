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

A prediction that does not parse scores 0 on all three. A reference that does not parse means the data
is not rule data: the example gets no rule scores (None) rather than a misleading 0.
"""

from __future__ import annotations

from dataclasses import dataclass

RULE_FIELDS = ("id", "element", "property", "comparator", "value", "unit", "conditions")


@dataclass(frozen=True)
class RuleScore:
    parsed: bool
    field_accuracy: float
    exec_accuracy: float
    exec_agreement: float
    fields: dict[str, bool] | None  # which fields matched; None when the prediction did not parse


def _parse(text: str):
    from tunelens.data.compliance.rules import RuleSyntaxError, parse_rule

    try:
        return parse_rule(text.strip())
    except RuleSyntaxError:
        return None


def score_rule(prediction: str, reference: str) -> RuleScore | None:
    """Rule scores of one prediction; None when the reference is not a rule."""
    from tunelens.data.compliance.checker import execution_agreement
    from tunelens.data.compliance.rules import field_matches

    ref = _parse(reference)
    if ref is None:
        return None
    pred = _parse(prediction)
    if pred is None:
        return RuleScore(parsed=False, field_accuracy=0.0, exec_accuracy=0.0, exec_agreement=0.0,
                         fields=None)
    matches = {name: bool(ok) for name, ok in field_matches(pred, ref).items()}
    agreement = float(execution_agreement(pred, ref))
    return RuleScore(
        parsed=True,
        field_accuracy=sum(matches.values()) / len(matches),
        exec_accuracy=float(agreement >= 1.0),
        exec_agreement=agreement,
        fields=matches,
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
