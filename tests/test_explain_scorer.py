"""The batched scorer: cache reuse, batching, head-only scoring, PEFT and 4-bit models, bad input."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from tunelens.errors import TunelensError
from tunelens.explain import attribute
from tunelens.explain import scorer as scorer_module
from tunelens.explain.features import build_features
from tunelens.explain.packing import pair_up
from tunelens.explain.scorer import Scorer

PROMPT = "Doors shall provide a clear opening of at least 32 inches (815 mm)."
TARGET = "RULE 1010.1.1 door.clear_width >= 815 mm"


def _reference_logprobs(model, tok, ids, target):
    """Per-token log p(target) by the model's own full forward, one sequence, no cache."""
    with torch.no_grad():
        logits = model(torch.tensor([list(ids) + list(target)])).logits[0, len(ids) - 1:-1]
    return torch.log_softmax(logits.float(), -1)[torch.arange(len(target)), list(target)].numpy()


@pytest.mark.parametrize("chunk_positions", [None, 3])
def test_scorer_matches_full_forward_for_each_variant(micro_model, monkeypatch, chunk_positions):
    model, tok = micro_model
    if chunk_positions:  # the head applied a few positions at a time, chunks crossing rows
        chunk_bytes = chunk_positions * 4 * model.config.vocab_size
        monkeypatch.setitem(scorer_module.HEAD_CHUNK_BYTES, "cpu", chunk_bytes)
        monkeypatch.setattr(scorer_module, "HEAD_MIN_ROWS", 1)
    ids = np.array(tok(PROMPT)["input_ids"])
    target = np.array(tok(TARGET, add_special_tokens=False)["input_ids"])
    variants = [ids.copy() for _ in range(5)]
    firsts = [1, 3, 6, 9, len(ids) - 1]
    for v, p in zip(variants, firsts, strict=True):
        v[p] = tok.unk_token_id
    variants.append(np.delete(ids, [2, 3]))  # deletion: shorter, shifted
    firsts.append(2)
    scorer = Scorer(model, batch_size=None)
    prepared = scorer.prepare(ids, target)
    got = scorer.score(prepared, variants, firsts)
    assert scorer.head_only is True
    for row, v in zip(got, variants, strict=True):
        np.testing.assert_allclose(row, _reference_logprobs(model, tok, v, target), atol=1e-5)
    np.testing.assert_allclose(prepared.logprobs, _reference_logprobs(model, tok, ids, target), atol=1e-5)


@pytest.mark.parametrize("drop_last", [False, True])
def test_packed_rows_score_exactly_and_compute_fewer_positions(micro_model, monkeypatch, drop_last):
    """Two perturbations per row over the cached prefix (odd and even counts, one deletion that
    shifts the rest, several packed passes) give the model's own log-probs for every variant."""
    model, tok = micro_model
    monkeypatch.setitem(scorer_module.PACK_TOKENS, "cpu", 64)  # several packed passes
    ids = np.array(tok(PROMPT)["input_ids"])
    target = np.array(tok(TARGET, add_special_tokens=False)["input_ids"])
    firsts = list(range(1, len(ids) - int(drop_last)))
    variants = [np.where(np.arange(len(ids)) == p, tok.unk_token_id, ids) for p in firsts]
    variants.append(np.delete(ids, [4]))
    firsts.append(4)
    computed = {}
    for packs in (True, False):
        scorer = Scorer(model)
        prepared = scorer.prepare(ids, target)
        assert scorer.packs is True  # the one-time check passed on a Llama
        scorer.packs = packs
        counted = []
        hook = model.base_model.register_forward_pre_hook(
            lambda m, a, kw, counted=counted: counted.append(kw["input_ids"].numel()), with_kwargs=True)
        try:
            got = scorer.score(prepared, variants, firsts)
        finally:
            hook.remove()
        computed[packs] = sum(counted)
        for row, v in zip(got, variants, strict=True):
            np.testing.assert_allclose(row, _reference_logprobs(model, tok, v, target), atol=2e-5)
    exact = sum(len(v) - p + len(target) - 1 for v, p in zip(variants, firsts, strict=True))
    # the deletion breaks the complementary lengths by one token: a few positions of padding
    assert exact <= computed[True] <= 1.07 * exact < computed[False]


def test_pair_up_fills_rows_with_complementary_suffixes():
    rows, width = pair_up(np.array([5, 9, 7, 6, 8, 4]))
    assert width == 13 and sorted(i for r in rows for i in r) == list(range(6))
    assert sorted(sorted(r) for r in rows) == [[0, 4], [1, 5], [2, 3]]
    rows, width = pair_up(np.array([3, 10, 9]))  # 10 + 3 fills a row, 9 goes alone
    assert width == 13 and sorted(map(sorted, rows)) == [[0, 1], [2]]


@pytest.mark.parametrize("baseline", ["unk", "delete"])
def test_prefix_reuse_and_batching_do_not_change_scores(micro_model, baseline):
    model, tok = micro_model
    runs = {
        (reuse, batch): attribute(model, tok, PROMPT, TARGET, baseline=baseline, reuse_prefix=reuse,
                                  batch_size=batch)[0]
        for reuse in (True, False) for batch in (1, 7, None)
    }
    ref = runs[(False, 1)]
    for key, res in runs.items():
        np.testing.assert_allclose(res.scores, ref.scores, atol=1e-5, err_msg=str(key))
        np.testing.assert_allclose(res.per_target, ref.per_target, atol=1e-5, err_msg=str(key))
    assert runs[(True, 1)].forward_passes == len(ref.tokens) + 1
    assert runs[(True, None)].forward_passes < runs[(True, 1)].forward_passes


