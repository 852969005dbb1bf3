"""The model spec is honoured: dtype and trust_remote_code reach training, run.json, generation,
attribution and export, and a dtype the machine cannot compute in is refused before any work."""

from __future__ import annotations

import json
import shutil

import pytest
from _train_data import one_torch_thread, write_data  # noqa: F401

from tunelens.cli import main
from tunelens.config import TrackingConfig, TrainConfig
from tunelens.errors import TunelensError
from tunelens.train import train

OFF = TrackingConfig(enabled=False)
QUICK = TrainConfig(max_steps=2, batch_size=4, logging_steps=1, warmup_ratio=0.0, max_length=128)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("settings-data"), n_train=12, n_val=4)


def _param_dtypes(model) -> set[str]:
    return {str(p.dtype).removeprefix("torch.") for p in model.parameters()}


def test_bfloat16_trains_saves_and_reloads_in_bfloat16(micro_model_dir, data_dir, tmp_path):
    from safetensors import safe_open

    from tunelens.infer.generate import generate_predictions
    from tunelens.models.loading import load_for_inference

    out = tmp_path / "bf16"
    info = train(str(micro_model_dir), data_dir, out, "full", "instruct", QUICK, OFF, dtype="bfloat16")
    assert info["dtype"] == "bfloat16" and info["trust_remote_code"] is False
    assert json.loads((out / "run.json").read_text())["dtype"] == "bfloat16"
    with safe_open(str(out / "model.safetensors"), "pt") as saved:  # trained in bf16, saved so
        assert {str(saved.get_tensor(k).dtype) for k in saved.keys()} == {"torch.bfloat16"}
    model, _ = load_for_inference(str(out))  # run.json's dtype, not the float32 default
    assert _param_dtypes(model) == {"bfloat16"}
    model, _ = load_for_inference(str(out), dtype="float32")  # an explicit dtype wins
    assert _param_dtypes(model) == {"float32"}
    summary = generate_predictions(str(out), data_dir / "val.jsonl", tmp_path / "p.jsonl",
                                   progress=False)
    assert summary["rows"] == 4 and (tmp_path / "p.jsonl").is_file()


def test_adapter_base_reloads_in_the_recorded_dtype(micro_model_dir, data_dir, tmp_path):
    from tunelens.models.loading import load_for_inference

    out = tmp_path / "lora-bf16"
    train(str(micro_model_dir), data_dir, out, "lora", "instruct", QUICK, OFF, dtype="bfloat16")
    tuned, _ = load_for_inference(str(out))
    base = {n: p for n, p in tuned.named_parameters() if "lora_" not in n}
    assert {str(p.dtype) for p in base.values()} == {"torch.bfloat16"}


_CONFIG_CODE = '''from transformers import LlamaConfig


class TlRemoteConfig(LlamaConfig):
    model_type = "tl-remote"
'''
_MODEL_CODE = '''from transformers import LlamaForCausalLM

from .configuration_tl import TlRemoteConfig


class TlRemoteForCausalLM(LlamaForCausalLM):
    config_class = TlRemoteConfig
'''


