"""Training objectives: how a (prompt, completion) row becomes what TRL's SFTTrainer learns from.

* ``instruct``: TRL's prompt/completion format. The prompt is the exact text generation and
  attribution feed the model (:func:`tunelens.models.run_settings.render` in the run's prompt
  format: the tokenizer's chat template, or the plain template; see :func:`trl_prompt` for BOS)
  and the completion ends with EOS, so the tuned model learns to stop. TRL masks the prompt
  tokens out of the loss (label -100) and the padding by *position* (its collator's attention
  mask), never by token id: with a chat model whose pad token is its end-of-turn token (SmolLM2),
  the EOS label that teaches it to stop survives (``tests/test_train_formats.py`` checks it).
* ``causal``: TRL's language-modelling format. Prompt and completion are joined by the plain
  template (:func:`render_causal`) plus EOS, and every token is a target.

Rows are read strictly (``file:line`` on the first bad one) before any model is loaded.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.contracts import ClauseRow, read_rows
from tunelens.data.templates import render_causal
from tunelens.errors import TunelensError, check_choice
from tunelens.models.run_settings import adds_special_tokens, render
from tunelens.train.catalog import OBJECTIVES


def check_objective(objective: str) -> None:
    check_choice(objective, OBJECTIVES, "unknown objective")


def load_split(data_dir: str | Path, split: str) -> list[dict]:
    """Rows of ``<data_dir>/<split>.jsonl``; each needs string ``prompt`` and ``completion``."""
    path = Path(data_dir) / f"{split}.jsonl"
    if not Path(data_dir).is_dir():
        raise TunelensError(f"{data_dir}: no such folder (expected train.jsonl and val.jsonl in it)")
    return [row.model_dump() for row in read_rows(path, ClauseRow, require=("completion",))]


def format_rows(rows: list[dict], tokenizer, objective: str, prompt_format: str = "auto",
                instruction: str | None = None) -> list[dict]:
    """Rows in the TRL format of ``objective`` (text only; TRL tokenises). ``prompt_format``
    (``chat``, ``plain`` or ``auto``) renders instruct prompts; causal rows are always plain.
    ``instruction`` replaces the default one (a study's named prompt)."""
    check_objective(objective)
    return _FORMAT[objective](rows, tokenizer, tokenizer.eos_token or "", prompt_format, instruction)


def _instruct_rows(rows: list[dict], tokenizer, eos: str, prompt_format: str,
                   instruction: str | None) -> list[dict]:
    return [{"prompt": trl_prompt(tokenizer, r["prompt"], prompt_format, instruction),
             "completion": _with_eos(r["completion"], eos)}
            for r in rows]


def _causal_rows(rows: list[dict], tokenizer, eos: str, prompt_format: str,
                 instruction: str | None) -> list[dict]:
    return [{"text": _with_eos(render_causal(r["prompt"], r["completion"], instruction), eos)}
            for r in rows]


# One implementation per name of tunelens.train.catalog.OBJECTIVES (a test checks they agree).
_FORMAT = {"instruct": _instruct_rows, "causal": _causal_rows}


def trl_prompt(tokenizer, prompt: str, prompt_format: str = "auto", instruction: str | None = None) -> str:
    """``render``'s text, as TRL must see it to produce the ids generation feeds the model.

    TRL tokenises a text prompt with the tokenizer's special tokens (BOS) added. A chat template
    usually writes BOS into the text already, and generation then encodes it without adding
    another (:func:`~tunelens.models.run_settings.adds_special_tokens`); so that TRL does not
    train on a doubled BOS, the template's leading special-token text is dropped when the
    tokenizer adds exactly those tokens itself.
    """
    text = render(tokenizer, prompt, (), prompt_format, instruction)
    if not adds_special_tokens(tokenizer, text):
        added = tokenizer("", add_special_tokens=True)["input_ids"]
        lead = tokenizer.decode(added) if added else ""
        if lead and text.startswith(lead):
            return text[len(lead):]
    return text


def to_dataset(rows: list[dict], tokenizer, objective: str, prompt_format: str = "auto"):
    from datasets import Dataset

    return Dataset.from_list(format_rows(rows, tokenizer, objective, prompt_format))


def example_text(example: dict) -> str:
    """The whole text of a formatted example (for length-based ordering)."""
    return example["text"] if "text" in example else example["prompt"] + example["completion"]


def _with_eos(text: str, eos: str) -> str:
    return text if not eos or text.endswith(eos) else text + eos
