"""The ``tunelens`` command: each verb parses its flags, calls one public function, prints a summary.

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
)
data_app = typer.Typer(help="Build, prepare and validate datasets.", no_args_is_help=True)
zoo_app = typer.Typer(help="Build the ladder of small base models.", no_args_is_help=True)
rag_app = typer.Typer(help="Retrieval indexes for retrieval-augmented generation.",
                      no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(zoo_app, name="zoo")
app.add_typer(rag_app, name="rag")

OUT_HELP = "Output path; written atomically (nothing half-written on failure)."


def _existing(path: Path, what: str = "file") -> Path:
    if not path.exists():
        raise TunelensError(f"{path}: no such {what}")
    return path


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# categories
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# zoo, train, export
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# rag, generate, evaluate
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# compare, report, run, demo
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# run, demo (the study runner)
# ---------------------------------------------------------------------------------------------


@app.command("run")
def run_cmd(
    study_file: Path = typer.Argument(..., help="The study YAML (see examples/)."),
    out: Path = typer.Option(None, "--out", help="Study folder; default: ./studies/<study name>."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the matrix and an estimate of "
                                 "the work, run nothing."),
    zoo: Path = typer.Option(None, "--zoo", help="Where zoo:<preset>/<name> models are built and "
                             "cached; default ~/.cache/tunelens/zoo."),
) -> None:
    """Run a whole study: data, train, generate, evaluate, explain every cell, then compare and
    report. Stages whose outputs exist for the same inputs and settings are skipped, so an
    interrupted study resumes where it stopped."""
    from tunelens.config import load_study

    study = load_study(_existing(study_file))
    _run_study(study, out or Path("studies") / study.name, dry_run, zoo)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-study"), "--out", help="Study folder."),
    zoo: Path = typer.Option(None, "--zoo", help="Where the demo ladder is built and cached."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the matrix only."),
) -> None:
    """Run the bundled code-compliance study on this machine's CPU (builds the demo model
    ladder first if it is missing)."""
    from tunelens.config import load_study
    from tunelens.study import bundled_example

    _run_study(load_study(bundled_example("code-compliance.yaml")), out, dry_run, zoo)


def _run_study(study, out: Path, dry_run: bool, zoo: Path | None) -> None:
    from rich.table import Table

    from tunelens.study import STAGES, StudyRunner, default_zoo_root, estimate, expand_matrix

    cells = expand_matrix(study)
    table = Table(title=f"study '{study.name}': {len(cells)} cells")
    for col in ("run", "model", "strategy", "objective", "rag"):
        table.add_column(col)
    for c in cells:
        table.add_row(c.name, c.model.name, c.strategy, c.objective, "yes" if c.rag else "no")
    console.print(table)
    if dry_run:
        est = estimate(study, cells)
        console.print("estimate: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in est.items()))
        return
    with _StudyView(len(cells) * len(STAGES)) as view:
        runner = StudyRunner(study, out, zoo_root=zoo or default_zoo_root(), on_event=view.update)
        statuses = runner.run()
    summary = Table(title="time per stage (seconds)")
    summary.add_column("stage")
    summary.add_column("seconds", justify="right")
    for stage, secs in runner.timings.items():
        summary.add_row(stage, f"{secs:.1f}")
    summary.add_row("total", f"{sum(runner.timings.values()):.1f}", style="bold")
    console.print(summary)
    failed = [s for s in statuses if s.status == "failed"]
    for s in failed:
        err_console.print(f"[red]failed[/] {s.run}: {s.error}", highlight=False)
    console.print(f"report: {out / 'report.html'}")


class _StudyView:
    """The live view of a study: one bar over every cell's stages, a line as each one ends."""

    def __init__(self, total: int):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(),
                                 MofNCompleteColumn(), TimeElapsedColumn(), console=console)
        self.task = self.progress.add_task("study", total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def update(self, cell: str, stage: str, state: str) -> None:
        style = {"done": "green", "skipped": "dim", "failed": "red", "running": "cyan"}[state]
        if state == "running":
            self.progress.update(self.task, description=f"{cell} · {stage}")
            return
        self.progress.console.print(f"[{style}]{state:>7}[/] {cell} · {stage}", highlight=False)
        if stage in ("train", "generate", "evaluate", "explain"):
            self.progress.advance(self.task)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the app, turning user errors into one line on stderr and exit code 2."""
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


if __name__ == "__main__":
    entry()
