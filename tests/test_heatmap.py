"""One token heat-map renderer: the explain verb's file and the report draw a token identically."""

from __future__ import annotations

import re

import pandas as pd

from tunelens.explain.heatmap import (
    CATEGORY_COLOURS,
    LOWERS,
    RAISES,
    colour,
    fragment,
    render_heatmap,
    segments,
)
from tunelens.report.token_spans import heatmaps

CLAUSE = "Risers <b> 178 mm"
ROWS = [
    {"example_id": "e1", "position": 0, "token": "Risers", "start": 0, "end": 6, "category": "OTHER",
     "score": 0.5},
    {"example_id": "e1", "position": 1, "token": "<b>", "start": 7, "end": 10, "category": "OTHER",
     "score": -0.25},
    {"example_id": "e1", "position": 2, "token": "178", "start": 11, "end": 14, "category": "NUMBER",
     "score": 1.0},
]


def test_colour_scale_sign_and_strength():
    assert colour(1.0, 1.0) == f"rgba({RAISES}, 0.90)"
    assert colour(-0.5, 1.0) == f"rgba({LOWERS}, 0.49)"
    assert colour(0.3, 0.0) == f"rgba({RAISES}, 0.08)"  # nothing to scale by: faintest


def test_segments_keep_the_clause_spacing_and_escape_html():
    parts = segments(CLAUSE, ROWS)
    assert "".join(p["text"] for p in parts) == CLAUSE  # gaps and the tail kept as plain text
    html = str(fragment(parts))
    assert "&lt;b&gt;" in html and "<b>" not in html
    spans = re.findall(r'<span class="t" style="([^"]+)"', html)
    assert len(spans) == 3
    assert f"border-bottom: 3px solid {CATEGORY_COLOURS['NUMBER']}" in spans[2]
    assert f"rgba({LOWERS}" in spans[1] and f"rgba({RAISES}, 0.90)" in spans[2]


def test_segments_fall_back_to_token_texts_when_spans_do_not_fit():
    parts = segments("something else entirely", ROWS)
    assert [p["text"] for p in parts] == ["Risers", "<b>", "178"]
    assert [p["text"] for p in segments(None, ROWS)] == ["Risers", "<b>", "178"]


def test_explain_file_and_report_draw_the_same_fragment():
    expected = str(fragment(segments(CLAUSE, ROWS)))
    page = render_heatmap([{"example_id": "e1", "clause": CLAUSE, "target": "RULE", "target_logprob": -1.5,
                            "rows": ROWS}], title="t", method="occlusion", granularity="token",
                          baseline="unk")
    assert expected in page and 'class="example"' in page and "-1.500" in page
    shuffled = pd.DataFrame(ROWS).sample(frac=1.0, random_state=0)  # the report sorts by position
    report = heatmaps([{"name": "r"}], {"r": shuffled}, {"r": {"e1": CLAUSE}}, 1, 1)
    assert str(report[0]["rows"][0]["html"]) == expected
