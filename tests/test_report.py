"""The HTML report: findings carry their numbers, and the page renders offline in a real Chromium."""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import pytest
from test_compare import FAST, make_study, rid, write_run

from tunelens.cli import main
from tunelens.compare import compare_study
from tunelens.config import ReportConfig
from tunelens.report import write_report
from tunelens.report.differences import significant_differences
from tunelens.report.findings import digest
from tunelens.report.wording import fmt_p

SECTIONS = ("findings", "quality", "training", "tests", "concentration", "categories", "scale",
            "agreement", "heatmaps", "failures")
REPO = Path(__file__).resolve().parents[1]
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    path = make_study(root, n_examples=16, models=("s", "m", "l"), replicate=True)
    compare_study(path, FAST)
    return path


@pytest.fixture(scope="module")
def report(study):
    return write_report(study, ReportConfig(title="synthetic study", heatmap_examples=2))


def test_findings_lead_with_the_differences_and_summarise_the_rest(study):
    from tunelens.compare import load_stats

    stats = load_stats(study / "stats")
    d = digest(stats, ["rule_exec_accuracy", "chrf", "gini"], cap=12)
    assert len(d.bullets) <= 12
    assert d.headline[0].kind == "failures" and "s__dora__instruct" in d.headline[0].text

    # full is peaked on every model: one sentence, each model's numbers in it; one seed per cell,
    # so it says so and is context, never a headline
    assert not any(f.kind == "difference" for f in d.headline)
    conc = next(f.text for f in d.context if f.kind == "difference" and f.topic == "concentration")
    assert "one seed per strategy" in conc
    assert conc.startswith("Full fine-tuning attributions are more concentrated than LoRA on s (")
    for g in stats["tests"]["groups"]:
        real = next(r for r in g["metrics"]["gini"]["pairwise"] if (r["a"], r["b"]) == ("full", "lora"))
        assert real["significant"]
        p_text = "p < 0.001" if real["p_holm"] < 0.001 else f"p = {real['p_holm']:.3f}"
        assert (f"{g['model']} (Gini {real['mean_a']:.2f} vs {real['mean_b']:.2f}, Hodges–Lehmann difference "
                f"{real['estimate']:.2f} [{real['ci_lo']:.2f}, {real['ci_hi']:.2f}], {p_text}, "
                f"r = {real['rank_biserial']:.2f})") in conc

    # lora and qlora are alike by construction: no sentence of their own, one summary per kind
    subjects = [f.text.split(" on ")[0] for f in significant_differences(stats["tests"])]
    assert len(subjects) >= 6  # full vs lora and full vs qlora, three kinds of test
    assert not any(re.search(r"\bLoRA\b", s) and re.search(r"\bQLoRA\b", s) for s in subjects)
    rows = [r for g in stats["tests"]["groups"] for m in g["metrics"].values() if m["kind"] == "concentration"
            for r in m["pairwise"] if not r["significant"]]
    summary = next(f.text for f in d.context if f.kind == "summary" and "concentration" in f.text)
    assert f"({len(rows)} comparisons" in summary
    assert f"smallest Holm-adjusted {fmt_p(min(r['p_holm'] for r in rows))}" in summary

    best = next(f.text for f in d.headline if f.kind == "best")
    top = max((r for r in stats["runs"]["runs"] if r["name"] in stats["runs"]["primary"] and r["aggregate"]),
              key=lambda r: r["aggregate"]["rule_exec_accuracy"])
    assert best.startswith(f"The best run on rule_exec_accuracy is {top['cell']} at "
                           f"{top['aggregate']['rule_exec_accuracy']:.2f} (one seed, n = 1; "
                           "interval over examples ")
    # one seed per size: the trend is stated with that caveat, and not as a headline
    trend = next(f for f in d.bullets if f.kind == "trend" and "rises with model size" in f.text)
    assert not trend.headline and "one seed" in trend.text
    assert any(f.kind == "left_out" for f in d.context)  # this study has more than 12 things to say


