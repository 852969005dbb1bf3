"""Scale verdicts and comparable attribution measures on data whose truth is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from tunelens.compare import scale
from tunelens.compare.concentration import expected_gini, gini, gini_adjusted, to_words

SIZES = [1e6, 1e7, 1e8, 1e9]


def _curve(means, n=60, sd=0.05, seed=0, runs_per_size=1, metric="rule_exec_accuracy", sizes=SIZES):
    """Per-example scores around ``means`` (one column per run), then the verdict of the curve."""
    rng = np.random.default_rng(seed)
    cols, rows = {}, []
    for s, m in zip(sizes, means, strict=True):
        for r in range(runs_per_size):
            name = f"{s:g}_{r}"
            cols[name] = np.clip(m + rng.normal(0, sd, n), 0, None) if sd else np.full(n, float(m))
            rows.append({"run": name, "model": f"{s:g}", "params": s, "value": float(cols[name].mean())})
    return scale.curve(metric, pd.DataFrame(rows), pd.DataFrame(cols), 0.02, "higher", 400, 0.95, seed)


def test_zero_everywhere_did_not_learn_and_is_no_plateau():
    c = _curve([0, 0, 0, 0], sd=0)
    assert c["verdict"] == "did not learn"
    assert c["trend"]["p"] == 1.0 and c["plateau"]["p"] == 1.0


def test_a_rise_then_flat_is_a_plateau_at_the_break():
    c = _curve([0.2, 0.5, 0.7, 0.7], sd=0.05)
    assert c["verdict"] == "plateau" and c["plateau"]["size"] == 1e8
    assert c["plateau"]["p"] < 0.05 and c["plateau"]["finding"] and c["trend"]["finding"]


def test_still_rising_is_rising_and_flat_at_a_level_did_not_learn():
    assert _curve([0.1, 0.3, 0.5, 0.7])["verdict"] == "rising"
    assert _curve([0.4, 0.4, 0.4, 0.4], seed=3)["verdict"] == "did not learn"
    assert _curve([0.7, 0.5, 0.3, 0.1])["verdict"] == "falling"


def test_the_verdict_does_not_hang_on_the_last_step():
    """A last step that is flat on the point estimate but not within its noise is no plateau;
    the same step measured precisely is one."""
    noisy = _curve([0.1, 0.3, 0.5, 0.5], sd=0.4, n=20, seed=2)
    assert noisy["plateau"]["p_flat"] >= 0.05 and noisy["verdict"] != "plateau"
    precise = _curve([0.1, 0.3, 0.5, 0.5], sd=0.02, n=60, seed=2)
    assert precise["verdict"] == "plateau" and precise["plateau"]["size"] == 1e8


def test_close_sizes_do_not_make_a_plateau_on_noise():
    """Sizes 1.1x apart with noisy scores: the slope after a break is too uncertain to call flat."""
    sizes = [1e6, 1e7, 1.1e7, 1.2e7]
    c = _curve([0.2, 0.5, 0.52, 0.5], sd=0.3, n=30, sizes=sizes)
    assert c["verdict"] != "plateau"


def test_two_sizes_that_differ_are_too_few_for_a_shape():
    c = _curve([0.2, 0.6], sizes=SIZES[:2])
    assert c["verdict"] == "too few sizes" and c["trend"]["p"] < 0.05


def test_seeds_widen_the_interval():
    """Runs of one size that disagree (seed noise) add to the uncertainty of the slope."""
    one = _curve([0.2, 0.4, 0.6, 0.8], runs_per_size=1, seed=5)
    rng = np.random.default_rng(1)
    cols, rows = {}, []
    for s, m in zip(SIZES, [0.2, 0.4, 0.6, 0.8], strict=True):
        for r in range(3):
            shift = rng.normal(0, 0.15)
            cols[f"{s:g}_{r}"] = m + shift + rng.normal(0, 0.05, 60)
            rows.append({"run": f"{s:g}_{r}", "model": f"{s:g}", "params": s, "value": m + shift})
    seeded = scale.curve("rule_exec_accuracy", pd.DataFrame(rows), pd.DataFrame(cols), 0.02, "higher",
                         400, 0.95, 0)
    width = lambda c: c["trend"]["hi"] - c["trend"]["lo"]  # noqa: E731
    assert width(seeded) > 2 * width(one)


def test_adjusted_gini_removes_the_feature_count():
    """The issue's example: i.i.d. exponential Gini 0.44 at n=8, 0.49 at n=40; adjusted ≈ 1 for both."""
    rng = np.random.default_rng(0)
    for n, raw in ((8, 0.44), (40, 0.49)):
        draws = rng.exponential(size=(3000, n))
        assert np.mean([gini(d) for d in draws]) == pytest.approx(raw, abs=0.01)
        assert np.mean([gini_adjusted(d) for d in draws]) == pytest.approx(1.0, abs=0.02)
    assert expected_gini(8) == pytest.approx(7 / 16)
    one_hot = np.zeros(10)
    one_hot[3] = 1.0
    assert gini_adjusted(one_hot) == pytest.approx(0.9 / 0.45)


