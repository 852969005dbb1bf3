"""The scale and category sentences of the findings: trends, plateaus, "did not learn", reliance.

Every sentence reads ``stats/scale.json`` and ``stats/category_shares.json``; none computes a
statistic. A trend or plateau is stated only where its test passed — after the report-wide
Benjamini–Hochberg correction where ``compare`` applied one (the ``significant`` it writes into
each result), else at ``alpha``. A quality metric that never rose significantly is said to have
*not learned*, never to have plateaued. Where the test of a corpus metric (BLEU, chrF) ran on
sentence-level scores, the sentence says so. Reliance is enrichment — share of |attribution| ÷
share of features — so a tokenizer that cuts numbers into more pieces does not "rely more on
numbers"; its trend with model size tests the published claim (arXiv 2604.15589).
"""

from __future__ import annotations

import math

from tunelens.compare.runs import strategy_key
from tunelens.report.figures import human_count
from tunelens.report.wording import (
    Finding,
    arm_of,
    capital,
    fmt,
    fmt_p,
    join,
    metric_label,
    pct,
    plural,
    strategy,
)


def reliance(shares: dict) -> Finding | None:
    """What each strategy relies on most, as enrichment: the category whose share of |attribution|
    most exceeds its share of the features (OTHER aside: it is every token not in a rule). Studies
    whose statistics predate enrichment fall back to the largest share."""
    per = shares.get("per_strategy") or {}
    tops: dict[str, tuple[str, float]] = {}
    by_enrichment = any(row.get("enrichment") for row in per.values())
    for name, row in per.items():
        table = row.get("enrichment") if by_enrichment else row["shares"]
        named = {c: v for c, v in (table or {}).items() if c != "OTHER" and v is not None}
        if named:
            tops[name] = max(named.items(), key=lambda kv: kv[1])
    if not tops:
        return None
    value = (lambda v: f"{v:.2f}×") if by_enrichment else pct
    over = "cells, each over its seeds" if shares.get("enrichment_per_cell") else "runs"
    how = (f"share of |attribution| ÷ share of features, mean over {over}" if by_enrichment
           else "largest share of attribution outside OTHER, mean over runs")
    level = shares.get("feature_level")
    how += "; features are words" if level == "word" else ""
    cats = {c for c, _ in tops.values()}
    if len(cats) == 1:
        cat = cats.pop()
        who = "Every strategy relies" if len(tops) > 1 else f"{capital(strategy(next(iter(tops))))} relies"
        lo, hi = (value(f([v for _, v in tops.values()])) for f in (min, max))
        span = lo if lo == hi else f"{lo} to {hi}"
        return Finding("reliance", f"{who} most on {cat} tokens among the rule categories ({span}; {how}).",
                       headline=False)
    parts = []
    for cat in sorted(cats, key=lambda c: min(strategy_key(s) for s, (k, _) in tops.items() if k == c)):
        names = [s for s, (k, _) in tops.items() if k == cat]
        values = ", ".join(value(tops[s][1]) for s in names)
        parts.append(f"{join([strategy(s) for s in names])} on {cat} ({values})")
    return Finding("reliance", f"The strategies rely most on different token categories ({how}): "
                   f"{join(parts)}.")


# the published claim the enrichment trends test (arXiv 2604.15589)
CLAIM = "larger models rely more on numbers and rule ids (arXiv 2604.15589)"


def reliance_trends(scale: dict) -> list[Finding]:
    """Enrichment of NUMBER / RULE_ID and adjusted concentration against model size: significant
    trends as findings, and one sentence on whether the published claim holds here."""
    curves = [c for c in scale.get("curves", []) if c.get("trend")
              and (c["metric"].startswith("enrichment_") or c["metric"] == "gini_adjusted")]
    if not curves:
        return []
    varies = len({(c["objective"], c["rag"]) for c in curves}) > 1
    alpha = scale.get("alpha", 0.05)
    out = []
    moved: dict[tuple, list[dict]] = {}
    for c in curves:
        if _survives(c["trend"], alpha) and c["trend"]["slope"] != 0:
            moved.setdefault((c["metric"], c["trend"]["slope"] > 0), []).append(c)
    for (metric, up), cs in moved.items():
        out.append(_trend_finding(metric, up, cs, scale, varies, _measure_label(metric)))
    claim = [c for c in curves if c["metric"] in ("enrichment_NUMBER", "enrichment_RULE_ID")]
    if claim:
        support = [c for c in claim if c in moved.get((c["metric"], True), [])]
        if support:
            who = join([f"{c['metric'].split('_', 1)[1]} for {_who(c, varies)}" for c in support])
            text = f"The published claim that {CLAIM} holds here for {who}, of {plural(len(claim), 'test')}."
        else:
            text = (f"The published claim that {CLAIM} is not supported here: no NUMBER or RULE_ID "
                    f"enrichment rises significantly with model size ({plural(len(claim), 'test')}).")
        out.append(Finding("trend" if support else "other_trends", text, headline=bool(support)))
    return out


def _measure_label(metric: str) -> str:
    if metric.startswith("enrichment_"):
        return f"{metric.split('_', 1)[1]} enrichment (share of |attribution| ÷ share of features)"
    return "adjusted Gini (Gini ÷ its expectation for as many exchangeable scores)"