def test_findings_of_a_four_example_study_say_the_tests_cannot_reach_significance(tmp_path):
    study = make_study(tmp_path, n_examples=4, models=("s",), failed=False)
    stats = compare_study(study, FAST)
    d = digest(stats, ["chrf"])
    assert not any(f.kind == "difference" for f in d.bullets)
    note = next(f.text for f in d.context if f.kind == "sample")
    assert "4 paired examples" in note and "2/2^4 = 0.125" in note and "cannot reach significance" in note


def test_report_is_one_self_contained_file(study, report):
    html = report.read_text(encoding="utf-8")
    for section in SECTIONS:
        assert f'<section id="{section}">' in html
    # no network: no http(s) resource, no external stylesheet or script
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "<script" not in html and "<link" not in html
    images = re.findall(r'<img [^>]*src="([^"]+)"', html)
    assert len(images) == 5 and all(src.startswith("data:image/png;base64,") for src in images)
    assert {p.name for p in (study / "figures").glob("*.png")} == {
        "training_loss.png", "concentration.png", "category_shares.png", "scale.png", "agreement.png"}
    assert "RuntimeError: out of memory" in html  # the failed cell is listed
    family = json.loads((study / "stats" / "tests.json").read_text())["family"]
    tests_section = html[html.index('<section id="tests">'):html.index('<section id="concentration">')]
    assert f"{family['tests']} in this report" in tests_section and "Benjamini–Hochberg" in tests_section
    findings = html[html.index('<section id="findings">'):html.index('<section id="quality">')]
    assert 3 <= findings.count("<li") <= ReportConfig().max_findings
    assert "<h3>Headline results</h3>" in findings and findings.count("sig-true") >= 1
    quality = html[html.index('<section id="quality">'):html.index('<section id="training">')]
    assert "<h3>Similarity to the reference</h3>" in quality and "<h3>Rule level</h3>" in quality
    assert 'class="scroll"' not in quality  # narrow enough to read without scrolling
    assert html.count('class="t"') >= 2 * 9  # token spans: 2 examples x 9 runs, at least one each


