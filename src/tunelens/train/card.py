"""The model card (README.md) of an exported run: what it is, how it scored, what it looks at.

The YAML header is huggingface_hub's :class:`~huggingface_hub.ModelCardData` (base model,
library, tags, and the scores as a ``model-index``), so the hub and its tools read it; the body
says how the run was trained, its metrics with their bootstrap intervals, and a summary of its
token attributions with a heat-map image. Metrics and attributions are read from the study the
run belongs to (through the contracts, by the run's recorded identity) or from files given
explicitly; a run without them gets a card without those sections.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.contracts import MetricsFile, read_object
from tunelens.format import interval, number, share

HEATMAP = "attribution_heatmap.png"
HEATMAP_EXAMPLES = 3


def study_files(run_dir: Path, info: dict) -> tuple[Path | None, Path | None]:
    """(metrics, attributions) of the run in its study folder, each None where absent."""
    from tunelens.layout import RunIdentity, StudyLayout

    root = run_dir.parent.parent
    if run_dir.parent.name != "models" or not (root / "study.yaml").is_file():
        return None, None
    layout = StudyLayout(root)
    identity = info.get("identity")
    name = RunIdentity.from_dict(identity).name if isinstance(identity, dict) else run_dir.name
    metrics, attributions = layout.metrics_dir / f"{name}.json", layout.attributions_dir / f"{name}.parquet"
    return (metrics if metrics.is_file() else None), (attributions if attributions.is_file() else None)


def write_card(folder: Path, run_dir: Path, info: dict, merged: bool, metrics: Path | None = None,
               attributions: Path | None = None) -> Path:
    """README.md (and the heat-map image) in ``folder``; returns the card's path."""
    from huggingface_hub import ModelCard

    scores = read_object(metrics, MetricsFile) if metrics is not None else None
    frame = _attributions(attributions)
    image = _heatmap(frame, folder / HEATMAP) if frame is not None else None
    adapter = not merged and (folder / "adapter_config.json").is_file()
    header = _metadata(run_dir.name, info, scores, adapter).to_yaml()
    body = "\n\n".join(part for part in (
        _about(run_dir, info, adapter), _training(info), _metrics(scores, metrics),
        _attribution(frame, image), _loading(adapter)) if part)
    card = ModelCard(f"---\n{header}\n---\n\n{body}\n")
    card.save(folder / "README.md")
    return folder / "README.md"


def _metadata(name: str, info: dict, scores: MetricsFile | None, adapter: bool):
    """The YAML header; the base model only when it is a hub id (a local path means nothing there)."""
    from huggingface_hub import EvalResult, ModelCardData

    from tunelens.evaluate.specs import label

    base = str(info.get("base_model") or "")
    hub_id = base if base.count("/") == 1 and not Path(base).exists() else None
    results = [EvalResult(task_type="text-generation", dataset_type="tunelens-compliance",
                          dataset_name="test split", metric_type=metric, metric_name=label(metric),
                          metric_value=value)
               for metric, value in (scores.aggregate.items() if scores else []) if value is not None]
    return ModelCardData(
        model_name=name, library_name="peft" if adapter else "transformers", base_model=hub_id,
        pipeline_tag="text-generation", eval_results=results or None,
        tags=["tunelens", str(info.get("strategy")), str(info.get("objective")), "code-compliance"])


def _about(run_dir: Path, info: dict, adapter: bool) -> str:
    what = "a PEFT adapter (load it over its base)" if adapter else "a standalone checkpoint"
    return (f"# {run_dir.name}\n\n{info.get('base_model')} fine-tuned by tunelens with the "
            f"`{info.get('strategy')}` strategy and the `{info.get('objective')}` objective, "
            f"exported as {what}. It translates building-code clauses into rules.")


def _training(info: dict) -> str:
    data = info.get("data") or {}
    rows = [("base model", info.get("base_model")), ("strategy / objective",
            f"{info.get('strategy')} / {info.get('objective')}"),
            ("trainable / total parameters",
             f"{info.get('trainable_params', 0):,} / {info.get('total_params', 0):,}"),
            ("validation loss before -> after",
             f"{number(info.get('val_loss_before'), 4)} -> {number(info.get('val_loss_after'), 4)}"),
            ("training data", f"{data.get('train_rows', '?')} train / {data.get('val_rows', '?')} "
             f"validation rows, fingerprint `{data.get('fingerprint', '?')}`"),
            ("wall time", f"{number(info.get('wall_seconds'), 1)} s")]
    return "## Training\n\n" + _table(("", ""), rows)


