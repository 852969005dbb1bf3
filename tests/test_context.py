"""Prompts longer than the model's context: one rule (cut from the left, count it) in generate and
explain. Regression: a 5 MB prompt made ``generate`` run for minutes."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from tunelens.config import ExplanationConfig, GenerationConfig
from tunelens.errors import TunelensError
from tunelens.models.context import ContextWarning, PromptFitter, context_length, prompt_budget

CONTEXT = 96
CLAUSE = "The clear width of a stair shall be not less than 900 mm."


@pytest.fixture(scope="module")
def short_model_dir(tmp_path_factory):
    """The micro model's shape with a context of only 96 positions."""
    from conftest import MICRO_CORPUS

    from tunelens.models.zoo import new_llama, save_checkpoint, train_tokenizer

    tokenizer = train_tokenizer(MICRO_CORPUS, vocab_size=400)
    model = new_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, max_positions=CONTEXT, seed=0)
    return save_checkpoint(model, tokenizer, tmp_path_factory.mktemp("short-context"))


@pytest.fixture(scope="module")
def short_model(short_model_dir):
    from tunelens.models.loading import load_model

    return load_model(str(short_model_dir))


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_budget_is_the_context_less_what_follows(short_model):
    model, _ = short_model
    assert context_length(model) == CONTEXT
    assert prompt_budget(model, 8) == CONTEXT - 8
    with pytest.raises(TunelensError, match=r"max_new_tokens \(96 tokens\) leaves no room"):
        prompt_budget(model, CONTEXT)


@pytest.mark.parametrize("repeat", [1, 4, 1000])  # fits; cut after full tokenization; cut from a tail
def test_fitter_keeps_bos_and_the_last_tokens(short_model, repeat):
    _, tokenizer = short_model
    text = "### Clause:\n" + CLAUSE * repeat + "\n### Rule:\n"
    full = tokenizer(text, return_offsets_mapping=True)
    fitted = PromptFitter(tokenizer, 30)(text)
    if len(full["input_ids"]) <= 30:
        assert fitted.ids == full["input_ids"] and fitted.truncated_chars == 0
        return
    assert len(fitted.ids) == 30
    assert fitted.ids[0] == tokenizer.bos_token_id == full["input_ids"][0]
    assert fitted.ids[1:] == full["input_ids"][-29:]  # the end of the prompt, exactly as tokenized whole
    assert fitted.truncated_chars == full["offset_mapping"][-29][0]  # the characters before them


def test_huge_prompt_is_cut_and_counted_not_hanging(short_model_dir, tmp_path):
    """A 2 MB clause: generation reads only its end, says so once, and records the cut per row."""
    from tunelens.infer.generate import generate_predictions

    huge = CLAUSE * 35_000  # ~2 MB; tokenizing it all would take seconds, generating over it minutes
    data = _write(tmp_path / "test.jsonl", [{"id": "huge", "prompt": huge, "completion": "RULE 1"},
                                            {"id": "short", "prompt": "Stairs.", "completion": "RULE 2"}])
    out = tmp_path / "preds.jsonl"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = generate_predictions(str(short_model_dir), data, out,
                                       GenerationConfig(max_new_tokens=8, stop=[]), progress=False)
    rows = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert summary["rows"] == 2 and summary["truncated_rows"] == 1
    assert len(huge) - 200 < rows["huge"]["truncated_chars"] < len(rows["huge"]["rendered_prompt"])
    assert "truncated_chars" not in rows["short"]
    cut = [w for w in caught if issubclass(w.category, ContextWarning)]
    assert len(cut) == 1 and "1 of 2 prompts" in str(cut[0].message)


def test_explain_cuts_template_context_never_the_clause(short_model_dir, tmp_path):
    """Retrieved examples before the clause make the prompt too long: they are cut, the clause's
    tokens all stay features, and the cut is counted."""
    from tunelens.explain.run import explain_run

    context = "### Example clause:\n" + "Ramps shall have a slope. " * 30
    rendered = f"{context}### Clause:\n{CLAUSE}\n### Rule:\n"
    data = _write(tmp_path / "preds.jsonl", [{"id": "a", "prompt": CLAUSE, "reference": "RULE 1 x >= 9 mm",
                                              "prediction": "x", "rendered_prompt": rendered}])
    out = tmp_path / "attr.parquet"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = explain_run(str(short_model_dir), data, out, ExplanationConfig(heatmap=False),
                              progress=False)
    assert summary["truncated_examples"] == 1
    frame = pd.read_parquet(out)
    assert set(frame.target) == {"reference", "generation"}  # the default explains both
    for _, rows in frame.groupby("target"):
        assert "".join(rows.token) == CLAUSE
    assert sum(issubclass(w.category, ContextWarning) for w in caught) == 1


@pytest.mark.parametrize("repeat", [6, 40_000])  # tokenized, then refused; refused before tokenizing
def test_explain_refuses_a_clause_that_does_not_fit(short_model_dir, tmp_path, repeat):
    from tunelens.explain.run import explain_run

    data = _write(tmp_path / "test.jsonl", [{"id": "ok", "prompt": "Stairs.", "completion": "RULE 1"},
                                            {"id": "long-one", "prompt": CLAUSE * repeat,
                                             "completion": "RULE 2"}])
    with pytest.raises(TunelensError, match=r"^example long-one: .*context") as err:
        explain_run(str(short_model_dir), data, tmp_path / "a.parquet", ExplanationConfig(heatmap=False),
                    progress=False)
    assert "\n" not in str(err.value)


def test_fitter_keeps_a_templates_leading_special_token_written_as_text(short_model):
    """A chat template writes BOS into the text (tokenized without adding specials): it stays."""
    _, tokenizer = short_model
    text = tokenizer.bos_token + "### Clause:\n" + CLAUSE * 200 + "\n### Rule:\n"
    full = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    fitted = PromptFitter(tokenizer, 20, add_special_tokens=False)(text)
    assert fitted.ids == [tokenizer.bos_token_id, *full["input_ids"][-19:]]
    assert fitted.truncated_chars == full["offset_mapping"][-19][0] - len(tokenizer.bos_token)
