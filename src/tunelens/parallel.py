"""A study's cells in parallel worker processes (``tunelens run --jobs N``), on this machine.

The cells of a study are independent except that a RAG cell reuses the model its non-RAG twin
trains, so the unit of work is a *group*: the cells that share one training, run in order by one
worker. Groups go to a :class:`concurrent.futures.ProcessPoolExecutor` (spawned processes: a fork
of a process that has started torch's thread pools or MLflow's database connections is not safe),
longest first so that a long group does not start last and leave the other workers idle.

What the standard library does not do, and this module adds:

- **One study, many processes.** The parent keeps everything study-wide: the lock, the data, the
  RAG index and the zoo builds (resolved before any group starts, so two workers never build the
  same ladder), the status file and the live view. Workers run their stages exactly as the
  serial runner does (the same :meth:`StudyRunner.run_cell`, the same stamps), so a study started
  with ``--jobs 2`` resumes with ``--jobs 1`` and the other way round.
- **Progress.** Workers send ``(cell, stage, state)`` events through a queue; a thread in the
  parent feeds them to the live view.
- **Ctrl-C.** The terminal sends SIGINT to every process of the group. A worker ignores it while
  idle and, inside a cell, handles it like the serial runner (training checkpoints and stops);
  the parent then stops handing out groups, waits for the running ones to stop and writes what
  they finished. A stop flag covers a SIGINT sent to the parent alone: a training polls it at
  every step (checkpoints and stops), other stages at their next event.
- **A killed parent takes its workers along** (Linux ``PR_SET_PDEATHSIG``): once the kernel frees
  the study lock, no orphan can still be writing into the folder.
- **Tracking.** MLflow's active run is per process, so each worker adopts the parent's study run
  and its training runs still nest under it.

The Ray backend (:mod:`tunelens.ray_backend`) runs the same groups as Ray tasks: it shares this
module's public part (which groups are ready and in what order, a worker's setup and its loop
over a group's cells, merging a finished group) and replaces only the pool, the queue and the
signal handling.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tunelens.config import TrackingConfig
    from tunelens.matrix import Cell
    from tunelens.study import CellStatus, StudyRunner

Group = list[tuple["Cell", "CellStatus"]]


@dataclass
class GroupResult:
    """What a worker sends back: the statuses of its cells, its stage seconds, and whether it
    stopped because it was interrupted."""

    statuses: list[CellStatus]
    timings: dict[str, float]
    interrupted: bool


def default_jobs() -> int:
    """Worker processes when none are asked for: one per core, at most four (each holds a model)."""
    return max(1, min(4, os.cpu_count() or 1))


def run_parallel(runner: StudyRunner, groups: list[Group], statuses: list[CellStatus],
                 tracking: TrackingConfig | None) -> None:
    """Run ``groups`` in ``runner.jobs`` worker processes, updating ``statuses`` in place.

    Raises KeyboardInterrupt once the running groups have stopped, when interrupted.
    """
    ready = ready_groups(runner, groups, statuses)
    ctx = multiprocessing.get_context("spawn")
    events, stop = ctx.Queue(), ctx.Event()
    threads = runner.threads or max(1, (os.cpu_count() or 1) // runner.jobs)
    with _forwarding(events, runner), ProcessPoolExecutor(
            max_workers=min(runner.jobs, len(ready)) or 1, mp_context=ctx, initializer=_init_worker,
            initargs=(events, stop, threads, study_run(tracking))) as pool:
        futures: dict[Future, Group] = {}
        try:
            with _ignoring_sigint():  # workers start with SIGINT ignored until a cell runs
                for group in ready:
                    futures[pool.submit(_run_group, runner.worker_state(group), group,
                                        tracking)] = group
            for future in as_completed(futures):
                if _collect(runner, future, futures[future], statuses):
                    raise KeyboardInterrupt("interrupted")
        except KeyboardInterrupt:
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            for future, group in futures.items():
                if future.done() and not future.cancelled():
                    _collect(runner, future, group, statuses, interrupted=True)
            raise


@contextlib.contextmanager
def _ignoring_sigint() -> Iterator[None]:
    """SIGINT ignored while workers are spawned: an ignored signal stays ignored across exec, so
    a Ctrl-C cannot kill a worker half-started (it would break the whole pool)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


# -- shared with the Ray backend (tunelens.ray_backend) -------------------------------------------

def ready_groups(runner: StudyRunner, groups: list[Group], statuses: list[CellStatus]) -> list[Group]:
    """The groups whose base model could be had (built or found in the parent: zoo ladders are
    built once, here), longest first so that a long group does not start last and leave the
    other workers idle; a model that cannot be had fails its cells as the serial runner would."""
    ready = [g for g in groups if _resolve_models(runner, g, statuses)]
    return sorted(ready, key=lambda g: _cost(runner, g), reverse=True)


def _resolve_models(runner: StudyRunner, group: Group, statuses: list[CellStatus]) -> bool:
    cell = group[0][0]
    try:
        runner.model_path(cell.model)
        return True
    except KeyboardInterrupt:
        raise
    except Exception as exc:  # noqa: BLE001 - recorded per cell, the other groups go on
        fail_group(runner, group, statuses, exc)
        return False


