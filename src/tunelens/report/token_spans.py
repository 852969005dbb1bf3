"""Token heat-maps: the same clause under each run, every feature a coloured span.

Red pushes the target up, blue pushes it down; the strength is |score| over the largest |score|
of that run on that example, so each row uses its full colour range (rows are compared by
*where* the colour sits, not by absolute size, which differs between models). The underline
colour is the token's category. When the prediction file gives the prompt and the spans fit it,
the clause is shown with its own spacing; otherwise the token texts are shown one after another.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from tunelens.report.figures import CATEGORY_COLOURS


def choose_examples(frames: dict[str, pd.DataFrame], n: int) -> list[str]:
    """The ``n`` examples explained by the most runs (ties by id), so rows line up."""
    counts = Counter(ex for f in frames.values() for ex in f["example_id"].unique())
    return [ex for ex, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


def read_prompts(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    from tunelens.io import read_jsonl

    return {str(r["id"]): str(r["prompt"]) for r in read_jsonl(path) if "id" in r and "prompt" in r}


def segments(rows: pd.DataFrame, prompt: str | None) -> list[dict]:
    """The example's features as display segments (``text``, ``style``, ``title``); gaps are unstyled."""
    rows = rows.sort_values("position")
    scores = rows["score"].to_numpy(float)
    peak = np.nanmax(np.abs(scores)) if scores.size and np.isfinite(scores).any() else 0.0
    feats = []
    for r, s in zip(rows.itertuples(index=False), scores, strict=True):
        token = "" if r.token is None or (isinstance(r.token, float) and np.isnan(r.token)) else str(r.token)
        feats.append((r.start, r.end, token, s, str(r.category)))
    use_prompt = prompt is not None and _spans_fit(feats, prompt)
    out, cursor = [], 0
    for start, end, token, score, cat in feats:
        if use_prompt:
            start, end = int(start), int(end)
            if start > cursor:
                out.append({"text": prompt[cursor:start], "style": None, "title": None})
            text = prompt[start:end]
            cursor = end
        else:
            text = token
        strength = 0.0 if not peak or not np.isfinite(score) else min(1.0, abs(score) / peak)
        rgb = "220,50,47" if score >= 0 else "38,139,210"
        style = (f"background: rgba({rgb},{0.08 + 0.82 * strength:.2f}); "
                 f"border-bottom: 3px solid {CATEGORY_COLOURS.get(cat, '#999999')}")
        out.append({"text": text, "style": style, "title": f"{token!r} · {cat} · score {score:+.4f}"})
    if use_prompt and cursor < len(prompt):
        out.append({"text": prompt[cursor:], "style": None, "title": None})
    return out


def heatmaps(runs: list[dict], frames: dict[str, pd.DataFrame], prompts: dict[str, dict[str, str]],
             n_examples: int, max_runs: int) -> list[dict]:
    """``[{"id", "rows": [{"run", "segments"} ...]} ...]`` for the chosen examples."""
    names = [r["name"] for r in runs if r["name"] in frames][:max_runs]
    chosen = choose_examples({n: frames[n] for n in names}, n_examples)
    out = []
    for ex in chosen:
        rows = []
        for name in names:
            f = frames[name]
            sub = f[f["example_id"] == ex]
            if sub.empty:
                rows.append({"run": name, "segments": [], "note": "not explained"})
                continue
            rows.append({"run": name, "segments": segments(sub, prompts.get(name, {}).get(ex)), "note": None})
        out.append({"id": ex, "rows": rows})
    return out


def _spans_fit(feats: list, prompt: str) -> bool:
    cursor = 0
    for start, end, token, _, _ in feats:
        if start is None or end is None or (isinstance(start, float) and np.isnan(start)):
            return False
        start, end = int(start), int(end)
        if start < cursor or end < start or end > len(prompt):
            return False
        want, have = token.strip(" Ġ▁\t\n"), prompt[start:end].strip()
        if want and have and want != have:
            return False
        cursor = end
    return True
