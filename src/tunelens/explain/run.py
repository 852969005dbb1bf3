"""The ``explain`` stage: a trained run and a data file in, a parquet of token attributions out.

Each example's clause is placed in the prompt exactly as the model saw it (the predictions' own
``rendered_prompt`` when present, e.g. with retrieved examples, else
:func:`~tunelens.models.run_settings.render` in the run's recorded prompt format, the text
training and generation used); only the clause's tokens are features, the template around it
(chat scaffolding included) is context. Offsets are stored relative to the clause, and each feature gets
the category of the clause text it covers (:mod:`tunelens.data.compliance.categories`).

A prompt longer than the model's context loses template context from its left, never clause
tokens (:mod:`tunelens.models.context`); a clause that does not fit is an error naming the
example. ``truncated_chars`` in the sidecar records and ``truncated_examples`` in the summary
count what was cut, with one warning per run.

What is attributed (``config.target``): the reference rule, the model's own generation, or both
— a run that writes wrong rules is explained on what it wrote as well as on what it should have.
Both go into the one parquet, told apart by its ``target`` column (``reference`` or
``generation``); a row whose generation is empty has no generation target and is counted in the
summary (``generation_skipped``). Which rows are explained is a seeded sample stratified by topic
and source (:mod:`tunelens.data.sample`), the same for every run of a study.

Attribution is the slow stage of a study, so it is resumable: every finished example is appended
to a sidecar file beside the output, tagged with a fingerprint of the *content* of the model's
folders, the data and the settings (:func:`tunelens.fingerprint.fingerprint`); a rerun with the
same fingerprint skips those examples. The parquet (and the HTML heat-map) are
written atomically at the end, and the sidecar is removed.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from dataclasses import replace
from pathlib import Path

from tunelens.config import ExplanationConfig
from tunelens.contracts import ClauseRow, check_unique_ids, read_rows
from tunelens.data.sample import stratified_sample
from tunelens.errors import TunelensError
from tunelens.explain.api import attribute
from tunelens.explain.features import Baseline, resolve_baseline
from tunelens.explain.heatmap import write_heatmap
from tunelens.fingerprint import fingerprint
from tunelens.io import JSONProblem, atomic_path, dumps, loads
from tunelens.models.context import ContextWarning, context_length, min_tokens, warn_truncated
from tunelens.models.loading import model_sources
from tunelens.models.run_settings import ModelSettings
from tunelens.progress import item_bar

COLUMNS = ("example_id", "position", "token", "start", "end", "category", "score", "method",
           "target_logprob", "target", "baseline")
# the targets each setting of ``ExplanationConfig.target`` attributes, in the order written
TARGETS = {"reference": ("reference",), "generation": ("generation",),
           "both": ("reference", "generation")}


def explain_run(model: str, data: Path, out: Path, config: ExplanationConfig | None = None,
                progress: bool = True, *, dtype: str | None = None,
                trust_remote_code: bool | None = None, prompt_format: str | None = None) -> dict:
    """Attribute every example of ``data`` (dataset or predictions JSONL) for ``model``; write ``out``.

    ``model`` is a training run folder (full weights or an unmerged adapter) or any model path;
    ``dtype``, ``trust_remote_code`` and ``prompt_format``, when given, override what the run's
    ``run.json`` records (:class:`~tunelens.models.run_settings.ModelSettings`).
    The target is the reference (``completion``/``reference``), the row's ``prediction``
    (``config.target == "generation"``) or each of them (``"both"``). Returns a summary dict.
    """
    config = config or ExplanationConfig()
    data, out = Path(data), Path(out)
    if out.suffix != ".parquet":
        raise TunelensError(f"{out}: the output must be a .parquet file")
    examples, skipped = read_examples(data, config)
    sidecar = out.with_name(f".{out.name}.partial.jsonl")
    settings = ModelSettings.of(str(model), dtype, trust_remote_code, prompt_format)
    stamp = _fingerprint(model, data, config, settings)
    done = _resume(sidecar, stamp)
    llm, tokenizer, fmt, baseline = load_for_explain(str(model), settings, config)
    todo = [ex for ex in examples if _key(ex) not in done]
    start = time.perf_counter()
    with item_bar(progress) as bar, _append(sidecar, stamp, fresh=not done) as log, \
            warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextWarning)  # counted once for the run, below
        task = bar.add_task(f"explaining ({Path(str(model)).name})", total=len(examples),
                            completed=len(examples) - len(todo))
        for ex in todo:
            record = explain_example(llm, tokenizer,
                                     {**ex, "settings": replace(settings, prompt_format=fmt)}, config)
            log.write(dumps(record) + "\n")
            log.flush()
            done[_key(ex)] = record
            bar.advance(task)
    seconds = time.perf_counter() - start

    records = [done[_key(ex)] for ex in examples]
    heatmap = _write_outputs(out, records, model, config, baseline)
    sidecar.unlink(missing_ok=True)
    examples_seen = {rec["example_id"] for rec in records}  # both targets share one prompt
    truncated = len({rec["example_id"] for rec in records if rec.get("truncated_chars", 0) > 0})
    warn_truncated(truncated, len(examples_seen), "examples")
    new = [done[_key(ex)] for ex in todo]
    return {
        "model": str(model),
        "out": str(out),
        "heatmap": str(heatmap) if heatmap else None,
        "examples": len(examples_seen),
        "attributions": len(records),
        "targets": list(TARGETS[config.target]),
        "generation_skipped": skipped,
        "resumed": len(examples) - len(todo),
        "features": sum(len(rec["rows"]) for rec in records),
        "method": config.method,
        "baseline": baseline.name, "baseline_token": baseline.text, "prompt_format": fmt,
        "forward_passes": sum(rec["forward_passes"] for rec in new),
        "perturbations": sum(rec["perturbations"] for rec in new),
        "truncated_examples": truncated,
        "seconds": round(seconds, 3),
    }


def load_for_explain(model: str, settings: ModelSettings, config: ExplanationConfig,
                     loaded: tuple | None = None) -> tuple:
    """(model on its device, tokenizer, prompt format, baseline) as this run will use them;
    ``loaded``: the (model, tokenizer) :func:`~tunelens.models.loading.load_placed` gave already."""
    from tunelens.models.loading import load_placed
    from tunelens.models.run_settings import resolve_prompt_format

    llm, tokenizer = loaded or load_placed(model, settings)
    fmt = resolve_prompt_format(tokenizer, settings.prompt_format)
    return llm, tokenizer, fmt, resolve_baseline(tokenizer, config.baseline)


def read_examples(data: Path, config: ExplanationConfig) -> tuple[list[dict], int]:
    """The examples to explain, one per sampled row and target, checked, ids unique; and how many
    generation targets were left out because the row's generation is empty (or, with ``both``,
    absent: a dataset file has references only).

    Rows are read through :func:`tunelens.contracts.read_rows` (a prompt that is not text is an
    error naming ``file:line``, never read as text); the target fields are checked here, as only
    this stage knows which ones it needs. The sample is drawn from every row, before the targets
    are looked at, so each target of a study explains the same examples.
    """
    items, ids = [], []
    for n, row in enumerate(read_rows(data, ClauseRow), start=1):
        example_id = str(n) if row.id is None else row.id
        ids.append((example_id, row.where))
        items.append({"example_id": example_id, "clause": row.prompt, "topic": row.topic,
                      "source": row.source, "rendered": getattr(row, "rendered_prompt", None),
                      "targets": _targets(row, config.target)})
    check_unique_ids(ids)
    out, skipped = [], 0
    for item in stratified_sample(items, config.max_examples, config.sample_seed):
        for kind, text in item["targets"]:
            if not text:
                skipped += 1
                continue
            out.append({"example_id": item["example_id"], "clause": item["clause"], "kind": kind,
                        "target": text, "rendered": item["rendered"]})
    return out, skipped


def _targets(row: ClauseRow, target: str) -> list[tuple[str, str | None]]:
    """(kind, text) of each target ``row`` is explained on; an empty text is skipped later."""
    out = []
    for kind in TARGETS[target]:
        if kind == "reference":
            field = next((k for k in ("completion", "reference") if getattr(row, k, None) is not None),
                         None)
            if field is None:
                raise TunelensError(f"{row.where}: no 'completion' or 'reference' field to use as "
                                    "the target")
            text = getattr(row, field)
            if not isinstance(text, str) or not text:
                raise TunelensError(f"{row.where}: '{field}' must be a non-empty string")
        else:
            text = getattr(row, "prediction", None)
            if text is None and target == "generation":
                raise TunelensError(f"{row.where}: no 'prediction' field (target: generation) to "
                                    "use as the target")
            if text is not None and not isinstance(text, str):
                raise TunelensError(f"{row.where}: 'prediction' must be a string")
        out.append((kind, text))
    return out


def _key(example: dict) -> tuple[str, str]:
    """An attribution's identity within a run: the same example explained on two targets is two."""
    return (example.get("kind", "reference"), example["example_id"])


