"""Gradient methods (saliency, input×gradient, integrated gradients) against hand computations."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tunelens.errors import TunelensError
from tunelens.explain import attribute
from tunelens.explain.features import build_features
from tunelens.explain.scorer import Scorer

PROMPT = "The clear width of a stair shall be not less than 900 mm."
TARGET = "RULE 1011.5.2 stair.riser_height <= 178 mm"


def _target_ids(tokenizer):
    return tokenizer(TARGET, add_special_tokens=False)["input_ids"]


def _hand_gradients(model, tokenizer, prompt=PROMPT):
    """(prompt embeddings [P, H], gradients [T + 1, P, H]) of each target log-prob and their sum."""
    ids = torch.as_tensor(tokenizer(prompt)["input_ids"])
    target = torch.as_tensor(_target_ids(tokenizer))
    embed = model.get_input_embeddings()
    e = embed(ids).detach().requires_grad_(True)
    full = torch.cat([e, embed(target[:-1]).detach()])[None]
    logits = model(inputs_embeds=full).logits[0, len(ids) - 1:]
    lp = torch.log_softmax(logits, dim=-1).gather(-1, target[:, None])[:, 0]
    outputs = list(lp) + [lp.sum()]
    grads = torch.stack([torch.autograd.grad(o, e, retain_graph=True)[0] for o in outputs])
    return e.detach(), grads


def _randomise_lora(model):
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)


def test_input_x_gradient_and_saliency_equal_autograd(micro_model):
    model, tok = micro_model
    e, grads = _hand_gradients(model, tok)
    positions = np.concatenate(build_features(tok, PROMPT).groups)
    ixg = attribute(model, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    expected = (e[None] * grads).sum(-1).double().numpy()[:, positions]
    np.testing.assert_allclose(ixg.per_target, expected[:-1], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(ixg.scores, expected[-1], rtol=1e-4, atol=1e-6)
    sal = attribute(model, tok, PROMPT, TARGET, method="saliency")[0]
    norms = grads.norm(dim=-1).double().numpy()[:, positions]
    np.testing.assert_allclose(sal.per_target, norms[:-1], rtol=1e-4, atol=1e-7)
    # the sequence score is the norm of the summed gradient, not the sum of the norms
    np.testing.assert_allclose(sal.scores, norms[-1], rtol=1e-4, atol=1e-7)
    assert np.all(sal.scores < sal.per_target.sum(axis=0) + 1e-9)
    l1 = attribute(model, tok, PROMPT, TARGET, method="saliency", norm="l1")[0]
    np.testing.assert_allclose(l1.scores, grads[-1].abs().sum(-1).double().numpy()[positions], rtol=1e-4)


def test_integrated_gradients_completeness(micro_model):
    model, tok = micro_model
    res = attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", n_steps=64)[0]
    features = build_features(tok, PROMPT)
    baseline_ids = features.input_ids.copy()
    baseline_ids[np.concatenate(features.groups)] = tok.unk_token_id
    scorer = Scorer(model)
    prepared = scorer.prepare(features.input_ids, _target_ids(tok))
    at_baseline = scorer.score(prepared, [baseline_ids], [0])[0]
    per_token_gap = prepared.logprobs - at_baseline
    assert abs(per_token_gap.sum()) > 1e-3  # the check below is not trivially 0 ≈ 0
    np.testing.assert_allclose(res.per_target.sum(axis=1), per_token_gap, atol=2e-3, rtol=1e-2)
    assert res.scores.sum() == pytest.approx(per_token_gap.sum(), abs=2e-3, rel=1e-2)
    assert res.target_logprob == pytest.approx(prepared.logprobs.sum(), abs=1e-4)
    assert res.perturbations == 64


def test_gradient_results_line_up_with_occlusion(micro_model):
    model, tok = micro_model
    window = (PROMPT.index("stair"), PROMPT.index(" 900"))
    occ = attribute(model, tok, PROMPT, TARGET, granularity="word", feature_window=window)[0]
    for method in ("saliency", "input_x_gradient", "integrated_gradients"):
        options = {"n_steps": 8} if method == "integrated_gradients" else {}
        res = attribute(model, tok, PROMPT, TARGET, method=method, granularity="word",
                        feature_window=window, **options)[0]
        assert res.tokens == occ.tokens and res.spans == occ.spans
        assert res.target_tokens == occ.target_tokens
        assert res.per_target.shape == occ.per_target.shape == (len(_target_ids(tok)), len(occ.tokens))
        assert res.method == method and res.granularity == "word"
        assert res.target_logprob == pytest.approx(occ.target_logprob, abs=1e-3)
        assert np.all(np.isfinite(res.scores))


def test_word_scores_are_sums_of_token_scores(micro_model):
    model, tok = micro_model
    tokens = attribute(model, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    words = attribute(model, tok, PROMPT, TARGET, method="input_x_gradient", granularity="word")[0]
    features = build_features(tok, PROMPT)
    token_pos = {int(g[0]): j for j, g in enumerate(features.groups)}
    for j, group in enumerate(build_features(tok, PROMPT, "word").groups):
        expected = sum(tokens.scores[token_pos[int(p)]] for p in group)
        assert words.scores[j] == pytest.approx(expected, rel=1e-6, abs=1e-9)


def test_without_per_target_only_the_sequence_is_attributed(micro_model):
    model, tok = micro_model
    full = attribute(model, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    lean = attribute(model, tok, PROMPT, TARGET, method="input_x_gradient", per_target=False)[0]
    assert lean.per_target is None
    np.testing.assert_allclose(lean.scores, full.scores, rtol=1e-4, atol=1e-6)
    small = attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", n_steps=8, batch_size=3)[0]
    big = attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", n_steps=8)[0]
    np.testing.assert_allclose(small.per_target, big.per_target, rtol=1e-4, atol=1e-6)
    assert small.forward_passes > big.forward_passes


def test_peft_adapter_unmerged_matches_merged_model(micro_model):
    from peft import LoraConfig, get_peft_model

    model, tok = micro_model
    base_result = attribute(model, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    config = LoraConfig(r=4, target_modules=["q_proj", "v_proj", "up_proj"])
    tuned = get_peft_model(copy.deepcopy(model), config)
    _randomise_lora(tuned)
    unmerged = attribute(tuned, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    merged_model = copy.deepcopy(tuned).merge_and_unload()
    merged = attribute(merged_model, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    assert not np.allclose(unmerged.scores, base_result.scores, atol=1e-4)
    np.testing.assert_allclose(unmerged.per_target, merged.per_target, rtol=1e-3, atol=1e-5)
    assert any(isinstance(m, type(tuned.base_model.model.model.layers[0].self_attn.q_proj))
               for m in tuned.modules())  # still unmerged after attribution


def test_four_bit_model_gradients_equal_its_dequantized_twin(micro_model_dir, micro_model):
    """Gradients through 4-bit layers (after an eval-mode forward that may repack them for the CPU
    kernel, which has no backward) equal those of a float model holding the dequantized weights."""
    from peft.utils.integrations import dequantize_module_weight

    from tunelens.config import QuantConfig
    from tunelens.models.loading import load_model

    quantized, tok = load_model(str(micro_model_dir), quantization=QuantConfig(bits=4))
    quantized.eval()
    twin, _ = micro_model
    with torch.no_grad():  # before any forward: every 4-bit weight is still in its generic layout
        for name, module in quantized.named_modules():
            if type(module).__name__ == "Linear4bit":
                twin.get_submodule(name).weight.copy_(dequantize_module_weight(module).float())
        quantized(torch.as_tensor([tok(PROMPT)["input_ids"]]))
    ours = attribute(quantized, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    theirs = attribute(twin, tok, PROMPT, TARGET, method="input_x_gradient")[0]
    assert ours.target_logprob == pytest.approx(theirs.target_logprob, abs=1e-3)
    np.testing.assert_allclose(ours.per_target, theirs.per_target, rtol=1e-3, atol=1e-5)


def test_quantized_embeddings_fail_with_one_line(micro_model, monkeypatch):
    model, tok = micro_model
    frozen = torch.nn.Embedding(len(tok), 4)
    frozen.weight = torch.nn.Parameter(torch.zeros(len(tok), 4, dtype=torch.int8), requires_grad=False)
    monkeypatch.setattr(model, "get_input_embeddings", lambda: frozen)
    with pytest.raises(TunelensError, match="float input-embedding layer") as info:
        attribute(model, tok, PROMPT, TARGET, method="saliency")
    assert "\n" not in str(info.value)


def test_bad_options_fail_early(micro_model):
    model, tok = micro_model
    with pytest.raises(TunelensError, match="not delete"):
        attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", baseline="delete")
    with pytest.raises(TunelensError, match="norm"):
        attribute(model, tok, PROMPT, TARGET, method="saliency", norm="l3")
    with pytest.raises(TunelensError, match="n_steps"):
        attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", n_steps=0)
    with pytest.raises(TunelensError, match="takes no option"):
        attribute(model, tok, PROMPT, TARGET, method="saliency", n_steps=8)


def test_sampled_baselines_average_integrated_gradients(micro_model):
    model, tok = micro_model
    one = attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", baseline="sample",
                    baseline_trials=1, n_steps=8, seed=3, per_target=False)[0]
    two = attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", baseline="sample",
                    baseline_trials=2, n_steps=8, seed=3, per_target=False)[0]
    again = attribute(model, tok, PROMPT, TARGET, method="integrated_gradients", baseline="sample",
                      baseline_trials=2, n_steps=8, seed=3, per_target=False)[0]
    np.testing.assert_allclose(two.scores, again.scores)
    assert not np.allclose(one.scores, two.scores)
    assert two.perturbations == 16
