"""Prometheus metrics of one server: requests, latency, tokens, queue depth, batch sizes.

prometheus_client does the counting and the text format; each app gets its own registry, so two
servers in one process (tests, several apps) never share counts. :class:`Instrument` is a pure
ASGI middleware rather than Starlette's ``BaseHTTPMiddleware`` because it must time a streamed
response to its last byte, not to its first.
"""

from __future__ import annotations

import time

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/explain", "/v1/models", "/health",
             "/metrics")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self):
        self.registry = CollectorRegistry()
        kw = {"registry": self.registry}
        self.requests = Counter("tunelens_requests", "HTTP requests by endpoint and status",
                                ["endpoint", "status"], **kw)
        self.latency = Histogram("tunelens_request_seconds", "Time to the last byte of a response",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, **kw)
        self.tokens = Counter("tunelens_generated_tokens", "Tokens generated (rate() is tokens/s)",
                              ["model"], **kw)
        self.tokens_per_second = Gauge("tunelens_tokens_per_second",
                                       "Generated tokens per second of the last batch", ["model"], **kw)
        self.queue_depth = Gauge("tunelens_queue_depth", "Requests waiting for the model", **kw)
        self.batch_size = Histogram("tunelens_batch_size", "Requests decoded together",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128), **kw)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class Instrument:
    """Counts every HTTP request and times it to the end of its body."""

    def __init__(self, app, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = scope.get("path", "") if scope.get("path") in ENDPOINTS else "other"
        status = {"code": 500}
        start = time.perf_counter()

        async def send_status(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.requests.labels(endpoint, str(status["code"])).inc()
            self.metrics.latency.labels(endpoint).observe(time.perf_counter() - start)
