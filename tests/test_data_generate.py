"""``tunelens data generate``: templates, seeds, filters, the data card, resuming, and real models
(SmolLM2 behind an OpenAI-style server on loopback, and as a local generator)."""

from __future__ import annotations

import json
import threading
import time
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tunelens.contracts import DatasetRow, read_rows
from tunelens.data.generate.filters import FILTERS
from tunelens.data.generate.run import GenerateSettings, generate_data
from tunelens.data.generate.seeds import read_seeds
from tunelens.data.generate.templates import bundled_ids, load_template
from tunelens.data.validate import check_rule
from tunelens.errors import TunelensError
from tunelens.io import read_json, read_jsonl

GOOD = "RULE 405.2: ramp.slope <= 1:12"
BAD = "RULE 1: ramp.slope <= <= twelve"
SEEDS = [
    {"id": "s-good", "topic": "ramps", "prompt": "Ramp runs shall have a running slope not "
     "steeper than 1:12.", "completion": "RULE ADA-405.2: ramp.slope <= 1:12"},
    {"id": "s-bad", "topic": "stairs", "prompt": "Risers shall be 7 inches high maximum.",
     "completion": "RULE 504.2: stair.riser_height <= 7 in"},
    {"id": "s-none", "topic": "doors", "prompt": "Door clear width shall be 32 inches minimum.",
     "completion": "RULE 404.2.3: door.clear_width >= 32 in"},
]


def _stub_reply(prompt: str) -> str:
    """Fixed replies keyed on the clause in the prompt: a good rule, a bad one, prose."""
    if "Rewrite" in prompt:  # paraphrase: ramp verbatim, risers reworded, door with another value
        if "Ramp runs" in prompt:
            return SEEDS[0]["prompt"]
        return ("Clause: No riser may be higher than seven inches." if "Risers" in prompt else
                "Clause: Door clear width shall be 30 inches minimum.")
    if "Ramp runs" in prompt:
        return f"Sure! Here it is:\n```\n{GOOD}\n```"
    if "Risers" in prompt:
        return BAD
    return "I cannot help with that."


def _serve(reply, fail_after: int | None = None):
    """An OpenAI chat-completions server on loopback; ``reply(prompt, body) -> text``."""
    calls: list[dict] = []
    lock, busy = threading.Lock(), {"now": 0, "most": 0}

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - http.server's name
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with lock:
                busy["now"] += 1
                busy["most"] = max(busy["most"], busy["now"])
            try:
                calls.append(body)
                time.sleep(0.02)  # long enough for concurrent requests to overlap
                failed = fail_after is not None and len(calls) > fail_after
                text = None if failed else reply(body["messages"][-1]["content"], body)
            finally:
                # leave the count before answering: once the answer is out, the client may send
                # its next request, and that one must not overlap this one in the count
                with lock:
                    busy["now"] -= 1
            if failed:
                self.send_response(500)
                self.end_headers()
                self.wfile.write(b"boom")
                return
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                               "model": body["model"], "choices": [{"index": 0, "finish_reason":
                               "stop", "message": {"role": "assistant", "content": text}}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.busy = busy  # the most requests in flight at once
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_port}/v1", calls


@pytest.fixture
def seeds(tmp_path) -> Path:
    path = tmp_path / "seeds.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in SEEDS))
    return path


@pytest.fixture
def stub():
    server, url, calls = _serve(lambda prompt, _body: _stub_reply(prompt))
    yield server, url, calls
    server.shutdown()


SETTINGS = GenerateSettings(n=10, temperatures=(0.7,), top_ps=(0.9,), max_attempts=6,
                            batch_size=3, embeddings=False, retries=0, timeout=10)


def _all_ids(out: Path) -> list[str]:
    rejects = out.with_name(out.name.replace(".jsonl", ".rejects.jsonl"))
    return [r["id"] for path in (out, rejects) if path.exists() for r in read_jsonl(path)]


def test_bundled_templates_load_and_bad_templates_are_one_line(tmp_path):
    assert set(bundled_ids()) >= {"paraphrase", "rule_for_clause", "clause_for_rule",
                                  "counter_example"}
    for name in bundled_ids():
        template = load_template(name)
        assert template.version == "v1" and len(template.sha256) == 64
        assert "Ramp runs" in template.render({"clause": "Ramp runs", "rule": GOOD,
                                               "topic": "ramps"}) or "clause" not in template.needs
    typo = tmp_path / "mine.j2"
    typo.write_text("{#- output: completion\nneeds: clause -#}\nRule for {{ clauze }}")
    with pytest.raises(TunelensError, match="undefined variable.*clauze"):
        load_template(str(typo))
    (tmp_path / "bare.j2").write_text("Rule for {{ clause }}")
    with pytest.raises(TunelensError, match="no header"):
        load_template(str(tmp_path / "bare.j2"))


