"""The ``generate`` stage: a model (run folder or path) and a JSONL of clauses in, predictions out.

Prompts go through :meth:`tunelens.models.run_settings.ModelSettings.render` in the prompt format
and instruction training used (recorded in the run's ``run.json``; ``chat`` or ``plain``), with a
named prompt's fixed examples (few-shot) and then retrieved examples placed before the clause.
Decoding and batching live in :mod:`tunelens.infer.batching`; this module is file handling,
retrieval and progress.

Each output row: ``id``, ``prompt`` (the clause), ``reference`` (the input's ``completion``),
``prediction``, ``topic``/``source`` when present, ``rendered_prompt`` (the exact model input, so
explanation and review see what the model saw), ``samples`` when ``num_samples > 1`` (prediction
is the first), ``retrieved`` (ids, best first) with RAG, and ``truncated_chars`` when the
rendered prompt was longer than the model's context and lost that many characters from its start
(:mod:`tunelens.models.context`).
"""

from __future__ import annotations

import time
from pathlib import Path

from tunelens.config import GenerationConfig, RagConfig
from tunelens.contracts import ClauseRow, read_rows
from tunelens.errors import TunelensError
from tunelens.infer.batching import Generation, generate_texts
from tunelens.io import write_jsonl
from tunelens.progress import item_bar

CARRIED = ("topic", "source")


def read_examples(data: Path, max_examples: int | None = None, sample_seed: int = 0) -> list[ClauseRow]:
    """Rows with an ``id`` and a text ``prompt`` (a number is refused, not read as text), ids
    unique (predictions join on them); any problem is one line naming ``file:line``.

    ``max_examples`` takes a seeded sample stratified by topic and source
    (:func:`tunelens.data.sample.stratified_sample`), the same whatever the row order: the first
    N rows of the bundled test split are all hand-written clauses."""
    from tunelens.data.sample import stratified_sample

    rows = read_rows(data, ClauseRow, require=("id",), unique_ids=True)
    if not max_examples or max_examples >= len(rows):
        return rows
    items = [{"example_id": str(r.id), "topic": r.topic, "source": r.source, "row": r} for r in rows]
    return [item["row"] for item in stratified_sample(items, max_examples, sample_seed)]


def generate_predictions(model: str, data: Path, out: Path, config: GenerationConfig | None = None,
                         rag_index: Path | None = None, rag_k: int | None = None,
                         progress: bool = True, *, dtype: str | None = None,
                         trust_remote_code: bool | None = None, prompt_format: str | None = None,
                         shots: list[dict] | None = None) -> dict:
    """Generate a prediction for every row of ``data`` and write ``out`` (JSONL) atomically.

    ``model`` is a training run folder (full weights, or a LoRA/QLoRA adapter loaded over its
    re-quantized base) or any model path/id. ``dtype``, ``trust_remote_code`` and
    ``prompt_format``, when given, override what a run's ``run.json`` records
    (:class:`~tunelens.models.run_settings.ModelSettings`); ``shots`` (``{prompt, completion}``
    rows) go before every clause, ahead of any retrieved examples (few-shot prompting). Returns
    a summary: rows, tokens generated, seconds, tokens per second, the prompt format, and how
    many prompts were cut to fit the context.
    """
    config = config or GenerationConfig()
    data, out = Path(data), Path(out)
    rows = read_examples(data, config.max_examples, config.sample_seed)
    retriever, rag_k = _retriever(rag_index, rag_k)  # before the model: a bad index fails fast

    from tunelens.models.loading import load_placed
    from tunelens.models.run_settings import ModelSettings, resolve_prompt_format

    settings = ModelSettings.of(str(model), dtype, trust_remote_code, prompt_format, shots=shots)
    llm, tokenizer = load_placed(str(model), settings)
    fmt = resolve_prompt_format(tokenizer, settings.prompt_format)
    retrieved = _retrieve(retriever, rows, rag_k)
    prompts = [settings.render(tokenizer, row.prompt, [{"prompt": h["prompt"],
                                                        "completion": h["completion"]} for h in hits])
               for row, hits in zip(rows, retrieved, strict=True)]

    start = time.perf_counter()
    with item_bar(progress) as bar:
        task = bar.add_task(f"generating ({Path(str(model)).name})", total=len(rows))
        generations = generate_texts(llm, tokenizer, prompts, config,
                                     on_batch=lambda n, _tokens: bar.advance(task, n))
    seconds = time.perf_counter() - start

    write_jsonl(out, [_record(row, prompt, hits, gen, config, retriever is not None)
                      for row, prompt, hits, gen in zip(rows, prompts, retrieved, generations, strict=True)])
    tokens = sum(g.tokens for g in generations)
    return {
        "model": str(model),
        "out": str(out),
        "rows": len(rows),
        "samples_per_row": config.num_samples,
        "tokens_generated": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
        "rag_k": rag_k if retriever is not None else None,
        "prompt_format": fmt,
        "truncated_rows": sum(g.truncated_chars > 0 for g in generations),
    }


def _retriever(rag_index: Path | None, rag_k: int | None):
    """(the index's retriever, k) with RAG, (None, k) without."""
    if rag_index is None:
        return None, rag_k
    from tunelens.infer.rag import Retriever

    retriever = Retriever(rag_index)
    rag_k = RagConfig().k if rag_k is None else rag_k
    if rag_k < 1:
        raise TunelensError(f"rag k must be at least 1, got {rag_k}")
    return retriever, rag_k


def _retrieve(retriever, rows: list[ClauseRow], k: int | None) -> list[list[dict]]:
    """The retrieved examples of every row, best first (none without RAG)."""
    if retriever is None:
        return [[] for _ in rows]
    return retriever.search([r.prompt for r in rows], k, ids=[r.id for r in rows])


def _record(row: ClauseRow, prompt: str, hits: list[dict], gen: Generation, config: GenerationConfig,
            rag: bool) -> dict:
    """One output row (the module docstring lists its keys)."""
    record = {"id": row.id, "prompt": row.prompt, "reference": row.completion,
              "prediction": gen.samples[0]}
    record.update({k: getattr(row, k) for k in CARRIED if getattr(row, k) is not None})
    record["rendered_prompt"] = prompt
    if config.num_samples > 1:
        record["samples"] = gen.samples
    if rag:
        record["retrieved"] = [h["id"] for h in hits]
    if gen.truncated_chars:
        record["truncated_chars"] = gen.truncated_chars
    return record
