"""``write_report``: a study folder in, one self-contained ``report.html`` and ``figures/*.png`` out.

The report reads what ``compare`` wrote in ``stats/``; when those files are missing or older than
the study's outputs (a cell was re-run), it runs ``compare_study`` first so the report never
shows numbers from a previous state of the study.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tunelens.compare import (
    STAT_FILES,
    compare_study,
    load_stats,
    read_attributions,
)
from tunelens.config import ComparisonConfig, ReportConfig, load_study
from tunelens.errors import TunelensError
from tunelens.io import write_text
from tunelens.report import figures
from tunelens.report.findings import digest
from tunelens.report.html import data_uri, render
from tunelens.report.token_spans import heatmaps, read_prompts

# the quality tables, each narrow enough to read without scrolling; metrics no family names go last
QUALITY_TABLES = (
    ("Similarity to the reference", ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "ngram_jaccard",
                                     "semantic_similarity", "exact_match")),
    ("Rule level", ("rule_parse_rate", "rule_field_accuracy", "rule_exec_accuracy", "rule_exec_agreement")),
    ("Judge and diversity", ("judge_accuracy", "judge_relevance", "distinct_1", "distinct_2", "self_bleu")),
)
LOWER_IS_BETTER = {"self_bleu", "ter"}
FIGURE_FILES = {"training": "training_loss.png", "concentration": "concentration.png",
                "categories": "category_shares.png", "scale": "scale.png", "agreement": "agreement.png"}
INPUT_GLOBS = ("status.json", "models/*/run.json", "metrics/*.json", "attributions/*.parquet")


def write_report(study_dir: Path, config: ReportConfig | None = None, out: Path | None = None,
                 comparison: ComparisonConfig | None = None) -> Path:
    """Write the HTML report of a study (default ``<study>/report.html``) and return its path.

    ``comparison`` applies only when the statistics have to be (re)computed; by default the
    study's own ``study.yaml`` settings, else the built-in defaults.
    """
    cfg = config or ReportConfig()
    study_dir = Path(study_dir)
    if not study_dir.is_dir():
        raise TunelensError(f"{study_dir}: no such study folder")
    stats = _fresh_stats(study_dir, comparison)
    fig_dir = study_dir / "figures"
    files = {k: fig_dir / f for k, f in FIGURE_FILES.items()}
    paths = {
        "training": figures.training(stats, files["training"], cfg.dpi),
        "concentration": figures.concentration(stats, files["concentration"], cfg.dpi),
        "categories": figures.categories(stats, files["categories"], cfg.dpi),
        "scale": figures.scale(stats, cfg.scale_metrics, files["scale"], cfg.dpi),
        "agreement": figures.agreement(stats, files["agreement"], cfg.dpi),
    }
    for key, path in paths.items():  # a figure the study no longer supports must not linger
        if path is None and files[key].exists():
            files[key].unlink()
    runs = stats["runs"]["runs"]
    primary = [r for r in runs if r["name"] in set(stats["runs"]["primary"])]
    primary.sort(key=lambda r: (r["params"] or 0, r["model"], figures.strategy_key(r["strategy"]),
                                r["objective"], r["rag"]))
    context = {
        "title": cfg.title,
        "study": str(study_dir),
        "written": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "n_runs": len(runs),
        "findings": digest(stats, cfg.scale_metrics, cfg.max_findings),
        "figures": {k: data_uri(v) for k, v in paths.items()},
        "quality": _quality(runs),
        "training": _training(runs),
        "tests": _tests(stats["tests"], categories=False),
        "category_tests": _tests(stats["tests"], categories=True),
        "alpha": stats["tests"]["alpha"],
        "top_k": stats["concentration"]["top_k"],
        "concentration": stats["concentration"]["per_run"],
        "scale": _scale(stats["scale"]),
        "n_sizes": len({v for v in stats["runs"]["sizes"].values() if v}),
        "agreement": stats["agreement"]["pairs"],
        "floor": stats["agreement"]["noise_floor"],
        "heatmaps": _heatmaps(study_dir, primary, cfg),
        "category_colours": figures.CATEGORY_COLOURS,
        "failures": stats["runs"]["failures"],
    }
    out = Path(out) if out is not None else study_dir / "report.html"
    write_text(out, render(context))
    return out


def _fresh_stats(study_dir: Path, comparison: ComparisonConfig | None) -> dict:
    stats_dir = study_dir / "stats"
    stats = load_stats(stats_dir)
    if stats is not None:
        newest_input = max((p.stat().st_mtime for g in INPUT_GLOBS for p in study_dir.glob(g)), default=0.0)
        oldest_stat = min((stats_dir / f"{s}.json").stat().st_mtime for s in STAT_FILES)
        if newest_input <= oldest_stat:
            return stats
    if comparison is None:
        yaml_path = study_dir / "study.yaml"
        comparison = load_study(yaml_path).comparison if yaml_path.exists() else ComparisonConfig()
    return compare_study(study_dir, comparison)


def _quality(runs: list[dict]) -> dict:
    """Quality tables by family of metric; a metric that is 0 for every run is named, not tabled."""
    rows = [r for r in runs if r["aggregate"]]
    present = list(dict.fromkeys(k for r in rows for k in r["aggregate"]))
    zero = [k for k in present if all(r["aggregate"].get(k) in (0, None) for r in rows)
            and any(r["aggregate"].get(k) == 0 for r in rows)]
    families = [(title, [k for k in keys if k in present]) for title, keys in QUALITY_TABLES]
    named = {k for _, keys in QUALITY_TABLES for k in keys}
    rest = [k for k in present if k not in named]
    if rest:
        families[-1] = (families[-1][0] if families[-1][1] else "Other metrics", families[-1][1] + rest)
    tables = []
    for title, keys in families:
        columns = [k for k in keys if k not in zero]
        if columns:
            body = [{"name": r["name"], "cells": _quality_cells(r, columns, rows)} for r in rows]
            tables.append({"title": title, "columns": columns, "rows": body})
    return {"tables": tables, "zero": zero}


def _quality_cells(run: dict, columns: list[str], rows: list[dict]) -> list[dict]:
    cells = []
    for c in columns:
        v = run["aggregate"].get(c)
        digits = 1 if c in ("bleu", "chrf") else 3
        if v is None:
            cells.append({"value": "–", "interval": "", "best": False})
            continue
        values = [r["aggregate"][c] for r in rows if r["aggregate"].get(c) is not None]
        target = min(values) if c in LOWER_IS_BETTER else max(values)
        iv = run["intervals"].get(c)
        cells.append({"value": f"{v:.{digits}f}",
                      "interval": f"{iv[0]:.{digits}f} – {iv[1]:.{digits}f}" if iv else "",
                      "best": v == target and len(set(values)) > 1})
    return cells


def _training(runs: list[dict]) -> list[dict]:
    seen, out = set(), []
    for r in runs:
        if not r["training"] or r["model_dir"] in seen:
            continue
        seen.add(r["model_dir"])
        t = r["training"]
        share = "–"
        if t.get("trainable_params") and t.get("total_params"):
            share = f"{t['trainable_params'] / t['total_params']:.2%}"
        out.append({"name": r["model_dir"], "strategy": r["strategy"], "t": t, "share": share})
    return out


def _tests(tests: dict, categories: bool) -> list[dict]:
    rows = []
    for g in tests["groups"]:
        where = f"{g['model']} · {g['objective']}" + (" · rag" if g["rag"] else "")
        for metric, m in g["metrics"].items():
            if (m["kind"] == "category") != categories:
                continue
            friedman = (m.get("friedman") or {}).get("p")
            for r in m["pairwise"]:
                rows.append({"where": where, "metric": metric, "friedman": friedman, "a": r["a"], "b": r["b"],
                             "mean_a": r["mean_a"], "mean_b": r["mean_b"], "p_holm": r["p_holm"],
                             "perm": r["permutation_p_holm"], "r": r["rank_biserial"], "n": m["n"],
                             "significant": r["significant"]})
    return rows


def _scale(scale: dict) -> list[dict]:
    rows = []
    for c in scale["curves"]:
        fit = c["fit"] or {}
        slope = {"mean": fit.get("slope"), "lo": fit.get("slope_lo"), "hi": fit.get("slope_hi")}
        rows.append({"who": f"{c['strategy']} · {c['objective']}" + (" · rag" if c["rag"] else ""),
                     "metric": c["metric"], "n": len(c["points"]), "slope": slope, "r2": fit.get("r2"),
                     "plateau": c["plateau"]["size"], "support": c["plateau"]["support"]})
    return rows


def _heatmaps(study_dir: Path, primary: list[dict], cfg: ReportConfig) -> list[dict]:
    if cfg.heatmap_examples == 0:
        return []
    chosen = [r for r in primary if r["has_attributions"]][: cfg.heatmap_runs]
    frames = {r["name"]: read_attributions(study_dir / "attributions" / f"{r['name']}.parquet")
              for r in chosen}
    prompts = {}
    for r in chosen:
        pred = study_dir / "predictions" / f"{r['name']}.jsonl"
        prompts[r["name"]] = read_prompts(pred if pred.exists() else None)
    return heatmaps(chosen, frames, prompts, cfg.heatmap_examples, cfg.heatmap_runs)
