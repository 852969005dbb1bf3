"""Token heat-maps: the one renderer of attributions as coloured text, for the explain verb and the report.

Captum's ``plot_token_attr`` draws matplotlib figures and Inseq's HTML needs its own runtime; a
reviewer of a study wants one file that opens anywhere, so this is a small HTML fragment builder
and a jinja2 template. Both the explain verb's ``<out>.html`` and the report's heat-map section
use :func:`segments` and :func:`fragment`, so a token looks the same in both: red raises the
target's log-probability, blue lowers it; the strength is |score| over the largest |score| of
the example (each row uses its full colour range: rows are compared by *where* the colour sits,
not by absolute size, which differs between models); the underline colour is the token's
category; the exact value is in the title. When the clause is given and the features' spans fit
it, the clause is shown with its own spacing; otherwise the token texts are shown one after another.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

from tunelens.format import number
from tunelens.io import write_text

RAISES, LOWERS = "220, 50, 47", "38, 139, 210"  # rgb of a feature that raises / lowers p(target)
CATEGORY_COLOURS = {"RULE_ID": "#6c71c4", "NUMBER": "#dc322f", "UNIT": "#cb4b16",
                    "COMPARATOR": "#b58900", "MODAL": "#859900", "CONDITION": "#2aa198",
                    "OTHER": "#93a1a1"}
_MARKERS = " Ġ▁\t\n"  # tokenizer word markers, ignored when checking a token against its span


def colour(score: float, peak: float) -> str:
    """The background of a feature: its sign's colour, opacity by |score| / ``peak``."""
    strength = 0.0 if not peak or not math.isfinite(score) else min(1.0, abs(score) / peak)
    return f"rgba({RAISES if score >= 0 else LOWERS}, {0.08 + 0.82 * strength:.2f})"


def segments(text: str | None, features: Iterable[dict]) -> list[dict]:
    """An example's features as display segments (``text``, ``style``, ``title``; gaps unstyled).

    ``features`` are dicts with ``start``, ``end`` (character span in ``text``), ``token``,
    ``score`` and ``category``, in position order.
    """
    feats = [_feature(f) for f in features]
    finite = [abs(f["score"]) for f in feats if math.isfinite(f["score"])]
    peak = max(finite, default=0.0)
    use_text = text is not None and _spans_fit(feats, text)
    out, cursor = [], 0
    for f in feats:
        shown = f["token"]
        if use_text:
            if f["start"] > cursor:
                out.append({"text": text[cursor:f["start"]], "style": None, "title": None})
            shown, cursor = text[f["start"]:f["end"]], f["end"]
        style = (f"background: {colour(f['score'], peak)}; "
                 f"border-bottom: 3px solid {CATEGORY_COLOURS.get(f['category'], '#999999')}")
        out.append({"text": shown, "style": style,
                    "title": f"{f['token']!r} · {f['category']} · score {f['score']:+.4f}"})
    if use_text and cursor < len(text):
        out.append({"text": text[cursor:], "style": None, "title": None})
    return out


def fragment(parts: Sequence[dict]) -> Markup:
    """The HTML of :func:`segments`: a ``<span class="t">`` per feature, gaps as plain text."""
    html = []
    for s in parts:
        if s["style"]:
            html.append(Markup('<span class="t" style="{}" title="{}">{}</span>').format(
                s["style"], s["title"], s["text"]))
        else:
            html.append(escape(s["text"]))
    return Markup("").join(html)


def legend() -> Markup:
    """The colour key shared by both pages."""
    cats = Markup("").join(
        Markup('<span><i style="background: {}"></i>{}</span>').format(c, name)
        for name, c in CATEGORY_COLOURS.items())
    return Markup('<span style="background: rgba({}, 0.6)">raises p(target)</span> '
                  '<span style="background: rgba({}, 0.6)">lowers p(target)</span> '
                  '· underline: category {}').format(RAISES, LOWERS, cats)


def render_heatmap(examples: Sequence[dict], title: str, method: str, granularity: str,
                   baseline: str) -> str:
    """HTML for examples given as dicts: example_id, clause, target, target_logprob, rows."""
    template = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined).from_string(
        resources.files("tunelens.explain").joinpath("templates/heatmap.html.j2").read_text("utf-8")
    )
    shown = [{**ex, "html": fragment(segments(ex["clause"], ex["rows"])),
              "logprob": number(ex["target_logprob"])} for ex in examples]
    return template.render(title=title, examples=shown, method=method, granularity=granularity,
                           baseline=baseline, legend=legend())


def write_heatmap(path: str | Path, examples: Sequence[dict], **labels: str) -> Path:
    path = Path(path)
    write_text(path, render_heatmap(examples, **labels))
    return path


def _feature(row: dict) -> dict:
    token = row.get("token")
    if token is None or (isinstance(token, float) and math.isnan(token)):
        token = ""
    score = row.get("score")
    score = float("nan") if score is None else float(score)
    return {"start": _int(row.get("start")), "end": _int(row.get("end")), "token": str(token),
            "score": score, "category": str(row.get("category") or "OTHER")}


def _int(value) -> int | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return int(value)


def _spans_fit(feats: list[dict], text: str) -> bool:
    """Spans in order, inside ``text``, and each over its own token's text."""
    cursor = 0
    for f in feats:
        start, end = f["start"], f["end"]
        if start is None or end is None or start < cursor or end < start or end > len(text):
            return False
        want, have = f["token"].strip(_MARKERS), text[start:end].strip()
        if want and have and want != have:
            return False
        cursor = end
    return True