def test_replies_are_read_for_the_field_the_template_fills(tmp_path):
    from tunelens.data.generate.filters import extract

    assert extract(f"Here:\n```\n{GOOD}\n```\nHope it helps", "completion") == {"completion": GOOD}
    assert extract("The rule is RULE 1: a.b = 1", "completion") is None  # not at a line start
    assert extract('Clause: "Ramps shall be wide."\n\nNotes...', "prompt") == {
        "prompt": "Ramps shall be wide."}
    assert extract(f"CLAUSE: Ramps shall be wide.\n{GOOD}", "both") == {
        "prompt": "Ramps shall be wide.", "completion": GOOD}
    assert extract("CLAUSE: only a clause", "both") is None and extract("  ", "prompt") is None
    assert extract(f"{GOOD}: ramps slope", "prompt") is None  # an echoed rule is not a clause
    assert extract(f"Ramps, that is ({GOOD}).", "prompt") is None
    assert extract('Rewrite: "Ramps shall be wide.', "prompt") == {"prompt": "Ramps shall be wide."}
    from tunelens.data.generate.filters import repeats_seed

    seed = {"clause": "The clear width of a ramp run shall be 36 inches (915 mm) minimum.",
            "rule": "RULE 405.5: ramp.clear_width >= 915 mm"}
    near = {"prompt": "The clear width of a ramp run shall be 36 inches (915 mm) at least.",
            "completion": seed["rule"]}
    assert "near copy" in repeats_seed(near, seed, "prompt", 0.6, 3)
    reworded = near | {"prompt": "Every ramp run needs at least 36 inches (915 mm) of clear width."}
    assert repeats_seed(reworded, seed, "prompt", 0.6, 3) is None
    assert repeats_seed(near, seed, "completion", 0.6, 3) == "the rule is the seed's rule"
    csv = tmp_path / "seeds.csv"
    csv.write_text('clause,topic\n"Ramps shall be wide, 36 in.",ramps\n')
    (seed,) = read_seeds(csv)
    assert (seed["clause"], seed["rule"], seed["topic"], seed["where"]) == (
        "Ramps shall be wide, 36 in.", None, "ramps", f"{csv}:2")
    assert not load_template("paraphrase").applies_to(seed)  # needs the seed's rule
    assert load_template("rule_for_clause").applies_to(seed)


def test_a_markdown_document_is_cut_into_clauses_with_its_headings_as_topics(tmp_path):
    doc = tmp_path / "code.md"
    doc.write_text("# Ramps\n\nRamp runs shall be 36 inches wide minimum.\n\n## Stairs\n"
                   "- Risers shall be 7 inches maximum.\n- Treads shall be 11 inches minimum.\n")
    seeds = read_seeds(doc)
    assert [(s["topic"], s["clause"]) for s in seeds] == [
        ("Ramps", "Ramp runs shall be 36 inches wide minimum."),
        ("Stairs", "Risers shall be 7 inches maximum."),
        ("Stairs", "Treads shall be 11 inches minimum.")]
    assert seeds[1]["where"] == f"{doc}:6" and all(s["rule"] is None for s in seeds)


