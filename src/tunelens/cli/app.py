"""The ``tunelens`` app, its error handling and entry point; the verbs live beside it.

The ``tunelens`` command: each verb parses its flags, calls one public function, prints a summary.

No logic lives here beyond turning flags into arguments and results into rich tables. Exit
codes (:func:`main`): 0 done; 1 ran but some cells failed; 2 bad input or refused (a
:class:`~tunelens.errors.TunelensError` becomes one red line on stderr, a usage error Typer's
message); 130 interrupted.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console
from rich.markup import escape

from tunelens.errors import TunelensError

try:  # recent typer vendors click; its usage errors derive from the public TyperException
    from typer import TyperException as UsageProblem
except ImportError:  # older typer raises click's own (click was then its dependency)
    from click.exceptions import ClickException as UsageProblem

EXIT_OK, EXIT_CELLS_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app and return its exit code (0, 1, 2 or 130, see the module doc).

    Typer, run with ``standalone_mode=False``, *returns* the code of a ``typer.Exit`` and of a
    Ctrl-C (130) instead of exiting, so the value it returns is the exit code.
    """
    import tunelens.cli  # noqa: F401  (registers every verb)
    from tunelens.runtime import quiet_libraries

    quiet_libraries()
    try:
        code = app(args=argv, prog_name="tunelens", standalone_mode=False)
    except TunelensError as exc:
        # escaped: a message may hold brackets (pip install 'tunelens[scale]') rich reads as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        return EXIT_BAD_INPUT
    except (KeyboardInterrupt, typer.Abort):
        code = EXIT_INTERRUPTED
    except typer.Exit as exc:
        code = exc.exit_code
    except UsageProblem as exc:  # unknown command, bad option value, ...
        if hasattr(exc, "show"):
            exc.show()
        else:
            err_console.print(f"error: {exc.format_message()}", highlight=False)
        return exc.exit_code
    code = code if isinstance(code, int) and not isinstance(code, bool) else EXIT_OK
    if code == EXIT_INTERRUPTED:
        err_console.print("[bold red]interrupted[/]")
    return code


def entry() -> None:
    sys.exit(main())

