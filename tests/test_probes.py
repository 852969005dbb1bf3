"""Counterfactual probes: the edits, the scoring, and the expectations on a model trained to meet them."""

from __future__ import annotations

import random
import re

import pytest

from tunelens.explain.probes import (
    JURISDICTIONS,
    KINDS,
    edited_share,
    make_edits,
    number_edit,
    occupancy_edit,
    person_edit,
    run_probes,
    section_edit,
    unit_edit,
)

ELEMENTS = [("ramp", "clear_width", "the clear width of a ramp"),
            ("door", "clear_width", "the clear opening of a door")]
PLACES = list(JURISDICTIONS)
VALUES = list(range(100, 2001, 100))


def pair(rng: random.Random, value: int | None = None) -> tuple[str, str]:
    thing, prop, words = rng.choice(ELEMENTS)
    value = value or rng.choice(VALUES)
    return (f"In {rng.choice(PLACES)}, {words} shall be at least {value} mm.",
            f"RULE 1: {thing}.{prop} >= {value} mm")


def copier(clauses: list[str]) -> list[str]:
    """A rule writer that reads the clause as a careful person would."""
    out = []
    for clause in clauses:
        thing = next(t for t, _, w in ELEMENTS if w in clause)
        prop = next(p for t, p, _ in ELEMENTS if t == thing)
        value, unit = re.search(r"at least ([\d.]+) (mm|in)", clause).groups()
        out.append(f"RULE 1: {thing}.{prop} >= {value} {unit}")
    return out


def test_edits_restate_renumber_and_rename():
    rng = random.Random(0)
    unit = unit_edit("The clear width shall be 915 mm minimum.", rng)
    assert unit.after == "The clear width shall be 36.02 in minimum."  # pint: 915 mm = 36.024 in
    number = number_edit("Doors shall be 36 inches (915 mm) wide.", rng)
    assert number.after == "Doors shall be 72 inches (1830 mm) wide."
    section = section_edit("405.5 Clear Width. Ramps shall be 915 mm wide.", rng)
    assert section.after.startswith("405.") and not section.after.startswith("405.5 ")
    occupancy = occupancy_edit("In Group A (assembly) occupancies, aisles shall be 1100 mm.", rng)
    assert "(assembly)" not in occupancy.after and re.search(r"Group [A-Z] \(\w+\)", occupancy.after)
    person = person_edit("Seats for wheelchair users shall be 900 mm wide.", rng)
    assert person.after == "Seats for people shall be 900 mm wide."
    # the edited spans point at the edit on both sides
    s, e = number.spans_after[0]
    assert number.after[s:e] == "72"
    from tunelens.data.compliance.rules import parse_rule

    base = parse_rule("RULE 405.5: ramp.clear_width >= 915 mm IF building.occupancy = assembly")
    assert section.expect(base).id == section.after.split()[0]
    assert "building.occupancy = assembly" not in occupancy.expect(base).text
    assert edited_share([(0, 2), (3, 5)], [1.0, -3.0], [(3, 4)]) == 0.75


def test_scoring_tells_a_reader_from_a_writer_that_ignores_numbers():
    rng = random.Random(1)
    clauses = [pair(rng, rng.choice(VALUES[:10]))[0] for _ in range(12)]
    careful = run_probes(clauses, copier, ["number", "unit", "jurisdiction"], samples=200)["kinds"]
    assert all(careful[k]["passed"] and careful[k]["rate"] == 1.0 for k in careful)
    assert careful["number"]["verdict_changed"] == 1.0 and careful["unit"]["verdict_changed"] == 0.0

    remembered: dict[str, str] = {}

    def ignorer(batch):  # the first rule seen for a clause's words, whatever its numbers say
        return [remembered.setdefault(re.sub(r"\d+|In \w+,", "#", c), copier([c])[0]) for c in batch]

    blind = run_probes(clauses, ignorer, ["number", "jurisdiction"], samples=200)["kinds"]
    assert blind["number"]["rate"] == 0.0 and not blind["number"]["passed"]
    assert blind["number"]["examples"][0]["correct"] is False
    assert blind["jurisdiction"]["passed"]
    with pytest.raises(Exception, match="unknown probe kind"):
        make_edits(clauses, ["gender"])


@pytest.fixture(scope="module")
def trained():
    return train_copier()


