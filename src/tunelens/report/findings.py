"""The findings section: the few results that matter first, the rest summarised, a cap on length.

A reader of a study report wants the headline results up front — significant differences with
their numbers, the best run and how sure that ranking is, what each strategy relies on, scale
trends whose interval excludes zero, plateaus — and one sentence per kind for everything that
found nothing, plus the limits of the study (samples too small to test, metrics that are 0 for
every run). The section is capped (``ReportConfig.max_findings``): what does not fit is counted in
a closing bullet and stays in the tables further down. Nothing here computes a statistic: every
number comes from ``stats/*.json``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunelens.compare.runs import strategy_key
from tunelens.compare.scale import CORPUS_METRICS
from tunelens.report.differences import (
    QUALITY_PREFERENCE,
    not_significant,
    significant_differences,
    too_small,
)
from tunelens.report.targets import findings as target_findings
from tunelens.report.trends import reliance, reliance_trends, scale_findings
from tunelens.report.wording import Finding, arm_of, fmt, fmt_p, join, plural, strategy

REQUIRED = ("failures", "best", "summary", "sample", "zero")  # never left out for the cap
# what fills the rest of the cap, most wanted first; one of each kind before a second of any
OPTIONAL = ("difference", "reliance", "trend", "plateau", "agreement", "target", "other_trends")
# the bullets after the headline: what found nothing, the study's limits, then the rest
CONTEXT_ORDER = ("difference", "summary", "sample", "zero", "reliance", "trend", "plateau", "agreement",
                 "target", "other_trends")
LEFT_OUT_WORDS = {"difference": ("significant difference", "tests"), "trend": ("scale trend", "scale"),
                  "plateau": ("plateau", "scale"), "reliance": ("category summary", "categories"),
                  "agreement": ("agreement summary", "agreement"),
                  "target": ("reference-vs-generation note", "reference vs generation"),
                  "other_trends": ("scale note", "scale")}


@dataclass
class Digest:
    """The findings section: a lead paragraph, headline bullets, then context bullets."""

    lead: str
    headline: list[Finding] = field(default_factory=list)
    context: list[Finding] = field(default_factory=list)

    @property
    def bullets(self) -> list[Finding]:
        return self.headline + self.context


def zero_metrics(runs: dict) -> list[str]:
    """Quality metrics that are 0 for every run that has them: there is nothing to compare."""
    rows = [c["aggregate"] for c in runs["cells"] if c["aggregate"]]
    names = sorted({k for a in rows for k in a})
    return [k for k in names if all(a[k]["min"] == a[k]["max"] == 0 for a in rows if k in a)]


def main_metric(runs: dict, zero: list[str]) -> str | None:
    """The quality metric the headline ranks runs by: the most telling one that is not all 0."""
    present = {k for c in runs["cells"] for k in c["aggregate"]}
    for metric in [*QUALITY_PREFERENCE, *sorted(present)]:
        if metric in present and metric not in zero:
            return metric
    return None


def _seeds(summary: dict, metric: str, single_interval) -> str:
    """How a cell's score came about: the mean of its seeds and their range, or one seed."""
    if summary["n"] >= 2:
        return f"mean of {summary['n']} seeds, which scored {fmt(summary['min'], metric)} to " \
               f"{fmt(summary['max'], metric)}"
    text = "one seed, n = 1"
    if single_interval:
        lo, hi = single_interval
        text += f"; interval over examples {fmt(lo, metric)} to {fmt(hi, metric)}"
    return text


