"""The report over seeds and targets: one row per cell (mean, seed range, n), the best run by the
number the tables show, and reference vs generation attributions side by side with their tests."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from test_compare import CLAUSE, FAST, _scores, _spans, rid, write_run

from tunelens.compare import compare_study
from tunelens.compare.multiplicity import collect
from tunelens.config import ReportConfig
from tunelens.layout import StudyLayout
from tunelens.report import write_report
from tunelens.report.findings import digest


def _section(html: str, name: str, following: str) -> str:
    return html[html.index(f'<section id="{name}">'):html.index(f'<section id="{following}">')]


def _add_generation(study, run, kind: str, seed: int) -> None:
    """Give a run's attribution table a second target: the same examples explained on its generation."""
    path = StudyLayout(study).attributions(run)
    ref = pd.read_parquet(path).assign(target="reference")
    rng = np.random.default_rng(seed)
    gen = []
    for example in ref["example_id"].unique():
        scores = _scores(kind, rng)
        gen += [{"example_id": example, "position": pos, "token": tok, "start": a, "end": b, "category": cat,
                 "score": float(s), "target": "generation"}
                for pos, ((tok, cat), (a, b), s) in enumerate(zip(CLAUSE, _spans(), scores, strict=True))]
    pd.concat([ref, pd.DataFrame(gen)]).to_parquet(path)


@pytest.fixture(scope="module")
def seeded(tmp_path_factory):
    """full and lora on one model with seeds 0, 1, 2; qlora with seed 0 only. Explained on the reference
    (spread) and on the generation: full's generation is peaked (far more concentrated), lora's spread."""
    study = tmp_path_factory.mktemp("seeds") / "study"
    study.mkdir()
    for seed in (0, 1, 2):
        for strategy, quality in (("full", 0.8), ("lora", 0.4)):
            run = rid("s", strategy, seed=seed)
            write_run(study, run, 1e6, "spread", quality + 0.05 * seed, 20, 100 * seed + len(strategy))
            _add_generation(study, run, "peaked" if strategy == "full" else "spread", 7 + seed)
    write_run(study, rid("s", "qlora", seed=0), 1e6, "spread", 0.4, 20, 55)
    # corpus chrF ranks lora above full while its sentence-level chrF is far lower: the best run is
    # the one the tables rank first, the number they show (tests.json["best"] follows it)
    for seed in (0, 1, 2):
        path = StudyLayout(study).metrics(rid("s", "lora", seed=seed))
        raw = json.loads(path.read_text())
        raw["aggregate"]["chrf"] = 95.0 + seed
        path.write_text(json.dumps(raw))
    stats = compare_study(study, FAST)
    report = write_report(study, ReportConfig(heatmap_examples=2))
    return study, stats, report.read_text(encoding="utf-8")


def test_cells_summarise_every_seed(seeded):
    _, stats, _ = seeded
    cells = {c["cell"]: c for c in stats["runs"]["cells"]}
    assert set(cells) == {"s__full__instruct", "s__lora__instruct", "s__qlora__instruct"}
    runs = {r["name"]: r for r in stats["runs"]["runs"]}
    full = cells["s__full__instruct"]
    assert full["seeds"] == [0, 1, 2] and full["runs"] == [f"s__full__instruct__s{i}" for i in range(3)]
    per_seed = [runs[n]["aggregate"]["rule_exec_accuracy"] for n in full["runs"]]
    assert full["aggregate"]["rule_exec_accuracy"] == pytest.approx(
        {"mean": np.mean(per_seed), "min": min(per_seed), "max": max(per_seed), "n": 3})
    assert cells["s__qlora__instruct"]["aggregate"]["chrf"]["n"] == 1
    assert full["training"]["val_loss_after"]["n"] == 3
    gini = stats["concentration"]["per_cell"]["s__full__instruct"]["gini"]
    by_run = [np.mean([row["gini"] for row in stats["concentration"]["per_example"].get(n, [])])
              for n in full["runs"][:1]]
    assert gini["n"] == 3 and gini["min"] <= by_run[0] <= gini["max"]
    enrichment = stats["category_shares"]["enrichment_per_cell"]
    assert enrichment["s__lora__instruct"]["NUMBER"]["n"] == 3
    # a strategy's enrichment (the reliance sentence, the figure) is its cells' seed means, not a first seed
    assert stats["category_shares"]["per_strategy"]["full"]["enrichment"]["NUMBER"] == pytest.approx(
        enrichment["s__full__instruct"]["NUMBER"]["mean"])
    reliance = next(f.text for f in digest(stats, ["chrf"], cap=30).bullets if f.kind == "reliance")
    assert "mean over cells, each over its seeds" in reliance


