"""Files in, files out: atomic writes and strict JSONL reading shared by every stage.

Every verb promises never to leave a half-written output behind, so all writes go to a temporary
name in the destination folder and are renamed into place (an atomic rename on POSIX). Reading is
strict: the first malformed line stops the run with ``file:line`` in the message.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tunelens.errors import TunelensError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give outputs the usual umask mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside ``path``; it replaces ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=_default) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    text = read_text(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise TunelensError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file of objects; fail on the first bad line, naming ``file:line``.

    ``required`` lists keys every row must have. Blank lines are skipped; an empty file is an
    error because no stage has anything to do with one.
    """
    path = Path(path)
    required = tuple(required)
    rows: list[dict] = []
    for lineno, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise TunelensError(f"{path}:{lineno}: malformed JSON line ({exc.msg})") from None
        if not isinstance(row, dict):
            raise TunelensError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
        missing = [k for k in required if k not in row]
        if missing:
            raise TunelensError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise TunelensError(f"{path}: empty file, no rows to read")
    return rows


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file, or one line naming it (and the line of the first bad byte)."""
    path = Path(path)
    if not path.exists():
        raise TunelensError(f"{path}: no such file")
    if path.is_dir():
        raise TunelensError(f"{path}: is a folder, expected a file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise TunelensError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    except PermissionError:
        raise TunelensError(f"{path}: not readable (permission denied)") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
