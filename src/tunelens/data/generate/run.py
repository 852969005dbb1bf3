"""``tunelens data generate``: seeds -> prompts -> generator -> filters -> rows, resumably.

Work is a deterministic sequence of jobs (round x seed x template x sampling setting), each with
an id hashed from what it is, so the same command always asks for the same things in the same
order. Batches of jobs are generated, filtered and *appended* to ``FILE.jsonl`` (kept rows) and
``FILE.rejects.jsonl`` (with the filter and reason), flushed to disk, and then the data card
``FILE.card.json`` is rewritten atomically: the checkpoint. A rerun with the same settings reads
the ids already in both files and continues after them; a torn last line (a crash mid-write) is
cut off first, so no id is ever written twice. A rerun with other settings is refused rather than
mixing two datasets in one file; a larger ``--n`` continues the same one.

The card's counts are recounted from the two files at every checkpoint, so they always add up:
attempted = kept + the sum of rejects per filter.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelens.config import DataConfig, JudgeConfig
from tunelens.data.generate import filters, judging
from tunelens.data.generate.backends import Request, make_generator
from tunelens.data.generate.seeds import read_seeds
from tunelens.data.generate.templates import PromptTemplate, load_template
from tunelens.errors import TunelensError
from tunelens.fingerprint import fingerprint
from tunelens.io import dumps, iter_jsonl, loads, write_json
from tunelens.progress import item_bar

SOURCE = "llm"


@dataclass(frozen=True)
class GenerateSettings:
    """What ``data generate`` does; every field but the last group is part of the fingerprint."""

    n: int
    templates: tuple[str, ...] = ("rule_for_clause",)
    temperatures: tuple[float, ...] = (0.7, 1.0)
    top_ps: tuple[float, ...] = (0.95,)
    max_tokens: int = 64
    compliance: bool | None = None  # None: when a template writes rules or the seeds' rules are
    near_duplicate_threshold: float = DataConfig().near_duplicate_threshold
    shingle_size: int = DataConfig().shingle_size
    seed: int = 0
    # the judge filter (tunelens.data.generate.judging): off unless min_judge_score is given
    min_judge_score: float | None = None
    judge_model: str | None = None  # with judge_url: the model name the server knows
    judge_path: str | None = None  # or a local model reference
    judge_url: str | None = None  # where the judge is served (not fingerprinted)
    # not fingerprinted: they change how fast, not what
    batch_size: int = 8
    max_attempts: int | None = None  # default: 4 x n
    embeddings: bool = True
    concurrency: int = 4
    timeout: float = 60.0
    retries: int = 2
    api_key_env: str | None = None

    def fingerprinted(self) -> dict:
        skip = {"n", "batch_size", "max_attempts", "embeddings", "concurrency", "timeout",
                "retries", "api_key_env", "judge_url"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


@dataclass
class Outputs:
    out: Path
    rejects: Path = field(init=False)
    card: Path = field(init=False)

    def __post_init__(self) -> None:
        stem = self.out.name.removesuffix(".jsonl")
        self.rejects = self.out.with_name(f"{stem}.rejects.jsonl")
        self.card = self.out.with_name(f"{stem}.card.json")


def _job_id(seed_id: str, template: PromptTemplate, temperature: float, top_p: float,
            round_: int) -> str:
    key = f"{seed_id}\x1f{template.id}\x1f{template.version}\x1f{temperature}\x1f{top_p}\x1f{round_}"
    return "g" + hashlib.sha1(key.encode()).hexdigest()[:12]


def _jobs(seeds: list[dict], templates: list[PromptTemplate], settings: GenerateSettings):
    """Every job in order, forever (the caller stops): (id, seed, template, temperature, top_p)."""
    for round_ in itertools.count():
        for seed in seeds:
            for template in templates:
                if not template.applies_to(seed):
                    continue
                for temperature in settings.temperatures:
                    for top_p in settings.top_ps:
                        yield (_job_id(seed["id"], template, temperature, top_p, round_), seed,
                               template, temperature, top_p)


def _repair(path: Path) -> None:
    """Cut a torn last line (a crash mid-append) so the file is whole JSONL again."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with path.open("r+b") as fh:
            fh.truncate(data.rfind(b"\n") + 1)


def _resume(outputs: Outputs, key: str) -> tuple[list[dict], list[dict], list[dict]]:
    """(kept rows, rejects, per-batch diversity) already written with these settings."""
    if not outputs.out.exists():
        for stale in (outputs.rejects, outputs.card):
            stale.unlink(missing_ok=True)
        return [], [], []
    card = _read_card(outputs.card)
    if card.get("fingerprint") != key:
        raise TunelensError(f"{outputs.out} was generated with other settings (or is not ours); "
                            "give another --out, or delete it to start again")
    for path in (outputs.out, outputs.rejects):
        _repair(path)
    kept = [row for _, row in iter_jsonl(outputs.out)]
    rejects = [row for _, row in iter_jsonl(outputs.rejects)] if outputs.rejects.exists() else []
    return kept, rejects, list(card.get("batches", []))


