"""Findings drawn from the paired tests: what differs, what does not, and what could not.

A study runs dozens of pairwise tests (every pair of strategies × every metric × every model), and
almost all of them find nothing; listing each as a sentence buries the few that matter. So:

* each significant difference is one sentence with its numbers, and the same difference seen on
  several models (same metric, same direction) is one sentence naming each model's numbers;
  other metrics of the same kind that are significant for the same pair are named in a clause;
* the non-significant comparisons of a kind are one sentence: how many, and the smallest
  Holm-adjusted p, so a reader sees how close the nearest miss was (the full list is the tests
  table);
* a test that cannot reach significance at its sample size whatever the data is said to be one:
  with n paired examples the smallest two-sided Wilcoxon p is 2/2^n, and Holm multiplies the
  smallest p of a family of m comparisons by m.

A difference is stated only if it survived both Holm within its family and the report-wide
Benjamini–Hochberg family (``significant`` in ``stats/tests.json``, set by
:mod:`tunelens.compare.multiplicity`). Its direction is the sign of the estimate that goes with
the test (Hodges–Lehmann for the signed-rank test, the difference of means for the seed-level
t-test), never of a statistic the test did not look at. A difference from one seed per strategy
says so in its sentence and is never a headline: one training run cannot separate a strategy from
its seed.

Nothing here computes a statistic: every number comes from ``stats/tests.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelens.evaluate.specs import lower_is_better
from tunelens.format import number
from tunelens.report.wording import (
    Finding,
    capital,
    fmt,
    fmt_p,
    join,
    metric_label,
    pct,
    plural,
    strategy,
)

KINDS = ("concentration", "quality", "category")
# +1: a higher value means more concentrated attributions; -1: less
CONCENTRATION_SIGN = {"gini": 1, "top_k_share": 1, "entropy": -1}
QUALITY_PREFERENCE = ("rule_exec_accuracy", "rule_field_accuracy", "chrf", "semantic_similarity",
                      "bleu", "rougeL", "exact_match")
KIND_WORDS = {"concentration": "attribution-concentration", "quality": "quality",
              "category": "token-category"}


def _dir(row: dict) -> int:
    """+1 when ``a`` is higher by the test's own estimate (older files: the mean difference)."""
    d = row.get("direction")
    if d is None:
        d = (row["mean_diff"] > 0) - (row["mean_diff"] < 0)
    return int(d)


def _sign(kind: str, metric: str) -> int:
    """+1 where "more" reads as a higher value; −1 for a lower-is-better quality metric (a
    distance, an error rate), so the "more" side of a sentence is the better one."""
    if kind == "concentration":
        return CONCENTRATION_SIGN.get(metric, 1)
    return -1 if kind == "quality" and lower_is_better(metric) else 1


def _lead_rank(kind: str, metric: str, row: dict) -> tuple:
    if kind == "concentration":
        return (list(CONCENTRATION_SIGN).index(metric) if metric in CONCENTRATION_SIGN else 9, metric)
    if kind == "quality":
        return (QUALITY_PREFERENCE.index(metric) if metric in QUALITY_PREFERENCE else 99, metric)
    # categories: the largest shift of share leads
    return (-abs(row.get("estimate", row["mean_diff"])), metric)


def comparisons(tests: dict, kind: str, skip: set[str]):
    """(group, metric, metric stats, pairwise row) of one kind, metrics in ``skip`` left out."""
    for g in tests["groups"]:
        for metric, m in g["metrics"].items():
            if m["kind"] != kind or metric in skip:
                continue
            for row in m["pairwise"]:
                yield g, metric, m, row


def _setting(g: dict, varies: tuple[bool, bool]) -> str:
    parts = []
    if varies[0]:
        parts.append(f"the {g['objective']} objective")
    if varies[1]:
        parts.append("retrieval" if g["rag"] else "no retrieval")
    return f"With {' and '.join(parts)}, " if parts else ""


def _varies(tests: dict) -> tuple[bool, bool]:
    groups = tests["groups"]
    return (len({g["objective"] for g in groups}) > 1, len({g["rag"] for g in groups}) > 1)


@dataclass
class _Seen:
    """One model's numbers behind a (possibly merged) significant difference."""

    model: str
    row: dict
    n: int
    more_is_a: bool
    single_seed: bool = False
    also: list[tuple[str, str]] = field(default_factory=list)  # (metric, direction note)


