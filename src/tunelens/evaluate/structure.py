"""How far a predicted rule is from the reference in its structure: tree and token edit distances.

The field measures generated rules by more than n-gram overlap: work on SFT + GRPO for rule
generation reports the tree edit distance between the parsed rules and a token-level
Levenshtein distance. Both are distances (0 = identical, lower is better), each normalised to
0–1 so examples of different lengths weigh the same in a mean:

``rule_tree_edit_distance``: Zhang–Shasha edit distance (``zss``, unit costs: insert, delete or
relabel one node) between the two rules' trees, divided by the larger tree's node count. The
tree is built from the parsed :class:`~tunelens.data.compliance.rules.Rule` (units and numbers
already in canonical form, so ``178 millimeters`` and ``178 mm`` are the same leaf)::

    RULE ── id:<id>
         ├─ AND ── cmp:<= ── element:stair, property:riser_height, value:178 ── unit:mm
         ├─ IF ── <atoms>                 (only when the rule has conditions)
         └─ UNLESS ── <atoms>             (one per exception)

Labels carry their kind (``element:``, ``value:``), so a word never matches a name of another
kind at no cost. The trees are ordered, as Zhang–Shasha defines them: two conditions written in
the other order cost two relabels (field accuracy is the order-free comparison). A prediction
that does not parse counts as the full reference tree — every reference node inserted — so it
scores exactly 1; a parsed prediction is clipped at 1 too, so none scores worse than no rule.
A reference that does not parse gives no score (None), as for the other rule metrics.

``token_levenshtein``: edit distance between the rules' token sequences (``rapidfuzz``),
divided by the longer sequence's length (rapidfuzz's ``normalized_distance``). Tokens are the
rule language's lexical units (the terminals of ``grammar.lark``: numbers and ratios, names,
comparators, punctuation, quoted strings), read by one regular expression rather than the lark
lexer because model output is often not in the language at all and must still be tokenised.
It applies to any text, so every example gets it.
"""

from __future__ import annotations

import re

from tunelens.evaluate.rules import parsed_rule

_TOKEN_RE = re.compile(
    r'"[^"\n]*"'                              # quoted rule id or word
    r"|-?\d+(?:\.\d+)*(?::\d+(?:\.\d+)?)?"    # number, dotted clause number, ratio 1:12
    r"|[A-Za-z_][A-Za-z0-9_]*"                # names, keywords, units
    r"|<=|>=|!=|\S"                           # comparators, any other single character
)


def rule_tokens(text: str) -> list[str]:
    """The rule language's tokens of ``text`` (any text: what is not a rule splits the same way)."""
    return _TOKEN_RE.findall(text)


def token_levenshtein(prediction: str, reference: str) -> float:
    """Token edit distance ÷ the longer token sequence (0 identical, 1 nothing in common)."""
    from rapidfuzz.distance import Levenshtein

    return float(Levenshtein.normalized_distance(rule_tokens(prediction), rule_tokens(reference)))


def _value_node(value):
    from zss import Node

    unit = [Node(f"unit:{value.unit}")] if value.kind == "number" and value.unit else []
    return Node(f"value:{value.text}", unit)


def _atom_node(atom):
    from zss import Node

    children = [Node(f"element:{atom.element}"), Node(f"property:{atom.property}"),
                _value_node(atom.value)]
    if atom.upper is not None:
        children.append(_value_node(atom.upper))
    return Node(f"cmp:{atom.comparator}", children)


def rule_tree(rule):
    """The ``zss`` tree of a parsed rule (shape in the module docstring)."""
    from zss import Node

    children = [Node(f"id:{rule.id}"), Node("AND", [_atom_node(a) for a in rule.requirements])]
    if rule.conditions:
        children.append(Node("IF", [_atom_node(a) for a in rule.conditions]))
    children.extend(Node("UNLESS", [_atom_node(a) for a in exc]) for exc in rule.exceptions)
    return Node("RULE", children)


def tree_size(node) -> int:
    return 1 + sum(tree_size(child) for child in node.children)


def _unit(_node) -> int:
    return 1


def _relabel(a, b) -> int:
    return 0 if a.label == b.label else 1


def tree_distance(pred_tree, ref_tree) -> float:
    """Normalised Zhang–Shasha distance of two ``zss`` trees: unit costs, ÷ the larger size,
    at most 1."""
    import zss

    raw = zss.distance(pred_tree, ref_tree, get_children=zss.Node.get_children,
                       insert_cost=_unit, remove_cost=_unit, update_cost=_relabel)
    return min(1.0, raw / max(tree_size(pred_tree), tree_size(ref_tree)))


def rule_tree_edit_distance(prediction: str, reference: str) -> float | None:
    """Normalised tree edit distance of two rule texts; 1 for a prediction that does not parse,
    None when the reference does not (see the module docstring)."""
    ref = parsed_rule(reference)
    if ref is None:
        return None
    pred = parsed_rule(prediction)
    if pred is None:
        return 1.0  # the whole reference tree inserted, ÷ its own size
    return tree_distance(rule_tree(pred), rule_tree(ref))
