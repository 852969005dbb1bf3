"""Files in, files out: atomic writes, strict reading and one NaN policy, shared by every stage.

Every verb promises never to leave a half-written output behind, so all writes go to a temporary
name in the destination folder and are renamed into place (an atomic rename on POSIX). Reading is
strict: the first malformed line stops the run with ``file:line`` in the message.

**NaN policy** (every JSON and JSONL file tunelens writes or reads): a JSON file never holds
``NaN`` or ``±Infinity``. They are not JSON (RFC 8259), other tools reject them, and a number that
is undefined (a metric with no example to average) is a *missing* number. So the writers turn a
non-finite float into ``null`` (:func:`json_safe`, the one place they apply it) and the readers
reject a bare ``NaN``/``Infinity`` token, or a number too large for a float, naming ``file:line``
(:func:`loads`, the one place they apply it). Python's ``json`` does neither by default.

**Lines** of a JSONL file are split on ``\n`` only (after ``\r\n``/``\r`` are read as ``\n``):
``str.splitlines`` would also split on U+2028, U+0085 and other characters that JSON allows raw
inside a string, and that ``ensure_ascii=False`` writes as they are, so a model's prediction
holding one would make its own predictions file unreadable. :func:`iter_jsonl` is the one line
loop: the untyped :func:`read_jsonl` and the typed :func:`tunelens.contracts.read_rows` share it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import sys
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


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON text of ``obj`` under the NaN policy (non-finite floats become ``null``)."""
    return json.dumps(json_safe(obj), indent=indent, ensure_ascii=False, allow_nan=False)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, dumps(obj, indent=2) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(dumps(row) + "\n")


class JSONProblem(ValueError):
    """Why a JSON text was refused, and on which of its lines (None when unknown)."""

    def __init__(self, reason: str, line: int | None = None):
        super().__init__(reason)
        self.reason, self.line = reason, line


def loads(text: str) -> Any:
    """Parse JSON under the NaN policy; raise :class:`JSONProblem` with the reason and line."""
    try:
        return json.loads(text, parse_constant=_refuse_constant, parse_float=_finite_float,
                          parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise JSONProblem(f"malformed JSON ({exc.msg})", exc.lineno) from None
    except _Refused as exc:
        raise JSONProblem(exc.reason, _token_line(text, exc.token)) from None
    except RecursionError:
        raise JSONProblem("malformed JSON (nested too deeply)") from None


def read_json(path: str | os.PathLike) -> Any:
    path = Path(path)
    text = read_text(path)
    try:
        return loads(text)
    except JSONProblem as exc:
        where = f"{path}:{exc.line}" if exc.line is not None else str(path)
        raise TunelensError(f"{where}: {exc.reason}") from None


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, dict]]:
    """``(line number, object)`` for every non-blank line: the one JSONL line loop.

    A line that is not a JSON object stops the reading with ``file:line`` and the reason.
    """
    path = Path(path)
    for lineno, line in enumerate(read_text(path).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = loads(line)
        except JSONProblem as exc:
            reason = exc.reason.replace("malformed JSON", "malformed JSON line", 1)
            raise TunelensError(f"{path}:{lineno}: {reason}") from None
        if not isinstance(row, dict):
            raise TunelensError(f"{path}:{lineno}: expected a JSON object, got {json_kind(row)}")
        yield lineno, row


def read_jsonl(path: str | os.PathLike, required: Iterable[str] = ()) -> list[dict]:
    """Read a JSONL file of objects; fail on the first bad line, naming ``file:line``.

    ``required`` lists keys every row must have. Blank lines are skipped; an empty file is an
    error because no stage has anything to do with one. For rows checked against a file
    contract (types, not only keys), use :func:`tunelens.contracts.read_rows`.
    """
    path = Path(path)
    required = tuple(required)
    rows: list[dict] = []
    for lineno, row in iter_jsonl(path):
        missing = [k for k in required if k not in row]
        if missing:
            raise TunelensError(f"{path}:{lineno}: missing field(s) {', '.join(missing)}")
        rows.append(row)
    if not rows:
        raise TunelensError(f"{path}: empty file, no rows to read")
    return rows


def read_text(path: str | os.PathLike) -> str:
    """A UTF-8 text file, or one line naming it (and the line of the first bad byte).

    A leading byte-order mark is dropped and ``\r\n``/``\r`` line ends read as ``\n``, as
    editors show them, so line numbers in messages match what the user sees.
    """
    path = Path(path)
    if not path.exists():
        raise TunelensError(f"{path}: no such file")
    if path.is_dir():
        raise TunelensError(f"{path}: is a folder, expected a file")
    try:
        data = path.read_bytes()
    except PermissionError:
        raise TunelensError(f"{path}: not readable (permission denied)") from None
    except OSError as exc:
        raise TunelensError(f"{path}: not readable ({exc.strerror or exc})") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = _newlines(data[: exc.start]).count(b"\n") + 1
        raise TunelensError(f"{path}:{line}: not UTF-8 text (byte {exc.start}: {exc.reason}); "
                            "save it as UTF-8") from None
    return text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n")


def _newlines(data: bytes) -> bytes:
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")


class _Refused(ValueError):
    def __init__(self, reason: str, token: str):
        super().__init__(reason)
        self.reason, self.token = reason, token


def _refuse_constant(token: str) -> Any:
    raise _Refused(f"{token} is not JSON (an undefined number is written null)", token)


def _finite_float(token: str) -> float:
    value = float(token)
    if not math.isfinite(value):
        raise _Refused(f"number {token[:24]} is out of a float's range", token)
    return value


def _bounded_int(token: str) -> int:
    limit = sys.get_int_max_str_digits() or math.inf
    if len(token.lstrip("-")) > limit:
        raise _Refused(f"integer of {len(token)} digits is too long to read", token)
    return int(token)


# A JSON string, or a run of characters that is not punctuation, whitespace or a string.
_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"|(?P<bare>[^\s,:\[\]{}"]+)')


