"""``tunelens probe``: a model and a data file in, the probe report (:mod:`.probes`) as JSON out.

The model writes its rules exactly as the generate stage would (the run's prompt format and
instruction, greedy decoding, batched: :func:`tunelens.infer.batching.generate_texts`), once for
the unedited clauses and once for every edited one. With an attribution method, the scored
probes are also attributed (the model's own rule as target, clause words as features, the
template around the clause as fixed context), which costs two attributions per probe.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from tunelens.config import GenerationConfig
from tunelens.explain.probes import KINDS, Attributor, Generate, run_probes
from tunelens.io import write_json
from tunelens.progress import item_bar


def model_generator(llm, tokenizer, render: Callable[[str], str],
                    config: GenerationConfig | None = None,
                    on_batch: Callable[[int], None] | None = None) -> Generate:
    """Clauses -> the model's rules (greedy unless ``config`` says otherwise)."""
    from tunelens.infer.batching import generate_texts

    config = config or GenerationConfig()

    def generate(clauses: list[str]) -> list[str]:
        done = generate_texts(llm, tokenizer, [render(c) for c in clauses], config,
                              on_batch=(lambda n, _t: on_batch(n)) if on_batch else None)
        return [g.samples[0] for g in done]

    return generate


def model_attributor(llm, tokenizer, render: Callable[[str], str], method: str = "occlusion",
                     granularity: str = "word", baseline: str = "auto",
                     on_item: Callable[[], None] | None = None) -> Attributor:
    """(clauses, rules) -> clause-relative feature spans and scores, one attribution each."""
    from tunelens.explain.api import attribute

    def attribute_all(clauses: list[str], targets: list[str]):
        out = []
        for clause, target in zip(clauses, targets, strict=True):
            prompt = render(clause)
            lo = prompt.rfind(clause)
            result = attribute(llm, tokenizer, prompt, target, method=method,
                               granularity=granularity, baseline=baseline,
                               feature_window=(lo, lo + len(clause)), per_target=False)[0]
            out.append(([(s - lo, e - lo) for s, e in result.spans], result.scores))
            if on_item is not None:
                on_item()
        return out

    return attribute_all


# every rule generated costs a decoding: sampled precision from 32 perturbations, a beam of 3 as
# soon as a size has over 64 candidate sets, exact precision only with at most 6 free words, and
# at most 2,000 perturbed clauses per anchor (a 0.8M model wrote about 35 rules a second on a
# busy 2-core CPU; an 11-word anchor took 18,700 without a budget)
ANCHOR_SEARCH = {"samples": 32, "exhaustive": 64, "beam": 3, "exact_free": 6, "budget": 2000}


def anchor_records(generate: Generate, clauses: Sequence[str], n: int, field: str, seed: int,
                   on_item: Callable[[], None] | None = None) -> list[dict]:
    """The anchor of each of the first ``n`` clauses' rules (an unparsed rule gets its error
    instead); data coverage is measured on all ``clauses``."""
    from tunelens.errors import TunelensError
    from tunelens.explain.anchors import explain_rule

    out = []
    for clause in clauses[:n]:
        try:
            out.append(explain_rule(generate, clause, field, corpus=clauses, seed=seed,
                                    **ANCHOR_SEARCH))
        except TunelensError as exc:
            out.append({"clause": clause, "field": field, "error": str(exc)})
        if on_item is not None:
            on_item()
    return out


def probe_file(model: str, data: Path, out: Path, kinds: Sequence[str] = tuple(KINDS),
               max_examples: int | None = None, seed: int = 0, method: str | None = "occlusion",
               progress: bool = True, *, generation: GenerationConfig | None = None,
               anchors: int = 0, anchor_field: str = "limit", dtype: str | None = None,
               trust_remote_code: bool | None = None, prompt_format: str | None = None,
               loaded: tuple | None = None) -> dict:
    """Probe ``model`` on the clauses of ``data`` (rows with ``id`` and ``prompt``); write ``out``.

    ``method`` None skips attribution; ``generation`` sets decoding (default: greedy, the
    generate stage's defaults); ``anchors`` > 0 adds the anchors (:mod:`.anchors`) of
    ``anchor_field`` for that many clauses, searched with :data:`ANCHOR_SEARCH`. Returns the
    report written (summary per kind, every probe's record, anchors, the model, the seconds).
    ``loaded``: the model and tokenizer already loaded (:func:`~tunelens.models.loading.load_placed`).
    """
    from tunelens.explain.probes import make_edits
    from tunelens.infer.generate import read_examples
    from tunelens.models.loading import load_placed
    from tunelens.models.run_settings import ModelSettings

    rows = read_examples(Path(data), max_examples, seed)
    clauses = [r.prompt for r in rows]
    edits = make_edits(clauses, kinds, seed)  # an unknown kind fails before the model loads
    settings = ModelSettings.of(str(model), dtype, trust_remote_code, prompt_format)
    llm, tokenizer = loaded or load_placed(str(model), settings)

    def render(clause: str) -> str:
        return settings.render(tokenizer, clause)

    start = time.perf_counter()
    with item_bar(progress) as bar:
        rules = len({e.before for e in edits}) + len(edits)
        gen_task = bar.add_task(f"probing ({Path(str(model)).name})", total=rules)
        generate = model_generator(llm, tokenizer, render, generation,
                                   on_batch=lambda n: bar.advance(gen_task, n))
        attr_task = bar.add_task("attributing probes", total=None, visible=method is not None)
        attributor = None if method is None else model_attributor(
            llm, tokenizer, render, method, on_item=lambda: bar.advance(attr_task))
        report = run_probes(clauses, generate, kinds, seed, attributor)
        if anchors:
            anchor_task = bar.add_task("anchors", total=min(anchors, len(clauses)))
            quiet = model_generator(llm, tokenizer, render, generation)  # its own bar
            report["anchors"] = anchor_records(quiet, clauses, anchors, anchor_field, seed,
                                               lambda: bar.advance(anchor_task))
    report = {"model": str(model), "data": str(data), "examples": len(clauses),
              "method": method, "seed": seed, **report,
              "seconds": round(time.perf_counter() - start, 3)}
    write_json(out, report)
    return report
