"""Rendering: the jinja2 template filled in, every figure inlined as a base64 data URI.

The report must open from a USB stick or an e-mail attachment with no network: no external
stylesheet, font, script or image. Inlining PNGs as ``data:`` URIs is what keeps it one file.
"""

from __future__ import annotations

import base64
from pathlib import Path

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape

TEMPLATE = "report.html.j2"


def data_uri(path: Path | None) -> str | None:
    if path is None:
        return None
    return "data:image/png;base64," + base64.b64encode(Path(path).read_bytes()).decode("ascii")


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(Path(__file__).parent),
                      autoescape=select_autoescape(enabled_extensions=("html", "j2")),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    env.filters["num"] = _num
    env.filters["ci"] = _ci
    env.filters["p"] = _p
    env.filters["count"] = _count
    return env


def render(context: dict) -> str:
    return _environment().get_template(TEMPLATE).render(**context)


def _num(x, digits: int = 3) -> str:
    if x is None:
        return "–"
    if isinstance(x, bool):
        return "yes" if x else "no"
    x = float(x)
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ci(d: dict | None, digits: int = 3) -> str:
    if not d or d.get("mean") is None:
        return "–"
    if d.get("lo") is None:
        return _num(d["mean"], digits)
    return f"{_num(d['mean'], digits)} [{_num(d['lo'], digits)}, {_num(d['hi'], digits)}]"


def _p(p) -> str:
    return "–" if p is None else "< 0.001" if p < 0.001 else f"{p:.3f}"


def _count(n) -> str:
    from tunelens.report.figures import human_count

    return human_count(n)