def significant_differences(tests: dict, skip: set[str] = frozenset()) -> list[Finding]:
    """One sentence per significant difference, merged across models; strongest first."""
    varies = _varies(tests)
    merged: dict[tuple, list[_Seen]] = {}
    for kind in KINDS:
        by_pair: dict[tuple, list[tuple[str, dict, dict]]] = {}
        for g, metric, m, row in comparisons(tests, kind, skip):
            if row["significant"]:
                key = (id(g), row["a"], row["b"])
                by_pair.setdefault(key, []).append((metric, m, row))
        groups = {id(g): g for g in tests["groups"]}
        for (gid, _, _), hits in by_pair.items():
            g = groups[gid]
            hits.sort(key=lambda h: _lead_rank(kind, h[0], h[2]))
            metric, m, row = hits[0]
            lead_up = _sign(kind, metric) * _dir(row) > 0  # a is "more" on the lead metric
            seen = _Seen(g["model"], row, m["n"], lead_up, bool(row.get("single_seed")))
            for other, _, r in hits[1:]:
                up = _sign(kind, other) * _dir(r) > 0
                if kind == "category":
                    note = "more" if up == lead_up else "less"
                else:
                    note = "" if up == lead_up else "the other way"
                seen.also.append((other, note))
            more, less = (row["a"], row["b"]) if lead_up else (row["b"], row["a"])
            key = (kind, metric, more, less, _setting(g, varies))
            merged.setdefault(key, []).append(seen)
    out = []
    for (kind, metric, more, less, setting), seen in merged.items():
        best_p = min(s.row["p_holm"] for s in seen)
        strength = max(abs(s.row["rank_biserial"]) for s in seen)
        text = _sentence(kind, metric, more, less, setting, seen, tests.get("confidence", 0.95))
        single = any(s.single_seed for s in seen)
        finding = Finding("difference", text, True, headline=not single, topic=kind)
        out.append((KINDS.index(kind), best_p, -strength, -len(seen), finding))
    out.sort(key=lambda t: t[:4])
    return [t[-1] for t in out]


def _numbers(kind: str, metric: str, s: _Seen, label: bool) -> tuple[str, str, str]:
    r = s.row
    hi, lo = (r["mean_a"], r["mean_b"]) if s.more_is_a else (r["mean_b"], r["mean_a"])
    effect = r["rank_biserial"] if s.more_is_a else -r["rank_biserial"]
    values = f"{pct(hi)} vs {pct(lo)}" if kind == "category" else f"{fmt(hi, metric)} vs {fmt(lo, metric)}"
    if label and kind == "concentration":
        values = f"{metric_label(metric)} {values}"
    if _sign(kind, metric) * (hi - lo) < 0:  # ranks and means can disagree (a few large differences)
        values += " (means, which point the other way)"
    estimate = _estimate(kind, metric, r, 1 if s.more_is_a else -1)
    if estimate:
        values = f"{values}, {estimate}"
    return values, fmt_p(r["p_holm"]), f"r = {fmt(effect)}"


def _estimate(kind: str, metric: str, r: dict, sign: int) -> str:
    """The tested effect, turned towards the "more" side, with its interval."""
    if r.get("estimate") is None:
        return ""
    show = (lambda v: pct(v)) if kind == "category" else (lambda v: fmt(v, metric))
    name = "Hodges–Lehmann difference" if r.get("estimate_kind") == "hodges_lehmann" else "difference"
    text = f"{name} {show(sign * r['estimate'])}"
    lo, hi = r.get("ci_lo"), r.get("ci_hi")
    if lo is not None and hi is not None:
        lo, hi = sorted((sign * lo, sign * hi))
        text += f" [{show(lo)}, {show(hi)}]"
    return text


def _sentence(kind: str, metric: str, more: str, less: str, setting: str, seen: list[_Seen],
              confidence: float = 0.95) -> str:
    if kind == "concentration":
        subject = f"{strategy(more)} attributions are more concentrated than {strategy(less)}"
    elif kind == "quality":
        better = "lower (better)" if lower_is_better(metric) else "higher"
        subject = f"{strategy(more)} scores {better} than {strategy(less)} in {metric_label(metric)}"
    else:
        subject = (f"{strategy(more)} puts more attribution on {metric.removeprefix('share_')} tokens "
                   f"than {strategy(less)}")
    subject = setting + subject if setting else capital(subject)
    ns = sorted({s.n for s in seen})
    if len(seen) == 1:
        values, p, r = _numbers(kind, metric, seen[0], label=True)
        text = f"{subject} on {seen[0].model}: {values}, {p} (Holm), {r}, n = {seen[0].n} paired examples"
    else:
        parts = []
        for s in seen:
            values, p, r = _numbers(kind, metric, s, label=True)
            parts.append(f"{s.model} ({values}, {p}, {r})")
        n = f"n = {ns[0]} paired examples each" if len(ns) == 1 else \
            f"n = {join([str(s.n) for s in seen])} paired examples"
        text = f"{subject} on {join(parts)}; p Holm-adjusted, {n}"
    also = _also(kind, seen)
    text += f"; {also}" if also else ""
    if any(s.single_seed for s in seen):
        text += ("; one seed per strategy, so the test is over examples of a single training run "
                 "and cannot tell the strategy from its seed")
    else:
        text += (f"; seeds are the replicates ({pct(confidence)} intervals from a hierarchical "
                 "bootstrap over seeds, then examples)")
    return text + "."


