"""Verbs over a whole study: compare, report, run, demo, and the live study view."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import EXIT_CELLS_FAILED, app, console, err_console
from tunelens.cli.options import OUT_HELP, address_option, existing, set_threads, threads_option
from tunelens.explain.check_stages import CHECK_STAGES, enabled_checks
from tunelens.format import DASH, interval_of, number, p_value
from tunelens.io import check_writable
from tunelens.study import STAGES

MEMORY_HELP = ("Memory a training may use, in GB; a study with a cell estimated above it is "
               "refused before any work (--dry-run prints each cell's estimate). Default: this "
               "machine's RAM, or the GPU's memory.")
JOBS_HELP = ("Cells run in this many worker processes at once (cells sharing a training run "
             "together); zoo models, data and the report stay in the main process. Each worker "
             "holds one model: mind the memory with real models.")
BACKEND_HELP = ("Where the cells run: local (this machine; --jobs N worker processes) or ray "
                "(tasks on a Ray cluster, each asking for --threads CPUs, a GPU if the cluster has "
                "one and its estimated training memory; needs pip install 'tunelens[scale]' and "
                "the study folder on storage every node sees; --memory-gb, when given, is what "
                "one cell may use, e.g. a GPU's memory). Either resumes the other's study.")
SHARDS_HELP = ("Split each cell's attribution (the explain stage) over this many workers of "
               "the backend: processes here, tasks on Ray; the same parquet as one worker.")
EXIT_CODES_HELP = ("Exit codes: 0 every cell ran; 1 some cells failed (listed on stderr, "
                   "tracebacks in <out>/logs/); 2 bad input, or the study folder is in use by "
                   "another run; 130 interrupted (rerun the same command to resume).")


def _study_config(study_dir: Path, config: Path | None):
    """The study's settings: --config if given, else the study folder's study.yaml, else defaults."""
    from tunelens.config import Study, load_study
    from tunelens.layout import StudyLayout

    if config is not None:
        return load_study(existing(config))
    if StudyLayout(study_dir).study_yaml.exists():
        return load_study(StudyLayout(study_dir).study_yaml)
    return Study()


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
    from tunelens.layout import StudyLayout

    existing(study, "study folder")
    check_writable(out or StudyLayout(study).stats, "dir")
    cfg = _study_config(study, config).comparison
    result = _compare_with_bar(study, cfg, out)
    _print_concentration(result, cfg)
    _print_tests(result, cfg)
    _print_scale(result)
    _print_floor_and_failures(result)
    console.print(f"statistics: {out or study / 'stats'}")


def _compare_with_bar(study: Path, cfg, out: Path | None) -> dict:
    from tunelens.compare import STEPS, compare_study
    from tunelens.progress import step_bar

    with step_bar(len(STEPS), when="end", console=console) as on_step:
        return compare_study(study, cfg, out=out, progress=on_step)


def _table(title: str, columns: tuple[str, ...], right_from: int | None = None):
    from rich.table import Table

    table = Table(title=title)
    for i, col in enumerate(columns):
        table.add_column(col, justify="right" if right_from is not None and i >= right_from
                         else "left")
    return table


def _print_concentration(result: dict, cfg) -> None:
    """One row per cell, as in the report: the mean over its seeds, their range beside it."""
    cells = result["concentration"].get("per_cell") or {}
    if not cells:
        return
    t = _table("attribution concentration (mean over seeds, lowest–highest seed)",
               ("cell", "seeds", "examples", "gini", "entropy", f"top-{cfg.top_k} share"),
               right_from=1)
    for cell, row in cells.items():
        t.add_row(cell, str(row["gini"]["n"]), number(row["n_examples"]["mean"], 0),
                  *(_over_seeds(row[k]) for k in ("gini", "entropy", "top_k_share")))
    console.print(t)


def _over_seeds(summary: dict) -> str:
    """The report's table cell (:func:`tunelens.report.tables.seed_cell`) on one line."""
    from tunelens.report.tables import seed_cell

    cell = seed_cell(summary)
    return f"{cell['value']} ({cell['spread']})" if cell["spread"] else cell["value"]


