"""Load test of ``tunelens serve`` on loopback, beside transformers' own ``transformers serve``.

Three servers on the same model folder, all started (as subprocesses) before any is measured,
then measured one after another at each N, so a change in the machine's load between
measurements hits all three rather than one. Each is asked the same fixed set of requests
(``/v1/completions``, greedy, the same clause prompts, the same ``max_tokens``) by N
concurrent clients (the `openai` async client), for each N of ``--clients``:

- ``tunelens``: dynamic batching (requests that queue while the model is busy share a batch);
- ``tunelens 1-at-a-time``: the same server with ``--batch-size 1``, the baseline batching must
  beat (target: >= 3x its requests/s at 8 clients);
- ``transformers serve``: the peer from PyPI (``transformers[serving]``), default settings.

Printed per server and N: requests/s, completion tokens/s, latency p50/p95/p99 (seconds),
failures, tunelens' mean batch (from its /metrics), requests/s as a ratio to one-at-a-time and
to ``transformers serve`` at the same N, and the load average during the runs. Latency is
measured by the client, from sending a request to its full reply. Every request asks for the
same work: greedy, up to ``max_tokens`` or EOS (no stop strings).

    python benchmarks/serve_load.py              # smollm2-135m (packaged), 48 requests, 8 and 32
    python benchmarks/serve_load.py --model PATH --requests 64 --max-tokens 32 --threads 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np
from openai import AsyncOpenAI
from rich.console import Console
from rich.table import Table

CLAUSES = [
    "The clear width of a stair shall be not less than 900 mm.",
    "Ramps shall have a slope not steeper than 1:12 where the rise exceeds 150 mm.",
    "Doors shall provide a clear opening of at least 815 mm.",
    "Handrails shall be between 865 mm and 965 mm above the stair nosing.",
    "Exit access travel distance shall not exceed 60 m unless the building is sprinklered.",
    "Guards shall be not less than 1070 mm high at open sides of walking surfaces.",
    "Headroom in stairways shall be not less than 2030 mm measured vertically from the nosing.",
    "Smoke alarms shall be installed in each sleeping room.",
]
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server_command(kind: str, model: str, port: int) -> list[str]:
    if kind == "transformers serve":
        return [str(BIN / "transformers"), "serve", model, "--host", "127.0.0.1", "--port",
                str(port), "--device", "cpu", "--dtype", "float32"]
    batch = ["--batch-size", "1"] if kind.endswith("1-at-a-time") else []
    return [str(BIN / "tunelens"), "serve", model, "--port", str(port), "--rate-limit", "0",
            "--timeout", "600", *batch]


def start(kind: str, model: str, threads: int | None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.Popen(server_command(kind, model, port), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{kind} exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise SystemExit(f"{kind} did not answer /health within 300 s")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


async def load(url: str, model: str, clients: int, requests: int, max_tokens: int,
               extra: dict) -> dict:
    """``requests`` requests, ``clients`` at a time, after one untimed warm-up request."""
    client = AsyncOpenAI(base_url=f"{url}/v1", api_key="none", max_retries=0, timeout=900)
    gate = asyncio.Semaphore(clients)
    latencies: list[float] = []
    errors: list[str] = []
    tokens, failures = 0, 0

    async def one(i: int) -> None:
        nonlocal tokens, failures
        async with gate:
            start = time.perf_counter()
            try:
                reply = await client.completions.create(model=model, prompt=CLAUSES[i % len(CLAUSES)],
                                                        max_tokens=max_tokens, temperature=0, **extra)
            except Exception as exc:  # noqa: BLE001  (counted, the run goes on)
                failures += 1
                errors.append(str(exc)[:200])
                return
            latencies.append(time.perf_counter() - start)
            tokens += reply.usage.completion_tokens if reply.usage else 0

    await one(0)  # warm-up, not timed
    latencies.clear()
    tokens = 0
    batches = batch_sizes(url)
    wall = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(requests)))
    wall = time.perf_counter() - wall
    await client.close()
    after = batch_sizes(url)
    mean_batch = (after[0] - batches[0]) / (after[1] - batches[1]) if batches and after else None
    p50, p95, p99 = np.percentile(latencies, [50, 95, 99]) if latencies else (np.nan,) * 3
    if errors:
        print(f"{failures} failed, first: {errors[0]}", file=sys.stderr)
    return {"req_s": len(latencies) / wall, "tok_s": tokens / wall, "p50": p50, "p95": p95,
            "p99": p99, "failures": failures, "batch": mean_batch}


def batch_sizes(url: str) -> tuple[float, float] | None:
    """(requests, batches) decoded so far by a tunelens server (its /metrics); None elsewhere."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return None
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("tunelens_batch_size_sum", "tunelens_batch_size_count"):
            values[name] = float(value)
    if len(values) < 2:
        return None
    return values["tunelens_batch_size_sum"], values["tunelens_batch_size_count"]


