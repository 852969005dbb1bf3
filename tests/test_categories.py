"""The token-category tagger on clauses written the way real ADA, OSHA, IBC/IRC and UK/AU codes are."""

from __future__ import annotations

import json

import pytest

from tunelens.cli import main
from tunelens.data.compliance.categories import CATEGORIES, Span, category_at, tag, tag_file

R, N, U, C, M, K = "RULE_ID", "NUMBER", "UNIT", "COMPARATOR", "MODAL", "CONDITION"

REAL_FORMAT = [
    (  # ADA 2010 Standards, 405.2 style (heading number, ratio, exception, bare cross-reference)
        "405.2 Slope. Ramp runs shall have a running slope not steeper than 1:12. EXCEPTION: In "
        "existing sites, ramps shall be permitted to have running slopes steeper than specified in "
        "405.2 complying with Table 405.2 where such slopes are necessary due to space limitations.",
        [(R, "405.2"), (M, "shall"), (C, "not steeper than"), (N, "1:12"), (K, "EXCEPTION:"),
         (M, "shall be permitted to"), (C, "steeper than"), (R, "405.2"), (R, "Table 405.2"),
         (K, "where")],
    ),
    (  # ADA 404.2.3 style: dual units, trailing "minimum"
        "404.2.3 Clear Width. Door openings shall provide a clear width of 32 inches (815 mm) minimum. "
        "Openings more than 24 inches (610 mm) deep shall provide a clear opening of 36 inches "
        "(915 mm) minimum.",
        [(R, "404.2.3"), (M, "shall"), (N, "32"), (U, "inches"), (N, "815"), (U, "mm"), (C, "minimum"),
         (C, "more than"), (N, "24"), (U, "inches"), (N, "610"), (U, "mm"), (M, "shall"), (N, "36"),
         (U, "inches"), (N, "915"), (U, "mm"), (C, "minimum")],
    ),
    (  # OSHA 1910.29(b)(1) style: paragraph markers, "provided" as a condition, paragraph reference
        "(b)(1) The top edge height of top rails is 42 inches (107 cm), plus or minus 3 inches (8 cm), "
        "above the walking-working surface, except when conditions warrant, the top edge may exceed "
        "45 inches (114 cm), provided the guardrail system meets all other criteria of paragraph (b) "
        "of this section.",
        [(R, "(b)(1)"), (N, "42"), (U, "inches"), (N, "107"), (U, "cm"), (N, "3"), (U, "inches"),
         (N, "8"), (U, "cm"), (K, "except"), (K, "when"), (M, "may"), (C, "exceed"), (N, "45"),
         (U, "inches"), (N, "114"), (U, "cm"), (K, "provided"), (R, "paragraph (b)")],
    ),
    (  # OSHA 1910.23(b)(1) style: identifier with parenthesised sub-clauses
        "1910.23(b)(1) Ladder rungs, steps, and cleats are uniformly spaced when the ladder is in "
        "position for use; the spacing is not less than 10 inches (25 cm) and not more than 14 inches "
        "(36 cm), as measured between the centerlines of rungs.",
        [(R, "1910.23(b)(1)"), (K, "when"), (C, "not less than"), (N, "10"), (U, "inches"), (N, "25"),
         (U, "cm"), (C, "not more than"), (N, "14"), (U, "inches"), (N, "36"), (U, "cm")],
    ),
    (  # IBC 1011.5.2 style: maximum/minimum after the quantity; "between" with no number
        "1011.5.2 Riser height and tread depth. Stair riser heights shall be 7 inches (178 mm) "
        "maximum and 4 inches (102 mm) minimum, measured between the vertical planes of the treads.",
        [(R, "1011.5.2"), (M, "shall"), (N, "7"), (U, "inches"), (N, "178"), (U, "mm"),
         (C, "maximum"), (N, "4"), (U, "inches"), (N, "102"), (U, "mm"), (C, "minimum")],
    ),
    (  # IBC 1005.3.1 style: decimals, spelled number, "in accordance with Section"
        "Capacity shall be calculated with a factor of 0.3 inch (7.6 mm) per occupant. Where stairways "
        "serve more than one story, the occupant load of each story shall be used, in accordance with "
        "Section 1005.1.",
        [(M, "shall"), (N, "0.3"), (U, "inch"), (N, "7.6"), (U, "mm"), (K, "Where"), (C, "more than"),
         (N, "one"), (U, "story"), (M, "shall"), (R, "Section 1005.1")],
    ),
    (  # IRC R311.7.5.1 style: lettered id, mixed fraction, "Exception:"
        "R311.7.5.1 Risers. The riser height shall be not more than 7 3/4 inches (196 mm). Exception: "
        "The opening between adjacent treads is not limited on spiral stairways.",
        [(R, "R311.7.5.1"), (M, "shall"), (C, "not more than"), (N, "7 3/4"), (U, "inches"),
         (N, "196"), (U, "mm"), (K, "Exception:")],
    ),
    (  # IBC 1006.3 style: thousands separator, "or greater", table with sub-clause, spelled number
        "Buildings with an occupant load of 1,200 or greater shall have not fewer than two exits, "
        "unless otherwise permitted by Table 1006.3.3(1).",
        [(N, "1,200"), (C, "or greater"), (M, "shall"), (C, "not fewer than"), (N, "two"),
         (K, "unless"), (R, "Table 1006.3.3(1)")],
    ),
    (  # UK Approved Document K style: "K1 2.4", "1 in 20" ratio, "should"
        "K1 2.4 Ramps should have a gradient of not more than 1:12 for a going of up to 2 m and 1 in 20 "
        "for a going of 10 m; where the going is between these values the gradient may be interpolated.",
        [(R, "K1 2.4"), (M, "should"), (C, "not more than"), (N, "1:12"), (C, "up to"), (N, "2"),
         (U, "m"), (N, "1 in 20"), (N, "10"), (U, "m"), (K, "where"), (M, "may")],
    ),
    (  # AS 1428.1 style: "Clause 4.2.6(a)", "must", "if"
        "Clause 4.2.6(a): A landing must have a minimum length of 1200 mm where the ramp exceeds 9 m "
        "in length, if the gradient is steeper than 1 in 20.",
        [(R, "Clause 4.2.6(a)"), (M, "must"), (C, "minimum"), (N, "1200"), (U, "mm"), (K, "where"),
         (C, "exceeds"), (N, "9"), (U, "m"), (K, "if"), (C, "steeper than"), (N, "1 in 20")],
    ),
    (  # glued units, "shall not exceed", hyphenated spelled number, "is required"
        "Where a room has an area of 9 m2 or greater, at least two windows shall be provided; the cross "
        "slope shall not exceed 2% and thirty-six inches of clear space is required.",
        [(K, "Where"), (N, "9"), (U, "m2"), (C, "or greater"), (C, "at least"), (N, "two"),
         (M, "shall"), (M, "shall"), (C, "not exceed"), (N, "2"), (U, "%"), (N, "thirty-six"),
         (U, "inches"), (M, "is required")],
    ),
    (  # "must not be less than" (comparison) vs "shall not be used" (prohibition); "32in."
        "Section 1011.2 Width. Stairways must not be less than 44 inches (1118 mm) wide; handrails may "
        "project not more than 4.5in. on each side, and stairways shall not be used for storage.",
        [(R, "Section 1011.2"), (M, "must"), (C, "not be less than"), (N, "44"), (U, "inches"),
         (N, "1118"), (U, "mm"), (M, "may"), (C, "not more than"), (N, "4.5"), (U, "in"),
         (M, "shall not")],
    ),
]


