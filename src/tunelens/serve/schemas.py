"""Request bodies in OpenAI's wire format (and ``/v1/explain``'s), and the replies built from outputs.

Only what tunelens can honour is accepted: one choice per prompt (``n`` = 1), text content.
Unknown fields that OpenAI clients send by default (``user``, ``stream_options``, ...) are ignored,
as OpenAI-compatible servers do; a field with a wrong type or value is a 422 naming it.
"""

from __future__ import annotations

import time
import uuid
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tunelens.config import ExplanationConfig
from tunelens.explain.catalog import BASELINES, GRANULARITIES, METHODS
from tunelens.serve.engine import Output


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")

    include_usage: bool = False  # a last chunk with the usage and no choices, as OpenAI sends


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1

    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage

    def stops(self, default: list[str]) -> tuple[str, ...]:
        if self.stop is None:
            return tuple(default)
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content or ""


class ChatRequest(_Body):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)

    def clause(self) -> str | None:
        """The last user message: the clause the run translates."""
        return next((m.text() for m in reversed(self.messages) if m.role == "user"), None)


class CompletionRequest(_Body):
    prompt: str | list[str]

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


def _explain_default(name: str):
    return ExplanationConfig.model_fields[name].default


class ExplainRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    prompt: str = Field(min_length=1, description="the clause")
    completion: str | None = Field(None, min_length=1, description="the target; default: the "
                                   "model's own answer")
    method: Literal[tuple(METHODS)] = _explain_default("method")
    granularity: Literal[tuple(GRANULARITIES)] = _explain_default("granularity")
    baseline: Literal[tuple(BASELINES)] = _explain_default("baseline")
    n_samples: int = Field(_explain_default("n_samples"), ge=1)
    seed: int = _explain_default("seed")
    example_id: str = Field("1", description="seeds sampling methods as `tunelens explain` seeds "
                            "the row with this id (a row without id: its line number)")
    max_tokens: int | None = Field(None, ge=1, description="when generating the target")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def usage(outputs: list[Output]) -> dict:
    prompt = sum(o.prompt_tokens for o in outputs)
    completion = sum(o.completion_tokens for o in outputs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def chat_reply(model: str, output: Output) -> dict:
    return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
            "model": model, "usage": usage([output]),
            "choices": [{"index": 0, "finish_reason": output.finish_reason, "logprobs": None,
                         "message": {"role": "assistant", "content": output.text}}]}


def completion_reply(model: str, outputs: list[Output]) -> dict:
    return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
            "model": model, "usage": usage(outputs),
            "choices": [{"index": i, "text": o.text, "logprobs": None, "finish_reason": o.finish_reason}
                        for i, o in enumerate(outputs)]}


def usage_chunk(kind: str, ident: str, model: str, output: Output) -> dict:
    """The last streamed event when ``stream_options.include_usage`` asked for it."""
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    return {"id": ident, "object": obj, "created": int(time.time()), "model": model,
            "choices": [], "usage": usage([output])}


def chunk(kind: str, ident: str, model: str, text: str | None, finish: str | None,
          first: bool = False) -> dict:
    """One streamed event: a piece of text, or (``finish`` set) the end of the choice."""
    if kind == "chat":
        delta = {} if text is None else {"content": text}
        if first:
            delta["role"] = "assistant"
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        obj = "chat.completion.chunk"
    else:
        choice = {"index": 0, "text": text or "", "finish_reason": finish, "logprobs": None}
        obj = "text_completion"
    return {"id": ident, "object": obj, "created": int(time.time()), "model": model,
            "choices": [choice]}
