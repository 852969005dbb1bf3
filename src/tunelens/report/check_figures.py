"""The check sections' figures: faithfulness against random, robustness per probe kind, layer views.

Drawn with matplotlib's object API like :mod:`tunelens.report.figures` (no pyplot state). Each
function returns the PNG's path, or None (and removes an old file) when there is nothing to draw.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from tunelens.explain.check_stages import FAITHFULNESS, LAYERS, PROBES
from tunelens.explain.probes import KINDS, PASS_RATE
from tunelens.report.figures import PALETTE, drop_figure, save_figure
from tunelens.train.catalog import strategy_label

FILES = {FAITHFULNESS: "faithfulness.png", PROBES: "robustness.png", LAYERS: "layers.png"}
RANDOM_COLOUR = "#93a1a1"


def faithfulness(summary: dict[str, dict[str, dict]], path: Path, dpi: int) -> Path | None:
    """Per strategy, a bar per method (comprehensiveness, nats) beside random's mean."""
    if not summary:
        return drop_figure(path)
    methods = sorted({m for table in summary.values() for m in table})
    fig = Figure(figsize=(2.2 + 1.0 * len(methods) * len(summary), 3.4))
    axes = fig.subplots(1, len(summary), squeeze=False, sharey=True)[0]
    for ax, (arm, table) in zip(axes, summary.items(), strict=True):
        names = [m for m in methods if m in table]
        values = [table[m]["comprehensiveness"] or 0.0 for m in names]
        chance = [table[m]["random"] or 0.0 for m in names]
        x = np.arange(len(names))
        ax.bar(x - 0.2, values, 0.4, color=[PALETTE[methods.index(m) % len(PALETTE)] for m in names],
               label="the method's top tokens (label: share of examples beating random)")
        ax.bar(x + 0.2, chance, 0.4, color=RANDOM_COLOUR, label="as many random tokens")
        for xi, m in zip(x, names, strict=True):
            beats = table[m]["beats"]
            if beats is not None:
                ax.annotate(f"{beats:.0%}", (xi - 0.2, table[m]["comprehensiveness"] or 0.0),
                            ha="center", va="bottom", fontsize=7)
        ax.set_xticks(x, names, fontsize=8)
        ax.set_title(strategy_label(arm), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("comprehensiveness (nats)")
    fig.tight_layout()
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, frameon=False, loc="upper center", ncol=2,
               bbox_to_anchor=(0.5, 0.0))
    return save_figure(fig, Path(path), dpi)


def robustness(summary: dict[str, dict[str, dict]], path: Path, dpi: int) -> Path | None:
    """One panel per probe kind: each strategy's rate with its bootstrap interval, and beside it
    (hollow) the share of probes whose rule text changed, which reads even when no rule parses."""
    kinds = [k for k in KINDS if any((t.get(k) or {}).get("probes") for t in summary.values())]
    if not kinds:
        return drop_figure(path)
    arms = list(summary)
    fig = Figure(figsize=(2.4 * len(kinds), 2.8 + 0.1 * len(arms)))
    axes = fig.subplots(1, len(kinds), squeeze=False, sharey=True)[0]
    for ax, kind in zip(axes, kinds, strict=True):
        for i, arm in enumerate(arms):
            row = summary[arm].get(kind) or {}
            colour = PALETTE[i % len(PALETTE)]
            if row.get("changed") is not None:  # hollow: the rule's text moved (parsed or not)
                ax.scatter([i + 0.25], [row["changed"]], marker="D", s=18, facecolors="none",
                           edgecolors=colour)
            if row.get("rate") is None:
                continue
            lo, hi = row["interval"] or (row["rate"], row["rate"])
            ax.errorbar([i], [row["rate"]], yerr=[[row["rate"] - lo], [hi - row["rate"]]], fmt="o",
                        color=colour, capsize=3)
        ax.axhline(PASS_RATE, color="black", linewidth=0.8, linestyle=":")
        ax.set_xticks(range(len(arms)), [strategy_label(a) for a in arms], fontsize=7, rotation=30)
        ax.set_title(f"{kind} ({KINDS[kind]})", fontsize=9)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("share of probes: correct (●, 95% CI)\nrule text changed (◇)", fontsize=8)
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi)


VIEWS = (("weight_change", "‖ΔW‖/‖W‖ per layer"), ("cka", "CKA with the base"),
         ("lens", "lens: tuned − base (nats/token)"))


def _series(data: dict, view: str) -> list[float]:
    if view == "lens":
        return list(np.subtract(data["logit_lens"]["tuned"], data["logit_lens"]["base"]))
    return data[view]


def layers(arms: dict[str, list], path: Path, dpi: int) -> Path | None:
    """Small multiples: a column per strategy, a row per view, a line per model (seeds averaged)."""
    if not arms:
        return drop_figure(path)
    models = sorted({run.model for runs in arms.values() for run, _ in runs},
                    key=lambda m: max(d["layers"] for runs in arms.values() for r, d in runs if r.model == m))
    fig = Figure(figsize=(2.6 * len(arms) + 0.8, 6.6))
    grid = fig.subplots(len(VIEWS), len(arms), squeeze=False, sharey="row")
    for col, (arm, runs) in enumerate(arms.items()):
        for row, (view, title) in enumerate(VIEWS):
            ax = grid[row][col]
            for model in models:
                series = [_series(d, view) for r, d in runs if r.model == model]
                if not series:
                    continue
                y = np.nanmean(np.asarray(series, dtype=np.float64), axis=0)
                x = np.arange(1, len(y) + 1) if view == "weight_change" else np.arange(len(y))
                ax.plot(x, y, marker="o", markersize=3, lw=1.1, label=model,
                        color=PALETTE[models.index(model) % len(PALETTE)])
            if row == 0:
                ax.set_title(strategy_label(arm), fontsize=10)
            if col == 0:
                ax.set_ylabel(title, fontsize=8)
            ax.grid(alpha=0.3)
            ax.tick_params(labelsize=7)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        grid[-1][col].set_xlabel("layer (0: embeddings)", fontsize=8)
    grid[0][-1].legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi)
