"""How a model is loaded and prompted: its weights' dtype, remote code, and the prompt format.

A study names these per model (``models[].dtype``, ``trust_remote_code``, ``prompt_format``);
training records them in the run's ``run.json`` (the prompt format resolved to ``chat`` or
``plain``); generation, attribution and export read them back from there, so a run is always
reloaded and prompted the way it was trained. A value given explicitly (a CLI flag) wins over
the record; with neither, the :class:`~tunelens.config.ModelSpec` defaults apply.

Prompt formats (the text itself is :mod:`tunelens.data.templates`'s):

* ``chat``: the clause as one user turn through the tokenizer's chat template, generation
  prompt appended: what an instruct model was tuned to see.
* ``plain``: the documented plain template (what the bundled ladder models learn).
* ``auto``: ``chat`` when the tokenizer has a chat template, else ``plain``.

A study's ``prompts`` axis (:class:`~tunelens.data.templates.NamedPrompt`) adds the
``instruction`` (run.json records it beside the format; absent: the default one) and the
``shots``, fixed examples generation places before the clause: given to generation, never
recorded, as training renders none (prompts that differ only in shots share a trained model).

A dtype is checked by computing in it (a small matmul and softmax on the device the model will
run on) rather than by a list of what should work: torch 2.13 runs float16 and bfloat16 on this
CPU, but builds and devices differ (a GPU without bfloat16, a CPU build without half kernels),
and a refusal before loading costs milliseconds where a failure mid-training costs the run.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunelens.config import DTYPES, PROMPT_FORMATS, ModelSpec
from tunelens.errors import TunelensError, check_choice


def _default(field: str):
    return ModelSpec.model_fields[field].default  # the schema is where defaults live


@dataclass(frozen=True)
class ModelSettings:
    """The three settings of :mod:`this module <tunelens.models.run_settings>` for one model."""

    dtype: str = _default("dtype")
    trust_remote_code: bool = _default("trust_remote_code")
    prompt_format: str = _default("prompt_format")
    instruction: str | None = None  # None: tunelens.data.templates.INSTRUCTION
    shots: tuple[dict, ...] = ()  # few-shot examples placed before the clause (generation only)

    @classmethod
    def of(cls, model: str, dtype: str | None = None, trust_remote_code: bool | None = None,
           prompt_format: str | None = None, instruction: str | None = None,
           shots: Sequence[dict] | None = None) -> ModelSettings:
        """What was given, else what ``model``'s ``run.json`` records, else the defaults."""
        recorded = recorded_settings(model)
        given = {"dtype": dtype, "trust_remote_code": trust_remote_code,
                 "prompt_format": prompt_format, "instruction": instruction}
        chosen = {k: v if v is not None else recorded.get(k, getattr(cls, k)) for k, v in given.items()}
        check_choice(chosen["dtype"], DTYPES, f"{model}: unknown dtype")
        check_choice(chosen["prompt_format"], PROMPT_FORMATS, f"{model}: unknown prompt format")
        return cls(**chosen, shots=tuple(shots or ()))

    def record(self, tokenizer) -> dict:
        """The keys ``run.json`` keeps (the prompt format resolved for this tokenizer)."""
        out = {"dtype": self.dtype, "trust_remote_code": self.trust_remote_code,
               "prompt_format": resolve_prompt_format(tokenizer, self.prompt_format)}
        if self.instruction is not None:
            out["instruction"] = self.instruction
        return out

    def render(self, tokenizer, clause: str, retrieved: Sequence[dict] = ()) -> str:
        """The model input for ``clause`` as generation sees it: the shots, then any retrieved
        examples, then the clause, in this run's format and instruction."""
        return render(tokenizer, clause, [*self.shots, *retrieved], self.prompt_format,
                      self.instruction)


