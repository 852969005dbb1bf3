"""A study's cells as Ray tasks (``tunelens run --backend ray [--address ...]``), on a cluster.

The unit of work is the local backend's (:mod:`tunelens.parallel`): a *group*, the cells that
share one training, run in order by one task with the same :meth:`StudyRunner.run_cell` and the
same stamps, so a study stopped on Ray resumes with ``--backend local`` and the other way round.
The parent keeps what is study-wide (the lock, the data, the RAG index, the zoo builds, compare
and the report) exactly as the local backend does; what Ray adds over a process pool:

- **Declared resources.** A task asks for ``--threads`` CPUs (default one), one GPU when the
  cluster has GPUs, and, on CPUs, the training peak of the dry-run estimate
  (:func:`tunelens.memory.study_estimates`) as Ray's ``memory`` resource, so the scheduler packs
  cells onto nodes that can hold them instead of letting them run out of memory. A cell that no
  node of the cluster could ever hold is refused before any work, in one line.
- **Retries.** A task whose worker process or node died (killed, out of memory) is run again by
  Ray (``max_retries``); the stamps make the retry skip the stages the dead attempt finished.
- **Shared storage.** Tasks write straight into the study folder, atomically as every stage
  does; on a multi-node cluster the folder (and the zoo) must be at the same path on every node
  (NFS, a mounted bucket), and tunelens installed in every node's Python.
- **Progress** comes back through a :class:`ray.util.queue.Queue` the parent drains while it
  waits; **Ctrl-C** cancels the tasks (Ray raises KeyboardInterrupt in each: a training
  checkpoints and stops) and waits for them, as the local backend does.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from tunelens.errors import TunelensError, check_choice, first_line
from tunelens.parallel import (
    Group,
    GroupResult,
    fail_group,
    merge_result,
    prepare_worker,
    ready_groups,
    run_group,
    study_run,
)

if TYPE_CHECKING:
    from tunelens.config import TrackingConfig
    from tunelens.matrix import Cell
    from tunelens.study import CellStatus, StudyRunner

RETRIES = 2  # a group whose worker died runs again this many times before its cells fail
POLL_S = 0.2  # how often the parent drains the progress queue while tasks run
# Environment the parent's workers would inherit locally: offline switches, caches, MLflow.
FORWARDED_ENV = ("TUNELENS_", "HF_", "TRANSFORMERS_", "MLFLOW_", "TOKENIZERS_")
GB = 1024**3


def require_ray():
    """The ``ray`` module, or a one-line error naming the extra that installs it."""
    try:
        import ray
    except ImportError:
        raise TunelensError("--backend ray needs Ray, tunelens' 'scale' extra: "
                            "pip install 'tunelens[scale]'") from None
    return ray


def check_backend(backend: str, address: str | None) -> None:
    """A verb's ``--backend``/``--address`` before any work: a known backend, an address only for
    Ray, and Ray installed when asked for."""
    from tunelens.study import BACKENDS

    check_choice(backend, BACKENDS, "--backend")
    if address is not None and backend != "ray":
        raise TunelensError("--address names a Ray cluster: it needs --backend ray")
    if backend == "ray":
        require_ray()


def connect(address: str | None) -> None:
    """Join the cluster at ``address`` (``auto``: the one this machine belongs to; ``ray://``: a
    Ray client; ``HOST:PORT``: a head node), or start a local one when None and ``RAY_ADDRESS``
    is unset. Connecting twice is a no-op. A cluster that cannot be reached is a one-line error."""
    ray = require_ray()
    if ray.is_initialized():
        return
    _probe(address)
    env = {k: v for k, v in os.environ.items() if k.startswith(FORWARDED_ENV)}
    try:
        ray.init(address=address, log_to_driver=False, logging_level=logging.WARNING,
                 configure_logging=False, runtime_env={"env_vars": env} if env else None)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        first = first_line(exc)
        raise TunelensError(f"cannot reach the Ray cluster at {address or 'a new local one'}: "
                            f"{first}") from None


def task_resources(cpus: int) -> dict:
    """A task holding one model: ``cpus`` CPUs and, when the cluster has GPUs, one GPU (tunelens
    places a model on the GPU it sees)."""
    import ray

    gpu = ray.cluster_resources().get("GPU", 0) >= 1
    return {"num_cpus": cpus, "num_gpus": 1 if gpu else 0}


def _probe(address: str | None, seconds: float = 5.0) -> None:
    """A ``HOST:PORT`` or ``ray://HOST:PORT`` nobody listens on is refused at once: Ray itself
    retries the connection for minutes before it gives up."""
    import socket

    if not address or address == "auto":
        return
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not port.isdigit():
        raise TunelensError(f"--address {address}: expected auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=seconds).close()
    except OSError as exc:
        raise TunelensError(f"cannot reach the Ray cluster at {address}: "
                            f"{exc.strerror or exc}") from None


def cell_resources(runner: StudyRunner, cells: list[Cell]) -> dict:
    """What the task of one group's ``cells`` asks Ray for: :func:`task_resources` and, on
    CPUs, the group's largest training peak from the dry-run estimate."""
    from tunelens.memory import study_estimates

    resources = task_resources(runner.threads or 1)
    gpu = resources["num_gpus"] > 0
    estimates = study_estimates(runner.study, cells, runner.zoo_root, "cuda" if gpu else "cpu")
    peak = max((e.total for e in estimates.values() if e is not None), default=0)
    if peak and not gpu:  # Ray schedules host memory only; a GPU's is the GPU's own
        resources["memory"] = int(peak)
    return resources


