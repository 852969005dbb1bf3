"""Attribution sharded over worker processes or Ray tasks (``tunelens explain --shards N``).

Attribution is the slow stage of a study (one forward pass per perturbation, per example), and
its examples are independent: N workers, each holding the model, finish in about 1/N of the
time. The sharding is ours because what must hold is tunelens': the merged parquet is the one an
unsharded run writes, row for row.

How: the parent draws the sample exactly as :func:`~tunelens.explain.run.explain_run` does
(:func:`~tunelens.explain.run.read_examples`), cuts the sampled rows into N contiguous shards,
writes each shard's rows to a work folder beside the output (a row without an ``id`` gets its
line number as one, the id it has unsharded), and runs the unchanged ``explain_run`` on each
shard with ``max_examples`` off (the shard *is* the sample) and no heat-map. Every example is
attributed by the same :func:`~tunelens.explain.run.explain_example`, seeded by its own id, so
the shards' rows, concatenated in shard order, are the unsharded parquet; the heat-map is drawn
from the merged rows.

Workers: a spawned :class:`~concurrent.futures.ProcessPoolExecutor` (``backend="local"``) or
Ray tasks with the study backend's connection and retries (``backend="ray"``,
:mod:`tunelens.ray_backend`). Resume: a shard cut short keeps explain_run's own sidecar; a
finished shard keeps its parquet with a stamp of its inputs, so a rerun runs only the shards not
finished. The work folder is removed once the output is written.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError
from tunelens.explain.run import read_examples
from tunelens.fingerprint import fingerprint
from tunelens.io import atomic_path, iter_jsonl, read_json, write_json, write_jsonl

# Summary fields a sharded run adds up over its shards (the rest are the same in every shard).
SUMMED = ("examples", "attributions", "resumed", "features", "forward_passes", "perturbations",
          "truncated_examples")


def explain_sharded(model: str, data: Path, out: Path, config: ExplanationConfig | None = None,
                    shards: int = 2, *, backend: str = "local", address: str | None = None,
                    threads: int | None = None, progress: bool = True, dtype: str | None = None,
                    trust_remote_code: bool | None = None,
                    prompt_format: str | None = None) -> dict:
    """:func:`~tunelens.explain.run.explain_run` over ``shards`` workers; the same parquet.

    ``threads``: torch threads per worker (default: this machine's cores shared out locally,
    one per Ray task). Returns explain_run's summary, added up over the shards.
    """
    config = config or ExplanationConfig()
    data, out = Path(data), Path(out)
    if out.suffix != ".parquet":
        raise TunelensError(f"{out}: the output must be a .parquet file")
    examples, skipped = read_examples(data, config)
    ids = list(dict.fromkeys(str(ex["example_id"]) for ex in examples))
    work = out.with_name(f".{out.name}.shards")
    settings = {"dtype": dtype, "trust_remote_code": trust_remote_code,
                "prompt_format": prompt_format}
    shard_config = config.model_copy(update={"max_examples": None, "heatmap": False})
    jobs = _write_shards(data, _chunks(ids, shards), work, model, shard_config, settings)
    start = time.perf_counter()
    todo = [job for job in jobs if not _finished(job)]
    if todo:
        _run(todo, model, shard_config, settings, backend, address, threads, progress)
    summaries = [read_json(job["done"])["summary"] for job in jobs]
    _merge(jobs, out)
    summary = {**summaries[0], **{k: sum(s[k] for s in summaries) for k in SUMMED},
               "out": str(out), "shards": len(jobs), "generation_skipped": skipped,
               "seconds": round(time.perf_counter() - start, 3), "heatmap": None}
    if config.heatmap:
        summary["heatmap"] = str(_heatmap(out, examples, model, config, summary))
    shutil.rmtree(work, ignore_errors=True)
    return summary


def _chunks(ids: list[str], shards: int) -> list[list[str]]:
    """``ids`` cut into at most ``shards`` contiguous, non-empty, near-equal runs."""
    n = max(1, min(shards, len(ids)))
    size, extra = divmod(len(ids), n)
    out, lo = [], 0
    for i in range(n):
        hi = lo + size + (i < extra)
        out.append(ids[lo:hi])
        lo = hi
    return out


def _write_shards(data: Path, chunks: list[list[str]], work: Path, model: str,
                  config: ExplanationConfig, settings: dict) -> list[dict]:
    """Each shard's rows (ids made explicit) in its own file; its paths and the stamp a finished
    shard is known by (the model's content, the settings, the shard's rows)."""
    from tunelens.models.loading import model_sources

    rows: dict[str, dict] = {}
    for n, (_, raw) in enumerate(iter_jsonl(data), start=1):
        key = str(n) if raw.get("id") is None else str(raw["id"])
        rows[key] = raw if raw.get("id") is not None else {**raw, "id": key}
    sources = model_sources(str(model))
    jobs = []
    for i, chunk in enumerate(chunks):
        job = {"data": work / f"shard-{i}.jsonl", "out": work / f"shard-{i}.parquet",
               "done": work / f"shard-{i}.done.json"}
        write_jsonl(job["data"], [rows[key] for key in chunk])  # stamps hash content, not times
        job["stamp"] = fingerprint("explain-shard", config.model_dump(mode="json"), settings,
                                   None if sources else str(model),
                                   files=[*sources, job["data"]])
        jobs.append(job)
    return jobs


def _finished(job: dict) -> bool:
    done = job["done"]
    return job["out"].exists() and done.exists() and read_json(done).get("stamp") == job["stamp"]


def _run(jobs: list[dict], model: str, config: ExplanationConfig, settings: dict, backend: str,
         address: str | None, threads: int | None, progress: bool) -> None:
    """The shards on the chosen workers, a bar over the shards as they finish."""
    from tunelens.progress import item_bar

    with item_bar(progress) as bar:
        task = bar.add_task(f"explaining in {len(jobs)} shards ({Path(str(model)).name})",
                            total=len(jobs))
        runner = _on_ray if backend == "ray" else _on_processes
        for job, summary in runner(jobs, model, config, settings, address, threads):
            write_json(job["done"], {"stamp": job["stamp"], "summary": summary})
            bar.advance(task)


def _on_processes(jobs, model, config, settings, address, threads):
    """(job, summary) as each shard ends in a spawned worker process (a fork of a process that
    started torch's thread pools is not safe)."""
    from tunelens.parallel import prepare_worker

    per = threads or max(1, (os.cpu_count() or 1) // len(jobs))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=len(jobs), mp_context=ctx, initializer=prepare_worker,
                             initargs=(per, None)) as pool:
        futures = {pool.submit(explain_shard, model, job, config, settings): job for job in jobs}
        try:
            for future in as_completed(futures):
                yield futures[future], future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # finished examples stay in sidecars
            raise


def _on_ray(jobs, model, config, settings, address, threads):
    """(job, summary) as each shard ends in a Ray task (the study's connection when there is
    one); a task whose worker died runs again."""
    import ray

    from tunelens.ray_backend import RETRIES, connect, task_resources

    connect(address)
    task = ray.remote(max_retries=RETRIES)(_ray_shard)
    resources = task_resources(threads or 1)
    refs = {task.options(**resources).remote(model, job, config, settings, resources["num_cpus"]): job
            for job in jobs}
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            yield refs[done[0]], ray.get(done[0])
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise


def explain_shard(model: str, job: dict, config: ExplanationConfig, settings: dict) -> dict:
    """One shard, in a worker: explain_run on its rows into its own parquet."""
    from tunelens.explain.run import explain_run

    return explain_run(model, job["data"], job["out"], config, progress=False, **settings)


def _ray_shard(model: str, job: dict, config: ExplanationConfig, settings: dict,
               threads: int) -> dict:
    from tunelens.parallel import prepare_worker

    prepare_worker(threads, None)
    return explain_shard(model, job, config, settings)


def _merge(jobs: list[dict], out: Path) -> None:
    """The shards' parquet files, in shard order, as one (written atomically)."""
    import pandas as pd

    frame = pd.concat([pd.read_parquet(job["out"]) for job in jobs], ignore_index=True)
    with atomic_path(out) as tmp:
        frame.to_parquet(tmp, index=False)


def _heatmap(out: Path, examples: list[dict], model: str, config: ExplanationConfig,
             summary: dict) -> Path:
    """The heat-map explain_run draws (:func:`~tunelens.explain.run.write_run_heatmap`), from
    the merged rows: each example's clause and target with its rows."""
    import pandas as pd

    from tunelens.explain.features import Baseline
    from tunelens.explain.run import write_run_heatmap

    frame = pd.read_parquet(out)
    groups = {key: rows for key, rows in frame.groupby(["example_id", "target"], sort=False)}
    records = []
    for ex in examples:
        rows = groups.get((str(ex["example_id"]), ex["kind"]))
        rows = [] if rows is None else rows.to_dict("records")
        records.append({"example_id": ex["example_id"], "kind": ex["kind"], "clause": ex["clause"],
                        "target": ex["target"], "rows": rows,
                        "target_logprob": rows[0]["target_logprob"] if rows else float("nan")})
    baseline = Baseline(summary["baseline"], None, summary["baseline_token"], config.baseline)
    return write_run_heatmap(out, records, model, config, baseline)
