"""LLM-as-judge: a second model grades each prediction's accuracy and relevance from 1 to 5.

In the manner of RAGAS and DeepEval, the judge reads the source clause, the reference and the
prediction through a versioned prompt template (``judge_templates/<version>.txt``; the version and
a hash of its text are recorded with the scores, so a changed prompt never passes for the old one)
and answers with a JSON object. Neither library fits here: both pull in their own LLM clients and
metric zoos, while what is needed is one prompt, any OpenAI-compatible server (Ollama, vLLM,
llama.cpp, hosted) or a local Hugging Face model, and a parser that tolerates how small models
really answer (prose around the JSON, or ``Accuracy: 4`` lines).

A reply that cannot be parsed is asked again (``retries`` times, sampling at ``retry_temperature``
so the retry can differ) and then recorded as missing, never a crash. The HTTP side is the
``openai`` client's: rate limits, server errors and timeouts are retried with back-off; a server
that still cannot be reached or does not answer in time stops the run with one line naming the URL.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import string
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import resources
from typing import Protocol

from tunelens.chat_endpoint import ChatEndpoint
from tunelens.config import JudgeConfig
from tunelens.errors import TunelensError

SCORE_MIN, SCORE_MAX = 1, 5
API_KEY_ENV = "TUNELENS_JUDGE_API_KEY"
# Re-tries of one HTTP request (429, 5xx, timeouts), when the config does not say (see make_backend).


@dataclass(frozen=True)
class Verdict:
    accuracy: float
    relevance: float
    rationale: str | None


@dataclass(frozen=True)
class Judgement:
    """The outcome for one example: a verdict, or None when every attempt was unparseable."""

    verdict: Verdict | None
    attempts: int


@dataclass(frozen=True)
class Template:
    version: str
    text: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.text.encode("utf-8")).hexdigest()

    def render(self, clause: str, reference: str, prediction: str) -> str:
        return string.Template(self.text).substitute(
            clause=clause, reference=reference, prediction=prediction
        )


def template_versions() -> list[str]:
    folder = resources.files("tunelens.evaluate").joinpath("judge_templates")
    return sorted(p.name[:-4] for p in folder.iterdir() if p.name.endswith(".txt"))


def load_template(version: str) -> Template:
    path = resources.files("tunelens.evaluate").joinpath("judge_templates", f"{version}.txt")
    if not path.is_file():
        raise TunelensError(
            f"judge template '{version}' does not exist (available: {', '.join(template_versions())})"
        )
    return Template(version, path.read_text(encoding="utf-8"))


# ---------------------------------------------------------------------------------------------
# reading the reply
# ---------------------------------------------------------------------------------------------

_LINE = r"(?im)^[\s\-*#>_]*{key}[\s*_]*(?:score)?[\s*_]*[:=]\s*\**\s*(-?\d+(?:\.\d+)?)"
_RATIONALE = re.compile(r"(?im)^[\s\-*#>_]*(?:rationale|reason|explanation)[\s*_]*[:=]\s*(.+?)\s*$")


def _score(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        match = re.match(r"\s*(-?\d+(?:\.\d+)?)", value)
        value = float(match.group(1)) if match else None
    if not isinstance(value, int | float):
        return None
    return float(value) if SCORE_MIN <= value <= SCORE_MAX else None


def _json_objects(text: str) -> Iterable[dict]:
    decoder = json.JSONDecoder()
    for match in re.finditer(r"\{", text):
        try:
            obj, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict):
            yield obj


def _from_mapping(obj: dict) -> Verdict | None:
    keys = {str(k).strip().lower(): v for k, v in obj.items()}
    accuracy, relevance = _score(keys.get("accuracy")), _score(keys.get("relevance"))
    if accuracy is None or relevance is None:
        return None
    rationale = next((keys[k] for k in ("rationale", "reason", "explanation") if k in keys), None)
    return Verdict(accuracy, relevance, None if rationale is None else str(rationale))


def parse_reply(text: str) -> Verdict | None:
    """Scores from a judge's reply: a JSON object anywhere in it, else ``accuracy: 4`` lines."""
    for obj in _json_objects(text):
        verdict = _from_mapping(obj)
        if verdict is not None:
            return verdict
    found = {}
    for key in ("accuracy", "relevance"):
        match = re.search(_LINE.format(key=key), text)
        found[key] = _score(float(match.group(1))) if match else None
    if found["accuracy"] is None or found["relevance"] is None:
        return None
    rationale = _RATIONALE.search(text)
    return Verdict(found["accuracy"], found["relevance"], rationale.group(1) if rationale else None)