def best_run(runs: dict, metric: str, zero: list[str], test: dict | None = None) -> Finding | None:
    """The best cell on the main metric — its seeds' mean score (corpus BLEU/chrF), as in the
    tables — then ``test``: the top cell against the runner-up by a paired test on sentence-level
    scores (``tests.json["best"][metric]``), not by whether marginal intervals overlap."""
    rows = sorted((c for c in runs["cells"] if metric in c["aggregate"]),
                  key=lambda c: -c["aggregate"][metric]["mean"])
    if not rows:
        return None
    top = rows[0]
    skipped = [q for q in QUALITY_PREFERENCE[:QUALITY_PREFERENCE.index(metric)] if q in zero] \
        if metric in QUALITY_PREFERENCE else []
    why = ""
    if skipped:
        why = f", the main quality metric here ({join(skipped)} {'is' if len(skipped) == 1 else 'are'} 0 " \
              "for every run)"
    why = why + "," if why else ""
    level = " (corpus score)" if metric in CORPUS_METRICS else ""
    intervals = {r["name"]: r.get("intervals") or {} for r in runs["runs"]}
    single = next((intervals.get(n, {}).get(metric) for n in top.get("evaluated", top["runs"])), None)
    summary = top["aggregate"][metric]
    text = (f"The best run on {metric}{level}{why} is {top['cell']} at {fmt(summary['mean'], metric)} "
            f"({_seeds(summary, metric, single)})")
    if len(rows) > 1:
        low = rows[-1]
        text += f"; the lowest is {low['cell']} at {fmt(low['aggregate'][metric]['mean'], metric)}"
    text += "."
    if test:
        text += " " + _runner_up(metric, test)
    return Finding("best", text)


def _runner_up(metric: str, t: dict) -> str:
    """The paired test of the top cell against the runner-up, in one sentence."""
    if t["direction"] < 0:  # the estimate the test goes with disagrees with the ranking by mean
        t = {**t, "significant": False}
    est = fmt(abs(t["estimate"]), metric)
    ci = ""
    if t.get("ci_lo") is not None and t.get("ci_hi") is not None:
        ci = f" [{fmt(t['ci_lo'], metric)}, {fmt(t['ci_hi'], metric)}]"
    how = ("seeds as replicates" if not t["single_seed"] else
           f"one seed per cell, {t['n']} paired examples")
    verdict = ("so it is ahead" if t["significant"] else
               "so no cell is clearly best")
    if t["single_seed"] and t["significant"]:
        verdict += ", though with one seed per cell this may be the seed rather than the setting"
    return (f"On per-example (sentence-level) scores the top cell, {t['best']}, leads the runner-up, "
            f"{t['runner_up']}, by {est}{ci} ({t['test']}, {how}; {fmt_p(t['p_holm'])}, "
            f"{fmt_p(t.get('p_bh'))} report-wide): {verdict}.")


def agreement_finding(agreement: dict, runs: dict) -> Finding | None:
    """One sentence on how far strategies of the same model agree, against the seed-to-seed floor."""
    info = {r["name"]: r for r in runs["runs"]}
    pairs = []
    for p in agreement["pairs"]:
        a, b = info.get(p["a"]), info.get(p["b"])
        if not a or not b or p["spearman"]["mean"] is None or arm_of(a) == arm_of(b):
            continue
        if (a["model"], a["objective"], a["rag"]) == (b["model"], b["objective"], b["rag"]):
            pairs.append((a, b, p))
    if not pairs:
        return None
    means = [p["spearman"]["mean"] for _, _, p in pairs]
    words = [("strongly" if abs(x) >= 0.6 else "moderately" if abs(x) >= 0.3 else "weakly")
             for x in (min(means), max(means))]
    strength = words[0] if words[0] == words[1] else f"{words[0]} to {words[1]}"
    a, b, low = min(pairs, key=lambda t: t[2]["spearman"]["mean"])
    rho = low["spearman"]
    ci = f" [{fmt(rho['lo'])}, {fmt(rho['hi'])}]" if rho["lo"] is not None else ""
    span = fmt(min(means)) if len(pairs) == 1 else f"{fmt(min(means))} to {fmt(max(means))}"
    text = (f"Attributions of different strategies on the same model agree {strength}: mean Spearman {span} "
            f"over {plural(len(pairs), 'pair')} (lowest: {strategy(arm_of(a))} vs "
            f"{strategy(arm_of(b))} on {a['model']}, {fmt(rho['mean'])}{ci})")
    floor = agreement.get("noise_floor")
    if not floor:
        return Finding("agreement", text + "; no repeated seeds, so no noise floor to compare with.",
                       headline=False)
    if floor.get("degenerate"):
        return Finding("agreement", text + "; the seeds of a cell give identical attributions (no seed "
                       "variation), so there is no noise floor to compare with.", headline=False)
    f_rho = floor["spearman"]["mean"]
    below = [(x, y) for x, y, p in pairs
             if (p["spearman"]["hi"] if p["spearman"]["hi"] is not None else p["spearman"]["mean"]) < f_rho]
    if not below:
        return Finding("agreement", text + f"; none falls below the seed-to-seed floor of {fmt(f_rho)}.",
                       headline=False)
    named = join([f"{strategy(arm_of(x))} vs {strategy(arm_of(y))} on {x['model']}"
                  for x, y in below[:4]])
    more = f" and {len(below) - 4} more" if len(below) > 4 else ""
    return Finding("agreement", text + f"; {len(below)} of them ({named}{more}) fall below the seed-to-seed "
                   f"floor of {fmt(f_rho)}: those strategies disagree more than reseeding one run does.")


