"""``tunelens tune``: hyper-parameter search per strategy with Optuna, best settings as a study."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import EXIT_CELLS_FAILED, app, console, err_console
from tunelens.cli.options import existing, set_threads, threads_option
from tunelens.config import default_of
from tunelens.tune.space import TuneConfig

TUNE_EPILOG = ("Exit codes: 0 done; 1 no trial of any strategy finished (see <out>/tuning.json); "
               "2 bad input (the study, its tune: section, --storage); 130 interrupted (rerun to add "
               "trials to the same Optuna studies).")


@app.command("tune", epilog=TUNE_EPILOG)
def tune_cmd(
    study_file: Path = typer.Argument(..., help="The study YAML; its tune: section holds the search "
                                      "space per strategy (a strategy without one gets a default "
                                      "space: learning rate, warm-up, batch size, adapter shape)."),
    trials: int = typer.Option(..., "--trials", min=1, help="Trials to run per strategy (a rerun "
                               "adds this many more to the same Optuna studies)."),
    out: Path = typer.Option(..., "--out", help="Tuning folder: optuna.db, data/, trials/, "
                             "tuning.json, figures/, best.yaml. Checked writable before any work."),
    storage: str = typer.Option(None, "--storage", help="Optuna storage URL shared by many workers "
                                "(e.g. postgresql://... or sqlite:////shared/optuna.db); default "
                                "sqlite:///<out>/optuna.db."),
    strategy: list[str] = typer.Option(None, "--strategy", help="Tune only this strategy of the "
                                       "study (repeat for several); default: every strategy."),
    name: str = typer.Option(None, "--name", help="Optuna study name prefix (studies are "
                             "<name>:<strategy>); default: the study's name."),
    pruner: str = typer.Option(None, "--pruner", help="median, hyperband or none; default: the "
                               "study's tune.pruner " + default_of(TuneConfig, "pruner") + "."),
    zoo: Path = typer.Option(None, "--zoo", help="Where zoo:<preset>/<name> models are built and "
                             "cached; default ~/.cache/tunelens/zoo."),
    threads: int = threads_option(),
) -> None:
    """Search each strategy's hyper-parameters with Optuna (TPE sampler; trials whose validation
    loss at an evaluation is worse than earlier trials' are pruned), training the study's first
    model (or tune.model) on the study's data. The first trial of each strategy runs at the
    study's own settings, so the best is measured against them. Writes <out>/best.yaml: the study
    with the best settings per strategy (tune.best), which `tunelens run` trains with and whose
    report shows the tuning figures."""
    from tunelens.config import load_study, override
    from tunelens.tune import tune_study

    study = load_study(existing(study_file))
    if pruner is not None:
        study = study.model_copy(update={"tune": override(study.tune, origin="--pruner", pruner=pruner)})
    set_threads(threads)
    result = tune_study(study, out, trials, storage=storage, strategies=strategy or None, name=name,
                        zoo_root=zoo, origin=str(study_file), progress=True)
    _print_summary(result)
    if result.best_yaml is None:
        err_console.print("no trial finished: no best settings written", highlight=False)
        raise typer.Exit(EXIT_CELLS_FAILED)
    console.print(f"best settings: {result.best_yaml}  (tunelens run {result.best_yaml})")


def _print_summary(result) -> None:
    """One row per strategy (validation losses), then each strategy's best settings in full."""
    from rich.table import Table

    from tunelens.report.tuning import strategy_row

    table = Table(title=f"validation loss per strategy ({result.storage})")
    for col in ("strategy", "finished", "pruned", "failed", "study's settings", "best", "gain"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    rows = [strategy_row(s, summary) for s, summary in result.summary["strategies"].items()]
    for row in rows:
        table.add_row(row["strategy"], str(row["finished"]), str(row["pruned"]), str(row["failed"]),
                      row["baseline"], row["best"], row["gain"])
    console.print(table)
    for row in rows:
        console.print(f"{row['strategy']}: {row['params']}", highlight=False)