def test_tokens_merge_into_words_by_their_spans():
    frame = pd.DataFrame({"example_id": ["a"] * 5, "position": range(5),
                          "token": ["stair", "w", "idth", " 9", "00"],
                          "start": [0, 6, 7, 11, 13], "end": [5, 7, 11, 13, 15],
                          "category": ["OTHER", "OTHER", "OTHER", "NUMBER", "NUMBER"],
                          "score": [1.0, 0.5, 0.25, 2.0, -1.0]})
    words = to_words(frame)
    assert list(words["score"]) == [1.0, 0.75, 1.0]
    assert list(words["category"]) == ["OTHER", "OTHER", "NUMBER"]


def test_uniform_attribution_is_enrichment_one_however_numbers_are_split():
    """A tokenizer that cuts numbers into more pieces raises their share, not their enrichment."""
    from tunelens.compare.category_shares import enrichment, feature_shares
    from tunelens.compare.category_shares import per_example as mass_shares

    for pieces in (1, 4):
        cats = ["NUMBER"] * pieces + ["OTHER"] * 6
        frame = pd.DataFrame({"example_id": ["a"] * len(cats) + ["b"] * len(cats), "category": cats * 2,
                              "score": np.ones(2 * len(cats))})
        shares = mass_shares(frame)
        e = enrichment(shares, feature_shares(frame), 100, 0.95, 0)
        assert shares["NUMBER"].mean() == pytest.approx(pieces / (pieces + 6))
        assert e["NUMBER"]["mean"] == pytest.approx(1.0) and e["OTHER"]["mean"] == pytest.approx(1.0)
        assert e["UNIT"]["mean"] is None  # no features of that category: nothing to divide


# -- through compare_study ---------------------------------------------------------------------------


def _study(tmp_path, **kw):
    from test_compare import make_study

    return make_study(tmp_path, n_examples=12, failed=False, **kw)


def test_feature_level_is_words_when_tokenizers_differ_and_tokens_when_shared(tmp_path):
    from test_compare import FAST

    from tunelens.compare import compare_study, discover_runs
    from tunelens.compare.features import choose_level
    from tunelens.layout import StudyLayout

    study = _study(tmp_path)
    layout = StudyLayout(study)
    assert choose_level(discover_runs(study), layout, "auto") == "word"  # no tokenizer files
    for d in layout.models.iterdir():
        (d / "tokenizer.json").write_text('{"model": "shared"}')
    assert choose_level(discover_runs(study), layout, "auto") == "token"
    assert choose_level(discover_runs(study), layout, "word") == "word"
    (layout.models / "s__lora__instruct" / "tokenizer.json").write_text('{"model": "other"}')
    assert choose_level(discover_runs(study), layout, "auto") == "word"
    result = compare_study(study, FAST)
    assert result["concentration"]["feature_level"] == result["category_shares"]["feature_level"] == "word"


def test_generation_rows_do_not_enter_the_reference_measures(tmp_path):
    from test_compare import FAST

    from tunelens.compare import compare_study

    study = _study(tmp_path, models=("s",))
    before = compare_study(study, FAST)
    path = study / "attributions" / "s__lora__instruct.parquet"
    frame = pd.read_parquet(path)
    generated = frame.assign(target="generation", score=np.where(frame["category"] == "MODAL", 50.0, 0.0))
    pd.concat([frame.assign(target="reference"), generated]).to_parquet(path)
    after = compare_study(study, FAST)
    for key in ("concentration", "category_shares"):
        assert after[key]["per_run"]["s__lora__instruct"] == before[key]["per_run"]["s__lora__instruct"]


