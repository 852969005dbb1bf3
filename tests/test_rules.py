"""The rule language: parsing each shape, readable syntax errors, fields and field matching."""

import pytest

from tunelens.data.compliance.rules import RuleSyntaxError, field_matches, parse_rule, try_parse


@pytest.mark.parametrize(
    "text",
    [
        "RULE 1011.5.2: stair.riser_height <= 178 mm",
        'RULE "Clause 4.2.6(a)": door.clear_width >= 815 mm IF door.accessible = true '
        "UNLESS building.sprinklered = true",
        "RULE 405.2: ramp.slope <= 1:12",
        "RULE 504.2: stair.riser_height BETWEEN 100 mm AND 180 mm AND stair.tread_depth >= 280 mm",
        "RULE 1910.23(b)(1): ladder.rung_spacing BETWEEN 10 in AND 14 in",
        'RULE "K1 2.4": story.exits >= 2 IF story.occupant_load > 49',
        "RULE 504.3: stair.open_risers = false",
        "RULE 9: building.occupancy = assembly IF building.stories >= 3 "
        "UNLESS a.b = true AND c.d < 2 UNLESS e.f != x",
        'RULE R1: room.label = "R-2"',
        "RULE 7: fire_door.fire_protection_rating >= 90 min",
    ],
)
def test_canonical_text_round_trips(text):
    rule = parse_rule(text)
    assert rule.text == text
    assert parse_rule(rule.text) == rule


def test_parse_normalises_spacing_quotes_and_unit_aliases():
    rule = parse_rule('  RULE   "1011.5.2" :  stair.riser_height<=178.0   millimeters  ')
    assert rule.text == "RULE 1011.5.2: stair.riser_height <= 178 mm"


def test_structure_of_a_conditional_compound_rule():
    rule = parse_rule(
        "RULE X: door.clear_width >= 32 in AND door.height >= 80 in IF door.accessible = true "
        "UNLESS building.sprinklered = true AND building.stories < 3 UNLESS door.existing = true"
    )
    assert [a.path for a in rule.requirements] == ["door.clear_width", "door.height"]
    assert [a.path for a in rule.conditions] == ["door.accessible"]
    assert [[a.path for a in e] for e in rule.exceptions] == [
        ["building.sprinklered", "building.stories"],
        ["door.existing"],
    ]
    assert rule.requirements[0].value.number == 32 and rule.requirements[0].value.unit == "in"


def test_fields_of_simple_and_compound_rules():
    f = parse_rule('RULE "Clause 4.2.6(a)": door.clear_width >= 815 mm IF door.accessible = true').fields()
    assert f == {
        "id": "Clause 4.2.6(a)",
        "element": "door",
        "property": "clear_width",
        "comparator": ">=",
        "value": "815",
        "unit": "mm",
        "conditions": "IF door.accessible = true",
    }
    g = parse_rule(
        "RULE 1: stair.riser_height BETWEEN 100 mm AND 180 mm AND stair.tread_depth >= 280 mm"
        " UNLESS stair.existing = true"
    ).fields()
    assert (g["comparator"], g["value"], g["unit"]) == ("between", "100..180", "mm")
    assert g["conditions"] == "AND stair.tread_depth >= 280 mm UNLESS stair.existing = true"
    r = parse_rule("RULE 2: ramp.slope <= 1:12").fields()
    assert (r["value"], r["unit"]) == ("1:12", "ratio")


def test_conditions_field_ignores_order():
    a = parse_rule("RULE 1: x.y <= 5 mm IF a.b = true AND c.d > 3")
    b = parse_rule("RULE 1: x.y <= 5 mm IF c.d > 3 AND a.b = true")
    assert a.fields()["conditions"] == b.fields()["conditions"]
    assert field_matches(a, b)["conditions"]


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("RULE 1: stair.riser_height <= 178 mmm", "unknown unit 'mmm'"),
        ("RULE 1: stair.riser_height <=", "ends too early"),
        ("RULE 1 stair.riser_height <= 1", "expected ':'"),
        ("RULE 1: stair.riser_height << 1", "column 29"),
        ("RULE 1: stair.open = yes please", "unexpected"),
        ("RULE 1: stair.riser_height < true", "needs a number"),
        ("RULE 1: s.r BETWEEN 5 mm AND 2 mm", "reversed"),
        ("RULE 1: s.r BETWEEN 5 mm AND 2 s", "not comparable"),
        ("RULE 1: s.r <= 5 mm IF", "expected a name"),
        ("rule 1: x.y = 1", "expected 'RULE'"),
        ("RULE 1: Stair.r = 1", "unexpected 'Stair'"),
        ("RULE 1: s.r <= 1:0", "zero run"),
        ("", "empty rule"),
        ("RULE 1: s.r = 1\nRULE 2: s.r = 2", "one line"),
    ],
)
def test_syntax_errors_are_readable(text, fragment):
    with pytest.raises(RuleSyntaxError) as info:
        parse_rule(text)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in str(info.value)
    assert try_parse(text) is None


def test_field_matches_converts_units_to_the_reference():
    ref = parse_rule("RULE 404.2.3: door.clear_width >= 815 mm")
    same_in_inches = parse_rule("RULE 404.2.3: door.clear_width >= 32.087 in")
    m = field_matches(same_in_inches, ref)
    assert m["value"] and not m["unit"] and m["comparator"] and m["id"]
    off = field_matches(parse_rule("RULE 404.2.3: door.clear_width >= 32 in"), ref)  # 812.8 mm
    assert not off["value"]
    slope = field_matches(
        parse_rule("RULE 405.2: ramp.slope <= 8.33 %"), parse_rule("RULE 405.2: ramp.slope <= 1:12")
    )
    assert slope["value"] and not slope["unit"]
    degrees = field_matches(
        parse_rule("RULE 1: ramp.slope <= 4.76 deg"), parse_rule("RULE 1: ramp.slope <= 1:12")
    )
    assert degrees["value"]


def test_field_matches_reports_each_wrong_field():
    ref = parse_rule('RULE "Clause 4.2.6(a)": door.clear_width >= 815 mm IF door.accessible = true')
    pred = parse_rule("RULE 4.2.6: door.height < 900 cm")
    m = field_matches(pred, ref)
    assert m == {
        "id": False,
        "element": True,
        "property": False,
        "comparator": False,
        "value": False,
        "unit": False,
        "conditions": False,
    }
    assert all(field_matches(ref, ref).values())


def test_field_matches_between_and_conditions_with_units():
    ref = parse_rule("RULE 1: h.height BETWEEN 865 mm AND 965 mm IF r.rise > 150 mm")
    pred = parse_rule("RULE 1: h.height BETWEEN 86.5 cm AND 96.5 cm IF r.rise > 15 cm")
    m = field_matches(pred, ref)
    assert m["value"] and m["conditions"] and not m["unit"]
    assert not field_matches(parse_rule("RULE 1: h.height >= 865 mm IF r.rise > 150 mm"), ref)["value"]
