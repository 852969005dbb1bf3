"""The ``tunelens`` app, its error handling and entry point; the verbs live beside it.

The ``tunelens`` command: each verb parses its flags, calls one public function, prints a summary.

No logic lives here beyond turning flags into arguments and results into rich tables. A
:class:`~tunelens.errors.TunelensError` becomes one red line on stderr and exit code 2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.console import Console
from typer._click.exceptions import TyperException

from tunelens.errors import TunelensError

console = Console()
err_console = Console(stderr=True)

app = typer.Typer(
    name="tunelens",
    help="Fine-tune LLMs several ways (full, LoRA, QLoRA, ...), then see what each way changed: "
    "output quality and which input tokens the model relies on.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain help: paragraphs re-flowed, <angle> and [brackets] kept
)
data_app = typer.Typer(help="Build, prepare and validate datasets.", no_args_is_help=True,
                       rich_markup_mode=None)
zoo_app = typer.Typer(help="Build the ladder of small base models.", no_args_is_help=True,
                      rich_markup_mode=None)
rag_app = typer.Typer(help="Retrieval indexes for retrieval-augmented generation.",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(data_app, name="data")
app.add_typer(zoo_app, name="zoo")
app.add_typer(rag_app, name="rag")

OUT_HELP = "Output path; written atomically (nothing half-written on failure)."


def _existing(path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise TunelensError(f"{path}: no such {what}")
    return path



def _quiet_libraries() -> None:
    """Our own progress bars and tables are the output: silence the libraries' bars and chatter."""
    import logging
    import os
    import warnings

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    for name in ("mlflow", "alembic", "bitsandbytes", "httpx", "sentence_transformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
    import tunelens.cli  # noqa: F401  (registers every verb)

    _quiet_libraries()
    try:
        app(args=argv, prog_name="tunelens", standalone_mode=False)
    except TunelensError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        return 2
    except typer.Abort:
        err_console.print("[bold red]aborted[/]")
        return 130
    except typer.Exit as exc:
        return exc.exit_code
    except TyperException as exc:  # usage errors: unknown command, bad option value, ...
        exc.show()
        return exc.exit_code
    return 0


def entry() -> None:
    sys.exit(main())

