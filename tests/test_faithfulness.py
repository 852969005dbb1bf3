"""Faithfulness measures (ERASER, deletion/insertion) and the model-randomisation check.

The model is a micro Llama trained for ~2 s to copy the second word of its prompt, so the right
explanation is known: the copied word carries the target, the other words almost nothing.
"""

from __future__ import annotations

import numpy as np
import pytest

from tunelens.errors import TunelensError
from tunelens.explain import attribute
from tunelens.explain.faithfulness import (
    curve_steps,
    evaluate_rankings,
    faithfulness,
    mean_summary,
    top_counts,
)
from tunelens.explain.randomisation import randomisation_check, randomised_copy

WORDS = ["building", "clear", "exceed", "less", "mm", "not", "shall", "stair", "than", "the"]


def _copy_task(rng, n: int) -> tuple[list[str], list[str]]:
    rows = rng.choice(len(WORDS), size=(n, 5))
    prompts = ["Clause:" + "".join(" " + WORDS[j] for j in row) + " ->" for row in rows]
    return prompts, [" " + WORDS[row[2]] for row in rows]


@pytest.fixture(scope="module")
def copier():
    """(model, tokenizer, prompts, targets): a micro Llama that copies the third word."""
    import torch
    from conftest import MICRO_CORPUS

    from tunelens.models.zoo import new_llama, train_tokenizer

    tok = train_tokenizer(MICRO_CORPUS, vocab_size=400)
    model = new_llama(tok, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    rng = np.random.default_rng(0)
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    for _ in range(120):
        prompts, targets = _copy_task(rng, 16)
        ids = torch.tensor([tok(p)["input_ids"] + tok(t, add_special_tokens=False)["input_ids"]
                            for p, t in zip(prompts, targets, strict=True)])
        labels = torch.full_like(ids, -100)
        labels[:, -1] = ids[:, -1]
        loss = model(input_ids=ids, labels=labels).loss
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    prompts, targets = _copy_task(np.random.default_rng(1), 4)
    return model, tok, prompts, targets


class Additive:
    """v(mask) = w · mask, a value function whose measures are worked out by hand below."""

    def __init__(self, weights):
        self.weights = np.asarray(weights, dtype=np.float64)
        self.full_mask = np.ones(len(self.weights), dtype=bool)
        self.full = self.weights[None].sum(axis=1)  # one target token
        self.calls = 0

    def __call__(self, masks):
        self.calls += 1
        return (np.asarray(masks, dtype=float) @ self.weights)[:, None]


def test_hand_checked_values_on_an_additive_model():
    value = Additive([3.0, 1.0, 0.0, -1.0])
    got = evaluate_rankings(value, {"exact": value.weights, "reversed": -value.weights},
                            fractions=(0.25, 0.5))
    exact, worse = got["exact"], got["reversed"]
    assert value.calls == 1  # every mask of every method in one batched call
    np.testing.assert_allclose(exact.comprehensiveness, [3.0, 4.0])  # drop top 1, top 2
    np.testing.assert_allclose(exact.sufficiency, [0.0, -1.0])  # keep top 1, top 2
    np.testing.assert_allclose(exact.deletion, [0, -3, -4, -4, -3])
    np.testing.assert_allclose(exact.insertion, [-3, 0, 1, 1, 0])
    assert exact.deletion_area == pytest.approx(-3.125)
    assert exact.insertion_area == pytest.approx(0.125)
    assert exact.aopc_comprehensiveness == pytest.approx(3.5)
    assert exact.empty_drop == pytest.approx(3.0)  # v(all) - v(none)
    deletion, insertion = exact.curves_at(np.array([0.0, 0.125, 1.0]))
    np.testing.assert_allclose(deletion, [0.0, -1.5, -3.0])
    np.testing.assert_allclose(insertion, [-3.0, -1.5, 0.0])
    mean = mean_summary([exact, worse], grid=5)
    assert mean["examples"] == 2 and mean["curve_x"] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert mean["comprehensiveness"] == pytest.approx((3.5 + worse.aopc_comprehensiveness) / 2)
    np.testing.assert_allclose(mean["deletion_curve"], (exact.deletion + worse.deletion) / 2)
    assert worse.aopc_comprehensiveness < exact.aopc_comprehensiveness
    assert worse.deletion_area > exact.deletion_area and worse.insertion_area < exact.insertion_area


def test_counts_and_curve_points():
    assert list(top_counts(20, (0.01, 0.05, 0.1, 0.2, 0.5))) == [1, 1, 2, 4, 10]
    assert list(curve_steps(4)) == [0, 1, 2, 3, 4]
    steps = curve_steps(100, points=21)
    assert steps[0] == 0 and steps[-1] == 100 and len(steps) == 21
    with pytest.raises(TunelensError, match="fractions"):
        top_counts(5, (0.0,))


def test_occlusion_beats_a_random_attribution_on_a_trained_model(copier):
    model, tok, prompts, targets = copier
    results = attribute(model, tok, prompts, targets, method="occlusion", granularity="word")
    for prompt, target, occ in zip(prompts, targets, results, strict=True):
        got = faithfulness(model, tok, prompt, target, {"occlusion": occ.scores}, granularity="word",
                           random_reference=7)
        o, r = got["occlusion"], got["random"]
        # identities: removing the top feature alone costs exactly its occlusion score, and the
        # deletion curve ends (insertion curve starts) at the empty prompt for every ranking
        assert o.comprehensiveness[0] == pytest.approx(occ.scores.max(), abs=1e-6)
        assert o.target_logprob == pytest.approx(occ.target_logprob, abs=1e-6)
        assert o.deletion[-1] == pytest.approx(r.deletion[-1]) == pytest.approx(o.insertion[0])
        assert o.aopc_comprehensiveness > r.aopc_comprehensiveness + 0.5
        assert o.deletion_area < r.deletion_area
        assert o.aopc_sufficiency < r.aopc_sufficiency


def test_randomised_model_loses_faithfulness_and_a_model_blind_method_fails(copier):
    model, tok, prompts, targets = copier
    before = [p.detach().clone() for p in model.parameters()]
    clone = randomised_copy(model, seed=3)
    assert all(torch_equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    assert not torch_equal(clone.get_input_embeddings().weight, model.get_input_embeddings().weight)
    head_only = randomised_copy(model, seed=3, top=1)  # the cascade's first step: the head alone
    assert not torch_equal(head_only.lm_head.weight, model.lm_head.weight)
    assert torch_equal(head_only.model.layers[1].mlp.up_proj.weight, model.model.layers[1].mlp.up_proj.weight)
    assert torch_equal(head_only.get_input_embeddings().weight, model.get_input_embeddings().weight)

    check = randomisation_check(model, tok, prompts, targets, "occlusion", granularity="word",
                                cascade=True)
    assert check.mean_rank_correlation < 0.5
    assert [name for name, _ in check.cascade] == ["head", "layer 1", "layer 0", "embeddings"]
    assert check.cascade[-1][1] < 0.5  # every block re-drawn: as unrelated as the full copy
    assert np.mean([f.aopc_comprehensiveness for f in check.randomised]) < \
        np.mean([f.aopc_comprehensiveness for f in check.trained]) - 1.0
    assert check.passed()

    # an "explanation" that ignores the model (word length) is identical on both: it must fail
    def blind(_model):
        return [np.array([len(w) for w in p.split()], dtype=float) for p in prompts]

    blind_check = randomisation_check(model, tok, prompts, targets, explain=blind, granularity="word",
                                      cascade=True)
    np.testing.assert_allclose(blind_check.rank_correlation, 1.0)
    assert all(rho == pytest.approx(1.0) for _, rho in blind_check.cascade)
    assert not blind_check.passed()


def torch_equal(a, b) -> bool:
    import torch

    return bool(torch.equal(a, b))


def test_scores_for_other_features_are_one_clear_error(copier):
    model, tok, prompts, targets = copier
    with pytest.raises(TunelensError, match="other features"):
        faithfulness(model, tok, prompts[0], targets[0], {"occlusion": np.zeros(3)}, granularity="word")


def test_cli_measures_each_parquet_beside_random_and_refuses_mismatches(micro_model_dir, tmp_path,
                                                                         capsys):
    import json

    import pandas as pd

    from tunelens.cli import main
    from tunelens.config import ExplanationConfig
    from tunelens.explain.run import explain_run

    data = tmp_path / "d.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"id": "a", "prompt": "The clear width of a stair shall be not less than 900 mm.",
         "completion": "RULE 1011.5.2 stair.width >= 900 mm"},
        {"id": "b", "prompt": "Ramps shall have a slope not steeper than 1:12.",
         "completion": "RULE K1-2.4 ramp.slope <= 8.33 %"}]))
    parquets = {}
    for method in ("occlusion", "attention"):
        parquets[method] = tmp_path / f"{method}.parquet"
        explain_run(str(micro_model_dir), data, parquets[method],
                    ExplanationConfig(method=method, granularity="word", heatmap=False), progress=False)
    out = tmp_path / "f.json"
    base = ["faithfulness", "--model", str(micro_model_dir), "--data", str(data), "--out", str(out)]
    argv = [*base, "--attributions", str(parquets["occlusion"]), "--attributions", str(parquets["attention"])]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "occlusion" in printed and "random" in printed
    summary = json.loads(out.read_text())
    assert set(summary["methods"]) == {"occlusion", "attention", "random"}
    assert summary["examples"] == 2 and len(summary["records"]) == 6
    occlusion = pd.read_parquet(parquets["occlusion"])
    for rec in summary["records"]:
        assert rec["granularity"] == "word"
        if rec["method"] == "occlusion":  # the prompt and features are rebuilt as explain built them
            top = occlusion[occlusion.example_id == rec["example_id"]].score.max()
            assert rec["comprehensiveness@0.01"] == pytest.approx(top, abs=1e-5)

    token = tmp_path / "token.parquet"
    explain_run(str(micro_model_dir), data, token, ExplanationConfig(heatmap=False), progress=False)
    attention = ["--attributions", str(parquets["attention"])]
    for bad, message in (([*base, *attention, "--attributions", str(token)], "other features"),
                         ([*argv, "--attributions", str(token)], "is in both"),
                         ([*base, "--attributions", str(data)], "not a readable parquet"),
                         ([*argv, "--out", str(tmp_path / "f.txt")], ".json file"),
                         ([*argv, "--data", str(tmp_path / "none.jsonl")], "no such file")):
        assert main(bad) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "f.txt").exists()
