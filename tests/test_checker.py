"""Executing rules on designs: units, slopes, conditions, exceptions, sample designs, agreement."""

import pytest

from tunelens.data.compliance.checker import Verdict, check, execution_agreement, sample_designs
from tunelens.data.compliance.rules import parse_rule


def stair(**props):
    return {"building": {}, "elements": [{"type": "stair", "id": "s1", **props}]}


def q(value, unit=None):
    return {"value": value, "unit": unit} if unit else {"value": value}


def test_verdict_is_a_str_enum():
    assert Verdict.PASS == "PASS" and Verdict("NOT_APPLICABLE") is Verdict.NOT_APPLICABLE


def test_units_are_converted_32_in_against_815_mm():
    rule = parse_rule("RULE 404.2.3: door.clear_width >= 815 mm")
    door = lambda w: {"elements": [{"type": "door", "id": "d", "clear_width": w}]}  # noqa: E731
    assert check(rule, door(q(32, "in"))) is Verdict.FAIL  # 812.8 mm
    assert check(rule, door(q(32.1, "in"))) is Verdict.PASS  # 815.3 mm
    assert check(rule, door(q(0.815, "m"))) is Verdict.PASS
    assert check(rule, door(q(2.7, "ft"))) is Verdict.PASS  # 823 mm
    assert check(rule, door(q(80, "cm"))) is Verdict.FAIL
    assert check(rule, door(q(815, "s"))) is Verdict.NOT_APPLICABLE  # a time is not a width
    assert check(rule, door(815)) is Verdict.NOT_APPLICABLE  # a bare number is not a length


def test_slopes_ratio_percent_and_degrees():
    rule = parse_rule("RULE 405.2: ramp.slope <= 1:12")
    ramp = lambda s: {"elements": [{"type": "ramp", "id": "r", "slope": s}]}  # noqa: E731
    assert check(rule, ramp(q(8.33, "%"))) is Verdict.PASS
    assert check(rule, ramp(q(8.4, "%"))) is Verdict.FAIL
    assert check(rule, ramp("1:12")) is Verdict.PASS
    assert check(rule, ramp("1:11")) is Verdict.FAIL
    assert check(rule, ramp(0.05)) is Verdict.PASS  # a bare fraction
    assert check(rule, ramp(q(4.7, "deg"))) is Verdict.PASS  # tan 4.7 deg = 0.0822
    assert check(rule, ramp(q(5, "deg"))) is Verdict.FAIL  # tan 5 deg = 0.0875
    pct = parse_rule("RULE 405.2: ramp.slope <= 8.33 %")
    assert check(pct, ramp("1:12")) is Verdict.PASS and check(pct, ramp("1:11")) is Verdict.FAIL


def test_other_units_forces_light_time_area():
    cases = [
        ("RULE 1: door.opening_force <= 22.2 N", q(5, "lbf"), Verdict.PASS),
        ("RULE 1: door.opening_force <= 22.2 N", q(5.1, "lbf"), Verdict.FAIL),
        ("RULE 1: guard.load >= 0.89 kN", q(200, "lbf"), Verdict.PASS),
        ("RULE 1: room.illuminance >= 11 lux", q(1, "fc"), Verdict.FAIL),  # 10.76 lux
        ("RULE 1: room.illuminance >= 10 lux", q(1, "fc"), Verdict.PASS),
        ("RULE 1: wall.fire_resistance >= 1 h", q(60, "min"), Verdict.PASS),
        ("RULE 1: wall.fire_resistance >= 1 h", q(45, "min"), Verdict.FAIL),
        ("RULE 1: room.floor_area >= 6.5 m2", q(70, "ft2"), Verdict.PASS),
        ("RULE 1: room.floor_area >= 6.5 m2", q(69, "ft2"), Verdict.FAIL),
        ("RULE 1: room.air >= 10 L/s", q(20, "cfm"), Verdict.FAIL),
    ]
    for text, value, expected in cases:
        rule = parse_rule(text)
        element, prop = rule.requirements[0].element, rule.requirements[0].property
        design = {"elements": [{"type": element, "id": "x", prop: value}]}
        assert check(rule, design) is expected, text