def check_cluster(runner: StudyRunner, cells: list[Cell]) -> None:
    """Connect, and refuse a study with a cell that no node could ever run (Ray would wait for
    it forever): before any work, in one line."""
    import ray

    connect(runner.address)
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    groups: dict[str, list[Cell]] = {}
    for cell in cells:
        groups.setdefault(cell.train_name, []).append(cell)
    for name, group in groups.items():
        ask = cell_resources(runner, group)
        need = {"CPU": ask["num_cpus"], "GPU": ask["num_gpus"], "memory": ask.get("memory", 0)}
        if not any(all(node.get(k, 0) >= v for k, v in need.items() if v) for node in nodes):
            raise TunelensError(
                f"{runner.origin}: cell {name} needs {need['CPU']} CPUs, {need['GPU']} GPUs and "
                f"{need['memory'] / GB:.1f} GB, more than any node of the Ray cluster has; use "
                "fewer --threads, a smaller batch or max_length, or LoRA/QLoRA")


def run_on_ray(runner: StudyRunner, groups: list[Group], statuses: list[CellStatus],
               tracking: TrackingConfig | None) -> None:
    """Run ``groups`` as Ray tasks, updating ``statuses`` in place; the caller has connected.

    Raises KeyboardInterrupt once the running tasks have stopped, when interrupted.
    """
    import ray
    from ray.util.queue import Queue

    ready = ready_groups(runner, groups, statuses)
    asks = [cell_resources(runner, [cell for cell, _ in group]) for group in ready]
    events = Queue(actor_options={"num_cpus": 0})
    task = ray.remote(max_retries=RETRIES)(_ray_group)
    refs = {task.options(**resources, name=f"tunelens:{group[0][0].train_name}").remote(
                runner.worker_state(group), group, tracking, events, study_run(tracking),
                resources["num_cpus"]): group
            for group, resources in zip(ready, asks, strict=True)}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=len(pending), timeout=POLL_S,
                                     fetch_local=False)
            _drain(events, runner)
            if any([_collect(runner, ref, refs[ref], statuses) for ref in done]):
                raise KeyboardInterrupt("interrupted")
    except KeyboardInterrupt:
        for ref in pending:
            ray.cancel(ref)
        if pending:  # a training checkpoints before it stops
            ray.wait(pending, num_returns=len(pending), timeout=120)
        for ref in pending:
            _collect(runner, ref, refs[ref], statuses, interrupted=True)
        raise
    finally:
        _drain(events, runner)
        events.shutdown(force=True)


def _drain(events, runner: StudyRunner) -> None:
    """Hand the progress events the tasks sent so far to the runner's live view."""
    for event in events.get_nowait_batch(events.qsize()):
        runner.on_event(*event)


def _collect(runner: StudyRunner, ref, group: Group, statuses: list[CellStatus],
             interrupted: bool = False) -> bool:
    """Merge a finished task's group; a task that died (past its retries) or was cancelled
    fails its cells (a rerun skips the stages they finished). True if it was interrupted."""
    import ray

    try:
        result: GroupResult = ray.get(ref, timeout=0 if interrupted else None)
    except (ray.exceptions.RayError, TimeoutError) as exc:
        if interrupted:
            why = "interrupted"
        elif isinstance(exc, ray.exceptions.RayTaskError):  # the task itself raised
            why = f"{type(exc.cause).__name__}: {exc.cause}"
        else:
            why = (f"its Ray task died {RETRIES + 1} times ({type(exc).__name__}: out of "
                   "memory? a node lost?); rerun to retry the cell")
        fail_group(runner, group, statuses, RuntimeError(why))
        return False
    return merge_result(runner, group, result, statuses)


def _ray_group(state: dict, group: Group, tracking: TrackingConfig | None, events,
               parent_run: tuple[str, str] | None, threads: int) -> GroupResult:
    """The task: one group's cells in a Ray worker, as :func:`tunelens.parallel.run_group`."""
    prepare_worker(threads, parent_run)
    return run_group(state, group, tracking, lambda *event: events.put(event))
