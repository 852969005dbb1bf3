"""The model that writes the data: an OpenAI-compatible endpoint or a local model.

Endpoints (Ollama, vLLM, llama.cpp's server, a hosted API) go through the ``openai`` client,
which retries 429/5xx/timeouts with back-off; requests of a batch run on at most
``concurrency`` threads, so a server is never asked for more than that at once. The API key is
read from the environment variable the user names (local servers need none). A failure that
survives the retries stops the run with one line naming the URL; the batches already written
stay, and a rerun continues after them.

A local model is loaded by any reference tunelens accepts (``smollm2-135m``, a path, a hub id,
a run folder) and decoded by :func:`tunelens.infer.batching.generate_texts`, the batched loop
every stage uses; prompts go through the tokenizer's chat template when it has one.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from tunelens.chat_endpoint import ChatEndpoint
from tunelens.errors import TunelensError


@dataclass(frozen=True)
class Request:
    prompt: str
    temperature: float  # 0 is greedy
    top_p: float
    seed: int


class EndpointGenerator:
    """``/v1/chat/completions`` of any OpenAI-compatible server (module docstring), through
    :class:`~tunelens.chat_endpoint.ChatEndpoint`, ``concurrency`` requests at a time."""

    def __init__(self, url: str, model: str, *, api_key_env: str | None, max_tokens: int,
                 timeout: float, retries: int, concurrency: int):
        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise TunelensError(f"environment variable {api_key_env} (the API key) is not set")
        self._endpoint = ChatEndpoint(url, model, role="generator", api_key=key, timeout=timeout,
                                      max_tokens=max_tokens, max_retries=retries,
                                      hint="; rerun the same command to continue")
        self.endpoint, self.name, self.model = self._endpoint.endpoint, self._endpoint.name, model
        self.concurrency = concurrency

    def identity(self) -> dict:
        return {"kind": "endpoint", "url": self.endpoint, "model": self.model}

    def complete(self, requests: list[Request]) -> list[str]:
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(self._one, requests))

    def _one(self, request: Request) -> str:
        return self._endpoint.chat(request.prompt, temperature=request.temperature,
                                   top_p=request.top_p, seed=request.seed)

    def close(self) -> None:
        self._endpoint.close()


class LocalGenerator:
    """A local causal LM, batched through :func:`~tunelens.infer.batching.generate_texts`."""

    def __init__(self, model: str, *, max_tokens: int, batch_size: int):
        from tunelens.models.loading import load_placed
        from tunelens.models.run_settings import ModelSettings

        self.name = f"local model {model}"
        self.model_ref, self.max_tokens, self.batch_size = model, max_tokens, batch_size
        self.llm, self.tokenizer = load_placed(model, ModelSettings.of(model))

    def identity(self) -> dict:
        return {"kind": "local", "model": self.model_ref}

    def _chat(self, prompt: str) -> str:
        from tunelens.data.templates import has_chat_template

        if not has_chat_template(self.tokenizer):
            return prompt + "\n"
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                                  tokenize=False, add_generation_prompt=True)

    def complete(self, requests: list[Request]) -> list[str]:
        from tunelens.config import GenerationConfig
        from tunelens.infer.batching import generate_texts

        replies: list[str] = [""] * len(requests)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p), []).append(i)
        for (temperature, top_p), members in groups.items():
            sample = temperature > 0
            config = GenerationConfig(
                max_new_tokens=self.max_tokens, do_sample=sample,
                temperature=temperature if sample else 1.0, top_p=top_p if sample else 1.0,
                stop=[], batch_size=self.batch_size, seed=requests[members[0]].seed)
            outs = generate_texts(self.llm, self.tokenizer,
                                  [self._chat(requests[i].prompt) for i in members], config)
            for i, out in zip(members, outs, strict=True):
                replies[i] = out.samples[0]
        return replies

    def close(self) -> None:
        pass


def make_generator(generator: str, url: str | None, *, api_key_env: str | None, max_tokens: int,
                   timeout: float, retries: int, concurrency: int, batch_size: int):
    """An endpoint when a URL is given (``--generator-url``, or ``--generator`` is one), else a
    local model by reference."""
    if generator.startswith(("http://", "https://")):
        url, generator = generator, "default"
    if url:
        return EndpointGenerator(url, generator, api_key_env=api_key_env, max_tokens=max_tokens,
                                 timeout=timeout, retries=retries, concurrency=concurrency)
    return LocalGenerator(generator, max_tokens=max_tokens, batch_size=batch_size)
