"""Bearer-key check and a per-key rate limit, as one FastAPI dependency.

Several keys may be configured (comma-separated in the variable), each with its own bucket.
Each is compared in constant time (``hmac.compare_digest``). The rate limit is a token bucket
per key (per client address when no key is configured): ``rate`` requests a minute on average,
bursts up to ``rate``. It is ours, in a few lines, because the libraries that do it
(slowapi, limits) bring storage back-ends and decorators for a dictionary and a clock; it lives
in one process, as the model does.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import threading
import time

from fastapi import Request

from tunelens.serve.errors import ApiError


class TokenBucket:
    """``rate`` per minute per identity; :meth:`take` says how long to wait when empty."""

    def __init__(self, rate: int, clock=time.monotonic):
        self.rate, self.clock = rate, clock
        self.buckets: dict[str, tuple[float, float]] = {}
        self.lock = threading.Lock()

    def take(self, who: str, now: float | None = None) -> float:
        """0 when a request may go now (one token taken), else seconds until one may."""
        if self.rate <= 0:
            return 0.0
        now = self.clock() if now is None else now
        per_second = self.rate / 60.0
        with self.lock:
            tokens, last = self.buckets.get(who, (float(self.rate), now))
            tokens = min(float(self.rate), tokens + (now - last) * per_second)
            if tokens < 1.0:
                self.buckets[who] = (tokens, now)
                return (1.0 - tokens) / per_second
            self.buckets[who] = (tokens - 1.0, now)
            return 0.0


class Guard:
    """The dependency every API route takes: 401 without the right key, 429 over the limit."""

    def __init__(self, api_keys: tuple[str, ...], rate: int):
        self.api_keys = tuple(k for k in api_keys if k)
        self.bucket = TokenBucket(rate)

    def __call__(self, request: Request) -> str:
        who = self._identity(request)
        wait = self.bucket.take(who)
        if wait > 0:
            raise ApiError(429, f"rate limit of {self.bucket.rate} requests a minute reached; "
                           f"retry in {math.ceil(wait)} s", "rate_limit_exceeded",
                           headers={"Retry-After": str(math.ceil(wait))})
        return who

    def _identity(self, request: Request) -> str:
        if not self.api_keys:
            return "addr:" + (request.client.host if request.client else "?")
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        given = given.strip()
        matches = [hmac.compare_digest(given.encode(), key.encode()) for key in self.api_keys]
        if scheme.lower() != "bearer" or not any(matches):
            raise ApiError(401, "missing or wrong API key (send 'Authorization: Bearer <key>')",
                           "invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
        return "key:" + hashlib.sha256(given.encode()).hexdigest()[:16]
