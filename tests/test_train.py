"""End-to-end fine-tuning on the micro model: each strategy learns, runs are tracked, Ctrl-C resumes."""

from __future__ import annotations

import json
import os
import signal

import pytest
from _train_data import one_torch_thread, write_data  # noqa: F401
from transformers import TrainerCallback

from tunelens.cli import main
from tunelens.config import TrackingConfig, TrainConfig
from tunelens.layout import RunIdentity
from tunelens.train import train
from tunelens.train.runner import partial_dir, resumable_checkpoint

# A random-init micro model learns fast; these rates make 30 steps reliably lower val loss.
FAST = dict(max_steps=30, learning_rate=1e-2, full_learning_rate=3e-3, batch_size=4, max_length=256,
            logging_steps=10, warmup_ratio=0.0)
RUN_KEYS = {"strategy", "objective", "base_model", "trainable_params", "total_params", "train_loss",
            "val_loss_before", "val_loss_after", "wall_seconds", "tokens_per_second", "peak_rss_mb",
            "config", "quantization"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("train-data"))


@pytest.fixture(scope="module")
def tracking(tmp_path_factory):
    """One SQLite store for the module (creating a store costs seconds)."""
    return TrackingConfig(uri=f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}",
                          experiment="tests")


@pytest.mark.parametrize("strategy", ["full", "lora", "qlora"])
def test_strategy_lowers_val_loss_and_is_tracked(strategy, micro_model_dir, data_dir, tracking, tmp_path):
    from mlflow import MlflowClient

    out = tmp_path / strategy
    info = train(str(micro_model_dir), data_dir, out, strategy, "instruct",
                 config=TrainConfig(**FAST), tracking=tracking)

    assert RUN_KEYS <= set(info)
    assert info["val_loss_after"] < info["val_loss_before"] - 0.1
    assert json.loads((out / "run.json").read_text()) == info
    assert [r["step"] for r in info["train_loss"]] == [10, 20, 30]
    assert info["tokens_per_second"] > 0 and info["peak_rss_mb"] > 0
    if strategy == "full":
        assert info["trainable_params"] == info["total_params"]
        assert (out / "model.safetensors").exists() and not (out / "adapter_config.json").exists()
    else:
        assert 0 < info["trainable_params"] < info["total_params"] / 2
        assert (out / "adapter_config.json").exists() and not (out / "model.safetensors").exists()
    assert (info["quantization"] is not None) == (strategy == "qlora")
    assert not partial_dir(out).exists()
    # without a study, the run records the identity it knows, as data
    assert info["identity"] == {"name": f"{micro_model_dir.name}__{strategy}__instruct",
                                "model": micro_model_dir.name, "strategy": strategy,
                                "objective": "instruct", "rag": False, "seed": None}

    client = MlflowClient(tracking_uri=tracking.uri)
    run = client.get_run(info["mlflow"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["strategy"] == strategy
    assert run.data.metrics["val_loss_after"] == pytest.approx(info["val_loss_after"])
    history = client.get_metric_history(run.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [10, 20, 30]
    assert "run.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_qlora_run_reloads_on_a_4bit_base(micro_model_dir, data_dir, tmp_path):
    import bitsandbytes as bnb

    from tunelens.models.loading import load_for_inference

    out = tmp_path / "q"
    info = train(str(micro_model_dir), data_dir, out, "qlora", "instruct",
                 config=TrainConfig(**{**FAST, "max_steps": 2}), tracking=TrackingConfig(enabled=False))
    assert info["quantization"] == {"bits": 4, "quant_type": "nf4", "double_quant": True,
                                    "compute_dtype": "float32"}
    model, _ = load_for_inference(str(out))
    base_linears = [m for name, m in model.named_modules()
                    if name.endswith(("q_proj.base_layer", "down_proj.base_layer"))]
    assert len(base_linears) == 4
    assert all(isinstance(m, bnb.nn.Linear4bit) for m in base_linears)
    assert base_linears[0].weight.quant_state.quant_type == "nf4"


def test_dora_and_freeze(micro_model_dir, data_dir, tmp_path):
    from safetensors.torch import load_file

    cfg = TrainConfig(**{**FAST, "max_steps": 3, "freeze_top_k": 1})
    off = TrackingConfig(enabled=False)
    # the other knobs ride along: checkpointing + accumulation on dora, a loss curriculum on freeze
    dora_cfg = cfg.model_copy(update={"gradient_checkpointing": True, "gradient_accumulation_steps": 2,
                                      "scheduler": "linear"})
    dora = train(str(micro_model_dir), data_dir, tmp_path / "dora", "dora", "instruct", dora_cfg, off)
    assert json.loads((tmp_path / "dora" / "adapter_config.json").read_text())["use_dora"] is True
    assert 0 < dora["trainable_params"] < dora["total_params"]
    assert dora["global_step"] == 3 and dora["train_tokens"] > 0

    identity = RunIdentity("micro", "freeze", "instruct", seed=3).to_dict()
    frozen = train(str(micro_model_dir), data_dir, tmp_path / "freeze", "freeze", "instruct",
                   cfg.model_copy(update={"curriculum": "loss"}), off, identity=identity)
    assert frozen["identity"] == identity  # the study's identity, written as given
    assert RunIdentity.from_dict(json.loads((tmp_path / "freeze" / "run.json").read_text())["identity"]) \
        == RunIdentity("micro", "freeze", "instruct", seed=3)
    assert 0 < frozen["trainable_params"] < frozen["total_params"]
    before = load_file(micro_model_dir / "model.safetensors")
    after = load_file(tmp_path / "freeze" / "model.safetensors")
    changed = {k for k in before if not before[k].equal(after[k])}
    assert changed  # the top layer and the head moved ...
    assert all(k.startswith(("model.layers.1.", "lm_head", "model.norm")) for k in changed)
    assert "lm_head.weight" in changed  # ... while layer 0 and the embeddings did not


class CtrlC(TrainerCallback):
    """A real Ctrl-C (``times`` SIGINTs) in the middle of step ``at_step + 1``."""

    def __init__(self, at_step: int, times: int = 1) -> None:
        self.at_step, self.times = at_step, times

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            for _ in range(self.times):
                os.kill(os.getpid(), signal.SIGINT)


class FirstStep(TrainerCallback):
    """Records the global step training started from (0 for a fresh start)."""

    first = None

    def on_step_begin(self, args, state, control, **kwargs):
        if self.first is None:
            self.first = state.global_step


def checkpoints(out) -> list[str]:
    return sorted(p.name for p in (partial_dir(out) / "checkpoints").glob("checkpoint-*"))


def test_interrupt_checkpoints_and_rerun_resumes(micro_model_dir, tmp_path):
    data_dir = write_data(tmp_path / "data")
    cfg = TrainConfig(**{**FAST, "max_steps": 6, "logging_steps": 1})
    study = tmp_path / "study"
    out = study / "models" / "m__lora__instruct"
    with pytest.raises(KeyboardInterrupt):
        train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg, callbacks=[CtrlC(2)])
    assert not out.exists()
    assert checkpoints(out) == ["checkpoint-3"]  # saved by the Trainer at the end of step 3
    os.utime(data_dir / "train.jsonl")  # touched, not changed: still the same run

    first = FirstStep()
    info = train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg, callbacks=[first])
    assert first.first == 3  # global_step continued from the checkpoint, not from 0
    assert info["resumed_from_step"] == 3 and info["global_step"] == 6
    steps = [r["step"] for r in info["train_loss"]]  # logs from before the interrupt are kept
    assert steps == sorted(set(steps)) and {1, 2, 4, 5, 6} <= set(steps)
    assert not partial_dir(out).exists() and (out / "run.json").exists()
    assert resumable_checkpoint(out) is None
    # default tracking store: <study>/mlflow.db for runs at <study>/models/<run>
    assert (study / "mlflow.db").exists() and not (study / "models" / "mlflow.db").exists()
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{study / 'mlflow.db'}")
    statuses = sorted(r.info.status for r in client.search_runs(
        [client.get_experiment_by_name("tunelens").experiment_id]))
    assert statuses == ["FINISHED", "KILLED"]


def test_sigint_checkpoints_at_step_end_and_changed_input_starts_over(micro_model_dir, tmp_path):
    data_dir = write_data(tmp_path / "data")
    cfg = TrainConfig(**{**FAST, "max_steps": 4})
    off = TrackingConfig(enabled=False)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)  # Python's default, or SIG_IGN in a background job
    with pytest.raises(KeyboardInterrupt):
        train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg, off, callbacks=[CtrlC(1)])
    assert signal.getsignal(signal.SIGINT) is before  # handler restored
    assert checkpoints(out) == ["checkpoint-2"]  # step 2 finished, then the run stopped

    rows = (data_dir / "train.jsonl").read_text().splitlines()
    edited = json.loads(rows[5]) | {"completion": "RULE edited.row >= 1 mm"}
    (data_dir / "train.jsonl").write_text("\n".join([*rows[:5], json.dumps(edited), *rows[6:]]) + "\n")
    first = FirstStep()
    with pytest.raises(KeyboardInterrupt):  # an edited row: the checkpoint is not this run's
        train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg, off,
              callbacks=[first, CtrlC(1)])
    assert first.first == 0 and checkpoints(out) == ["checkpoint-2"]

    other = TrainConfig(**{**FAST, "max_steps": 3, "learning_rate": 5e-3})
    info = train(str(micro_model_dir), data_dir, out, "lora", "instruct", other, off)
    assert info["resumed_from_step"] is None  # a changed config starts over too


