"""`tunelens serve`: the real `openai` client against uvicorn on a loopback port, in a thread."""

from __future__ import annotations

import json
import socket
import threading
import time
from contextlib import contextmanager

import httpx
import openai
import pandas as pd
import pytest
from _train_data import one_torch_thread  # noqa: F401

from tunelens.cli import main
from tunelens.serve.batcher import Batcher
from tunelens.serve.engine import Job, Sampling, decode
from tunelens.serve.metrics import Metrics
from tunelens.serve.registry import load_served
from tunelens.serve.security import TokenBucket
from tunelens.serve.settings import RunSpec, ServeConfig, parse_runs

KEY = "sk-test-key"
CLAUSE = "The clear width of a stair shall be not less than 900 mm."
RULE = "RULE stair.width >= 900 mm"


@contextmanager
def running(specs, **settings):
    """A server on a free loopback port; yields (base url, uvicorn server)."""
    import uvicorn

    from tunelens.serve.server import build

    _, uv = build(specs, ServeConfig(api_key_env="TL_TEST_KEY", **settings))
    server = uvicorn.Server(uv)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started:
        assert thread.is_alive(), "the server did not start"
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}", server
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def prompted_run(micro_model_dir, tmp_path_factory):
    """The micro model as a run whose run.json records its own instruction: the prompt must be
    rendered from the run's record by the server and by `tunelens explain` alike."""
    import shutil

    run = tmp_path_factory.mktemp("prompted") / "run"
    shutil.copytree(micro_model_dir, run)
    (run / "run.json").write_text(json.dumps({"instruction": "Write the rule of this clause."}))
    return run


@pytest.fixture(scope="module")
def lora_run(micro_model_dir, tmp_path_factory):
    return lora_adapter(micro_model_dir, tmp_path_factory.mktemp("lora") / "run")


@pytest.fixture(scope="module")
def server(prompted_run, lora_run, monkeypatch_module):
    """Two runs from one server (`--run micro=... --run lora=...`), the adapter unmerged."""
    monkeypatch_module.setenv("TL_TEST_KEY", f"other-key,{KEY}")
    with running([RunSpec("micro", str(prompted_run)), RunSpec("lora", str(lora_run))],
                 rate_limit=0, max_tokens=64, max_body_bytes=4096, max_explain_work=200) as (url, srv):
        yield url, srv


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def client(url: str, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)


