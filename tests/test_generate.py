"""Batched generation: equal to one-at-a-time under greedy, stops, sampling, batching, file I/O."""

from __future__ import annotations

import json

import pytest
import torch

from tunelens.config import GenerationConfig
from tunelens.data.templates import render_prompt
from tunelens.errors import TunelensError
from tunelens.infer.batching import encode_prompts, generate_texts, plan_batches
from tunelens.infer.generate import generate_predictions, read_examples
from tunelens.infer.sampling import StopCriteria, truncate_at_stop

CLAUSES = [
    "Stairs.",
    "The clear width of a stair shall be not less than 900 mm where it serves fifty or more people.",
    "Doors shall provide a clear opening of at least 32 inches (815 mm).",
    "Ramps shall have a slope not steeper than 1:12.",
    "Handrails shall be between 865 mm and 965 mm above the stair nosing, measured vertically "
    "from the leading edge of the tread, on both sides of every stair wider than 1100 mm.",
    "Exit access travel distance shall not exceed 60 m.",
]


def _rows(n=len(CLAUSES)):
    return [{"id": f"r{i}", "topic": "t", "source": "generated", "prompt": c,
             "completion": f"RULE {i}"} for i, c in enumerate(CLAUSES[:n])]


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    """Reference: plain ``model.generate`` per prompt, no padding, no stop strings."""
    texts = []
    for ids in encode_prompts(tokenizer, prompts):
        out = model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids),
                             dtype=torch.long), max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tokenizer.pad_token_id)
        texts.append(tokenizer.decode(out[0, len(ids):], skip_special_tokens=True).strip())
    return texts


def test_greedy_batched_equals_one_at_a_time(micro_model):
    model, tokenizer = micro_model
    prompts = [render_prompt(tokenizer, c) for c in CLAUSES]
    lengths = {len(ids) for ids in encode_prompts(tokenizer, prompts)}
    assert len(lengths) >= 4  # the batch really mixes lengths, so left padding is exercised
    reference = _one_at_a_time(model, tokenizer, prompts, 12)
    for batch_size in (16, 4, 1):
        config = GenerationConfig(max_new_tokens=12, stop=[], batch_size=batch_size)
        batched = generate_texts(model, tokenizer, prompts, config)
        assert [g.samples[0] for g in batched] == reference, batch_size
        assert all(len(g.samples) == 1 for g in batched)


