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


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# categories
# ---------------------------------------------------------------------------------------------


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


# ---------------------------------------------------------------------------------------------
# zoo, train, export
# ---------------------------------------------------------------------------------------------


@zoo_app.command("build")
def zoo_build_cmd(
    preset: str = typer.Option(..., "--preset", help="Ladder recipe: 'quick' (4 models, ~19k to "
                               "~0.8M parameters, seconds; for tests) or 'demo' (4 models, ~40k "
                               "to ~2.1M parameters, a minute or two; for the demo study)."),
    out: Path = typer.Option(..., "--out", help="Zoo folder: one checkpoint per model plus "
                             "ladder.json. " + OUT_HELP),
    force: bool = typer.Option(False, "--force", help="Rebuild even if --out already holds an "
                               "identical build (same preset, corpus, code and libraries)."),
) -> None:
    """Train a BPE tokenizer and a ladder of small Llama models from scratch on the bundled
    corpus; each is saved as a checkpoint that AutoModelForCausalLM loads unchanged."""
    from rich.table import Table

    from tunelens.models.zoo import build_zoo

    entries = build_zoo(preset, out, force=force)
    table = Table(title=f"zoo '{preset}' in {out}")
    for col in ("name", "params", "tokens seen", "final loss", "seconds"):
        table.add_column(col, justify="left" if col == "name" else "right")
    for e in entries:
        table.add_row(e["name"], f"{e['params']:,}", f"{e['tokens_seen']:,}",
                      f"{e['final_loss']:.3f}", f"{e['seconds']:.1f}")
    console.print(table)


@app.command("train")
def train_cmd(
    model: str = typer.Option(..., "--model", help="Base model: a local checkpoint folder or a "
                              "Hugging Face hub id (needs the hub or its cache)."),
    data: Path = typer.Option(..., "--data", help="Folder with train.jsonl and val.jsonl (rows: "
                              "id, topic, source, prompt, completion)."),
    strategy: str = typer.Option(..., "--strategy", help="full | lora | qlora (4-bit NF4 base + "
                                 "LoRA) | dora | freeze (train only the top layers and the head)."),
    objective: str = typer.Option(..., "--objective", help="instruct (prompt -> completion, loss "
                                  "on the completion only) | causal (loss on every token, packed)."),
    out: Path = typer.Option(..., "--out", help="Run folder: adapter or weights, tokenizer, "
                             "run.json. " + OUT_HELP),
    max_steps: int | None = typer.Option(None, "--max-steps", min=1, help="Optimizer steps "
                                         "(default: train.max_steps of the config)."),
    config: Path | None = typer.Option(None, "--config", help="Study YAML whose 'train' and "
                                       "'tracking' sections are used (default: built-in defaults)."),
    tracking_uri: str | None = typer.Option(None, "--tracking-uri", help="MLflow tracking URI "
                                            "(default: sqlite:///<study>/mlflow.db for --out "
                                            "<study>/models/<run>, else mlflow.db beside --out)."),
    run_name: str | None = typer.Option(None, "--run-name", help="MLflow run name (default: the "
                                        "name of --out)."),
) -> None:
    """Fine-tune a model with TRL's SFTTrainer; Ctrl-C checkpoints, rerunning resumes."""
    from rich.table import Table

    from tunelens.config import TrackingConfig, TrainConfig, load_study, parse_study
    from tunelens.train import train

    study = load_study(config) if config else None
    train_cfg = study.train if study else TrainConfig()
    tracking_cfg = study.tracking if study else TrackingConfig()
    if max_steps is not None or tracking_uri is not None:
        raw = {"train": train_cfg.model_dump(), "tracking": tracking_cfg.model_dump()}
        if max_steps is not None:
            raw["train"]["max_steps"] = max_steps
        if tracking_uri is not None:
            raw["tracking"]["uri"] = tracking_uri
        merged = parse_study(raw, origin="command line")
        train_cfg, tracking_cfg = merged.train, merged.tracking
    try:
        info = train(model, data, out, strategy, objective, config=train_cfg, tracking=tracking_cfg,
                     run_name=run_name, progress=True)
    except KeyboardInterrupt:
        err_console.print(f"[bold yellow]interrupted:[/] checkpoint saved under {out.parent}/"
                          f".{out.name}.partial; rerun the same command to resume")
        raise typer.Abort() from None  # main() turns it into exit code 130
    table = Table(title=f"{strategy}/{objective} -> {out}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [("trainable / total params", f"{info['trainable_params']:,} / {info['total_params']:,}"),
            ("steps", str(info["global_step"])),
            ("val loss before -> after", f"{info['val_loss_before']:.4f} -> {info['val_loss_after']:.4f}"),
            ("wall seconds", f"{info['wall_seconds']:.1f}"),
            ("tokens / s", f"{info['tokens_per_second'] or 0:,.0f}"),
            ("peak RSS MB", f"{info['peak_rss_mb']:,.0f}")]
    if info.get("mlflow"):
        rows.append(("MLflow", f"{info['mlflow']['tracking_uri']} run {info['mlflow']['run_id']}"))
    for row in rows:
        table.add_row(*row)
    console.print(table)