def _read_card(path: Path) -> dict:
    from tunelens.io import read_json

    if not path.exists():
        return {}
    card = read_json(path)
    return card if isinstance(card, dict) else {}


def _append(path: Path, rows: list[dict]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(dumps(row) + "\n" for row in rows))
        fh.flush()
        os.fsync(fh.fileno())


def _settings_compliance(settings: GenerateSettings, templates: list[PromptTemplate],
                         seeds: list[dict]) -> bool:
    if settings.compliance is not None:
        return settings.compliance
    rules = [s["rule"] for s in seeds if s["rule"]]
    writes_rules = any(t.output in ("completion", "both") for t in templates)
    return writes_rules or (bool(rules) and sum(r.startswith("RULE") for r in rules) * 2 >= len(rules))


def generate_data(input: Path, out: Path, generator: str, settings: GenerateSettings,
                  url: str | None = None, progress: bool = True) -> dict:
    """Generate until ``settings.n`` rows are kept (or the attempts run out); return the card."""
    input, outputs = Path(input), Outputs(Path(out))
    judge_config = _judge_config(settings)  # a judge threshold without a judge fails here
    seeds = read_seeds(input)
    templates = [load_template(t) for t in settings.templates]
    compliance = _settings_compliance(settings, templates, seeds)
    if not any(t.applies_to(s) for t in templates for s in seeds):
        needs = "; ".join(f"{t.id} needs {' and '.join(t.needs)}" for t in templates)
        raise TunelensError(f"{input}: no seed has what the templates need ({needs})")
    identity = {"generator": generator, "url": url}
    # the model, not where it is served: a server restarted on another port resumes the same run
    key = fingerprint(settings.fingerprinted(), generator, url is not None, compliance, filters.FILTERS,
                      [t.identity() for t in templates], *([judging.TEMPLATE] if judge_config else []),
                      files=(input,))
    kept, rejects, batches = _resume(outputs, key)
    context = {"input": str(input), "fingerprint": key, "generator": identity,
               "templates": [t.identity() for t in templates], "compliance": compliance,
               "seeds": len(seeds), "settings": asdict(settings),
               "filters": [*filters.FILTERS, *([judging.FILTER] if judge_config else [])]}
    max_attempts = settings.max_attempts or 4 * settings.n
    if len(kept) >= settings.n or len(kept) + len(rejects) >= max_attempts:
        return _checkpoint(outputs, context, kept, rejects, batches)
    backend = make_generator(generator, url, api_key_env=settings.api_key_env,
                             max_tokens=settings.max_tokens, timeout=settings.timeout,
                             retries=settings.retries, concurrency=settings.concurrency,
                             batch_size=settings.batch_size)
    judge = judging.PairJudge(judge_config, settings.min_judge_score) if judge_config else None
    done = {row["id"] for row in (*kept, *rejects)}
    jobs = (job for job in _jobs(seeds, templates, settings) if job[0] not in done)
    fresh = not outputs.out.exists()
    if fresh:  # the card first: an out file without its card would be refused on a rerun
        outputs.out.parent.mkdir(parents=True, exist_ok=True)
        _checkpoint(outputs, context, kept, rejects, batches)
    try:
        with item_bar(progress) as bar:
            task = bar.add_task("generating", total=settings.n, completed=len(kept))
            while len(kept) < settings.n and len(kept) + len(rejects) < max_attempts:
                room = min(settings.batch_size, max_attempts - len(kept) - len(rejects))
                batch = list(itertools.islice(jobs, room))
                new_kept, new_rejects, diversity = _run_batch(
                    backend, batch, kept, settings, compliance, len(batches), judge)
                _append(outputs.rejects, new_rejects)
                _append(outputs.out, new_kept)
                kept += new_kept
                rejects += new_rejects
                batches.append(diversity)
                _checkpoint(outputs, context, kept, rejects, batches)
                bar.update(task, completed=min(len(kept), settings.n))
    except BaseException:
        if fresh and not batches:  # failed before the first checkpoint: leave nothing behind
            for path in (outputs.out, outputs.rejects, outputs.card):
                path.unlink(missing_ok=True)
        raise
    finally:
        backend.close()
        if judge is not None:
            judge.close()
    return _checkpoint(outputs, context, kept, rejects, batches)


