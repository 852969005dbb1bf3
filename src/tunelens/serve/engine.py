"""One batch of requests decoded together, each row streamed as its tokens arrive.

The call itself is the generate stage's (:func:`tunelens.infer.batching.generate_batch`):
prompts fitted to the context, left padding, every decoding setting explicit, stop strings
matched on generated text only, the same cleaning of the output. What a server adds goes in
through that function's ``hooks`` (:class:`RowHooks`):

* each row has its own ``max_tokens`` and may be cancelled (its client left): a stopping
  criterion ends such rows, so a long request does not hold a short one's answer;
* a streamer (transformers' ``BaseStreamer`` protocol, which calls ``put`` with every step's
  tokens, one per row) hands each row's new text to its client. transformers' own
  ``TextIteratorStreamer`` takes one row only.

Streamed text is held back where it could still change: a trailing partial character, trailing
whitespace (the final text is stripped) and a tail that could be the start of a stop string. The
last piece sent is the final text less what was streamed, so the streamed pieces always add up to
the non-streamed answer.
"""

from __future__ import annotations

import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from transformers import StoppingCriteria
from transformers.generation import BaseStreamer

from tunelens.config import GenerationConfig
from tunelens.infer.batching import decode_rows, fit_prompts, generate_batch
from tunelens.infer.sampling import StopCriteria, hf_generation_config, truncate_at_stop
from tunelens.models.context import prompt_budget


@dataclass(frozen=True)
class Sampling:
    """The settings a batch shares: requests with equal ones may be decoded together.

    ``seed`` None (a sampled request that gave none) draws a fresh seed per batch, so such
    requests vary as OpenAI's do, and all of them can share a batch.
    """

    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = 0


@dataclass
class Job:
    """One request's generation: input, limits, and where its text goes."""

    prompt: str
    max_tokens: int
    sampling: Sampling
    on_text: Callable[[str], None] | None = None  # streamed pieces (None: not streamed)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Output:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # stop or length


def decode(model, tokenizer, jobs: list[Job]) -> list[Output]:
    """Generate for ``jobs`` (one shared :class:`Sampling`) in one ``generate`` call."""
    sampling = jobs[0].sampling
    seed = secrets.randbits(63) if sampling.seed is None else sampling.seed
    longest = max(j.max_tokens for j in jobs)
    config = GenerationConfig(max_new_tokens=longest, do_sample=sampling.temperature > 0,
                              temperature=sampling.temperature or 1.0, top_p=sampling.top_p,
                              stop=list(sampling.stop), seed=seed)
    fitted = fit_prompts(tokenizer, [j.prompt for j in jobs], prompt_budget(model, longest))
    rows = RowHooks(tokenizer, jobs, config.stop)
    generated, stop = generate_batch(model, tokenizer, [f.ids for f in fitted],
                                     hf_generation_config(config, tokenizer, model), config.stop,
                                     seed, rows)
    ended = torch.minimum(stop.final_lengths(generated.shape[1]), rows.limits.ended).tolist()
    texts = decode_rows(tokenizer, generated, ended, config.stop)
    outputs = []
    for r, job in enumerate(jobs):
        reason = "stop" if bool(stop.done[r]) and int(stop.lengths[r]) <= job.max_tokens else "length"
        outputs.append(Output(texts[r], len(fitted[r].ids), ended[r], reason))
        if rows.streamer is not None:
            rows.streamer.finish(r, texts[r])
    return outputs


class RowHooks:
    """The server's part of one ``generate`` call (:data:`~tunelens.infer.batching.BatchHooks`):
    per-row limits and cancellation, and a streamer when some row is streamed."""

    def __init__(self, tokenizer, jobs: list[Job], stops: list[str]):
        self.tokenizer, self.jobs, self.stops = tokenizer, jobs, stops
        self.limits: RowLimits | None = None
        self.streamer: RowStreamer | None = None

    def __call__(self, stop: StopCriteria) -> tuple[list[StoppingCriteria], BaseStreamer | None]:
        self.limits = RowLimits(self.jobs, stop.prompt_len)
        if any(j.on_text for j in self.jobs):
            self.streamer = RowStreamer(self.tokenizer, self.jobs, self.stops, (stop, self.limits))
        return [self.limits], self.streamer


class RowLimits(StoppingCriteria):
    """Ends a row at its own ``max_tokens``, or as soon as its request was cancelled."""

    def __init__(self, jobs: list[Job], prompt_len: int):
        self.jobs, self.prompt_len = jobs, prompt_len
        self.limits = torch.tensor([j.max_tokens for j in jobs])
        self.ended = self.limits.clone()  # the step each row was ended at (its limit until then)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        steps = input_ids.shape[1] - self.prompt_len
        done = (steps >= self.limits) | torch.tensor([j.cancelled.is_set() for j in self.jobs])
        self.ended = torch.where(done & (self.ended > steps), torch.full_like(self.ended, steps),
                                 self.ended)
        return done.to(input_ids.device)

    def done(self, row: int, steps: int) -> bool:
        return steps >= int(self.limits[row]) or self.jobs[row].cancelled.is_set()


class RowStreamer(BaseStreamer):
    """Per-row text pieces from ``generate``'s per-step tokens (the module docstring's rules)."""

    def __init__(self, tokenizer, jobs: list[Job], stops: list[str], criteria: tuple):
        self.tokenizer, self.jobs, self.stops = tokenizer, jobs, [s for s in stops if s]
        self.stop, self.limits = criteria
        self.tokens: list[list[int]] = [[] for _ in jobs]
        self.sent = [""] * len(jobs)
        self.closed = [False] * len(jobs)
        self.prompt_seen = False
        self.hold = max((len(s) for s in self.stops), default=1) - 1

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate's first call hands over the prompt
            self.prompt_seen = True
            return
        for r, token in enumerate(value.reshape(-1).tolist()):
            if self.closed[r]:
                continue
            self.tokens[r].append(token)
            steps = len(self.tokens[r])
            stopped = self.stop.done is not None and bool(self.stop.done[r])
            self.closed[r] = stopped or self.limits.done(r, steps)
            if not stopped:  # a finished row's last piece comes from finish()
                self._send(r, self._visible(r))

    def end(self) -> None:
        pass

    def _visible(self, r: int) -> str:
        text = self.tokenizer.decode(self.tokens[r], skip_special_tokens=True)
        cut = truncate_at_stop(text, self.stops)
        if len(cut) == len(text) and self.hold:
            cut = cut[:max(len(cut) - self.hold, 0)]
        return cut.rstrip("\ufffd").strip()

    def _send(self, r: int, visible: str) -> None:
        job = self.jobs[r]
        if job.on_text is None or job.cancelled.is_set() or not visible.startswith(self.sent[r]):
            return
        piece = visible[len(self.sent[r]):]
        if piece:
            self.sent[r] = visible
            job.on_text(piece)

    def finish(self, r: int, final: str) -> None:
        """The rest of row ``r``'s final text (what was held back)."""
        if final.startswith(self.sent[r]):
            self._send(r, final)