@app.command("export")
def export_cmd(
    model: Path = typer.Option(..., "--model", help="A finished training run folder (with run.json)."),
    merge: bool = typer.Option(True, "--merge/--no-merge", help="Merge adapter weights into the base "
                               "(qlora: into the de-quantized fp32 base). The only export mode."),
    out: Path = typer.Option(..., "--out", help="Standalone checkpoint folder. " + OUT_HELP),
) -> None:
    """Write a standalone checkpoint (no PEFT needed) from a training run."""
    from tunelens.train import export_merged

    if not merge:
        raise TunelensError("export: only merged export exists; pass --merge")
    path = export_merged(_existing(model, "folder"), out)
    console.print(f"merged checkpoint written to [bold]{path}[/]")


# ---------------------------------------------------------------------------------------------
# rag, generate, evaluate
# ---------------------------------------------------------------------------------------------


@rag_app.command("index")
def rag_index_cmd(
    corpus: Path = typer.Option(None, "--corpus", help="JSONL with prompt/completion (and id) rows "
                                "to retrieve from, normally the study's data/train.jsonl; default: "
                                "rag.corpus of --config."),
    out: Path = typer.Option(..., "--out", help="Index folder. " + OUT_HELP),
    embedding_model: str = typer.Option(None, "--embedding-model", help="sentence-transformers "
                                        "path; default: rag.embedding_model of the config, else "
                                        "the bundled all-MiniLM-L6-v2 (offline)."),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'rag' section supplies "
                                "defaults."),
) -> None:
    """Embed a corpus of clause->rule pairs into a FAISS index for 'generate --rag'."""
    from tunelens.config import RagConfig, load_study
    from tunelens.infer.rag import build_index

    rag = load_study(_existing(config)).rag if config else RagConfig()
    corpus = corpus or (Path(rag.corpus) if rag.corpus else None)
    if corpus is None:
        raise TunelensError("no corpus: pass --corpus (e.g. STUDY/data/train.jsonl)")
    manifest = build_index(_existing(corpus), out, embedding_model or rag.embedding_model)
    console.print(f"indexed [bold]{manifest['count']}[/] rows ({manifest['dimension']}-d, "
                  f"inner product) into {out}", highlight=False)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


def _gen_default(name: str, section: str = "generation") -> str:
    """'(default: X)' read from config.py, so help texts never restate a default."""
    from tunelens.config import GenerationConfig, RagConfig

    cls = GenerationConfig if section == "generation" else RagConfig
    return f"(default: {cls.model_fields[name].get_default(call_default_factory=True)!r})."


