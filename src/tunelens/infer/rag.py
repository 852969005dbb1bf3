"""Retrieval for RAG: a FAISS inner-product index over normalised MiniLM embeddings of a corpus.

FAISS does the search and sentence-transformers (through :mod:`tunelens.models.embeddings`) the
embedding; this module owns the on-disk layout and the one retrieval rule the study needs: a
query never retrieves itself (same id or same clause text), otherwise evaluating on rows that are
also in the corpus would leak the reference answer into the prompt.

Index folder::

    index.faiss      IndexFlatIP over L2-normalised vectors (inner product = cosine)
    rows.jsonl       the corpus rows, in index order (id, prompt, completion, ...)
    manifest.json    embedding model, count, dimension, metric, corpus path
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunelens.contracts import ClauseRow, check_unique_ids, read_rows
from tunelens.errors import TunelensError
from tunelens.io import atomic_dir, read_json, read_jsonl, write_json, write_jsonl
from tunelens.models.embeddings import default_embedding_path, embed

INDEX_FILE = "index.faiss"
ROWS_FILE = "rows.jsonl"
MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1


def _key(text: str) -> str:
    return " ".join(str(text).split()).casefold()


def build_index(corpus: Path, out: Path, embedding_model: str | None = None) -> dict:
    """Embed every ``prompt`` of ``corpus`` (JSONL with prompt/completion) into a FAISS index at ``out``.

    Rows without an ``id`` get their rank as id; a prompt or completion that is not text is an
    error naming ``file:line``. Returns the manifest.
    """
    import faiss

    corpus, out = Path(corpus), Path(out)
    parsed = read_rows(corpus, ClauseRow, require=("completion",))
    rows = [{**row.model_dump(exclude_unset=True), "id": str(n) if row.id is None else row.id}
            for n, row in enumerate(parsed)]
    check_unique_ids((r["id"], row.where) for r, row in zip(rows, parsed, strict=True))
    vectors = np.ascontiguousarray(embed([r["prompt"] for r in rows], path=embedding_model),
                                   dtype=np.float32)
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    manifest = {
        "format": FORMAT_VERSION,
        "embedding_model": embedding_model or default_embedding_path(),
        "embedding_default": embedding_model is None,
        "count": int(index.ntotal),
        "dimension": int(vectors.shape[1]),
        "metric": "inner_product",
        "normalized": True,
        "corpus": str(corpus),
    }
    with atomic_dir(out) as tmp:
        faiss.write_index(index, str(tmp / INDEX_FILE))
        write_jsonl(tmp / ROWS_FILE, rows)
        write_json(tmp / MANIFEST_FILE, manifest)
    return manifest


class Retriever:
    """Nearest corpus rows for clauses, self-matches excluded."""

    def __init__(self, index_dir: Path | str):
        import faiss

        self.index_dir = Path(index_dir)
        if not self.index_dir.is_dir():
            raise TunelensError(f"{self.index_dir}: no such index folder (build one with "
                                "'tunelens rag index')")
        for name in (INDEX_FILE, ROWS_FILE, MANIFEST_FILE):
            if not (self.index_dir / name).exists():
                raise TunelensError(f"{self.index_dir}: not a tunelens index (missing {name})")
        self.manifest = read_json(self.index_dir / MANIFEST_FILE)
        self.rows = read_jsonl(self.index_dir / ROWS_FILE, required=("id", "prompt", "completion"))
        try:
            self.index = faiss.read_index(str(self.index_dir / INDEX_FILE))
        except RuntimeError as exc:
            raise TunelensError(f"{self.index_dir / INDEX_FILE}: unreadable FAISS index "
                                f"({str(exc).splitlines()[0]})") from None
        if self.index.ntotal != len(self.rows) or self.index.d != self.manifest.get("dimension"):
            raise TunelensError(f"{self.index_dir}: index, rows and manifest disagree "
                                f"({self.index.ntotal} vectors, {len(self.rows)} rows)")
        self._row_keys = [_key(r["prompt"]) for r in self.rows]

    @property
    def embedding_model(self) -> str | None:
        """The query embedder: the bundled model is re-resolved (the venv may have moved)."""
        return None if self.manifest.get("embedding_default") else self.manifest["embedding_model"]

    def search(self, queries: list[str], k: int, ids: list[str] | None = None) -> list[list[dict]]:
        """Top ``k`` rows per query, best first, each a corpus row plus ``score`` (cosine).

        A row whose id equals the query's id (``ids``, optional) or whose clause equals the
        query text (whitespace and case ignored) is skipped.
        """
        if k < 1:
            raise TunelensError(f"rag k must be at least 1, got {k}")
        if ids is not None and len(ids) != len(queries):
            raise ValueError("ids must match queries one to one")
        if not queries:
            return []
        vectors = np.ascontiguousarray(embed(list(queries), path=self.embedding_model),
                                       dtype=np.float32)
        total = len(self.rows)
        fetch = min(total, k + 4)
        while True:
            scores, found = self.index.search(vectors, fetch)
            results = [self._filter(q, None if ids is None else ids[n], scores[n], found[n], k)
                       for n, q in enumerate(queries)]
            if fetch >= total or all(len(r) == k for r in results):
                return results
            fetch = min(total, fetch * 2)

    def _filter(self, query: str, query_id, scores, found, k: int) -> list[dict]:
        key = _key(query)
        hits: list[dict] = []
        for score, pos in zip(scores, found, strict=True):
            if pos < 0:
                continue
            row = self.rows[pos]
            if (query_id is not None and str(row["id"]) == str(query_id)) or self._row_keys[pos] == key:
                continue
            hits.append({**row, "score": float(score)})
            if len(hits) == k:
                break
        return hits