def _print_tests(result: dict, cfg) -> None:
    """Quality metrics pair by pair (the effect is what was tested); category shares only counted."""
    family = result["tests"].get("family") or {}
    t = _table(f"strategies compared (Holm within a family, alpha {cfg.alpha}; Benjamini-Hochberg "
               f"over {family.get('tests', 0)} tests, q {family.get('q', cfg.fdr_q)})",
               ("model · objective", "metric", "a vs b", "mean a", "mean b", "effect [CI]", "test",
                "p (Holm)", "p (BH)", "verdict"))
    n_cat = n_cat_sig = 0
    for g in result["tests"]["groups"]:
        where = f"{g['model']} · {g['objective']}" + (" · rag" if g["rag"] else "")
        for metric, m in g["metrics"].items():
            if m["kind"] == "category":
                n_cat += len(m["pairwise"])
                n_cat_sig += sum(bool(r.get("significant")) for r in m["pairwise"])
                continue
            for r in m["pairwise"]:
                verdict = "[green]differ[/]" if r.get("significant") else "[dim]no sig. difference[/]"
                if r.get("single_seed"):
                    verdict += " [dim](one seed)[/]"
                effect = interval_of({"mean": r.get("estimate"), "lo": r.get("ci_lo"),
                                      "hi": r.get("ci_hi")})
                t.add_row(where, metric, f"{r['a']} vs {r['b']}", number(r["mean_a"]),
                          number(r["mean_b"]), effect, str(r.get("test") or DASH),
                          p_value(r.get("p_holm")), p_value(r.get("p_bh")), verdict)
    if t.row_count:
        console.print(t)
    if n_cat:
        console.print(f"category shares: {n_cat_sig} of {n_cat} strategy comparisons differ "
                      "(tests.json lists them)")


def _print_scale(result: dict) -> None:
    curves = result["scale"]["curves"]
    if not curves:
        return
    t = _table("scale: metric against log10(params), bootstrap over examples and seeds",
               ("strategy · objective", "metric", "sizes", "gain per decade [CI]", "p", "verdict",
                "plateau from"))
    for c in curves:
        trend = c.get("trend") or {}
        slope = interval_of({"mean": trend.get("slope"), "lo": trend.get("lo"), "hi": trend.get("hi")})
        plateau = c["plateau"]["size"]
        t.add_row(f"{c['strategy']} · {c['objective']}" + (" · rag" if c["rag"] else ""),
                  c["metric"], str(len(c["points"])), slope, p_value(trend.get("p_bh", trend.get("p"))),
                  c.get("verdict") or DASH, DASH if plateau is None else f"{plateau:.3g}")
    console.print(t)


def _print_floor_and_failures(result: dict) -> None:
    floor = result["agreement"]["noise_floor"]
    if floor:
        if floor.get("degenerate"):
            console.print("seed-to-seed agreement floor: no seed variation (replicate attributions "
                          "are identical), so no strategy pair is judged against it")
        else:
            console.print(f"seed-to-seed agreement floor: Spearman {interval_of(floor['spearman'])} "
                          f"over {floor['n_cells']} cells ({floor['n_pairs']} seed pairs)")
    for f in result["runs"]["failures"]:
        err_console.print(f"[red]{f['status']}[/] {f['run']}: {f['error'] or 'no outputs'}",
                          highlight=False)


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
    from tunelens.layout import StudyLayout
    from tunelens.report import write_report

    existing(study, "study folder")
    check_writable(out or StudyLayout(study).report, "file")
    settings = _study_config(study, config)
    with console.status("writing the report"):
        path = write_report(study, settings.report, out=out, comparison=settings.comparison)
    console.print(f"report: {path}")