def resolve_model(name: str) -> str:
    from tunelens.models import references

    return references.resolve(name) or name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m", help="model folder or packaged short name")
    parser.add_argument("--clients", default="8,32", help="concurrent clients, comma-separated")
    parser.add_argument("--requests", type=int, default=48, help="requests per measurement")
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each server")
    parser.add_argument("--servers", default="tunelens,tunelens 1-at-a-time,transformers serve")
    args = parser.parse_args()
    model = resolve_model(args.model)
    kinds = args.servers.split(",")
    servers: dict[str, tuple[subprocess.Popen, str]] = {}
    rows, loads = [], []
    try:
        for kind in kinds:  # all up before any is measured; an idle server costs no CPU
            servers[kind] = start(kind, model, args.threads)
        for n in (int(c) for c in args.clients.split(",")):
            for kind in kinds:  # one after another at each N: a change in load hits all alike
                name = Path(model).name if kind.startswith("tunelens") else model
                # the same work everywhere: EOS or max_tokens (tunelens' default stop is the
                # study's "\n\n"; transformers serve has none, and answers "stop": [] with a 500)
                extra = {"stop": []} if kind.startswith("tunelens") else {}
                loads.append(os.getloadavg())
                result = asyncio.run(load(servers[kind][1], name, n, args.requests,
                                          args.max_tokens, extra))
                rows.append((kind, n, result))
                print(f"{kind:24s} clients={n:3d} {result}", flush=True)
        loads.append(os.getloadavg())
    finally:
        for proc, _ in servers.values():
            stop(proc)
    print_table(rows, args, loads)


def print_table(rows: list, args, loads: list[tuple[float, float, float]]) -> None:
    """The results as a table (and as markdown for docs/serving.md), each server's requests/s as
    a ratio to one-at-a-time and to the peer at the same number of clients, and the load average
    the machine had while they ran (the measured servers add their own threads to it)."""
    table = Table(title=f"{args.requests} requests, max_tokens {args.max_tokens}, greedy, "
                  f"model {Path(args.model).name}, {args.threads or 'default'} torch thread(s)")
    columns = ("server", "clients", "req/s", "tokens/s", "p50 s", "p95 s", "p99 s", "failed",
               "mean batch", "vs 1-at-a-time", "vs transformers serve")
    for col in columns:
        table.add_column(col, justify="left" if col == "server" else "right")
    base = {(k, n): r["req_s"] for k, n, r in rows}
    lines = ["| " + " | ".join(columns) + " |", "|---" + "|---:" * (len(columns) - 1) + "|"]
    for kind, n, r in rows:
        cells = [kind, str(n), f"{r['req_s']:.2f}", f"{r['tok_s']:.1f}", f"{r['p50']:.2f}",
                 f"{r['p95']:.2f}", f"{r['p99']:.2f}", str(r["failures"]),
                 "-" if r["batch"] is None else f"{r['batch']:.1f}",
                 _ratio(r["req_s"], base.get(("tunelens 1-at-a-time", n))),
                 _ratio(r["req_s"], base.get(("transformers serve", n)))]
        table.add_row(*cells)
        lines.append("| " + " | ".join(cells) + " |")
    Console(width=160).print(table)
    print("\n".join(lines))
    worst = max(loads, key=lambda la: la[0])
    print(f"load average (1/5/15 min) before each measurement and at the end: "
          f"{'; '.join('/'.join(f'{x:.2f}' for x in la) for la in loads)} (highest 1-min: "
          f"{worst[0]:.2f}) on {os.cpu_count()} CPUs")


def _ratio(value: float, reference: float | None) -> str:
    return f"{value / reference:.1f}x" if reference else "-"


if __name__ == "__main__":
    main()
