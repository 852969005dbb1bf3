"""Token heat-maps in the report: the same clause under each run, one row per run.

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


def read_prompts(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    from tunelens.io import read_jsonl

    return {str(r["id"]): str(r["prompt"]) for r in read_jsonl(path) if "id" in r and "prompt" in r}


def heatmaps(runs: list[dict], frames: dict[str, pd.DataFrame], prompts: dict[str, dict[str, str]],
             n_examples: int, max_runs: int) -> list[dict]:
    """``[{"id", "rows": [{"run", "html", "note"} ...]} ...]`` for the chosen examples."""
    names = [r["name"] for r in runs if r["name"] in frames][:max_runs]
    chosen = choose_examples({n: frames[n] for n in names}, n_examples)
    out = []
    for ex in chosen:
        rows = []
        for name in names:
            f = frames[name]
            sub = f[f["example_id"] == ex].sort_values("position")
            if sub.empty:
                rows.append({"run": name, "html": "", "note": "not explained"})
                continue
            parts = segments(prompts.get(name, {}).get(ex), sub.to_dict(orient="records"))
            rows.append({"run": name, "html": fragment(parts), "note": None})
        out.append({"id": ex, "rows": rows})
    return out
