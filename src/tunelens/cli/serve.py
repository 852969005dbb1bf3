"""The serve verb: trained runs behind an OpenAI-compatible API (docs/serving.md)."""

from __future__ import annotations

from functools import partial

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, err_console
from tunelens.config import override
from tunelens.serve.settings import ServeConfig

_s = partial(opt.field_option, ServeConfig)


@app.command("serve")
def serve_cmd(
    run: str = typer.Argument(None, help="A training run folder (or any model folder) to serve, "
                              "named after its folder in the API's 'model' field."),
    runs: list[str] = typer.Option(None, "--run", help="NAME=PATH: serve PATH as model NAME; "
                                   "repeat for several models in one server."),
    host: str = _s("host", "--host", "Interface to bind; anything but loopback is reachable from "
                   "other machines"),
    port: int = _s("port", "--port", "TCP port"),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable holding the "
                                    "API key (several: comma-separated); clients must send "
                                    "'Authorization: Bearer <key>' (default: no key asked)."),
    merge: bool = _s("merge", "--merge/--no-merge", "Merge LoRA/DoRA adapters into their base at "
                     "load (faster decoding) instead of serving them unmerged"),
    max_tokens: int = _s("max_tokens", "--max-tokens", "Largest max_tokens a request may ask"),
    max_body_bytes: int = _s("max_body_bytes", "--max-body-bytes", "Largest request body (413 "
                             "above)"),
    rate_limit: int = _s("rate_limit", "--rate-limit", "Requests per minute per key, 0 for none "
                         "(429 above)"),
    timeout_s: float = _s("timeout_s", "--timeout", "Seconds a request may wait and run (504 "
                          "after); shutdown waits as long for in-flight requests"),
    batch_size: int = _s("batch_size", "--batch-size", "Most requests decoded together"),
    batch_wait_ms: float = _s("batch_wait_ms", "--batch-wait-ms", "A batch starts once no request "
                              "arrived for this long (or 5% of the last batch's time, if longer)"),
    max_explain_work: int = _s("max_explain_work", "--max-explain-work", "Most clause tokens x "
                               "samples per /v1/explain request"),
    threads: int = opt.threads_option(),
) -> None:
    """Serve trained runs over HTTP: OpenAI-compatible /v1/chat/completions and /v1/completions
    (streaming too), /v1/models, /v1/explain (token attributions as `tunelens explain` computes
    them), /health and Prometheus /metrics. Concurrent requests are decoded in batches. Binds to
    loopback unless --host says otherwise; Ctrl-C finishes in-flight requests, then stops."""
    from tunelens.serve.settings import parse_runs

    specs = parse_runs(run, runs or [])
    config = override(ServeConfig(), origin="serve", host=host, port=port, api_key_env=api_key_env,
                      merge=merge, max_tokens=max_tokens, max_body_bytes=max_body_bytes,
                      rate_limit=rate_limit, timeout_s=timeout_s, batch_size=batch_size,
                      batch_wait_ms=batch_wait_ms, max_explain_work=max_explain_work)
    opt.set_threads(threads)
    from tunelens.serve import serve

    serve(specs, config,
          on_loaded=lambda spec: err_console.print(f"loaded {spec.name} ({spec.path})", highlight=False),
          on_ready=lambda c: err_console.print(f"serving on http://{c.host}:{c.port} "
                                               f"(Ctrl-C to stop)", highlight=False))