def recorded_settings(model: str) -> dict:
    """The settings a training run folder's ``run.json`` records (empty for anything else)."""
    from tunelens.io import read_json

    path = Path(str(model)).expanduser() / "run.json"
    if not path.is_file():
        return {}
    info = read_json(path)
    if not isinstance(info, dict):
        raise TunelensError(f"{path}: expected a JSON object")
    recorded = {k: info[k] for k in ("dtype", "trust_remote_code", "prompt_format", "instruction")
                if k in info}
    if not isinstance(recorded.get("trust_remote_code", False), bool):
        raise TunelensError(f"{path}: 'trust_remote_code' must be true or false")
    if not isinstance(recorded.get("instruction", ""), str):
        raise TunelensError(f"{path}: 'instruction' must be text")
    for key, choices in (("dtype", DTYPES), ("prompt_format", PROMPT_FORMATS)):
        if key in recorded:
            check_choice(recorded[key], choices, f"{path}: unknown " + key.replace("_", " "))
    return recorded


# -- dtype ----------------------------------------------------------------------------------------

def declared_dtype(config) -> str:
    """The dtype a checkpoint's config declares (what ``dtype="auto"`` loads), float32 if none."""
    value = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(value).removeprefix("torch.") if value is not None else "float32"
    return name if name in DTYPES else "float32"


def check_dtype(dtype: str, where: str, config=None) -> str:
    """The dtype the weights will have (``auto`` resolved through ``config``), once it is known
    that this machine computes in it; else a one-line error before any weight is read."""
    check_choice(dtype, DTYPES, f"{where}: unknown dtype")
    resolved = declared_dtype(config) if dtype == "auto" else dtype
    problem = _cannot_compute(resolved, compute_device())
    if problem:
        said = f"dtype {resolved}" + (" (the checkpoint's, from dtype auto)" if dtype == "auto" else "")
        raise TunelensError(f"{where}: {said} cannot run on this machine's {compute_device()} "
                            f"({problem}); use dtype float32")
    return resolved


def compute_device() -> str:
    """Where models run here: ``cuda`` when a GPU is visible, else ``cpu``."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@functools.cache
def _cannot_compute(dtype: str, device: str) -> str | None:
    """Why ``device`` cannot do a matmul and a softmax in ``dtype``, or None when it can."""
    import torch

    if dtype == "float32":
        return None
    if device == "cuda" and dtype == "bfloat16" and not torch.cuda.is_bf16_supported():
        return "the GPU has no bfloat16"
    try:
        a = torch.ones(4, 4, dtype=getattr(torch, dtype), device=device)
        (a @ a).softmax(-1).sum().item()
    except (RuntimeError, TypeError, NotImplementedError) as exc:
        return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return None


# -- prompt format ---------------------------------------------------------------------------------

def resolve_prompt_format(tokenizer, prompt_format: str) -> str:
    """``chat`` or ``plain`` for this tokenizer; ``chat`` without a template is a one-line error."""
    from tunelens.data.templates import has_chat_template

    check_choice(prompt_format, PROMPT_FORMATS, f"{type(tokenizer).__name__}: unknown prompt format")
    if prompt_format == "auto":
        return "chat" if has_chat_template(tokenizer) else "plain"
    if prompt_format == "chat" and not has_chat_template(tokenizer):
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        raise TunelensError(f"{name}: prompt format 'chat' but the tokenizer has no chat template; "
                            "use 'plain' or 'auto'")
    return prompt_format


def render(tokenizer, clause: str, examples: Sequence[dict] = (), prompt_format: str = "auto",
           instruction: str | None = None) -> str:
    """The model input for one clause in ``prompt_format`` (the one rendering every stage uses)."""
    from tunelens.data.templates import render_plain, render_prompt

    if resolve_prompt_format(tokenizer, prompt_format) == "chat":
        return render_prompt(tokenizer, clause, examples, instruction)
    return render_plain(clause, examples, instruction)


def adds_special_tokens(tokenizer, text: str) -> bool:
    """Whether encoding ``text`` should add the tokenizer's special tokens (BOS): not when the
    text already starts with BOS, as most rendered chat templates do. Generation, attribution and
    training (:func:`tunelens.train.objectives.trl_prompt`) all follow this rule, so they feed the
    model the same ids."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (isinstance(bos, str) and bos and text.startswith(bos))