# ---------------------------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------------------------


class Backend(Protocol):
    name: str

    def complete(self, prompt: str, temperature: float) -> str: ...


class HttpBackend:
    """Any OpenAI-compatible ``/v1/chat/completions`` server (:class:`~tunelens.chat_endpoint.ChatEndpoint`:
    retries with back-off, one-line errors); the API key is read from ``TUNELENS_JUDGE_API_KEY``
    (local servers need none)."""

    def __init__(self, url: str, model: str, timeout: float, max_tokens: int,
                 max_retries: int):
        self._endpoint = ChatEndpoint(url, model, role="judge", api_key=os.environ.get(API_KEY_ENV),
                                      timeout=timeout, max_tokens=max_tokens, max_retries=max_retries)
        self.endpoint, self.name = self._endpoint.endpoint, self._endpoint.name

    def complete(self, prompt: str, temperature: float) -> str:
        return self._endpoint.chat(prompt, temperature=temperature)

    def close(self) -> None:
        self._endpoint.close()


class LocalBackend:
    """A local Hugging Face causal LM, prompted through its chat template when it has one."""

    def __init__(self, path: str, max_new_tokens: int, seed: int = 0):
        from tunelens.models.loading import load_model

        self.name = f"local model {path}"
        self.model, self.tokenizer = load_model(path)
        self.model.eval()
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self._calls = 0

    def complete(self, prompt: str, temperature: float) -> str:
        import torch

        tok = self.tokenizer
        if getattr(tok, "chat_template", None):
            text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                           add_generation_prompt=True)
            ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
        else:
            ids = tok(prompt, return_tensors="pt")["input_ids"]
        limit = getattr(self.model.config, "max_position_embeddings", None)
        if limit is not None:  # keep the end of the prompt (the question) if it is too long
            ids = ids[:, -max(limit - self.max_new_tokens, 1):]
        sample = temperature > 0
        self._calls += 1
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(self.seed + self._calls)
            out = self.model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids),
                max_new_tokens=self.max_new_tokens, do_sample=sample,
                temperature=temperature if sample else None, top_p=None, top_k=None,
                pad_token_id=tok.pad_token_id,
            )
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def close(self) -> None:
        pass


def enabled(config: JudgeConfig) -> bool:
    return bool(config.url or config.path)


def make_backend(config: JudgeConfig):
    if config.url:
        return HttpBackend(config.url, config.model, config.timeout_seconds, config.max_new_tokens,
                           max_retries=config.http_retries)
    if config.path:
        return LocalBackend(config.path, config.max_new_tokens)
    raise TunelensError("no judge configured: give a judge URL and model, or a local model path")


# ---------------------------------------------------------------------------------------------
# judging
# ---------------------------------------------------------------------------------------------


def judge_one(backend, template: Template, clause: str, reference: str, prediction: str,
              config: JudgeConfig) -> Judgement:
    prompt = template.render(clause, reference, prediction)
    for attempt in range(config.retries + 1):
        temperature = config.temperature if attempt == 0 else config.retry_temperature
        verdict = parse_reply(backend.complete(prompt, temperature))
        if verdict is not None:
            return Judgement(verdict, attempt + 1)
    return Judgement(None, config.retries + 1)


def judge_rows(rows: list[dict], config: JudgeConfig,
               advance: Callable[[], None] | None = None) -> tuple[list[Judgement], dict]:
    """Judge every row (``prompt``, ``reference``, ``prediction``); returns judgements and info."""
    template = load_template(config.template_version)
    backend = make_backend(config)
    try:
        judgements = []
        for row in rows:
            judgements.append(
                judge_one(backend, template, row["prompt"], row["reference"], row["prediction"],
                          config)
            )
            if advance is not None:
                advance()
    finally:
        backend.close()
    info = {
        "backend": backend.name,
        "template_version": template.version,
        "template_sha256": template.sha256,
        "retries": config.retries,
        "missing": sum(j.verdict is None for j in judgements),
    }
    return judgements, info