def test_enrichment_and_adjusted_gini_reach_the_stats_and_the_trend_family(tmp_path):
    from test_compare import FAST, rid

    from tunelens.compare import compare_study
    from tunelens.report.trends import reliance, reliance_trends

    result = compare_study(_study(tmp_path, models=("s", "m", "l"), replicate=True), FAST)
    full = result["category_shares"]["enrichment"]["s__full__instruct"]["NUMBER"]
    assert full["lo"] > 1.5 and full["lo"] <= full["mean"] <= full["hi"]  # full is peaked on NUMBER
    conc = result["concentration"]["per_run"]["s__full__instruct"]
    assert conc["gini_adjusted"]["mean"] > 1.5  # far more concentrated than noise of its length
    curves = {(c["strategy"], c["metric"]): c for c in result["scale"]["curves"]}
    for metric in ("enrichment_NUMBER", "enrichment_RULE_ID", "gini_adjusted"):
        c = curves["lora", metric]
        assert c["trend"]["finding"] is True and 0 < c["trend"]["p"] <= 1 and "significant" in c["trend"]
        assert c["verdict"] in ("flat", "rising", "falling", "plateau")  # descriptive: never "did not learn"
    replicate = rid("s", "lora", seed=1).name  # another seed of the smallest lora cell: a replicate
    assert sorted(curves["lora", "gini"]["points"][0]["runs"]) == sorted(["s__lora__instruct", replicate])
    assert curves["lora", "entropy"]["trend"]["finding"] is False  # never stated: not in the family
    assert curves["lora", "bleu"]["verdict"] == "untested" and curves["lora", "bleu"]["trend"] is None
    texts = [f.text for f in reliance_trends(result["scale"])]
    assert any("arXiv 2604.15589" in t for t in texts)
    assert "NUMBER" in reliance(result["category_shares"]).text


def test_did_not_learn_is_said_and_no_plateau_is_claimed():
    from tunelens.report.trends import scale_findings

    flat = _curve([0, 0, 0, 0], sd=0)
    flat.update({"strategy": "lora", "objective": "instruct", "rag": False})
    out = scale_findings({"curves": [flat], "confidence": 0.95, "threshold_per_decade": 0.02, "alpha": 0.05},
                         ["rule_exec_accuracy"])
    assert len(out) == 1 and "did not learn" in out[0].text and "0.00 at every size" in out[0].text
    assert not any(f.kind == "plateau" for f in out)


def test_a_trend_is_a_headline_only_with_seeds_at_every_size():
    from tunelens.report.trends import scale_findings

    scale_stats = {"confidence": 0.95, "threshold_per_decade": 0.02, "alpha": 0.05}
    for runs, headline in ((1, False), (2, True)):
        c = _curve([0.1, 0.3, 0.5, 0.7], runs_per_size=runs)
        c.update({"strategy": "lora", "objective": "instruct", "rag": False})
        trend = next(f for f in scale_findings({"curves": [c], **scale_stats}, ["rule_exec_accuracy"])
                     if f.kind == "trend")
        assert trend.headline is headline and ("one seed" in trend.text) is not headline


def test_the_figure_names_did_not_learn_in_its_legend_not_on_the_curves():
    """Untrained curves coincide: labels drawn on them overlapped (the demo's figure did)."""
    from tunelens.report.figures import scale_figure

    flat = {**_curve([0, 0, 0, 0], sd=0), "strategy": "lora", "objective": "instruct", "rag": False}
    rising = {**_curve([0.1, 0.3, 0.5, 0.7]), "strategy": "full", "objective": "instruct", "rag": False}
    fig = scale_figure({"scale": {"curves": [rising, flat]}}, ["rule_exec_accuracy"])
    ax = fig.axes[0]
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["full", "lora (did not learn)"]
    assert not [t for t in ax.texts if "did not learn" in t.get_text()]