def _token_line(text: str, token: str) -> int | None:
    """The line of the first bare ``token`` (outside any string) in a text that parsed up to it."""
    for match in _TOKENS.finditer(text):
        if match.group("bare") == token:
            return text.count("\n", 0, match.start()) + 1
    return None


_JSON_KINDS = {str: "string", dict: "object", list: "array", bool: "boolean", int: "number",
               float: "number"}


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in JSON's words ("string", "number", "null"...)."""
    return "null" if value is None else _JSON_KINDS.get(type(value), type(value).__name__)


def printable(text: str) -> str:
    """``text`` safe inside a one-line message: line breaks and other invisibles escaped."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in str(text))


def json_safe(obj: Any) -> Any:
    """A copy of ``obj`` that ``json`` can write under the NaN policy.

    Non-finite floats become None; numpy scalars and arrays become Python numbers and lists;
    tuples become lists; paths become strings. Anything else unknown is a bug: TypeError.
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, str | bool | int):
        return obj
    if isinstance(obj, dict):
        return {_key(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalar or array (float32 is no float subclass)
        return json_safe(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _key(key: Any) -> Any:
    return key.tolist() if hasattr(key, "tolist") else key


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike, kind: str = "file") -> Path:
    """``path`` if an output of ``kind`` ("file" or "dir") can be written there; else one line
    saying why. Every verb calls it before any work, so a bad ``--out`` costs a second, not a run.

    The folders above ``path`` that do not exist yet will be created by the atomic writers, so
    the test is made on the nearest one that exists: it must be a folder, writable, and really
    accept a file (``os.access`` says yes to root on a read-only mount, hence the probe).
    """
    path = Path(path)
    if kind == "file" and path.is_dir():
        raise TunelensError(f"{path}: is a folder, expected a file path")
    if kind == "dir" and path.exists() and not path.is_dir():
        raise TunelensError(f"{path}: is a file, expected a folder")
    parent = path.absolute().parent  # atomic writers make a temporary beside the output
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise TunelensError(f"{path}: cannot write there, {parent} is a file")
    if not os.access(parent, os.W_OK | os.X_OK) or not _accepts_a_file(parent):
        raise TunelensError(f"{path}: cannot write there, {parent} is not writable")
    return path


def _accepts_a_file(folder: Path) -> bool:
    try:
        with tempfile.TemporaryFile(dir=folder, prefix=".tunelens-probe-"):
            return True
    except OSError:
        return False
