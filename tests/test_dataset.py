"""The bundled dataset: size, coverage, determinism, and every reference rule parses and executes."""

import json
from collections import Counter
from pathlib import Path

import pytest

from tunelens.data.compliance import dataset
from tunelens.data.compliance.checker import Verdict, check, sample_designs
from tunelens.data.compliance.generator import generate
from tunelens.data.compliance.rules import parse_rule
from tunelens.data.compliance.samples import scenarios


@pytest.fixture(scope="module")
def rows():
    return dataset.bundled_rows(seed=0)


def test_size_topics_and_sources(rows):
    assert len(rows) >= 600
    topics = Counter(r["topic"] for r in rows)
    assert len(topics) >= 12
    assert set(topics) <= set(dataset.TOPICS)
    generated_topics = Counter(r["topic"] for r in rows if r["source"] == "generated")
    assert len(generated_topics) >= 12 and min(generated_topics.values()) >= 40
    sources = Counter(r["source"] for r in rows)
    assert set(sources) == {"generated", "handwritten"} and sources["handwritten"] >= 80


def test_row_schema_and_unique_ids(rows):
    for r in rows:
        assert set(r) == set(dataset.ROW_KEYS)
        assert isinstance(r["holdout"], bool) and r["prompt"].strip() and r["completion"].startswith("RULE ")
    assert len({r["id"] for r in rows}) == len(rows)
    assert len({r["prompt"] for r in rows}) == len(rows)


def test_holdout_rows_are_handwritten_and_reach_unseen_topics(rows):
    holdout = [r for r in rows if r["holdout"]]
    assert len(holdout) >= 30
    assert all(r["source"] == "handwritten" for r in holdout)
    generated_topics = {r["topic"] for r in rows if r["source"] == "generated"}
    unseen = {r["topic"] for r in holdout} - generated_topics
    assert len(unseen) >= 5
    assert all(r["holdout"] for r in rows if r["topic"] in unseen)


def test_deterministic_for_a_seed_and_varies_across_seeds(rows):
    assert dataset.bundled_rows(seed=0) == rows
    other = generate(60, seed=1)
    assert other == generate(60, seed=1)
    assert [r["prompt"] for r in other] != [r["prompt"] for r in generate(60, seed=0)]


def test_every_completion_parses_canonically_and_executes(rows):
    for r in rows:
        rule = parse_rule(r["completion"])
        assert rule.text == r["completion"], r["id"]
        built = scenarios(rule)
        for design, verdict in built:  # every designed verdict is the checker's verdict
            assert check(rule, design) is verdict, (r["id"], verdict, design)
        verdicts = {v for _, v in sample_designs(rule)}
        assert {Verdict.PASS, Verdict.FAIL} <= verdicts, r["id"]
        if rule.conditions or rule.exceptions:
            assert Verdict.NOT_APPLICABLE in verdicts, r["id"]


def test_generated_clauses_carry_their_rule_id_and_numbers(rows):
    for r in rows:
        if r["source"] != "generated":
            continue
        rule = parse_rule(r["completion"])
        assert rule.id in r["prompt"], r["id"]


def test_phrasing_varies_within_topics(rows):
    generated = [r for r in rows if r["source"] == "generated"]
    openings = Counter(" ".join(r["prompt"].split()[1:4]) for r in generated)
    assert openings.most_common(1)[0][1] < len(generated) * 0.05
    has = lambda s: sum(s in r["prompt"] for r in generated)  # noqa: E731
    assert has("(") > 100 and has("percent") + has("%") > 20 and has(":1") + has("1:") > 5
    completions = [r["completion"] for r in generated]
    for feature in (" IF ", " UNLESS ", " BETWEEN ", " AND stair.", " deg", " ratio", " = true"):
        if feature == " ratio":
            assert any(":" in c.split(": ", 1)[1] for c in completions)
        else:
            assert any(feature in c for c in completions), feature