def test_openai_client_completes_streams_and_needs_the_key(server):
    url, _ = server
    c = client(url)
    assert [m.id for m in c.models.list()] == ["micro", "lora"]
    ask = {"model": "micro", "messages": [{"role": "user", "content": CLAUSE}], "max_tokens": 12,
           "temperature": 0}
    whole = c.chat.completions.create(**ask)
    text = whole.choices[0].message.content
    assert text and whole.usage.completion_tokens > 0 and whole.choices[0].finish_reason in {"stop", "length"}
    chunks = list(c.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    pieces = [ch.choices[0].delta.content for ch in chunks[:-1] if ch.choices[0].delta.content]
    assert len(pieces) > 1 and "".join(pieces) == text  # streamed piecewise, adds up to the answer
    assert chunks[-2].choices[0].finish_reason == whole.choices[0].finish_reason
    assert not chunks[-1].choices and chunks[-1].usage == whole.usage  # include_usage's last chunk
    legacy = c.completions.create(model="micro", prompt=["RULE stair", "The width"], max_tokens=5)
    assert [ch.index for ch in legacy.choices] == [0, 1] and legacy.usage.completion_tokens <= 10
    sampled = {"model": "micro", "prompt": "RULE", "max_tokens": 8, "stop": [], "temperature": 1.5}
    seeded = [c.completions.create(**sampled, seed=3).choices[0].text for _ in range(2)]
    free = [c.completions.create(**sampled).choices[0].text for _ in range(2)]
    assert seeded[0] == seeded[1] and free[0] != free[1]  # no seed: a fresh one, as OpenAI's
    with pytest.raises(openai.AuthenticationError):
        client(url, "wrong").chat.completions.create(**ask)
    assert httpx.get(f"{url}/health").json()["models"] == ["micro", "lora"]  # no key needed


def test_bad_requests_get_their_status_and_a_json_error(server):
    url, _ = server
    auth = {"Authorization": f"Bearer {KEY}"}
    cases = [
        (httpx.post(f"{url}/v1/completions", content=b"{not json",
                    headers={**auth, "Content-Type": "application/json"}), 400),
        (httpx.post(f"{url}/v1/completions", json={"prompt": "x" * 8000}, headers=auth), 413),
        (httpx.post(f"{url}/v1/completions", content=(b"x" * 1024 for _ in range(5)),
                    headers={**auth, "Content-Type": "application/json"}), 413),  # chunked, no length
        (httpx.post(f"{url}/v1/completions", json={"model": "nope", "prompt": "x"}, headers=auth), 404),
        (httpx.post(f"{url}/v1/completions", json={"prompt": "x"}, headers=auth), 422),  # which model?
        (httpx.post(f"{url}/v1/completions", json={"model": "micro", "prompt": "x", "max_tokens": 65},
                    headers=auth), 422),
        (httpx.post(f"{url}/v1/chat/completions", json={"model": "micro", "messages": []},
                    headers=auth), 422),
        (httpx.post(f"{url}/v1/explain", json={"model": "micro", "prompt": CLAUSE, "method": "shapley",
                                               "n_samples": 64},
                    headers=auth), 422),  # 16 tokens x 64 samples is above max_explain_work
        (httpx.get(f"{url}/v1/models"), 401),
    ]
    for response, status in cases:
        assert response.status_code == status, response.text
        error = response.json()["error"]
        assert error["message"] and "Traceback" not in response.text
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client(url).completions.create(model="nope", prompt="x")
    metrics = httpx.get(f"{url}/metrics", headers=auth).text
    assert 'tunelens_requests_total{endpoint="/v1/completions",status="413"}' in metrics
    assert "tunelens_queue_depth" in metrics and "tunelens_request_seconds_bucket" in metrics


def test_a_client_leaving_mid_stream_does_not_hurt_the_server(server):
    url, _ = server
    body = {"model": "micro", "prompt": "RULE", "max_tokens": 64, "stream": True, "stop": []}
    with httpx.stream("POST", f"{url}/v1/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as response:
        first = next(response.iter_lines())
        assert first.startswith("data: ") and json.loads(first[6:])["object"] == "text_completion"
    after = client(url).completions.create(model="micro", prompt="RULE", max_tokens=4)
    assert after.choices[0].finish_reason in {"stop", "length"}


def test_explain_endpoint_equals_tunelens_explain(server, prompted_run, tmp_path):
    url, _ = server
    rows = tmp_path / "one.jsonl"
    rows.write_text(json.dumps({"id": "c1", "prompt": CLAUSE, "completion": RULE}) + "\n")
    out = tmp_path / "attr.parquet"
    assert main(["explain", "--model", str(prompted_run), "--data", str(rows), "--out", str(out),
                 "--method", "lime", "--n-samples", "8", "--target", "reference",
                 "--no-heatmap"]) == 0
    expected = pd.read_parquet(out)
    got = httpx.post(f"{url}/v1/explain", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "micro", "prompt": CLAUSE, "completion": RULE, "method": "lime",
                           "n_samples": 8, "example_id": "c1"}).json()
    assert [f["token"] for f in got["features"]] == list(expected["token"])
    assert [f["category"] for f in got["features"]] == list(expected["category"])
    assert [f["score"] for f in got["features"]] == pytest.approx(list(expected["score"]), abs=1e-6)
    assert got["target_logprob"] == pytest.approx(expected["target_logprob"].iloc[0], abs=1e-6)
    other_seed = httpx.post(f"{url}/v1/explain", headers={"Authorization": f"Bearer {KEY}"},
                            json={"model": "micro", "prompt": CLAUSE, "completion": RULE,
                                  "method": "lime", "n_samples": 8, "example_id": "c2"}).json()
    assert [f["score"] for f in other_seed["features"]] != [f["score"] for f in got["features"]]
    own = httpx.post(f"{url}/v1/explain", headers={"Authorization": f"Bearer {KEY}"},
                     json={"model": "micro", "prompt": CLAUSE, "max_tokens": 6}).json()
    assert own["target_kind"] == "generation" and own["target"] and len(own["features"]) == len(expected)


def test_shutdown_finishes_the_request_in_flight(micro_model_dir, monkeypatch):
    monkeypatch.setenv("TL_TEST_KEY", KEY)
    with running([RunSpec("micro", str(micro_model_dir))]) as (url, srv):
        stream = client(url).completions.create(model="micro", prompt="RULE", max_tokens=48,
                                                stop=[], stream=True)
        first = next(iter(stream))
        srv.should_exit = True  # what SIGTERM does
        rest = list(stream)
    assert first.choices[0].text and rest[-1].choices[0].finish_reason == "length"


def test_rate_limit_and_timeout(server, monkeypatch):
    bucket = TokenBucket(rate=2)
    assert [bucket.take("k", now=0.0) for _ in range(3)][:2] == [0.0, 0.0]
    assert bucket.take("k", now=0.0) == pytest.approx(30.0) and bucket.take("other", now=0.0) == 0.0
    assert bucket.take("k", now=31.0) == 0.0  # refilled at 2 a minute
    url, srv = server
    state = srv.config.app.state  # this server's limits, as --rate-limit 2 --timeout 0.001 set them
    monkeypatch.setattr(state.guard, "bucket", TokenBucket(rate=2, clock=lambda: 0.0))  # no refill
    monkeypatch.setattr(state.batcher, "timeout", 0.001)
    client(url).models.list()
    with pytest.raises(openai.APIStatusError) as late:  # longer than the timeout: 504
        client(url).completions.create(model="micro", prompt="RULE", max_tokens=64, stop=[])
    assert late.value.status_code == 504 and "longer than" in late.value.message
    with pytest.raises(openai.RateLimitError):
        client(url).models.list()
    assert client(url, "other-key").models.list().data  # a bucket per key


def test_batched_rows_equal_one_at_a_time_and_stream_what_they_return(server):
    served = server[1].config.app.state.registry.get("micro")  # idle between requests
    prompts = ["RULE stair", "The clear width of a stair shall be", "Ramps"]
    limits = [3, 9, 6]
    alone = [decode(served.model, served.tokenizer, [Job(p, n, Sampling())])[0]
             for p, n in zip(prompts, limits, strict=True)]
    streamed: dict[int, list[str]] = {i: [] for i in range(3)}
    jobs = [Job(p, n, Sampling(), on_text=streamed[i].append)
            for i, (p, n) in enumerate(zip(prompts, limits, strict=True))]
    together = decode(served.model, served.tokenizer, jobs)
    assert [o.text for o in together] == [o.text for o in alone]
    assert [o.completion_tokens for o in together] == limits  # each row stopped at its own limit
    assert ["".join(streamed[i]) for i in range(3)] == [o.text for o in together]

    leaving = Job("RULE", 40, Sampling(stop=()))
    leaving.on_text = lambda _piece: leaving.cancelled.set()  # gone after its first piece
    staying = Job("RULE", 40, Sampling(stop=()))
    left, stayed = decode(served.model, served.tokenizer, [leaving, staying])
    assert left.completion_tokens <= 3 and stayed.completion_tokens == 40  # its row ended early


def test_a_batch_waits_for_stragglers_in_proportion_to_the_last_batch():
    def gathered(last_batch_s: float, batch_size: int = 8) -> int:
        batcher = Batcher(Metrics(), batch_size=batch_size, batch_wait_ms=1, timeout_s=5)
        batcher.last_batch_s = last_batch_s
        threading.Timer(0.04, batcher.queue.put, args=("straggler",)).start()
        batch, _ = batcher._gather("first")
        if "straggler" not in batch:
            batcher.queue.get(timeout=1)  # it came after: out of the next case's way
        return len(batch)

    assert gathered(0.0) == 1  # a 1 ms gap: the straggler 40 ms later waits for the next batch
    assert gathered(10.0, batch_size=2) == 2  # 5% of a 10 s batch: it joins (and fills) this one
    assert gathered(10.0, batch_size=1) == 1  # a full batch waits for nobody


def test_adapters_serve_unmerged_or_merged(server, lora_run):
    url, _ = server
    models = httpx.get(f"{url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}).json()
    listed = {m["id"]: m for m in models["data"]}
    assert listed["lora"]["merged"] is False and listed["micro"]["merged"] is False
    merged = load_served(RunSpec("m", str(lora_run)), merge=True)
    assert merged.merged and not type(merged.model).__name__.startswith("Peft")

    def served_answer(name):  # the prompt as it is, greedy, no stop: what decode below does
        return client(url).completions.create(model=name, prompt=CLAUSE, max_tokens=8, stop=[],
                                              temperature=0).choices[0].text

    merged_answer = decode(merged.model, merged.tokenizer, [Job(CLAUSE, 8, Sampling())])[0].text
    assert served_answer("lora") == merged_answer != served_answer("micro")  # chosen by `model`


def lora_adapter(base_dir, out):
    """A LoRA adapter with random (non-zero) weights over the micro model, saved as training
    saves one (training itself is tested elsewhere and costs seconds)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tunelens.models.loading import load_model

    model, tokenizer = load_model(str(base_dir))
    torch.manual_seed(0)
    tuned = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                             init_lora_weights=False))
    for name, param in tuned.named_parameters():
        if "lora_B" in name:
            param.data.normal_(0, 0.5)
    tuned.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def test_run_list_is_checked():
    assert [s.name for s in parse_runs("/x/run-a", ["b=/y"])] == ["run-a", "b"]
    for bad in (["b"], ["=x"], ["a=/p", "a=/q"]):
        with pytest.raises(Exception, match="NAME=PATH|twice"):
            parse_runs(None, bad)
