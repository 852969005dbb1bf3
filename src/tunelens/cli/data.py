"""Verbs of the data stage: data build/prepare/validate and categories."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, console, data_app, err_console
from tunelens.config import DataConfig, override
from tunelens.errors import TunelensError
from tunelens.format import number
from tunelens.io import check_writable


def _data_settings(config: Path | None, **flags) -> DataConfig:
    """The study's data section (or the defaults) with the given flags laid over it."""
    settings = override(opt.section(config, "data"), origin="data settings", **flags)
    if flags.get("stratify_by") == "none":  # None means "flag not given", so 'none' says no strata
        settings.stratify_by = None
    return settings


def _steps(total: int):
    """The bar of a pipeline of named steps; yields the ``on_step`` callback the stage calls."""
    from tunelens.progress import step_bar

    return step_bar(total, enabled=err_console.is_terminal, console=err_console)


_opt = partial(opt.field_option, DataConfig)


def _print_card(card: dict, out: Path) -> None:
    console.print(f"wrote {out}: {card['rows']['kept']} of {card['rows']['input']} rows kept")

    def mean_max(length: dict) -> str:
        return f"{number(length['mean'], 0)}/{length['max']}"

    opt.print_table("splits", ("split", "rows", "topics", "prompt chars mean/max", "prompt words mean",
                               "completion chars mean/max", "completion words mean"),
                    ((name, s["rows"], len(s["topics"]), mean_max(s["length"]["prompt_chars"]),
                      number(s["length"]["prompt_words"]["mean"], 1),
                      mean_max(s["length"]["completion_chars"]),
                      number(s["length"]["completion_words"]["mean"], 1))
                     for name, s in card["splits"].items()), left=1)
    opt.print_table("rows per topic", ("topic", *card["splits"]),
                    ((topic, *counts.values()) for topic, counts in card["topics"].items()), left=1)
    reasons = ", ".join(f"{n} {r}" for r, n in card["dropped"]["by_reason"].items()) or "none"
    console.print(f"dropped: {card['rows']['dropped']} ({reasons}); "
                  f"hold-out rows in test: {card['holdout']['forced_to_test']}; "
                  f"cross-split near-duplicates: {card['leakage']['cross_split_pairs']}")
    for note in card.get("notes", []):
        console.print(f"note: {note}", highlight=False)


DATASET_OUT = "Dataset folder to write: train/val/test.jsonl and data_card.json."


@data_app.command("prepare")
def data_prepare_cmd(
    input: Path = typer.Option(None, "--input", help="Your table: .jsonl, .csv, .tsv or .parquet "
                               "(UTF-8); default: data.source of --config when it is a file."),
    out: Path = opt.out_option(f"{DATASET_OUT} An existing folder is replaced only if it holds a "
                           "data_card.json."),
    config: Path = opt.config_option("'data' section"),
    id_column: str = _opt("id_column", "--id-column", "Column of row ids; without it, ids are "
                          "hashes of the cleaned content"),
    prompt_column: str = _opt("prompt_column", "--prompt-column", "Column holding the clause"),
    completion_column: str = _opt("completion_column", "--completion-column",
                                  "Column holding the reference rule"),
    topic_column: str = _opt("topic_column", "--topic-column", "Column of topics; without it "
                             "every row has topic 'unspecified'"),
    stratify_by: str = _opt("stratify_by", "--stratify-by", "Stratify the split by 'topic', "
                            "'source' or another input column; 'none' for no strata"),
    val_fraction: float = _opt("val_fraction", "--val-fraction", "Share of rows for val"),
    test_fraction: float = _opt("test_fraction", "--test-fraction", "Share of rows for test"),
    min_chars: int = _opt("min_chars", "--min-chars", "Drop prompts or completions shorter than "
                          "this (after normalisation)"),
    max_chars: int = _opt("max_chars", "--max-chars", "Drop prompts or completions longer than "
                          "this"),
    near_duplicate_threshold: float = _opt(
        "near_duplicate_threshold", "--near-duplicate-threshold", "Prompts whose word-shingle "
        "Jaccard similarity reaches this are near-duplicates; all but the first are dropped"),
    shingle_size: int = _opt("shingle_size", "--shingle-size", "Words per shingle"),
    minhash_permutations: int = _opt("minhash_permutations", "--minhash-permutations",
                                     "MinHash permutations (LSH signature length)"),
    seed: int = opt.seed_option("the split (and of MinHash)", DataConfig),
) -> None:
    """Clean, de-duplicate and split your own clause/rule table into a dataset folder."""
    from tunelens.data.prepare import prepare

    check_writable(out, "dir")
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
    with _steps(6) as on_step:
        card = prepare(opt.existing(input), out, settings, on_step=on_step)
    _print_card(card, out)