@app.command("generate")
def generate_cmd(
    model: str = typer.Option(..., "--model", help="Training run folder (full weights or a "
                              "LoRA/QLoRA adapter over its base) or any model path/id."),
    data: Path = typer.Option(..., "--data", help="JSONL rows with id, prompt (the clause) and "
                              "completion (the reference); topic/source are kept."),
    out: Path = typer.Option(..., "--out", help="Predictions JSONL. " + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'generation' and 'rag' "
                                "sections supply the defaults below."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", help="Most tokens generated per "
                                       "prompt " + _gen_default("max_new_tokens")),
    sample: bool = typer.Option(None, "--sample/--greedy", help="Sample instead of greedy "
                                "decoding (default: greedy)."),
    temperature: float = typer.Option(None, "--temperature",
                                      help="Sampling temperature " + _gen_default("temperature")),
    top_p: float = typer.Option(None, "--top-p",
                                help="Nucleus sampling mass; 1 is off " + _gen_default("top_p")),
    top_k: int = typer.Option(None, "--top-k", help="Sample from the k likeliest tokens; 0 is off "
                              + _gen_default("top_k")),
    repetition_penalty: float = typer.Option(None, "--repetition-penalty",
                                             help="Penalty on repeated tokens; 1 is off "
                                             + _gen_default("repetition_penalty")),
    num_samples: int = typer.Option(None, "--num-samples", help="Samples per prompt, written as "
                                    "'samples' (needs --sample) " + _gen_default("num_samples")),
    stop: list[str] = typer.Option(None, "--stop", help="Cut the output at this string; repeat "
                                   "for several; \\n and \\t are understood; --stop '' for none "
                                   "(default: a blank line)."),
    batch_size: int = typer.Option(None, "--batch-size",
                                   help="Most prompts per batch " + _gen_default("batch_size")),
    max_batch_tokens: int = typer.Option(None, "--max-batch-tokens", help="Most rows x (longest "
                                         "prompt + max new tokens) per batch; longer inputs get "
                                         "smaller batches " + _gen_default("max_batch_tokens")),
    max_examples: int = typer.Option(None, "--max-examples", help="Only the first N rows."),
    seed: int = typer.Option(None, "--seed", help="Seed for sampling " + _gen_default("seed")),
    rag: Path = typer.Option(None, "--rag", help="Index folder from 'rag index': put the nearest "
                             "corpus examples into each prompt."),
    rag_k: int = typer.Option(None, "--rag-k", help="Examples retrieved per prompt "
                           + _gen_default("k", "rag")),
) -> None:
    """Generate a prediction for every clause of --data (batched, greedy or sampled)."""
    from pydantic import ValidationError
    from rich.table import Table

    from tunelens.config import GenerationConfig, format_validation_error, load_study
    from tunelens.infer.generate import generate_predictions

    study = load_study(_existing(config)) if config else None
    base = study.generation if study else GenerationConfig()
    flags = {"max_new_tokens": max_new_tokens, "do_sample": sample, "temperature": temperature,
             "top_p": top_p, "top_k": top_k, "repetition_penalty": repetition_penalty,
             "num_samples": num_samples, "batch_size": batch_size,
             "max_batch_tokens": max_batch_tokens, "max_examples": max_examples, "seed": seed,
             "stop": [_unescape(s) for s in stop if s] if stop else None}
    try:
        gen = GenerationConfig.model_validate(
            {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise TunelensError(f"generate: {format_validation_error(exc)}") from None
    k = rag_k if rag_k is not None else (study.rag.k if study else None)
    summary = generate_predictions(model, _existing(data), out, gen,
                                   rag_index=_existing(rag, "index folder") if rag else None, rag_k=k)
    table = Table(title=f"generate -> {out}")
    table.add_column("rows", justify="right")
    table.add_column("tokens", justify="right")
    table.add_column("seconds", justify="right")
    table.add_column("tokens/s", justify="right")
    table.add_column("rag k", justify="right")
    table.add_row(str(summary["rows"]), str(summary["tokens_generated"]), f"{summary['seconds']:.1f}",
                  str(summary["tokens_per_second"]), str(summary["rag_k"] or "-"))
    console.print(table)


@app.command("evaluate")
def evaluate_cmd(
    predictions: Path = typer.Option(..., "--predictions", help="Predictions JSONL: id, prompt, "
                                     "reference, prediction (and 'samples' when several were "
                                     "drawn per prompt)."),
    out: Path = typer.Option(..., "--out", help="Metrics JSON (aggregate, intervals, per_example). "
                             + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'evaluation' section "
                                "supplies the defaults below."),
    judge_url: str = typer.Option(None, "--judge-url", help="OpenAI-compatible server of an LLM "
                                  "judge (Ollama, vLLM, llama.cpp), e.g. http://localhost:11434; "
                                  "needs --judge-model."),
    judge_model: str = typer.Option(None, "--judge-model", help="Model name the judge server "
                                    "serves."),
    judge_path: str = typer.Option(None, "--judge-path", help="Local Hugging Face model used as "
                                   "judge instead of a server."),
    bootstrap_samples: int = typer.Option(None, "--bootstrap-samples", help="Resamples for the "
                                          "intervals (config default: 1000)."),
    seed: int = typer.Option(None, "--seed", help="Seed of the resampling (config default: 0)."),
) -> None:
    """Score predictions: BLEU, chrF, ROUGE, n-gram Jaccard, semantic similarity, exact match,
    rule-level parse/field/execution accuracy, diversity of samples and (optionally) an LLM judge,
    each with a bootstrap 95% interval."""
    from pydantic import ValidationError
    from rich.table import Table

    from tunelens.config import EvaluationConfig, format_validation_error, load_study
    from tunelens.evaluate import evaluate, judge_config

    base = load_study(_existing(config)).evaluation if config else EvaluationConfig()
    flags = {"bootstrap_samples": bootstrap_samples, "seed": seed}
    try:
        cfg = EvaluationConfig.model_validate(
            {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise TunelensError(f"evaluate: {format_validation_error(exc)}") from None
    cfg.judge = judge_config(cfg.judge, judge_url, judge_model, judge_path)
    result = evaluate(predictions, out, cfg)
    level = round(cfg.confidence * 100)
    table = Table(title=f"evaluate -> {out} ({result['info']['examples']} examples)")
    table.add_column("metric")
    table.add_column("value", justify="right")
    table.add_column(f"{level}% CI", justify="right")
    for name, value in result["aggregate"].items():
        ci = result["intervals"].get(name)
        table.add_row(name, "n/a" if value is None else f"{value:.4g}",
                      "" if ci is None else f"[{ci[0]:.4g}, {ci[1]:.4g}]")
    console.print(table)
    judge = result["info"].get("judge")
    if judge:
        console.print(f"judge: {judge['backend']}, template {judge['template_version']}, "
                      f"{judge['missing']} missing", highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------------------
# explain
# ---------------------------------------------------------------------------------------------


@app.command("explain")
def explain_cmd(
    model: str = typer.Option(..., "--model", help="Training run folder (full weights or a "
                              "LoRA/QLoRA adapter over its base) or any model path/id."),
    data: Path = typer.Option(..., "--data", help="JSONL of dataset rows (id, prompt, completion) "
                              "or predictions rows (id, prompt, reference, prediction)."),
    out: Path = typer.Option(..., "--out", help="Attributions parquet (example_id, position, token, "
                             "start, end, category, score); a token heat-map <stem>.html is "
                             "written beside it. " + OUT_HELP),
    config: Path = typer.Option(None, "--config", help="Study YAML whose 'explanation' section "
                                "supplies the defaults below."),
    method: str = typer.Option(None, "--method", help="occlusion (leave one out), shapley "
                               "(permutation sampling), lime, kernel_shap, or a gradient method "
                               "(saliency, input_x_gradient, integrated_gradients). Default: occlusion."),
    granularity: str = typer.Option(None, "--granularity", help="Features: token, word (sub-words "
                                    "joined by whitespace) or span (the tagged categories' "
                                    "spans). Default: token."),
    baseline: str = typer.Option(None, "--baseline", help="What replaces a feature: unk, pad or "
                                 "mask token, delete (remove it), sample (random tokens, "
                                 "averaged). Default: unk."),
    target: str = typer.Option(None, "--target", help="reference (the completion) or generation "
                               "(the row's prediction). Default: reference."),
    n_samples: int = typer.Option(None, "--n-samples", help="Permutations (shapley) or masks "
                                  "(lime, kernel_shap) per example. Default: 64."),
    max_examples: int = typer.Option(None, "--max-examples", help="Only the first N rows. Default: 24."),
    batch_size: int = typer.Option(None, "--batch-size", help="Perturbations per forward pass. "
                                   "Default: sized from --memory-budget-mb."),
    memory_budget_mb: float = typer.Option(None, "--memory-budget-mb", help="Memory one batch "
                                           "of perturbations may use. Default: 1024."),
    seed: int = typer.Option(None, "--seed", help="Seed of the sampling methods. Default: 0."),
    heatmap: bool = typer.Option(None, "--heatmap/--no-heatmap", help="Write the HTML heat-map "
                                 "Default: yes."),
) -> None:
    """Attribute each example's target to the tokens of its clause (batched perturbations);
    resumable: rerunning after an interruption skips the finished examples."""
    from pydantic import ValidationError
    from rich.table import Table

    from tunelens.config import ExplanationConfig, format_validation_error, load_study
    from tunelens.explain import explain_run

    base = load_study(_existing(config)).explanation if config else ExplanationConfig()
    flags = {"method": method, "granularity": granularity, "baseline": baseline, "target": target,
             "n_samples": n_samples, "max_examples": max_examples, "batch_size": batch_size,
             "memory_budget_mb": memory_budget_mb, "seed": seed, "heatmap": heatmap}
    try:
        cfg = ExplanationConfig.model_validate(
            {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}})
    except ValidationError as exc:
        raise TunelensError(f"explain: {format_validation_error(exc)}") from None
    summary = explain_run(model, _existing(data), out, cfg)
    table = Table(title=f"explain -> {out}")
    for col in ("examples", "resumed", "features", "method", "forward passes", "perturbations",
                "seconds"):
        table.add_column(col, justify="right")
    table.add_row(str(summary["examples"]), str(summary["resumed"]), str(summary["features"]),
                  summary["method"], str(summary["forward_passes"]), str(summary["perturbations"]),
                  f"{summary['seconds']:.1f}")
    console.print(table)
    if summary["heatmap"]:
        console.print(f"heat-map: {summary['heatmap']}", highlight=False)


# ---------------------------------------------------------------------------------------------
# compare, report, run, demo
# ---------------------------------------------------------------------------------------------


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


if __name__ == "__main__":
    entry()