def test_every_run_table_has_one_row_per_cell_with_the_seed_range(seeded):
    _, stats, html = seeded
    quality = _section(html, "quality", "training")
    assert "__s0" not in quality and "__s1" not in quality
    assert quality.count("<td class=\"l\">s__full__instruct</td>") == 2  # one row in each quality table
    chrf = stats["runs"]["cells"][1]["aggregate"]["chrf"]  # lora: corpus chrF 95, 96, 97
    assert chrf == {"mean": 96.0, "min": 95.0, "max": 97.0, "n": 3}
    assert '96.0<span class="iv">95.0 – 97.0</span>' in quality
    # qlora has one seed: the row says so, each value gives its interval over examples instead
    assert '<td class="l">s__qlora__instruct</td><td class="l">0 (n = 1)</td>' in quality
    assert '<span class="iv">examples ' in quality
    for name, following in (("training", "tests"), ("concentration", "categories"), ("categories", "scale")):
        section = _section(html, name, following)
        assert "__s0" not in section.split("<img")[0] + section.split(">")[-1], name
        assert "s__full__instruct</td>" in section and "0, 1, 2</td>" in section, name
    concentration = _section(html, "concentration", "categories")
    assert concentration.count("s__full__instruct</td>") == 1


def test_best_run_quotes_the_seed_mean_the_tables_rank_by(seeded):
    _, stats, _ = seeded
    best_test = stats["tests"]["best"]["chrf"]
    # sentence-level chrF is far higher for full (the per-example scores), corpus chrF for lora
    assert best_test["best"] == "s__lora__instruct" and best_test["direction"] < 0
    best = next(f.text for f in digest(stats, ["chrf"]).bullets if f.kind == "best")
    exec_cell = max(stats["runs"]["cells"], key=lambda c: c["aggregate"]["rule_exec_accuracy"]["mean"])
    summary = exec_cell["aggregate"]["rule_exec_accuracy"]
    assert best.startswith(f"The best run on rule_exec_accuracy is {exec_cell['cell']} at "
                           f"{summary['mean']:.2f} (mean of 3 seeds, which scored {summary['min']:.2f} "
                           f"to {summary['max']:.2f})")
    # the paired test against the runner-up is about the same top cell, seeds as replicates
    assert "seeds as replicates" in best and f"top cell, {exec_cell['cell']}" in best


def test_reference_and_generation_are_compared_per_cell_in_the_report_wide_family(seeded):
    _, stats, html = seeded
    targets = stats["targets"]
    assert targets["targets"] == ["reference", "generation"] and targets["main"] == "reference"
    full, lora = targets["per_cell"]["s__full__instruct"], targets["per_cell"]["s__lora__instruct"]
    assert "s__qlora__instruct" not in targets["per_cell"]  # explained on the reference only
    gini = next(t for t in full["tests"] if t["metric"] == "gini")
    assert gini["test"] == "paired t-test on per-seed means" and not gini["single_seed"]
    assert gini["direction"] == -1 and gini["significant"]  # the generation is more concentrated
    assert full["generation"]["gini"]["mean"] > full["reference"]["gini"]["mean"] + 0.2
    assert full["generation"]["top"] in ("NUMBER", "UNIT")  # where 'peaked' puts the mass
    assert not any(t["significant"] for t in lora["tests"])
    family_rows = [r for fam in collect(stats) for r in fam]
    assert all(any(r is t for r in family_rows) for t in full["tests"] + lora["tests"])
    assert all(t["p_bh"] is not None for t in full["tests"])
    section = _section(html, "targets", "heatmaps")
    assert "s__full__instruct is explained differently on what it wrote than on what it should have: its " \
           "attributions are more concentrated on what it wrote (Gini" in section
    assert section.count("s__full__instruct</td>") == 1 and "s__lora__instruct</td>" in section
    headline = [f for f in digest(stats, ["chrf"], cap=30).headline if f.kind == "target"]
    assert len(headline) == 1 and headline[0].text.startswith("s__full__instruct is explained differently")