def test_conditions_and_exceptions_make_it_not_applicable():
    rule = parse_rule(
        'RULE "Clause 4.2.6(a)": door.clear_width >= 815 mm IF door.accessible = true '
        "UNLESS building.sprinklered = true"
    )

    def design(width, accessible, sprinklered):
        return {
            "building": {"sprinklered": sprinklered},
            "elements": [
                {"type": "door", "id": "d", "clear_width": q(width, "mm"), "accessible": accessible}
            ],
        }

    assert check(rule, design(800, True, False)) is Verdict.FAIL
    assert check(rule, design(900, True, False)) is Verdict.PASS
    assert check(rule, design(800, False, False)) is Verdict.NOT_APPLICABLE  # condition unmet
    assert check(rule, design(800, True, True)) is Verdict.NOT_APPLICABLE  # exception applies
    missing = {
        "building": {"sprinklered": False},
        "elements": [{"type": "door", "id": "d", "clear_width": q(800, "mm")}],
    }
    assert check(rule, missing) is Verdict.NOT_APPLICABLE  # unknown condition is not met


def test_exception_needs_all_its_atoms():
    rule = parse_rule("RULE 1: stair.width >= 1 m UNLESS stair.existing = true AND building.stories < 3")
    d = stair(width=q(0.8, "m"), existing=True)
    d["building"]["stories"] = 5
    assert check(rule, d) is Verdict.FAIL
    d["building"]["stories"] = 2
    assert check(rule, d) is Verdict.NOT_APPLICABLE


def test_counts_booleans_words_and_ranges():
    assert (
        check(
            parse_rule("RULE 1: story.exits >= 2 IF story.occupant_load > 49"),
            {"elements": [{"type": "story", "id": "1", "exits": 1, "occupant_load": 50}]},
        )
        is Verdict.FAIL
    )
    assert (
        check(
            parse_rule("RULE 1: story.exits >= 2 IF story.occupant_load > 49"),
            {"elements": [{"type": "story", "id": "1", "exits": 1, "occupant_load": 49}]},
        )
        is Verdict.NOT_APPLICABLE
    )
    assert check(parse_rule("RULE 1: stair.open_risers = false"), stair(open_risers=True)) is Verdict.FAIL
    assert (
        check(parse_rule("RULE 1: building.occupancy = assembly"), {"building": {"occupancy": "assembly"}})
        is Verdict.PASS
    )
    between = parse_rule("RULE 1: stair.riser_height BETWEEN 4 in AND 7 in")
    assert check(between, stair(riser_height=q(178, "mm"))) is Verdict.PASS  # "7 inches (178 mm)"
    assert check(between, stair(riser_height=q(179, "mm"))) is Verdict.FAIL
    assert check(between, stair(riser_height=q(4, "in"))) is Verdict.PASS
    assert check(between, stair(riser_height=q(3.9, "in"))) is Verdict.FAIL


def test_every_subject_element_is_checked():
    rule = parse_rule("RULE 1: stair.riser_height <= 178 mm")
    design = {
        "elements": [
            {"type": "stair", "id": "a", "riser_height": q(170, "mm")},
            {"type": "stair", "id": "b", "riser_height": q(190, "mm")},
            {"type": "door", "id": "d"},
        ]
    }
    assert check(rule, design) is Verdict.FAIL
    assert check(rule, {"elements": [{"type": "door", "id": "d"}]}) is Verdict.NOT_APPLICABLE


def test_strict_and_inclusive_comparators_differ_at_the_limit():
    d = stair(riser_height=q(178, "mm"))
    assert check(parse_rule("RULE 1: stair.riser_height <= 178 mm"), d) is Verdict.PASS
    assert check(parse_rule("RULE 1: stair.riser_height < 178 mm"), d) is Verdict.FAIL
    assert check(parse_rule("RULE 1: stair.riser_height <= 7.00787 in"), d) is Verdict.PASS