def scale_findings(scale: dict, metrics: list[str]) -> list[Finding]:
    """Trends that pass their test, plateaus that pass theirs (a rise, then flat), one line for
    curves that never rose ("did not learn", never called a plateau) and one for the rest."""
    curves = [c for c in scale["curves"] if c["metric"] in metrics and c.get("verdict")]
    varies = len({(c["objective"], c["rag"]) for c in curves}) > 1
    alpha = scale.get("alpha", 0.05)
    trends: dict[tuple, list[dict]] = {}
    flat: dict[str, list[dict]] = {}
    stuck: dict[str, list[dict]] = {}
    unclear = []
    for c in curves:
        t = c.get("trend")
        if c["verdict"] == "did not learn":
            stuck.setdefault(c["metric"], []).append(c)
        elif t and t.get("lo") is not None and _survives(t, alpha) and t["slope"] != 0:
            trends.setdefault((c["metric"], t["slope"] > 0), []).append(c)
        elif c["verdict"] != "plateau":
            unclear.append(c)
        if c["verdict"] == "plateau" and _survives(c["plateau"], alpha):
            flat.setdefault(c["metric"], []).append(c)
    out = [_trend_finding(metric, up, cs, scale, varies) for (metric, up), cs in trends.items()]
    out += [_plateau_finding(metric, cs, scale, varies) for metric, cs in flat.items()]
    for metric, cs in stuck.items():
        values = [p["value"] for c in cs for p in c["points"]]
        out.append(Finding("other_trends", f"{metric_label(metric)} did not learn with model size for "
                           f"{join([_who(c, varies) for c in cs])}: no significant rise at any size "
                           f"({_level_span(values, metric)}), so no plateau is claimed.", headline=False))
    if unclear and (trends or flat):
        names = [f"{metric_label(c['metric'])} for {_who(c, varies)}" for c in unclear]
        out.append(Finding("other_trends", f"The other scale slopes ({join(names)}) are not significant.",
                           headline=False))
    return out


def _survives(result: dict, alpha: float) -> bool:
    """A scale result's test passed: the report-wide correction's verdict where it has one. A
    result not marked as a finding never entered that correction, so it is never stated."""
    if result.get("finding") is False:
        return False
    for key in ("survives", "significant"):
        if result.get(key) is not None:
            return bool(result[key])
    return result.get("p") is not None and result["p"] < alpha


def _tested_on(c: dict) -> str:
    return " (points: corpus scores; tested on sentence-level scores)" if c.get("test_level") == "sentence" \
        else ""


def _trend_finding(metric: str, up: bool, cs: list[dict], scale: dict, varies: bool,
                   label: str | None = None) -> Finding:
    parts = []
    for i, c in enumerate(cs):
        t = c["trend"]
        slope, lo, hi = (_slope(t[k], t["slope"]) for k in ("slope", "lo", "hi"))
        unit = " per decade of parameters" if i == 0 else ""
        level = f"{pct(scale['confidence'])} " if i == 0 else ""
        parts.append(f"{_who(c, varies)} ({slope}{unit}, {level}CI {lo} to {hi}, {_p_words(t)})")
    sizes = [p["params"] for c in cs for p in c["points"]]
    verb = "rises" if up else "falls"
    caveat = _one_seed(cs)
    return Finding("trend", f"{label or metric_label(metric)}{_tested_on(cs[0])} {verb} with "
                   f"model size for {join(parts)}, across {human_count(min(sizes))} to "
                   f"{human_count(max(sizes))} parameters{caveat}.", headline=not caveat)


def _plateau_finding(metric: str, cs: list[dict], scale: dict, varies: bool) -> Finding:
    parts = []
    for c in cs:
        p = c["plateau"]
        support = "" if p.get("support") is None else f", the same break in {pct(p['support'])} of resamples"
        parts.append(f"for {_who(c, varies)} from {human_count(p['size'])} parameters ({_p_words(p)}"
                     f"{support})")
    gain = "gains less than" if cs[0].get("direction", "higher") == "higher" else "changes by less than"
    caveat = _one_seed(cs)
    return Finding("plateau", f"{metric_label(metric)}{_tested_on(cs[0])} rises significantly and then "
                   f"{gain} {scale['threshold_per_decade']} per decade of parameters {join(parts)}{caveat}.",
                   headline=not caveat)


def _p_words(result: dict) -> str:
    """The test's p, and the report-wide (Benjamini–Hochberg) one where the family has it."""
    bh = result.get("p_bh")
    return fmt_p(result["p"]) + ("" if bh is None else f", {fmt_p(bh)} report-wide")


def _one_seed(cs: list[dict]) -> str:
    """The caveat of a curve with one training run at some size: its interval covers test
    examples only, not the run-to-run variation of training (never a headline)."""
    if all(min(len(p["runs"]) for p in c["points"]) >= 2 for c in cs):
        return ""
    return "; one seed at some sizes, so the interval covers test examples, not retraining"


def _level_span(values: list[float], metric: str) -> str:
    lo, hi = min(values), max(values)
    return f"{fmt(lo, metric)} at every size" if fmt(lo, metric) == fmt(hi, metric) else \
        f"between {fmt(lo, metric)} and {fmt(hi, metric)}"


def _slope(x: float, scale: float) -> str:
    """A slope or its bound with as many decimals as three significant digits of the slope need."""
    digits = 2 if scale == 0 else max(0, 2 - math.floor(math.log10(abs(scale))))
    return f"{x:+.{digits}f}".replace("-", "−")


def _who(c: dict, varies: bool) -> str:
    who = strategy(arm_of(c))
    if varies:
        who += f" ({c['objective']}{', with retrieval' if c['rag'] else ''})"
    return who
