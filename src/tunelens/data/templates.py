"""The prompt templates shared by training, generation and attribution.

One function renders a clause into the model's input so that every stage sees the same text: the
tokenizer's chat template when it has one, else the documented plain template below. Retrieved
examples (RAG) are placed before the clause in the same way for both.

Plain template (what the bundled ladder models are trained on)::

    ### Instruction:
    Translate the building-code clause into a rule.
    [### Example clause: ... / ### Example rule: ...]   (one pair per retrieved example)
    ### Clause:
    <clause>
    ### Rule:
    <completion><eos>
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

INSTRUCTION = "Translate the building-code clause into a rule."


def _examples_block(examples: Sequence[dict]) -> str:
    return "".join(
        f"### Example clause:\n{ex['prompt']}\n### Example rule:\n{ex['completion']}\n"
        for ex in examples
    )


def render_plain(prompt: str, examples: Sequence[dict] = (), instruction: str | None = None) -> str:
    """The plain template's prompt part; the completion follows it directly."""
    return (f"### Instruction:\n{instruction or INSTRUCTION}\n{_examples_block(examples)}"
            f"### Clause:\n{prompt}\n### Rule:\n")


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str, examples: Sequence[dict] = (),
                  instruction: str | None = None) -> str:
    """The model input for one clause (with optional retrieved examples), as text.

    With a chat template the instruction, examples and clause form one user turn and the
    generation prompt is appended; without one the plain template is used.
    """
    if has_chat_template(tokenizer):
        content = f"{instruction or INSTRUCTION}\n\n{_examples_block(examples)}Clause:\n{prompt}"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return render_plain(prompt, examples, instruction)


def render_causal(prompt: str, completion: str, instruction: str | None = None) -> str:
    """A paired example as one document for the causal objective (same template, joined)."""
    return render_plain(prompt, (), instruction) + completion


# -- named prompts: the study's ``prompts`` axis ----------------------------------------------

FEW_SHOT = re.compile(r"few-shot-([1-9]|1[0-6])")
PROMPT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")


@dataclass(frozen=True)
class NamedPrompt:
    """How a study cell prompts its model: a format (``auto`` follows the model's
    ``prompt_format``), an instruction (None: :data:`INSTRUCTION`) and a number of fixed
    examples from the training split placed before the clause (few-shot; at generation and
    attribution only: training always renders zero shots, so a fine-tuned model and a
    prompted one differ in what they were taught, not in how long their training rows are)."""

    format: str = "auto"
    instruction: str | None = None
    shots: int = 0


BUILTIN_PROMPTS = {"plain": NamedPrompt("plain"), "chat": NamedPrompt("chat"),
                   "auto": NamedPrompt("auto")}


def named_prompt(name: str, defined: dict[str, NamedPrompt] | None = None) -> NamedPrompt | None:
    """The prompt a name stands for: a study's own definition, a built-in (``plain``, ``chat``,
    ``auto``), or ``few-shot-N`` (N = 1..16, the model's format); None for an unknown name."""
    if defined and name in defined:
        return defined[name]
    if name in BUILTIN_PROMPTS:
        return BUILTIN_PROMPTS[name]
    if FEW_SHOT.fullmatch(name):
        return NamedPrompt("auto", None, int(name.rsplit("-", 1)[1]))
    return None


def pick_shots(rows: Sequence[dict], n: int) -> list[dict]:
    """``n`` fixed examples of a training split: the same for every cell and seed of a study
    (a seeded draw over the rows sorted by id), so prompts differ only by what they name."""
    if n <= 0:
        return []
    ordered = sorted(rows, key=lambda r: str(r["id"]))
    chosen = random.Random(0).sample(ordered, min(n, len(ordered)))
    return [{"id": str(r["id"]), "prompt": r["prompt"], "completion": r["completion"]} for r in chosen]
