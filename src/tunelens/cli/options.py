"""What every verb shares: the common flags, the checks made before any work, the summary table.

A verb that trains or generates for minutes must not find out at the end that ``--out`` cannot be
written, so each writing verb calls :func:`tunelens.io.check_writable` first. Flags that several verbs take
(``--config``, ``--threads``, ``--out``, ...) are declared once here, so their wording and checks
cannot drift apart; defaults shown in help come from :mod:`tunelens.config`, never restated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import typer

from tunelens.errors import TunelensError, check_choice
from tunelens.format import DASH, number
from tunelens.runtime import set_threads  # noqa: F401  (each verb's --threads)

OUT_HELP = "Written atomically (nothing half-written on failure); checked writable before any work."
THREADS_HELP = ("CPU threads for torch; default: torch's (one per core). 1 is often faster for "
                "small models on a busy machine.")


def existing(path: Path, what: str = "file") -> Path:
    """``path`` if it exists; else one line naming it (before anything is loaded)."""
    if not Path(path).exists():
        raise TunelensError(f"{path}: no such {what}")
    return path


def section(config: Path | None, name: str):
    """Section ``name`` of the study at ``--config``, or its defaults when no config is given."""
    from tunelens.config import Study, load_study

    return getattr(load_study(existing(config)) if config is not None else Study(), name)


# --- the flags several verbs share -------------------------------------------------------------

def config_option(sections: str) -> Any:
    return typer.Option(None, "--config", help="Study YAML: the options below default to its "
                        f"{sections}, else to the built-in defaults shown.")


def threads_option() -> Any:
    return typer.Option(None, "--threads", min=1, help=THREADS_HELP)


def out_option(what: str, required: bool = True) -> Any:
    return typer.Option(... if required else None, "--out", help=f"{what} {OUT_HELP}")


# the LLM judge of evaluate and of data generate's judge filter
def judge_url_option() -> Any:
    return typer.Option(None, "--judge-url", help="OpenAI-compatible server of an LLM judge "
                        "(Ollama, vLLM, llama.cpp, tunelens serve), e.g. http://localhost:11434; "
                        "needs --judge-model; API key from TUNELENS_JUDGE_API_KEY.")


def judge_model_option() -> Any:
    return typer.Option(None, "--judge-model", help="The judge's model name on --judge-url.")


def judge_path_option() -> Any:
    return typer.Option(None, "--judge-path", help="A local model as judge instead of a server "
                        "(any model reference).")


def address_option() -> Any:
    """``--address``: the Ray cluster of ``--backend ray`` (run and explain)."""
    return typer.Option(None, "--address", help="The Ray cluster (--backend ray): auto (the one "
                        "this machine belongs to), ray://HOST:10001 (Ray client) or HOST:6379 (the "
                        "head's GCS). Default: $RAY_ADDRESS, else a new local cluster for this run.")


def model_option() -> Any:
    return typer.Option(..., "--model", help="Training run folder (full weights or a LoRA/QLoRA "
                        "adapter over its base), a model folder, a .gguf file, a packaged model's "
                        "short name (smollm2-135m, gemma3-270m) or a hub id.")


def _spec_default(field: str, trained: bool) -> str:
    """The default shown for a :class:`tunelens.config.ModelSpec` flag: the schema's for a base
    being trained; for a run, what its ``run.json`` records first."""
    from tunelens.config import ModelSpec, default_of

    if trained:
        return default_of(ModelSpec, field)
    return f"(default: what the run's run.json records, else {ModelSpec.model_fields[field].default})"


def dtype_option(trained: bool) -> Any:
    return typer.Option(None, "--dtype", help="Weights' dtype: auto (the checkpoint's), float32, "
                        "bfloat16 or float16; refused at once if this machine cannot compute in it "
                        f"{_spec_default('dtype', trained)}.")


def trust_remote_code_option(trained: bool) -> Any:
    return typer.Option(None, "--trust-remote-code/--no-trust-remote-code", help="Run the model's "
                        "own code (checkpoints with custom classes) "
                        f"{_spec_default('trust_remote_code', trained)}.")


def prompt_format_option(trained: bool) -> Any:
    return typer.Option(None, "--prompt-format", help="chat (the tokenizer's chat template), plain "
                        "(the plain template) or auto (chat when the tokenizer has a template) "
                        f"{_spec_default('prompt_format', trained)}.")


def check_model_settings(dtype: str | None, prompt_format: str | None) -> None:
    """One line before any work for a dtype or prompt format that is unknown, or a dtype this
    machine cannot compute in (``auto`` is checked once the checkpoint says what it is)."""
    from tunelens.config import DTYPES, PROMPT_FORMATS
    from tunelens.models.run_settings import check_dtype

    check_choice(dtype, DTYPES, "--dtype", optional=True)
    check_choice(prompt_format, PROMPT_FORMATS, "--prompt-format", optional=True)
    if dtype not in (None, "auto"):
        check_dtype(dtype, "--dtype")


def field_option(section_class: type, field: str, flag: str, help: str, **kw) -> Any:
    """A flag laid over ``<section>.<field>`` (None: not given); help ends with the default."""
    from tunelens.config import default_of

    return typer.Option(None, flag, help=f"{help} {default_of(section_class, field)}.", **kw)


def seed_option(what: str, section_class: type) -> Any:
    return field_option(section_class, "seed", "--seed", f"Seed of {what}")


# --- output ------------------------------------------------------------------------------------

def cell(value: Any) -> str:
    """A table cell: whole numbers with separators, other numbers through :func:`format.number`."""
    if value is None:
        return DASH
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return number(value)


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]],
                left: int = 0) -> None:
    """Print a summary table: the first ``left`` columns left-aligned (names), the rest right."""
    from rich.table import Table

    from tunelens.cli.app import console

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if i < left else "right")
    for row in rows:
        table.add_row(*(cell(v) for v in row))
    console.print(table)
