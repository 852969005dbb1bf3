"""``export_merged``: a training run folder → one standalone checkpoint that needs no PEFT.

* lora / dora: the fp32 base plus the adapter, merged with PEFT's ``merge_and_unload``.
* qlora: the adapter was trained against the *4-bit* base, so it is merged into that base
  de-quantized to fp32 (bitsandbytes' NF4 → fp32 via transformers' ``dequantize``), not into the
  original full-precision weights. The merged model reproduces base-4bit + adapter up to float
  rounding; it is an fp32 checkpoint (re-quantize it at load time if wanted).
* full / freeze: the run already holds full weights; they are re-saved in fp32.

Whatever dtype the run trained in, the export is fp32 (``export.json`` says so), and a base that
needed ``trust_remote_code`` is loaded with it, as run.json records.

The output folder gets the weights, the tokenizer and ``export.json`` (where it came from), and is
written atomically.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.contracts import RunRecord, read_object
from tunelens.errors import TunelensError
from tunelens.io import atomic_dir, write_json


def export_merged(run_dir: Path, out: Path) -> Path:
    """Write a merged, standalone copy of the model in ``run_dir`` to ``out``; return ``out``."""
    run_dir, out = Path(run_dir), Path(out)
    if not run_dir.is_dir():
        raise TunelensError(f"{run_dir}: no such folder")
    if not (run_dir / "run.json").exists():
        raise TunelensError(f"{run_dir}: not a finished training run (no run.json)")
    if out.resolve() == run_dir.resolve():
        raise TunelensError(f"{out}: the export must go to a different folder than the run")
    info = read_object(run_dir / "run.json", RunRecord).model_dump()
    has_adapter = (run_dir / "adapter_config.json").exists()

    from tunelens.models.loading import load_model, load_tokenizer

    trust = bool(info.get("trust_remote_code", False))  # the base's own code, as training ran it
    if has_adapter:
        model = _merged(run_dir, info, trust)
    else:
        model, _ = load_model(str(run_dir), trust_remote_code=trust)  # float32, whatever was saved
    tokenizer = load_tokenizer(str(run_dir), trust)
    with atomic_dir(out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "export.json", {
            "source_run": str(run_dir.resolve()),
            "strategy": info.get("strategy"),
            "objective": info.get("objective"),
            "base_model": info.get("base_model"),
            "merged": has_adapter,
            "dequantized_from": info.get("quantization") if info.get("strategy") == "qlora" else None,
            "dtype": "float32",
        })
    return out


def _merged(run_dir: Path, info: dict, trust_remote_code: bool):
    import torch
    from peft import PeftModel

    from tunelens.config import QuantConfig
    from tunelens.models.loading import load_model

    base_id = info.get("base_model")
    if not base_id:
        raise TunelensError(f"{run_dir / 'run.json'}: no 'base_model' to merge the adapter into")
    if info.get("strategy") == "qlora":
        base, _ = load_model(base_id, quantization=QuantConfig(**(info.get("quantization") or {})),
                             trust_remote_code=trust_remote_code)
        base = base.dequantize()
    else:
        base, _ = load_model(base_id, trust_remote_code=trust_remote_code)
    base = base.to(torch.float32)
    tuned = PeftModel.from_pretrained(base, str(run_dir))
    merged = tuned.merge_and_unload()
    for attr in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(merged.config, attr):
            delattr(merged.config, attr)
    merged.eval()
    return merged
