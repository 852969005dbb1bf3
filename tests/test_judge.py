"""The LLM judge against a real OpenAI-compatible HTTP server on loopback, and a local HF model."""

from __future__ import annotations

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tunelens.chat_endpoint import api_base, chat_endpoint
from tunelens.cli import main
from tunelens.config import EvaluationConfig, JudgeConfig
from tunelens.errors import TunelensError
from tunelens.evaluate import evaluate, judge_config
from tunelens.evaluate.judge import load_template, parse_reply

ROWS = [
    {"id": "a", "prompt": "Stair risers shall not exceed 178 mm.",
     "reference": "RULE 1011.5.2: stair.riser_height <= 178 mm",
     "prediction": "RULE 1011.5.2: stair.riser_height <= 178 mm"},
    {"id": "b", "prompt": "Ramps shall not be steeper than 1:12.",
     "reference": "RULE 405.2: ramp.slope <= 1:12",
     "prediction": "RULE 405.2: ramp.slope >= 1:12"},
    {"id": "c", "prompt": "Doors shall be at least 815 mm wide.",
     "reference": "RULE 1010.1.1: door.clear_width >= 815 mm",
     "prediction": "banana"},
]


class ScriptedServer:
    """An OpenAI-compatible /v1/chat/completions stub that answers from a script, in order.

    ``statuses`` are the HTTP statuses of the first requests, in order (then ``status``); a
    non-200 answer consumes no reply and tells the client to retry after 10 ms.
    """

    def __init__(self, replies, delay: float = 0.0, status: int = 200, statuses=()):
        self.replies, self.requests, self.statuses = list(replies), [], list(statuses)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's naming
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                owner.requests.append({"path": self.path, "body": body})
                if delay:
                    time.sleep(delay)
                code = owner.statuses.pop(0) if owner.statuses else status
                if code == 200:
                    content = owner.replies.pop(0) if owner.replies else "out of script"
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "model": body.get("model"),
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": content}}],
                    }).encode()
                else:
                    payload = (b'{"error": "rate limited"}' if code == 429
                               else b'{"error": "model not found"}')
                try:
                    self.send_response(code)
                    if code != 200:
                        self.send_header("retry-after-ms", "10")
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout test)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def write_rows(path, rows=ROWS):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def config_for(url: str | None = None, path: str | None = None, **judge) -> EvaluationConfig:
    model = "judge-7b" if url else None
    return EvaluationConfig(bootstrap_samples=50,
                            judge=JudgeConfig(url=url, model=model, path=path, **judge))


def test_judge_against_loopback_server(tmp_path):
    script = [
        # a: clean JSON wrapped in prose and a code fence
        'Sure.\n```json\n{"accuracy": 5, "relevance": 4, "rationale": "Same rule."}\n```',
        # b: gibberish, then "key: value" lines on the retry
        "I think it is fine!!",
        "**Accuracy**: 2\nRelevance: 3\nRationale: comparator flipped",
        # c: never parseable (out-of-range scores count as unparseable) -> missing
        '{"accuracy": 9, "relevance": 0}', "no idea", "still no idea",
    ]
    with ScriptedServer(script) as server:
        result = evaluate(write_rows(tmp_path / "p.jsonl"), tmp_path / "m.json",
                          config_for(server.url, retries=2))
    assert len(server.requests) == 6
    template = load_template("v1")
    for request in server.requests:
        assert request["path"] == "/v1/chat/completions"
        assert request["body"]["model"] == "judge-7b"
    first = server.requests[0]["body"]
    assert first["messages"][0]["role"] == "user"
    assert first["messages"][0]["content"] == template.render(
        ROWS[0]["prompt"], ROWS[0]["reference"], ROWS[0]["prediction"])
    assert first["temperature"] == 0.0 and server.requests[2]["body"]["temperature"] == 0.7
    assert "Reply with one JSON object" in first["messages"][0]["content"]
    assert ROWS[1]["prediction"] in server.requests[1]["body"]["messages"][0]["content"]

    rows = result["per_example"]
    assert [r["judge_accuracy"] for r in rows] == [5.0, 2.0, None]
    assert [r["judge_relevance"] for r in rows] == [4.0, 3.0, None]
    assert [r["judge_attempts"] for r in rows] == [1, 2, 3]
    assert rows[0]["judge_rationale"] == "Same rule."
    assert rows[1]["judge_rationale"] == "comparator flipped"
    agg = result["aggregate"]
    assert agg["judge_accuracy"] == pytest.approx(3.5)
    assert agg["judge_relevance"] == pytest.approx(3.5)
    lo, hi = result["intervals"]["judge_accuracy"]
    assert 2.0 <= lo <= 3.5 <= hi <= 5.0
    info = result["info"]["judge"]
    assert info["missing"] == 1 and info["template_version"] == "v1"
    assert info["template_sha256"] == template.sha256 and server.url in info["backend"]
    written = json.loads((tmp_path / "m.json").read_text())
    assert written["info"]["judge"]["template_version"] == "v1"


