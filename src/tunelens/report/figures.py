"""The report's figures, drawn with matplotlib from the statistics ``compare`` wrote.

Figures are built with the object API (``matplotlib.figure.Figure``) rather than pyplot, so no
global backend or figure registry is touched: the Agg canvas is used implicitly by ``savefig``
and a report can be written from any thread or a server. Each function returns the PNG path, or
None when the study has nothing to draw (one model: no scale curve; no attributions: no
concentration), and the report says why instead of showing an empty axis.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from tunelens.compare.runs import strategy_key
from tunelens.evaluate import specs
from tunelens.explain.heatmap import CATEGORY_COLOURS
from tunelens.io import atomic_path
from tunelens.report.wording import arm_of

PALETTE = ["#268bd2", "#dc322f", "#859900", "#b58900", "#6c71c4", "#2aa198", "#cb4b16", "#d33682"]
# Two size labels closer than this share of the axis (in log units of the sizes' span) would touch
# at the tick font size of a scale panel: the later one is left unlabelled.
MIN_TICK_GAP = 0.16


def save_figure(fig: Figure, path: Path, dpi: int) -> Path:
    """Write ``fig`` as a PNG atomically: a report never links a half-written figure."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def drop_figure(path: Path) -> None:
    """No figure at ``path`` (the data does not support one): a figure from an earlier state of
    the study must not linger beside a report that no longer draws it. Returns None, the
    drawing functions' "no figure"."""
    Path(path).unlink(missing_ok=True)


def _run_index(stats: dict) -> dict[str, dict]:
    return {r["name"]: r for r in stats["runs"]["runs"]}


def concentration(stats: dict, path: Path, dpi: int) -> Path | None:
    """Box and strip plots of the per-example concentration, one box per strategy."""
    per_example = stats["concentration"]["per_example"]
    if not per_example:
        return None
    runs = _run_index(stats)
    strategies = _ordered_unique((arm_of(runs[r]) for r in per_example), key=strategy_key)
    models = _ordered_unique((runs[r]["model"] for r in per_example),
                             key=lambda m: stats["runs"]["sizes"].get(m) or 0)
    metrics = list(stats["concentration"]["metrics"])
    adjusted = stats["concentration"].get("adjusted")
    if adjusted and any(row.get(adjusted) is not None for rows in per_example.values() for row in rows):
        metrics.append(adjusted)  # comparable across feature counts: 1 = as concentrated as noise
    fig = Figure(figsize=(4.2 * len(metrics), 3.6))
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    rng = np.random.default_rng(0)
    for ax, metric in zip(axes, metrics, strict=True):
        data = []
        for s in strategies:
            values = [row[metric] for r, rows in per_example.items() if arm_of(runs[r]) == s
                      for row in rows if row.get(metric) is not None]
            data.append(values)
        ax.boxplot(data, tick_labels=strategies, showfliers=False, widths=0.55,
                   medianprops={"color": "black"})
        for i, s in enumerate(strategies):
            for j, m in enumerate(models):
                values = [row[metric] for r, rows in per_example.items()
                          if arm_of(runs[r]) == s and runs[r]["model"] == m
                          for row in rows if row.get(metric) is not None]
                if values:
                    x = i + 1 + rng.uniform(-0.18, 0.18, len(values))
                    ax.scatter(x, values, s=9, alpha=0.55, color=PALETTE[j % len(PALETTE)])
        label = specs.label(metric)
        if metric == "top_k_share":
            label = f"top-{stats['concentration']['top_k']} share"
        ax.set_title(f"{label} of |score|", fontsize=10)
        if metric == adjusted:
            ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
        ax.grid(axis="y", alpha=0.3)
    if len(models) > 1:
        handles = [Line2D([], [], marker="o", linestyle="", color=PALETTE[j % len(PALETTE)])
                   for j in range(len(models))]
        fig.legend(handles, models, title="model", loc="upper center", ncol=len(models),
                   bbox_to_anchor=(0.5, 1.08), frameon=False, fontsize=8)
    return save_figure(fig, path, dpi)