def _also(kind: str, seen: list[_Seen]) -> str:
    """Other significant metrics of the same kind for the same pair, with the models they hold on."""
    where: dict[tuple[str, str], list[str]] = {}
    for s in seen:
        for metric, note in s.also:
            where.setdefault((metric, note), []).append(s.model)
    if not where:
        return ""
    items = []
    for (metric, note), models in where.items():
        name = metric.removeprefix("share_") if kind == "category" else metric_label(metric)
        notes = [note] if note else []
        if len(seen) > 1 and len(models) < len(seen):
            notes.append(f"on {join(models)}")
        items.append(name + (f" ({', '.join(notes)})" if notes else ""))
    verb = "it also differs on" if kind == "category" else "also significant on"
    return f"{verb} {join(items)}"


def not_significant(tests: dict, skip: set[str] = frozenset()) -> list[Finding]:
    """One sentence per kind: how many comparisons found nothing, and the nearest miss."""
    alpha, out = tests["alpha"], []
    for kind in KINDS:
        rows = [(metric, m, row) for _, metric, m, row in comparisons(tests, kind, skip)]
        misses = [(metric, m, row) for metric, m, row in rows if not row["significant"]]
        if not misses:
            continue
        other = "other " if len(misses) < len(rows) else ""
        metrics = sorted({metric for metric, _, _ in misses})
        smallest = min(row["p_holm"] for _, _, row in misses)
        if kind == "concentration":
            what = f"No {other}difference in attribution concentration between strategies"
            over = f"over {join([metric_label(x) for x in metrics])}"
        elif kind == "quality":
            what = f"No {other}quality difference between strategies"
            over = f"over {plural(len(metrics), 'metric')}"
        else:
            what = f"No {other}difference in the attribution share of a token category"
            over = f"over {plural(len(metrics), 'category', 'categories')}"
        text = (f"{what} reached significance ({plural(len(misses), 'comparison')} {over}; smallest "
                f"Holm-adjusted {fmt_p(smallest)})")
        if all(m.get("single_seed", True) and _floor(m["n"], len(m["pairwise"])) >= alpha
               for _, m, _ in misses):
            text += "; at these sample sizes none could have (see the note on sample size)"
        out.append(Finding("summary", text + ".", headline=False))
    return out


def _floor(n: int, m: int) -> float:
    """Smallest Holm-adjusted two-sided Wilcoxon p attainable with n pairs in a family of m."""
    return min(1.0, m * 2.0 / 2.0 ** n)


def too_small(tests: dict, skip: set[str] = frozenset()) -> list[Finding]:
    """A note for each sample size at which a test cannot reach significance whatever the data."""
    alpha = tests["alpha"]
    blocked: dict[tuple[int, int], list[str]] = {}
    for kind in KINDS:
        for g in tests["groups"]:
            for metric, m in g["metrics"].items():
                if m["kind"] != kind or metric in skip or not m["pairwise"] or not m.get("single_seed", True):
                    continue
                n, pairs = m["n"], len(m["pairwise"])
                if _floor(n, pairs) >= alpha and kind not in blocked.setdefault((n, pairs), []):
                    blocked[(n, pairs)].append(kind)
    out = []
    for (n, pairs), kinds in sorted(blocked.items()):
        need = n
        while _floor(need, pairs) >= alpha:
            need += 1
        holm = f" ({number(_floor(n, pairs))} after Holm over {pairs} pairs)" if pairs > 1 else ""
        out.append(Finding("sample", (
            f"The {join([KIND_WORDS[k] for k in kinds])} tests rest on {n} paired examples per model: with "
            f"n = {n} the smallest two-sided Wilcoxon p is 2/2^{n} = {number(2 / 2 ** n)}{holm}, so they "
            f"cannot reach significance at {alpha} whatever the data; at least {need} paired examples "
            "are needed."),
            headline=False))
    return out
