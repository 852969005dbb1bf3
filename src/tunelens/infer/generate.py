"""The ``generate`` stage: a model (run folder or path) and a JSONL of clauses in, predictions out.

Prompts go through :func:`tunelens.data.templates.render_prompt`, the template training used, with
retrieved examples placed before the clause when a RAG index is given. Decoding and batching live
in :mod:`tunelens.infer.batching`; this module is file handling, retrieval and progress.

Each output row: ``id``, ``prompt`` (the clause), ``reference`` (the input's ``completion``),
``prediction``, ``topic``/``source`` when present, ``rendered_prompt`` (the exact model input, so
explanation and review see what the model saw), ``samples`` when ``num_samples > 1`` (prediction
is the first) and ``retrieved`` (ids, best first) with RAG.
"""

from __future__ import annotations

import time
from pathlib import Path

from tunelens.config import GenerationConfig, RagConfig
from tunelens.data.templates import render_prompt
from tunelens.errors import TunelensError
from tunelens.infer.batching import generate_texts
from tunelens.io import read_jsonl, write_jsonl
from tunelens.progress import item_bar

CARRIED = ("topic", "source")


def read_examples(data: Path, max_examples: int | None = None) -> list[dict]:
    """Rows with a string ``id`` and ``prompt``; ids must be unique (predictions join on them)."""
    rows = read_jsonl(data, required=("id", "prompt"))
    seen: set[str] = set()
    for n, row in enumerate(rows, start=1):
        if not isinstance(row["prompt"], str) or not row["prompt"].strip():
            raise TunelensError(f"{data}: row {n}: 'prompt' must be a non-empty string")
        if "completion" in row and row["completion"] is not None and not isinstance(row["completion"], str):
            raise TunelensError(f"{data}: row {n}: 'completion' must be a string")
        row["id"] = str(row["id"])
        if row["id"] in seen:
            raise TunelensError(f"{data}: row {n}: duplicate id {row['id']!r}")
        seen.add(row["id"])
    return rows[:max_examples] if max_examples else rows


def generate_predictions(model: str, data: Path, out: Path, config: GenerationConfig | None = None,
                         rag_index: Path | None = None, rag_k: int | None = None,
                         progress: bool = True) -> dict:
    """Generate a prediction for every row of ``data`` and write ``out`` (JSONL) atomically.

    ``model`` is a training run folder (full weights, or a LoRA/QLoRA adapter loaded over its
    re-quantized base) or any model path/id. Returns a summary: rows, tokens generated, seconds,
    tokens per second.
    """
    config = config or GenerationConfig()
    data, out = Path(data), Path(out)
    rows = read_examples(data, config.max_examples)
    retriever = None
    if rag_index is not None:
        from tunelens.infer.rag import Retriever

        retriever = Retriever(rag_index)  # before the model: a bad index fails fast
        rag_k = RagConfig().k if rag_k is None else rag_k
        if rag_k < 1:
            raise TunelensError(f"rag k must be at least 1, got {rag_k}")

    from tunelens.models.loading import load_for_inference, place_on_device

    llm, tokenizer = load_for_inference(str(model))
    llm = place_on_device(llm)

    retrieved: list[list[dict]] = [[] for _ in rows]
    if retriever is not None:
        retrieved = retriever.search([r["prompt"] for r in rows], rag_k, ids=[r["id"] for r in rows])
    prompts = [
        render_prompt(tokenizer, row["prompt"],
                      [{"prompt": h["prompt"], "completion": h["completion"]} for h in hits])
        for row, hits in zip(rows, retrieved, strict=True)
    ]

    start = time.perf_counter()
    with item_bar(progress) as bar:
        task = bar.add_task(f"generating ({Path(str(model)).name})", total=len(rows))
        generations = generate_texts(llm, tokenizer, prompts, config,
                                     on_batch=lambda n, _tokens: bar.advance(task, n))
    seconds = time.perf_counter() - start

    records = []
    for row, prompt, hits, gen in zip(rows, prompts, retrieved, generations, strict=True):
        record = {"id": row["id"], "prompt": row["prompt"], "reference": row.get("completion"),
                  "prediction": gen.samples[0]}
        record.update({k: row[k] for k in CARRIED if k in row})
        record["rendered_prompt"] = prompt
        if config.num_samples > 1:
            record["samples"] = gen.samples
        if retriever is not None:
            record["retrieved"] = [h["id"] for h in hits]
        records.append(record)
    write_jsonl(out, records)

    tokens = sum(g.tokens for g in generations)
    return {
        "model": str(model),
        "out": str(out),
        "rows": len(records),
        "samples_per_row": config.num_samples,
        "tokens_generated": tokens,
        "seconds": round(seconds, 3),
        "tokens_per_second": round(tokens / seconds, 2) if seconds > 0 else None,
        "rag_k": rag_k if retriever is not None else None,
    }

