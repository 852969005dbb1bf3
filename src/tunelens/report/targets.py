"""Reference vs generation in the report: a table per cell and a sentence where they differ.

With ``explanation.target: both`` each sampled example is explained on the reference rule (what
the run should have written) and on the run's own generation (what it wrote). The table puts the
two side by side per cell — Gini and the most enriched category under each target, means over
seeds — with the paired tests from ``stats/targets.json`` (the Gini; each rule category's share);
a cell whose tests survive Holm and the report-wide Benjamini–Hochberg family gets one plain
sentence. With one target the section only
says which one was explained. Nothing here computes a statistic.
"""

from __future__ import annotations

from tunelens.report.tables import seed_cell, seeds_label
from tunelens.report.wording import Finding, fmt, fmt_p, join, plural

WHAT = {"reference": "the reference rule (what the run should have written)",
        "generation": "the run's own generation (what it wrote)"}


def section(stats: dict | None, confidence: float = 0.95) -> dict:
    """The template's ``targets``: which targets, the per-cell rows, the sentences."""
    stats = stats or {"targets": [], "main": "reference", "per_cell": {}}
    present = stats.get("targets") or []
    out = {"targets": present, "main": stats.get("main", "reference"), "rows": [], "sentences": [],
           "single": len(present) < 2, "what": WHAT.get(present[0] if present else "reference", "")}
    for cell, c in (stats.get("per_cell") or {}).items():
        out["rows"].append(_row(cell, c))
        text = _sentence(cell, c, confidence)
        if text:
            out["sentences"].append(text)
    return out


def _top(summary: dict) -> str:
    top = summary.get("top")
    if not top:
        return "–"
    e = summary["enrichment"][top]
    return f"{top} {e['mean']:.2f}×"


def _row(cell: str, c: dict) -> dict:
    tests = {t["metric"]: t for t in c["tests"]}
    gini = {k: (tests.get("gini") or {}).get(k) for k in ("estimate", "ci_lo", "ci_hi", "p_holm", "p_bh")}
    others = [t for t in c["tests"] if t["metric"] != "gini"]
    return {"name": cell, "seeds": seeds_label(c), "n": c["n_examples"],
            "gini": [seed_cell(c[t]["gini"]) for t in ("reference", "generation")],
            "gini_test": gini, "top": [_top(c["reference"]), _top(c["generation"])],
            "top_p": min((t.get("p_holm") for t in others), default=None), "n_categories": len(others),
            "significant": any(t.get("significant") for t in c["tests"])}


def _clause(t: dict, c: dict) -> str:
    """One significant test as a clause, turned towards the generation."""
    more = "more" if t["direction"] < 0 else "less"  # a = reference, b = generation
    p = f"{fmt_p(t['p_holm'])} (Holm), {fmt_p(t.get('p_bh'))} report-wide"
    if t["metric"] == "gini":
        ci = ""
        if t.get("ci_lo") is not None and t.get("ci_hi") is not None:
            ci = f" [{fmt(-t['ci_hi'])}, {fmt(-t['ci_lo'])}]"
        return (f"its attributions are {more} concentrated on what it wrote (Gini {fmt(t['mean_b'])} vs "
                f"{fmt(t['mean_a'])} on the reference; difference {fmt(-t['estimate'])}{ci}, {p})")
    cat = t["metric"].removeprefix("share_")
    gen, ref = (c[k]["enrichment"].get(cat, {}).get("mean") for k in ("generation", "reference"))
    enrich = f"enrichment {gen:.2f}× vs {ref:.2f}×" if gen is not None and ref is not None else \
        f"share {fmt(t['mean_b'])} vs {fmt(t['mean_a'])}"
    return f"it leans {more} on {cat} tokens for what it wrote ({enrich}, {p})"


def _sentence(cell: str, c: dict, confidence: float) -> str | None:
    hits = [t for t in c["tests"] if t.get("significant") and t.get("direction")]
    if not hits:
        return None
    single = any(t.get("single_seed") for t in hits)
    how = ("one seed, so the test is over the examples of a single training run" if single else
           f"seeds as replicates, {round(confidence * 100)}% intervals over seeds, then examples")
    return (f"{cell} is explained differently on what it wrote than on what it should have: "
            f"{join([_clause(t, c) for t in hits])}; {plural(c['n_examples'], 'example')} explained "
            f"under both, {hits[0]['test']}, {how}.")


def findings(stats: dict | None, confidence: float = 0.95) -> list[Finding]:
    """The target sentences for the findings list; with none significant, one line saying so."""
    if not stats or len(stats.get("targets") or []) < 2 or not stats.get("per_cell"):
        return []
    out = []
    for cell, c in stats["per_cell"].items():
        text = _sentence(cell, c, confidence)
        if text:
            single = any(t.get("single_seed") for t in c["tests"] if t.get("significant"))
            out.append(Finding("target", text, True, headline=not single, topic="target"))
    if out:
        return out
    rows = [t for c in stats["per_cell"].values() for t in c["tests"]]
    if not rows:
        return []
    smallest = min(t["p_holm"] for t in rows)
    return [Finding("target", f"Attributions of what each run wrote and of the reference did not differ "
                    f"significantly in any cell ({plural(len(rows), 'paired test')} of the Gini and each "
                    f"category's share; smallest Holm-adjusted {fmt_p(smallest)}).", headline=False)]
