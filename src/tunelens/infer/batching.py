"""Batched generation: left padding, length-sorted memory-bounded batches, back-off on OOM.

transformers' ``generate`` decodes one padded batch with a KV cache; what it leaves to the caller
is choosing the batches. The rule used here:

1. Prompts are sorted by token length, longest first, so rows of similar length share a batch
   (little padding) and the largest batch runs first (a memory problem shows up at once, not
   after an hour).
2. A batch takes rows while it holds at most ``batch_size`` prompts and
   ``rows x num_samples x (longest prompt + max_new_tokens) <= max_batch_tokens`` -- the KV cache
   grows with exactly that product, so long inputs automatically get smaller batches. A single
   row always forms a batch, however long.
3. If a batch still runs out of memory it is split in half and both halves are retried; a
   single row that runs out of memory is a user error (shorten the input or max_new_tokens).

Before any of that, every prompt is fitted into the model's context less ``max_new_tokens``
(:mod:`tunelens.models.context`: cut from the left, one warning with the count), so an over-long
prompt costs a truncation, not minutes of attention over positions the model never learned.

Each batch is seeded from the study seed and its first row's rank in the sorted order, so the
same seed, data and batch settings give the same samples, retries included.

One batch is one :func:`generate_batch` call; ``tunelens serve`` calls it directly for the
requests it batched, adding its own per-row limits and streamer through ``hooks``.

Batches are static: a batch runs until its longest output ends (or every row stopped). Two ways
around that were measured on the CPU and dropped: transformers' continuous batching
(``generate_batch``) ran over 10x slower than plain ``generate`` here, and refilling finished
rows between rounds by re-reading the unfinished rows' text was never faster, because prefill,
not decoding, dominates short clause-to-rule outputs (benchmarks/generate_throughput.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList
from transformers.generation import BaseStreamer

from tunelens.config import GenerationConfig
from tunelens.errors import TunelensError
from tunelens.infer.sampling import StopCriteria, eos_token_ids, hf_generation_config, truncate_at_stop
from tunelens.models.context import Fitted, fit_to_context, prompt_budget
from tunelens.models.run_settings import adds_special_tokens


@dataclass
class Generation:
    """One prompt's output: ``samples`` (one unless num_samples > 1), tokens generated, and the
    characters cut from the prompt's start to fit the context (0 when it fitted)."""

    samples: list[str]
    tokens: int
    truncated_chars: int = 0


def fit_prompts(tokenizer, prompts: list[str], budget: int | None = None) -> list[Fitted]:
    """Token ids per prompt within ``budget``; a prompt that starts with BOS (a rendered chat
    template) is encoded as it is, others get BOS added (the rule training and attribution follow)."""
    add = adds_special_tokens(tokenizer, prompts[0]) if prompts else True  # one format per call
    return fit_to_context(tokenizer, prompts, budget, add_special_tokens=add)


def encode_prompts(tokenizer, prompts: list[str]) -> list[list[int]]:
    """Token ids per prompt, uncut (what :func:`generate_texts` feeds when everything fits)."""
    return [f.ids for f in fit_prompts(tokenizer, prompts)]