def failure_findings(runs: dict) -> list[Finding]:
    failed = runs["failures"]
    if not failed:
        return []
    listed = "; ".join(f"{f['run']} ({f['status']}{': ' + f['error'] if f['error'] else ''})" for f in failed)
    pronoun = "it is" if len(failed) == 1 else "they are"
    return [Finding("failures", f"{plural(len(failed), 'run')} did not finish, so {pronoun} missing from "
                    f"every comparison: {listed}.")]


def zero_finding(zero: list[str]) -> Finding | None:
    if not zero:
        return None
    verb = "is" if len(zero) == 1 else "are"
    return Finding("zero", f"{join(zero)} {verb} 0 for every run, so nothing is concluded from "
                   f"{'it' if len(zero) == 1 else 'them'}.", headline=False)


def overview(stats: dict) -> str:
    runs = stats["runs"]
    primary = [r for r in _primary(runs) if r["has_metrics"] or r["has_attributions"]]
    models = sorted({r["model"] for r in primary}, key=lambda m: (runs["sizes"].get(m) or 0, m))
    strategies = sorted({arm_of(r) for r in primary}, key=strategy_key)
    cells = {r["cell"] for r in primary if "cell" in r}
    every = [r for r in runs["runs"]
             if r.get("cell") in cells and (r["has_metrics"] or r["has_attributions"])]
    what = f"{len(primary)} runs" if len(every) <= len(primary) else (
        f"{len(primary)} cells ({len(every)} training runs, seeds as replicates; tables show each cell's "
        "mean over its seeds and their range)")
    return (f"{what} over {plural(len(models), 'model')} ({', '.join(models)}) and "
            f"{plural(len(strategies), 'strategy', 'strategies')} ({', '.join(strategies)}); "
            f"{runs['n_attributed']} with attributions; significance level {stats['tests']['alpha']} after "
            f"Holm correction{family_words(stats['tests'].get('family'))}.")


def family_words(family: dict | None) -> str:
    """The report-wide Benjamini–Hochberg family in words (empty for statistics without one)."""
    if not family:
        return ""
    if family["bh_threshold"] is None:
        cut = "none reaches its threshold"
    else:
        cut = f"threshold p ≤ {family['bh_threshold']:.3g}"
    return (f", and a false discovery rate of {family['q']} over all {plural(family['tests'], 'test')} "
            f"a finding could come from (Benjamini–Hochberg over "
            f"{plural(family.get('families', family['tests']), 'family', 'families')}; {cut})")