def categories(stats: dict, path: Path, dpi: int) -> Path | None:
    """Stacked bars of the attribution share per token category: per strategy, then per model."""
    shares = stats["category_shares"]
    if not shares["per_run"]:
        return None
    cats = shares["categories"]
    panels = [("per strategy", shares["per_strategy"]), ("per model (by size)", shares["per_model"])]
    enriched = any(v.get("enrichment") for v in shares["per_model"].values())
    fig = Figure(figsize=(15 if enriched else 10, 3.8))
    axes = fig.subplots(1, 3 if enriched else 2, squeeze=False)[0]
    if enriched:
        _enrichment_panel(axes[2], shares)
    for ax, (title, table) in zip(axes[:2], panels, strict=True):
        labels = [_size_label(k, v.get("params")) if "params" in v else k for k, v in table.items()]
        bottom = np.zeros(len(table))
        for c in cats:
            vals = np.array([v["shares"].get(c) or 0.0 for v in table.values()])
            ax.bar(labels, vals, bottom=bottom, color=CATEGORY_COLOURS.get(c, "#999999"), label=c,
                   width=0.6)
            bottom += vals
        ax.set_ylim(0, 1)
        ax.set_ylabel("share of |attribution|")
        ax.set_title(title, fontsize=10)
        ax.tick_params(axis="x", labelsize=8)
    axes[1].legend(*axes[1].get_legend_handles_labels(), loc="center left", bbox_to_anchor=(1.0, 0.5),
                   frameon=False, fontsize=8)
    if enriched:  # the legend sits between the share panels and the enrichment panel
        fig.subplots_adjust(wspace=0.65)
    return save_figure(fig, path, dpi)


def _enrichment_panel(ax, shares: dict) -> None:
    """Enrichment per category (share of |attribution| ÷ share of features) across models by size:
    1 is "attributed in proportion to how many features the category has"."""
    table = shares["per_model"]
    labels = [_size_label(k, v.get("params")) for k, v in table.items()]
    x = np.arange(len(labels))
    for c in shares["categories"]:
        ys = np.array([v["enrichment"].get(c) for v in table.values()], dtype=float)  # None -> nan
        if np.isfinite(ys).any():
            ax.plot(x, ys, "o-", color=CATEGORY_COLOURS.get(c, "#999999"), label=c, linewidth=1.2)
    ax.axhline(1.0, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, labels)
    ax.set_ylabel("share of |attribution| ÷ share of features", fontsize=8)
    level = "words" if shares.get("feature_level") == "word" else "tokens"
    ax.set_title(f"enrichment per model ({level})", fontsize=10)
    ax.tick_params(axis="x", labelsize=8)
    ax.grid(alpha=0.3)


def scale(stats: dict, metrics: list[str], path: Path, dpi: int) -> Path | None:
    """Metric against parameter count (log x): points with intervals, the fit, the plateau."""
    fig = scale_figure(stats, metrics)
    return None if fig is None else save_figure(fig, path, dpi)


def scale_figure(stats: dict, metrics: list[str]) -> Figure | None:
    curves = stats["scale"]["curves"]
    available = _ordered_unique(c["metric"] for c in curves)
    chosen = [m for m in metrics if m in available] or available[:3]
    if not chosen:
        return None
    fig = Figure(figsize=(4.4 * len(chosen), 3.6))
    axes = fig.subplots(1, len(chosen), squeeze=False)[0]
    for ax, metric in zip(axes, chosen, strict=True):
        mine = [c for c in curves if c["metric"] == metric]
        for i, c in enumerate(mine):
            _scale_curve(ax, c, PALETTE[i % len(PALETTE)])
        ax.set_xscale("log")
        _size_ticks(ax, [p["params"] for c in mine for p in c["points"]])
        ax.set_xlabel("parameters")
        level = " (corpus)" if any(c.get("level") == "corpus" for c in mine) else ""
        ax.set_title(specs.label(metric) + level, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, frameon=False)
    return fig


