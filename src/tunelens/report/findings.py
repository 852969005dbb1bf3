"""Plain sentences drawn from the statistics, each carrying the numbers it rests on.

A finding states a difference only when its Holm-adjusted p is below alpha, and says "no
significant difference" otherwise — with the same numbers, so a reader sees how close it was.
Nothing here computes a statistic: every number comes from ``stats/*.json``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunelens.report.figures import human_count

CONCENTRATION_WORDS = {"gini": ("Gini", True), "top_k_share": ("top-k share", True),
                       "entropy": ("normalised entropy", False)}
QUALITY_PREFERENCE = ("rule_exec_accuracy", "rule_field_accuracy", "chrf", "semantic_similarity",
                      "bleu", "rougeL", "exact_match")
PERCENT_METRICS = {"bleu", "chrf"}


TOPICS = {"overview": "Overview", "failures": "Failures", "concentration": "Attribution concentration",
          "quality": "Quality", "categories": "Token categories", "scale": "Scale",
          "agreement": "Agreement"}


@dataclass
class Finding:
    topic: str  # concentration | quality | categories | scale | agreement | failures | overview
    text: str
    significant: bool | None = None


def fmt_p(p: float | None) -> str:
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def fmt(x: float | None, metric: str = "") -> str:
    if x is None:
        return "n/a"
    return f"{x:.1f}" if metric in PERCENT_METRICS else f"{x:.2f}"


def _where(g: dict) -> str:
    return f"{g['model']} ({g['objective']}{', with retrieval' if g['rag'] else ''})"


def _friedman(g: dict, metric: str, m: dict, alpha: float, label: str) -> Finding | None:
    f = m.get("friedman")
    if not f:
        return None
    names = ", ".join(m["labels"][:-1]) + f" and {m['labels'][-1]}"
    verb = "differs" if f["p"] < alpha else "shows no significant difference"
    return Finding("concentration" if metric in CONCENTRATION_WORDS else "quality",
                   f"On {_where(g)}, {label} {verb} across {names} (Friedman χ² = {f['statistic']:.2f}, "
                   f"{fmt_p(f['p'])}, Kendall's W = {f['kendall_w']:.2f}, n = {f['n']} examples).",
                   f["p"] < alpha)


def _pair_tail(r: dict, n: int) -> str:
    return (f"{fmt_p(r['p_holm'])} (Wilcoxon, Holm-adjusted; rank-biserial r = {r['rank_biserial']:+.2f}; "
            f"permutation {fmt_p(r['permutation_p_holm'])}; n = {n} examples)")


def concentration_findings(tests: dict) -> list[Finding]:
    alpha, out = tests["alpha"], []
    for g in tests["groups"]:
        m = g["metrics"].get("gini")
        if not m:
            continue
        if (f := _friedman(g, "gini", m, alpha, "attribution concentration (Gini)")) is not None:
            out.append(f)
        for r in m["pairwise"]:
            nums = f"Gini {fmt(r['mean_a'])} vs {fmt(r['mean_b'])}"
            if r["significant"]:
                more, less = (r["a"], r["b"]) if r["mean_diff"] > 0 else (r["b"], r["a"])
                if more != r["a"]:
                    nums = f"Gini {fmt(r['mean_b'])} vs {fmt(r['mean_a'])}"
                text = (f"On {_where(g)}, {more} attributions are more concentrated than {less}: "
                        f"{nums}, {_pair_tail(r, m['n'])}.")
            else:
                text = (f"On {_where(g)}, no significant difference in attribution concentration between "
                        f"{r['a']} and {r['b']}: {nums}, {_pair_tail(r, m['n'])}.")
            out.append(Finding("concentration", text, r["significant"]))
    return out


def quality_findings(tests: dict, runs: dict) -> list[Finding]:
    alpha, out = tests["alpha"], []
    for g in tests["groups"]:
        metric = next((q for q in QUALITY_PREFERENCE if q in g["metrics"]), None)
        if metric is None:
            continue
        m = g["metrics"][metric]
        if (f := _friedman(g, metric, m, alpha, metric)) is not None:
            out.append(f)
        for r in m["pairwise"]:
            nums = f"{fmt(r['mean_a'], metric)} vs {fmt(r['mean_b'], metric)}"
            if r["significant"]:
                better, worse = (r["a"], r["b"]) if r["mean_diff"] > 0 else (r["b"], r["a"])
                if better != r["a"]:
                    nums = f"{fmt(r['mean_b'], metric)} vs {fmt(r['mean_a'], metric)}"
                text = f"On {_where(g)}, {better} scores higher than {worse} on {metric}: {nums}, "
            else:
                text = (f"On {_where(g)}, no significant difference in {metric} between {r['a']} and "
                        f"{r['b']}: {nums}, ")
            out.append(Finding("quality", text + _pair_tail(r, m["n"]) + ".", r["significant"]))
    best = _best_run(runs, QUALITY_PREFERENCE)
    if best:
        out.insert(0, Finding("quality", best))
    return out


def _best_run(runs: dict, preference) -> str | None:
    rows = [r for r in runs["runs"] if r["aggregate"]]
    metric = next((q for q in preference if any(q in r["aggregate"] for r in rows)), None)
    if metric is None:
        return None
    scored = sorted((r for r in rows if metric in r["aggregate"]), key=lambda r: -r["aggregate"][metric])
    top = scored[0]
    iv = top["intervals"].get(metric)
    ci = f" (interval {fmt(iv[0], metric)} to {fmt(iv[1], metric)})" if iv else ""
    tail = ""
    if len(scored) > 1:
        low = scored[-1]
        tail = f"; the lowest is {low['name']} at {fmt(low['aggregate'][metric], metric)}"
    return (f"The best run on {metric} is {top['name']} at {fmt(top['aggregate'][metric], metric)}{ci}"
            f"{tail}.")


def category_findings(shares: dict, tests: dict) -> list[Finding]:
    out = []
    for strategy, row in shares["per_strategy"].items():
        cat, share = max(row["shares"].items(), key=lambda kv: kv[1] or 0)
        out.append(Finding("categories", f"{strategy} puts the largest share of its attribution on "
                           f"{cat} tokens ({share:.0%}, mean over {len(row['runs'])} run(s))."))
    for g in tests["groups"]:
        sig = [(metric, r) for metric, m in g["metrics"].items() if m["kind"] == "category"
               for r in m["pairwise"] if r["significant"]]
        if not sig:
            continue
        metric, r = max(sig, key=lambda mr: abs(mr[1]["mean_diff"]))
        cat = metric.removeprefix("share_")
        more, less = (r["a"], r["b"]) if r["mean_diff"] > 0 else (r["b"], r["a"])
        hi, lo = max(r["mean_a"], r["mean_b"]), min(r["mean_a"], r["mean_b"])
        n = g["metrics"][metric]["n"]
        out.append(Finding("categories", f"On {_where(g)}, the largest category difference: {more} puts more "
                           f"attribution on {cat} tokens than {less}: {hi:.0%} vs {lo:.0%}, "
                           f"{_pair_tail(r, n)}.", True))
    return out


def scale_findings(scale: dict, metrics: list[str]) -> list[Finding]:
    out = []
    for c in scale["curves"]:
        if c["metric"] not in metrics or not c["fit"]:
            continue
        fit, metric = c["fit"], c["metric"]
        who = c["strategy"] + f" ({c['objective']}{', with retrieval' if c['rag'] else ''})"
        ci = ""
        if fit.get("slope_lo") is not None:
            ci = f" ({scale['confidence']:.0%} CI {fit['slope_lo']:+.3f} to {fit['slope_hi']:+.3f})"
        sizes = [p["params"] for p in c["points"]]
        text = (f"For {who}, {metric} changes by {fit['slope']:+.3f} per decade of parameters{ci} "
                f"across {len(sizes)} sizes ({human_count(min(sizes))} to {human_count(max(sizes))})")
        plateau = c["plateau"]
        if plateau["size"] is not None:
            support = ("" if plateau["support"] is None
                       else f", found in {plateau['support']:.0%} of resamples")
            text += (f"; it plateaus from {human_count(plateau['size'])} parameters (gain below "
                     f"{scale['threshold_per_decade']} per decade{support}).")
        else:
            text += f"; no plateau up to {human_count(max(sizes))} parameters."
        out.append(Finding("scale", text))
    return out


def agreement_findings(agreement: dict, runs: dict) -> list[Finding]:
    info = {r["name"]: r for r in runs["runs"]}
    floor = agreement.get("noise_floor")
    floor_rho = floor["spearman"]["mean"] if floor else None
    out = []
    for p in agreement["pairs"]:
        a, b = info.get(p["a"], {}), info.get(p["b"], {})
        same_group = (a.get("model"), a.get("objective"), a.get("rag")) == (
            b.get("model"), b.get("objective"), b.get("rag"))
        rho = p["spearman"]
        if not same_group or rho["mean"] is None:
            continue
        size = abs(rho["mean"])
        strength = "strongly" if size >= 0.6 else "moderately" if size >= 0.3 else "weakly"
        ci = f" [{rho['lo']:.2f}, {rho['hi']:.2f}]" if rho["lo"] is not None else ""
        jsd = p["js_divergence"]["mean"]
        text = (f"On {a['model']}, attributions of {a['strategy']} and {b['strategy']} agree {strength}: "
                f"mean Spearman {rho['mean']:.2f}{ci}, top-{agreement['top_k']} overlap "
                f"{fmt(p['top_k_overlap']['mean'])}, JS divergence {fmt(jsd)} over {p['n_examples']} "
                "examples")
        if floor_rho is not None:
            lo = rho["lo"] if rho["lo"] is not None else rho["mean"]
            hi = rho["hi"] if rho["hi"] is not None else rho["mean"]
            if hi < floor_rho:
                text += (f", below the seed-to-seed floor of {floor_rho:.2f}: the strategies disagree more "
                         "than reseeding one run does.")
            elif lo > floor_rho:
                text += f", above the seed-to-seed floor of {floor_rho:.2f}."
            else:
                text += (f", within the seed-to-seed floor of {floor_rho:.2f}: no more disagreement than "
                         "reseeding gives.")
        else:
            text += " (no repeated seeds, so no noise floor to compare with)."
        out.append(Finding("agreement", text))
    return out


def failure_findings(runs: dict) -> list[Finding]:
    failed = runs["failures"]
    if not failed:
        return []
    listed = "; ".join(f"{f['run']} ({f['status']}{': ' + f['error'] if f['error'] else ''})" for f in failed)
    return [Finding("failures", f"{len(failed)} of {len(runs['runs'])} runs did not finish: {listed}.")]


def findings(stats: dict, scale_metrics: list[str]) -> list[Finding]:
    """Every finding of a study, in reading order."""
    runs = stats["runs"]
    primary = [r for r in runs["runs"] if r["name"] in set(runs["primary"])
               and (r["has_metrics"] or r["has_attributions"])]
    models = sorted({r["model"] for r in primary})
    strategies = sorted({r["strategy"] for r in primary})
    overview = Finding("overview", f"{len(primary)} runs over {len(models)} model(s) "
                       f"({', '.join(models)}) and {len(strategies)} strategies ({', '.join(strategies)}); "
                       f"{runs['n_attributed']} with attributions; significance level "
                       f"{stats['tests']['alpha']} after Holm correction.")
    chosen = [m for m in scale_metrics if any(c["metric"] == m for c in stats["scale"]["curves"])]
    return [overview, *failure_findings(runs), *concentration_findings(stats["tests"]),
            *quality_findings(stats["tests"], runs),
            *category_findings(stats["category_shares"], stats["tests"]),
            *scale_findings(stats["scale"], chosen), *agreement_findings(stats["agreement"], runs)]


def by_topic(items: list[Finding]) -> list[tuple[str, list[Finding]]]:
    """Findings grouped under a heading per topic, topics in reading order."""
    out = []
    for topic, heading in TOPICS.items():
        chosen = [f for f in items if f.topic == topic]
        if chosen:
            out.append((heading, chosen))
    return out