def _metrics(scores: MetricsFile | None, path: Path | None) -> str | None:
    if scores is None:
        return None
    from tunelens.evaluate.specs import digits, label, ordered

    rows = []
    for name in ordered(k for k, v in scores.aggregate.items() if v is not None):
        lo, hi = (scores.intervals.get(name) or [None, None])
        rows.append((label(name), interval(scores.aggregate[name], lo, hi, digits(name))))
    level = scores.info.get("confidence")
    level = f"{share(level)} " if isinstance(level, float) else ""
    return (f"## Evaluation\n\nOn {len(scores.per_example)} test examples (`{path.name}`); "
            f"brackets are {level}bootstrap intervals over examples.\n\n"
            + _table(("metric", "score"), rows))


def _attributions(path: Path | None):
    if path is None:
        return None
    import pandas as pd

    frame = pd.read_parquet(path)
    return frame if len(frame) else None


def _attribution(frame, image: Path | None) -> str | None:
    if frame is None:
        return None
    frame = frame.assign(weight=frame["score"].abs())
    per_example = frame.groupby(["example_id", "target", "category"])["weight"].sum()
    shares = (per_example / per_example.groupby(level=[0, 1]).transform("sum")).groupby(
        level="category").mean().sort_values(ascending=False)
    top = frame.groupby("token")["weight"].mean().sort_values(ascending=False).head(8)
    method = ", ".join(sorted(frame["method"].astype(str).unique()))
    examples = frame["example_id"].nunique()
    text = (f"## What the model looks at\n\nToken attributions ({method}) on {examples} test "
            "examples: the share of each category of clause text in the total absolute "
            "attribution, averaged over examples.\n\n"
            + _table(("category", "share"), [(c, share(v)) for c, v in shares.items()])
            + "\n\nTokens with the largest mean absolute attribution: "
            + ", ".join(f"`{t.strip() or repr(t)}`" for t in top.index) + ".")
    if image is not None:
        shown = min(examples, HEATMAP_EXAMPLES)
        text += f"\n\n![token attributions of {shown} examples, red for, blue against]({image.name})"
    return text


def _heatmap(frame, path: Path) -> Path:
    """Scores of the first examples' tokens, red for support of the target, blue against."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    first = list(dict.fromkeys(frame["example_id"]))[:HEATMAP_EXAMPLES]
    fig, axes = plt.subplots(len(first), 1, figsize=(10, 1.6 * len(first)), squeeze=False)
    for ax, example in zip(axes[:, 0], first, strict=True):
        rows = frame[frame["example_id"] == example]
        rows = rows[rows["target"] == rows["target"].iloc[0]].sort_values("position")
        scores = rows["score"].to_numpy()
        peak = float(np.abs(scores).max()) or 1.0
        ax.imshow(scores[None, :], cmap="RdBu_r", vmin=-peak, vmax=peak, aspect="auto")
        ax.set_xticks(range(len(rows)), [t.strip() or "·" for t in rows["token"]], rotation=90,
                      fontsize=7)
        ax.set_yticks([])
        ax.set_title(f"example {example} ({rows['target'].iloc[0]})", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _loading(adapter: bool) -> str:
    if adapter:
        code = ("from peft import AutoPeftModelForCausalLM\nfrom transformers import AutoTokenizer\n"
                "model = AutoPeftModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n")
    else:
        code = ("from transformers import AutoModelForCausalLM, AutoTokenizer\n"
                "model = AutoModelForCausalLM.from_pretrained(\"path/to/this/folder\")\n")
    code += "tokenizer = AutoTokenizer.from_pretrained(\"path/to/this/folder\")\n"
    return f"## Loading\n\n```python\n{code}```\n\nOr serve it: `tunelens serve path/to/this/folder`."


def _table(columns: tuple[str, str], rows) -> str:
    lines = [f"| {columns[0]} | {columns[1]} |", "|---|---|"]
    lines += [f"| {a} | {b} |" for a, b in rows]
    return "\n".join(lines)
