"""``tunelens faithfulness``: how faithful are a run's attributions? Parquets in, one JSON out.

The attributions parquets (``tunelens explain`` outputs, one or several methods) and the data file
they were computed on are read back; each example's prompt is placed exactly as ``explain`` placed
it (:func:`tunelens.explain.run.explain_example`), its features rebuilt at the granularity whose
spans match the parquet's (token, word or span: the parquet does not record it, and a mismatch
means the attributions belong to another model or data, a one-line error), and every method's
ranking is scored by :func:`tunelens.explain.faithfulness.faithfulness` beside a seeded random
ranking (the chance reference), all of one example's perturbations in one batched scorer call.

The JSON holds the settings, per method the means over examples (:data:`MEAN_KEYS`) and the share
of examples on which the method beats the random ranking, and per example and method the flat
record of :meth:`Faithfulness.summary`, so a report can bootstrap its own intervals.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from tunelens.config import ExplanationConfig
from tunelens.errors import TunelensError
from tunelens.explain.faithfulness import CURVE_POINTS, FRACTIONS, RANDOM, faithfulness, mean_summary
from tunelens.io import write_json
from tunelens.progress import item_bar

NEEDED = ("example_id", "position", "start", "end", "score", "method")
GRANULARITY_ORDER = ("token", "word", "span")


def read_attributions(paths: Sequence[Path]) -> dict[tuple[str, str], dict]:
    """{(target kind, example_id): {"spans", "scores": {method: array}, "baselines"}} from parquets.

    Every method of an example must cover the same features (same clause spans, in order).
    """
    import pandas as pd

    seen: dict[str, Path] = {}
    examples: dict[tuple[str, str], dict] = {}
    for path in paths:
        try:
            frame = pd.read_parquet(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises many types for a bad file
            raise TunelensError(f"{path}: not a readable parquet file ({type(exc).__name__})") from None
        missing = [c for c in NEEDED if c not in frame.columns]
        if missing:
            raise TunelensError(f"{path}: not an attributions parquet (no column {', '.join(missing)})")
        # parquets written before explain recorded them: reference targets, baseline unknown
        frame = frame.assign(target=frame.get("target", "reference"), baseline=frame.get("baseline"))
        for method in frame["method"].unique():
            if method in seen:
                raise TunelensError(f"method '{method}' is in both {seen[method]} and {path}")
            seen[str(method)] = path
        for (kind, example_id, method), rows in frame.groupby(["target", "example_id", "method"],
                                                              sort=False):
            rows = rows.sort_values("position")
            spans = list(zip(rows["start"].astype(int), rows["end"].astype(int), strict=True))
            entry = examples.setdefault((str(kind), str(example_id)),
                                        {"spans": spans, "scores": {}, "baselines": set()})
            if entry["spans"] != spans:
                raise TunelensError(f"example {example_id}: method '{method}' was computed on other "
                                    "features than the others (another granularity?)")
            entry["scores"][str(method)] = rows["score"].to_numpy(dtype=np.float64)
            entry["baselines"].update(str(b) for b in rows["baseline"].dropna().unique())
    if not examples:
        raise TunelensError(f"no attributions in {', '.join(map(str, paths))}")
    return examples


def pick_baseline(examples: dict, asked: str | None) -> str:
    """The baseline that removes features: the one asked for, else the attributions' own."""
    if asked is not None:
        return asked
    used = set().union(*(e["baselines"] for e in examples.values()))
    if not used:
        raise TunelensError("the attributions do not record their baseline: give it with --baseline")
    if len(used) != 1:
        raise TunelensError(f"the attributions used several baselines ({', '.join(sorted(used))}): "
                            "choose the one that removes features with --baseline")
    return used.pop()


def matching_features(tokenizer, rendered: str, lo: int, clause: str, spans: list) -> tuple[str, list | None]:
    """(granularity, spans argument) whose features have the parquet's clause-relative spans."""
    from tunelens.data.compliance.categories import tag
    from tunelens.explain.features import build_features

    window = (lo, lo + len(clause))
    for granularity in GRANULARITY_ORDER:
        given = [(s.start + lo, s.end + lo) for s in tag(clause)] if granularity == "span" else None
        if granularity == "span" and not given:
            continue
        try:
            feats = build_features(tokenizer, rendered, granularity, given, window)
        except TunelensError:
            continue
        rel = [(max(s - lo, 0), min(e - lo, len(clause))) for s, e in feats.spans]
        if rel == spans:
            return granularity, given
    return "", None


