"""The one exception type the CLI turns into a one-line message and a non-zero exit.

Stages raise :class:`TunelensError` for anything the *user* can fix (a missing file, a malformed
line, an unknown model, a bad config key). Anything else is a bug and keeps its traceback.
"""


class TunelensError(Exception):
    """A user-facing error: its message is printed as one line, the exit code is 2."""
