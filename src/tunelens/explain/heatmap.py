"""A self-contained HTML token heat-map: one clause per example, tokens coloured by their score.

Captum's ``plot_token_attr`` draws matplotlib figures and Inseq's HTML needs its own runtime; a
reviewer of a study wants one file that opens anywhere, so this is a small jinja2 template. Red
marks features that raise the target's log-probability, blue those that lower it; opacity is the
score relative to the example's largest absolute score, and the exact value is in the title.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib import resources
from pathlib import Path

import jinja2

from tunelens.io import write_text


def _color(score: float, scale: float) -> str:
    alpha = 0.0 if scale <= 0 else min(1.0, abs(score) / scale) * 0.85
    rgb = "220, 40, 40" if score > 0 else "40, 90, 220"
    return f"rgba({rgb}, {alpha:.3f})"


def pieces(text: str, rows: Sequence[dict]) -> list[dict]:
    """``text`` cut into plain gaps and scored features (rows with start, end, score, ...)."""
    scale = max((abs(r["score"]) for r in rows), default=0.0)
    out, pos = [], 0
    for row in sorted(rows, key=lambda r: (r["start"], r["end"])):
        start, end = max(row["start"], pos), row["end"]
        if end <= start:
            continue
        if start > pos:
            out.append({"text": text[pos:start], "score": None})
        out.append({"text": text[start:end], "score": float(row["score"]), "token": row["token"],
                    "category": row.get("category", ""), "color": _color(row["score"], scale)})
        pos = end
    if pos < len(text):
        out.append({"text": text[pos:], "score": None})
    return out


def render_heatmap(examples: Sequence[dict], title: str, method: str, granularity: str,
                   baseline: str) -> str:
    """HTML for examples given as dicts: example_id, clause, target, target_logprob, rows."""
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files("tunelens.explain").joinpath("templates/heatmap.html.j2").read_text("utf-8")
    )
    shown = [{**ex, "pieces": pieces(ex["clause"], ex["rows"])} for ex in examples]
    return template.render(title=title, examples=shown, method=method, granularity=granularity,
                           baseline=baseline)


def write_heatmap(path: str | Path, examples: Sequence[dict], **labels: str) -> Path:
    path = Path(path)
    write_text(path, render_heatmap(examples, **labels))
    return path