def test_report_of_a_study_with_one_run_and_no_stats(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    write_run(study, rid("s", "lora"), 1e6, "spread", 0.5, 4, 1)
    out = write_report(study, ReportConfig(heatmap_examples=1), out=tmp_path / "r" / "one.html")
    html = out.read_text(encoding="utf-8")
    assert (study / "stats" / "tests.json").exists()  # compare ran first
    assert "needs at least two model sizes" in html and "Every run finished." in html
    assert "Agreement needs at least two runs" in html


def test_report_recomputes_statistics_when_an_input_changes_not_when_it_is_touched(tmp_path):
    import os

    study = make_study(tmp_path, n_examples=4, models=("s",), failed=False)
    compare_study(study, FAST)
    runs_json = study / "stats" / "runs.json"
    before = runs_json.stat().st_mtime_ns
    metrics = study / "metrics" / "s__lora__instruct.json"
    later = metrics.stat().st_mtime + 100
    os.utime(metrics, (later, later))  # touched after compare: same content
    write_report(study, ReportConfig(heatmap_examples=0))
    assert runs_json.stat().st_mtime_ns == before  # reused, not recomputed

    raw = json.loads(metrics.read_text())
    raw["aggregate"]["chrf"] = 12.5  # edited: the statistics are stale
    metrics.write_text(json.dumps(raw))
    write_report(study, ReportConfig(heatmap_examples=0))
    lora = next(r for r in json.loads(runs_json.read_text())["runs"] if r["name"] == "s__lora__instruct")
    assert lora["aggregate"]["chrf"] == 12.5

    write_run(study, rid("s", "dora"), 1e6, "spread", 0.5, 4, 9)  # a cell added after compare
    write_report(study, ReportConfig(heatmap_examples=0))
    assert "s__dora__instruct" in runs_json.read_text()


def test_non_significant_tests_are_folded_away(study, report):
    """~200 test rows: the significant ones in the table, the rest inside a <details>."""
    html = report.read_text(encoding="utf-8")
    section = html[html.index('<section id="tests">'):html.index('<section id="concentration">')]
    folded = section[section.index('<details class="other-tests">'):section.index("</details>")]
    shown = section[:section.index('<details class="other-tests">')]
    assert shown.count('class="l sig"') >= 3 and 'class="l ns"' not in shown
    n_folded = folded.count('class="l ns"')
    assert n_folded >= 10 and 'class="l sig"' not in folded
    assert f"{n_folded} comparisons" in folded


def test_scale_axis_labels_do_not_overlap_within_a_decade():
    """The scale figure's size labels on a log axis spanning less than a decade do not overlap."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from tunelens.report.figures import scale_figure

    sizes = [2.5e5, 3.0e5, 7.0e5, 2.1e6]  # 0.92 decades (the README figure's), two sizes close
    points = [{"params": p, "value": 0.1 * i, "lo": None, "hi": None} for i, p in enumerate(sizes)]
    curve = {"metric": "chrf", "strategy": "lora", "objective": "instruct", "rag": False,
             "points": points, "fit": None, "plateau": {"size": None}}
    fig = scale_figure({"scale": {"curves": [curve]}}, ["chrf"])
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    ax = fig.axes[0]
    lo, hi = ax.get_xlim()
    ticks = ax.xaxis.get_major_ticks() + ax.xaxis.get_minor_ticks()
    labels = [t.label1 for t in ticks if lo <= t.get_loc() <= hi and t.label1.get_visible()
              and t.label1.get_text()]
    boxes = sorted((lab.get_window_extent(renderer) for lab in labels), key=lambda b: b.x0)
    for left, right in zip(boxes, boxes[1:], strict=False):
        assert left.x1 <= right.x0, "tick labels overlap"
    assert [lab.get_text() for lab in labels] == ["250k", "700k", "2.1M"]  # the sizes, readable


def test_cli_report(study, tmp_path, capsys):
    out = tmp_path / "cli.html"
    assert main(["report", "--study", str(study), "--out", str(out)]) == 0
    assert out.exists() and str(out) in capsys.readouterr().out.replace("\n", "")
    assert main(["report", "--study", str(tmp_path / "missing")]) == 2


@pytest.mark.skipif(not (CHROMIUM.exists() and CHROMEDRIVER.exists()),
                    reason="chromium/chromedriver not installed (make browser installs them)")
def test_report_renders_offline_in_headless_chromium(report):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    profile = tempfile.mkdtemp(prefix="tunelens-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
                "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1400,1000"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        driver.get(report.resolve().as_uri())
        for section in SECTIONS:
            assert driver.find_elements(By.CSS_SELECTOR, f"section#{section}"), section
        images = driver.find_elements(By.TAG_NAME, "img")
        assert len(images) == 5
        for img in images:
            assert driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth", img) > 0
        resources = driver.execute_script(
            "return performance.getEntriesByType('resource').map(e => e.name)")
        assert not [r for r in resources if r.startswith(("http:", "https:"))]
        assert driver.execute_script("return document.querySelectorAll('span.t').length") >= 18
        height = driver.execute_script("return document.body.scrollHeight")
        driver.set_window_size(1400, min(int(height) + 50, 16000))
        artefacts = REPO / "test-artifacts"
        artefacts.mkdir(exist_ok=True)
        png = driver.get_screenshot_as_png()
        (artefacts / "report.png").write_bytes(png)
        (Path(tempfile.gettempdir()) / "tunelens-report.png").write_bytes(png)
        assert png[:8] == b"\x89PNG\r\n\x1a\n"
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
