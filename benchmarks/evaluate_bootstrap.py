"""Bootstrap intervals of corpus BLEU and chrF: our shared resampler against sacrebleu's own.

Both sides extract per-sentence n-gram statistics once and score each resample from summed
statistics through sacrebleu; sacrebleu's ``corpus_score(n_bootstrap=B)`` materialises every
resample as an index array and sums it row by row, ours sums all resamples with one matrix
product over a shared table of draw counts (which also serves every other metric). A naive loop
that re-scores each resampled corpus from text is timed on fewer resamples and scaled, as the
baseline both improve on. Intervals differ only by the random draws, so the table shows both.

    python benchmarks/evaluate_bootstrap.py [--examples 2000] [--resamples 1000]
Target: >= 1x sacrebleu's bootstrap (it is the peer) and >= 20x the naive loop.
"""

from __future__ import annotations

import argparse
import random
import time

import numpy as np
import sacrebleu
from rich.console import Console
from rich.table import Table

from tunelens.evaluate.bootstrap import Resampler
from tunelens.evaluate.metrics import corpus_stats

ELEMENTS = ["stair", "ramp", "door", "corridor", "handrail", "exit_access"]
PROPS = ["riser_height", "clear_width", "slope", "height", "travel_distance", "tread_depth"]


def synthetic(n: int, seed: int = 0) -> tuple[list[str], list[str]]:
    rng = random.Random(seed)
    refs, preds = [], []
    for i in range(n):
        el, prop = rng.choice(ELEMENTS), rng.choice(PROPS)
        value, cmp = rng.randint(50, 2000), rng.choice(["<=", ">="])
        ref = f"RULE {i}.{rng.randint(1, 9)}: {el}.{prop} {cmp} {value} mm"
        pred = ref if rng.random() < 0.4 else ref.replace(str(value), str(value + rng.randint(1, 50)))
        if rng.random() < 0.2:
            pred = pred.replace(cmp, "<" if cmp == "<=" else ">")
        refs.append(ref)
        preds.append(pred)
    return preds, refs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--resamples", type=int, default=1000)
    parser.add_argument("--naive-resamples", type=int, default=20)
    args = parser.parse_args()
    preds, refs = synthetic(args.examples)
    table = Table(title=f"bootstrap of corpus metrics: {args.examples} examples, "
                        f"{args.resamples} resamples")
    for col in ("metric", "method", "seconds", "speed-up vs naive", "interval"):
        table.add_column(col, justify="left" if col in ("metric", "method") else "right")

    for name, metric_cls in (("bleu", sacrebleu.BLEU), ("chrf", sacrebleu.CHRF)):
        start = time.perf_counter()
        stats = corpus_stats(preds, refs, names=(name,))[name]
        resampler = Resampler(len(preds), args.resamples, seed=0)
        ours_ci = resampler.corpus(stats.stats, stats.score)
        ours = time.perf_counter() - start

        start = time.perf_counter()
        peer_score = metric_cls().corpus_score(preds, [refs], n_bootstrap=args.resamples)
        peer = time.perf_counter() - start
        peer_ci = (peer_score._mean - peer_score._ci, peer_score._mean + peer_score._ci)

        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for _ in range(args.naive_resamples):
            idx = rng.integers(0, len(preds), len(preds))
            metric_cls().corpus_score([preds[i] for i in idx], [[refs[i] for i in idx]])
        naive = (time.perf_counter() - start) * args.resamples / args.naive_resamples

        table.add_row(name, "tunelens Resampler", f"{ours:.2f}", f"{naive / ours:.0f}x",
                      f"[{ours_ci[0]:.2f}, {ours_ci[1]:.2f}]")
        table.add_row(name, "sacrebleu n_bootstrap (peer)", f"{peer:.2f}", f"{naive / peer:.0f}x",
                      f"[{peer_ci[0]:.2f}, {peer_ci[1]:.2f}] (mean ± CI)")
        table.add_row(name, "naive re-score (scaled)", f"{naive:.2f}", "1x", "")
    Console().print(table)


if __name__ == "__main__":
    main()
