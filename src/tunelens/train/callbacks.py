"""Trainer callbacks for what transformers and TRL do not offer out of the box.

* :class:`GradualUnfreezing` — ULMFiT-style top-down unfreezing for full fine-tuning. Every
  parameter stays in the optimizer (it is built before training starts); frozen ones simply get no
  gradient, which torch's optimizers skip, so unfreezing later needs no optimizer surgery and
  resuming from a checkpoint restores the same schedule from ``global_step``.
* :class:`InterruptCheckpoint` — the first Ctrl-C asks the trainer to checkpoint at the end of the
  current step and stop, through the Trainer's public control flags (``should_save``,
  ``should_training_stop``), so the checkpoint is the Trainer's own; a second one interrupts at
  once, keeping only the checkpoints already written.
* :class:`PeakMemory` — peak resident memory *during* training, sampled in a thread (the
  process-wide ``ru_maxrss`` would include whatever ran before in the same process).
* :class:`SessionTokens` — input tokens seen by this ``train()`` call (a resumed run's state
  starts with the tokens of the sessions before it), for an honest tokens/s.
* :class:`RichProgress` — the project's progress bar (:func:`tunelens.progress.item_bar`) over
  optimizer steps, with the latest loss, for the CLI.
"""

from __future__ import annotations

import math
import os
import resource
import signal
import threading

from transformers import TrainerCallback

from tunelens.train.strategies import decoder_layers, top_module_params


class GradualUnfreezing(TrainerCallback):
    """Unfreeze parameter groups top-down: head (+ final norm), layer L-1, ..., layer 0, embeddings.

    With G groups and S steps, step s trains the first ``1 + floor(s * G / S)`` groups (capped at G),
    so the embeddings join for the last S/G steps.
    """

    def __init__(self) -> None:
        self.groups: list[list] = []
        self.unfrozen = 0

    def _build(self, model) -> None:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        layers = list(decoder_layers(base))
        groups = [top_module_params(base)]
        groups += [list(layer.parameters()) for layer in reversed(layers)]
        groups.append(list(base.get_input_embeddings().parameters()))
        self.groups = groups

    def groups_open(self, step: int, max_steps: int) -> int:
        return min(len(self.groups), 1 + math.floor(step * len(self.groups) / max(1, max_steps)))

    def _apply(self, step: int, max_steps: int) -> None:
        n = self.groups_open(step, max_steps)
        if n == self.unfrozen:
            return
        open_ids = {id(p) for group in self.groups[:n] for p in group}
        for group in self.groups:
            for p in group:
                p.requires_grad_(id(p) in open_ids)
        self.unfrozen = n

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._build(model)
        self.unfrozen = -1
        self._apply(state.global_step, state.max_steps)

    def on_step_begin(self, args, state, control, **kwargs):
        self._apply(state.global_step, state.max_steps)

    def on_train_end(self, args, state, control, **kwargs):
        for group in self.groups:  # leave the model fully trainable, as 'full' promises
            for p in group:
                p.requires_grad_(True)


def _never() -> bool:
    return False


# Set by a study worker process (tunelens.parallel): true once the parent asks the study to stop.
# A SIGINT sent to the parent alone reaches no worker; training polls this at every step instead.
external_stop = _never


class InterruptCheckpoint(TrainerCallback):
    """First SIGINT (or :data:`external_stop`): checkpoint after this step and stop. Second
    SIGINT: KeyboardInterrupt now.

    The checkpoint is requested, not written here: ``control.should_save`` makes the Trainer save
    through its normal path right after ``on_step_end`` (the same files, rotation and RNG state
    ``resume_from_checkpoint`` reads back), and ``should_training_stop`` ends the loop. Only a
    finished optimizer step is ever saved; a second Ctrl-C, mid-step, saves nothing new.
    """

    def __init__(self) -> None:
        self.requested = False
        self.interrupted_at: int | None = None
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def on_train_begin(self, args, state, control, **kwargs):
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)

    def on_step_end(self, args, state, control, **kwargs):
        if self.requested or external_stop():
            control.should_save = True
            control.should_training_stop = True
            self.interrupted_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.restore()

    def restore(self) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None


class PeakMemory(TrainerCallback):
    """Peak resident set size (MB) between train begin and end, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.02) -> None:
        self.interval = interval
        self.peak_bytes = 0
        self.peak_gpu_bytes = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def current_rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self.current_rss())
            self._stop.wait(self.interval)

    def start(self) -> None:
        import torch

        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        self._stop.clear()
        self.peak_bytes = self.current_rss()
        self._thread = threading.Thread(target=self._run, name="tunelens-peak-rss", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        import torch

        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
            self.peak_bytes = max(self.peak_bytes, self.current_rss())
        if torch.cuda.is_available():
            self.peak_gpu_bytes = torch.cuda.max_memory_allocated()

    def on_train_begin(self, args, state, control, **kwargs):
        self.start()

    def on_train_end(self, args, state, control, **kwargs):
        self.stop()

    @property
    def peak_rss_mb(self) -> float:
        return round(self.peak_bytes / 2**20, 1)

    @property
    def peak_gpu_mb(self) -> float | None:
        return round(self.peak_gpu_bytes / 2**20, 1) if self.peak_gpu_bytes else None


class SessionTokens(TrainerCallback):
    """Tokens seen since this call's training began: the state at ``on_train_begin`` is the one
    loaded from the checkpoint, so its count is what earlier sessions saw."""

    def __init__(self) -> None:
        self.at_start = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.at_start = state.num_input_tokens_seen

    def seen(self, state) -> int:
        return state.num_input_tokens_seen - self.at_start


class RichProgress(TrainerCallback):
    """The project's item bar over optimizer steps with the last logged loss; erased at the end,
    since the CLI prints the run's summary in its place."""

    def __init__(self, description: str = "training") -> None:
        self.description = description
        self._progress = None
        self._task = None

    def on_train_begin(self, args, state, control, **kwargs):
        from tunelens.progress import item_bar

        self._progress = item_bar(transient=True, fields=("loss",))
        self._progress.start()
        self._task = self._progress.add_task(self.description, total=state.max_steps,
                                             completed=state.global_step, loss="-")

    def on_step_end(self, args, state, control, **kwargs):
        if self._progress is not None:
            self._progress.update(self._task, completed=state.global_step)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self._progress is not None and logs and "loss" in logs:
            self._progress.update(self._task, loss=f"{logs['loss']:.3f}")

    def on_train_end(self, args, state, control, **kwargs):
        self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
