"""The FastAPI application: OpenAI's completion endpoints, ``/v1/explain``, health and metrics.

Prompting: ``/v1/chat/completions`` takes the last user message as the clause and renders it the
way the run was trained and the generate stage prompts it (chat template or plain template,
instruction and shots from ``run.json``), so a served run answers as it did in the study.
``/v1/completions`` feeds its prompt as it is, as OpenAI's legacy endpoint does.

Streaming replies are server-sent events (``data: {json}`` lines, then ``data: [DONE]``), the
framing OpenAI clients parse; a client that leaves mid-stream cancels its row, and the server
carries on with the others.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Response
from fastapi.responses import StreamingResponse

from tunelens.serve import errors
from tunelens.serve.batcher import Batcher
from tunelens.serve.engine import Job, Output, Sampling
from tunelens.serve.errors import ApiError
from tunelens.serve.explain import attribute, check_work
from tunelens.serve.metrics import Instrument, Metrics
from tunelens.serve.registry import Registry, ServedModel
from tunelens.serve.schemas import (
    ChatRequest,
    CompletionRequest,
    ExplainRequest,
    _Body,
    chat_reply,
    chunk,
    completion_reply,
    new_id,
    usage_chunk,
)
from tunelens.serve.security import Guard
from tunelens.serve.settings import ServeConfig


def create_app(registry: Registry, config: ServeConfig, api_keys: tuple[str, ...] = ()) -> FastAPI:
    """The app for already loaded models; uvicorn (or a test) runs it."""
    metrics = Metrics()
    batcher = Batcher(metrics, config.batch_size, config.batch_wait_ms, config.timeout_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        batcher.start()
        yield
        await asyncio.to_thread(batcher.stop)  # after uvicorn let in-flight requests finish

    app = FastAPI(title="tunelens serve", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    errors.install(app)
    app.add_middleware(errors.BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(Instrument, metrics=metrics)
    app.state.batcher, app.state.metrics, app.state.registry = batcher, metrics, registry
    app.state.guard = Guard(api_keys, config.rate_limit)
    guard = Depends(app.state.guard)

    _info_routes(app, registry, metrics, guard)
    _model_routes(app, registry, batcher, config, guard)
    return app


def _info_routes(app: FastAPI, registry: Registry, metrics: Metrics, guard) -> None:
    @app.get("/health")
    async def health():
        return {"status": "ok", "models": list(registry.models)}

    @app.get("/metrics", dependencies=[guard])
    async def prometheus():
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    @app.get("/v1/models", dependencies=[guard])
    async def models():
        return {"object": "list", "data": [
            {"id": m.name, "object": "model", "created": m.created, "owned_by": "tunelens",
             "root": m.path, "merged": m.merged, "prompt_format": m.prompt_format}
            for m in registry.models.values()]}


def _model_routes(app: FastAPI, registry: Registry, batcher: Batcher, config: ServeConfig,
                  guard) -> None:
    @app.post("/v1/chat/completions", dependencies=[guard])
    async def chat(body: ChatRequest):
        served = registry.get(body.model)
        clause = body.clause()
        if clause is None:
            raise ApiError(422, "messages: no user message to answer", "invalid_value", "messages")
        limit = body.max_completion_tokens or body.max_tokens
        job = _job(served, served.render(clause), body, limit, config)
        if body.stream:
            return _stream(batcher, served, job, "chat", body.include_usage())
        return chat_reply(served.name, await batcher.generate(served, job))

    @app.post("/v1/completions", dependencies=[guard])
    async def completions(body: CompletionRequest):
        served = registry.get(body.model)
        prompts = body.prompts()
        if not prompts or len(prompts) > config.batch_size:
            raise ApiError(422, f"prompt: give 1 to {config.batch_size} prompts", "invalid_value",
                           "prompt")
        jobs = [_job(served, p, body, body.max_tokens, config) for p in prompts]
        if body.stream:
            if len(jobs) > 1:
                raise ApiError(422, "stream: one prompt per streamed request", "invalid_value",
                               "stream")
            return _stream(batcher, served, jobs[0], "text", body.include_usage())
        outputs = await asyncio.gather(*(batcher.generate(served, j) for j in jobs))
        return completion_reply(served.name, list(outputs))

    @app.post("/v1/explain", dependencies=[guard])
    async def explain(body: ExplainRequest):
        served = registry.get(body.model)
        await batcher.run_alone(lambda: check_work(served, body, config.max_explain_work))
        target, kind = body.completion, "reference"
        if target is None:
            job = _job(served, served.render(body.prompt), _Body(), body.max_tokens, config)
            target, kind = (await batcher.generate(served, job)).text, "generation"
            if not target:
                raise ApiError(422, "the model's answer is empty: nothing to attribute; give a "
                               "completion", "empty_target", "completion")
        return await batcher.run_alone(lambda: attribute(served, body, target, kind))


def _job(served: ServedModel, prompt: str, body: _Body, max_tokens: int | None,
         config: ServeConfig) -> Job:
    """A generation job, its limits checked (422 naming the field)."""
    from tunelens.config import GenerationConfig

    if max_tokens is not None and max_tokens > config.max_tokens:
        raise ApiError(422, f"max_tokens: {max_tokens} is above this server's limit of "
                       f"{config.max_tokens}", "invalid_value", "max_tokens")
    greedy = not body.temperature  # then top_p and the seed change nothing: keep batches whole
    sampling = Sampling(temperature=body.temperature or 0.0,
                        top_p=1.0 if greedy else body.top_p or 1.0,
                        stop=body.stops(GenerationConfig().stop), seed=0 if greedy else body.seed)
    return Job(prompt, max_tokens or config.default_max_tokens, sampling)


def _stream(batcher: Batcher, served: ServedModel, job: Job, kind: str,
            with_usage: bool) -> StreamingResponse:
    """Server-sent events of one job: pieces as they come, then the finish reason (and the usage
    when asked for), then [DONE]."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[str] = asyncio.Queue()
    job.on_text = lambda text: loop.call_soon_threadsafe(pieces.put_nowait, text)
    ident = new_id("chatcmpl" if kind == "chat" else "cmpl")

    async def events() -> AsyncIterator[str]:
        task = asyncio.create_task(batcher.generate(served, job))
        first = True
        try:
            while True:
                piece = await _next_piece(pieces, task)
                if piece is None:
                    break
                yield _sse(chunk(kind, ident, served.name, piece, None, first))
                first = False
            output: Output = task.result()
            yield _sse(chunk(kind, ident, served.name, None, output.finish_reason, first))
            if with_usage:
                yield _sse(usage_chunk(kind, ident, served.name, output))
            yield "data: [DONE]\n\n"
        except ApiError as exc:
            yield _sse(errors.error_body(exc.status, exc.message, exc.code))
        except Exception:  # noqa: BLE001  (logged by the batcher; the client gets no traceback)
            yield _sse(errors.error_body(500, "internal server error (logged on the server)"))
        finally:
            job.cancelled.set()  # a client gone mid-stream frees its row
            task.cancel()

    return StreamingResponse(events(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache"})


async def _next_piece(pieces: asyncio.Queue, task: asyncio.Task) -> str | None:
    """The next streamed piece, or None once the job is done and every piece was taken."""
    while True:
        if not pieces.empty():
            return pieces.get_nowait()
        if task.done():
            task.result()  # raise its error, if any
            await asyncio.sleep(0)  # pieces the worker scheduled before finishing
            return None if pieces.empty() else pieces.get_nowait()
        getter = asyncio.ensure_future(pieces.get())
        await asyncio.wait({getter, task}, return_when=asyncio.FIRST_COMPLETED)
        if getter.done():
            return getter.result()
        getter.cancel()


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"
