"""What guards a running study: a folder it can write, one run at a time, and a Ctrl-C that stops it.

Each guard is a library's mechanism put to one use, checked before any work or held for the whole
run: a write probe (``os.access`` alone says yes to root on a read-only mount), an OS file lock
from ``filelock`` (released by the kernel when its holder dies, even by SIGKILL, so a killed study
never leaves a stale lock), and a SIGINT handler that also records the interrupt (see
:class:`Interrupts` for why recording it is needed).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator

from tunelens.errors import TunelensError
from tunelens.io import check_writable, write_text
from tunelens.layout import StudyLayout


def check_study_folder(layout: StudyLayout) -> None:
    """The study folder must take files before any work is done: it is a folder (or can be
    made), its sub-folders are folders, and the nearest existing folder really accepts a file
    (``os.access`` says yes to root on a read-only mount, hence the probe)."""
    root = layout.root
    for sub in (layout.data, layout.rag, layout.runs, layout.models, layout.predictions_dir,
                layout.metrics_dir, layout.attributions_dir, layout.stats, layout.figures,
                layout.logs, layout.stamps, layout.mlflow_artifacts):
        if sub.exists() and not sub.is_dir():
            raise TunelensError(f"{sub}: is a file where the study expects a folder")
    check_writable(root, "dir")
    check_writable(layout.status, "file")  # files are written *into* the study folder too


class Interrupts:
    """SIGINT while a study runs: remember it, raise KeyboardInterrupt, and let the runner check.

    A signal handler runs inside whatever Python code is executing when the signal arrives. If
    that is a ``__del__`` or a garbage-collection callback (tokenizers, torch and MLflow run
    some), Python prints "Exception ignored in ..." and swallows the KeyboardInterrupt, and the
    study would go on. The flag survives that: :meth:`check` between stages and cells raises.
    """

    _UNSET = object()

    def __init__(self) -> None:
        self.requested = False
        self._previous = self._UNSET

    def __enter__(self) -> Interrupts:
        self.requested = False
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGINT, self.handler)
            self._previous = signal.default_int_handler if previous is None else previous
        return self

    def __exit__(self, *exc) -> bool:
        if self._previous is not self._UNSET:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = self._UNSET
        return False

    def handler(self, signum, frame) -> None:
        self.requested = True
        raise KeyboardInterrupt

    def check(self) -> None:
        if self.requested:
            raise KeyboardInterrupt("interrupted")


@contextlib.contextmanager
def study_lock(layout: StudyLayout) -> Iterator[None]:
    """Hold the study folder exclusively, or refuse at once naming the process that holds it.

    An OS file lock (``filelock``) is released by the kernel when its holder dies, even by
    SIGKILL, so a killed study never leaves a stale lock behind.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(layout.lock), timeout=0)
    pid_file = layout.lock_pid
    try:
        lock.acquire()
    except Timeout:
        try:
            pid = pid_file.read_text().strip() or "unknown"
        except OSError:
            pid = "unknown"
        raise TunelensError(f"study folder {layout.root} is in use by another tunelens process (PID {pid})") \
            from None
    try:
        write_text(pid_file, str(os.getpid()))
        yield
    finally:
        pid_file.unlink(missing_ok=True)
        lock.release()