def explain_example(llm, tokenizer, ex: dict, config: ExplanationConfig) -> dict:
    """One example's record: its attribution rows (clause-relative, with categories) and costs.

    The one place an example is attributed: :func:`explain_run` calls it per row and
    ``tunelens serve``'s ``/v1/explain`` per request, so both give the same scores for the same
    input. ``ex`` holds ``example_id`` (with ``config.seed``, it seeds sampling methods),
    ``clause``, ``kind`` (``reference`` or ``generation``), ``target``, ``rendered`` (the prompt
    the model saw, or None to render it from ``settings``, a
    :class:`~tunelens.models.run_settings.ModelSettings` with its prompt format resolved).
    """
    from tunelens.data.compliance.categories import category_at, tag

    clause = ex["clause"]
    rendered, lo = placed_prompt(tokenizer, ex)
    _check_fits(llm, tokenizer, ex)
    tags = tag(clause)
    spans = [[(s.start + lo, s.end + lo) for s in tags]] if config.granularity == "span" else None
    if spans is not None and not spans[0]:
        raise TunelensError(f"example {ex['example_id']}: granularity 'span' but the clause has no "
                            "tagged spans")
    try:
        result = attribute(
            llm, tokenizer, [rendered], [ex["target"]], method=config.method,
            granularity=config.granularity, baseline=config.baseline, spans=spans,
            feature_window=(lo, lo + len(clause)), n_samples=config.n_samples,
            seed=[config.seed, stable_seed(ex["example_id"])], batch_size=config.batch_size,
            per_target=False, baseline_trials=config.baseline_trials,
            memory_budget_mb=config.memory_budget_mb, reuse_prefix=config.reuse_prefix,
        )[0]
    except TunelensError as exc:
        raise TunelensError(f"example {ex['example_id']}: {exc}") from None
    rows = []
    for j, ((s, e), token, score) in enumerate(zip(result.spans, result.tokens, result.scores, strict=True)):
        start, end = max(s - lo, 0), min(e - lo, len(clause))
        rows.append({"example_id": ex["example_id"], "position": j, "token": token, "start": start,
                     "end": end, "category": category_at(tags, start, end), "score": float(score),
                     "method": result.method, "target_logprob": result.target_logprob,
                     "target": ex["kind"], "baseline": result.baseline})
    record = {"example_id": ex["example_id"], "kind": ex["kind"], "clause": clause,
              "target": ex["target"],
              "target_logprob": result.target_logprob, "rows": rows,
              "forward_passes": result.forward_passes, "perturbations": result.perturbations}
    if result.truncated_chars:
        record["truncated_chars"] = result.truncated_chars
    return record


