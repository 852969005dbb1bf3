"""Verbs that produce and score outputs: rag index, generate, evaluate."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, console, err_console, rag_app
from tunelens.config import EvaluationConfig, GenerationConfig, RagConfig, default_of, override
from tunelens.errors import TunelensError
from tunelens.format import number
from tunelens.io import check_writable


@rag_app.command("index")
def rag_index_cmd(
    corpus: Path = typer.Option(None, "--corpus", help="JSONL with prompt/completion (and id) rows "
                                "to retrieve from, normally the study's data/train.jsonl; default: "
                                "rag.corpus of --config."),
    out: Path = opt.out_option("Index folder."),
    embedding_model: str = typer.Option(None, "--embedding-model", help="sentence-transformers "
                                        "path; default: rag.embedding_model of the config, else "
                                        "the bundled all-MiniLM-L6-v2 (offline)."),
    config: Path = opt.config_option("'rag' section"),
    threads: int = opt.threads_option(),
) -> None:
    """Embed a corpus of clause->rule pairs into a FAISS index for 'generate --rag'."""
    rag = override(opt.section(config, "rag"), origin="rag index", embedding_model=embedding_model,
                   corpus=None if corpus is None else str(corpus))
    if rag.corpus is None:
        raise TunelensError("no corpus: pass --corpus (e.g. STUDY/data/train.jsonl)")
    corpus = opt.existing(Path(rag.corpus))
    check_writable(out, "dir")
    opt.set_threads(threads)
    from tunelens.infer.rag import build_index

    manifest = build_index(corpus, out, rag.embedding_model)
    console.print(f"indexed [bold]{manifest['count']}[/] rows ({manifest['dimension']}-d, "
                  f"inner product) into {out}", highlight=False)


def _unescape(text: str) -> str:
    return text.replace("\\n", "\n").replace("\\t", "\t")


_gen = partial(opt.field_option, GenerationConfig)


@app.command("generate")
def generate_cmd(
    model: str = opt.model_option(),
    data: Path = typer.Option(..., "--data", help="JSONL rows with id, prompt (the clause) and "
                              "completion (the reference); topic/source are kept."),
    out: Path = opt.out_option("Predictions JSONL."),
    config: Path = opt.config_option("'generation' and 'rag' sections"),
    max_new_tokens: int = _gen("max_new_tokens", "--max-new-tokens", "Most tokens generated per "
                               "prompt"),
    sample: bool = typer.Option(None, "--sample/--greedy", help="Sample instead of greedy "
                                "decoding (default: "
                                f"{'sample' if GenerationConfig().do_sample else 'greedy'})."),
    temperature: float = _gen("temperature", "--temperature", "Sampling temperature"),
    top_p: float = _gen("top_p", "--top-p", "Nucleus sampling mass; 1 is off"),
    top_k: int = _gen("top_k", "--top-k", "Sample from the k likeliest tokens; 0 is off"),
    repetition_penalty: float = _gen("repetition_penalty", "--repetition-penalty",
                                     "Penalty on repeated tokens; 1 is off"),
    num_samples: int = _gen("num_samples", "--num-samples", "Samples per prompt, written as "
                            "'samples' (needs --sample)"),
    stop: list[str] = _gen("stop", "--stop", "Cut the output at this string; repeat for several; "
                           "\\n and \\t are understood; --stop '' for none"),
    batch_size: int = _gen("batch_size", "--batch-size", "Most prompts per batch"),
    max_batch_tokens: int = _gen("max_batch_tokens", "--max-batch-tokens", "Most rows x (longest "
                                 "prompt + max new tokens) per batch; longer inputs get smaller "
                                 "batches"),
    max_examples: int = typer.Option(None, "--max-examples", help="A sample of N rows, stratified "
                                     "by topic and source (the same rows for every model)."),
    seed: int = opt.seed_option("the sampling", GenerationConfig),
    rag: Path = typer.Option(None, "--rag", help="Index folder from 'rag index': put the nearest "
                             "corpus examples into each prompt."),
    rag_k: int = typer.Option(None, "--rag-k", help="Examples retrieved per prompt "
                              + default_of(RagConfig, "k") + "."),
    dtype: str = opt.dtype_option(trained=False),
    trust_remote_code: bool = opt.trust_remote_code_option(trained=False),
    prompt_format: str = opt.prompt_format_option(trained=False),
    threads: int = opt.threads_option(),
) -> None:
    """Generate a prediction for every clause of --data (batched, greedy or sampled), prompted
    the way the run was trained (its run.json's prompt format)."""
    opt.check_model_settings(dtype, prompt_format)
    opt.existing(data)
    if rag is not None:
        opt.existing(rag, "index folder")
    check_writable(out, "file")
    gen = override(opt.section(config, "generation"), origin="generate",
                   max_new_tokens=max_new_tokens, do_sample=sample, temperature=temperature,
                   top_p=top_p, top_k=top_k, repetition_penalty=repetition_penalty,
                   num_samples=num_samples, batch_size=batch_size,
                   max_batch_tokens=max_batch_tokens, max_examples=max_examples, seed=seed,
                   stop=[_unescape(s) for s in stop if s] if stop else None)
    k = override(opt.section(config, "rag"), origin="generate", k=rag_k).k
    opt.set_threads(threads)
    from tunelens.infer.generate import generate_predictions

    _print_generated(out, generate_predictions(model, data, out, gen, rag_index=rag, rag_k=k,
                                               dtype=dtype, trust_remote_code=trust_remote_code,
                                               prompt_format=prompt_format))


def _print_generated(out: Path, summary: dict) -> None:
    opt.print_table(f"generate -> {out}", ("rows", "tokens", "seconds", "tokens/s", "rag k",
                                           "prompt"),
                    [(summary["rows"], summary["tokens_generated"], number(summary["seconds"], 1),
                      number(summary["tokens_per_second"], 1), summary["rag_k"],
                      summary["prompt_format"])])
    if summary.get("truncated_rows"):
        err_console.print(f"[yellow]{summary['truncated_rows']} prompt(s) longer than the model's "
                          "context were cut from the left (rows marked 'truncated_chars')",
                          highlight=False)


@app.command("evaluate")
def evaluate_cmd(
    predictions: Path = typer.Option(..., "--predictions", help="Predictions JSONL: id, prompt, "
                                     "reference, prediction (and samples, when drawn)."),
    out: Path = opt.out_option("Metrics JSON (aggregate, intervals, per_example)."),
    config: Path = opt.config_option("'evaluation' section"),
    judge_url: str = opt.judge_url_option(),
    judge_model: str = opt.judge_model_option(),
    judge_path: str = opt.judge_path_option(),
    bootstrap_samples: int = typer.Option(None, "--bootstrap-samples", help="Resamples for the "
                                          "intervals " + default_of(EvaluationConfig,
                                                                    "bootstrap_samples") + "."),
    bertscore_model: str = typer.Option(None, "--bertscore-model", help="BERTScore encoder: a "
                                        "Hugging Face id or folder, named in the metric keys "
                                        "(bertscore_<model>_f1); default: evaluation."
                                        "bertscore_model of the config, else the bundled "
                                        "all-MiniLM-L6-v2 (offline)."),
    seed: int = opt.seed_option("the resampling", EvaluationConfig),
    threads: int = opt.threads_option(),
) -> None:
    """Score predictions: BLEU, chrF, ROUGE, n-gram Jaccard, semantic similarity, BERTScore,
    exact match, token Levenshtein, rule-level parse/field/execution accuracy, tree edit distance
    and the checker's false positives/negatives, diversity of samples and (optionally) an LLM
    judge, each with a bootstrap 95% interval."""
    opt.existing(predictions)
    check_writable(out, "file")
    cfg = override(opt.section(config, "evaluation"), origin="evaluate",
                   bootstrap_samples=bootstrap_samples, bertscore_model=bertscore_model, seed=seed)
    from tunelens.evaluate import evaluate, judge_config

    cfg.judge = judge_config(cfg.judge, judge_url, judge_model, judge_path)
    opt.set_threads(threads)
    result = evaluate(predictions, out, cfg)
    opt.print_table(f"evaluate -> {out} ({result['info']['examples']} examples)",
                    ("metric", "value", f"{round(cfg.confidence * 100)}% CI"),
                    ((name, number(value, 4), _ci(result["intervals"].get(name)))
                     for name, value in result["aggregate"].items()), left=1)
    judge = result["info"].get("judge")
    if judge:
        console.print(f"judge: {judge['backend']}, template {judge['template_version']}, "
                      f"{judge['missing']} missing", highlight=False, soft_wrap=True)


def _ci(ci) -> str:
    return "" if ci is None else f"[{number(ci[0], 4)}, {number(ci[1], 4)}]"