def _scale_curve(ax, c: dict, colour: str) -> None:
    xs = np.array([p["params"] for p in c["points"]])
    ys = np.array([p["value"] for p in c["points"]])
    lo = np.array([p["lo"] if p["lo"] is not None else p["value"] for p in c["points"]])
    hi = np.array([p["hi"] if p["hi"] is not None else p["value"] for p in c["points"]])
    # a plateau is marked only where its test passed (a rise, then flat); "did not learn" goes into
    # the legend (annotations of curves that coincide, as untrained ones do, would overlap)
    verdict = c.get("verdict", "plateau" if c["plateau"]["size"] is not None else None)
    label = arm_of(c) + ("" if c["objective"] == "instruct" else f" · {c['objective']}") + (
        " · rag" if c["rag"] else "") + (" (did not learn)" if verdict == "did not learn" else "")
    ax.errorbar(xs, ys, yerr=[ys - lo, hi - ys], fmt="o", color=colour, capsize=3, label=label)
    if c["fit"]:
        grid = np.logspace(np.log10(xs.min()), np.log10(xs.max()), 50)
        ax.plot(grid, c["fit"]["intercept"] + c["fit"]["slope"] * np.log10(grid), "--",
                color=colour, alpha=0.8)
    if verdict == "plateau" and c["plateau"]["size"] is not None:
        ax.axvline(c["plateau"]["size"], color=colour, linestyle=":", alpha=0.9)
        ax.annotate("plateau", (c["plateau"]["size"], ax.get_ylim()[1]), color=colour,
                    fontsize=7, rotation=90, va="top", ha="right")


def _size_ticks(ax, sizes: list[float]) -> None:
    """Label the log x axis at the model sizes themselves, and nowhere else.

    matplotlib's log locator labels minor ticks (2×10⁵, 3×10⁵, ...) when the axis spans less than
    a decade, and those labels run into each other; a study's sizes are what a reader wants to
    read anyway. Sizes too close to the previous labelled one stay unlabelled (their points and
    minor ticks still show).
    """
    sizes = sorted({float(s) for s in sizes if s and s > 0})
    if not sizes:
        return
    logs = np.log10(sizes)
    span = max(logs[-1] - logs[0], 1e-9)
    kept = [sizes[0]]
    for size, log in zip(sizes[1:], logs[1:], strict=True):
        if (log - np.log10(kept[-1])) / span >= MIN_TICK_GAP:
            kept.append(size)
    ax.xaxis.set_major_locator(FixedLocator(kept))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _pos: human_count(x)))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.tick_params(axis="x", which="major", labelsize=8)


def agreement(stats: dict, path: Path, dpi: int) -> Path | None:
    """Runs × runs heat-map of the mean per-example Spearman correlation of attributions."""
    matrix = stats["agreement"]["matrix"]
    runs = matrix["runs"]
    if len(runs) < 2:
        return None
    m = np.array([[np.nan if v is None else v for v in row] for row in matrix["spearman"]], dtype=float)
    side = max(4.0, 0.55 * len(runs) + 2.5)
    fig = Figure(figsize=(side + 1.2, side))
    ax = fig.subplots()
    im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(runs)), runs, rotation=60, ha="right", fontsize=7)
    ax.set_yticks(range(len(runs)), runs, fontsize=7)
    if len(runs) <= 14:
        for i in range(len(runs)):
            for j in range(len(runs)):
                if np.isfinite(m[i, j]):
                    ax.text(j, i, f"{m[i, j]:.2f}", ha="center", va="center", fontsize=6,
                            color="white" if abs(m[i, j]) > 0.6 else "black")
    fig.colorbar(im, ax=ax, label="mean Spearman ρ", shrink=0.8)
    return save_figure(fig, path, dpi)


def training(stats: dict, path: Path, dpi: int) -> Path | None:
    """Training loss per logging step, one line per trained cell (its primary seed)."""
    primary = set(stats["runs"].get("primary", []))
    runs = [r for r in stats["runs"]["runs"]
            if r.get("train_loss") and r["name"] in primary and not r["rag"]]
    if not runs:
        return None
    fig = Figure(figsize=(7, 3.4))
    ax = fig.subplots()
    for i, r in enumerate(runs):
        ax.plot([p["step"] for p in r["train_loss"]], [p["loss"] for p in r["train_loss"]],
                color=PALETTE[i % len(PALETTE)], label=r["name"], linewidth=1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return save_figure(fig, path, dpi)


def _size_label(model: str, params: float | None) -> str:
    return model if not params else f"{model}\n{human_count(params)}"


def human_count(n: float | None) -> str:
    if n is None:
        return "–"
    for unit, div in (("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:.0f}"


def _ordered_unique(items, key=None) -> list:
    seen: list = []
    for x in items:
        if x not in seen:
            seen.append(x)
    if key is not None:
        seen.sort(key=key)
    return seen
