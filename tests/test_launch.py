"""Multi-process training under Accelerate's launcher: a real 2-process DDP run on the CPU (gloo),
the shipped GPU configs read by Accelerate's own loader, and the one-line launch errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _train_data import one_torch_thread, write_data  # noqa: F401

from tunelens.cli import main
from tunelens.errors import TunelensError
from tunelens.train.launch import check_launch, launch_command
from tunelens.train.runner import partial_dir

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
SHIPPED = {"ddp.yaml": "MULTI_GPU", "fsdp.yaml": "FSDP", "zero2.yaml": "DEEPSPEED",
           "zero3.yaml": "DEEPSPEED"}


def _val_loss(model, tokenizer, rows) -> float:
    import torch

    texts = [f"{r['prompt']}\n{r['completion']}" for r in rows]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    with torch.no_grad():
        return float(model(**batch, labels=labels).loss)


@pytest.mark.slow
def test_two_processes_train_once_and_the_checkpoint_loads(micro_model_dir, tmp_path):
    """2 processes, DDP over gloo, through the CLI: one run folder, one run.json; the loss falls
    and the saved weights, reloaded, fit the validation rows better than the base. (MLflow is
    off: a new SQLite store alone costs ~10 s on a busy machine; the main process alone creates
    the run, the same Tracker code test_train.py covers.)"""
    from tunelens.models.loading import load_model

    data, out = write_data(tmp_path / "data"), tmp_path / "runs" / "ddp"
    config = tmp_path / "study.yaml"
    config.write_text("train:\n  max_steps: 10\n  full_learning_rate: 0.003\n  batch_size: 4\n"
                      "  logging_steps: 5\n  warmup_ratio: 0.0\ntracking:\n  enabled: false\n")
    code = main(["train", "--model", str(micro_model_dir), "--data", str(data), "--strategy", "full",
                 "--objective", "instruct", "--out", str(out), "--config", str(config),
                 "--launcher", "accelerate", "--num-processes", "2",
                 "--threads", "1"])
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["launch"] == {"launcher": "accelerate", "num_processes": 2,
                              "distributed_type": "MULTI_CPU", "backend": "gloo"}
    assert info["global_step"] == 10 and [p["step"] for p in info["train_loss"]] == [5, 10]
    assert info["train_loss"][-1]["loss"] < info["train_loss"][0]["loss"]
    assert info["val_loss_after"] < info["val_loss_before"] - 0.1
    assert not partial_dir(out).exists() and sorted(p.name for p in out.parent.iterdir()) == ["ddp"]
    assert info["mlflow"] is None and not (tmp_path / "runs" / "mlflow.db").exists()

    rows = [json.loads(line) for line in (data / "val.jsonl").read_text().splitlines()]
    trained, tokenizer = load_model(str(out))
    base, _ = load_model(str(micro_model_dir))
    assert _val_loss(trained, tokenizer, rows) < _val_loss(base, tokenizer, rows) - 0.1


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_configs_load_with_accelerates_own_loader(name):
    from accelerate.commands.config.config_args import load_config_from_file

    loaded = load_config_from_file(str(CONFIGS / name))
    assert loaded.distributed_type.value == SHIPPED[name]
    assert loaded.num_machines == 1 and not loaded.use_cpu
    if name.startswith("zero"):  # the Trainer fills accumulation from train: (a fixed one clashes)
        assert loaded.deepspeed_config["zero_stage"] == int(name[4])
        assert "gradient_accumulation_steps" not in loaded.deepspeed_config
    if name == "zero3.yaml":  # the run folder needs the gathered 16-bit weights
        assert loaded.deepspeed_config["zero3_save_16bit_model"] is True
    if name == "fsdp.yaml":
        assert loaded.fsdp_config["fsdp_state_dict_type"] == "FULL_STATE_DICT"


def test_shipped_configs_are_refused_in_one_line_without_gpus():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has GPUs")
    for name in SHIPPED:
        with pytest.raises(TunelensError, match="needs GPUs; this machine has none"):
            check_launch("accelerate", 2, "lora", CONFIGS / name)


@pytest.mark.parametrize("args, message", [
    (["--launcher", "mpi"], "--launcher 'mpi': expected one of none, accelerate"),
    (["--launcher", "accelerate", "--num-processes", "0"], "--num-processes 0: needs at least 1"),
    (["--num-processes", "2"], "--num-processes needs --launcher accelerate"),
    (["--accelerate-config", "x.yaml"], "--accelerate-config needs --launcher accelerate"),
    (["--launcher", "accelerate", "--accelerate-config", "missing.yaml"], "missing.yaml: no such file"),
    (["--launcher", "accelerate", "--strategy", "none"], "strategy 'none' runs in one process only"),
])
def test_bad_launches_are_one_line_and_write_nothing(args, message, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["train", "--model", "m", "--data", str(tmp_path), "--strategy", "lora",
            "--objective", "causal", "--out", str(out), *args]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in " ".join(err.split()) and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_a_config_accelerate_cannot_read_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("compute_environment: LOCAL_MACHINE\ndistributed_type: NOT_A_TYPE\n")
    with pytest.raises(TunelensError, match="Accelerate cannot read it"):
        check_launch("accelerate", 2, "lora", bad)


def test_the_command_is_accelerate_launch_with_every_value_given(tmp_path):
    cmd = launch_command(tmp_path, 2, "MULTI_CPU", "bfloat16", threads=3)
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"] and "--multi_gpu" in cmd
    value = {flag: cmd[cmd.index(flag) + 1] for flag in ("--num_processes", "--main_process_port",
                                                         "--num_cpu_threads_per_process",
                                                         "--mixed_precision")}
    assert value == {"--num_processes": "2", "--main_process_port": "0",
                     "--num_cpu_threads_per_process": "3", "--mixed_precision": "bf16"}
    assert cmd[-3:] == ["-m", "tunelens.train.launch", str(tmp_path)]
    sharded = launch_command(tmp_path, 4, "FSDP", accelerate_config=CONFIGS / "fsdp.yaml")
    assert "--multi_gpu" not in sharded and str(CONFIGS / "fsdp.yaml") in sharded


def test_gradual_unfreezing_is_refused_before_any_process_starts(tmp_path):
    from tunelens.config import TrainConfig
    from tunelens.train.launch import launch_train

    with pytest.raises(TunelensError, match="gradual_unfreezing with --launcher accelerate"):
        launch_train("m", tmp_path, tmp_path / "run", "full", "instruct",
                     TrainConfig(gradual_unfreezing=True), num_processes=2)
    assert list(tmp_path.iterdir()) == []


def test_a_missing_model_is_one_line_before_any_process_starts(tmp_path):
    from tunelens.train.launch import launch_train

    data = write_data(tmp_path / "data")
    with pytest.raises(TunelensError, match="no-model: no such model folder"):
        launch_train(str(tmp_path / "no-model"), data, tmp_path / "run", "lora", "causal",
                     num_processes=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
