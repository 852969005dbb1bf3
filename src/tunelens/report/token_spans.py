"""Token heat-maps in the report: the same clause under each run, one row per run, and with
``explanation.target: both`` the clause explained on the reference and on the run's own
generation side by side (with the text each one scored), so the two can be read together.

Which examples and runs are shown is decided here; how a row looks is :mod:`tunelens.explain.heatmap`'s
(the renderer the explain verb's heat-map file uses too), so a token reads the same in both.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from tunelens.explain.heatmap import fragment, segments


def choose_examples(frames: dict[str, pd.DataFrame], n: int) -> list[str]:
    """The ``n`` examples explained by the most runs (ties by id), so rows line up."""
    counts = Counter(ex for f in frames.values() for ex in f["example_id"].unique())
    return [ex for ex, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def read_texts(path: Path | None) -> dict[str, dict[str, str | None]]:
    """Example id -> its ``prompt``, ``reference`` and ``generation`` (the prediction) texts."""
    if path is None:
        return {}
    from tunelens.io import read_jsonl

    def text(row: dict, key: str) -> str | None:
        return None if row.get(key) is None else str(row[key])

    return {str(r["id"]): {"prompt": text(r, "prompt"), "reference": text(r, "reference"),
                           "generation": text(r, "prediction")} for r in read_jsonl(path) if "id" in r}


def heatmaps(runs: list[dict], frames: dict[str, pd.DataFrame], prompts: dict[str, dict[str, str]],
             n_examples: int, max_runs: int) -> list[dict]:
    """``[{"id", "rows": [{"run", "html", "note"} ...]} ...]`` for the chosen examples."""
    names = [r["name"] for r in runs if r["name"] in frames][:max_runs]
    chosen = choose_examples({n: frames[n] for n in names}, n_examples)
    return [{"id": ex, "rows": [_row(name, frames[name], prompts.get(name, {}).get(ex), ex)
                                for name in names]} for ex in chosen]


def _row(name: str, frame: pd.DataFrame, prompt: str | None, example: str) -> dict:
    sub = frame[frame["example_id"] == example].sort_values("position")
    if sub.empty:
        return {"run": name, "html": "", "note": "not explained"}
    return {"run": name, "html": fragment(segments(prompt, sub.to_dict(orient="records"))), "note": None}


def side_by_side(runs: list[dict], frames: dict[str, dict[str, pd.DataFrame]],
                 texts: dict[str, dict[str, dict]], n_examples: int, max_runs: int) -> list[dict]:
    """``[{"id", "rows": [{"run", "cells": [{"target", "html", "note", "text"}, ...]}]}]``:
    ``frames[target][run]``, one cell per target in the order given (``text``: what that target
    scored, the reference rule or the run's generation). Examples are those most runs explained
    under the first target, the same for every target."""
    order = list(frames)
    names = [r["name"] for r in runs if r["name"] in frames[order[0]]][:max_runs]
    chosen = choose_examples({n: frames[order[0]][n] for n in names}, n_examples)
    out = []
    for ex in chosen:
        rows = []
        for name in names:
            known = texts.get(name, {}).get(ex, {})
            cells = [{**_row(name, frames[t][name], known.get("prompt"), ex), "target": t,
                      "text": known.get(t)} for t in order]
            rows.append({"run": name, "cells": cells})
        out.append({"id": ex, "rows": rows})
    return out