@pytest.mark.parametrize(("text", "expected"), REAL_FORMAT, ids=[t[:24] for t, _ in REAL_FORMAT])
def test_real_format_clauses(text, expected):
    spans = tag(text)
    assert [(s.category, s.text) for s in spans] == expected
    for s in spans:
        assert text[s.start:s.end] == s.text
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("See Sections 1011.5 and 1011.6 and § 1910.23(c).",
         [(R, "Sections 1011.5"), (R, "1011.6"), (R, "§ 1910.23(c)")]),
        ("Comply with 29 CFR 1910.23, ICC A117.1 and NFPA 13.",
         [(R, "29 CFR 1910.23"), (R, "ICC A117.1"), (R, "NFPA 13")]),
        ("1 in each stair", [(N, "1")]),  # "in" is a unit only after a number with no article
        ("The slope is 1:48 max. (2%) and the wait 5 min.", [(N, "1:48"), (C, "max."), (N, "2"),
                                                             (U, "%"), (N, "5"), (U, "min")]),
        ("Handrails shall be provided on both sides.", [(M, "shall")]),  # not a condition
        ("RULE 1011.5.2: stair.riser_height <= 178 mm IF stair.egress = true",
         [(R, "RULE 1011.5.2"), (C, "<="), (N, "178"), (U, "mm"), (K, "IF"), (C, "=")]),
        ("Reg. 38(5) Treads must be within 9 and 11 in.",
         [(R, "Reg. 38(5)"), (M, "must"), (C, "within"), (N, "9"), (N, "11"), (U, "in")]),
        ("[1089.5] The rise shall be kept within the building.", [(R, "1089.5"), (M, "shall")]),
        ("1.5 m wide", [(N, "1.5"), (U, "m")]),  # a quantity, not a heading number
        ("", []),
    ],
)
def test_edge_cases(text, expected):
    assert [(s.category, s.text) for s in tag(text)] == expected