# --- the hand-written clauses, checked against the public texts (docs/dataset.md) ---------------


def test_every_handwritten_row_has_a_check_record():
    checks = dataset.handwritten_checks()
    assert [c["id"] for c in checks] == [r["id"] for r in dataset.handwritten_rows()]
    for c in checks:
        assert c["status"] in dataset.CHECK_STATUSES and c["kind"] in dataset.CHECK_KINDS, c["id"]
        assert c["source"].startswith(("https://", "http://", "github:")), c["id"]
        assert c["status"] == "verified" or c["note"].strip(), c["id"]
    assert {c["status"] for c in checks} <= set(dataset.CHECK_STATUSES)


def test_a_check_record_without_a_valid_status_or_a_reason_is_a_file_line_error(tmp_path):
    from tunelens.contracts import read_rows
    from tunelens.errors import TunelensError

    good = {"id": "x", "topic": "ramps", "cites": "ADA 405.2", "prompt": "405.2 Slope. Steep.",
            "completion": "RULE 405.2: ramp.slope <= 1:12",
            "checked": {"status": "verified", "source": "https://example.org", "kind": "official"}}
    for bad, words in ((dict(good["checked"], status="maybe"), "status"),
                       (dict(good["checked"], status="corrected"), "needs a note"),
                       (None, "checked")):
        path = tmp_path / "rows.jsonl"
        row = {k: v for k, v in good.items() if k != "checked"}
        if bad is not None:
            row["checked"] = bad
        path.write_text(json.dumps(good) + "\n" + json.dumps(dict(row, id="y")) + "\n")
        with pytest.raises(TunelensError) as err:
            read_rows(path, dataset.HandwrittenRow)
        assert f"{path}:2" in str(err.value) and words in str(err.value) and "\n" not in str(err.value)


def test_cited_section_prompt_and_rule_id_agree():
    """A correction must change the citation, the clause and the rule together."""
    rules = {r["id"]: r for r in dataset.handwritten_rows()}
    for c in dataset.handwritten_checks():
        body, section = c["cites"].split(" ", 1)
        assert body in ("ADA", "OSHA"), c["id"]
        row = rules[c["id"]]
        assert parse_rule(row["completion"]).id in (section, f"29 CFR {section}"), c["id"]
        assert section in row["prompt"], c["id"]


def test_corrected_rows_still_parse_and_execute():
    rules = {r["id"]: r for r in dataset.handwritten_rows()}
    corrected = [c["id"] for c in dataset.handwritten_checks() if c["status"] == "corrected"]
    assert corrected
    for rid in corrected:
        rule = parse_rule(rules[rid]["completion"])
        assert rule.text == rules[rid]["completion"], rid
        assert {Verdict.PASS, Verdict.FAIL} <= {v for _, v in sample_designs(rule)}, rid


def test_build_card_states_the_check_counts_of_the_rows(tmp_path):
    from tunelens.config import DataConfig
    from tunelens.data.build import build_bundled

    out = tmp_path / "data"
    card = build_bundled(out, DataConfig())
    counts = Counter(c["status"] for c in dataset.handwritten_checks())
    written = json.loads((out / "data_card.json").read_text())["handwritten_check"]
    assert written == card["handwritten_check"]
    assert {s: written[s] for s in dataset.CHECK_STATUSES} == {s: counts[s] for s in dataset.CHECK_STATUSES}
    assert written["rows"] == sum(counts.values()) == len(dataset.handwritten_rows())
    assert written["unverified_ids"] == [c["id"] for c in dataset.handwritten_checks()
                                         if c["status"] == "unverified"]
    assert any(f"{written['corrected']} corrected" in note for note in card["notes"])
    doc = " ".join((Path(__file__).parents[1] / "docs" / "dataset.md").read_text().split())
    assert all(f"| {s} | {counts[s]} |" in doc for s in dataset.CHECK_STATUSES)  # the page states them too