def test_cli_judge_flags_reach_the_server(tmp_path, capsys):
    replies = ['{"accuracy": 4, "relevance": 5, "rationale": "fine"}'] * 3
    with ScriptedServer(replies) as server:
        code = main(["evaluate", "--predictions", str(write_rows(tmp_path / "p.jsonl")),
                     "--out", str(tmp_path / "m.json"), "--bootstrap-samples", "20",
                     "--judge-url", server.url + "/v1", "--judge-model", "qwen-judge"])
    out = " ".join(capsys.readouterr().out.split())
    assert code == 0, out
    assert [r["body"]["model"] for r in server.requests] == ["qwen-judge"] * 3
    assert "judge_accuracy" in out and "template v1" in out and "0 missing" in out


def test_a_rate_limited_request_is_retried_and_the_evaluation_completes(tmp_path):
    """One 429 (and one 503) must not abort an evaluation: the client retries with back-off."""
    replies = ['{"accuracy": 4, "relevance": 5, "rationale": "fine"}'] * 3
    with ScriptedServer(replies, statuses=[429, 200, 503]) as server:
        result = evaluate(write_rows(tmp_path / "p.jsonl"), tmp_path / "m.json",
                          config_for(server.url))
    assert len(server.requests) == 5  # three rows, two of them asked twice
    assert [r["judge_accuracy"] for r in result["per_example"]] == [4.0, 4.0, 4.0]
    assert [r["judge_attempts"] for r in result["per_example"]] == [1, 1, 1]  # not a re-ask
    assert result["info"]["judge"]["missing"] == 0


def test_rate_limit_past_the_retries_is_one_line(tmp_path):
    retries = 1
    with ScriptedServer([], status=429) as server:
        with pytest.raises(TunelensError, match=r"HTTP 429 \(.*rate limited") as e:
            evaluate(write_rows(tmp_path / "p.jsonl"), tmp_path / "m.json",
                     config_for(server.url, http_retries=retries))
    assert len(server.requests) == 2 and "\n" not in str(e.value)


def test_connection_refused_is_one_line_naming_the_url(tmp_path):
    retries = 0
    with socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    out = tmp_path / "m.json"
    with pytest.raises(TunelensError, match=rf"judge at {url}/v1/chat/completions: cannot connect") as e:
        evaluate(write_rows(tmp_path / "p.jsonl"), out, config_for(url, http_retries=retries))
    assert "\n" not in str(e.value) and not out.exists()


def test_timeout_is_one_line_naming_the_url(tmp_path):
    retries = 1
    with ScriptedServer(["{}"], delay=1.0) as server:
        out = tmp_path / "m.json"
        with pytest.raises(TunelensError,
                           match=r"no reply within 0\.2 s \(timeout\), 2 attempts") as e:
            evaluate(write_rows(tmp_path / "p.jsonl"), out,
                     config_for(server.url, timeout_seconds=0.2, http_retries=retries))
    assert server.url in str(e.value) and "\n" not in str(e.value) and not out.exists()
    assert len(server.requests) == 2  # a timeout is retried once, then reported