def test_stop_string_truncates_and_stops_early(micro_model):
    model, tokenizer = micro_model
    prompts = [render_prompt(tokenizer, c) for c in CLAUSES[:3]]
    free = generate_texts(model, tokenizer, prompts, GenerationConfig(max_new_tokens=16, stop=[]))
    text = free[1].samples[0]
    stop = text[len(text) // 2: len(text) // 2 + 2]  # a string the free output certainly contains
    assert stop and stop in text
    cut = generate_texts(model, tokenizer, prompts, GenerationConfig(max_new_tokens=16, stop=[stop]))
    assert cut[1].samples[0] == text[: text.find(stop)].strip()
    assert cut[1].tokens < free[1].tokens  # generation ended when the stop appeared
    for f, c in zip(free, cut, strict=True):  # every row is cut at its own first stop, if any
        assert c.samples[0] == truncate_at_stop(f.samples[0], [stop]).strip()


def test_stop_ignores_the_prompt_text(micro_model):
    _, tokenizer = micro_model
    prompt = tokenizer("### Rule:\n")["input_ids"]
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    crit = StopCriteria(tokenizer, ["\n\n"], prompt_len=len(prompt), eos_ids=[tokenizer.eos_token_id])
    first = crit(torch.tensor([prompt + newline]), None)
    assert not first.any()  # prompt "\n" + generated "\n" is not a generated blank line
    second = crit(torch.tensor([prompt + newline + newline]), None)
    assert second.all()
    assert crit.final_lengths(2 * len(newline)).tolist() == [2 * len(newline)]


def test_truncate_at_earliest_stop():
    assert truncate_at_stop("a;b\n\nc", ["\n\n", ";"]) == "a"
    assert truncate_at_stop("abc", ["x", ""]) == "abc"


def test_sampling_is_seeded_and_returns_n_samples(micro_model):
    model, tokenizer = micro_model
    prompts = [render_prompt(tokenizer, c) for c in CLAUSES[:3]]
    config = GenerationConfig(max_new_tokens=10, do_sample=True, num_samples=3, top_k=0, stop=[],
                              temperature=1.5, seed=7)
    a = generate_texts(model, tokenizer, prompts, config)
    b = generate_texts(model, tokenizer, prompts, config)
    c = generate_texts(model, tokenizer, prompts, config.model_copy(update={"seed": 8}))
    assert [g.samples for g in a] == [g.samples for g in b]
    assert [g.samples for g in a] != [g.samples for g in c]
    assert all(len(g.samples) == 3 for g in a)
    assert len({s for g in a for s in g.samples}) > 3  # samples differ within a prompt


def test_num_samples_without_sampling_is_rejected():
    with pytest.raises(ValueError, match="do_sample"):
        GenerationConfig(num_samples=2)


def test_plan_batches_bounds_rows_and_tokens():
    lengths = [5, 50, 7, 300, 12, 9, 40, 8]
    batches = plan_batches(lengths, batch_size=3, max_batch_tokens=400, max_new_tokens=10)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    for b in batches:
        assert len(b) <= 3
        assert len(b) == 1 or len(b) * (max(lengths[i] for i in b) + 10) <= 400
    assert batches[0] == [3]  # 300 + 10 tokens leaves no room for a second row
    # the token bound counts every sample: 2 rows x 2 samples x (50 + 10) = 240 > 200
    assert plan_batches([50, 50], 8, 200, 10, num_samples=2) == [[0], [1]]


class _OomAbove:
    """Delegates to a real model but raises OOM for batches larger than ``limit`` rows."""

    def __init__(self, model, limit):
        self.model, self.limit, self.calls = model, limit, []

    def __getattr__(self, name):
        return getattr(self.model, name)

    def generate(self, input_ids, **kwargs):
        self.calls.append(input_ids.shape[0])
        if input_ids.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.model.generate(input_ids=input_ids, **kwargs)


def test_out_of_memory_halves_the_batch(micro_model):
    model, tokenizer = micro_model
    prompts = [render_prompt(tokenizer, c) for c in CLAUSES]
    config = GenerationConfig(max_new_tokens=6, stop=[], batch_size=8)
    expected = generate_texts(model, tokenizer, prompts, config)
    flaky = _OomAbove(model, limit=2)
    got = generate_texts(flaky, tokenizer, prompts, config)
    assert [g.samples for g in got] == [g.samples for g in expected]
    assert flaky.calls[0] == 6 and max(c for c in flaky.calls[1:]) <= 3
    with pytest.raises(TunelensError, match="out of memory"):
        generate_texts(_OomAbove(model, limit=0), tokenizer, prompts[:1], config)


def test_generate_predictions_writes_rows(micro_model_dir, tmp_path):
    data = _write(tmp_path / "test.jsonl", _rows())
    out = tmp_path / "preds" / "run.jsonl"
    summary = generate_predictions(str(micro_model_dir), data, out,
                                   GenerationConfig(max_new_tokens=5, max_examples=4), progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    order = [s["id"] for s in _rows()]
    ids = [r["id"] for r in rows]
    assert len(ids) == 4 and ids == sorted(ids, key=order.index)  # a sample, kept in file order
    sources = {s["id"]: s for s in _rows()}
    for r in rows:
        src = sources[r["id"]]
        assert r["reference"] == src["completion"] and r["prompt"] == src["prompt"]
        assert r["topic"] == "t" and r["source"] == "generated"
        assert isinstance(r["prediction"], str) and "samples" not in r and "retrieved" not in r
        assert r["rendered_prompt"].endswith(f"{src['prompt']}\n### Rule:\n")
    assert summary["rows"] == 4
    assert 4 <= summary["tokens_generated"] <= 4 * 5


def test_generate_predictions_with_samples(micro_model_dir, tmp_path):
    data = _write(tmp_path / "test.jsonl", _rows(2))
    out = tmp_path / "p.jsonl"
    generate_predictions(str(micro_model_dir), data, out, GenerationConfig(
        max_new_tokens=4, do_sample=True, num_samples=2), progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert all(len(r["samples"]) == 2 and r["prediction"] == r["samples"][0] for r in rows)


@pytest.mark.parametrize("content, message", [
    ('{"id": "a", "prompt": "x"}\n{"id": "b"}\n', r"test.jsonl:2: field 'prompt': missing"),
    ('{"id": "a", "prompt": "x"}\n{oops\n', r"test.jsonl:2: malformed JSON"),
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', r"test.jsonl:2: duplicate id 'a'"),
    # a number is a wrong column, never a clause "5" (regression: it was turned into text)
    ('{"id": "a", "prompt": "x"}\n\n{"id": "b", "prompt": 5}\n', r"test.jsonl:3: field 'prompt': .*string"),
    ('{"id": "a", "prompt": "x", "completion": 7}\n', r"test.jsonl:1: field 'completion': .*string"),
])
def test_bad_data_is_one_line_and_writes_nothing(micro_model_dir, tmp_path, content, message):
    data = tmp_path / "test.jsonl"
    data.write_text(content)
    out = tmp_path / "p.jsonl"
    with pytest.raises(TunelensError, match=message):
        generate_predictions(str(micro_model_dir), data, out, progress=False)
    assert not out.exists()


def test_cli_generate_and_errors(micro_model_dir, tmp_path, capsys):
    from tunelens.cli import main

    data = _write(tmp_path / "test.jsonl", _rows(2))
    out = tmp_path / "p.jsonl"
    assert main(["generate", "--model", str(micro_model_dir), "--data", str(data), "--out",
                 str(out), "--max-new-tokens", "3", "--stop", "\\n"]) == 0
    assert len(out.read_text().splitlines()) == 2
    assert main(["generate", "--model", str(tmp_path / "nope"), "--data", str(data), "--out",
                 str(tmp_path / "q.jsonl")]) == 2
    assert main(["generate", "--model", str(micro_model_dir), "--data", str(tmp_path / "no.jsonl"),
                 "--out", str(tmp_path / "q.jsonl")]) == 2
    assert main(["generate", "--model", str(micro_model_dir), "--data", str(data), "--out",
                 str(tmp_path / "q.jsonl"), "--num-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert "nope" in err and "no.jsonl: no such file" in err and "do_sample" in err
    assert not (tmp_path / "q.jsonl").exists()


def test_lora_run_folder_loads_base_plus_adapter(micro_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model

    from tunelens.models.loading import load_model

    base, tokenizer = load_model(str(micro_model_dir))
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj",
                                                                                "o_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, param in tuned.named_parameters():
            if "lora_B" in name:  # a trained-looking adapter: B != 0 changes the outputs
                param.normal_(0, 2.0)
    run = tmp_path / "run"
    tuned.save_pretrained(run)
    tokenizer.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"strategy": "lora", "base_model": str(micro_model_dir)}))
    data = _write(tmp_path / "test.jsonl", _rows(3))
    config = GenerationConfig(max_new_tokens=8, stop=[])
    generate_predictions(str(run), data, tmp_path / "tuned.jsonl", config, progress=False)
    generate_predictions(str(micro_model_dir), data, tmp_path / "base.jsonl", config, progress=False)
    tuned_preds = [json.loads(x)["prediction"] for x in (tmp_path / "tuned.jsonl").read_text().splitlines()]
    base_preds = [json.loads(x)["prediction"] for x in (tmp_path / "base.jsonl").read_text().splitlines()]
    assert tuned_preds != base_preds


def test_max_examples_is_a_stratified_sample_not_the_first_rows(tmp_path):
    """The first rows of the bundled test split are all hand-written: a first-N cut would generate
    for one population and score another. The sample covers every topic x source stratum, does not
    depend on the row order, and changes with its seed."""
    rows = [{"id": f"h{i}", "topic": "stairs", "source": "handwritten", "prompt": f"Clause {i}.",
             "completion": "RULE 1"} for i in range(6)]
    rows += [{"id": f"g{i}", "topic": "doors", "source": "generated", "prompt": f"Door {i}.",
              "completion": "RULE 2"} for i in range(6)]
    forward = _write(tmp_path / "a.jsonl", rows)
    backward = _write(tmp_path / "b.jsonl", rows[::-1])
    picked = [r.id for r in read_examples(forward, 4)]
    assert len(picked) == 4 and {i[0] for i in picked} == {"h", "g"}
    assert sorted(picked) == sorted(r.id for r in read_examples(backward, 4))
    assert any(sorted(r.id for r in read_examples(forward, 4, seed)) != sorted(picked)
               for seed in range(1, 6))
