"""A seeded sample of examples stratified by topic and source: which examples a run explains.

Attribution is the slow stage, so a study explains a few examples per run while its quality
metrics cover the whole test split. The first N rows would describe another population than the
metrics do (the bundled test split opens with the hand-written clauses), so the sample is drawn
from every topic × source stratum in proportion to its size, with at least one example from each
stratum while there is room (the small strata are the ones a first-N cut misses).

The draw depends only on the sample seed and on each row's id, topic and source: every run of a
study — every strategy, model and seed, whatever its predictions say — explains the same
examples, so their attributions can be compared example by example. Within a stratum the rows are
ranked by a hash of (seed, id) rather than by a random generator's stream, so the order of the
rows in the file does not matter either.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

UNSPECIFIED = "unspecified"


def stable_rank(seed: int, key: str) -> int:
    """A pseudo-random rank of ``key`` under ``seed``, the same in every process and on every run."""
    return int.from_bytes(hashlib.sha256(f"{seed}\x00{key}".encode()).digest()[:8], "little")


def stratum(item: dict) -> tuple[str, str]:
    """(topic, source) of an example, ``unspecified`` where a row does not say."""
    return (str(item.get("topic") or UNSPECIFIED), str(item.get("source") or UNSPECIFIED))


def allocate(sizes: dict[tuple[str, str], int], n: int, seed: int) -> dict[tuple[str, str], int]:
    """How many examples each stratum gives to a sample of ``n`` (below the total).

    Proportional allocation by largest remainder, at least one per stratum while ``n`` allows;
    with fewer places than strata, a seeded choice of strata gets one each. Ties go to a seeded
    order of the strata, never to their order in the file.
    """
    order = sorted(sizes, key=lambda k: (stable_rank(seed, "\x00".join(k)), k))
    if n <= len(order):
        return {k: int(i < n) for i, k in enumerate(order)}
    total = sum(sizes.values())
    quota = dict.fromkeys(order, 1)
    for _ in range(n - len(order)):
        open_ = [k for k in order if quota[k] < sizes[k]]
        best = max(open_, key=lambda k: n * sizes[k] / total - quota[k])  # first of the ties wins
        quota[best] += 1
    return quota


def stratified_sample(items: Sequence[dict], n: int | None, seed: int) -> list[dict]:
    """``n`` of ``items`` (dicts with ``example_id``, ``topic``, ``source``), in file order.

    All of them when ``n`` is None or covers them; otherwise each stratum's share (see
    :func:`allocate`) taken by rank of ``(seed, example_id)``.
    """
    if n is None or n >= len(items):
        return list(items)
    strata: dict[tuple[str, str], list[str]] = {}
    for item in items:
        strata.setdefault(stratum(item), []).append(str(item["example_id"]))
    quota = allocate({k: len(v) for k, v in strata.items()}, n, seed)
    chosen = set()
    for key, ids in strata.items():
        ranked = sorted(ids, key=lambda i: (stable_rank(seed, i), i))
        chosen.update(ranked[:quota[key]])
    return [item for item in items if str(item["example_id"]) in chosen]