def test_category_at_uses_largest_overlap():
    text = "Doors shall be 815mm wide"
    spans = tag(text)
    assert CATEGORIES[-1] == "OTHER" and set(CATEGORIES) >= {s.category for s in spans}
    assert category_at(spans, 5, 11) == "MODAL"  # " shall" with its leading space
    assert category_at(spans, 15, 18) == "NUMBER"
    assert category_at(spans, 17, 20) == "UNIT"  # "5mm": two characters of unit, one of number
    assert category_at(spans, 16, 20) == "NUMBER"  # "15mm": a tie goes to the earlier span
    assert category_at(spans, 0, 5) == "OTHER"
    assert category_at(spans, 20, 20) == "OTHER"
    assert category_at([Span(0, 2, "NUMBER", "12"), Span(2, 4, "UNIT", "mm")], 1, 3) == "NUMBER"


def test_tag_file_and_cli_roundtrip(tmp_path, capsys):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps({"id": "a", "text": "Width shall be not less than 900 mm."}) + "\n\n"
                   + json.dumps({"text": "Nothing here"}) + "\n")
    out = tmp_path / "out.jsonl"
    assert main(["categories", "--input", str(src), "--out", str(out)]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[0]["id"] == "a" and rows[1]["spans"] == []
    assert [s["category"] for s in rows[0]["spans"]] == ["MODAL", "COMPARATOR", "NUMBER", "UNIT"]
    assert rows[0]["spans"][2] == {"start": 29, "end": 32, "category": "NUMBER", "text": "900"}
    capsys.readouterr()
    assert main(["categories", "--input", str(src)]) == 0
    assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == rows
    assert tag_file(src)["spans"]["UNIT"] == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [('{"text": "a"}\n{"text": \n', ":2: malformed JSON"),
     ('{"text": "a"}\n\n{"text": 3}\n', ":3: field 'text': input should be a valid string, got number"),
     ('{"txt": "a"}\n', ":1: field 'text': missing"),
     ('{"text": "a\u2028b"}\n{"text": NaN}\n', ":2: NaN is not JSON"),
     ("\n\n", ": empty file")],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, content, message):
    src = tmp_path / "in.jsonl"
    src.write_text(content)
    out = tmp_path / "out.jsonl"
    assert main(["categories", "--input", str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "in.jsonl" in err and "\n" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]


def test_bundled_clauses_have_their_rule_id_tagged():
    """The generator writes many id styles; the tagger must find the one the reference rule names."""
    from tunelens.data.compliance.dataset import bundled_rows
    from tunelens.data.compliance.rules import parse_rule

    rows = [r for r in bundled_rows(seed=0) if r["source"] == "generated"]
    found = 0
    for row in rows:
        rule_id = parse_rule(row["completion"]).id
        ids = [s.text for s in tag(row["prompt"]) if s.category == "RULE_ID"]
        found += any(rule_id.replace("'", '"') == t or rule_id in t for t in ids)
    assert found / len(rows) >= 0.98