def _cost(runner: StudyRunner, group: Group) -> float:
    """A rough size of a group's work, only to start long groups first: the base model's weight
    bytes, three times for causal pre-training (packed, full-length sequences), plus its cells."""
    cell = group[0][0]
    path = Path(runner.model_path(cell.model))
    size = sum(f.stat().st_size for f in path.glob("*.safetensors")) if path.is_dir() else 1.0
    factor = 3.0 if cell.identity.objective == "causal" else 1.0
    return size * factor * (1 + 0.1 * len(group))


def fail_group(runner: StudyRunner, group: Group, statuses: list[CellStatus],
               exc: BaseException) -> None:
    """Every cell of a group that did not run (its worker died, or it was stopped) failed."""
    for cell, st in group:
        runner.record_failure(cell, st, exc)
    runner.write_status(statuses)


def merge_result(runner: StudyRunner, group: Group, result: GroupResult,
                 statuses: list[CellStatus]) -> bool:
    """Merge a finished group into the study's statuses and timings; True if it was interrupted."""
    for (_, st), done in zip(group, result.statuses, strict=True):
        st.status, st.error, st.stages, st.skipped = done.status, done.error, done.stages, done.skipped
    for stage, seconds in result.timings.items():
        runner.timings[stage] = runner.timings.get(stage, 0.0) + seconds
    runner.write_status(statuses)
    return result.interrupted


def study_run(tracking: TrackingConfig | None) -> tuple[str, str] | None:
    """(store URI, run id) of the parent's study run, for workers to nest their runs under."""
    if tracking is None or not tracking.enabled or not tracking.uri:
        return None
    import mlflow

    run = mlflow.active_run()
    return (tracking.uri, run.info.run_id) if run is not None else None


def prepare_worker(threads: int, study_run: tuple[str, str] | None,
                   stop: Callable[[], bool] | None = None) -> None:
    """In a worker, before its first cell: quiet the libraries as the CLI does (warning filters
    and logger levels do not cross a spawn), set torch's threads, let a training poll ``stop``
    (checkpoint and stop), nest training runs under the study's MLflow run."""
    from tunelens.runtime import quiet_libraries, set_threads

    quiet_libraries()
    set_threads(threads)
    if stop is not None:
        from tunelens.train import callbacks

        callbacks.external_stop = stop
    if study_run is not None:
        from tunelens.train.tracking import adopt_study_run

        adopt_study_run(*study_run)


def run_group(state: dict, group: Group, tracking: TrackingConfig | None,
              send: Callable[[str, str, str], None]) -> GroupResult:
    """Run one group's cells in order, as the serial runner does, reporting progress to ``send``;
    never raise (a worker that raised would lose the statuses of the cells it finished)."""
    from tunelens.study import StudyRunner

    runner = StudyRunner.for_worker(state, on_event=send)
    interrupted = False
    with runner.interrupts:
        try:
            for cell, st in group:
                runner.run_one(cell, st, tracking)
        except KeyboardInterrupt:
            interrupted = True
    return GroupResult([st for _, st in group], runner.timings, interrupted)


# -- the local backend ---------------------------------------------------------------------------

def _collect(runner: StudyRunner, future: Future, group: Group, statuses: list[CellStatus],
             interrupted: bool = False) -> bool:
    """Merge a finished group; a broken pool fails its cells. True if it was interrupted."""
    try:
        result: GroupResult = future.result()
    except BrokenProcessPool:
        why = ("interrupted" if interrupted else
               "its worker process died (out of memory?); rerun to retry the cell")
        fail_group(runner, group, statuses, RuntimeError(why))
        return False
    return merge_result(runner, group, result, statuses)


@contextlib.contextmanager
def _forwarding(events, runner: StudyRunner) -> Iterator[None]:
    """A thread that hands the workers' progress events to the runner's live view."""

    def forward() -> None:
        while (event := events.get()) is not None:
            runner.on_event(*event)

    thread = threading.Thread(target=forward, name="tunelens-events", daemon=True)
    thread.start()
    try:
        yield
    finally:
        events.put(None)
        thread.join(timeout=10)


# -- in the worker process ---------------------------------------------------------------------

_EVENTS = None
_STOP = None


def _init_worker(events, stop, threads: int, study_run: tuple[str, str] | None) -> None:
    """Once per worker: die with the parent, ignore Ctrl-C while idle, then as every backend's
    worker (:func:`prepare_worker`), a parent stopped alone stopping its trainings."""
    global _EVENTS, _STOP
    _EVENTS, _STOP = events, stop
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    prepare_worker(threads, study_run, stop.is_set)


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (elsewhere: nothing to do)."""
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)


def _send(cell: str, stage: str, state: str) -> None:
    """A worker's progress event: to the parent, unless the study is being stopped."""
    if _STOP is not None and _STOP.is_set():
        raise KeyboardInterrupt("interrupted")
    if _EVENTS is not None:
        _EVENTS.put((cell, stage, state))


def _run_group(state: dict, group: Group, tracking: TrackingConfig | None) -> GroupResult:
    return run_group(state, group, tracking, _send)
