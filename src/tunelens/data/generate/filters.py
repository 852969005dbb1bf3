"""From a generator's reply to a dataset row, or to a reject with the filter that refused it.

Filters, in order (the data card counts each one):

``no_output``       the reply holds nothing of the kind the template asks for;
``rule``            compliance data: the row's rule must parse and run on its sample designs
                    with a PASS and a FAIL (:func:`tunelens.data.validate.check_rule`, the check
                    ``data validate`` applies);
``ungrounded``      compliance data: a number in the rule (its id aside) that the row's clause
                    does not state, in digits or in words ("forty-two"): small models copy the
                    template's example rule, which executes but says something else (of the
                    757 bundled pairs it refuses one, whose limits the clause states as "42
                    inches, plus or minus 3 inches");
``same_as_seed``    the generated rule is the seed's rule, or the generated clause is a
                    near-duplicate of the seed clause (the threshold below);
``near_duplicate``  the row's prompt+completion is a MinHash near-duplicate of a row kept before
                    (:func:`tunelens.data.dedup.deduplicate`, the step ``data prepare`` uses).

Diversity of each batch's kept rows: distinct-1/2 of the generated texts
(:class:`tunelens.evaluate.diversity.DistinctStats`) and, with embeddings on, MiniLM ``spread``
(1 - mean pairwise cosine) and ``distance_to_seed`` (1 - mean cosine to the row's seed clause).
"""

from __future__ import annotations

import re

from tunelens.data.prepare import normalise_text

FILTERS = ("no_output", "rule", "ungrounded", "same_as_seed", "near_duplicate")
_NUMBER = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?![\w.]*[A-Za-z_])")
_RULE_ID = re.compile(r'^\s*RULE\s+(?:"[^"]*"|[^\s:]+)\s*:\s*')
_UNITS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
          "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
_WORD_VALUE = {**{w: i for i, w in enumerate(_UNITS)}, **{w: 20 + 10 * i for i, w in enumerate(_TENS)}}
_WORD = rf"(?:{'|'.join(_WORD_VALUE)}|hundred)"
_WORD_NUMBER = re.compile(rf"\b{_WORD}(?:(?:[\s-]+|\s+and\s+){_WORD})*\b", re.I)
_RULE_LINE = re.compile(r"(?m)^\W*(RULE\b.*?)[`*\s]*$")
_CLAUSE_LINE = re.compile(r"(?im)^\W*clause\s*:\s*(.+?)\s*$")
_PREFIX = re.compile(r"^\s*(?:clause|sentence|rewritten clause|rewrite|answer)\s*:\s*", re.I)
_ECHOED_RULE = re.compile(r"\bRULE\s+\S+?:")


def extract(reply: str, output: str) -> dict | None:
    """The fields a reply fills (``{"prompt": ...}``, ``{"completion": ...}`` or both), or None."""
    rule = _RULE_LINE.search(reply or "")
    if output == "completion":
        return {"completion": rule.group(1).strip()} if rule else None
    if output == "both":
        clause = _CLAUSE_LINE.search(reply or "")
        if not (rule and clause):
            return None
        return {"prompt": normalise_text(clause.group(1)), "completion": rule.group(1).strip()}
    paragraphs = [p for p in normalise_text(reply or "").split("\n\n") if p.strip()]
    if not paragraphs:
        return None
    text = _PREFIX.sub("", paragraphs[0]).strip().strip('"“”').strip()
    return {"prompt": text} if text and not _ECHOED_RULE.search(text) else None  # not a clause


def rule_problem(row: dict) -> str | None:
    """Why the row's rule fails the compliance check, or None when it parses and executes."""
    from tunelens.data.validate import check_rule

    try:
        check_rule(row["completion"])
    except ValueError as exc:
        return str(exc)
    return None


def _spelt(phrase: str) -> set[float]:
    """The value of a spelt number up to the hundreds ("forty-two", "one hundred and ten"), and of
    each of its words ("two-hour" is 2 as well). Ours: no installed library reads number words."""
    words = re.findall(r"[a-z]+", phrase.lower())
    value = 0
    for word in words:
        value = max(value, 1) * 100 if word == "hundred" else value + _WORD_VALUE.get(word, 0)
    return {float(value)} | {float(_WORD_VALUE[w]) for w in words if w in _WORD_VALUE}


def _numbers(text: str) -> set[float]:
    spelt = {x for phrase in _WORD_NUMBER.findall(text) for x in _spelt(phrase)}
    return {float(x) for x in _NUMBER.findall(text)} | spelt


def ungrounded(row: dict) -> str | None:
    """The rule's numbers the clause does not state (module docstring), or None."""
    missing = _numbers(_RULE_ID.sub("", row["completion"])) - _numbers(row["prompt"])
    if not missing:
        return None
    listed = ", ".join(f"{x:g}" for x in sorted(missing))
    return f"the rule's value(s) {listed} are not in the clause"


def repeats_seed(row: dict, seed: dict, output: str, threshold: float, shingle_size: int) -> str | None:
    """Why the generated part repeats its seed, or None: a rule equal to the seed's rule, or a
    clause whose word-shingle Jaccard with the seed clause reaches the near-duplicate threshold
    (a paraphrase that changes one word is the seed again, and would leak across splits)."""
    from tunelens.data.dedup import jaccard, shingles

    if output != "prompt" and " ".join(row["completion"].split()) == " ".join((seed["rule"] or "").split()):
        return "the rule is the seed's rule"
    if output != "completion":
        score = jaccard(shingles(row["prompt"], shingle_size), shingles(seed["clause"], shingle_size))
        if score >= threshold:
            return f"the clause is a near copy of the seed clause (Jaccard {score:.2f})"
    return None


def near_duplicates(kept: list[dict], new: list[dict], threshold: float, shingle_size: int,
                    seed: int) -> dict[int, str]:
    """``{index in new: id of the kept row it repeats}``; rows kept earlier win."""
    from tunelens.data.dedup import deduplicate

    rows = kept + new
    dropped = deduplicate([f"{r['prompt']}\n{r['completion']}" for r in rows], threshold,
                          shingle_size, seed=seed)
    return {i - len(kept): rows[partner]["id"] for i, (partner, _) in dropped.items()
            if i >= len(kept)}


def generated_text(row: dict, output: str) -> str:
    """The part of a row the generator wrote (what diversity is measured on)."""
    return {"prompt": row["prompt"], "completion": row["completion"]}.get(
        output, f"{row['prompt']}\n{row['completion']}")


def batch_diversity(texts: list[str], seed_clauses: list[str], embeddings: bool) -> dict:
    """distinct-1/2 and, with ``embeddings``, MiniLM spread and distance to seed (docstring)."""
    from tunelens.evaluate.diversity import DistinctStats

    out: dict = {f"distinct_{n}": DistinctStats.from_samples([[t] for t in texts], n).value()
                 for n in (1, 2)}
    if embeddings:
        out.update(spread=None, distance_to_seed=None)
    if embeddings and texts:
        from tunelens.models.embeddings import embed

        vectors = embed(texts)
        seeds = embed(seed_clauses)
        n = len(texts)
        pair = (vectors @ vectors.T).sum() - n
        out["spread"] = round(float(1 - pair / (n * (n - 1))), 4) if n > 1 else None
        out["distance_to_seed"] = round(float(1 - (vectors * seeds).sum(axis=1).mean()), 4)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}
