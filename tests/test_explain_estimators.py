"""Estimators against exact Shapley values computed by brute force with the same scorer."""

from __future__ import annotations

import numpy as np
import pytest

from tunelens.explain import attribute

PROMPT = "Ramps shall have a steep slope."  # 6 words
TARGET = "RULE K1-2.4 ramp.slope <= 8.33 %"
WORDS = {"granularity": "word"}


@pytest.fixture()
def exact(micro_model):
    model, tok = micro_model
    result = attribute(model, tok, PROMPT, TARGET, method="shapley_exact", **WORDS)[0]
    assert len(result.tokens) == 6
    assert result.perturbations == 2**6 - 1
    return result


def _empty_logprob(model, tok):
    """log p(target | every word replaced by unk), by a plain forward pass of the model."""
    import torch

    from tunelens.explain.features import build_features

    feats = build_features(tok, PROMPT, "word")
    ids = feats.input_ids.copy()
    ids[np.concatenate(feats.groups)] = tok.unk_token_id
    target = tok(TARGET, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([list(ids) + target])).logits[0, len(ids) - 1:-1]
    return float(torch.log_softmax(logits, -1)[torch.arange(len(target)), target].sum())


def test_exact_shapley_is_efficient(micro_model, exact):
    model, tok = micro_model
    assert exact.scores.sum() == pytest.approx(exact.target_logprob - _empty_logprob(model, tok), abs=1e-4)


def test_shapley_sampling_converges_to_exact(micro_model, exact):
    model, tok = micro_model
    scale = np.abs(exact.scores).max()
    errors = {}
    for n in (4, 64, 1024):
        est = attribute(model, tok, PROMPT, TARGET, method="shapley", n_samples=n, seed=3, **WORDS)[0]
        # every permutation telescopes to v(all) - v(none): efficiency holds for any sample
        assert est.scores.sum() == pytest.approx(exact.scores.sum(), abs=1e-6)
        errors[n] = np.abs(est.scores - exact.scores).max()
    assert errors[1024] < errors[4]
    assert errors[1024] < 0.05 * scale


def test_antithetic_permutations_reduce_variance(micro_model):
    model, tok = micro_model

    def spread(antithetic: bool) -> float:
        runs = [attribute(model, tok, PROMPT, TARGET, method="shapley", n_samples=4, seed=s,
                          antithetic=antithetic, **WORDS)[0].scores for s in range(25)]
        return float(np.var(runs, axis=0).sum())

    assert spread(True) < spread(False)


def test_kernel_shap_approaches_exact_and_is_efficient(micro_model, exact):
    model, tok = micro_model
    est = attribute(model, tok, PROMPT, TARGET, method="kernel_shap", n_samples=400, **WORDS)[0]
    assert est.scores.sum() == pytest.approx(exact.scores.sum(), abs=1e-6)
    assert np.abs(est.scores - exact.scores).max() < 0.1 * np.abs(exact.scores).max()


def test_per_target_rows_add_up_to_sequence_scores(micro_model):
    model, tok = micro_model
    for method in ("occlusion", "shapley", "lime", "kernel_shap"):
        res = attribute(model, tok, PROMPT, TARGET, method=method, n_samples=16, **WORDS)[0]
        n_target = len(tok(TARGET, add_special_tokens=False)["input_ids"])
        assert res.per_target.shape == (n_target, len(res.tokens))
        np.testing.assert_allclose(res.per_target.sum(axis=0), res.scores, atol=1e-9)
        assert res.method == method


def test_sample_baseline_averages_trials_and_is_seeded(micro_model):
    model, tok = micro_model
    one = attribute(model, tok, PROMPT, TARGET, baseline="sample", baseline_trials=1, seed=0, **WORDS)[0]
    again = attribute(model, tok, PROMPT, TARGET, baseline="sample", baseline_trials=1, seed=0, **WORDS)[0]
    other = attribute(model, tok, PROMPT, TARGET, baseline="sample", baseline_trials=1, seed=1, **WORDS)[0]
    four = attribute(model, tok, PROMPT, TARGET, baseline="sample", baseline_trials=4, seed=0, **WORDS)[0]
    np.testing.assert_array_equal(one.scores, again.scores)
    assert not np.allclose(one.scores, other.scores)
    assert four.perturbations == 4 * one.perturbations
