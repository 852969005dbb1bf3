"""GRPO's rewards: the rule checker scores each sampled completion against the row's reference rule.

The reward is verifiable: no reward model, no judge, only the compliance package's own grammar and
checker (:mod:`tunelens.data.compliance`), the same definitions the evaluate stage scores a run by
(``rule_parse_rate``, ``rule_field_accuracy``, and the execution agreement behind
``rule_exec_accuracy``; a test checks both sides agree on fixed strings). Five rewards, each a
plain function in TRL's reward signature ``f(prompts, completions, reference, ...) -> [float]``
(TRL passes every dataset column by name), so TRL logs each one per step under its own name:

* ``parses``: 1 when the grammar accepts the completion, else 0 (small: a start, not the goal).
* ``fields``: share of the seven rule fields equal to the reference's (0 when it does not parse).
* ``verdicts``: share of the reference's sample designs on which the completion gives the
  reference's verdict (0 when it does not parse): the main reward, since it is what the rule does.
* ``length``: 0 up to the reference's length, then minus the excess as a share of the reference's
  length, down to -1, so that rambling past the rule costs without rewarding a short wrong answer.
* ``exact``: 1 when the completion's verdict agrees with the reference's on *every* sample design,
  else 0: the all-or-nothing form of ``verdicts``, i.e. ``rule_exec_accuracy`` itself. ``verdicts``
  pays for each design, so a policy can raise it without ever getting a whole rule right; this term
  pays only for crossing that line (weight 1, as ``verdicts``: with it, groups of 16 sampled at
  temperature 0.5 and 200 steps, GRPO raised ``rule_exec_accuracy`` on the quick ladder; see
  docs/grpo.md).

A completion is scored as TRL decodes it (special tokens dropped), stripped of surrounding space.
"""

from __future__ import annotations

from functools import lru_cache

from tunelens.data.compliance.checker import execution_agreement
from tunelens.data.compliance.rules import field_matches, try_parse

REWARDS = ("parses", "fields", "verdicts", "length", "exact")  # the order of GrpoConfig.rewards.as_list()


@lru_cache(maxsize=8192)
def _rule(text: str):
    """The parsed rule or None (cached: five rewards read every completion of a group)."""
    return try_parse(text.strip()) if text.strip() else None


def score(completion: str, reference: str) -> dict[str, float]:
    """All five rewards of one completion; a reference that is not a rule scores only length."""
    return dict(zip(REWARDS, _scores(completion, reference), strict=True))


@lru_cache(maxsize=8192)
def _scores(completion: str, reference: str) -> tuple[float, float, float, float, float]:
    """Cached: each of the five reward functions asks for the same completion's scores."""
    ref, pred = _rule(reference), _rule(completion)
    matched = agreement = 0.0
    if ref is not None and pred is not None:
        matches = field_matches(pred, ref)
        matched = sum(matches.values()) / len(matches)
        agreement = float(execution_agreement(pred, ref))
    exact = float(agreement >= 1.0)  # as the evaluate stage's rule_exec_accuracy
    return float(pred is not None), matched, agreement, length_penalty(completion, reference), exact


def length_penalty(completion: str, reference: str) -> float:
    """0 within the reference's length, else -(excess / reference length), at least -1."""
    pred, ref = completion.strip(), reference.strip()
    excess = max(0, len(pred) - len(ref))
    return -min(1.0, excess / max(len(ref), 1))


def total(scores: dict[str, float], weights: list[float]) -> float:
    """The weighted sum TRL trains on (weights in :data:`REWARDS` order)."""
    return sum(w * scores[name] for name, w in zip(REWARDS, weights, strict=True))


def _text(completion) -> str:
    """TRL passes a string, or a list of chat messages for conversational datasets."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _each(name: str, completions: list, reference: list[str]) -> list[float]:
    return [score(_text(c), ref)[name] for c, ref in zip(completions, reference, strict=True)]


def parses(prompts: list, completions: list, reference: list[str], **_) -> list[float]:
    return _each("parses", completions, reference)


def fields(prompts: list, completions: list, reference: list[str], **_) -> list[float]:
    return _each("fields", completions, reference)


def verdicts(prompts: list, completions: list, reference: list[str], **_) -> list[float]:
    return _each("verdicts", completions, reference)


def length(prompts: list, completions: list, reference: list[str], **_) -> list[float]:
    return _each("length", completions, reference)


def exact(prompts: list, completions: list, reference: list[str], **_) -> list[float]:
    return _each("exact", completions, reference)


# What GRPOTrainer gets, in REWARDS order (TRL names each by its function name).
REWARD_FUNCS = (parses, fields, verdicts, length, exact)