@app.command("run", epilog=EXIT_CODES_HELP)
def run_cmd(
    study_file: Path = typer.Argument(..., help="The study YAML (see examples/)."),
    out: Path = typer.Option(None, "--out", help="Study folder; default: ./studies/<study name>. "
                             "Checked writable before any work; locked while the study runs."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the matrix, an estimate of "
                                 "the work and each cell's training peak memory and compute; run "
                                 "nothing."),
    zoo: Path = typer.Option(None, "--zoo", help="Where zoo:<preset>/<name> models are built and "
                             "cached; default ~/.cache/tunelens/zoo."),
    threads: int = threads_option(),
    jobs: int = typer.Option(1, "--jobs", "-j", min=1, help=JOBS_HELP),
    memory_gb: float = typer.Option(None, "--memory-gb", min=0.1, help=MEMORY_HELP),
    backend: str = typer.Option("local", "--backend", help=BACKEND_HELP),
    address: str = address_option(),
    explain_shards: int = typer.Option(1, "--explain-shards", min=1, help=SHARDS_HELP),
) -> None:
    """Run a whole study: data, train, generate, evaluate, explain every cell, then compare and
    report. A stage is skipped when its output exists and the content of everything it reads,
    and its settings, are unchanged, so an interrupted study resumes where it stopped."""
    from tunelens.config import load_study

    _check_backend(backend, address, jobs)
    study = load_study(existing(study_file))
    _run_study(study, out or Path("studies") / study.name, dry_run, zoo, threads, str(study_file),
               jobs, memory_gb, backend, address, explain_shards)


def _check_backend(backend: str, address: str | None, jobs: int) -> None:
    """--jobs is the local backend's: refused with Ray rather than ignored."""
    from tunelens.errors import TunelensError
    from tunelens.ray_backend import check_backend

    if backend == "ray" and jobs > 1:
        raise TunelensError("--jobs is the local backend's: on Ray as many cells run at once as "
                            "the cluster's CPUs, GPUs and memory allow")
    check_backend(backend, address)


@app.command("demo", epilog=EXIT_CODES_HELP)
def demo_cmd(
    out: Path = typer.Option(Path("demo-study"), "--out", help="Study folder."),
    zoo: Path = typer.Option(None, "--zoo", help="Where the demo ladder is built and cached."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the matrix and each cell's "
                                 "training peak memory and compute; run nothing."),
    threads: int = typer.Option(1, "--threads", min=1, help="CPU threads for torch in each "
                                "worker. The demo's models are small: one thread each, and one "
                                "worker per core, beats more threads in fewer workers."),
    jobs: int = typer.Option(None, "--jobs", "-j", min=1, help=JOBS_HELP + " Default here: one "
                             "per core, at most 4."),
) -> None:
    """Run the bundled code-compliance study on this machine's CPU (builds the demo model
    ladder first if it is missing)."""
    from tunelens.config import load_study
    from tunelens.parallel import default_jobs
    from tunelens.study import bundled_example

    example = bundled_example("code-compliance.yaml")
    _run_study(load_study(example), out, dry_run, zoo, threads, str(example), jobs or default_jobs())


def _run_study(study, out: Path, dry_run: bool, zoo: Path | None, threads: int | None,
               origin: str, jobs: int = 1, memory_gb: float | None = None,
               backend: str = "local", address: str | None = None,
               explain_shards: int = 1) -> None:
    """Print the matrix; unless a dry run, run the study in a live view and print how it went.

    Exits 1 when some cells failed; a KeyboardInterrupt goes up to become exit code 130.
    """
    from tunelens.matrix import default_zoo_root, estimate, expand_matrix
    from tunelens.memory import check_budget, machine_memory_gb, study_estimates
    from tunelens.models.run_settings import compute_device
    from tunelens.study import StudyRunner

    cells = expand_matrix(study, origin)
    zoo_root = zoo or default_zoo_root()
    device = compute_device()
    memory = study_estimates(study, cells, zoo_root, device)
    floor = _time_floor(memory, study, threads) if dry_run else None  # a probe: dry runs only
    table = _table(f"study '{study.name}': {len(cells)} cells (runs are model__strategy__"
                   "objective[__prompt][__rag][__s<seed>])",
                   ("run", "training peak GB") + (("training compute",) if floor else ()),
                   right_from=1)
    for c in cells:
        est = memory.get(c.train_name)
        peak = ("not trained" if c.train_name not in memory
                else DASH if est is None else f"{est.total / 1024**3:.1f}")
        table.add_row(c.name, peak, *((floor.get(c.train_name, DASH),) if floor else ()))
    console.print(table)
    budget = memory_gb or machine_memory_gb(device)
    if dry_run:
        est = estimate(study, cells)
        console.print("estimate: " + ", ".join(f"{k.replace('_', ' ')} {v:,}" for k, v in est.items()))
        console.print(f"memory: {budget:.1f} GB available on the {device}"
                      + ("" if memory_gb is None else " (--memory-gb)"))
    if backend == "local" or memory_gb is not None:  # on Ray, a node's RAM is Ray's to check;
        # a GPU's is not, so --memory-gb states it (each cell gets a GPU of its own)
        check_budget([(c.name, memory.get(c.train_name)) for c in cells], budget, origin,
                     jobs if backend == "local" else 1)
    if dry_run:
        return
    set_threads(threads)
    runner = StudyRunner(study, out, zoo_root=zoo_root, origin=origin, jobs=jobs, threads=threads,
                         backend=backend, address=address, explain_shards=explain_shards)
    runner.check()  # a bad model path or --out fails here, before the live view starts
    stages = sum(len(STAGES) + len(enabled_checks(study.checks, c.identity.rag)) for c in cells)
    with _StudyView(stages) as view:
        runner.on_event = view.update
        statuses = runner.run()
    _print_timings(runner)
    failed = [s for s in statuses if s.status == "failed"]
    for s in failed:
        err_console.print(f"[red]failed[/] {s.run}: {s.error}", highlight=False)
    if len(failed) == len(statuses):
        err_console.print(f"every cell failed: no comparison or report (tracebacks in "
                          f"{runner.layout.logs})", highlight=False)
    else:
        console.print(f"report: {runner.layout.report}")
    if failed:
        raise typer.Exit(EXIT_CELLS_FAILED)