def test_second_ctrl_c_stops_at_once_keeping_the_last_step_end_checkpoint(micro_model_dir, data_dir,
                                                                         tmp_path):
    cfg = TrainConfig(**{**FAST, "max_steps": 5, "save_steps": 2})
    off = TrackingConfig(enabled=False)
    out = tmp_path / "run"
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):  # two Ctrl-C mid step 4: no half-done step is saved
        train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg, off,
              callbacks=[CtrlC(3, times=2)])
    assert signal.getsignal(signal.SIGINT) is before
    assert checkpoints(out) == ["checkpoint-2"]  # the periodic save, written by the Trainer
    assert resumable_checkpoint(out) == partial_dir(out) / "checkpoints" / "checkpoint-2"
    info = train(str(micro_model_dir), data_dir, out, "lora", "instruct", cfg, off)
    assert info["resumed_from_step"] == 2 and info["global_step"] == 5


def test_early_stopping_on_rising_val_loss(micro_model_dir, data_dir, tmp_path):
    cfg = TrainConfig(**{**FAST, "max_steps": 30, "full_learning_rate": 0.5, "eval_steps": 1,
                         "early_stopping_patience": 1, "logging_steps": 1})
    info = train(str(micro_model_dir), data_dir, tmp_path / "es", "full", "instruct", cfg,
                 TrackingConfig(enabled=False))
    assert info["stopped_early"] and info["global_step"] < 30
    assert len(info["val_loss"]) == info["global_step"]