def placed_prompt(tokenizer, ex: dict) -> tuple[str, int]:
    """The prompt the model saw (the predictions' own, else the run's prompt: format,
    instruction, few-shot examples) and where the clause starts."""
    from tunelens.models.run_settings import ModelSettings

    clause, rendered = ex["clause"], ex["rendered"]
    if not (isinstance(rendered, str) and clause in rendered):
        rendered = ex.get("settings", ModelSettings()).render(tokenizer, clause)
    lo = rendered.rfind(clause)
    if lo < 0:
        raise TunelensError(f"example {ex['example_id']}: the prompt template does not contain the clause")
    return rendered, lo


def _check_fits(llm, tokenizer, ex: dict) -> None:
    """Refuse at once a clause that cannot fit the context whatever is cut (before tokenizing it:
    a multi-megabyte clause would take seconds to tokenize only to be refused)."""
    limit = context_length(llm)
    if limit is not None and min_tokens(tokenizer, ex["clause"]) > limit:
        raise TunelensError(f"example {ex['example_id']}: the clause ({len(ex['clause'])} characters) "
                            f"cannot fit the model's context ({limit} tokens)")


def _write_outputs(out: Path, records: list[dict], model: str, config: ExplanationConfig,
                   baseline: Baseline) -> Path | None:
    """The parquet and, when asked, the heat-map beside it; the heat-map's path."""
    _write_parquet(out, [row for rec in records for row in rec["rows"]])
    return write_run_heatmap(out, records, model, config, baseline) if config.heatmap else None