def test_heat_maps_show_both_targets_side_by_side(seeded):
    _, _, html = seeded
    section = html[html.index('<section id="heatmaps">'):html.index('<section id="failures">')]
    assert section.count("<th class=\"l\">on the reference</th>") == 2  # two examples
    assert section.count("<th class=\"l\">on the generation</th>") == 2
    assert section.count('<td class="clause target">') == 2 * 3 * 2  # examples x runs x targets
    assert "reference: stair.width &gt;= 900 mm" in section
    assert "generation: stair.width &gt;= 900 mm" in section  # the text each target scored


def _one_target_study(tmp_path, target: str):
    study = tmp_path / "study"
    study.mkdir()
    for strategy, kind in (("full", "peaked"), ("lora", "spread")):
        run = rid("s", strategy)
        write_run(study, run, 1e6, kind, 0.5, 8, len(strategy))
        path = StudyLayout(study).attributions(run)
        pd.read_parquet(path).assign(target=target).to_parquet(path)
    return study


def test_with_one_target_the_section_says_which_and_shows_nothing_empty(tmp_path):
    study = _one_target_study(tmp_path, "reference")
    html = write_report(study, ReportConfig(heatmap_examples=1), out=tmp_path / "r.html").read_text()
    section = _section(html, "targets", "heatmaps")
    assert "Every attribution in this study explains the reference rule" in section
    assert "explanation.target: reference" in section and "<table" not in section
    heat = html[html.index('<section id="heatmaps">'):html.index('<section id="failures">')]
    assert "on the generation" not in heat and "Explained on the reference" in heat
    stats = compare_study(study, FAST)
    assert stats["targets"]["per_cell"] == {}
    assert not any(f.kind == "target" for f in digest(stats, ["chrf"], cap=30).bullets)


def test_a_study_explained_on_generations_only_is_measured_on_them(tmp_path):
    """explanation.target: generation: concentration and the tests use the generation rows."""
    study = _one_target_study(tmp_path, "generation")
    stats = compare_study(study, FAST)
    assert stats["targets"]["main"] == "generation" and stats["concentration"]["target"] == "generation"
    assert stats["concentration"]["per_run"]["s__full__instruct"]["n_examples"] == 8
    html = write_report(study, ReportConfig(heatmap_examples=1), out=tmp_path / "r.html").read_text()
    assert "explanation.target: generation" in _section(html, "targets", "heatmaps")


def test_with_one_seed_the_target_test_is_over_examples_and_never_a_headline(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    for strategy in ("full", "lora"):
        run = rid("s", strategy)
        write_run(study, run, 1e6, "spread", 0.5, 16, len(strategy))
        _add_generation(study, run, "peaked" if strategy == "full" else "spread", 3)
    stats = compare_study(study, FAST)
    tests = stats["targets"]["per_cell"]["s__full__instruct"]["tests"]
    gini = next(t for t in tests if t["metric"] == "gini")
    assert gini["test"] == "wilcoxon" and gini["single_seed"] and gini["significant"]
    found = [f for f in digest(stats, ["chrf"], cap=30).bullets if f.kind == "target"]
    assert len(found) == 1 and not found[0].headline and "one seed" in found[0].text


def test_a_value_over_fewer_seeds_than_its_row_says_so():
    from tunelens.report.tables import quality

    cells = [{"cell": c, "seeds": [0, 1], "runs": [f"{c}__s0", f"{c}__s1"], "evaluated": [f"{c}__s0"],
              "aggregate": {"chrf": {"mean": m, "min": m, "max": m, "n": 1},
                            "bleu": {"mean": m / 2, "min": m / 2 - 1, "max": m / 2 + 1, "n": 2}}}
             for c, m in (("s__full__instruct", 40.0), ("s__lora__instruct", 30.0))]
    runs = [{"name": "s__full__instruct__s0", "intervals": {"chrf": [38.0, 42.0]}}]
    rows = quality(cells, runs)["tables"][0]["rows"]
    assert rows[0]["seeds"] == "0, 1"
    bleu, chrf = rows[0]["cells"]
    assert bleu["spread"] == "19.0 – 21.0" and chrf["spread"] == "examples 38.0 – 42.0; n = 1 of 2"
    assert chrf["best"] and not rows[1]["cells"][1]["best"]