def test_same_seed_same_losses(micro_model_dir, data_dir, tmp_path):
    cfg = TrainConfig(**{**FAST, "max_steps": 3, "logging_steps": 1, "neftune_noise_alpha": 5.0,
                         "dropout": 0.1, "weight_decay": 0.01})
    off = TrackingConfig(enabled=False)
    a = train(str(micro_model_dir), data_dir, tmp_path / "a", "lora", "causal", cfg, off)
    b = train(str(micro_model_dir), data_dir, tmp_path / "b", "lora", "causal", cfg, off)
    c = train(str(micro_model_dir), data_dir, tmp_path / "c", "lora", "causal",
              cfg.model_copy(update={"seed": 1}), off)
    assert a["train_loss"] == b["train_loss"]
    assert a["train_loss"] != c["train_loss"]


def test_cli_train_and_summary(micro_model_dir, data_dir, tracking, tmp_path, capsys):
    out = tmp_path / "cli-run"
    code = main(["train", "--model", str(micro_model_dir), "--data", str(data_dir), "--strategy", "lora",
                 "--objective", "causal", "--out", str(out), "--max-steps", "2",
                 "--tracking-uri", tracking.uri])
    assert code == 0
    info = json.loads((out / "run.json").read_text())
    assert info["global_step"] == 2 and info["objective"] == "causal"
    assert info["mlflow"]["tracking_uri"] == tracking.uri
    assert "val loss before -> after" in capsys.readouterr().out


def test_run_nests_under_an_active_mlflow_run(micro_model_dir, data_dir, tracking, tmp_path):
    import mlflow

    client = mlflow.MlflowClient(tracking.uri)
    experiment = client.create_experiment("study-parent", artifact_location=(tmp_path / "art").as_uri())
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking.uri)
    try:
        with mlflow.start_run(experiment_id=experiment, run_name="study") as parent:
            info = train(str(micro_model_dir), data_dir, tmp_path / "child", "lora", "instruct",
                         TrainConfig(**{**FAST, "max_steps": 1}), TrackingConfig(uri=tracking.uri))
    finally:
        mlflow.set_tracking_uri(previous)
    child = client.get_run(info["mlflow"]["run_id"])
    assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
    assert child.info.experiment_id == experiment
    assert info["mlflow"]["experiment"] == "study-parent"