@pytest.mark.parametrize(
    "text",
    [
        "RULE 1011.5.2: stair.riser_height <= 178 mm",
        'RULE "Clause 4.2.6(a)": door.clear_width >= 815 mm IF door.accessible = true '
        "UNLESS building.sprinklered = true",
        "RULE 405.2: ramp.slope <= 1:12",
        "RULE 504.2: stair.riser_height BETWEEN 100 mm AND 180 mm AND stair.tread_depth >= 280 mm",
        "RULE 2: story.exits >= 2 IF story.occupant_load > 49",
        "RULE 3: building.occupancy = assembly IF building.stories >= 3",
        "RULE 4: guard.opening_size < 102 mm",
    ],
)
def test_sample_designs_cover_each_verdict_and_are_checked(text):
    rule = parse_rule(text)
    samples = sample_designs(rule)
    verdicts = [v for _, v in samples]
    assert Verdict.PASS in verdicts and Verdict.FAIL in verdicts
    if rule.conditions or rule.exceptions:
        assert Verdict.NOT_APPLICABLE in verdicts
    for design, verdict in samples:
        assert check(rule, design) is verdict
    assert sample_designs(rule) == samples  # deterministic


def test_execution_agreement_identical_and_equivalent_rules():
    ref = parse_rule("RULE 405.2: ramp.slope <= 1:12 IF ramp.accessible = true")
    assert execution_agreement(ref, ref) == 1.0
    assert (
        execution_agreement(parse_rule("RULE 9: ramp.slope <= 8.3333 % IF ramp.accessible = true"), ref)
        == 1.0
    )


@pytest.mark.parametrize(
    "pred",
    [
        "RULE 405.2: ramp.slope >= 1:12 IF ramp.accessible = true",  # comparator flipped
        "RULE 405.2: ramp.slope <= 1:8 IF ramp.accessible = true",  # value too lax
        "RULE 405.2: door.slope <= 1:12 IF ramp.accessible = true",  # other element
        "RULE 405.2: ramp.width <= 1:12 IF ramp.accessible = true",  # other property
        "RULE 405.2: ramp.slope <= 12 mm IF ramp.accessible = true",  # incomparable unit
    ],
)
def test_execution_agreement_is_low_for_wrong_rules(pred):
    ref = parse_rule("RULE 405.2: ramp.slope <= 1:12 IF ramp.accessible = true")
    assert execution_agreement(parse_rule(pred), ref) <= 0.6


def test_dropping_a_condition_or_comparator_strictness_is_noticed():
    ref = parse_rule("RULE 1: stair.riser_height <= 178 mm IF stair.occupant_load > 50")
    assert execution_agreement(parse_rule("RULE 1: stair.riser_height <= 178 mm"), ref) < 1.0
    assert (
        execution_agreement(
            parse_rule("RULE 1: stair.riser_height < 178 mm IF stair.occupant_load > 50"), ref
        )
        < 1.0
    )
    assert (
        execution_agreement(
            parse_rule("RULE 1: stair.riser_height <= 178 mm IF stair.occupant_load >= 50"), ref
        )
        < 1.0
    )


def test_execution_agreement_never_raises_on_odd_predictions():
    ref = parse_rule("RULE 1: stair.riser_height <= 178 mm UNLESS building.sprinklered = true")
    for text in [
        "RULE 1: stair.riser_height = assembly",
        "RULE 1: building.sprinklered <= 5 kN",
        "RULE 1: stair.riser_height BETWEEN 1 deg AND 2 deg",
        'RULE 1: x.y != "a b"',
        "RULE 1: stair.riser_height <= 1 ach IF building.sprinklered = 3",
    ]:
        score = execution_agreement(parse_rule(text), ref)
        assert 0.0 <= score < 1.0


def test_check_rejects_a_non_object_design():
    with pytest.raises(ValueError):
        check(parse_rule("RULE 1: a.b = true"), ["not", "a", "design"])
