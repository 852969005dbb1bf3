"""The one fingerprint of "what a stage read": settings plus the *content* of every input file.

A stage's output is reused only when this fingerprint matches the one stored with it (see
:class:`tunelens.study.Stamps`), so it must change whenever anything the stage reads changes — an
edited row of the source CSV, a retrained model, a rebuilt index — and must not change when
nothing did (a ``touch``, a copy of the study folder to another disk). Hashing paths, sizes or
modification times gets one of those two wrong; hashing content gets both right.

No library offers this: ``hashlib`` hashes bytes, ``dirhash``-style packages hash folders but not
settings, and MLflow/DVC bring a whole tracking model with them. It is twenty lines.

Within one process a file's content hash is memoised on (path, size, mtime_ns, inode), so a
study that fingerprints the same base model for twelve cells reads its weights once. Across
processes nothing is trusted but the bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

_CHUNK = 1 << 20
_memo: dict[tuple, str] = {}

# Folder entries that never change what a stage computes: caches, temporaries, our own stamps.
IGNORED_NAMES = frozenset({"__pycache__", ".stamps", ".lock", ".DS_Store"})


def fingerprint(*settings, files: tuple | list = ()) -> str:
    """A short hex digest of ``settings`` (anything JSON-able) and the content of ``files``.

    ``files`` may hold files and folders (hashed recursively, names included) and paths that do
    not exist (they hash as missing, so creating them later changes the fingerprint).
    """
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for path in files:
        h.update(b"\0")
        h.update(content_hash(Path(path)).encode())
    return h.hexdigest()[:16]


def content_hash(path: Path) -> str:
    """sha256 of a file's bytes; of a folder, of its entries' relative names and content hashes."""
    path = Path(path)
    if not path.exists():
        return "missing"
    if path.is_dir():
        h = hashlib.sha256(b"dir")
        for child in sorted(path.rglob("*")):
            rel = child.relative_to(path)
            if child.is_dir() or _ignored(rel):
                continue
            h.update(str(rel.as_posix()).encode() + b"\0" + _file_hash(child).encode())
        return h.hexdigest()
    return _file_hash(path)


def _ignored(rel: Path) -> bool:
    return any(part in IGNORED_NAMES or part.endswith(".tmp") for part in rel.parts)


def _file_hash(path: Path) -> str:
    st = os.stat(path)
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, st.st_ino)
    cached = _memo.get(key)
    if cached is not None:
        return cached
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    _memo[key] = digest = h.hexdigest()
    return digest
