"""``export_merged``: a training run folder → one standalone checkpoint that needs no PEFT.

* lora / dora: the fp32 base plus the adapter, merged with PEFT's ``merge_and_unload``.
* qlora: the adapter was trained against the *4-bit* base, so it is merged into that base
  de-quantized to fp32 (bitsandbytes' NF4 → fp32 via transformers' ``dequantize``), not into the
  original full-precision weights. The merged model reproduces base-4bit + adapter up to float
  rounding; it is an fp32 checkpoint (re-quantize it at load time if wanted).
* full / freeze: the run already holds full weights; they are re-saved in fp32.

Whatever dtype the run trained in, the export is fp32 (``export.json`` says so), and a base that
needed ``trust_remote_code`` is loaded with it, as run.json records.

``merge=False`` keeps an adapter run as its adapter (PEFT's files, loaded over the base by
``AutoPeftModelForCausalLM``): small, and exactly what was trained.

The output folder gets the weights (safetensors), the tokenizer, ``export.json`` (where it came
from) and a model card, README.md (:mod:`tunelens.train.card`: metadata, metrics with intervals,
an attribution summary and heat-map when the run's study has them), and is written atomically:
a hub-ready folder. ``push`` uploads it with huggingface_hub (its token from the environment,
``HF_TOKEN``, or the login cache), only when asked.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunelens.contracts import RunRecord, read_object
from tunelens.errors import TunelensError, first_line
from tunelens.io import atomic_dir, write_json


def export_merged(run_dir: Path, out: Path) -> Path:
    """Write a merged, standalone copy of the model in ``run_dir`` to ``out``; return ``out``."""
    return Path(export_run(run_dir, out, merge=True)["out"])


def export_run(run_dir: Path, out: Path, merge: bool = True, metrics: Path | None = None,
               attributions: Path | None = None, push: str | None = None) -> dict:
    """Export ``run_dir`` to ``out`` (module docstring); metrics and attributions default to the
    run's own in its study. Returns what was written (and the hub URL when pushed)."""
    from tunelens.train.card import study_files, write_card

    run_dir, out = Path(run_dir), Path(out)
    info = _checked_run(run_dir, out)
    has_adapter = (run_dir / "adapter_config.json").exists()
    found = study_files(run_dir, info)
    metrics, attributions = metrics or found[0], attributions or found[1]
    for given in (metrics, attributions):
        if given is not None and not Path(given).is_file():
            raise TunelensError(f"{given}: no such file")

    from tunelens.models.loading import load_model, load_tokenizer, recorded_quantization

    trust = bool(info.get("trust_remote_code", False))  # the base's own code, as training ran it
    merged = has_adapter and merge
    quantization = recorded_quantization(info) if merged else None  # the 4-bit base to undo
    if has_adapter and not merge:
        model = None
    elif has_adapter:
        model = _merged(run_dir, info, trust, quantization)
    else:
        model, _ = load_model(str(run_dir), trust_remote_code=trust)  # float32, whatever was saved
    tokenizer = load_tokenizer(str(run_dir), trust)
    with atomic_dir(out) as tmp:
        if model is None:
            for name in ADAPTER_FILES:
                shutil.copy2(run_dir / name, tmp / name)
        else:
            model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "export.json", {
            "source_run": str(run_dir.resolve()),
            "strategy": info.get("strategy"),
            "objective": info.get("objective"),
            "base_model": info.get("base_model"),
            "merged": merged,
            "adapter": has_adapter and not merge,
            "dequantized_from": None if quantization is None else quantization.model_dump(mode="json"),
            "dtype": "float32" if model is not None else info.get("dtype"),
        })
        write_card(tmp, run_dir, info, merged, metrics, attributions)
    summary = {"out": str(out), "merged": merged, "adapter": has_adapter and not merge,
               "metrics": str(metrics) if metrics else None,
               "attributions": str(attributions) if attributions else None, "url": None}
    if push:
        summary["url"] = push_folder(out, push)
    return summary


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors")


def _checked_run(run_dir: Path, out: Path) -> dict:
    """run.json of a finished run, once ``out`` is known to be elsewhere; else one line."""
    if not run_dir.is_dir():
        raise TunelensError(f"{run_dir}: no such folder")
    if not (run_dir / "run.json").exists():
        raise TunelensError(f"{run_dir}: not a finished training run (no run.json)")
    if out.resolve() == run_dir.resolve():
        raise TunelensError(f"{out}: the export must go to a different folder than the run")
    info = read_object(run_dir / "run.json", RunRecord).model_dump()
    if (run_dir / "adapter_config.json").exists():
        missing = [n for n in ADAPTER_FILES if not (run_dir / n).is_file()]
        if missing:
            raise TunelensError(f"{run_dir}: adapter files missing: {', '.join(missing)}")
    return info


def push_folder(folder: Path, repo: str) -> str:
    """Upload ``folder`` to the hub model repository ``repo`` (created if needed); its URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi()  # token: HF_TOKEN or the login cache, as huggingface_hub finds it
    try:
        api.create_repo(repo, repo_type="model", exist_ok=True)
        commit = api.upload_folder(repo_id=repo, folder_path=str(folder), repo_type="model",
                                   commit_message="tunelens export")
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = first_line(exc)
        raise TunelensError(f"--push {repo}: the upload failed ({first}); the export is in "
                            f"{folder}") from None
    return str(getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo}")


def _merged(run_dir: Path, info: dict, trust_remote_code: bool, quantization):
    """The adapter merged into its base, de-quantized first when it was trained over a 4-bit
    ``quantization`` (None: a plain base), in float32."""
    import torch
    from peft import PeftModel

    from tunelens.models.loading import load_model

    base_id = info.get("base_model")
    if not base_id:
        raise TunelensError(f"{run_dir / 'run.json'}: no 'base_model' to merge the adapter into")
    if quantization is not None:
        base, _ = load_model(base_id, quantization=quantization, trust_remote_code=trust_remote_code)
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
