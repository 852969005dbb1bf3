"""Verbs over a whole study: compare, report, run, demo, and the live study view."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import OUT_HELP, _existing, app, console, err_console


def _study_config(study_dir: Path, config: Path | None):
    """The study's settings: --config if given, else the study folder's study.yaml, else defaults."""
    from tunelens.config import Study, load_study

    if config is not None:
        return load_study(_existing(config))
    if (study_dir / "study.yaml").exists():
        return load_study(study_dir / "study.yaml")
    return Study()


def _fmt(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}g}" if abs(x) >= 1000 else f"{x:.{digits}f}"


def _ci(d: dict | None) -> str:
    if not d or d.get("mean") is None:
        return "–"
    if d.get("lo") is None:
        return _fmt(d["mean"])
    return f"{_fmt(d['mean'])} [{_fmt(d['lo'])}, {_fmt(d['hi'])}]"


def _p(p: float | None) -> str:
    return "–" if p is None else "<0.001" if p < 0.001 else f"{p:.3f}"


@app.command("compare")
def compare_cmd(
    study: Path = typer.Option(..., "--study", help="The study folder (models/, metrics/, "
                               "attributions/ ...)."),
    out: Path = typer.Option(None, "--out", help="Folder for the statistics JSON files; default "
                             "<study>/stats. " + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'comparison' section "
                                "applies; default <study>/study.yaml, else built-in defaults."),
) -> None:
    """Compare the runs of a study: attribution concentration, category shares, paired tests of
    distinctness across strategies (Friedman, Wilcoxon + Holm, rank-biserial, permutation),
    agreement between runs against the seed-to-seed floor, and scale curves over model size."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
    from rich.table import Table

    from tunelens.compare import STEPS, compare_study

    _existing(study, "study folder")
    cfg = _study_config(study, config).comparison
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("compare", total=len(STEPS))
        result = compare_study(study, cfg, out=out,
                               progress=lambda step: bar.update(task, advance=1, description=step))

    conc = result["concentration"]["per_run"]
    if conc:
        t = Table(title=f"attribution concentration (mean [{cfg.confidence:.0%} CI])")
        for col in ("run", "examples", "gini", "entropy", f"top-{cfg.top_k} share"):
            t.add_column(col, justify="left" if col == "run" else "right")
        for run, row in conc.items():
            t.add_row(run, str(row["n_examples"]), _ci(row["gini"]), _ci(row["entropy"]),
                      _ci(row["top_k_share"]))
        console.print(t)
    t = Table(title=f"strategies compared, paired by example (Holm-adjusted, alpha {cfg.alpha})")
    for col in ("model · objective", "metric", "a vs b", "mean a", "mean b", "p (Wilcoxon)",
                "p (perm.)", "r", "verdict"):
        t.add_column(col)
    n_cat = n_cat_sig = 0
    for g in result["tests"]["groups"]:
        where = f"{g['model']} · {g['objective']}" + (" · rag" if g["rag"] else "")
        for metric, m in g["metrics"].items():
            if m["kind"] == "category":  # seven per pair: counted here, listed in tests.json
                n_cat += len(m["pairwise"])
                n_cat_sig += sum(r["significant"] for r in m["pairwise"])
                continue
            for r in m["pairwise"]:
                verdict = "[green]differ[/]" if r["significant"] else "[dim]no sig. difference[/]"
                t.add_row(where, metric, f"{r['a']} vs {r['b']}", _fmt(r["mean_a"]), _fmt(r["mean_b"]),
                          _p(r["p_holm"]), _p(r["permutation_p_holm"]), f"{r['rank_biserial']:+.2f}",
                          verdict)
    if t.row_count:
        console.print(t)
    if n_cat:
        console.print(f"category shares: {n_cat_sig} of {n_cat} strategy comparisons differ "
                      "(tests.json lists them)")
    curves = result["scale"]["curves"]
    if curves:
        t = Table(title="scale: metric ~ a + b·log10(params)")
        for col in ("strategy · objective", "metric", "sizes", "gain per decade b", "plateau from"):
            t.add_column(col)
        for c in curves:
            fit = c["fit"] or {}
            slope = _ci({"mean": fit.get("slope"), "lo": fit.get("slope_lo"), "hi": fit.get("slope_hi")})
            plateau = c["plateau"]["size"]
            t.add_row(f"{c['strategy']} · {c['objective']}" + (" · rag" if c["rag"] else ""), c["metric"],
                      str(len(c["points"])), slope, "–" if plateau is None else f"{plateau:.3g}")
        console.print(t)
    floor = result["agreement"]["noise_floor"]
    if floor:
        console.print(f"seed-to-seed agreement floor: Spearman {_ci(floor['spearman'])} over "
                      f"{floor['n_pairs']} example pairs")
    for f in result["runs"]["failures"]:
        err_console.print(f"[red]{f['status']}[/] {f['run']}: {f['error'] or 'no outputs'}",
                          highlight=False)
    console.print(f"statistics: {out or study / 'stats'}")


@app.command("report")
def report_cmd(
    study: Path = typer.Option(..., "--study", help="The study folder."),
    out: Path = typer.Option(None, "--out", help="The HTML file; default <study>/report.html. "
                             + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'report' and "
                                "'comparison' sections apply; default <study>/study.yaml."),
) -> None:
    """Write one self-contained HTML report (figures embedded, no network) of a study, with the
    PNG figures in <study>/figures. Runs `compare` first if <study>/stats is missing or older
    than the study's outputs."""
    from tunelens.report import write_report

    _existing(study, "study folder")
    settings = _study_config(study, config)
    with console.status("writing the report"):
        path = write_report(study, settings.report, out=out, comparison=settings.comparison)
    console.print(f"report: {path}")



@app.command("run")
def run_cmd(
    study_file: Path = typer.Argument(..., help="The study YAML (see examples/)."),
    out: Path = typer.Option(None, "--out", help="Study folder; default: ./studies/<study name>."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the matrix and an estimate of "
                                 "the work, run nothing."),
    zoo: Path = typer.Option(None, "--zoo", help="Where zoo:<preset>/<name> models are built and "
                             "cached; default ~/.cache/tunelens/zoo."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for torch; default: "
                                "torch's (one per core). 1 is often faster for small models on a "
                                "busy machine."),
) -> None:
    """Run a whole study: data, train, generate, evaluate, explain every cell, then compare and
    report. Stages whose outputs exist for the same inputs and settings are skipped, so an
    interrupted study resumes where it stopped."""
    from tunelens.config import load_study

    study = load_study(_existing(study_file))
    _run_study(study, out or Path("studies") / study.name, dry_run, zoo, threads)


@app.command("demo")
def demo_cmd(
    out: Path = typer.Option(Path("demo-study"), "--out", help="Study folder."),
    zoo: Path = typer.Option(None, "--zoo", help="Where the demo ladder is built and cached."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the matrix only."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads for torch. The demo's "
                                "models are small: one thread is about as fast as two on a quiet "
                                "laptop and many times faster on a busy one."),
) -> None:
    """Run the bundled code-compliance study on this machine's CPU (builds the demo model
    ladder first if it is missing)."""
    from tunelens.config import load_study
    from tunelens.study import bundled_example

    _run_study(load_study(bundled_example("code-compliance.yaml")), out, dry_run, zoo, threads)


def _run_study(study, out: Path, dry_run: bool, zoo: Path | None, threads: int | None) -> None:
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
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
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