def train_copier(steps: int = 100, lr: float = 4e-3):
    """A micro Llama trained (about 8 s, one thread) to copy the clause's number into its rule and
    to ignore the place name; and the same shape untrained."""
    import torch

    from tunelens.models.zoo import new_llama, train_tokenizer

    torch.set_num_threads(1)
    rng = random.Random(0)
    rows = [pair(rng) for _ in range(400)]
    tokenizer = train_tokenizer([f"{c} => {r}" for c, r in rows], vocab_size=400)
    model = new_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=0)
    untrained = new_llama(tokenizer, hidden_size=64, num_layers=2, num_heads=4, seed=1)
    enc = [tokenizer(f"{c} => {r}{tokenizer.eos_token}")["input_ids"] for c, r in rows]
    starts = [len(tokenizer(f"{c} =>")["input_ids"]) for c, _ in rows]
    width = max(map(len, enc))
    ids = torch.full((len(enc), width), tokenizer.pad_token_id)
    labels = torch.full((len(enc), width), -100)
    mask = torch.zeros((len(enc), width), dtype=torch.long)
    for i, (e, k) in enumerate(zip(enc, starts, strict=True)):
        ids[i, :len(e)] = torch.tensor(e)
        mask[i, :len(e)] = 1
        labels[i, k:len(e)] = ids[i, k:len(e)]  # the loss on the rule only
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        batch = torch.randint(0, len(enc), (32,), generator=gen)
        loss = model(input_ids=ids[batch], attention_mask=mask[batch], labels=labels[batch]).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval(), untrained.eval(), tokenizer


def test_probes_pass_on_a_model_trained_to_follow_numbers_and_fail_untrained(trained):
    from tunelens.config import GenerationConfig
    from tunelens.explain.probe_run import model_attributor, model_generator

    model, untrained, tokenizer = trained
    rng = random.Random(7)
    clauses = [pair(rng, rng.choice(VALUES[:10]))[0] for _ in range(10)]

    def render(clause):
        return f"{clause} =>"

    config = GenerationConfig(max_new_tokens=20)
    good = run_probes(clauses, model_generator(model, tokenizer, render, config),
                      ["number", "jurisdiction"], samples=200,
                      attributor=model_attributor(model, tokenizer, render, baseline="auto"))["kinds"]
    assert good["number"]["passed"] and good["jurisdiction"]["passed"], good
    for kind in good.values():  # every scored probe was attributed before and after its edit
        assert 0 < kind["edited_share_before"] < 1 and 0 < kind["edited_share_after"] < 1
    bad = run_probes(clauses, model_generator(untrained, tokenizer, render, config),
                     ["number", "jurisdiction"], samples=200)["kinds"]
    assert not bad["number"]["passed"] and not bad["jurisdiction"]["passed"]


def test_cli_lists_every_kind_and_refuses_unknown_ones(tmp_path, capsys):
    import inspect

    from tunelens.cli import main
    from tunelens.cli.probe import probe_cmd

    default = inspect.signature(probe_cmd).parameters["kinds"].default.default
    assert default.split(",") == list(KINDS)
    data = tmp_path / "d.jsonl"
    data.write_text('{"id": "1", "prompt": "x"}\n')
    code = main(["probe", "--model", "m", "--data", str(data), "--out", str(tmp_path / "p.json"),
                 "--kinds", "number,gender"])
    assert code == 2 and "unknown probe kind" in capsys.readouterr().err
    assert not (tmp_path / "p.json").exists()


def test_probe_verb_writes_the_report(micro_model_dir, tmp_path):
    import json

    from tunelens.cli import main

    data = tmp_path / "clauses.jsonl"
    data.write_text("".join(json.dumps({"id": str(i), "prompt": pair(random.Random(i))[0]}) + "\n"
                            for i in range(3)))
    out = tmp_path / "probe.json"
    assert main(["probe", "--model", str(micro_model_dir), "--data", str(data), "--out", str(out),
                 "--kinds", "number,jurisdiction", "--max-examples", "2", "--method", "none",
                 "--max-new-tokens", "12", "--anchors", "1", "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["examples"] == 2 and set(report["kinds"]) == {"number", "jurisdiction"}
    assert len(report["probes"]) == 4 and all(p["rule_before"] is not None for p in report["probes"])
    assert report["kinds"]["number"]["passed"] is False  # an untrained model writes no rule
    assert "does not parse" in report["anchors"][0]["error"]  # so it has nothing to anchor
