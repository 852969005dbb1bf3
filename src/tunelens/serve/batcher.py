"""Dynamic batching: requests that arrive while the model is busy are decoded together.

One worker thread owns the models (torch is not asked to run two generations at once, and the
event loop never blocks on a forward pass). It takes the first waiting request and everything
that queued up while the previous batch ran, and lets others join until no request has arrived
for ``batch_wait_ms``, then decodes each group of requests with the same model and sampling
settings as one batch (:func:`tunelens.serve.engine.decode`). Under load the queue refills while
a batch decodes, so batches grow with the number of clients: at 8 clients one ``generate`` call
serves 8 requests for little more than the cost of one on a small model.

The batch closes once the queue has been quiet for a gap of ``batch_wait_ms`` or 5% of the last
batch's decoding time, whichever is longer, measured from the last arrival. When a batch's
replies go out, its clients' next requests reach the queue one by one, tens of milliseconds
apart on a busy CPU, while the requests that queued during that batch are already there. A fixed
5 ms window from the first arrival locked 8 clients into two alternating half batches, each
costing about as much as a full one (SmolLM2-135M on a shared 2-core CPU: a mean batch of 4.0,
batching 2.2-2.5x one-at-a-time; benchmarks/serve_load.py). The gap scales with the model's
speed: 5% of a multi-second CPU batch lets the stragglers join, and a fast GPU batch keeps the
5 ms floor. A batch of one request (one client, or ``--batch-size 1``) leaves the gap at the
floor, so a lone client does not wait 5% for nobody; a full batch waits for nothing.

Attributions (``/v1/explain``) run on the same thread, alone, between batches; so does all
tokenizing, because a fast (Rust) tokenizer used from two threads at once can fail ("Already
borrowed").

A request that is cancelled (client gone, or timed out) before its batch starts is dropped; one
cancelled mid-batch ends its row at the next step (:class:`tunelens.serve.engine.RowLimits`).
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from tunelens.errors import TunelensError
from tunelens.serve.engine import Job, Output, decode
from tunelens.serve.errors import ApiError
from tunelens.serve.metrics import Metrics
from tunelens.serve.registry import ServedModel

log = logging.getLogger("tunelens.serve")
GATHER_SHARE = 0.05  # the quiet gap that closes a batch: at least this share of the last batch's time
GATHER_WAITS = 10  # and a batch waits at most this many quiet gaps in all


@dataclass
class Pending:
    """A queued unit of work and the future of the request waiting for it."""

    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    served: ServedModel | None = None
    job: Job | None = None
    call: Callable[[], object] | None = None  # exclusive work (an attribution)

    def key(self):
        return None if self.job is None else (self.served.name, self.job.sampling)

    def resolve(self, result=None, error: BaseException | None = None) -> None:
        def settle():
            if self.future.done():
                return
            if error is not None:
                self.future.set_exception(error)
            else:
                self.future.set_result(result)

        self.loop.call_soon_threadsafe(settle)


class Batcher:
    def __init__(self, metrics: Metrics, batch_size: int, batch_wait_ms: float, timeout_s: float):
        self.metrics, self.batch_size = metrics, batch_size
        self.wait, self.timeout = batch_wait_ms / 1000.0, timeout_s
        self.last_batch_s = 0.0  # how long the last generate call took (it sizes the gap)
        self.queue: queue.Queue[Pending | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, name="tunelens-batcher", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Finish what is queued, then end the worker (graceful shutdown)."""
        self.queue.put(None)
        self.thread.join(timeout=self.timeout)

    async def generate(self, served: ServedModel, job: Job) -> Output:
        return await self._submit(served=served, job=job)

    async def run_alone(self, call: Callable[[], object]):
        return await self._submit(call=call)

    async def _submit(self, **work):
        loop = asyncio.get_running_loop()
        pending = Pending(loop, loop.create_future(), **work)
        self.queue.put(pending)
        self.metrics.queue_depth.set(self.queue.qsize())
        try:
            return await asyncio.wait_for(asyncio.shield(pending.future), self.timeout)
        except TimeoutError:
            raise ApiError(504, f"the request took longer than {self.timeout:g} s",
                           "timeout") from None
        finally:
            if pending.job is not None and not pending.future.done():
                pending.job.cancelled.set()  # timed out, or the client went away

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self.queue.get()
            if first is None:
                break
            batch, stopping = self._gather(first)
            self.metrics.queue_depth.set(self.queue.qsize())
            for group in _groups(batch, self.batch_size):
                self._serve(group)

    def _gather(self, first: Pending) -> tuple[list[Pending], bool]:
        """``first``, what had already queued, and what joins it until the queue has been quiet
        for the gap (the module docstring), at most ``GATHER_WAITS`` gaps in all."""
        gap = max(self.wait, GATHER_SHARE * self.last_batch_s)
        start = time.monotonic()
        batch, deadline = [first], start + gap
        while len(batch) < self.batch_size * 4:
            full = len(batch) >= self.batch_size  # then take what is queued, wait for nothing
            try:
                item = self.queue.get(timeout=0 if full else max(deadline - time.monotonic(), 0))
            except queue.Empty:
                break
            if item is None:
                return batch, True
            batch.append(item)
            deadline = min(time.monotonic() + gap, start + GATHER_WAITS * gap)
        return batch, False

    def _serve(self, group: list[Pending]) -> None:
        live = [p for p in group if p.job is None or not p.job.cancelled.is_set()]
        if not live:
            return
        try:
            if live[0].call is not None:
                live[0].resolve(live[0].call())
                return
            served = live[0].served
            start = time.perf_counter()
            outputs = decode(served.model, served.tokenizer, [p.job for p in live])
            seconds = time.perf_counter() - start
            self.last_batch_s = seconds if len(live) > 1 else 0.0
            self._count(served, len(live), outputs, seconds)
            for pending, output in zip(live, outputs, strict=True):
                pending.resolve(output)
        except ApiError as exc:
            for pending in live:
                pending.resolve(error=exc)
        except TunelensError as exc:
            for pending in live:
                pending.resolve(error=ApiError(422, str(exc), "invalid_value"))
        except Exception as exc:  # noqa: BLE001  (a bug: logged here, a bare 500 to the client)
            log.exception("generation failed")
            for pending in live:
                pending.resolve(error=exc)

    def _count(self, served: ServedModel, rows: int, outputs: list[Output], seconds: float) -> None:
        tokens = sum(o.completion_tokens for o in outputs)
        self.metrics.batch_size.observe(rows)
        self.metrics.tokens.labels(served.name).inc(tokens)
        if seconds > 0:
            self.metrics.tokens_per_second.labels(served.name).set(tokens / seconds)


def _groups(batch: list[Pending], size: int) -> list[list[Pending]]:
    """Requests that can share a ``generate`` call, at most ``size`` each; exclusive calls alone;
    groups in the order their first request arrived."""
    groups: dict = {}
    out: list[list[Pending]] = []
    for pending in batch:
        key = pending.key()
        if key is None:
            out.append([pending])
            continue
        if key not in groups or len(groups[key]) >= size:
            groups[key] = []
            out.append(groups[key])
        groups[key].append(pending)
    return out
