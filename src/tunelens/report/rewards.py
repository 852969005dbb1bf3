"""The reward section: how each GRPO run's rewards moved over its steps.

A ``grpo`` run records, per step, the weighted reward and each reward's mean
(``run.json["rewards"]``, :mod:`tunelens.train.grpo`); this module reads those records from the
study's ``models/`` folder, draws one panel per quantity with a line per run, and tables where
each run started and ended. Start and end are the means over the first and last fifth of the
steps (at least one step): a single sampled step is noisy, groups being a few prompts each.
Nothing here is a test: whether GRPO beat its supervised start is for the metrics and the
paired tests of the rest of the report, on the test split.
"""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from tunelens.format import number
from tunelens.io import read_json
from tunelens.layout import StudyLayout
from tunelens.report.figures import PALETTE, drop_figure, save_figure

FIGURE = "rewards.png"
PANELS = (("reward", "weighted reward"), ("parses", "parses"), ("fields", "fields match"),
          ("verdicts", "verdicts agree"), ("exact", "all designs agree"), ("length", "length penalty"),
          ("kl", "KL to the start"))
COLUMNS = PANELS[:-1]  # the table's: the rewards (the KL is in the figure only)


def curves(layout: StudyLayout) -> dict[str, list[dict]]:
    """{run name: per-step rows} of every finished run under ``models/`` that recorded rewards."""
    found = {}
    folders = sorted(layout.models.iterdir()) if layout.models.is_dir() else []
    for folder in folders:
        record = folder / "run.json"
        if folder.name.startswith(".") or not record.is_file():
            continue
        info = read_json(record)
        rows = info.get("rewards") if isinstance(info, dict) else None
        if isinstance(rows, list) and rows:
            name = (info.get("identity") or {}).get("name") or folder.name
            found[name] = rows
    return found


def draw(runs: dict[str, list[dict]], path: Path, dpi: int) -> Path | None:
    """One panel per quantity, one line per run; None (and no file) without any run."""
    if not runs:
        return drop_figure(path)
    fig = Figure(figsize=(12, 5.6))
    grid = fig.subplots(2, 4).ravel()
    axes = grid[:len(PANELS)]
    for ax in grid[len(PANELS):]:
        ax.set_axis_off()
    for ax, (key, title) in zip(axes, PANELS, strict=True):
        for i, (name, rows) in enumerate(runs.items()):
            points = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), int | float)]
            if points:
                ax.plot(*zip(*points, strict=True), color=PALETTE[i % len(PALETTE)], lw=1.1, label=name)
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in axes[4:]:
        ax.set_xlabel("GRPO step")
    axes[3].legend(fontsize=6, frameon=False, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return save_figure(fig, Path(path), dpi)


def _ends(rows: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [r[key] for r in rows if isinstance(r.get(key), int | float)]
    if not values:
        return None, None
    k = max(1, len(values) // 5)
    return sum(values[:k]) / k, sum(values[-k:]) / k


def table(runs: dict[str, list[dict]]) -> list[dict]:
    """Per run: its steps, and each quantity's start and end (formatted)."""
    out = []
    for name, rows in runs.items():
        cells = []
        for key, _ in COLUMNS:
            first, last = _ends(rows, key)
            cells.append(f"{number(first)} → {number(last)}")
        out.append({"name": name, "steps": len(rows), "cells": cells})
    return out


def section(layout: StudyLayout, dpi: int) -> dict | None:
    """The report's reward section (None when the study has no GRPO run)."""
    from tunelens.report.html import data_uri

    runs = curves(layout)
    path = draw(runs, layout.figures / FIGURE, dpi)
    if path is None:
        return None
    return {"columns": [title for _, title in COLUMNS], "rows": table(runs), "figure": data_uri(path)}
