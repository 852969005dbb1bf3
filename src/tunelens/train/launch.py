"""Multi-process training: ``tunelens train --launcher accelerate --num-processes N``.

The same training as :func:`tunelens.train.train` (TRL's SFTTrainer, the same run folder and
run.json), run by N processes that Accelerate's own launcher starts (``accelerate launch``, which
hands them to ``torch.distributed.run``). The Trainer inside each process sees the process group
and trains data-parallel: each process draws its own ``batch_size`` rows per step, gradients are
averaged, so one optimizer step sees N x ``batch_size`` x ``gradient_accumulation_steps`` rows
and ``max_steps`` means the same number of optimizer updates as in one process.

* On a machine without CUDA the processes run DDP on the CPU with the gloo backend
  (``ACCELERATE_USE_CPU``); with GPUs, DDP over NCCL, or whatever ``--accelerate-config`` names
  (FSDP, DeepSpeed ZeRO-2/3: the files under ``configs/accelerate/``).
* What one process did alone is split by rank: only the main process decides whether to resume
  (its decision is broadcast, so no process wipes a folder another reads), shows the progress
  bar, talks to MLflow, and writes the adapter or weights, the tokenizer and run.json, then
  renames the partial folder to ``--out``. Sharded strategies (FSDP, ZeRO-3) gather the full
  weights first, a step every process takes part in.
* The job reaches the workers as one JSON file (the checked settings, not the command line), and
  a :class:`~tunelens.errors.TunelensError` in a worker comes back as the same one line.
* Ctrl-C stops every process at once (``torch.distributed.run`` ends its workers); a rerun resumes
  from the last ``train.save_steps`` checkpoint, as a single-process run does.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from tunelens.config import TrackingConfig, TrainConfig
from tunelens.errors import TunelensError, check_choice, first_line
from tunelens.io import read_json, write_json, write_text
from tunelens.train.catalog import UNTRAINED
from tunelens.train.grpo_settings import GRPO

LAUNCHERS = {"none": "one process, this one (the default)",
             "accelerate": "N processes started by `accelerate launch` (DDP; FSDP or DeepSpeed "
                           "with --accelerate-config)"}
SHARDED = ("FSDP", "DEEPSPEED")  # Accelerate's distributed types that shard the weights
JOB, ERROR = "job.json", "error.txt"


def check_launch(launcher: str, num_processes: int, strategy: str,
                 accelerate_config: Path | None = None) -> str:
    """The distributed type the launch will run (``MULTI_CPU``, ``MULTI_GPU``, ``FSDP``,
    ``DEEPSPEED``, or ``NO`` for one process), or a one-line error for a combination that
    cannot work, before anything is started."""
    check_choice(launcher, LAUNCHERS, "--launcher")
    if num_processes < 1:
        raise TunelensError(f"--num-processes {num_processes}: needs at least 1")
    if launcher == "none":
        if num_processes > 1 or accelerate_config is not None:
            given = "--accelerate-config" if accelerate_config is not None else "--num-processes"
            raise TunelensError(f"{given} needs --launcher accelerate")
        return "NO"
    if strategy in (UNTRAINED, GRPO):
        raise TunelensError(f"--launcher accelerate: strategy {strategy!r} runs in one process "
                            "only; drop --launcher")
    kind = _config_kind(accelerate_config)
    _check_devices(kind, num_processes, strategy)
    return kind


def _config_kind(accelerate_config: Path | None) -> str:
    """The distributed type an Accelerate config file asks for (read with Accelerate's own
    loader), or plain DDP on whatever devices there are when no file is given."""
    import torch

    default = "MULTI_GPU" if torch.cuda.is_available() else "MULTI_CPU"
    if accelerate_config is None:
        return default
    if not Path(accelerate_config).is_file():
        raise TunelensError(f"--accelerate-config {accelerate_config}: no such file")
    from accelerate.commands.config.config_args import load_config_from_file

    try:
        loaded = load_config_from_file(str(accelerate_config))
    except Exception as exc:  # noqa: BLE001 - whatever the loader refuses, say which file
        first = first_line(exc)
        raise TunelensError(f"--accelerate-config {accelerate_config}: Accelerate cannot read it "
                            f"({first})") from None
    kind = str(getattr(loaded.distributed_type, "value", loaded.distributed_type)).upper()
    return "MULTI_CPU" if kind == "NO" or getattr(loaded, "use_cpu", False) else kind


def _check_devices(kind: str, num_processes: int, strategy: str) -> None:
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if kind != "MULTI_CPU" and not gpus:
        raise TunelensError(f"--accelerate-config asks for {kind}, which needs GPUs; this machine "
                            "has none (without the file, the processes run DDP on the CPU)")
    if kind == "DEEPSPEED":
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:
            raise TunelensError("--accelerate-config asks for DeepSpeed: pip install deepspeed")
    if gpus and num_processes > gpus:
        raise TunelensError(f"--num-processes {num_processes}: this machine has {gpus} GPU(s), "
                            "one process per GPU")
    if strategy == "qlora" and kind in SHARDED:
        raise TunelensError(f"strategy qlora under {kind}: the 4-bit base is not sharded here; "
                            "use DDP (no --accelerate-config) or configs/accelerate/zero2.yaml")


def launch_command(job_dir: Path, num_processes: int, kind: str, precision: str = "float32",
                   accelerate_config: Path | None = None, threads: int | None = None) -> list[str]:
    """``accelerate launch`` running this module's worker on ``job_dir`` in N processes.

    Every value the launcher would otherwise guess (and warn about) is given; port 0 makes it
    pick a free one, so two launches on one machine do not collide. Mixed precision is
    ``train.precision``'s, over a config file's (the launcher hands its value to the Trainer,
    which would otherwise keep it). On the CPU, DDP goes through the multi-GPU launcher
    (``torch.distributed.run``): Accelerate's ``--cpu`` launcher starts one process unless MPI is
    set up, and ``ACCELERATE_USE_CPU`` makes the workers use gloo.
    """
    per_process = threads or max(1, (os.cpu_count() or 1) // num_processes)
    mixed = {"bfloat16": "bf16", "float16": "fp16"}.get(precision, "no")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(num_processes),
           "--num_machines", "1", "--main_process_port", "0", "--dynamo_backend", "no",
           "--num_cpu_threads_per_process", str(per_process), "--mixed_precision", mixed]
    if accelerate_config is not None:
        cmd += ["--config_file", str(accelerate_config)]
    if kind in ("MULTI_CPU", "MULTI_GPU") and num_processes > 1:
        cmd.append("--multi_gpu")
    return [*cmd, "-m", "tunelens.train.launch", str(job_dir)]


def launch_train(model: str, data_dir: Path, out: Path, strategy: str, objective: str,
                 config: TrainConfig | None = None, tracking: TrackingConfig | None = None,
                 run_name: str | None = None, *, num_processes: int = 2,
                 accelerate_config: Path | None = None, threads: int | None = None,
                 progress: bool = False, dtype: str | None = None,
                 trust_remote_code: bool | None = None, prompt_format: str | None = None) -> dict:
    """Train as :func:`tunelens.train.train` does, in ``num_processes`` processes under
    Accelerate's launcher; return the run.json the main process wrote to ``out``.

    The inputs are checked here first (names, both splits, the launch itself), so a bad row or
    flag is one line and no process is started. Raises KeyboardInterrupt when interrupted.
    """
    from tunelens.train.runner import read_inputs
    from tunelens.train.trainer_args import precision

    config = config or TrainConfig()
    kind = check_launch("accelerate", num_processes, strategy, accelerate_config)
    if config.gradual_unfreezing and strategy == "full":
        raise TunelensError("train.gradual_unfreezing with --launcher accelerate: DDP keeps in step "
                            "only the weights trainable at the start; turn it off or train in one "
                            "process")
    read_inputs(model, Path(data_dir), strategy, objective, config, None)
    _check_model(model, dtype, trust_remote_code, prompt_format)
    out = Path(out).resolve()
    job_dir = Path(tempfile.mkdtemp(prefix="tunelens-launch-"))
    try:
        write_json(job_dir / JOB, {
            "model": model, "data_dir": str(Path(data_dir).resolve()), "out": str(out),
            "strategy": strategy, "objective": objective, "config": config.model_dump(mode="json"),
            "tracking": None if tracking is None else tracking.model_dump(mode="json"),
            "run_name": run_name, "progress": progress, "dtype": dtype,
            "trust_remote_code": trust_remote_code, "prompt_format": prompt_format,
        })
        env = {**os.environ, "ACCELERATE_USE_CPU": "false" if kind != "MULTI_CPU" else "true"}
        cmd = launch_command(job_dir, num_processes, kind, precision(config), accelerate_config,
                             threads)
        _run_launcher(cmd, env, job_dir)
        return read_json(out / "run.json")
    finally:
        shutil.rmtree(job_dir, ignore_errors=True)


def _check_model(model: str, dtype: str | None, trust_remote_code: bool | None,
                 prompt_format: str | None) -> None:
    """Resolve the model here, once: a missing folder or an unknown id is one line (not one per
    worker inside the launcher's report), and a .gguf file is de-quantised into the cache before
    N processes would race to do it. Loading its tokenizer is what resolving costs."""
    from tunelens.models.loading import load_tokenizer
    from tunelens.models.run_settings import ModelSettings

    settings = ModelSettings.of(model, dtype, trust_remote_code, prompt_format)
    load_tokenizer(model, settings.trust_remote_code)


def _run_launcher(cmd: list[str], env: dict, job_dir: Path) -> None:
    """Run the launcher to its end; a worker's TunelensError comes back as that line."""
    process = subprocess.Popen(cmd, env=env)
    try:
        code = process.wait()
    except KeyboardInterrupt:  # the workers got the same Ctrl-C; wait for them to stop
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        raise
    if (job_dir / ERROR).exists():
        raise TunelensError((job_dir / ERROR).read_text().strip())
    if code != 0:
        raise TunelensError(f"accelerate launch failed (exit code {code}); the workers' output "
                            "is above")


# -- the worker: one process of the group ------------------------------------------------------

def train_in_group(job: dict) -> dict | None:
    """One process's share of the run described by ``job``; the main process returns run.json,
    the others None. Composes the single-process runner's steps, split by rank (module doc)."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    from tunelens.models.run_settings import ModelSettings
    from tunelens.train.runner import (
        build_trainer,
        fit,
        log_run,
        partial_dir,
        prepare_resume,
        quiet_run,
        read_inputs,
    )
    from tunelens.train.tracking import Tracker
    from tunelens.train.trainer_args import cpu_lm_head

    state = PartialState(cpu=os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true")
    main = state.is_main_process
    out, tracking = Path(job["out"]), job["tracking"]
    tracking = None if tracking is None else TrackingConfig(**tracking)
    settings = ModelSettings.of(job["model"], job["dtype"], job["trust_remote_code"],
                                job["prompt_format"])
    inputs = read_inputs(job["model"], Path(job["data_dir"]), job["strategy"], job["objective"],
                         TrainConfig(**job["config"]), None, settings)
    with quiet_run(), cpu_lm_head():
        session = build_trainer(inputs, partial_dir(out), None, job["progress"] and main)
        decision = [prepare_resume(session.work, inputs.fingerprint()) if main else None]
        broadcast_object_list(decision, from_process=0)
        resume, resume_from = decision[0]
        # every trainable weight takes part in every step: no extra pass over the graph for DDP
        session.trainer.args.ddp_find_unused_parameters = False
        tracker = None
        if main and (tracking is None or tracking.enabled):
            tracker = Tracker(out, tracking, job["run_name"] or out.name)
        result, val_after = fit(session, resume, resume_from, tracker)
        info = _finish_in_group(session, out, result, resume, val_after, resume_from, tracker,
                                state)
    if tracker is not None:
        log_run(tracker, inputs, info, out)
    return info


def _finish_in_group(session, out: Path, result, resume: dict, val_after: float,
                     resume_from: str | None, tracker, state) -> dict | None:
    """:func:`tunelens.train.runner.finish` by rank: every process takes part in gathering
    sharded weights; the main process alone writes the folder and renames it to ``out``."""
    from tunelens.train.runner import finish

    trainer = session.trainer
    kind = str(state.distributed_type.value).upper()
    launch = {"launcher": "accelerate", "num_processes": state.num_processes,
              "distributed_type": kind, "backend": state.backend}
    weights = trainer.accelerator.get_state_dict(trainer.model_wrapped) if kind in SHARDED else None
    info = None
    if state.is_main_process:
        info = finish(session, out, result, resume, val_after, resume_from, tracker,
                      {"launch": launch}, model=trainer.accelerator.unwrap_model(trainer.model),
                      state_dict=weights)
    state.wait_for_everyone()  # no process ends before the run folder is in place
    return info


def main(argv: list[str] | None = None) -> int:
    """The worker's entry (``python -m tunelens.train.launch JOB_DIR``, as the launcher runs it)."""
    from tunelens.runtime import quiet_libraries

    job_dir = Path((argv if argv is not None else sys.argv[1:])[0])
    quiet_libraries()
    try:
        train_in_group(json.loads((job_dir / JOB).read_text()))
    except TunelensError as exc:  # every process writes it: the first to fail ends the others
        write_text(job_dir / ERROR, str(exc))
        return 2
    except KeyboardInterrupt:  # checkpointed at the step's end (InterruptCheckpoint); the parent says so
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