def test_filters_send_each_failure_to_rejects_with_its_reason_and_the_card_adds_up(seeds, stub,
                                                                                   tmp_path):
    server, url, calls = stub
    out = tmp_path / "gen.jsonl"
    settings = replace(SETTINGS, templates=("rule_for_clause", "paraphrase"), max_attempts=12,
                       batch_size=6, concurrency=2)
    card = generate_data(seeds, out, "stub-model", settings, url=url, progress=False)
    assert server.busy["most"] == 2  # requests overlap, never more than --concurrency

    rejects = {r["id"]: r for r in read_jsonl(tmp_path / "gen.rejects.jsonl")}
    by_filter = {r["filter"] for r in rejects.values()}
    assert by_filter == set(FILTERS)  # every filter refused something
    bad = next(r for r in rejects.values() if r["filter"] == "rule")
    assert bad["reason"].startswith("rule does not parse") and bad["reply"] == BAD
    loose = next(r for r in rejects.values() if r["filter"] == "ungrounded")
    assert loose["reason"] == "the rule's value(s) 32 are not in the clause"
    kept = read_rows(out, DatasetRow)
    assert sorted((r.provenance["template"]["id"], r.completion) for r in kept) == [
        ("paraphrase", SEEDS[1]["completion"]), ("rule_for_clause", GOOD)]
    copy = next(r for r in rejects.values() if r["filter"] == "same_as_seed")
    assert copy["reason"] == "the clause is a near copy of the seed clause (Jaccard 1.00)"
    for row in kept:
        check_rule(row.completion)
        assert row.source == "llm" and row.provenance["seed_id"] in {s["id"] for s in SEEDS}
        assert row.provenance["sampling"] == {"temperature": 0.7, "top_p": 0.9, "max_tokens": 64}
        assert row.provenance["generator"] == {"kind": "endpoint", "model": "stub-model",
                                               "url": url + "/chat/completions"}
    assert calls[0]["temperature"] == 0.7 and calls[0]["top_p"] == 0.9
    rows = card["rows"]
    assert rows["attempted"] == 12 == len(calls)
    assert rows["attempted"] == rows["kept"] + sum(card["rejected_by_filter"].values())
    assert rows["kept"] == len(kept) and rows["rejected"] == len(rejects)
    assert read_json(tmp_path / "gen.card.json") == card
    assert sum(b["attempted"] for b in card["batches"]) == 12


def test_an_interrupted_run_resumes_without_duplicate_ids(seeds, tmp_path):
    out = tmp_path / "gen.jsonl"
    server, url, calls = _serve(lambda prompt, _body: _stub_reply(prompt), fail_after=4)
    try:
        with pytest.raises(TunelensError, match="HTTP 500.*rerun"):
            generate_data(seeds, out, "stub-model", SETTINGS, url=url, progress=False)
    finally:
        server.shutdown()
    first = _all_ids(out)
    assert len(first) == 3  # one whole batch of 3, none of the failed second batch
    with out.open("a") as fh:
        fh.write('{"id": "torn')  # a crash in the middle of an append
    server, url, calls = _serve(lambda prompt, _body: _stub_reply(prompt))
    try:
        card = generate_data(seeds, out, "stub-model", SETTINGS, url=url, progress=False)
    finally:
        server.shutdown()
    ids = _all_ids(out)
    assert len(ids) == len(set(ids)) == 6 and set(first) <= set(ids)
    assert len(calls) == 3  # only the jobs not done before
    assert card["rows"]["attempted"] == 6
    with pytest.raises(TunelensError, match="other settings"):
        generate_data(seeds, out, "stub-model", replace(SETTINGS, temperatures=(1.0,)),
                      url=url, progress=False)


def test_an_unreachable_endpoint_is_one_line_and_leaves_nothing(seeds, tmp_path):
    server, url, _ = _serve(lambda *_: "")
    server.shutdown()
    server.server_close()  # the port is closed now
    out = tmp_path / "gen.jsonl"
    with pytest.raises(TunelensError, match=r"generator at .*cannot connect"):
        generate_data(seeds, out, "m", SETTINGS, url=url, progress=False)
    assert list(tmp_path.iterdir()) == [seeds]


def test_cli_writes_rows_and_refuses_a_bad_template_with_exit_2(seeds, stub, tmp_path, capsys):
    from tunelens.cli import main

    _, url, _ = stub
    out = tmp_path / "cli.jsonl"
    argv = ["data", "generate", "--input", str(seeds), "--generator", "m", "--generator-url", url,
            "--n", "1", "--out", str(out), "--no-embeddings", "--temperature", "0"]
    assert main(argv) == 0
    assert "1 kept of" in capsys.readouterr().out and len(read_jsonl(out)) == 1
    bad = tmp_path / "bad.j2"
    bad.write_text("{#- output: prompt -#}\n{{ nope }}")
    out2 = tmp_path / "cli2.jsonl"
    assert main([*argv[:-5], "--out", str(out2), "--template", str(bad)]) == 2
    assert "nope" in capsys.readouterr().err and not out2.exists()