def _judge_config(settings: GenerateSettings) -> JudgeConfig | None:
    """The judge of the judge filter, or None when no threshold is set; one line when the
    threshold has no judge to ask, or a judge is named without a threshold."""
    named = settings.judge_model or settings.judge_path or settings.judge_url
    if settings.min_judge_score is None:
        if named:
            raise TunelensError("a judge is given but no --min-judge-score to filter with")
        return None
    if not 1 <= settings.min_judge_score <= 5:
        raise TunelensError(f"--min-judge-score must be between 1 and 5, got {settings.min_judge_score:g}")
    if not named:
        raise TunelensError("--min-judge-score needs a judge: --judge-url with --judge-model, or "
                            "--judge-path")
    from tunelens.evaluate.api import judge_config  # the evaluate verb's: same checks, same words

    return judge_config(JudgeConfig(template_version=judging.TEMPLATE, timeout_seconds=settings.timeout),
                        settings.judge_url, settings.judge_model, settings.judge_path)


def _run_batch(backend, batch: list[tuple], kept: list[dict], settings: GenerateSettings,
               compliance: bool, number: int, judge=None) -> tuple[list[dict], list[dict], dict]:
    """Generate one batch, filter it; (kept rows, rejects, the batch's diversity entry)."""
    requests = [Request(template.render(seed), temperature, top_p,
                        int(job_id[1:9], 16) ^ settings.seed)
                for job_id, seed, template, temperature, top_p in batch]
    replies = backend.complete(requests)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    candidates, new_rejects = [], []
    for (job_id, seed, template, temperature, top_p), reply in zip(batch, replies, strict=True):
        provenance = {"generator": backend.identity(), "template": template.identity(),
                      "sampling": {"temperature": temperature, "top_p": top_p,
                                   "max_tokens": settings.max_tokens},
                      "seed_id": seed["id"], "time": stamp, "batch": number}
        row, problem = _classify(job_id, seed, template, reply, compliance, settings)
        if problem:
            new_rejects.append({"id": job_id, "filter": problem[0], "reason": problem[1],
                                "reply": reply, "provenance": provenance})
        else:
            candidates.append((row | {"provenance": provenance}, seed, template))
    repeats = filters.near_duplicates(kept, [c[0] for c in candidates],
                                      settings.near_duplicate_threshold, settings.shingle_size,
                                      settings.seed)
    new_kept, kept_at = [], []
    for i, (row, seed, template) in enumerate(candidates):
        if i in repeats:
            new_rejects.append({"id": row["id"], "filter": "near_duplicate",
                                "reason": f"near-duplicate of {repeats[i]}",
                                "reply": row["completion"], "provenance": row["provenance"]})
            continue
        grades, problem = judge.grade(row) if judge is not None else (None, None)
        if grades is not None:
            row["provenance"]["judge"] = grades
        if problem:
            new_rejects.append({"id": row["id"], "filter": judging.FILTER, "reason": problem,
                                "reply": row["completion"], "provenance": row["provenance"]})
        else:
            new_kept.append(row)
            kept_at.append((row, seed, template))
    diversity = {"batch": number, "attempted": len(batch), "kept": len(new_kept),
                 **filters.batch_diversity([filters.generated_text(r, t.output) for r, _, t in kept_at],
                                           [s["clause"] for _, s, _ in kept_at], settings.embeddings)}
    return new_kept, new_rejects, diversity


def _classify(job_id: str, seed: dict, template: PromptTemplate, reply: str,
              compliance: bool, settings: GenerateSettings) -> tuple[dict | None, tuple[str, str] | None]:
    """The row a reply makes, or the (filter, reason) that refuses it."""
    fields = filters.extract(reply, template.output)
    if fields is None:
        return None, ("no_output", f"no {template.output} in the reply (template {template.id})")
    row = {"id": job_id, "topic": seed["topic"], "source": SOURCE,
           "prompt": fields.get("prompt", seed["clause"]),
           "completion": fields.get("completion", seed["rule"])}
    if compliance and (problem := filters.rule_problem(row)):
        return None, ("rule", problem)
    if compliance and (problem := filters.ungrounded(row)):
        return None, ("ungrounded", problem)
    if problem := filters.repeats_seed(row, seed, template.output, settings.near_duplicate_threshold,
                                       settings.shingle_size):
        return None, ("same_as_seed", problem)
    return row, None


def _checkpoint(outputs: Outputs, context: dict, kept: list[dict], rejects: list[dict],
                batches: list[dict]) -> dict:
    """Rewrite the data card atomically from what the files hold (counts always add up)."""
    by_filter = Counter(r["filter"] for r in rejects)
    card = {**context, "out": str(outputs.out), "rejects_file": str(outputs.rejects),
            "rows": {"attempted": len(kept) + len(rejects), "kept": len(kept),
                     "rejected": len(rejects)},
            "rejected_by_filter": {name: by_filter.get(name, 0) for name in context["filters"]},
            "kept_by_template": dict(Counter(r["provenance"]["template"]["id"] for r in kept)),
            "batches": batches,
            "updated": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_json(outputs.card, card)
    return loads(dumps(card))  # what the file holds (lists, not tuples)