def digest(stats: dict, scale_metrics: list[str], cap: int = 12) -> Digest:
    """The findings section of a study: headline first, at most ``cap`` bullets.

    Failures, the best run, the one-sentence summaries and the caveats are always kept (so a cap
    smaller than those is exceeded); significant differences, scale trends and the rest fill
    what is left, one of each kind before a second of any, and a last bullet counts what was
    left out.
    """
    runs, tests = stats["runs"], stats["tests"]
    zero = zero_metrics(runs)
    skip = set(zero)
    main = main_metric(runs, zero)
    chosen = list(dict.fromkeys([m for m in [*scale_metrics, main] if m and m not in skip]))
    best_test = (tests.get("best") or {}).get(main)
    candidates = [*failure_findings(runs), *significant_differences(tests, skip),
                  best_run(runs, main, zero, best_test) if main else None, reliance(stats["category_shares"]),
                  *reliance_trends(stats["scale"]),
                  *scale_findings(stats["scale"], chosen), agreement_finding(stats["agreement"], runs),
                  *target_findings(stats.get("targets"), tests.get("confidence", 0.95)),
                  *not_significant(tests, skip), *too_small(tests, skip), zero_finding(zero)]
    candidates = [f for f in candidates if f is not None]
    required = [f for f in candidates if f.kind in REQUIRED]
    optional = [f for f in candidates if f.kind in OPTIONAL]
    budget = cap - len(required)
    if len(optional) > budget:
        budget -= 1  # room for the bullet that says what was left out
    # headline results before context; within each, one of every kind before a second of any,
    # and differences taken in turn from each kind of test so quality is not crowded out
    optional = _in_turn(optional)
    optional.sort(key=lambda f: not f.headline)
    keep: list[Finding] = []
    for headline in (True, False):
        for kind in OPTIONAL:
            first = next((f for f in optional if f.kind == kind and f.headline == headline), None)
            if first is not None and len(keep) < budget:
                keep.append(first)
        for f in optional:
            if f.headline == headline and f not in keep and len(keep) < budget:
                keep.append(f)
    chosen_ids = {id(f) for f in required + keep}
    shown = [f for f in candidates if id(f) in chosen_ids]  # reading order, not selection order
    context = sorted((f for f in shown if not f.headline), key=_context_rank)
    out = Digest(overview(stats), [f for f in shown if f.headline], context)
    dropped = [f for f in optional if id(f) not in chosen_ids]
    if dropped:
        out.context.append(Finding("left_out", _left_out(dropped), headline=False))
    return out


def _context_rank(f: Finding) -> int:
    """Context bullets in :data:`CONTEXT_ORDER`; a kind it does not name (a trend or difference
    demoted to context, e.g. from one seed) after those it does."""
    return CONTEXT_ORDER.index(f.kind) if f.kind in CONTEXT_ORDER else len(CONTEXT_ORDER)


def _in_turn(items: list[Finding]) -> list[Finding]:
    """Differences reordered strongest-of-each-topic first; everything else keeps its place."""
    buckets: dict[str, list[Finding]] = {}
    for f in items:
        if f.kind == "difference":
            buckets.setdefault(f.topic, []).append(f)
    turns = [f for i in range(max((len(b) for b in buckets.values()), default=0))
             for b in buckets.values() if i < len(b) for f in [b[i]]]
    it = iter(turns)
    return [next(it) if f.kind == "difference" else f for f in items]


def _left_out(dropped: list[Finding]) -> str:
    counts: dict[str, int] = {}
    for f in dropped:
        counts[f.kind] = counts.get(f.kind, 0) + 1
    words = [plural(n, LEFT_OUT_WORDS[k][0]) for k, n in counts.items()]
    tables = list(dict.fromkeys(LEFT_OUT_WORDS[k][1] for k in counts))
    return (f"To keep this list short, {join(words)} {'is' if len(dropped) == 1 else 'are'} not listed here; "
            f"see the {join(tables)} {'section' if len(tables) == 1 else 'sections'} below.")


def _primary(runs: dict) -> list[dict]:
    names = set(runs["primary"])
    return [r for r in runs["runs"] if r["name"] in names]
