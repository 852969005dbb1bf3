"""Rendering: the jinja2 template filled in, every figure inlined as a base64 data URI.

The report must open from a USB stick or an e-mail attachment with no network: no external
stylesheet, font, script or image. Inlining PNGs as ``data:`` URIs is what keeps it one file.
Numbers are written by :mod:`tunelens.format` (the template's ``num``, ``ci`` and ``p`` filters),
as in the findings and the CLI.
"""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

from tunelens import format as formatting
from tunelens.report.figures import human_count

TEMPLATE = "report.html.j2"


def data_uri(path: Path | None) -> str | None:
    if path is None:
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent),
                      autoescape=select_autoescape(enabled_extensions=("html", "j2")),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = formatting.number
    env.filters["ci"] = formatting.interval_of
    env.filters["p"] = formatting.p_value
    env.filters["count"] = human_count
    return env


def render(context: dict) -> str:
    return _environment().get_template(TEMPLATE).render(**context)
