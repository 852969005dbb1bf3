"""Verbs that produce and score outputs: rag index, generate, evaluate."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli.app import OUT_HELP, _existing, app, console, rag_app
from tunelens.errors import TunelensError


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
