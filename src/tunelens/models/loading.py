"""Load any Hugging Face causal LM by hub id or local path, optionally 4-/8-bit quantized.

Thin on purpose: transformers does the loading; this module turns its many failure modes (no
network, not a causal LM, missing bitsandbytes) into one line a user can act on.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.errors import TunelensError


def load_tokenizer(path_or_id: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tok = AutoTokenizer.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except OSError as exc:
        raise TunelensError(_not_found(path_or_id, exc)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path_or_id: str, dtype: str = "float32", quantization=None,
               device_map: str | None = None, trust_remote_code: bool = False):
    """Load (model, tokenizer). ``quantization`` is a :class:`tunelens.config.QuantConfig` or None."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(path_or_id, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise TunelensError(_not_found(path_or_id, exc)) from None
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    if device_map:
        kwargs["device_map"] = device_map
    if quantization is not None:
        kwargs["quantization_config"] = bnb_config(quantization)
    try:
        model = AutoModelForCausalLM.from_pretrained(path_or_id, config=config, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise TunelensError(
                f"{path_or_id}: not a causal language model ({type(config).__name__})"
            ) from None
        raise
    return model, load_tokenizer(path_or_id, trust_remote_code)


def bnb_config(quant):
    """A transformers ``BitsAndBytesConfig`` from our :class:`QuantConfig`."""
    import torch
    from transformers import BitsAndBytesConfig

    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise TunelensError(
            "4-bit/8-bit loading needs bitsandbytes>=0.47: pip install 'bitsandbytes>=0.47'"
        ) from None
    if quant.bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=quant.quant_type,
        bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
    )


def _not_found(path_or_id: str, exc: Exception) -> str:
    if Path(path_or_id).exists():
        return f"{path_or_id}: cannot load a model from this folder ({str(exc).splitlines()[0]})"
    return (f"{path_or_id}: not a local folder and the model hub could not be reached; "
            "download the model elsewhere and pass its local path")


def load_for_inference(model: str, quantization=None):
    """Load a trained run folder (full weights or a PEFT adapter over its base) or any model path/id.

    A run folder is recognised by its ``run.json``. Adapters are loaded unmerged on top of the
    base model, which is re-quantized the way it was trained for ``qlora`` runs.
    """
    import json

    run_json = Path(model) / "run.json"
    if not run_json.exists():
        return load_model(model, quantization=quantization)
    info = json.loads(run_json.read_text())
    if not (Path(model) / "adapter_config.json").exists():
        return load_model(model, quantization=quantization)
    from peft import PeftModel

    if quantization is None and info.get("strategy") == "qlora":
        from tunelens.config import QuantConfig

        quantization = QuantConfig(**info.get("quantization", {}))
    base, _ = load_model(info["base_model"], quantization=quantization)
    tuned = PeftModel.from_pretrained(base, model)
    return tuned, load_tokenizer(model)
