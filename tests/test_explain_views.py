"""Attention maps and rollout, logit lens, base-vs-tuned CKA and relative weight change."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tunelens.errors import TunelensError
from tunelens.explain import attribute
from tunelens.explain.features import build_features
from tunelens.explain.scorer import Scorer
from tunelens.explain.views import (
    attention_maps,
    attention_rollout,
    layer_cka,
    linear_cka,
    logit_lens,
    weight_change,
)

PROMPT = "Ramps shall have a slope not steeper than 1:12 where the rise exceeds 150 mm."
TARGET = "RULE K1-2.4 ramp.slope <= 8.33 %"
OTHER = ["The clear width of a stair shall be not less than 900 mm.",
         "RULE 1011.5.2 stair.riser_height <= 178 mm"]


def _perturb(model, layer: int, scale: float = 0.5):
    gen = torch.Generator().manual_seed(layer)
    weight = model.model.layers[layer].mlp.up_proj.weight
    with torch.no_grad():
        weight.add_(torch.randn(weight.shape, generator=gen) * scale)
    return weight


def _lora(model, use_dora=False, layers=(1,)):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"],
                        layers_to_transform=list(layers), use_dora=use_dora)
    tuned = get_peft_model(model, config)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in tuned.named_parameters():
            if "lora_B" in name or "magnitude" in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return tuned


# -- attention -------------------------------------------------------------------------------------

def test_attention_maps_shape_rows_and_causality(micro_model):
    model, tok = micro_model
    maps = attention_maps(model, tok, PROMPT, TARGET)
    seq = len(tok(PROMPT)["input_ids"]) + len(tok(TARGET, add_special_tokens=False)["input_ids"])
    cfg = model.config
    assert maps.maps.shape == (cfg.num_hidden_layers, cfg.num_attention_heads, seq, seq)
    assert len(maps.tokens) == seq and maps.n_prompt == len(tok(PROMPT)["input_ids"])
    np.testing.assert_allclose(maps.maps.sum(-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps.maps, k=1) == 0)  # causal: no query sees a later key
    assert maps.heads_mean().shape == (cfg.num_hidden_layers, seq, seq)
    np.testing.assert_allclose(maps.mean(), maps.maps.mean(axis=(0, 1)))
    assert model.config._attn_implementation != "eager"  # switched back after the call


def test_rollout_rows_sum_to_one_and_follow_the_recursion(micro_model):
    model, tok = micro_model
    maps = attention_maps(model, tok, PROMPT, TARGET)
    rolled = maps.rollout()
    np.testing.assert_allclose(rolled.sum(-1), 1.0, atol=1e-9)
    assert np.all(np.triu(rolled, k=1) < 1e-12)
    eye = np.eye(rolled.shape[0])
    a0, a1 = ((0.5 * m.mean(0) + 0.5 * eye) for m in maps.maps.astype(np.float64))
    a0, a1 = a0 / a0.sum(-1, keepdims=True), a1 / a1.sum(-1, keepdims=True)
    np.testing.assert_allclose(rolled, a1 @ a0, atol=1e-9)
    plain = attention_rollout(maps.maps, residual=False)
    m0, m1 = maps.maps.astype(np.float64).mean(1)
    np.testing.assert_allclose(plain, m1 @ m0, atol=1e-6)
    with pytest.raises(TunelensError, match="rollout"):
        attention_rollout(np.ones((2, 3, 4)))


def test_attention_methods_read_the_target_predicting_rows(micro_model):
    model, tok = micro_model
    maps = attention_maps(model, tok, PROMPT, TARGET)
    features = build_features(tok, PROMPT, "word")
    n_target = len(tok(TARGET, add_special_tokens=False)["input_ids"])
    queries = np.arange(maps.n_prompt - 1, maps.n_prompt - 1 + n_target)
    occ = attribute(model, tok, PROMPT, TARGET, granularity="word")[0]
    for method, token_map, options in (
        ("attention", maps.mean(), {}),
        ("attention", maps.maps[1, 0], {"layer": 1, "head": 0}),
        ("rollout", maps.rollout(), {}),
    ):
        res = attribute(model, tok, PROMPT, TARGET, method=method, granularity="word", **options)[0]
        expected = np.stack([token_map[queries][:, g].sum(1) for g in features.groups], axis=1)
        np.testing.assert_allclose(res.per_target, expected, atol=1e-5)
        np.testing.assert_allclose(res.scores, expected.sum(0), atol=1e-4)
        assert res.tokens == occ.tokens and res.method == method and res.forward_passes == 1
        assert res.target_logprob == pytest.approx(occ.target_logprob, abs=1e-3)
        assert np.all(res.per_target.sum(1) <= 1 + 1e-6)
    with pytest.raises(TunelensError, match="out of range"):
        attribute(model, tok, PROMPT, TARGET, method="attention", layer=5)


# -- logit lens ------------------------------------------------------------------------------------

@pytest.mark.parametrize("adapter", [False, True])
def test_logit_lens_last_row_is_the_models_own_logprobs(micro_model, adapter):
    model, tok = micro_model
    if adapter:
        model = _lora(model, layers=(0, 1))
    lens = logit_lens(model, tok, PROMPT, TARGET)
    target_ids = tok(TARGET, add_special_tokens=False)["input_ids"]
    assert lens.logprobs.shape == (model.config.num_hidden_layers + 1, len(target_ids))
    assert lens.target_tokens == [tok.decode([i]) for i in target_ids]
    own = Scorer(model).prepare(tok(PROMPT)["input_ids"], target_ids).logprobs
    np.testing.assert_allclose(lens.final, own, atol=1e-4)
    assert not np.allclose(lens.logprobs[0], own, atol=1e-2)  # earlier layers read something else
    assert np.all(lens.logprobs <= 0)


# -- CKA ---------------------------------------------------------------------------------------------

def test_linear_cka_invariances_and_both_gram_forms():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 6))
    q, _ = np.linalg.qr(rng.normal(size=(6, 6)))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0)  # rotation, scale, shift
    y = rng.normal(size=(40, 9))
    value = linear_cka(x, y)
    assert 0 < value < 0.6
    # fewer samples than features takes the sample-Gram branch: same value as the feature branch
    wide_x, wide_y = rng.normal(size=(5, 30)), rng.normal(size=(5, 40))
    centred = [m - m.mean(0) for m in (wide_x, wide_y)]
    direct = np.square(centred[1].T @ centred[0]).sum() / (
        np.linalg.norm(centred[0].T @ centred[0]) * np.linalg.norm(centred[1].T @ centred[1]))
    assert linear_cka(wide_x, wide_y) == pytest.approx(direct)
    with pytest.raises(TunelensError):
        linear_cka(x, y[:10])


def test_layer_cka_is_one_until_the_changed_layer(micro_model):
    model, tok = micro_model
    prompts = [PROMPT, *OTHER]
    same = layer_cka(model, model, tok, prompts)
    assert same.shape == (model.config.num_hidden_layers + 1,)
    np.testing.assert_allclose(same, 1.0, atol=1e-9)
    for layer in (0, 1):
        changed = copy.deepcopy(model)
        _perturb(changed, layer)
        cka = layer_cka(model, changed, tok, prompts)
        np.testing.assert_allclose(cka[:layer + 1], 1.0, atol=1e-9)
        assert np.all(cka[layer + 1:] < 1 - 1e-4)
    pooled = layer_cka(model, changed, tok, prompts, pooling="mean")
    np.testing.assert_allclose(pooled[:2], 1.0, atol=1e-9)
    with pytest.raises(TunelensError, match="pooling"):
        layer_cka(model, model, tok, prompts, pooling="max")


# -- weight change -----------------------------------------------------------------------------------

def test_weight_change_full_fine_tuning(micro_model):
    model, _ = micro_model
    assert weight_change(model, copy.deepcopy(model)) == {0: 0.0, 1: 0.0}
    tuned = copy.deepcopy(model)
    original = model.model.layers[1].mlp.up_proj.weight.detach().double().clone()
    delta = _perturb(tuned, 1).detach().double() - original
    linear = [m.weight.detach().double() for m in model.model.layers[1].modules()
              if isinstance(m, torch.nn.Linear)]
    expected = float(delta.norm() / torch.sqrt(sum(w.square().sum() for w in linear)))
    change = weight_change(model, tuned)
    assert change[0] == 0.0
    assert change[1] == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("use_dora", [False, True])
def test_adapter_weight_change_equals_merged_minus_base(micro_model, use_dora):
    model, _ = micro_model
    base = copy.deepcopy(model)
    tuned = _lora(model, use_dora=use_dora)  # wraps `model` in place
    before = [p.detach().clone() for p in tuned.parameters()]
    change = weight_change(base, tuned)
    merged = weight_change(base, copy.deepcopy(tuned).merge_and_unload())
    assert change[0] == 0.0 and change[1] > 1e-3
    assert change == pytest.approx(merged, rel=1e-5, abs=1e-9)
    # the adapter's own base works as the reference too, and nothing was merged or changed
    assert weight_change(tuned.get_base_model(), tuned) == pytest.approx(change, rel=1e-9)
    assert all(torch.equal(a, b.detach()) for a, b in zip(before, tuned.parameters(), strict=True))
    assert not any(getattr(m, "merged", False) for m in tuned.modules())


def test_qlora_weight_change_uses_the_dequantized_base(micro_model_dir):
    from peft.utils.integrations import dequantize_module_weight

    from tunelens.config import QuantConfig
    from tunelens.models.loading import load_model

    base, _ = load_model(str(micro_model_dir), quantization=QuantConfig(bits=4))
    tuned = _lora(base)
    change = weight_change(tuned.get_base_model(), tuned)
    layer = tuned.get_base_model().model.layers[1]
    delta_sq = weight_sq = 0.0
    for name, module in layer.named_modules():
        if hasattr(module, "lora_A"):
            delta_sq += float(module.get_delta_weight("default").detach().double().square().sum())
            weight_sq += float(dequantize_module_weight(module.get_base_layer()).double().square().sum())
        elif type(module).__name__ == "Linear4bit" and not name.endswith("base_layer"):
            weight_sq += float(dequantize_module_weight(module).double().square().sum())
    assert change[0] == 0.0
    assert change[1] == pytest.approx(np.sqrt(delta_sq / weight_sq), rel=1e-6)