def faithfulness_run(model: str, data: Path, attributions: Sequence[Path], out: Path, *,
                     baseline: str | None = None, fractions: Sequence[float] = FRACTIONS,
                     points: int = CURVE_POINTS, seed: int = 0, batch_size: int | None = None,
                     memory_budget_mb: float | None = None, progress: bool = True,
                     dtype: str | None = None, trust_remote_code: bool | None = None,
                     prompt_format: str | None = None, loaded: tuple | None = None) -> dict:
    """Measure the faithfulness of ``attributions`` (parquets) of ``model`` on ``data``; write ``out``.

    ``baseline`` removes features (default: the attributions' own); ``seed`` seeds the random
    reference ranking (per example, with its id) and the ``sample`` baseline; ``loaded``: the
    model and tokenizer already loaded (:func:`~tunelens.models.loading.load_placed`).
    """
    from tunelens.explain.run import load_for_explain, placed_prompt, read_examples
    from tunelens.explain.scorer import Scorer
    from tunelens.models.run_settings import ModelSettings

    out = Path(out)
    if out.suffix != ".json":
        raise TunelensError(f"{out}: the output must be a .json file")
    scored = read_attributions([Path(p) for p in attributions])
    removal = pick_baseline(scored, baseline)
    kinds = sorted({kind for kind, _ in scored})
    # ``delete`` resolves for every tokenizer: load_for_explain's baseline is not the one used here
    config = ExplanationConfig(target="both" if len(kinds) > 1 else kinds[0], max_examples=None,
                               baseline="delete")
    examples = [ex for ex in read_examples(Path(data), config)[0] if (ex["kind"], ex["example_id"]) in scored]
    if len(examples) < len(scored):
        raise TunelensError(f"{len(scored) - len(examples)} attributed example(s) are not in {data} "
                            "(attributions of another data file?)")
    settings = ModelSettings.of(str(model), dtype, trust_remote_code, prompt_format)
    llm, tokenizer, fmt, _ = load_for_explain(str(model), settings, config, loaded)
    settings = replace(settings, prompt_format=fmt)
    scorer = Scorer(llm, batch_size=batch_size, memory_budget_mb=memory_budget_mb or config.memory_budget_mb)
    records, per_method = [], {}
    start = time.perf_counter()
    with item_bar(progress) as bar:
        task = bar.add_task(f"faithfulness ({Path(str(model)).name})", total=len(examples))
        for ex in examples:
            rendered, lo = placed_prompt(tokenizer, {**ex, "settings": settings})
            granularity, got = _measure(llm, tokenizer, scorer, ex, scored[(ex["kind"], ex["example_id"])],
                                        rendered, lo, removal, fractions=fractions, points=points, seed=seed)
            for name, result in got.items():
                per_method.setdefault(name, []).append(result)
                records.append({"example_id": ex["example_id"], "target": ex["kind"],
                                "granularity": granularity, **result.summary()})
            bar.advance(task)
    summary = {"model": str(model), "data": str(data), "attributions": [str(p) for p in attributions],
               "baseline": removal, "fractions": list(fractions), "examples": len(examples),
               "methods": method_table(per_method), "records": records,
               "forward_passes": scorer.forward_passes, "perturbations": scorer.scored,
               "seconds": round(time.perf_counter() - start, 3)}
    write_json(out, summary)
    return summary


def _measure(llm, tokenizer, scorer, ex: dict, entry: dict, rendered: str, lo: int, removal: str,
             **settings) -> tuple[str, dict]:
    """(granularity, {method: Faithfulness}) of one example, the random reference included."""
    from tunelens.explain.run import stable_seed

    granularity, spans = matching_features(tokenizer, rendered, lo, ex["clause"], entry["spans"])
    if not granularity:
        raise TunelensError(f"example {ex['example_id']}: the attributions' features match no token, "
                            "word or span split of its clause (another model or data?)")
    seeds = [settings.pop("seed"), stable_seed(ex["example_id"])]
    try:
        return granularity, faithfulness(llm, tokenizer, rendered, ex["target"], entry["scores"],
                                         granularity=granularity, baseline=removal, spans=spans,
                                         feature_window=(lo, lo + len(ex["clause"])),
                                         random_reference=seeds, seed=seeds, scorer=scorer, **settings)
    except TunelensError as exc:
        raise TunelensError(f"example {ex['example_id']}: {exc}") from None


def method_table(per_method: dict[str, list]) -> dict[str, dict]:
    """Per method: means over examples, and the share of examples where it beats the random
    ranking on comprehensiveness (AOPC) and on the deletion area."""
    reference = per_method.get(RANDOM, [])
    table = {}
    for name, results in per_method.items():
        row = mean_summary(results)
        if reference and name != RANDOM:
            row["beats_random_comprehensiveness"] = float(np.mean(
                [a.aopc_comprehensiveness > r.aopc_comprehensiveness
                 for a, r in zip(results, reference, strict=True)]))
            row["beats_random_deletion"] = float(np.mean(
                [a.deletion_area < r.deletion_area for a, r in zip(results, reference, strict=True)]))
        table[name] = row
    return table
