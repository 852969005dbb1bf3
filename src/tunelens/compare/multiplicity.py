"""Report-wide error control: one Benjamini–Hochberg family over every p a sentence can come from.

A study report runs dozens to hundreds of tests (strategy pairs × metrics × models, scale trends,
plateaus, the best run against the runner-up). Holm within a family of three strategy pairs
controls the error of that family only; picking the significant hits out of sixty families does
not. So every p-value the report can turn into a sentence enters one Benjamini–Hochberg family
(Benjamini & Hochberg 1995), which controls the expected share of false findings among those
reported at ``ComparisonConfig.fdr_q``. Holm stays within its families; a finding must survive
both: ``p_holm < alpha`` (or ``p < alpha`` where a result has no Holm family) *and*
``p_bh <= fdr_q``.

The marker (agreed between the statistics modules): any dict anywhere in the statistics that
carries ``"finding": True`` and a numeric ``"p"`` is a test the report may turn into a sentence.
:func:`report_family` finds them all, writes ``p_bh`` and ``significant`` into each, and returns
the family's summary (how many tests, q, the BH threshold), which ``compare_study`` stores as
``tests.json["family"]``. Results without the marker are descriptive and never enter the family.
A marked result whose p is missing or NaN gets ``p_bh = None`` and ``significant = False`` and is
not counted.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

__all__ = ["bh_threshold", "collect", "report_family"]


def collect(obj) -> list[list[dict]]:
    """The marked results under ``obj`` (dicts and lists, depth first), grouped into families:
    marked dicts that carry ``p_holm`` and sit in the same list form one Holm family; any other
    marked dict is a family of its own."""
    families: list[list[dict]] = []
    stack = [obj]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if _marked(item):
                families.append([item])
            stack.extend(reversed(list(item.values())))
        elif isinstance(item, list | tuple):
            holm_rows = [x for x in item if isinstance(x, dict) and _marked(x) and "p_holm" in x]
            if holm_rows:
                families.append(holm_rows)
            for x in reversed(item):
                if isinstance(x, dict) and any(x is r for r in holm_rows):
                    stack.extend(reversed(list(x.values())))  # nested results, not the row again
                else:
                    stack.append(x)
    return families


def bh_threshold(pvalues, q: float) -> float | None:
    """The largest p_(i) with p_(i) <= i·q/m: every p at or below it is a BH discovery."""
    p = np.sort(np.asarray(pvalues, dtype=float))
    if p.size == 0:
        return None
    ok = p <= q * np.arange(1, p.size + 1) / p.size
    return float(p[np.nonzero(ok)[0][-1]]) if ok.any() else None


def report_family(results, q: float = 0.05, alpha: float = 0.05) -> dict:
    """Adjust every marked p in ``results`` together (in place) and summarise the family.

    Benjamini & Bogomolov (2014): BH over the families, each represented by its smallest
    Holm-adjusted p (a valid p-value for "nothing in this family"); within each selected family,
    Holm at the level q·R/M (R families selected of M). Each row gets ``p_bh``, the BH-adjusted p
    of its family, and ``significant``: p_holm < alpha, p_bh <= q and p_holm <= q·R/M.
    """
    families = [[r for r in fam if _finite(r.get("p"))] for fam in collect(results)]
    for fam in collect(results):
        for r in fam:
            if not _finite(r.get("p")):
                r["p_bh"], r["significant"] = None, False
    families = [fam for fam in families if fam]
    family_p = np.array([min(_local(r) for r in fam) for fam in families])
    adjusted = stats.false_discovery_control(family_p, method="bh") if families else np.array([])
    selected = int(np.sum(adjusted <= q))
    level = q * selected / len(families) if families else 0.0
    for fam, p_bh in zip(families, adjusted, strict=True):
        for r in fam:
            r["p_bh"] = float(p_bh)
            r["significant"] = bool(_local(r) < alpha and p_bh <= q and _local(r) <= level)
    rows = [r for fam in families for r in fam]
    return {"tests": len(rows), "families": len(families), "selected_families": selected, "q": q,
            "alpha": alpha, "bh_threshold": bh_threshold(family_p, q),
            "within_family_level": level if selected else None,
            "significant": sum(1 for r in rows if r["significant"]),
            "rule": "BH over families (each by its smallest Holm-adjusted p) at q; within a selected "
                    "family, Holm-adjusted p < alpha and <= q * selected / families"}


def _marked(item: dict) -> bool:
    return item.get("finding") is True and "p" in item


def _local(r: dict) -> float:
    """The row's p within its own family: Holm-adjusted where it has a family, else as is."""
    v = r.get("p_holm", r["p"])
    return float(v) if _finite(v) else float(r["p"])


def _finite(v) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(float(v))