@pytest.fixture(scope="module")
def remote_code_dir(micro_model_dir, tmp_path_factory):
    """The micro model as a checkpoint whose config and model classes live in its own code files:
    transformers refuses it without trust_remote_code, and loads it with."""
    folder = tmp_path_factory.mktemp("remote") / "tl-remote"
    shutil.copytree(micro_model_dir, folder)
    (folder / "configuration_tl.py").write_text(_CONFIG_CODE)
    (folder / "modeling_tl.py").write_text(_MODEL_CODE)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="tl-remote", architectures=["TlRemoteForCausalLM"],
                  auto_map={"AutoConfig": "configuration_tl.TlRemoteConfig",
                            "AutoModelForCausalLM": "modeling_tl.TlRemoteForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_trust_remote_code_reaches_training_and_reloading(remote_code_dir, data_dir, tmp_path):
    from tunelens.models.loading import load_for_inference, load_model

    with pytest.raises(TunelensError, match="contains custom code"):
        load_model(str(remote_code_dir))  # refused without it: the flag is what makes it load
    with pytest.raises(TunelensError, match="contains custom code"):
        train(str(remote_code_dir), data_dir, tmp_path / "refused", "lora", "instruct", QUICK, OFF)
    assert not (tmp_path / "refused").exists()
    out = tmp_path / "remote-run"
    info = train(str(remote_code_dir), data_dir, out, "lora", "instruct", QUICK, OFF,
                 trust_remote_code=True)
    assert info["trust_remote_code"] is True
    tuned, _ = load_for_inference(str(out))  # run.json's trust_remote_code reloads the base
    assert type(tuned.get_base_model()).__name__ == "TlRemoteForCausalLM"
    with pytest.raises(TunelensError, match="contains custom code"):
        load_for_inference(str(out), trust_remote_code=False)


def test_dtype_this_machine_cannot_run_is_one_line_before_work(micro_model_dir, data_dir, tmp_path,
                                                               monkeypatch, capsys):
    """torch 2.13 computes in float16 and bfloat16 on this CPU, so the refusal is simulated by
    making the probe fail, as it does on a build without half kernels."""
    from tunelens.models import run_settings

    real = run_settings._cannot_compute
    monkeypatch.setattr(run_settings, "_cannot_compute", lambda dtype, device:
                        "no half kernels" if dtype == "float16" else real(dtype, device))
    out = tmp_path / "run"
    code = main(["train", "--model", str(micro_model_dir), "--data", str(data_dir), "--strategy",
                 "lora", "--objective", "instruct", "--out", str(out), "--dtype", "float16"])
    err = capsys.readouterr().err
    assert code == 2 and "float16 cannot run" in err and "no half kernels" in err
    assert len(err.strip().splitlines()) == 1 and not out.exists()
    code = main(["train", "--model", str(micro_model_dir), "--data", str(data_dir), "--strategy",
                 "lora", "--objective", "instruct", "--out", str(out), "--dtype", "float64"])
    assert code == 2 and "--dtype 'float64'" in capsys.readouterr().err


def test_recorded_dtype_the_machine_cannot_run_is_refused_on_reload(micro_model_dir, data_dir, tmp_path,
                                                                    monkeypatch, capsys):
    from tunelens.models import run_settings

    out = tmp_path / "fp16"
    train(str(micro_model_dir), data_dir, out, "lora", "instruct", QUICK, OFF, dtype="float16")
    monkeypatch.setattr(run_settings, "_cannot_compute", lambda dtype, device: "no half kernels"
                        if dtype == "float16" else None)
    pred = tmp_path / "p.jsonl"
    code = main(["generate", "--model", str(out), "--data", str(data_dir / "val.jsonl"),
                 "--out", str(pred)])
    assert code == 2 and "float16 cannot run" in capsys.readouterr().err and not pred.exists()


def test_bad_settings_in_run_json_name_the_file(micro_model_dir, tmp_path):
    from tunelens.models.run_settings import ModelSettings

    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"dtype": "float8"}))
    with pytest.raises(TunelensError, match=r"run\.json: unknown dtype 'float8'"):
        ModelSettings.of(str(run))
    assert ModelSettings.of(str(micro_model_dir)) == ModelSettings()  # no run.json: the defaults


def test_train_flags_reach_train(micro_model_dir, data_dir, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_train(model, data, out, strategy, objective, config=None, tracking=None, run_name=None,
                   **kwargs):
        seen.update(config=config, **kwargs)
        return {"trainable_params": 1, "total_params": 2, "global_step": 1, "val_loss_before": 2.0,
                "val_loss_after": 1.0, "wall_seconds": 1.0, "tokens_per_second": 1.0, "peak_rss_mb": 1.0}

    monkeypatch.setattr("tunelens.train.train", fake_train)
    base = ["train", "--model", str(micro_model_dir), "--data", str(data_dir), "--strategy", "lora",
            "--objective", "instruct", "--out", str(tmp_path / "run")]
    code = main([*base, "--dtype", "bfloat16", "--trust-remote-code", "--prompt-format", "plain",
                 "--optimizer", "adamw_8bit", "--gradient-checkpointing"])
    assert code == 0, capsys.readouterr().err
    assert (seen["dtype"], seen["trust_remote_code"], seen["prompt_format"]) == ("bfloat16", True, "plain")
    assert (seen["config"].optimizer, seen["config"].gradient_checkpointing) == ("adamw_8bit", True)
    assert main([*base, "--prompt-format", "html"]) == 2
    assert "--prompt-format 'html': expected one of auto, chat, plain" in capsys.readouterr().err