def write_run_heatmap(out: Path, records: list[dict], model: str, config: ExplanationConfig,
                      baseline: Baseline) -> Path:
    """The heat-map beside the parquet ``out``: a panel per record (example and target kind)."""
    if len(TARGETS[config.target]) > 1:  # say which target each heat-map explains
        records = [{**rec, "example_id": f"{rec['example_id']} · {rec['kind']}"} for rec in records]
    return write_heatmap(out.with_suffix(".html"), records, title=f"attributions: {Path(str(model)).name}",
                         method=config.method, granularity=config.granularity,
                         baseline=baseline.describe())


def _write_parquet(out: Path, rows: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(
        {"example_id": "string", "position": "int32", "token": "string", "start": "int32",
         "end": "int32", "category": "string", "score": "float64", "method": "string",
         "target_logprob": "float64", "target": "string", "baseline": "string"}
    )
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)


def _fingerprint(model: str, data: Path, config: ExplanationConfig, settings: ModelSettings) -> str:
    """The content of what this run reads (the model's folders, the data) and its settings: a
    ``touch`` or a copied folder keeps finished examples, an edited row or weight does not."""
    sources = model_sources(str(model))
    return fingerprint(config.model_dump(mode="json"), vars(settings),
                       None if sources else str(model), files=[*sources, data])


def stable_seed(text: str) -> int:
    """A seed from an example id that is the same in every process (``hash`` is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _resume(sidecar: Path, stamp: str) -> dict[str, dict]:
    """Finished examples from an interrupted run with the same fingerprint (else none)."""
    if not sidecar.exists():
        return {}
    lines = sidecar.read_text(encoding="utf-8").split("\n")  # not splitlines: U+2028 may be in a token
    try:
        header = loads(lines[0]) if lines[0] else {}
    except JSONProblem:
        header = {}
    if header.get("fingerprint") != stamp:
        return {}
    done = {}
    for line in filter(None, lines[1:]):
        try:
            record = loads(line)
        except JSONProblem:  # a line cut short by the interruption
            break
        done[_key(record)] = record
    return done


class _append:
    """The sidecar opened for appending (started afresh, with its header, when ``fresh``)."""

    def __init__(self, path: Path, stamp: str, fresh: bool):
        self.path, self.stamp, self.fresh = path, stamp, fresh

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fresh:
            self.path.write_text(dumps({"fingerprint": self.stamp}) + "\n", encoding="utf-8")
        else:
            self._drop_torn_tail()
        self.fh = self.path.open("a", encoding="utf-8")
        return self.fh

    def __exit__(self, *exc):
        self.fh.close()
        return False

    def _drop_torn_tail(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):
            self.path.write_text(text[: text.rfind("\n") + 1], encoding="utf-8")

