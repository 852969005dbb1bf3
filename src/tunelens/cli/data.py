"""Verbs of the data stage: data build/prepare/validate and categories."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import OUT_HELP, app, console, data_app, err_console
from tunelens.errors import TunelensError


def _data_settings(config: Path | None, **overrides):
    """The study's data section (or the defaults) with the flags that were given on top."""
    from pydantic import ValidationError

    from tunelens.config import DataConfig, format_validation_error, load_study

    base = load_study(config).data if config is not None else DataConfig()
    updates = {k: v for k, v in overrides.items() if v is not None}
    if updates.get("stratify_by") == "none":
        updates["stratify_by"] = None
    try:
        return DataConfig.model_validate({**base.model_dump(), **updates})
    except ValidationError as exc:
        raise TunelensError(f"data settings: {format_validation_error(exc)}") from None


def _step_progress(total: int):
    """A rich progress bar advanced once per named pipeline step (the stage calls ``on_step``)."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(TextColumn("{task.description:<18}"), BarColumn(), TimeElapsedColumn(),
                        console=err_console, transient=True, disable=not err_console.is_terminal)
    task = progress.add_task("starting", total=total)
    started = [False]

    def on_step(name: str) -> None:
        progress.update(task, description=name, advance=1 if started[0] else 0)
        started[0] = True

    return progress, on_step


def _print_card(card: dict, out: Path) -> None:
    from rich.table import Table

    console.print(f"wrote {out}: {card['rows']['kept']} of {card['rows']['input']} rows kept")
    table = Table(title="splits")
    for col in ("split", "rows", "topics", "prompt chars mean/max", "prompt words mean",
                "completion chars mean/max", "completion words mean"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, s in card["splits"].items():
        length = s["length"]
        table.add_row(name, str(s["rows"]), str(len(s["topics"])),
                      f"{length['prompt_chars']['mean']:.0f}/{length['prompt_chars']['max']}",
                      f"{length['prompt_words']['mean']:.1f}",
                      f"{length['completion_chars']['mean']:.0f}/{length['completion_chars']['max']}",
                      f"{length['completion_words']['mean']:.1f}")
    console.print(table)
    topics = Table(title="rows per topic")
    topics.add_column("topic")
    for name in card["splits"]:
        topics.add_column(name, justify="right")
    for topic, counts in card["topics"].items():
        topics.add_row(topic, *(str(n) for n in counts.values()))
    console.print(topics)
    reasons = ", ".join(f"{n} {r}" for r, n in card["dropped"]["by_reason"].items()) or "none"
    console.print(f"dropped: {card['rows']['dropped']} ({reasons}); "
                  f"hold-out rows in test: {card['holdout']['forced_to_test']}; "
                  f"cross-split near-duplicates: {card['leakage']['cross_split_pairs']}")
    for note in card.get("notes", []):
        console.print(f"note: {note}", highlight=False)


@data_app.command("prepare")
def data_prepare_cmd(
    input: Path = typer.Option(None, "--input", help="Your table: .jsonl, .csv, .tsv or .parquet "
                               "(UTF-8); default: data.source of --config when it is a file."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write: train/val/test.jsonl "
                             "and data_card.json. An existing folder is replaced only if it holds a "
                             "data_card.json. " + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'data' section supplies "
                                "the defaults of every option below."),
    id_column: str = typer.Option(None, "--id-column", help="Column of row ids; without one, ids "
                                  "are hashes of the cleaned content."),
    prompt_column: str = typer.Option(None, "--prompt-column", help="Column holding the clause."),
    completion_column: str = typer.Option(None, "--completion-column",
                                          help="Column holding the reference rule."),
    topic_column: str = typer.Option(None, "--topic-column", help="Column of topics; without one "
                                     "every row has topic 'unspecified'."),
    stratify_by: str = typer.Option(None, "--stratify-by", help="Stratify the split by 'topic', "
                                    "'source' or another input column; 'none' for no strata."),
    val_fraction: float = typer.Option(None, "--val-fraction", help="Share of rows for val."),
    test_fraction: float = typer.Option(None, "--test-fraction", help="Share of rows for test."),
    min_chars: int = typer.Option(None, "--min-chars", help="Drop prompts or completions shorter "
                                  "than this (after normalisation)."),
    max_chars: int = typer.Option(None, "--max-chars", help="Drop prompts or completions longer "
                                  "than this."),
    near_duplicate_threshold: float = typer.Option(
        None, "--near-duplicate-threshold", help="Prompts whose word-shingle Jaccard similarity "
        "reaches this are near-duplicates; all but the first are dropped."),
    shingle_size: int = typer.Option(None, "--shingle-size", help="Words per shingle."),
    minhash_permutations: int = typer.Option(None, "--minhash-permutations",
                                             help="MinHash permutations (LSH signature length)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the split (and of MinHash)."),
) -> None:
    """Clean, de-duplicate and split your own clause/rule table into a dataset folder."""
    from tunelens.data.prepare import prepare

    settings = _data_settings(
        config, id_column=id_column, prompt_column=prompt_column,
        completion_column=completion_column, topic_column=topic_column, stratify_by=stratify_by,
        val_fraction=val_fraction, test_fraction=test_fraction, min_chars=min_chars,
        max_chars=max_chars, near_duplicate_threshold=near_duplicate_threshold,
        shingle_size=shingle_size, minhash_permutations=minhash_permutations, seed=seed)
    if input is None:
        if settings.source == "bundled":
            raise TunelensError("data prepare: give --input (or a --config whose data.source is a "
                                "file); for the bundled dataset use 'tunelens data build'")
        input = Path(settings.source)
    progress, on_step = _step_progress(total=6)
    with progress:
        card = prepare(input, out, settings, on_step=on_step)
    _print_card(card, out)


@data_app.command("build")
def data_build_cmd(
    out: Path = typer.Option(..., "--out", help="Dataset folder to write: train/val/test.jsonl "
                             "and data_card.json. " + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'data' section supplies "
                                "fractions, thresholds and seed."),
    seed: int = typer.Option(None, "--seed", help="Seed of the generator and of the split."),
) -> None:
    """Write the bundled code-compliance dataset (train/val/test + data card).

    Generated and hand-written clauses go through the same cleaning, de-duplication and split as
    'data prepare'; hold-out rows (phrasings the generator never makes) all go to test.
    """
    from tunelens.data.build import build_bundled

    settings = _data_settings(config, seed=seed)
    progress, on_step = _step_progress(total=6)
    with progress:
        card = build_bundled(out, settings, on_step=on_step)
    _print_card(card, out)


@data_app.command("validate")
def data_validate_cmd(
    input: Path = typer.Option(..., "--input", help="Dataset folder holding train/val/test.jsonl."),
    compliance: bool = typer.Option(None, "--compliance/--no-compliance", help="Also parse every "
                                    "reference rule and run it on its sample designs; default: "
                                    "when most completions start with RULE."),
) -> None:
    """Check a dataset folder; exit 2 naming file:line of the first problem.

    Every row of every split needs non-empty id/topic/source/prompt/completion strings, ids are
    unique across splits, no near-duplicate prompt crosses splits and, for compliance data, every
    reference rule parses and runs on its sample designs with at least one PASS and one FAIL.
    """
    from rich.table import Table

    from tunelens.data.validate import validate

    progress, on_step = _step_progress(total=3)
    with progress:
        summary = validate(input, compliance=compliance, on_step=on_step)
    table = Table(title="valid dataset")
    for col in ("split", "rows"):
        table.add_column(col, justify="left" if col == "split" else "right")
    for name, n in summary["splits"].items():
        table.add_row(name, str(n))
    console.print(table)
    rules = (f"{summary['rules_checked']} rules parsed and run on {summary['designs_checked']} "
             "sample designs" if summary["compliance"] else "not compliance data: rules not checked")
    console.print(f"{input}: {summary['rows']} rows, {summary['topics']} topics, unique ids, "
                  "no cross-split "
                  f"near-duplicates; {rules}")


@app.command("categories")
def categories_cmd(
    input: Path = typer.Option(..., "--input", help='JSONL file, one {"text": ...} object a line '
                               "(other keys are kept)."),
    out: Path = typer.Option(None, "--out", help="JSONL to write, each line with 'spans' "
                             "[{start, end, category, text}] added; default: standard output. "
                             + OUT_HELP),
) -> None:
    """Tag building-code text with token categories (character spans).

    Categories: RULE_ID, NUMBER, UNIT, COMPARATOR, MODAL, CONDITION; untagged text is OTHER.
    """
    import json

    from rich.table import Table

    from tunelens.data.compliance.categories import tag_file

    summary = tag_file(input, out)
    if out is None:
        for row in summary["rows"]:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    table = Table(title=f"{summary['lines']} line(s) tagged into {out}")
    table.add_column("category")
    table.add_column("spans", justify="right")
    for category, n in summary["spans"].items():
        table.add_row(category, str(n))
    console.print(table)
