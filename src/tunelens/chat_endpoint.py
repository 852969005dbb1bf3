"""One OpenAI-compatible chat-completions endpoint, through the ``openai`` client.

The one place that builds the client, sends a chat request and turns every failure into one line
naming the endpoint: the LLM judge (:mod:`tunelens.evaluate.judge`) and the training-data
generator (:mod:`tunelens.data.generate.backends`) both reach servers (Ollama, vLLM, llama.cpp's
server, OpenAI, ``tunelens serve``) through it. The client retries what is worth retrying -- 429
rate limits, 408/409, 5xx, dropped connections and timeouts -- with exponential back-off that
honours ``Retry-After``; ``max_retries`` caps the re-tries of one request.
"""

from __future__ import annotations

import re

from tunelens.errors import TunelensError, first_line


def api_base(url: str) -> str:
    """The ``/v1`` base URL (what the OpenAI client wants) from a server root, its ``/v1`` base,
    or the chat-completions endpoint itself."""
    url = url.rstrip("/").removesuffix("/chat/completions")
    return url if re.search(r"/v\d+$", url) else url + "/v1"


def chat_endpoint(url: str) -> str:
    """The chat-completions URL requests are posted to (named in every error)."""
    return api_base(url) + "/chat/completions"


class ChatEndpoint:
    """``model`` at ``url``; ``role`` (judge, generator) and ``hint`` (what to do next) go into
    every error line."""

    def __init__(self, url: str, model: str, *, role: str, api_key: str | None, timeout: float,
                 max_tokens: int, max_retries: int, hint: str = ""):
        from openai import OpenAI

        self.endpoint = chat_endpoint(url)
        self.name = f"{model} at {self.endpoint}"
        self.model, self.timeout, self.max_tokens = model, timeout, max_tokens
        self.role, self.hint, self.attempts = role, hint, max_retries + 1
        self._client = OpenAI(base_url=api_base(url), api_key=api_key or "none",
                              max_retries=max_retries, timeout=timeout)

    def chat(self, prompt: str, *, temperature: float, top_p: float | None = None,
             seed: int | None = None) -> str:
        """The reply's text to one user message ("" for a reply without text)."""
        import openai

        extra = {k: v for k, v in (("top_p", top_p), ("seed", seed)) if v is not None}
        try:
            reply = self._client.chat.completions.create(
                model=self.model, messages=[{"role": "user", "content": prompt}],
                temperature=temperature, max_tokens=self.max_tokens, **extra)
        except openai.APITimeoutError:
            raise self._failure(f"no reply within {self.timeout:g} s (timeout)") from None
        except openai.APIConnectionError as exc:
            raise self._failure(f"cannot connect ({first_line(exc.__cause__ or exc)})") from None
        except openai.APIStatusError as exc:
            raise self._failure(f"HTTP {exc.status_code} ({first_line(exc.response.text)[:200]})") from None
        except openai.OpenAIError as exc:
            raise self._failure(f"{type(exc).__name__} ({first_line(exc)})") from None
        try:
            content = reply.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise self._failure("not an OpenAI-style chat completion reply") from None
        return content if isinstance(content, str) else ""

    def close(self) -> None:
        self._client.close()

    def _failure(self, what: str) -> TunelensError:
        tries = f"{self.attempts} attempt{'s' if self.attempts > 1 else ''}"
        return TunelensError(f"{self.role} at {self.endpoint}: {what}, {tries}{self.hint}")
