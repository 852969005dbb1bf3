"""Strategy ``none``: a run that trains nothing, so "prompting only" is a cell like any other.

A study compares prompting a base model against fine-tuning it with the same statistics; for that
the untrained cell needs what every trained cell has: a run folder whose ``run.json`` says who it
is, how the model is prompted (format, instruction, few-shot examples) and which base to load.
The folder holds no weights: :func:`tunelens.models.loading.load_for_inference` loads the base
that ``run.json`` names, in the dtype it records. Parameters are counted on the meta device (no
weights read), and nothing is trained, so the loss fields are empty.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.contracts import RunRecord
from tunelens.io import atomic_dir, write_json
from tunelens.layout import RunIdentity
from tunelens.models.run_settings import ModelSettings

# the run.json key a folder without weights is known by (models.loading.prompt_only_base)
UNTRAINED_MARK = "prompt_only"


def write_prompt_only(model: str, data_dir: Path, out: Path, objective: str, settings: ModelSettings,
                      identity: dict | None = None) -> dict:
    """Write ``out`` (atomically) as an untrained run of ``model``; return its run.json."""
    from transformers import AutoConfig

    from tunelens.memory import Shape
    from tunelens.models import references
    from tunelens.models.loading import load_tokenizer
    from tunelens.train.objectives import check_objective

    check_objective(objective)
    local = Path(model).expanduser().exists()
    base = str(Path(model).expanduser().resolve()) if local else model
    tokenizer = load_tokenizer(base, settings.trust_remote_code)
    folder = references.resolve(base) or base  # a .gguf file or short name: its converted folder
    config = AutoConfig.from_pretrained(folder, trust_remote_code=settings.trust_remote_code)
    total = Shape.of(config).params
    who = identity or RunIdentity(Path(base).name if local else base, "none", objective).to_dict()
    info = {
        "identity": who, "strategy": "none", "objective": objective, "base_model": base,
        UNTRAINED_MARK: True, **settings.record(tokenizer), "adapter": False,
        "trainable_params": 0, "total_params": int(total), "train_loss": [], "val_loss": [],
        "val_loss_before": None, "val_loss_after": None, "global_step": 0, "wall_seconds": 0.0,
        "tokens_per_second": None, "peak_rss_mb": None,
        "data": {"dir": str(Path(data_dir).resolve())},
    }
    RunRecord.model_validate(info)  # the contract every reader of run.json relies on
    with atomic_dir(out) as tmp:
        write_json(tmp / "run.json", info)
    return info