def test_http_error_is_one_line(tmp_path):
    with ScriptedServer([], status=404) as server:
        with pytest.raises(TunelensError, match=r"HTTP 404 \(.*model not found") as e:
            evaluate(write_rows(tmp_path / "p.jsonl"), tmp_path / "m.json", config_for(server.url))
    assert server.url in str(e.value)


def test_judge_needs_prompt_column(tmp_path):
    rows = [{k: v for k, v in r.items() if k != "prompt"} for r in ROWS]
    with pytest.raises(TunelensError, match=r"p\.jsonl:1: field 'prompt': missing"):
        evaluate(write_rows(tmp_path / "p.jsonl", rows), tmp_path / "m.json",
                 config_for("http://127.0.0.1:9"))


def test_local_hf_judge_with_gibberish_records_missing(tmp_path, micro_model_dir):
    result = evaluate(write_rows(tmp_path / "p.jsonl", ROWS[:2]), tmp_path / "m.json",
                      config_for(path=str(micro_model_dir), retries=1, max_new_tokens=8))
    rows = result["per_example"]
    assert [r["judge_accuracy"] for r in rows] == [None, None]
    assert [r["judge_attempts"] for r in rows] == [2, 2]
    assert result["aggregate"]["judge_accuracy"] is None
    assert result["intervals"]["judge_accuracy"] is None
    assert result["info"]["judge"]["missing"] == 2
    assert str(micro_model_dir) in result["info"]["judge"]["backend"]


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ('{"accuracy": 4, "relevance": 5, "rationale": "ok"}', (4.0, 5.0, "ok")),
        ('Verdict: {"Accuracy": "3", "Relevance": 2.0} done', (3.0, 2.0, None)),
        ('{"note": "x"} then {"accuracy": 1, "relevance": 1, "reason": "empty"}', (1.0, 1.0, "empty")),
        ("- Accuracy: 4/5\n- Relevance = 5\n- Rationale: close", (4.0, 5.0, "close")),
        ("accuracy score: 2\nrelevance score: 2", (2.0, 2.0, None)),
    ],
)
def test_parse_reply_accepts(reply, expected):
    verdict = parse_reply(reply)
    assert (verdict.accuracy, verdict.relevance, verdict.rationale) == expected


@pytest.mark.parametrize(
    "reply",
    ["", "great answer", '{"accuracy": 6, "relevance": 3}', '{"accuracy": true, "relevance": 3}',
     "accuracy: 4", '{"accuracy": 4, "relevance": "high"}', "The accuracy is 4 and relevance 5."],
)
def test_parse_reply_rejects(reply):
    assert parse_reply(reply) is None


def test_endpoint_and_template_handling():
    assert chat_endpoint("http://h:1") == "http://h:1/v1/chat/completions"
    assert chat_endpoint("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_endpoint("http://h:1/v1/chat/completions") == "http://h:1/v1/chat/completions"
    assert api_base("http://h:1/v1/chat/completions/") == api_base("http://h:1") == "http://h:1/v1"
    with pytest.raises(TunelensError, match=r"judge template 'v0' does not exist \(available: data-v1, v1"):
        load_template("v0")
    text = load_template("v1").render("C {x}", "R $", "P")
    assert "C {x}" in text and "R $" in text


def test_judge_settings_from_flags_override_the_config():
    base = JudgeConfig(path="/models/judge")
    over = judge_config(base, url="http://x:1", model="m")
    assert (over.url, over.model, over.path) == ("http://x:1", "m", None)
    assert judge_config(JudgeConfig(url="http://x:1", model="a"), model="b").model == "b"
    with pytest.raises(TunelensError, match="a judge url needs a model name"):
        judge_config(JudgeConfig(), url="http://x:1")
    with pytest.raises(TunelensError, match="needs a url"):
        judge_config(JudgeConfig(), model="m")
