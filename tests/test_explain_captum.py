"""The engine against Captum, the reference: same features, same baseline, same numbers.

Captum 0.9's ``LLMAttribution`` has two forward modes. ``forward_in_tokens=False`` teacher-forces
the target in one pass (what our scorer does); ``forward_in_tokens=True`` decodes token by token.
With its default ``use_cached_outputs=True`` that mode is wrong under transformers 5.x: transformers
5 dropped ``cache_position`` slicing from ``prepare_inputs_for_generation`` (callers must pass
``next_sequence_length``) and no longer advances ``cache_position`` in
``_update_model_kwargs_for_generation``, so from the second target token on Captum feeds the whole
sequence again on top of a cache that already holds it (cache length 10, 21, 33, ...): the model
sees the prompt twice and every log-prob after the first target token is off. Without the cache the
token-by-token mode is exact, and matches ours.
"""

from __future__ import annotations

import captum.attr as captum_attr
import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from tunelens.explain import attribute

PROMPT = "The clear width of a stair shall be not less than 900 mm."
TARGET = "RULE 1011.5.2 stair.width >= 900 mm"


def _captum_input(tokenizer, baseline_id):
    return captum_attr.TextTokenInput(PROMPT, tokenizer, baselines=baseline_id,
                                      skip_tokens=[tokenizer.bos_token_id])


@pytest.mark.parametrize("baseline", ["unk", "mask"])
def test_occlusion_equals_captum_feature_ablation(micro_model, baseline):
    model, tok = micro_model
    baseline_id = getattr(tok, f"{baseline}_token_id")
    ours = attribute(model, tok, [PROMPT], [TARGET], method="occlusion", baseline=baseline)[0]
    llm_attr = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tok)
    ref = llm_attr.attribute(_captum_input(tok, baseline_id), target=TARGET, forward_in_tokens=False)
    assert ours.tokens == [tok.convert_tokens_to_string([t]) for t in ref.input_tokens]
    np.testing.assert_allclose(ours.scores, ref.seq_attr.numpy(), atol=1e-4)
    np.testing.assert_allclose(ours.per_target, ref.token_attr.numpy(), atol=1e-4)
    assert np.abs(ours.scores).max() > 1e-3  # not trivially zero


def test_target_logprobs_equal_captum_token_by_token_without_cache(micro_model):
    model, tok = micro_model
    ours = attribute(model, tok, [PROMPT], [TARGET])[0]
    llm_attr = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tok)
    inp = _captum_input(tok, tok.unk_token_id)
    target_ids = torch.tensor(tok.encode(TARGET, add_special_tokens=False))
    exact = llm_attr._forward_func(None, inp, target_ids, False, None, True)[0]
    assert ours.target_logprob == pytest.approx(exact[0].item(), abs=1e-3)


def test_lime_ranks_like_captum_lime(micro_model):
    from captum._utils.models.linear_model import SkLearnLinearRegression

    model, tok = micro_model
    prompt, target = "Ramps shall have a slope not steeper than 1:12.", "RULE K1-2.4 ramp.slope <= 8.33 %"
    ours = attribute(model, tok, [prompt], [target], method="lime", n_samples=600, seed=1)[0]
    torch.manual_seed(0)
    # Captum's default surrogate is a Lasso (alpha 0.01) that zeroes most of these small
    # coefficients; a plain weighted least-squares fit is the estimator both sides implement.
    lime = captum_attr.Lime(model, interpretable_model=SkLearnLinearRegression())
    inp = captum_attr.TextTokenInput(prompt, tok, baselines=tok.unk_token_id,
                                     skip_tokens=[tok.bos_token_id])
    ref = captum_attr.LLMAttribution(lime, tok).attribute(inp, target=target, n_samples=600,
                                                          forward_in_tokens=False)
    assert len(ours.scores) == ref.seq_attr.numel()
    rho = spearmanr(ours.scores, ref.seq_attr.numpy())[0]
    assert rho > 0.8
