"""Comparison statistics on synthetic study folders whose differences are known by construction."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from tunelens.cli import main
from tunelens.compare import compare_study, discover_runs, primary_runs
from tunelens.compare.agreement import js_divergence, pair_metrics
from tunelens.compare.category_shares import per_example as shares_per_example
from tunelens.compare.concentration import gini, normalised_entropy, top_k_share
from tunelens.compare.scale import loglinear_fit
from tunelens.compare.significance import compare_paired, holm, rank_biserial
from tunelens.config import ComparisonConfig
from tunelens.errors import TunelensError
from tunelens.layout import RunIdentity, StudyLayout

# A clause cut into features with known categories: (text, category).
CLAUSE = [("RULE", "OTHER"), ("1011.5", "RULE_ID"), ("stair", "OTHER"), ("width", "OTHER"),
          ("shall", "MODAL"), ("be", "OTHER"), ("at", "COMPARATOR"), ("least", "COMPARATOR"),
          ("900", "NUMBER"), ("mm", "UNIT"), ("where", "CONDITION"), ("sprinklered", "OTHER")]
PROMPT = " ".join(t for t, _ in CLAUSE)
FAST = ComparisonConfig(bootstrap_samples=200, permutations=400)


def _spans():
    spans, pos = [], 0
    for text, _ in CLAUSE:
        spans.append((pos, pos + len(text)))
        pos += len(text) + 1
    return spans


def _scores(kind: str, rng: np.random.Generator) -> np.ndarray:
    """'peaked': the mass on NUMBER and UNIT; 'spread': mass everywhere, same distribution each call."""
    n = len(CLAUSE)
    if kind == "peaked":
        s = rng.normal(0.0, 0.02, n)
        s[8], s[9] = 1.0 + rng.normal(0, 0.1), 0.8 + rng.normal(0, 0.1)
        return s
    return rng.uniform(0.3, 1.0, n) * rng.choice([-1, 1], n)


def rid(model: str, strategy: str, objective: str = "instruct", rag: bool = False,
        seed: int | None = None) -> RunIdentity:
    return RunIdentity(model, strategy, objective, rag, seed)


def write_run(study, run: RunIdentity, params: float, kind: str, quality: float, n_examples: int,
              seed: int, attributions: bool = True, metrics: bool = True, model_dir: bool = True,
              record: bool = True) -> None:
    """One run's outputs; ``record``: its identity in runs/ (else only in the model's run.json)."""
    rng = np.random.default_rng(seed)
    layout, name = StudyLayout(study), run.name
    if record:
        layout.write_identity(run)
    if model_dir:
        d = layout.model_dir(run)
        d.mkdir(parents=True, exist_ok=True)
        trainable = params if run.strategy == "full" else params / 100
        (d / "run.json").write_text(json.dumps({
            "identity": run.to_dict(),
            "strategy": run.strategy, "objective": run.objective, "base_model": f"zoo/{name}",
            "trainable_params": trainable, "total_params": params + (trainable if trainable < params else 0),
            "train_loss": [{"step": s, "loss": 3.0 / (1 + s / 10)} for s in range(0, 60, 5)],
            "val_loss_before": 3.2, "val_loss_after": 1.1 + rng.uniform(0, 0.2),
            "wall_seconds": 12.5, "tokens_per_second": 850.0, "peak_rss_mb": 900.0}))
    ids = [f"ex{i:03d}" for i in range(n_examples)]
    (study / "predictions").mkdir(exist_ok=True)
    (study / "predictions" / f"{name}.jsonl").write_text("".join(
        json.dumps({"id": i, "prompt": PROMPT, "reference": "stair.width >= 900 mm",
                    "prediction": "stair.width >= 900 mm"}) + "\n" for i in ids))
    if metrics:
        exec_ok = rng.uniform(size=n_examples) < quality
        chrf = np.clip(rng.normal(100 * quality, 5, n_examples), 0, 100)
        per = [{"id": i, "rule_exec_accuracy": bool(e), "chrf": float(c)}
               for i, e, c in zip(ids, exec_ok, chrf, strict=True)]
        (study / "metrics").mkdir(exist_ok=True)
        (study / "metrics" / f"{name}.json").write_text(json.dumps({
            "aggregate": {"rule_exec_accuracy": float(exec_ok.mean()), "chrf": float(chrf.mean()),
                          "bleu": 40.0 * quality},
            "intervals": {"rule_exec_accuracy": [max(0, exec_ok.mean() - 0.1), exec_ok.mean() + 0.1],
                          "chrf": [chrf.mean() - 3, chrf.mean() + 3]},
            "per_example": per}))
    if attributions:
        rows = []
        for i in ids:
            s = _scores(kind, rng)
            for pos, ((tok, cat), (a, b), sc) in enumerate(zip(CLAUSE, _spans(), s, strict=True)):
                rows.append({"example_id": i, "position": pos, "token": tok, "start": a, "end": b,
                             "category": cat, "score": float(sc)})
        (study / "attributions").mkdir(exist_ok=True)
        pd.DataFrame(rows).to_parquet(study / "attributions" / f"{name}.parquet")


SIZES = {"s": 1e6, "m": 1e7, "l": 1e8, "xl": 1e9}
QUALITY = {"s": 0.3, "m": 0.6, "l": 0.7, "xl": 0.71}


def make_study(root, n_examples: int = 24, models=("s", "m"), replicate: bool = False,
               failed: bool = True):
    """full is peaked and better; lora and qlora are spread alike (no difference between them)."""
    study = root / "study"
    study.mkdir()
    seed = 0
    for model in models:
        for strategy, kind, bonus in (("full", "peaked", 0.2), ("lora", "spread", 0.0),
                                      ("qlora", "spread", 0.0)):
            seed += 1
            q = min(0.95, QUALITY[model] + bonus)
            write_run(study, rid(model, strategy), SIZES[model], kind, q, n_examples, seed)
    if replicate:  # the same lora cell attributed again with another seed
        write_run(study, rid(models[0], "lora", seed=1), SIZES[models[0]], "spread",
                  QUALITY[models[0]], n_examples, 999, model_dir=False)
    cells = [{"run": rid(m, s).name, "status": "ok", "error": None, "stages": {"train": 1.0}}
             for m in models for s in ("full", "lora", "qlora")]
    if failed:
        StudyLayout(study).write_identity(rid(models[0], "dora"))
        cells.append({"run": rid(models[0], "dora").name, "status": "failed",
                      "error": "RuntimeError: out of memory", "stages": {}})
    (study / "status.json").write_text(json.dumps({"cells": cells}))
    return study


# -- the numbers, by hand --------------------------------------------------------------------------


def test_gini_uniform_is_zero_and_one_hot_is_n_minus_one_over_n():
    assert gini(np.ones(7)) == pytest.approx(0.0, abs=1e-12)
    one_hot = np.zeros(8)
    one_hot[3] = -2.5  # the sign does not matter: |score|
    assert gini(one_hot) == pytest.approx(7 / 8)
    assert math.isnan(gini(np.zeros(4)))


def test_entropy_and_top_k_share():
    assert normalised_entropy(np.ones(5)) == pytest.approx(1.0)
    assert normalised_entropy([0, 0, 3.0, 0]) == pytest.approx(0.0)
    assert top_k_share([1, 1, 1, 1], 2) == pytest.approx(0.5)
    assert top_k_share([4, -3, 2, 1], 2) == pytest.approx(0.7)


def test_holm_matches_hand_computation():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> monotone 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, 0.9]) == pytest.approx([0.4, 0.9])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # 0.5*2 capped at 1, then monotone


def test_rank_biserial_matches_hand_computation():
    # differences 1, -2, 3, 4 (one zero dropped): ranks 1,2,3,4; T+ = 8, T- = 2 -> (8-2)/10
    assert rank_biserial([2, 1, 5, 9, 3], [1, 3, 2, 5, 3]) == pytest.approx(0.6)
    assert rank_biserial([1, 2], [3, 4]) == pytest.approx(-1.0)


def test_js_divergence_and_agreement_of_identical_vectors():
    v = np.array([0.5, -1.0, 0.1, 2.0])
    assert js_divergence(v, v) == pytest.approx(0.0, abs=1e-12)
    assert js_divergence([1, 0], [0, 1]) == pytest.approx(1.0)
    m = pair_metrics(v, v, k=2)
    assert m["spearman"] == pytest.approx(1.0) and m["kendall"] == pytest.approx(1.0)
    assert m["top_k_overlap"] == 1.0


def test_loglinear_fit():
    fit = loglinear_fit([1e6, 1e7, 1e8], [0.1, 0.3, 0.5])
    assert fit["slope"] == pytest.approx(0.2) and fit["intercept"] == pytest.approx(-1.1)


def test_category_shares_sum_to_one():
    frame = pd.DataFrame({"example_id": ["a"] * 3 + ["b"] * 2, "category": ["NUMBER", "UNIT", "NUMBER",
                          "OTHER", "MODAL"], "score": [1.0, -1.0, 2.0, 0.5, 0.5]})
    shares = shares_per_example(frame)
    assert np.allclose(shares.sum(axis=1), 1.0)
    assert shares.loc["a", "NUMBER"] == pytest.approx(0.75)


def test_paired_tests_find_a_real_difference_and_not_a_fake_one():
    rng = np.random.default_rng(7)
    base = rng.normal(0.5, 0.1, 30)
    res = compare_paired({"A": base + 0.2 + rng.normal(0, 0.02, 30), "B": base,
                          "C": base + rng.normal(0, 0.02, 30)}, alpha=0.05, permutations=500)
    assert res["friedman"]["p"] < 0.05
    pairs = {(r["a"], r["b"]): r for r in res["pairwise"]}
    assert pairs["A", "B"]["p_holm"] < 0.05 and pairs["A", "B"]["rank_biserial"] > 0.9
    assert pairs["A", "B"]["permutation_p"] < 0.05
    assert pairs["B", "C"]["p"] > 0.05 and not pairs["B", "C"]["significant"]


def test_tests_are_calibrated_under_the_null():
    """Same distribution for both: each test rejects at alpha 0.05 in about 5% of replications."""
    from tunelens.compare.significance import sign_flip_p, wilcoxon

    rng = np.random.default_rng(123)
    reps, n = 80, 20
    rejections = {"wilcoxon": 0, "permutation": 0}
    for i in range(reps):
        base = rng.normal(0, 1, n)  # a shared per-example effect: the data are paired
        a, b = base + rng.normal(0, 0.5, n), base + rng.normal(0, 0.5, n)
        rejections["wilcoxon"] += wilcoxon(a, b)[1] < 0.05
        rejections["permutation"] += sign_flip_p(a, b, permutations=200, seed=i) < 0.05
    assert rejections["wilcoxon"] / reps <= 0.125 and rejections["permutation"] / reps <= 0.125


# -- the whole study -------------------------------------------------------------------------------


def test_compare_study_finds_the_built_in_differences(tmp_path):
    study = make_study(tmp_path, replicate=True)
    result = compare_study(study, FAST)
    for stem in ("runs", "concentration", "category_shares", "tests", "agreement", "scale"):
        text = (study / "stats" / f"{stem}.json").read_text()
        assert "NaN" not in text and "Infinity" not in text, stem
        assert json.loads(text) == result[stem]
    conc = result["concentration"]["per_run"]
    assert conc["s__full__instruct"]["gini"]["mean"] > conc["s__lora__instruct"]["gini"]["mean"] + 0.3

    group = next(g for g in result["tests"]["groups"] if g["model"] == "s")
    assert list(group["runs"]) == ["full", "lora", "qlora"]
    g = group["metrics"]["gini"]
    assert g["friedman"]["p"] < 0.05
    pairs = {(r["a"], r["b"]): r for r in g["pairwise"]}
    assert pairs["full", "lora"]["p_holm"] < 0.05 and pairs["full", "lora"]["rank_biserial"] > 0.8
    assert pairs["full", "lora"]["permutation_p"] < 0.05
    assert pairs["lora", "qlora"]["p"] > 0.05  # same distribution: no difference
    shares = group["metrics"]["share_NUMBER"]["pairwise"][0]
    assert shares["a"] == "full" and shares["mean_a"] > shares["mean_b"]
    assert "rule_exec_accuracy" in group["metrics"] and "chrf" in group["metrics"]

    for run, cats in result["category_shares"]["per_run"].items():
        assert sum(c["mean"] for c in cats.values()) == pytest.approx(1.0), run

    floor = result["agreement"]["noise_floor"]
    assert floor is not None and list(floor["cells"]) == ["s__lora__instruct"]
    replicate = RunIdentity("s", "lora", "instruct", seed=1).name
    assert replicate in {r.name for r in discover_runs(study)}
    assert replicate not in result["agreement"]["matrix"]["runs"]
    assert len(result["agreement"]["pairs"]) == 15  # 6 primary runs

    failures = result["runs"]["failures"]
    assert failures == [{"run": "s__dora__instruct", "status": "failed",
                         "error": "RuntimeError: out of memory"}]


def test_scale_curves_find_the_plateau(tmp_path):
    study = make_study(tmp_path, n_examples=40, models=("s", "m", "l", "xl"), failed=False)
    cfg = FAST.model_copy(update={"plateau_threshold": 0.05})
    curves = compare_study(study, cfg)["scale"]["curves"]
    lora = next(c for c in curves if c["strategy"] == "lora" and c["metric"] == "chrf")
    assert [p["params"] for p in lora["points"]] == [1e6, 1e7, 1e8, 1e9]
    trend = lora["trend"]
    assert trend["slope"] > 0 and trend["lo"] < trend["slope"] < trend["hi"] and trend["p"] < 0.05
    assert trend["finding"] is True and lora["test_level"] == "sentence" and lora["level"] == "corpus"
    # points are the runs' corpus chrF (the aggregate), not the mean of sentence scores
    runs = {r.name: r for r in discover_runs(study)}
    assert lora["points"][0]["value"] == runs["s__lora__instruct"].aggregate["chrf"]
    # chrf/100 gains per decade: ~0.3, ~0.1, ~0.01 -> a rise, then flat from 1e8 on
    assert lora["verdict"] == "plateau" and lora["plateau"]["size"] == 1e8
    assert lora["plateau"]["p"] < 0.05 and lora["plateau"]["finding"] is True
    assert all(p["lo"] <= p["value"] <= p["hi"] for p in lora["points"])
    bleu = next(c for c in curves if c["strategy"] == "lora" and c["metric"] == "bleu")
    assert bleu["source"] == "aggregate"


def test_study_with_one_model_and_missing_pieces(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    write_run(study, rid("s", "lora"), 1e6, "spread", 0.5, 6, 1)
    write_run(study, rid("s", "full"), 1e6, "peaked", 0.5, 6, 2, attributions=False, metrics=False)
    result = compare_study(study, FAST)
    assert result["scale"]["curves"] == []
    assert result["agreement"]["pairs"] == [] and result["agreement"]["noise_floor"] is None
    assert result["tests"]["groups"] == []  # the full run has nothing per example to compare
    status = {r["name"]: r["status"] for r in result["runs"]["runs"]}
    assert status["s__full__instruct"] == "incomplete"


def test_an_all_zero_example_is_left_out_not_counted_as_uniform(tmp_path):
    study = make_study(tmp_path, n_examples=6, models=("s",), failed=False)
    path = study / "attributions" / "s__lora__instruct.parquet"
    frame = pd.read_parquet(path)
    frame.loc[frame["example_id"] == "ex000", "score"] = 0.0
    frame.to_parquet(path)
    result = compare_study(study, FAST)
    rows = {r["example_id"]: r for r in result["concentration"]["per_example"]["s__lora__instruct"]}
    assert rows["ex000"]["gini"] is None
    assert result["concentration"]["per_run"]["s__lora__instruct"]["gini"]["n"] == 5
    group = result["tests"]["groups"][0]
    assert group["metrics"]["gini"]["n"] == 5  # paired over the examples every strategy has


def test_malformed_metrics_file_is_named(tmp_path):
    study = tmp_path / "study"
    (study / "metrics").mkdir(parents=True)
    StudyLayout(study).write_identity(rid("s", "lora"))
    (study / "metrics" / "s__lora__instruct.json").write_text('{"aggregate": ')
    with pytest.raises(TunelensError, match=r"s__lora__instruct\.json:1: malformed JSON"):
        compare_study(study, FAST)
    (study / "metrics" / "s__lora__instruct.json").write_text(
        '{"aggregate": {"chrf": 1.0}, "per_example": [{"chrf": 1.0}]}')
    with pytest.raises(TunelensError, match=r"s__lora__instruct\.json: field 'per_example\.0\.id': missing"):
        compare_study(study, FAST)


def test_runs_come_from_identities_not_file_names(tmp_path):
    """Identity is data: a model whose name has ``__`` in it is one model, a RAG run shares its
    twin's model folder, a model known only from its run.json counts, and a file nobody
    recorded is reported as unrecorded rather than parsed."""
    study = tmp_path / "study"
    study.mkdir()
    odd = rid("tiny__v2", "lora")  # a name parsing would split wrongly
    write_run(study, odd, 1e6, "spread", 0.5, 6, 1)
    rag = rid("tiny__v2", "lora", rag=True)
    write_run(study, rag, 1e6, "spread", 0.5, 6, 2, model_dir=False)
    write_run(study, rid("tiny__v2", "full"), 1e6, "peaked", 0.5, 6, 3, record=False)
    layout = StudyLayout(study)
    elsewhere = layout.models / "my-adapter"  # trained outside a study: the folder is not its name
    elsewhere.mkdir()
    (elsewhere / "run.json").write_text(json.dumps({
        "identity": rid("base", "dora").to_dict(), "strategy": "dora", "total_params": 1e6}))
    (layout.metrics_dir / "m__lora__instruct.json").write_text('{"aggregate": {"chrf": 1.0}}')
    (layout.metrics_dir / "summary.json").write_text("{}")

    runs = {r.name: r for r in discover_runs(study)}
    assert set(runs) == {odd.name, rag.name, "tiny__v2__full__instruct", "base__dora__instruct"}
    assert runs["base__dora__instruct"].model_dir == "my-adapter"
    assert runs[odd.name].model == "tiny__v2" and runs[odd.name].strategy == "lora"
    assert runs[rag.name].rag and runs[rag.name].model_dir == odd.name  # the twin's trained model
    assert runs["tiny__v2__full__instruct"].run_json is not None  # known from run.json alone

    result = compare_study(study, FAST)
    unrecorded = {f["run"]: f for f in result["runs"]["failures"] if f["status"] == "unrecorded"}
    assert set(unrecorded) == {"m__lora__instruct", "summary"}
    assert "metrics/m__lora__instruct.json" in unrecorded["m__lora__instruct"]["error"]
    assert "m__lora__instruct" not in result["runs"]["primary"]


def test_a_study_with_outputs_but_no_identities_says_so(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    write_run(study, rid("s", "lora"), 1e6, "spread", 0.5, 4, 1, record=False, model_dir=False)
    with pytest.raises(TunelensError, match=r"no runs found .*1 output\(s\) without one"):
        compare_study(study, FAST)


def test_primary_run_is_the_unsuffixed_one(tmp_path):
    study = make_study(tmp_path, n_examples=4, models=("s",), replicate=True, failed=False)
    runs = discover_runs(study)
    assert {r.cell for r in runs} == {"s__full__instruct", "s__lora__instruct", "s__qlora__instruct"}
    assert "s__lora__instruct" in [r.name for r in primary_runs(runs)]
    replica = next(r for r in runs if r.seed == 1)
    assert replica.run_json is not None and replica.params == 1e6  # shares its cell's model
    assert replica.model_dir == "s__lora__instruct"


def test_cli_compare_prints_a_summary_and_fails_cleanly(tmp_path, capsys, monkeypatch):
    from tunelens import cli

    monkeypatch.setattr(cli.console, "width", 200)
    study = make_study(tmp_path, n_examples=8, models=("s",))
    out = tmp_path / "elsewhere"
    assert main(["compare", "--study", str(study), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "gini" in text and "s__full__instruct" in text
    assert (out / "tests.json").exists() and not (study / "stats").exists()
    config = tmp_path / "study.yaml"
    config.write_text("comparison:\n  top_k: 2\n  bootstrap_samples: 50\n  permutations: 50\n")
    assert main(["compare", "--study", str(study), "--config", str(config)]) == 0
    assert json.loads((study / "stats" / "concentration.json").read_text())["top_k"] == 2
    config.write_text("comparison:\n  top_kk: 2\n")
    assert main(["compare", "--study", str(study), "--config", str(config)]) == 2
    assert "comparison.top_kk" in capsys.readouterr().err
    assert main(["compare", "--study", str(tmp_path / "nope")]) == 2
    assert "no such study folder" in capsys.readouterr().err
