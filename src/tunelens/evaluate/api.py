"""``evaluate``: a predictions file in, ``metrics.json`` out (aggregates, intervals, per example).

The file holds ``aggregate`` (metric -> number, or null where the metric does not apply),
``intervals`` (metric -> [low, high] bootstrap percentile interval), ``per_example`` (one row per
prediction, keyed by ``id``) and ``info`` (counts, settings, judge template version). Every input
problem is found before any work is done, and the output is written in one atomic step at the end.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydantic import ValidationError

from tunelens.config import EvaluationConfig, JudgeConfig, format_validation_error
from tunelens.contracts import PredictionRow, read_rows
from tunelens.errors import TunelensError
from tunelens.evaluate import judge as judging
from tunelens.evaluate import specs, structure
from tunelens.evaluate.bertscore import bertscore
from tunelens.evaluate.bertscore import describe as bertscore_settings
from tunelens.evaluate.bootstrap import Resampler
from tunelens.evaluate.diversity import diversity_metrics
from tunelens.evaluate.metrics import corpus_stats, text_metrics
from tunelens.evaluate.rules import field_breakdown, score_rule
from tunelens.io import json_safe, write_json
from tunelens.progress import item_bar


def load_predictions(path: str | Path, need_prompt: bool = False) -> list[dict]:
    """Read and check a predictions JSONL (:class:`tunelens.contracts.PredictionRow`, ids unique,
    a reference on every row, a prompt too for the judge); any problem is one ``file:line`` error."""
    require = ("reference", "prompt") if need_prompt else ("reference",)
    rows = read_rows(path, PredictionRow, require=require, unique_ids=True)
    return [row.model_dump() for row in rows]


def judge_config(base: JudgeConfig, url: str | None = None, model: str | None = None,
                 path: str | None = None) -> JudgeConfig:
    """``base`` with command-line judge settings laid over it (a URL replaces a path and back)."""
    fields = base.model_dump()
    if url is not None or path is not None:
        fields.update(url=url, path=path, model=model)
    elif model is not None:
        fields["model"] = model
    try:
        return JudgeConfig.model_validate(fields)
    except ValidationError as exc:
        raise TunelensError(f"judge settings: {format_validation_error(exc)}") from None


def evaluate(predictions: Path, out: Path, config: EvaluationConfig | None = None,
             *, progress: bool = True) -> dict:
    """Score a predictions file and write ``out`` (metrics JSON); returns what was written."""
    config = config or EvaluationConfig()
    predictions, out = Path(predictions), Path(out)
    if out.is_dir():
        raise TunelensError(f"{out}: is a folder, expected a file path for the metrics")
    use_judge = judging.enabled(config.judge)
    rows = load_predictions(predictions, need_prompt=use_judge)
    bertscore_settings(config.bertscore_model)  # a bad BERTScore model fails before paid judge calls
    judgements, judge_info = (_judge(rows, config.judge, progress) if use_judge else (None, None))
    result = score(rows, config, judgements)
    result["info"]["predictions"] = str(predictions)
    if judge_info is not None:
        result["info"]["judge"] = judge_info
    write_json(out, result)
    return result


def _judge(rows: list[dict], config: JudgeConfig, progress: bool):
    with item_bar(progress, transient=True) as bar:
        task = bar.add_task("judging", total=len(rows))
        return judging.judge_rows(rows, config, advance=lambda: bar.advance(task))


def score(rows: list[dict], config: EvaluationConfig,
          judgements: list[judging.Judgement] | None = None) -> dict:
    """Every metric of already-checked rows: the ``metrics.json`` object (without writing it)."""
    preds = [r["prediction"] for r in rows]
    refs = [r["reference"] for r in rows]
    resampler = Resampler(len(rows), config.bootstrap_samples, config.seed, config.confidence)
    stats = corpus_stats(preds, refs)
    rule_scores = [score_rule(p, r) for p, r in zip(preds, refs, strict=True)]
    values = _per_example_values(preds, refs, config, stats, rule_scores, judgements)
    aggregate, intervals = _aggregate(values, stats, resampler)
    methods = {"default": "percentile bootstrap"}
    samples = [r.get("samples") or [] for r in rows]
    if any(samples):
        div_aggregate, div_intervals, values["self_bleu"] = diversity_metrics(samples, resampler)
        aggregate.update(div_aggregate)
        intervals.update(div_intervals)
        methods.update({k: "jackknife normal" for k in div_aggregate if k.startswith("distinct_")})
    info = {
        "examples": len(rows),
        "rule_scored_examples": sum(s is not None for s in rule_scores),
        "rule_field_accuracy_by_field": field_breakdown(rule_scores),
        "bertscore": bertscore_settings(config.bertscore_model),
        "bootstrap_samples": config.bootstrap_samples,
        "confidence": config.confidence,
        "interval_methods": methods,
        "seed": config.seed,
    }
    order = specs.ordered(aggregate)
    return json_safe({  # plain numbers, non-finite as None: what metrics.json will say
        "aggregate": {k: aggregate[k] for k in order},
        "intervals": {k: None if intervals.get(k) is None else list(intervals[k]) for k in order},
        "per_example": _per_example_rows(rows, values, rule_scores, judgements),
        "info": info,
    })


def _per_example_values(preds, refs, config: EvaluationConfig, stats, rule_scores,
                        judgements) -> dict[str, list]:
    """metric -> one value per example (None where the metric does not apply)."""
    pairs = list(zip(preds, refs, strict=True))
    values: dict[str, list] = {
        k: list(v) for k, v in text_metrics(preds, refs, config.embedding_model, stats).items()
    }
    values["token_levenshtein"] = [structure.token_levenshtein(p, r) for p, r in pairs]
    values.update({k: list(v) for k, v in bertscore(preds, refs, config.bertscore_model).items()})
    values["rule_parse_rate"] = [None if s is None else float(s.parsed) for s in rule_scores]
    values["rule_field_accuracy"] = [None if s is None else s.field_accuracy for s in rule_scores]
    values["rule_exec_accuracy"] = [None if s is None else s.exec_accuracy for s in rule_scores]
    values["rule_exec_agreement"] = [None if s is None else s.exec_agreement for s in rule_scores]
    values["rule_false_positive_rate"] = [None if s is None else s.false_positive_rate
                                          for s in rule_scores]
    values["rule_false_negative_rate"] = [None if s is None else s.false_negative_rate
                                          for s in rule_scores]
    values["rule_tree_edit_distance"] = [structure.rule_tree_edit_distance(p, r) for p, r in pairs]
    if judgements is not None:
        values["judge_accuracy"] = [j.verdict and j.verdict.accuracy for j in judgements]
        values["judge_relevance"] = [j.verdict and j.verdict.relevance for j in judgements]
    return values


def _aggregate(values: dict[str, list], stats: dict, resampler: Resampler) -> tuple[dict, dict]:
    """Means with bootstrap intervals; BLEU and chrF from summed corpus statistics instead."""
    aggregate: dict[str, float | None] = {}
    intervals: dict[str, tuple[float, float] | None] = {}
    for name, column in values.items():
        if name in stats:
            continue
        present = [v for v in column if v is not None]
        aggregate[name] = float(np.mean(present)) if present else None
        intervals[name] = resampler.mean(column) if present else None
    for name, corpus in stats.items():
        aggregate[name] = corpus.corpus_score()
        intervals[name] = resampler.corpus(corpus.stats, corpus.score)
    return aggregate, intervals


def _per_example_rows(rows: list[dict], values: dict[str, list], rule_scores,
                      judgements) -> list[dict]:
    per_example = [{"id": r["id"]} for r in rows]
    for name, column in values.items():
        for row, value in zip(per_example, column, strict=True):
            row[name] = value
    for row, rule in zip(per_example, rule_scores, strict=True):
        row["rule_fields"] = None if rule is None else rule.fields
    if judgements is not None:
        for row, j in zip(per_example, judgements, strict=True):
            row["judge_rationale"] = j.verdict.rationale if j.verdict else None
            row["judge_attempts"] = j.attempts
    return per_example
