"""The report's check sections: faithfulness, robustness and layer views, from ``checks/``.

Each section reads what its study stage wrote (:mod:`tunelens.explain.check_stages`), one JSON per
run, joins it to the run's identity (``runs/<run>.json``: never parsed out of a file name), and
says what it found in plain sentences, per strategy, beside one figure
(:mod:`tunelens.report.check_figures`). A section the study did not switch on is absent (None),
and so is its figure file: a figure from an earlier state must not linger.

- Faithfulness: per strategy and method, the comprehensiveness (AOPC: the mean drop of the
  target's log-probability when the top fractions of features are removed, in nats) against the
  same number for as many random features; the share of examples where the method beats random.
- Robustness: per strategy and probe kind, the share of scored probes whose rule did what the kind
  requires (followed a doubled number, stayed when a place was renamed), runs pooled, with
  a percentile bootstrap interval over probes (:class:`tunelens.evaluate.bootstrap.Resampler`).
- Layers: per strategy, its largest model (most layers, then parameters; seeds averaged): where
  its weights moved most, where its residual stream departed most from the base's, and how much the
  reference gained over the base at the last layer.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from tunelens.compare.runs import strategy_key
from tunelens.evaluate.bootstrap import Resampler
from tunelens.explain.check_stages import CHECK_STAGES, FAITHFULNESS, LAYERS, PROBES
from tunelens.explain.faithfulness import RANDOM
from tunelens.format import number, share
from tunelens.io import read_json
from tunelens.layout import RunIdentity, StudyLayout
from tunelens.report import check_figures
from tunelens.report.wording import join, plural
from tunelens.train.catalog import strategy_label

# what a probe kind's rule must do, as a phrase after "<strategy>'s rule ..."
PROBE_PHRASES = {"number": "followed a doubled number", "unit": "stayed when a quantity was restated "
                 "in another unit", "section": "followed a renumbered section",
                 "occupancy": "followed a renamed occupancy group",
                 "jurisdiction": "stayed when a place was renamed",
                 "person": "stayed when a phrase describing people was made neutral"}
BOOTSTRAP = {"samples": 1000, "seed": 0}


def read_checks(layout: StudyLayout, kind: str) -> list[tuple[RunIdentity, dict]]:
    """(identity, JSON) of every run with a ``kind`` check whose identity is recorded, by name."""
    folder = layout.checks / kind
    found = []
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        identity = layout.runs / path.name
        if identity.is_file():
            found.append((RunIdentity.from_dict(read_json(identity), origin=str(identity)),
                          read_json(path)))
    return found


def _arms(found: list[tuple[RunIdentity, dict]]) -> dict[str, list[tuple[RunIdentity, dict]]]:
    by_arm = defaultdict(list)
    for run, data in found:
        by_arm[run.arm].append((run, data))
    return {arm: by_arm[arm] for arm in sorted(by_arm, key=strategy_key)}


# -- faithfulness ------------------------------------------------------------------------------

def faithfulness_summary(found: list[tuple[RunIdentity, dict]]) -> dict[str, dict[str, dict]]:
    """{arm: {method: means over runs of comprehensiveness, deletion area, the random
    reference's, the share of examples beating random, runs and examples}} (random left out)."""
    out = {}
    for arm, runs in _arms(found).items():
        methods = sorted({m for _, d in runs for m in d["methods"] if m != RANDOM})
        table = {}
        for method in methods:
            have = [d for _, d in runs if method in d["methods"] and RANDOM in d["methods"]]
            if not have:
                continue
            table[method] = {
                "comprehensiveness": _mean(d["methods"][method].get("comprehensiveness") for d in have),
                "random": _mean(d["methods"][RANDOM].get("comprehensiveness") for d in have),
                "deletion_area": _mean(d["methods"][method].get("deletion_area") for d in have),
                "random_deletion": _mean(d["methods"][RANDOM].get("deletion_area") for d in have),
                "beats": _mean(d["methods"][method].get("beats_random_comprehensiveness") for d in have),
                "runs": len(have), "examples": sum(int(d.get("examples", 0)) for d in have)}
        if table:
            out[arm] = table
    return out


def faithfulness_findings(summary: dict[str, dict[str, dict]]) -> list[str]:
    """Per strategy: the most faithful method's top features against as many random ones."""
    found = []
    for arm, table in summary.items():
        method, row = max(table.items(), key=lambda kv: _key(kv[1]["comprehensiveness"]))
        cost, chance = number(row["comprehensiveness"], 2), number(row["random"], 2)
        who = strategy_label(arm)
        if _key(row["comprehensiveness"]) > _key(row["random"]):
            found.append(f"For {who}, {method}'s top tokens carry the rule: removing them costs {cost} "
                         f"nats against {chance} for as many random tokens ({method} beats random on "
                         f"{share(row['beats'] or 0.0)} of {row['examples']} examples, "
                         f"{plural(row['runs'], 'run')}).")
        else:
            found.append(f"For {who}, no method's top tokens matter more than random ones: the best, "
                         f"{method}, costs {cost} nats against {chance} for as many random tokens.")
    return found


# -- robustness ----------------------------------------------------------------------------------

def robustness_summary(found: list[tuple[RunIdentity, dict]]) -> dict[str, dict[str, dict]]:
    """{arm: {kind: rate over the arm's scored probes (runs pooled), interval, n, runs}}."""
    out = {}
    for arm, runs in _arms(found).items():
        table = {}
        kinds = [k for k in PROBE_PHRASES if any(k in d.get("kinds", {}) for _, d in runs)]
        for kind in kinds:
            mine = [r for _, d in runs for r in d.get("probes", []) if r.get("kind") == kind]
            values = [float(bool(r["correct"])) for r in mine
                      if r.get("status") == "scored" and r.get("correct") is not None]
            # whether the rule's text moved with the edit: readable even when no rule parses
            changed = _mean(float(bool(r["rule_changed"])) for r in mine if r.get("rule_changed") is not None)
            row = {"rate": None, "interval": None, "n": len(values), "runs": len(runs),
                   "changed": changed, "probes": len(mine)}
            if values:
                row["rate"] = float(np.mean(values))
                row["interval"] = Resampler(len(values), BOOTSTRAP["samples"], BOOTSTRAP["seed"]).mean(values)
            table[kind] = row
        out[arm] = table
    return out


def rate_text(row: dict) -> str:
    """``92% [85%, 97%]`` (no interval: the rate alone; nothing scored: a dash)."""
    if row.get("rate") is None:
        return "–"
    lo_hi = row.get("interval")
    return share(row["rate"]) + (f" [{share(lo_hi[0])}, {share(lo_hi[1])}]" if lo_hi else "")


MIN_PROBES = 5  # a kind is named in a sentence only with this many scored probes (the table has all)


def robustness_findings(summary: dict[str, dict[str, dict]]) -> list[str]:
    """Per strategy: the kind it handled best and the one it handled worst, among the kinds with
    at least ``MIN_PROBES`` scored probes (a rate of one probe would lead the sentence)."""
    found = []
    for arm, table in summary.items():
        rated = [(k, r) for k, r in table.items() if r["rate"] is not None]
        enough = [(k, r) for k, r in rated if r["n"] >= MIN_PROBES]
        scored = sorted(enough or rated, key=lambda kv: -kv[1]["rate"])
        if not scored:
            moved = [f"{share(r['changed'])} of {k}" for k, r in table.items() if r["changed"] is not None]
            found.append(f"Robustness: no probe of {strategy_label(arm)} could be scored (none of its "
                         "rules on the unedited clauses parse)"
                         + (f"; its text changed with the edit in {join(moved)} probes." if moved else "."))
            continue
        (best, b), (worst, w) = scored[0], scored[-1]
        text = (f"Robustness: {strategy_label(arm)}'s rule {PROBE_PHRASES[best]} in {rate_text(b)} "
                f"of {b['n']} probes")
        if worst != best:
            text += f", but {PROBE_PHRASES[worst]} in only {rate_text(w)} of {w['n']}"
        found.append(text + f" ({plural(b['runs'], 'run')}).")
    return found


def robustness_rows(found: list[tuple[RunIdentity, dict]], kinds: list[str]) -> list[dict]:
    """The table: per run, each kind's rate, interval and scored probes."""
    rows = []
    for run, data in sorted(found, key=lambda rd: (strategy_key(rd[0].arm), rd[0].name)):
        cells = []
        for kind in kinds:
            row = data.get("kinds", {}).get(kind) or {}
            cells.append(f"{rate_text(row)} ({row.get('scored', 0)})" if row else "–")
        rows.append({"name": run.name, "strategy": strategy_label(run.arm), "cells": cells})
    return rows


# -- layers --------------------------------------------------------------------------------------

def layer_findings(found: list[tuple[RunIdentity, dict]]) -> list[str]:
    """Per strategy, on its largest model (seeds averaged): where tuning acted."""
    found_text = []
    for arm, runs in _arms(found).items():
        size = max((d["layers"], d.get("parameters") or 0) for _, d in runs)
        model = next(r.model for r, d in runs if (d["layers"], d.get("parameters") or 0) == size)
        depth, same = size[0], [d for r, d in runs if r.model == model]
        change = np.mean([d["weight_change"] for d in same], axis=0)
        cka = np.nanmean([d["cka"] for d in same], axis=0)
        gain = np.mean([d["logit_lens"]["tuned"][-1] - d["logit_lens"]["base"][-1] for d in same])
        moved, departed = int(np.argmax(change)), int(np.nanargmin(cka)) if np.isfinite(cka).any() else 0
        found_text.append(
            f"{strategy_label(arm)} on {model} ({plural(depth, 'layer')}): the weights moved most in layer "
            f"{moved + 1} (‖ΔW‖/‖W‖ {number(change[moved], 4)}), the residual stream departed most "
            f"from the base's {'at the embeddings' if departed == 0 else f'after layer {departed}'} "
            f"(CKA {number(cka[departed])}), and the reference gained {number(gain, 2)} nats per "
            "token over the base at the last layer.")
    return found_text


# -- the sections --------------------------------------------------------------------------------

def sections(layout: StudyLayout, dpi: int) -> dict:
    """{"faithfulness", "robustness", "layers"}: each section's context, or None when absent."""
    from tunelens.report.html import data_uri

    read = {kind: read_checks(layout, kind) for kind in CHECK_STAGES}
    faith = faithfulness_summary(read[FAITHFULNESS])
    robust = robustness_summary(read[PROBES])
    paths = {kind: layout.figures / name for kind, name in check_figures.FILES.items()}
    drawn = {
        FAITHFULNESS: check_figures.faithfulness(faith, paths[FAITHFULNESS], dpi),
        PROBES: check_figures.robustness(robust, paths[PROBES], dpi),
        LAYERS: check_figures.layers(_arms(read[LAYERS]), paths[LAYERS], dpi),
    }
    kinds = [k for k in PROBE_PHRASES if any(k in t for t in robust.values())]
    return {
        "faithfulness": None if drawn[FAITHFULNESS] is None else {
            "findings": faithfulness_findings(faith), "figure": data_uri(drawn[FAITHFULNESS]),
            "rows": [{"strategy": strategy_label(arm), "method": m, **row}
                     for arm, table in faith.items() for m, row in table.items()]},
        "robustness": None if drawn[PROBES] is None else {
            "findings": robustness_findings(robust), "figure": data_uri(drawn[PROBES]),
            "kinds": kinds, "rows": robustness_rows(read[PROBES], kinds)},
        "layers": None if drawn[LAYERS] is None else {
            "findings": layer_findings(read[LAYERS]), "figure": data_uri(drawn[LAYERS])},
    }


def _mean(values) -> float | None:
    got = [float(v) for v in values if v is not None and np.isfinite(v)]
    return float(np.mean(got)) if got else None


def _key(x: float | None) -> float:
    return -np.inf if x is None else x
