"""Every tokenizer has a baseline: ``auto`` picks unk, else a pad that is not EOS, else a space,
and the attribution output records which one ran."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _tokenizers import STYLES, style_checkpoint, style_tokenizer
from conftest import MICRO_CORPUS

from tunelens.config import ExplanationConfig
from tunelens.explain import attribute, explain_run
from tunelens.explain.features import resolve_baseline

EXPECTED = {"gpt2": ("space", " "),  # its unk is <|endoftext|>, its EOS: not neutral
            "llama3": ("pad", "<|finetune_right_pad_id|>"),  # no unk; a reserved pad
            "sentencepiece": ("unk", "<unk>"),
            "smollm2": ("unk", "<|endoftext|>")}  # pad is its end-of-turn token: skipped


@pytest.mark.parametrize("style", sorted(STYLES))
def test_auto_resolves_per_tokenizer_family(style):
    tok = style_tokenizer(style, MICRO_CORPUS)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token  # what load_tokenizer does: such a pad must not be chosen
    chosen = resolve_baseline(tok, "auto")
    assert (chosen.name, chosen.text) == EXPECTED[style]
    assert tok.decode([chosen.token_id]) == chosen.text
    assert chosen.describe().startswith(f"auto → {chosen.name}")


def test_auto_is_the_default_and_explicit_baselines_still_fail_clearly():
    assert ExplanationConfig().baseline == "auto"
    tok = style_tokenizer("llama3", MICRO_CORPUS)
    from tunelens.errors import TunelensError

    with pytest.raises(TunelensError, match="has no unk token"):
        resolve_baseline(tok, "unk")


@pytest.fixture(scope="module")
def gpt2_checkpoint(tmp_path_factory):
    return style_checkpoint("gpt2", MICRO_CORPUS, tmp_path_factory.mktemp("gpt2") / "m")


def test_auto_on_a_tokenizer_without_unk_or_pad_perturbs_with_a_space(gpt2_checkpoint):
    from tunelens.models.loading import load_model

    model, tok = load_model(str(gpt2_checkpoint))
    model.eval()
    prompt, target = "The clear width of a stair shall be 900 mm.", "RULE stair.width >= 900 mm"
    auto = attribute(model, tok, prompt, target, baseline="auto")[0]
    space = attribute(model, tok, prompt, target, baseline="space")[0]
    eos = attribute(model, tok, prompt, target, baseline="unk")[0]  # <|endoftext|>, asked for
    assert auto.baseline == "space" and eos.baseline == "unk"
    np.testing.assert_allclose(auto.scores, space.scores)
    assert not np.allclose(auto.scores, eos.scores)  # it really replaced with something else


def test_explain_records_the_baseline_that_ran(gpt2_checkpoint, tmp_path):
    data = tmp_path / "rows.jsonl"
    data.write_text(json.dumps({"id": "a", "prompt": "Ramps shall have a slope of 1:12.",
                                "completion": "RULE ramp.slope <= 8.33 %"}) + "\n")
    out = tmp_path / "attr.parquet"
    summary = explain_run(str(gpt2_checkpoint), data, out, ExplanationConfig(), progress=False)
    assert (summary["baseline"], summary["baseline_token"]) == ("space", " ")
    assert set(pd.read_parquet(out)["baseline"]) == {"space"}
    assert "auto → space" in out.with_suffix(".html").read_text()
