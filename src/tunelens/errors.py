"""The one exception type the CLI turns into a one-line message and a non-zero exit.

Stages raise :class:`TunelensError` for anything the *user* can fix (a missing file, a malformed
line, an unknown model, a bad config key). Anything else is a bug and keeps its traceback.
"""


class TunelensError(Exception):
    """A user-facing error: its message is printed as one line, the exit code is 2."""


def check_choice(value, choices, what: str, *, optional: bool = False):
    """``value`` when it is one of ``choices`` (or None and ``optional``); else one line,
    ``<what> 'value': expected one of a, b, c``. ``what`` names the thing as the user gave it: a
    flag (``--method``), or a noun with its place (``run.json: unknown dtype``)."""
    if (value is None and optional) or value in choices:
        return value
    raise TunelensError(f"{what} {value!r}: expected one of {', '.join(map(str, choices))}")


def first_line(obj) -> str:
    """The first line of an exception's (or a reply's) text, its type's name when it has none:
    what a one-line error quotes of a library's multi-line message."""
    text = str(obj).strip()
    return text.splitlines()[0] if text else type(obj).__name__
