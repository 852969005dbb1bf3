"""``write_report``: a study folder in, one self-contained ``report.html`` and ``figures/*.png`` out.

The report reads what ``compare`` wrote in ``stats/``; when those files are missing, or the
content fingerprint of the files compare reads no longer matches the one stored with them
(``stats/inputs.json``: a cell was re-run, a metrics file edited), it runs ``compare_study``
first, so the report never shows numbers from a previous state of the study. Fingerprints hash
content, not modification times: a copied or touched study is not recomputed.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from tunelens.compare import compare_study, input_fingerprint, load_stats, strategy_key
from tunelens.compare.api import stored_fingerprint
from tunelens.compare.runs import read_targets
from tunelens.config import ComparisonConfig, ReportConfig, load_study
from tunelens.errors import TunelensError
from tunelens.explain.heatmap import legend
from tunelens.io import write_text
from tunelens.layout import RunIdentity, StudyLayout
from tunelens.report import figures, tables, targets
from tunelens.report.checks import sections as check_sections
from tunelens.report.findings import digest
from tunelens.report.html import data_uri, render
from tunelens.report.rewards import section as rewards_section
from tunelens.report.tables import QUALITY_TABLES
from tunelens.report.token_spans import read_texts, side_by_side
from tunelens.report.tuning import section as tuning_section
from tunelens.report.wording import arm_of

# QUALITY_TABLES is tables', re-exported for callers that know it from here
__all__ = ["FIGURE_FILES", "QUALITY_TABLES", "fresh_stats", "write_report"]
FIGURE_FILES = {"training": "training_loss.png", "concentration": "concentration.png",
                "categories": "category_shares.png", "scale": "scale.png", "agreement": "agreement.png"}


def write_report(study_dir: Path, config: ReportConfig | None = None, out: Path | None = None,
                 comparison: ComparisonConfig | None = None) -> Path:
    """Write the HTML report of a study (default ``<study>/report.html``) and return its path.

    ``comparison`` applies only when the statistics have to be (re)computed; by default the
    study's own ``study.yaml`` settings, else the built-in defaults.
    """
    cfg = config or ReportConfig()
    layout = StudyLayout(Path(study_dir))
    if not layout.root.is_dir():
        raise TunelensError(f"{layout.root}: no such study folder")
    stats = fresh_stats(layout.root, comparison)
    runs = stats["runs"]["runs"]
    primary = [r for r in runs if r["name"] in set(stats["runs"]["primary"])]
    primary.sort(key=lambda r: (r["params"] or 0, r["model"], strategy_key(arm_of(r)),
                                r["objective"], r["rag"]))
    tests = _tests(stats["tests"], categories=False)
    cells = stats["runs"].get("cells") or []
    shares = stats["category_shares"]
    categories = [c for c in shares["categories"] if c != "OTHER"]
    conc = stats["concentration"]
    context = {
        "title": cfg.title,
        "study": str(layout.root),
        "written": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "n_runs": len(runs),
        "n_cells": len(cells),
        "findings": digest(stats, cfg.scale_metrics, cfg.max_findings),
        "figures": {k: data_uri(v) for k, v in _figures(layout, stats, cfg).items()},
        "quality": tables.quality(cells, runs),
        "training": tables.training(cells),
        "tests": [t for t in tests if t["significant"]],
        "other_tests": [t for t in tests if not t["significant"]],
        "category_tests": _tests(stats["tests"], categories=True),
        "enrichment": tables.enrichment(shares.get("enrichment_per_cell") or {},
                                        shares.get("enrichment") or {}, cells, categories),
        "enrichment_categories": categories,
        "alpha": stats["tests"]["alpha"],
        "family": stats["tests"].get("family"),
        "top_k": conc["top_k"],
        "concentration": tables.concentration(conc.get("per_cell") or {}, conc["per_run"], cells),
        "feature_level": conc.get("feature_level", "token"),
        "scale": _scale(stats["scale"]),
        "n_sizes": len({v for v in stats["runs"]["sizes"].values() if v}),
        "agreement": stats["agreement"]["pairs"],
        "floor": stats["agreement"]["noise_floor"],
        "targets": targets.section(stats["targets"], stats["tests"].get("confidence", 0.95)),
        "heatmaps": _heatmaps(layout, primary, cfg, stats["targets"]),
        "heatmap_legend": legend(),
        "failures": stats["runs"]["failures"],
        "tuning": tuning_section(layout.study_yaml),
        "rewards": rewards_section(layout, cfg.dpi),
        "checks": check_sections(layout, cfg.dpi),
    }
    out = Path(out) if out is not None else layout.report
    write_text(out, render(context))
    return out


def _figures(layout: StudyLayout, stats: dict, cfg: ReportConfig) -> dict[str, Path | None]:
    files = {k: layout.figures / f for k, f in FIGURE_FILES.items()}
    paths = {
        "training": figures.training(stats, files["training"], cfg.dpi),
        "concentration": figures.concentration(stats, files["concentration"], cfg.dpi),
        "categories": figures.categories(stats, files["categories"], cfg.dpi),
        "scale": figures.scale(stats, cfg.scale_metrics, files["scale"], cfg.dpi),
        "agreement": figures.agreement(stats, files["agreement"], cfg.dpi),
    }
    for key, path in paths.items():
        if path is None:
            figures.drop_figure(files[key])
    return paths


def fresh_stats(study_dir: Path, comparison: ComparisonConfig | None = None) -> dict:
    """The study's statistics: those in ``stats/`` if their input fingerprint still matches the
    study's files, else computed again (with ``comparison``, or the study's own settings)."""
    layout = StudyLayout(Path(study_dir))
    stats = load_stats(layout.stats)
    if stats is not None and stored_fingerprint(layout.stats) == input_fingerprint(layout.root):
        return stats
    if comparison is None:
        yaml_path = layout.study_yaml
        comparison = load_study(yaml_path).comparison if yaml_path.exists() else ComparisonConfig()
    return compare_study(layout.root, comparison)


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
                             "perm": r.get("permutation_p_holm"), "r": r["rank_biserial"], "n": m["n"],
                             "significant": r["significant"], "p_bh": r.get("p_bh"),
                             "estimate": r.get("estimate"), "ci": [r.get("ci_lo"), r.get("ci_hi")],
                             "test": r.get("test", "wilcoxon"), "single_seed": r.get("single_seed", True)})
    return rows


def _scale(scale: dict) -> list[dict]:
    rows = []
    for c in scale["curves"]:
        fit, trend = c["fit"] or {}, c.get("trend") or {}
        slope = {"mean": trend.get("slope", fit.get("slope")), "lo": trend.get("lo"), "hi": trend.get("hi")}
        level = " (sentence-level test)" if c.get("test_level") == "sentence" else ""
        plateau = c["plateau"] if c.get("verdict") == "plateau" else {}
        verdict = c.get("verdict")
        tested = plateau if verdict == "plateau" else trend if verdict in ("rising", "falling") else {}
        if tested.get("significant") is False:  # its test did not survive the report-wide correction
            verdict = f"{verdict} (not significant after correction)"
        rows.append({"who": f"{arm_of(c)} · {c['objective']}" + (" · rag" if c["rag"] else ""),
                     "metric": c["metric"] + level, "n": len(c["points"]), "slope": slope,
                     "r2": fit.get("r2"), "p": trend.get("p"), "verdict": verdict,
                     "plateau": plateau.get("size"), "support": plateau.get("support")})
    return rows


def _heatmaps(layout: StudyLayout, primary: list[dict], cfg: ReportConfig, explained: dict) -> dict:
    """The heat-map examples: each run's primary seed, under every target the study explained
    (reference and generation side by side)."""
    shown = [t for t in explained.get("targets") or [explained.get("main", "reference")]]
    if cfg.heatmap_examples == 0:
        return {"targets": shown, "examples": []}
    chosen = [r for r in primary if r["has_attributions"]][: cfg.heatmap_runs]
    frames: dict[str, dict] = {t: {} for t in shown}
    texts = {}
    for r in chosen:
        run = RunIdentity.from_dict(r, origin=f"{layout.stats}/runs.json")
        by_target = read_targets(layout.attributions(run))
        for t in shown:
            frames[t][r["name"]] = by_target[t]
        pred = layout.predictions(run)
        texts[r["name"]] = read_texts(pred if pred.exists() else None)
    return {"targets": shown,
            "examples": side_by_side(chosen, frames, texts, cfg.heatmap_examples, cfg.heatmap_runs)}
