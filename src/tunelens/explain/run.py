"""The ``explain`` stage: a trained run and a data file in, a parquet of token attributions out.

Each example's clause is placed in the prompt exactly as the model saw it (the predictions' own
``rendered_prompt`` when present, e.g. with retrieved examples, else
:func:`~tunelens.data.templates.render_prompt`); only the clause's tokens are features, the
template around it is context. Offsets are stored relative to the clause, and each feature gets
the category of the clause text it covers (:mod:`tunelens.data.compliance.categories`).

Attribution is the slow stage of a study, so it is resumable: every finished example is appended
to a sidecar file beside the output, tagged with a fingerprint of the model, data and settings; a
rerun with the same fingerprint skips those examples. The parquet (and the HTML heat-map) are
written atomically at the end, and the sidecar is removed.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError
from tunelens.explain.api import attribute
from tunelens.explain.heatmap import write_heatmap
from tunelens.io import atomic_path, read_jsonl
from tunelens.progress import item_bar

COLUMNS = ("example_id", "position", "token", "start", "end", "category", "score", "method",
           "target_logprob")


def explain_run(model: str, data: Path, out: Path, config: ExplanationConfig | None = None,
                progress: bool = True) -> dict:
    """Attribute every example of ``data`` (dataset or predictions JSONL) for ``model``; write ``out``.

    ``model`` is a training run folder (full weights or an unmerged adapter) or any model path.
    The target is the reference (``completion``/``reference``) or, with
    ``config.target == "generation"``, the row's ``prediction``. Returns a summary dict.
    """
    config = config or ExplanationConfig()
    data, out = Path(data), Path(out)
    if out.suffix != ".parquet":
        raise TunelensError(f"{out}: the output must be a .parquet file")
    examples = _examples(data, config)
    sidecar = out.with_name(f".{out.name}.partial.jsonl")
    stamp = _fingerprint(model, data, config)
    done = _resume(sidecar, stamp)

    from tunelens.models.loading import load_for_inference, place_on_device

    llm, tokenizer = load_for_inference(str(model))
    llm = place_on_device(llm)
    todo = [ex for ex in examples if ex["example_id"] not in done]
    start = time.perf_counter()
    passes = perturbations = 0
    with item_bar(progress) as bar, _append(sidecar, stamp, fresh=not done) as log:
        task = bar.add_task(f"explaining ({Path(str(model)).name})", total=len(examples),
                            completed=len(examples) - len(todo))
        for ex in todo:
            record = _explain_one(llm, tokenizer, ex, config)
            passes += record.pop("forward_passes")
            perturbations += record.pop("perturbations")
            log.write(json.dumps(record, ensure_ascii=False) + "\n")
            log.flush()
            done[ex["example_id"]] = record
            bar.advance(task)
    seconds = time.perf_counter() - start

    records = [done[ex["example_id"]] for ex in examples]
    _write_parquet(out, [row for rec in records for row in rec["rows"]])
    heatmap = None
    if config.heatmap:
        heatmap = write_heatmap(out.with_suffix(".html"), records,
                                title=f"attributions: {Path(str(model)).name}", method=config.method,
                                granularity=config.granularity, baseline=config.baseline)
    sidecar.unlink(missing_ok=True)
    return {
        "model": str(model),
        "out": str(out),
        "heatmap": str(heatmap) if heatmap else None,
        "examples": len(records),
        "resumed": len(examples) - len(todo),
        "features": sum(len(rec["rows"]) for rec in records),
        "method": config.method,
        "forward_passes": passes,
        "perturbations": perturbations,
        "seconds": round(seconds, 3),
    }


def _examples(data: Path, config: ExplanationConfig) -> list[dict]:
    rows = read_jsonl(data, required=("prompt",))
    key = "prediction" if config.target == "generation" else None
    out, seen = [], set()
    for line, row in enumerate(rows, start=1):
        clause = row["prompt"]
        if not isinstance(clause, str) or not clause.strip():
            raise TunelensError(f"{data}:{line}: 'prompt' must be a non-empty string")
        field = key or next((k for k in ("completion", "reference") if row.get(k) is not None), None)
        if field is None or row.get(field) is None:
            wanted = "'prediction' (target: generation)" if key else "'completion' or 'reference'"
            raise TunelensError(f"{data}:{line}: no {wanted} field to use as the target")
        target = row[field]
        if not isinstance(target, str) or not target:
            raise TunelensError(f"{data}:{line}: '{field}' must be a non-empty string")
        example_id = str(row.get("id", line))
        if example_id in seen:
            raise TunelensError(f"{data}:{line}: duplicate id {example_id!r}")
        seen.add(example_id)
        out.append({"example_id": example_id, "clause": clause, "target": target,
                    "rendered": row.get("rendered_prompt")})
    return out[:config.max_examples] if config.max_examples else out


def _explain_one(llm, tokenizer, ex: dict, config: ExplanationConfig) -> dict:
    from tunelens.data.compliance.categories import category_at, tag
    from tunelens.data.templates import render_prompt

    clause = ex["clause"]
    rendered = ex["rendered"] if isinstance(ex["rendered"], str) and clause in ex["rendered"] \
        else render_prompt(tokenizer, clause)
    lo = rendered.rfind(clause)
    if lo < 0:
        raise TunelensError(f"example {ex['example_id']}: the prompt template does not contain the clause")
    hi = lo + len(clause)
    tags = tag(clause)
    spans = [[(s.start + lo, s.end + lo) for s in tags]] if config.granularity == "span" else None
    if spans is not None and not spans[0]:
        raise TunelensError(f"example {ex['example_id']}: granularity 'span' but the clause has no "
                            "tagged spans")
    result = attribute(
        llm, tokenizer, [rendered], [ex["target"]], method=config.method,
        granularity=config.granularity, baseline=config.baseline, spans=spans, feature_window=(lo, hi),
        n_samples=config.n_samples, seed=[config.seed, _stable_int(ex["example_id"])],
        batch_size=config.batch_size, per_target=False, baseline_trials=config.baseline_trials,
        memory_budget_mb=config.memory_budget_mb, reuse_prefix=config.reuse_prefix,
    )[0]
    rows = []
    for j, ((s, e), token, score) in enumerate(zip(result.spans, result.tokens, result.scores, strict=True)):
        start, end = max(s - lo, 0), min(e - lo, len(clause))
        rows.append({"example_id": ex["example_id"], "position": j, "token": token, "start": start,
                     "end": end, "category": category_at(tags, start, end), "score": float(score),
                     "method": result.method, "target_logprob": result.target_logprob})
    return {"example_id": ex["example_id"], "clause": clause, "target": ex["target"],
            "target_logprob": result.target_logprob, "rows": rows,
            "forward_passes": result.forward_passes, "perturbations": result.perturbations}


def _write_parquet(out: Path, rows: list[dict]) -> None:
    import pandas as pd

    frame = pd.DataFrame(rows, columns=list(COLUMNS)).astype(
        {"example_id": "string", "position": "int32", "token": "string", "start": "int32",
         "end": "int32", "category": "string", "score": "float64", "method": "string",
         "target_logprob": "float64"}
    )
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)


def _fingerprint(model: str, data: Path, config: ExplanationConfig) -> str:
    h = hashlib.sha256()
    h.update(str(Path(str(model)).resolve() if Path(str(model)).exists() else model).encode())
    for name in ("run.json", "adapter_model.safetensors", "model.safetensors"):
        f = Path(str(model)) / name
        if f.exists():
            h.update(f"{name}:{f.stat().st_size}:{f.stat().st_mtime_ns}".encode())
    h.update(data.read_bytes())
    h.update(config.model_dump_json().encode())
    return h.hexdigest()[:16]


def _stable_int(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


def _resume(sidecar: Path, stamp: str) -> dict[str, dict]:
    """Finished examples from an interrupted run with the same fingerprint (else none)."""
    if not sidecar.exists():
        return {}
    lines = sidecar.read_text(encoding="utf-8").splitlines()
    try:
        header = json.loads(lines[0]) if lines else {}
    except json.JSONDecodeError:
        header = {}
    if header.get("fingerprint") != stamp:
        return {}
    done = {}
    for line in lines[1:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by the interruption
            break
        done[record["example_id"]] = record
    return done


class _append:
    """The sidecar opened for appending (started afresh, with its header, when ``fresh``)."""

    def __init__(self, path: Path, stamp: str, fresh: bool):
        self.path, self.stamp, self.fresh = path, stamp, fresh

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.fresh:
            self.path.write_text(json.dumps({"fingerprint": self.stamp}) + "\n", encoding="utf-8")
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

