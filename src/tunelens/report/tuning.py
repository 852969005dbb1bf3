"""The tuning section: figures of a ``tunelens tune`` folder, and the report's view of them.

``tunelens tune`` draws the figures into ``<tune out>/figures`` from its ``tuning.json``; a study
run from the ``best.yaml`` it wrote records ``tune.tuned_from``, and the study's report shows
that folder's figures and a table of the best settings per strategy. Our own matplotlib rather
than ``optuna.visualization.matplotlib``: its plots take one Optuna study each, and the point
here is the strategies side by side (each in its own panel, on one figure), with the baseline
trial (the study's own settings) marked.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tunelens.format import DASH, number
from tunelens.io import read_json
from tunelens.report.figures import drop_figure, save_figure
from tunelens.train.catalog import strategy_label

FIGURES = {"history": "tuning_history.png", "curves": "tuning_curves.png",
           "importance": "tuning_importance.png"}
SUMMARY = "tuning.json"
FINISHED, PRUNED = "#268bd2", "#dc322f"


def draw(summary: dict, folder: Path, dpi: int) -> dict[str, Path]:
    """Every figure the summary supports, written into ``folder``; {name: path}."""
    strategies = summary["strategies"]
    paths = {}
    for name, fn in (("history", _history), ("curves", _curves), ("importance", _importance)):
        fig = fn(strategies)
        path = Path(folder) / FIGURES[name]
        if fig is None:
            drop_figure(path)
            continue
        paths[name] = save_figure(fig, path, dpi)
    return paths


def _panels(n: int, height: float = 3.0):
    fig = Figure(figsize=(4.2 * n, height))
    return fig, fig.subplots(1, n, squeeze=False)[0]


def _history(strategies: dict) -> Figure | None:
    """Validation loss per trial (pruned trials at their last report), the best so far, and the
    study's own settings as a dashed line."""
    if not any(s["trials"] for s in strategies.values()):
        return None
    fig, axes = _panels(len(strategies))
    for ax, (strategy, s) in zip(axes, strategies.items(), strict=True):
        done = [(t["number"], t["value"]) for t in s["trials"] if t["state"] == "COMPLETE" and t["value"]]
        cut = [(t["number"], t["intermediate"][-1][1]) for t in s["trials"]
               if t["state"] == "PRUNED" and t["intermediate"]]
        if done:
            ax.scatter(*zip(*done, strict=True), color=FINISHED, s=18, label="finished", zorder=3)
            best, running = [], float("inf")
            for _, v in done:
                running = min(running, v)
                best.append(running)
            ax.step([n for n, _ in done], best, where="post", color=FINISHED, lw=1, label="best so far")
        if cut:
            ax.scatter(*zip(*cut, strict=True), color=PRUNED, marker="x", s=22, label="pruned", zorder=3)
        if s["baseline"]:
            ax.axhline(s["baseline"]["value"], color="grey", ls="--", lw=1, label="study's settings")
        ax.set_title(strategy_label(strategy), fontsize=10)
        ax.set_xlabel("trial")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=7)
    axes[0].set_ylabel("validation loss")
    return fig


def _curves(strategies: dict) -> Figure | None:
    """Validation loss at each evaluation of every trial: what the pruner compared."""
    if not any(t["intermediate"] for s in strategies.values() for t in s["trials"]):
        return None
    fig, axes = _panels(len(strategies))
    for ax, (strategy, s) in zip(axes, strategies.items(), strict=True):
        for t in s["trials"]:
            if t["intermediate"]:
                pruned = t["state"] == "PRUNED"
                ax.plot(*zip(*t["intermediate"], strict=True), color=PRUNED if pruned else FINISHED,
                        ls="--" if pruned else "-", lw=1, alpha=0.8, marker=".")
        ax.set_title(strategy_label(strategy), fontsize=10)
        ax.set_xlabel("step")
    axes[0].set_ylabel("validation loss (red, dashed: pruned)")
    return fig


def _importance(strategies: dict) -> Figure | None:
    """fANOVA importance of each searched parameter (Optuna's), per strategy."""
    shown = {k: s["importance"] for k, s in strategies.items() if s.get("importance")}
    if not shown:
        return None
    fig, axes = _panels(len(shown), height=2.6)
    for ax, (strategy, imp) in zip(axes, shown.items(), strict=True):
        names = list(imp)[::-1]
        ax.barh(names, [imp[n] for n in names], color=FINISHED)
        ax.set_xlim(0, 1)
        ax.set_title(strategy_label(strategy), fontsize=10)
        ax.set_xlabel("share of variance")
    return fig


def section(study_yaml: Path) -> dict | None:
    """The report's tuning section for the study whose resolved settings are ``study_yaml``:
    None unless it records ``tune.tuned_from`` and that folder holds a ``tuning.json``."""
    from tunelens.config import load_study
    from tunelens.report.html import data_uri

    if not Path(study_yaml).exists():
        return None
    source = load_study(study_yaml).tune.tuned_from
    if not source or not (Path(source) / SUMMARY).exists():
        return None
    summary = read_json(Path(source) / SUMMARY)
    folder = Path(source) / "figures"
    return {"source": source, "model": summary["model"], "objective": summary["objective"],
            "rows": [strategy_row(k, s) for k, s in summary["strategies"].items()],
            "figures": {k: data_uri(folder / f) for k, f in FIGURES.items() if (folder / f).exists()}}


def strategy_row(strategy: str, s: dict) -> dict:
    best, base = s["best"], s["baseline"]
    gain = None if not (best and base) else base["value"] - best["value"]
    return {"strategy": strategy_label(strategy), "finished": s["counts"]["complete"],
            "pruned": s["counts"]["pruned"], "failed": s["counts"]["fail"],
            "baseline": number(base["value"], 4) if base else DASH,
            "best": number(best["value"], 4) if best else DASH,
            "gain": number(gain, 4) if gain is not None else DASH,
            "params": settings_text(best["params"]) if best else DASH}


def settings_text(params: dict) -> str:
    """``learning_rate 0.00123, lora_rank 16``: three significant digits, since a learning rate
    at :func:`tunelens.format.number`'s fixed decimals would read 0.000."""
    return ", ".join(f"{k} {v}" if isinstance(v, int) else f"{k} {v:.3g}" for k, v in params.items())