@data_app.command("build")
def data_build_cmd(
    out: Path = opt.out_option(DATASET_OUT),
    config: Path = opt.config_option("'data' section (fractions, thresholds, seed)"),
    seed: int = opt.seed_option("the generator and of the split", DataConfig),
) -> None:
    """Write the bundled code-compliance dataset (train/val/test + data card).

    Generated and hand-written clauses go through the same cleaning, de-duplication and split as
    'data prepare'; hold-out rows (phrasings the generator never makes) all go to test.
    """
    from tunelens.data.build import build_bundled

    check_writable(out, "dir")
    settings = _data_settings(config, seed=seed)
    with _steps(6) as on_step:
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
    from tunelens.data.validate import validate

    with _steps(3) as on_step:
        summary = validate(input, compliance=compliance, on_step=on_step)
    opt.print_table("valid dataset", ("split", "rows"), summary["splits"].items(), left=1)
    rules = (f"{summary['rules_checked']} rules parsed and run on {summary['designs_checked']} "
             "sample designs" if summary["compliance"] else "not compliance data: rules not checked")
    console.print(f"{input}: {summary['rows']} rows, {summary['topics']} topics, unique ids, "
                  f"no cross-split near-duplicates; {rules}")


@app.command("categories")
def categories_cmd(
    input: Path = typer.Option(..., "--input", help='JSONL file, one {"text": ...} object a line '
                               "(other keys are kept)."),
    out: Path = opt.out_option("JSONL to write, each line with 'spans' [{start, end, category, text}] "
                           "added; default: standard output.", required=False),
) -> None:
    """Tag building-code text with token categories (character spans).

    Categories: RULE_ID, NUMBER, UNIT, COMPARATOR, MODAL, CONDITION; untagged text is OTHER.
    """
    import json

    from tunelens.data.compliance.categories import tag_file

    if out is not None:
        check_writable(out, "file")
    summary = tag_file(opt.existing(input), out)
    if out is None:
        for row in summary["rows"]:
            typer.echo(json.dumps(row, ensure_ascii=False))
        return
    opt.print_table(f"{summary['lines']} line(s) tagged into {out}", ("category", "spans"),
                    summary["spans"].items(), left=1)


def _generate_defaults():
    from tunelens.data.generate.run import GenerateSettings

    return GenerateSettings(n=1)


def _default(name: str) -> str:
    """A ``data generate`` default as help text (from the settings, never restated)."""
    value = getattr(_generate_defaults(), name)
    return ", ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _generate_settings(**flags):
    """The defaults with the flags given (None or an empty list: not given) laid over them."""
    from dataclasses import replace

    return replace(_generate_defaults(), **{k: v for k, v in flags.items() if v not in (None, ())})


def _bundled_templates() -> str:
    from tunelens.data.generate.templates import bundled_ids

    return ", ".join(bundled_ids())