def plan_batches(lengths: list[int], batch_size: int, max_batch_tokens: int, max_new_tokens: int,
                 num_samples: int = 1) -> list[list[int]]:
    """Row indices per batch (rule 1 and 2 of the module docstring)."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        width = (lengths[current[0]] if current else lengths[i]) + max_new_tokens
        if current and (len(current) >= batch_size
                        or (len(current) + 1) * num_samples * width > max_batch_tokens):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for n, row in enumerate(rows):
        if row:
            ids[n, width - len(row):] = torch.tensor(row, dtype=torch.long)
            mask[n, width - len(row):] = 1
    return ids, mask


def generate_texts(model, tokenizer, prompts: list[str], config: GenerationConfig,
                   on_batch: Callable[[int, int], None] | None = None) -> list[Generation]:
    """Generate for every prompt (already rendered through the template), in input order.

    ``on_batch(rows_done, tokens_generated)`` is called after each batch (progress bars).
    """
    if tokenizer.pad_token_id is None:
        raise TunelensError("the tokenizer has neither a pad nor an EOS token; cannot batch")
    fitted = fit_prompts(tokenizer, prompts, prompt_budget(model, config.max_new_tokens))
    encoded = [f.ids for f in fitted]
    queue = plan_batches([len(e) for e in encoded], config.batch_size, config.max_batch_tokens,
                         config.max_new_tokens, config.num_samples)
    rank = {row: n for n, row in enumerate(i for batch in queue for i in batch)}
    gen_config = hf_generation_config(config, tokenizer, model)
    results: list[Generation | None] = [None] * len(prompts)
    model.eval()
    while queue:
        batch = queue.pop(0)
        try:
            outputs = _run_batch(model, tokenizer, [encoded[i] for i in batch], gen_config, config,
                                 seed=config.seed * 1_000_003 + rank[batch[0]])
        except (torch.OutOfMemoryError, RuntimeError) as exc:
            if not _is_oom(exc):
                raise
            _free_memory()
            if len(batch) == 1:
                raise TunelensError(
                    f"out of memory generating one prompt of {len(encoded[batch[0]])} tokens "
                    f"(+{config.max_new_tokens} new); shorten the input or lower max_new_tokens"
                ) from None
            half = len(batch) // 2
            queue[:0] = [batch[:half], batch[half:]]
            continue
        for i, out in zip(batch, outputs, strict=True):
            out.truncated_chars = fitted[i].truncated_chars
            results[i] = out
        if on_batch is not None:
            on_batch(len(batch), sum(o.tokens for o in outputs))
    return results  # type: ignore[return-value]


def _run_batch(model, tokenizer, rows: list[list[int]], gen_config, config: GenerationConfig,
               seed: int) -> list[Generation]:
    generated, stop = generate_batch(model, tokenizer, rows, gen_config, config.stop, seed)
    lengths = stop.final_lengths(generated.shape[1])
    texts = decode_rows(tokenizer, generated, lengths.tolist(), config.stop)
    n = config.num_samples
    return [Generation(samples=texts[k * n:(k + 1) * n], tokens=int(lengths[k * n:(k + 1) * n].sum()))
            for k in range(len(rows))]


BatchHooks = Callable[[StopCriteria], tuple[list[StoppingCriteria], BaseStreamer | None]]


def generate_batch(model, tokenizer, rows: list[list[int]], gen_config, stops: list[str], seed: int,
                   hooks: BatchHooks | None = None) -> tuple[torch.Tensor, StopCriteria]:
    """One left-padded ``generate`` call over token-id ``rows``, seeded without touching the
    global RNG: the generated columns (on the CPU) and the stop criterion that watched them
    (``final_lengths`` per row, ``done`` for the rows that met EOS or a stop string).

    ``hooks(stop)`` returns more stopping criteria and a streamer for this call, built with the
    batch's own ``stop`` (its ``prompt_len``, which rows are done): the server ends rows at their
    own ``max_tokens`` or when their client left, and streams each row (:mod:`tunelens.serve.engine`).
    """
    device = _device_of(model)
    ids, mask = left_pad(rows, tokenizer.pad_token_id)
    stop = StopCriteria(tokenizer, stops, prompt_len=ids.shape[1],
                        eos_ids=eos_token_ids(tokenizer, model))
    extra, streamer = hooks(stop) if hooks is not None else ([], None)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.inference_mode():
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device),
                             generation_config=gen_config,
                             stopping_criteria=StoppingCriteriaList([stop, *extra]), streamer=streamer)
    return out[:, ids.shape[1]:].cpu(), stop


def decode_rows(tokenizer, generated: torch.Tensor, lengths: list[int], stops: list[str]) -> list[str]:
    """Each row's text: its first ``lengths[r]`` tokens, special tokens dropped, cut at the first
    stop string, stripped (the output every caller of :func:`generate_batch` returns)."""
    texts = tokenizer.batch_decode([generated[r, :n].tolist() for r, n in enumerate(lengths)],
                                   skip_special_tokens=True)
    return [truncate_at_stop(t, stops).strip() for t in texts]


def _device_of(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except StopIteration:
        return torch.device("cpu")


def _is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return "out of memory" in text or "can't allocate memory" in text


def _free_memory() -> None:
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