def _smollm2_server(path: Path):
    """SmolLM2 answering chat completions (greedy at temperature 0, else sampled)."""
    import torch

    from tunelens.models.loading import load_model

    model, tok = load_model(str(path))
    lock = threading.Lock()

    def reply(prompt: str, body: dict) -> str:
        text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                       add_generation_prompt=True)
        ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        with lock, torch.no_grad():
            out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                 max_new_tokens=body["max_tokens"], pad_token_id=tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    return _serve(reply)


def _check_real_run(card: dict, out: Path) -> None:
    rows = card["rows"]
    assert rows["attempted"] == 2 == rows["kept"] + sum(card["rejected_by_filter"].values())
    for row in read_jsonl(out):
        check_rule(row["completion"])  # whatever was kept executes
    assert len(card["batches"]) == 1 and card["batches"][0]["attempted"] == 2


def test_smollm2_behind_an_openai_server_on_loopback(smollm2_dir, seeds, tmp_path):
    server, url, calls = _smollm2_server(smollm2_dir)
    settings = replace(SETTINGS, n=2, max_attempts=2, max_tokens=24, temperatures=(0.0,),
                       top_ps=(1.0,), batch_size=2, concurrency=2, timeout=120)
    try:
        card = generate_data(seeds, tmp_path / "gen.jsonl", "smollm2", settings, url=url,
                             progress=False)
    finally:
        server.shutdown()
    assert len(calls) == 2 and all(c["max_tokens"] == 24 for c in calls)
    _check_real_run(card, tmp_path / "gen.jsonl")


def test_smollm2_as_a_local_generator_offline(smollm2_dir, seeds, tmp_path):
    settings = replace(SETTINGS, n=2, max_attempts=2, max_tokens=24, temperatures=(0.0, 0.8),
                       top_ps=(0.95,), batch_size=2, templates=("rule_for_clause",), embeddings=True)
    card = generate_data(seeds, tmp_path / "gen.jsonl", "smollm2-135m", settings, progress=False)
    _check_real_run(card, tmp_path / "gen.jsonl")
    assert card["generator"] == {"generator": "smollm2-135m", "url": None}
    batch = card["batches"][0]
    assert set(batch) >= {"distinct_1", "distinct_2", "spread", "distance_to_seed"}


def test_the_judge_filter_rejects_low_graded_pairs_and_records_the_grades(seeds, tmp_path):
    def reply(prompt, _body):
        if "grader of training data" in prompt:  # the judge: ramps are right, risers are not
            good = "ramp.slope" in prompt
            return json.dumps({"accuracy": 5 if good else 2, "relevance": 5 if good else 2,
                               "rationale": "ok" if good else "wrong element"})
        return _stub_reply(prompt)

    server, url, calls = _serve(reply)
    try:
        out = tmp_path / "gen.jsonl"
        settings = replace(SETTINGS, templates=("rule_for_clause", "paraphrase"), max_attempts=12,
                           batch_size=6, min_judge_score=4, judge_url=url, judge_model="judge")
        card = generate_data(seeds, out, "stub-model", settings, url=url, progress=False)
    finally:
        server.shutdown()
    kept = read_rows(out, DatasetRow)
    assert [r.completion for r in kept] == [GOOD]
    assert kept[0].provenance["judge"]["score"] == 5
    assert kept[0].provenance["judge"]["template"] == "data-v1"
    judged = [r for r in read_jsonl(tmp_path / "gen.rejects.jsonl") if r["filter"] == "judge"]
    assert judged and {r["reason"] for r in judged} == {"judge score 2 < 4: wrong element"}
    assert card["rejected_by_filter"]["judge"] == len(judged)
    assert card["rows"]["attempted"] == card["rows"]["kept"] + sum(card["rejected_by_filter"].values())


def test_a_judge_threshold_without_a_judge_is_one_line_and_writes_nothing(seeds, tmp_path):
    out = tmp_path / "gen.jsonl"
    with pytest.raises(TunelensError, match="needs a judge"):
        generate_data(seeds, out, "stub-model", replace(SETTINGS, min_judge_score=4), url="http://x")
    with pytest.raises(TunelensError, match="no --min-judge-score"):
        generate_data(seeds, out, "stub-model", replace(SETTINGS, judge_path="m"), url="http://x")
    with pytest.raises(TunelensError, match="judge url needs a model name"):
        generate_data(seeds, out, "stub-model", replace(SETTINGS, min_judge_score=4, judge_url="http://j"),
                      url="http://x")
    assert list(tmp_path.iterdir()) == [seeds]
