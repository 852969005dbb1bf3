"""The HTML report: findings carry their numbers, and the page renders offline in a real Chromium."""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path

import pytest
from test_compare import FAST, make_study, write_run

from tunelens.cli import main
from tunelens.compare import compare_study
from tunelens.config import ReportConfig
from tunelens.report import write_report
from tunelens.report.findings import concentration_findings, findings, quality_findings

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


def test_findings_state_differences_with_their_numbers(study):
    from tunelens.compare import load_stats

    stats = load_stats(study / "stats")
    group = next(g for g in stats["tests"]["groups"] if g["model"] == "s")
    pairs = {(r["a"], r["b"]): r for r in group["metrics"]["gini"]["pairwise"]}
    texts = [f.text for f in concentration_findings(stats["tests"]) if f.text.startswith("On s ")]

    real = pairs["full", "lora"]
    sentence = next(t for t in texts if "full attributions are more concentrated than lora" in t)
    assert f"Gini {real['mean_a']:.2f} vs {real['mean_b']:.2f}" in sentence
    p_text = "p < 0.001" if real["p_holm"] < 0.001 else f"p = {real['p_holm']:.3f}"
    assert p_text in sentence and f"r = {real['rank_biserial']:+.2f}" in sentence

    null = pairs["lora", "qlora"]
    assert null["p_holm"] >= stats["tests"]["alpha"]
    sentence = next(t for t in texts if "between lora and qlora" in t)
    assert sentence.startswith("On s (instruct), no significant difference")
    assert f"p = {null['p_holm']:.3f}" in sentence

    quality = " ".join(f.text for f in quality_findings(stats["tests"], stats["runs"]))
    assert "rule_exec_accuracy" in quality and "The best run on rule_exec_accuracy" in quality

    every = findings(stats, ["chrf"])
    assert any("failed" in f.text and "s__dora__instruct" in f.text for f in every)
    assert any(f.topic == "scale" and "per decade of parameters" in f.text for f in every)
    floor = stats["agreement"]["noise_floor"]["spearman"]["mean"]
    assert any(f.topic == "agreement" and f"seed-to-seed floor of {floor:.2f}" in f.text for f in every)


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
    assert html.count('class="t"') >= 2 * 9  # token spans: 2 examples x 9 runs, at least one each


def test_report_of_a_study_with_one_run_and_no_stats(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    write_run(study, "s__lora__instruct", 1e6, "spread", 0.5, 4, 1)
    out = write_report(study, ReportConfig(heatmap_examples=1), out=tmp_path / "r" / "one.html")
    html = out.read_text(encoding="utf-8")
    assert (study / "stats" / "tests.json").exists()  # compare ran first
    assert "needs at least two model sizes" in html and "Every run finished." in html
    assert "Agreement needs at least two runs" in html


def test_report_recomputes_stale_statistics(tmp_path):
    study = make_study(tmp_path, n_examples=4, models=("s",), failed=False)
    compare_study(study, FAST)
    stamp = (study / "stats" / "runs.json").stat().st_mtime
    write_run(study, "s__dora__instruct", 1e6, "spread", 0.5, 4, 9)  # a cell re-run after compare
    import os

    os.utime(study / "metrics" / "s__dora__instruct.json", (stamp + 10, stamp + 10))
    write_report(study, ReportConfig(heatmap_examples=0))
    assert "s__dora__instruct" in (study / "stats" / "runs.json").read_text()


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
