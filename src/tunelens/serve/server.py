"""Load the runs, build the app, run uvicorn until Ctrl-C or SIGTERM.

uvicorn owns the sockets and the signals: on SIGTERM/SIGINT it stops accepting connections, lets
in-flight requests finish (up to ``timeout_s``, the longest a request may take anyway), then runs
the app's shutdown, which drains the batcher. A bind address other than loopback is allowed only
when asked for, and then with a warning when no API key is configured.
"""

from __future__ import annotations

import logging
import os

from tunelens.errors import TunelensError
from tunelens.serve.settings import LOOPBACK, RunSpec, ServeConfig

log = logging.getLogger("tunelens.serve")


def api_keys(config: ServeConfig) -> tuple[str, ...]:
    """The keys in ``config.api_key_env`` (comma-separated); an empty or unset variable is an error."""
    if config.api_key_env is None:
        return ()
    raw = os.environ.get(config.api_key_env, "")
    keys = tuple(k.strip() for k in raw.split(",") if k.strip())
    if not keys:
        raise TunelensError(f"--api-key-env {config.api_key_env}: the variable is unset or empty")
    return keys


def build(specs: list[RunSpec], config: ServeConfig, on_loaded=None):
    """(the app, the uvicorn config) for ``specs``; every model loaded before it listens."""
    import uvicorn

    from tunelens.serve.app import create_app
    from tunelens.serve.registry import Registry, load_served

    keys = api_keys(config)
    served = []
    for spec in specs:
        served.append(load_served(spec, config.merge))
        if on_loaded is not None:
            on_loaded(spec)
    app = create_app(Registry(served), config, keys)
    uv = uvicorn.Config(app, host=config.host, port=config.port, log_level="warning",
                        timeout_graceful_shutdown=int(config.timeout_s) + 1, access_log=False,
                        server_header=False)
    return app, uv


def serve(specs: list[RunSpec], config: ServeConfig, on_loaded=None, on_ready=None) -> None:
    """Run until interrupted; in-flight requests finish first."""
    import uvicorn

    if config.host != LOOPBACK and config.api_key_env is None:
        log.warning("listening on %s without an API key: anyone who can reach it may use it",
                    config.host)
    _, uv = build(specs, config, on_loaded)
    server = uvicorn.Server(uv)
    if on_ready is not None:
        on_ready(config)
    server.run()