def test_several_prompts_equal_one_at_a_time(micro_model):
    model, tok = micro_model
    prompts = [PROMPT, "Handrails shall be between 865 mm and 965 mm above the stair nosing."]
    targets = [TARGET, "RULE 505.4 handrail.height between 865 mm and 965 mm"]
    together = attribute(model, tok, prompts, targets)
    for p, t, res in zip(prompts, targets, together, strict=True):
        alone = attribute(model, tok, p, t)[0]
        np.testing.assert_allclose(res.scores, alone.scores, atol=1e-6)


def test_peft_adapter_is_used_unmerged(micro_model):
    import peft

    model, tok = micro_model
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    tuned = peft.get_peft_model(copy.deepcopy(model), config).eval()
    ours = attribute(tuned, tok, PROMPT, TARGET, reuse_prefix=True)[0]
    merged = copy.deepcopy(tuned).merge_and_unload()
    ref = attribute(merged, tok, PROMPT, TARGET, reuse_prefix=False, batch_size=1)[0]
    base = attribute(model, tok, PROMPT, TARGET)[0]
    np.testing.assert_allclose(ours.scores, ref.scores, atol=1e-4)
    assert ours.target_logprob == pytest.approx(ref.target_logprob, abs=1e-3)
    assert np.abs(ours.scores - base.scores).max() > 1e-3  # the adapter changes the answer


def test_four_bit_model_runs_and_reuse_is_exact(micro_model_dir, micro_model):
    from tunelens.config import QuantConfig
    from tunelens.models.loading import load_model

    quantized, tok = load_model(str(micro_model_dir), quantization=QuantConfig())
    assert any("4bit" in type(m).__name__ for m in quantized.modules())
    reused = attribute(quantized, tok, PROMPT, TARGET, batch_size=1)[0]
    fresh = attribute(quantized, tok, PROMPT, TARGET, reuse_prefix=False)[0]
    np.testing.assert_allclose(reused.scores, fresh.scores, atol=1e-4)
    full = attribute(micro_model[0], tok, PROMPT, TARGET)[0]
    assert np.isfinite(reused.scores).all()
    assert np.corrcoef(reused.scores, full.scores)[0, 1] > 0.5  # 4-bit noise, same model


def test_features_skip_specials_and_respect_the_window(micro_model):
    _, tok = micro_model
    rendered = f"### Clause:\n{PROMPT}\n### Rule:\n"
    lo = rendered.index(PROMPT)
    feats = build_features(tok, rendered, "token", feature_window=(lo, lo + len(PROMPT)))
    assert tok.bos_token_id not in feats.input_ids[np.concatenate(feats.groups)]
    assert "".join(feats.texts) == PROMPT
    assert all(lo <= s < e <= lo + len(PROMPT) for s, e in feats.spans)
    assert list(feats.input_ids).count(tok.bos_token_id) == 1
    pre_rendered = build_features(tok, tok.bos_token + PROMPT, "token")  # BOS already in the text
    assert list(pre_rendered.input_ids).count(tok.bos_token_id) == 1
    assert len(pre_rendered) == len(build_features(tok, PROMPT, "token"))
    words = build_features(tok, PROMPT, "word")
    assert words.texts == PROMPT.split()
    at = PROMPT.index("32")
    spans = build_features(tok, PROMPT, "span", spans=[(0, 5), (at, at + 2)])
    assert spans.texts == ["Doors", "32"]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompts": "", "targets": TARGET}, "empty prompt"),
        ({"prompts": PROMPT, "targets": ""}, "empty"),
        ({"prompts": PROMPT, "targets": TARGET, "method": "telepathy"}, "unknown method 'telepathy'"),
        ({"prompts": PROMPT, "targets": TARGET, "granularity": "letter"}, "unknown granularity"),
        ({"prompts": PROMPT, "targets": TARGET, "baseline": "zero"}, "unknown baseline"),
        ({"prompts": PROMPT, "targets": TARGET, "granularity": "span"}, "needs spans"),
        ({"prompts": PROMPT, "targets": TARGET * 40}, r"the target \(\d+ tokens\) leaves no room"),
        ({"prompts": [PROMPT, PROMPT], "targets": [TARGET]}, "2 prompts but 1 targets"),
        ({"prompts": PROMPT, "targets": TARGET, "antithetic": True}, "takes no option"),
        ({"prompts": PROMPT, "targets": TARGET, "feature_window": (5, 500)}, "feature_window"),
    ],
)
def test_bad_input_is_one_clear_error(micro_model, kwargs, message):
    model, tok = micro_model
    with pytest.raises(TunelensError, match=message):
        attribute(model, tok, **kwargs)


def test_missing_baseline_token_and_headless_model_are_clear_errors(micro_model_dir, micro_model):
    from transformers import AutoModel

    model, tok = micro_model
    tok = copy.deepcopy(tok)
    tok.mask_token = None
    with pytest.raises(TunelensError, match="has no mask token"):
        attribute(model, tok, PROMPT, TARGET, baseline="mask")
    body = AutoModel.from_pretrained(str(micro_model_dir))
    with pytest.raises(TunelensError, match="no language-model head"):
        attribute(body, tok, PROMPT, TARGET)
