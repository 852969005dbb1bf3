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

from collections.abc import Sequence

INSTRUCTION = "Translate the building-code clause into a rule."


def _examples_block(examples: Sequence[dict]) -> str:
    return "".join(
        f"### Example clause:\n{ex['prompt']}\n### Example rule:\n{ex['completion']}\n"
        for ex in examples
    )


def render_plain(prompt: str, examples: Sequence[dict] = ()) -> str:
    """The plain template's prompt part; the completion follows it directly."""
    return f"### Instruction:\n{INSTRUCTION}\n{_examples_block(examples)}### Clause:\n{prompt}\n### Rule:\n"


def has_chat_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def render_prompt(tokenizer, prompt: str, examples: Sequence[dict] = ()) -> str:
    """The model input for one clause (with optional retrieved examples), as text.

    With a chat template the instruction, examples and clause form one user turn and the
    generation prompt is appended; without one the plain template is used.
    """
    if has_chat_template(tokenizer):
        content = f"{INSTRUCTION}\n\n{_examples_block(examples)}Clause:\n{prompt}"
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True
        )
    return render_plain(prompt, examples)


def render_causal(prompt: str, completion: str) -> str:
    """A paired example as one document for the causal objective (same template, joined)."""
    return render_plain(prompt) + completion