def _time_floor(memory: dict, study, threads: int | None) -> dict[str, str]:
    """Per trained model: the multiply-adds of ``max_steps`` full-length batches at this machine's
    measured matrix-multiply rate (shorter sequences take less; small models are slower than
    their arithmetic, being bound by Python and memory)."""
    from tunelens.memory import matmul_rate

    rate = matmul_rate(threads or 1)
    seconds = {name: est.flops_per_step * study.train.max_steps / rate
               for name, est in memory.items() if est is not None}
    return {name: f"{s:,.0f} s" if s >= 10 else f"{s:.1f} s" for name, s in seconds.items()}


def _print_timings(runner) -> None:
    """Seconds per stage; with parallel jobs their sum exceeds the wall clock, shown apart."""
    title = "time per stage (seconds" + (", summed over the Ray tasks)" if runner.backend == "ray"
                                         else f", summed over {runner.jobs} workers)"
                                         if runner.jobs > 1 else ")")
    summary = _table(title, ("stage", "seconds"), right_from=1)
    for stage, secs in runner.timings.items():
        summary.add_row(stage, f"{secs:.1f}")
    summary.add_row("total", f"{sum(runner.timings.values()):.1f}", style="bold")
    if runner.wall_seconds is not None:
        summary.add_row("wall clock", f"{runner.wall_seconds:.1f}", style="bold")
    console.print(summary)


class _StudyView:
    """The live view of a study: one bar over every cell's stages, a line as each one ends.

    Two live displays would fight for the terminal, so the runner turns the stages' own progress
    bars off, and this view pauses while a zoo ladder is built (its bars are the only sign of a
    build that can take minutes).
    """

    def __init__(self, total: int):
        from tunelens.progress import item_bar

        self.progress = item_bar(console=console)
        self.task = self.progress.add_task("study", total=total)

    def __enter__(self):
        self.progress.start()
        return self

    def __exit__(self, *exc):
        self.progress.stop()
        return False

    def update(self, cell: str, stage: str, state: str) -> None:
        style = {"done": "green", "skipped": "dim", "failed": "red", "running": "cyan"}[state]
        if stage == "zoo":  # the ladder draws a bar per rung: pause this view while it builds
            if state == "running":
                self.progress.stop()
            else:
                self.progress.start()
            return
        if state == "running":
            self.progress.update(self.task, description=f"{cell} · {stage}")
            return
        self.progress.console.print(f"[{style}]{state:>7}[/] {cell} · {stage}", highlight=False)
        if stage in STAGES or stage in CHECK_STAGES:
            self.progress.advance(self.task)