@data_app.command("generate")
def data_generate_cmd(
    n: int = typer.Option(..., "--n", min=1, help="Rows to keep."),
    input: Path = typer.Option(..., "--input", help="Seeds: clause rows (.jsonl/.csv/.tsv with a "
                               "prompt, clause or text column; completion or rule optional) or a "
                               "document (.txt/.md) cut into clauses."),
    generator: str = typer.Option(..., "--generator", help="A local model (any model reference: "
                                  "smollm2-135m, a path, a hub id), or with --generator-url the "
                                  "model name the server knows; a URL here is --generator-url."),
    out: Path = typer.Option(..., "--out", help="Rows to write (.jsonl), appended batch by batch "
                             "(each batch whole), with FILE.rejects.jsonl and FILE.card.json beside "
                             "it; a rerun continues where it stopped; checked writable first."),
    generator_url: str = typer.Option(None, "--generator-url", help="OpenAI-compatible server "
                                      "(Ollama, vLLM, llama.cpp, a hosted API)."),
    template: list[str] = typer.Option(None, "--template", help="Bundled template id (optionally "
                                       "id@version) or a .j2 file; repeat for several. Bundled: "
                                       f"{_bundled_templates()}; default: {_default('templates')}."),
    temperature: list[float] = typer.Option(None, "--temperature", min=0.0, help="Sampling "
                                            "temperature (0 = greedy); repeat to sweep; default: "
                                            f"{_default('temperatures')}."),
    top_p: list[float] = typer.Option(None, "--top-p", min=0.0, max=1.0, help="Nucleus "
                                      "sampling; repeat to sweep (crossed with --temperature); "
                                      f"default: {_default('top_ps')}."),
    max_tokens: int = typer.Option(None, "--max-tokens", min=1, help="Most tokens per reply; "
                                   f"default: {_default('max_tokens')}."),
    compliance: bool = typer.Option(None, "--compliance/--no-compliance", help="Keep only rows "
                                    "whose rule parses and runs on its sample designs; default: "
                                    "when a template writes rules or the seeds' rules are RULE lines."),
    embeddings: bool = typer.Option(True, "--embeddings/--no-embeddings", help="Report MiniLM "
                                    "embedding spread per batch."),
    batch_size: int = typer.Option(None, "--batch-size", min=1, help="Requests per batch "
                                   f"(one checkpoint each); default: {_default('batch_size')}."),
    concurrency: int = typer.Option(None, "--concurrency", min=1, help="Most requests in flight "
                                    f"to a server; default: {_default('concurrency')}."),
    max_attempts: int = typer.Option(None, "--max-attempts", min=1, help="Stop after this many "
                                     "requests even if fewer than --n rows were kept; by default four "
                                     "times --n."),
    timeout: float = typer.Option(None, "--timeout", min=0.1, help="Seconds per request; "
                                  f"default: {_default('timeout')}."),
    seed: int = typer.Option(None, "--seed", help="Seed of sampling and of "
                             f"MinHash; default: {_default('seed')}."),
    api_key_env: str = typer.Option(None, "--api-key-env", help="Environment variable holding "
                                    "the server's API key (none for local servers)."),
    min_judge_score: float = typer.Option(None, "--min-judge-score", min=1.0, max=5.0, help="Judge "
                                          "filter: a second model grades each pair's accuracy and "
                                          "relevance (1-5); pairs whose mean is below this go to the "
                                          "rejects. Needs --judge-url/--judge-model or --judge-path."),
    judge_url: str = opt.judge_url_option(),
    judge_model: str = opt.judge_model_option(),
    judge_path: str = opt.judge_path_option(),
    threads: int = opt.threads_option(),
) -> None:
    """Write instruction pairs with an LLM from seed clauses, filtered, de-duplicated, resumable."""
    from tunelens.data.generate.run import generate_data

    check_writable(out, "file")
    opt.existing(input)
    opt.set_threads(threads)
    settings = _generate_settings(
        n=n, embeddings=embeddings, templates=tuple(template or ()),
        temperatures=tuple(temperature or ()), top_ps=tuple(top_p or ()), max_tokens=max_tokens,
        compliance=compliance, batch_size=batch_size, concurrency=concurrency,
        max_attempts=max_attempts, timeout=timeout, seed=seed, api_key_env=api_key_env,
        min_judge_score=min_judge_score, judge_url=judge_url, judge_model=judge_model,
        judge_path=judge_path)
    card = generate_data(input, out, generator, settings, url=generator_url,
                         progress=err_console.is_terminal)
    _print_generated(card, out)


def _print_generated(card: dict, out: Path) -> None:
    rows = card["rows"]
    console.print(f"wrote {out}: {rows['kept']} kept of {rows['attempted']} generated, "
                  f"{rows['rejected']} rejected into {card['rejects_file']}; data card beside them")
    opt.print_table("rejected by filter", ("filter", "rows"),
                    card["rejected_by_filter"].items(), left=1)
    opt.print_table("batches", ("batch", "attempted", "kept", "distinct-1", "distinct-2",
                                "spread", "distance to seed"),
                    ((b["batch"], b["attempted"], b["kept"], b.get("distinct_1"),
                      b.get("distinct_2"), b.get("spread"), b.get("distance_to_seed"))
                     for b in card["batches"]), left=0)
