"""Token categories of building-code text: which characters are rule ids, numbers, units, ...

The attribution analysis asks *what kind* of token a fine-tuned model leans on: the numbers and
units, the comparators ("not less than"), the modals ("shall"), the conditions ("where"), or the
clause identifiers. That needs a character-level tag of regulatory text.

Why rules and not a library: general NLP taggers (spaCy's NER, Stanza) know CARDINAL and
QUANTITY but have no notion of comparators, deontic modals, exception markers or clause
identifiers such as ``1910.23(b)(1)`` or ``R311.7.5.1`` (they split or mislabel them), and no
maintained package tags regulatory text this way. The vocabulary of codes is small and formulaic
(ADA, OSHA, IBC, Approved Documents all use the same few phrasings), so explicit patterns are
precise, fast, deterministic and reviewable, which a statistical tagger trained on news is not.

How conflicts are settled: every pattern proposes spans; higher-priority categories win
(RULE_ID > NUMBER > COMPARATOR > CONDITION > MODAL), then longer spans, then earlier ones; a
proposal that overlaps an accepted span is dropped. Units are attached afterwards, only directly
after an accepted number ("32 inches (815 mm)", "5%", "32in."), so "in" is a unit in "32 in."
but not in "1 in 12" (a ratio) or "in accordance with".

Two readings chosen on purpose:
* ``shall not exceed`` is MODAL ``shall`` + COMPARATOR ``not exceed``, and ``shall not be less
  than`` is MODAL ``shall`` + COMPARATOR ``not be less than``: the negation belongs to the
  comparison (it turns "less than" into ">="). ``shall not`` is a MODAL (a prohibition) only where
  no comparison follows.
* A cross-reference keyword is part of the id span (``Section 1009.6``, ``Table 1020.2``); later
  ids of a list (``Sections 1011.5 and 1011.6``) are their own spans.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass
from pathlib import Path

from tunelens.contracts import TextRow, parse_row
from tunelens.errors import TunelensError
from tunelens.io import iter_jsonl, write_jsonl

CATEGORIES = ("RULE_ID", "NUMBER", "UNIT", "COMPARATOR", "MODAL", "CONDITION", "OTHER")
_PRIORITY = {"RULE_ID": 5, "NUMBER": 4, "COMPARATOR": 3, "CONDITION": 2, "MODAL": 1}


@dataclass(frozen=True)
class Span:
    """A tagged stretch of text: ``text[start:end]`` belongs to ``category``."""

    start: int
    end: int
    category: str
    text: str

    def as_dict(self) -> dict:
        return {"start": self.start, "end": self.end, "category": self.category, "text": self.text}


# --- rule ids and cross-references ----------------------------------------------------------
_SUB = r"(?:\([A-Za-z0-9]{1,4}\))"  # a parenthesised sub-clause: (b), (1), (iv)
_ID = (
    rf"(?:[A-Z]{{1,3}}-?\d+(?:[ -]\d+(?:\.\d+)+|(?:\.\d+)*)[a-z]?{_SUB}*"  # K1 2.4, R311.7, A117.1
    rf"|\d+(?:\.\d+)*[a-z]?{_SUB}*"  # 1011.5.2, 4.2.6(a), 11
    rf"|[A-Z]{_SUB}*(?![\w])"  # Appendix B, Part M
    rf"|{_SUB}+)"  # paragraph (b)(1)
)
_KEYWORD = (
    r"(?i:sections?|§§?|clauses?|tables?|figures?|fig\.|chapters?|parts?|articles?|appendix|"
    r"appendices|annex(?:es)?|paragraphs?|subparagraphs?|subsections?|items?|regulations?|"
    r"requirements?|rules?|schedules?|approved\s+document|regs?\.|sec\.|art\.|para\.|cl\.)"
)
_KEYWORD_ID = re.compile(rf"(?<![\w§])(?:{_KEYWORD}\s*(?:{_ID})|(?i:rule)\s+\"[^\"\n]*\")(?![\w])")
_LIST_MORE = re.compile(
    rf"(?:\s*,\s*(?:(?:and|or)\s+)?|\s+(?:and|or|through|thru|to)\s+)"
    rf"((?:[A-Z]{{1,3}}-?)?\d+(?:\.\d+)*[a-z]?{_SUB}*|{_SUB}+)(?![\w.]\d)"
)
_BARE_IDS = [
    re.compile(rf"(?<![\w.])\d+(?:\.\d+){{2,}}[a-z]?{_SUB}*(?![\w]|\.\d)"),  # 1011.5.2, 4.3.8
    re.compile(rf"(?<![\w.])\d+\.\d+{_SUB}+"),  # 1910.23(b)(1)
    re.compile(rf"(?<![\w.])[A-Z]{{1,3}}\d+(?:\.\d+)+{_SUB}*(?![\w]|\.\d)"),  # R311.7.5.1
    re.compile(rf"(?<![\w.])[A-Z]\d{{1,2}}(?:[ -]\d+(?:\.\d+)+|{_SUB}+)?(?![\w]|\.\d)"),  # K1 2.4
    re.compile(r"\b(?:ANSI|ICC|NFPA|ASTM|ASME|ASCE|UL|BS|EN|ISO|IEC|CSA|DIN)(?:/[A-Z]+)*\s+"
               rf"[A-Z]?\d+(?:[.-]\d+)*{_SUB}*(?::\d{{4}})?(?![\w])"),  # ICC A117.1, NFPA 13
    re.compile(rf"\b\d+\s+CFR\s+(?:(?i:part)\s+)?\d+(?:\.\d+)*{_SUB}*"),  # 29 CFR 1910.23
    # a clause's own number heading a line: "405.2 Slope.", "(b)(1) The top edge ..."
    re.compile(rf"(?:^|(?<=^\[))\d+(?:\.\d+)+{_SUB}*(?=\]?:?[ \t]+[A-Z])", re.M),
    re.compile(rf"^{_SUB}+(?=[ \t])", re.M),
]
# a bare "405.2" is a number unless a referring phrase introduces it ("complying with 405.2")
_REFERRED_ID = re.compile(
    r"\b(?i:complying\s+with|compl(?:y|ies)\s+with|in\s+accordance\s+with|specified\s+in|"
    r"required\s+by|permitted\s+by|defined\s+in|described\s+in|listed\s+in|shown\s+in|"
    r"indicated\s+in|referenced\s+in|see)\s+"
    rf"(\d+\.\d+[a-z]?{_SUB}*)(?![\w]|\.\d)"
)

# --- numbers ----------------------------------------------------------------------------------
_RATIO = re.compile(r"(?<![\w.])\d+(?:\.\d+)?(?:\s*:\s*|\s+in\s+)\d+(?:\.\d+)?(?![\w:]|\.\d)")
_NUMBER = re.compile(
    r"(?<![\w.,/])(?:\d+(?:[ -]\d+)?/\d+|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)(?![\d/]|\.\d)"
)
_NUMBER_WORD = (
    r"(?:zero|one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    r"fifteen|sixteen|seventeen|eighteen|nineteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|"
    r"ninety|hundred|thousand|half|quarter|third|thirds|quarters)"
)
_SPELLED = re.compile(rf"\b(?i:{_NUMBER_WORD}(?:(?:-|\s+)(?:and\s+)?{_NUMBER_WORD})*)\b")

# --- units (attached to a preceding number only) -------------------------------------------------
_UNIT_WORDS = (
    "air changes per hour|square feet|square foot|square meters|square metres|sq\\.? ?ft\\.?|"
    "sq\\.? ?m|cubic feet|cubic meters|cubic metres|foot-candles|footcandles|"
    "millimeters|millimetres|millimeter|millimetre|centimeters|centimetres|kilometers|kilometres|meters|metres|meter|metre|inches|"
    "inch|feet|foot|yards|yard|miles|mile|percent|per cent|degrees|degree|pounds|pound|seconds|"
    "second|minutes|minute|hours|hour|persons|people|occupants|stories|storeys|story|storey|risers|"
    "lux|mm2|mm|"
    "cm|km/h|km|m/s|m2|m3|m|ft2|ft|yd|mi|sf|lbf|lbs|lb|kg|kN|kPa|Pa|psf|psi|N|lx|fc|dBA|dB|Hz|kW|W|"
    "V|mph|L/s|cfm|gpm|ach|sec|min|hrs|hr|h|s|deg|in"
)
_UNIT = re.compile(
    rf"(?:\s*(?:%|°[CF]?|m²|m³|ft²)|(?:\s+|-)?(?:{_UNIT_WORDS})(?![\w])|[\"'″′](?![\w]))"
)
_NOT_UNIT_IN = re.compile(r"in\s+(?:the|a|an|each|every|any|all|accordance|which|this|that)\b", re.I)

# --- comparators, modals, conditions ------------------------------------------------------------
_CMPW = (r"(?:less|more|greater|fewer|lower|higher|smaller|larger|wider|narrower|steeper|"
         r"shorter|longer|taller|deeper|lesser)")
_COMPARATOR_WORDS = re.compile(
    r"\b(?i:"
    rf"(?:not|no)\s+(?:be\s+)?{_CMPW}\s+than(?:\s+or\s+equal\s+to)?"
    rf"|{_CMPW}\s+than(?:\s+or\s+equal\s+to)?"
    r"|(?:not\s+(?:to\s+)?)?exceed(?:s|ed|ing)?"
    r"|(?:not\s+)?in\s+excess\s+of"
    r"|at\s+(?:least|most)"
    r"|(?:minimum|maximum)(?:\s+of)?"
    r"|or\s+(?:greater|more|less|fewer|larger|smaller|higher|lower|wider|narrower|above|below)"
    r"|(?:greater|lesser)\s+of"
    r"|equal\s+to|equals|up\s+to|limited\s+to"
    rf"|(?:between|within)(?=\s+(?:[\d.]|{_NUMBER_WORD}\b))"  # only before a quantity
    r")(?![\w])"
)
# "min." after a number is minutes (a unit), elsewhere "minimum"
_COMPARATOR_ABBR = re.compile(r"\b(?i:max)\.|(?<!\d)(?<!\d\s)\b(?i:min)\.")
_COMPARATOR_SYMBOLS = re.compile(r"<=|>=|!=|==|[≤≥≠<>=]")
_MODAL = re.compile(
    r"\b(?i:"
    r"(?:shall|must|may|should)\s+not\s+be\s+(?:permitted|allowed|required)(?:\s+to)?"
    rf"|(?:shall|must|may|should)\s+not(?!\s+(?:be\s+)?(?:{_CMPW}\s+than|exceed))"
    r"|shall\s+be\s+(?:permitted|allowed|required)(?:\s+to)?"
    r"|(?:is|are)\s+(?:not\s+)?(?:permitted|allowed|required)(?:\s+to)?"
    r"|need\s+not|cannot|shall|must|may|should"
    r")(?![\w])"
)
_CONDITION = re.compile(
    r"\b(?i:exceptions?(?:\s*:)?|where(?:ver)?|when(?:ever)?|if|unless|except|"
    r"provid(?:ed|ing)\s+that|(?:(?<=,\s)|(?<=;\s)|^)provided|in\s+the\s+case\s+of|in\s+cases\s+where|in\s+the\s+event\s+that|"
    r"subject\s+to|as\s+long\s+as|so\s+long\s+as)(?![\w])"
)


def _keyword_ids(text: str) -> list[tuple[int, int, str]]:
    out = []
    for m in _KEYWORD_ID.finditer(text):
        out.append((m.start(), m.end(), "RULE_ID"))
        pos = m.end()
        while (more := _LIST_MORE.match(text, pos)) is not None:
            out.append((more.start(1), more.end(1), "RULE_ID"))
            pos = more.end()
    return out


def _proposals(text: str) -> list[tuple[int, int, str]]:
    found = _keyword_ids(text)
    for pattern in _BARE_IDS:
        found += [(m.start(), m.end(), "RULE_ID") for m in pattern.finditer(text)]
    for m in _REFERRED_ID.finditer(text):
        if not _unit_after(text, m.end(1)):
            found.append((m.start(1), m.end(1), "RULE_ID"))
    for pattern, category in (
        (_RATIO, "NUMBER"), (_NUMBER, "NUMBER"), (_SPELLED, "NUMBER"),
        (_COMPARATOR_WORDS, "COMPARATOR"), (_COMPARATOR_ABBR, "COMPARATOR"),
        (_COMPARATOR_SYMBOLS, "COMPARATOR"), (_MODAL, "MODAL"), (_CONDITION, "CONDITION"),
    ):
        found += [(m.start(), m.end(), category) for m in pattern.finditer(text)]
    return found


def _unit_after(text: str, pos: int) -> tuple[int, int] | None:
    """The unit written directly after a number ending at ``pos`` (leading space excluded)."""
    m = _UNIT.match(text, pos)
    if m is None:
        return None
    start = pos + len(m.group()) - len(m.group().lstrip(" \t-"))
    if text.startswith("in", start) and _NOT_UNIT_IN.match(text, start):
        return None
    return start, m.end()


def tag(text: str) -> list[Span]:
    """Tag ``text``: sorted, non-overlapping spans; untagged characters are OTHER."""
    accepted: list[tuple[int, int, str]] = []
    taken = bytearray(len(text) + 1)
    order = sorted(set(_proposals(text)), key=lambda p: (-_PRIORITY[p[2]], p[0] - p[1], p[0]))
    for start, end, category in order:
        if end > start and not any(taken[start:end]):
            accepted.append((start, end, category))
            taken[start:end] = b"\x01" * (end - start)
    for _, end, category in list(accepted):
        if category == "NUMBER" and (unit := _unit_after(text, end)) is not None:
            u_start, u_end = unit
            if not any(taken[u_start:u_end]):
                accepted.append((u_start, u_end, "UNIT"))
                taken[u_start:u_end] = b"\x01" * (u_end - u_start)
    return [Span(s, e, c, text[s:e]) for s, e, c in sorted(accepted)]


def category_at(spans: list[Span], start: int, end: int) -> str:
    """The category of a token covering ``[start, end)``: the span it overlaps most, else OTHER.

    A tokenizer's pieces rarely line up with spans (" shall" carries a space, "815mm" may be one
    piece); majority overlap gives each token one category. Ties go to the earlier span.
    """
    if end <= start or not spans:
        return "OTHER"
    ends = [s.end for s in spans]
    best, best_overlap = "OTHER", 0
    for span in spans[bisect.bisect_right(ends, start):]:
        if span.start >= end:
            break
        overlap = min(end, span.end) - max(start, span.start)
        if overlap > best_overlap:
            best, best_overlap = span.category, overlap
    return best


def tag_file(input: Path, out: Path | None = None) -> dict:
    """Tag every ``{"text": ...}`` line of ``input``; write lines with ``spans`` added to ``out``.

    Other keys of a line (an ``id``, say) are kept. Returns the number of lines and the number
    of spans per category. With ``out=None`` the tagged rows are returned under ``"rows"``.
    """
    counts = dict.fromkeys(CATEGORIES[:-1], 0)
    tagged = []
    for line, raw in iter_jsonl(input):
        row = parse_row(raw, TextRow, f"{input}:{line}")
        spans = tag(row.text)
        for span in spans:
            counts[span.category] += 1
        tagged.append({**raw, "spans": [s.as_dict() for s in spans]})  # the user's key order
    if not tagged:
        raise TunelensError(f"{input}: empty file, no rows to read")
    summary = {"lines": len(tagged), "spans": counts}
    if out is None:
        summary["rows"] = tagged
    else:
        write_jsonl(out, tagged)
    return summary
