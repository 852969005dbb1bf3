"""Near-duplicate detection: MinHash LSH proposes pairs, true Jaccard decides.

A test clause that is a near copy of a training clause measures memory, not skill, so the data
stage removes near-duplicates and checks that none crosses the splits. datasketch does the
hashing (MinHash) and the banding (MinHashLSH); what is ours is how the two are used:

* Texts become sets of word shingles (``shingle_size`` consecutive lower-cased words): numbers
  are words too, so two clauses that differ only in a dimension share most shingles.
* LSH is tuned for recall, not balance: the band/row split is chosen so that a pair exactly at
  the Jaccard threshold becomes a candidate with probability >= 0.99 (datasketch's default
  weighting misses a pair at the threshold more often than not). Every candidate is then
  verified with the exact Jaccard of the two shingle sets, so a false candidate costs time,
  never a wrong answer.
* Whether two texts are candidates depends only on their two signatures, so the leakage check,
  run with the same settings on the rows that de-duplication kept, cannot find a pair that
  de-duplication did not already see: a leak reported after :func:`deduplicate` is a bug.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from datasketch import MinHash, MinHashLSH

from tunelens.errors import TunelensError

_WORD = re.compile(r"\w+")
_RECALL_AT_THRESHOLD = 0.99


class LeakageError(TunelensError):
    """A near-duplicate pair spans two splits: the test split would measure memorisation."""


@dataclass(frozen=True)
class Leak:
    split_a: str
    id_a: str
    split_b: str
    id_b: str
    jaccard: float


def shingles(text: str, size: int) -> frozenset[str]:
    """Word ``size``-grams of ``text`` (case-folded); a shorter text is one shingle of all words."""
    words = _WORD.findall(text.casefold())
    if len(words) <= size:
        return frozenset([" ".join(words) if words else text.casefold()])
    return frozenset(" ".join(words[i:i + size]) for i in range(len(words) - size + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def lsh_params(threshold: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) with the fewest false candidates among those that catch a pair exactly at
    ``threshold`` with probability >= 0.99 (P = 1 - (1 - J^rows)^bands)."""
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1.0 - (1.0 - threshold**rows) ** bands >= _RECALL_AT_THRESHOLD:
            return bands, rows
    return num_perm, 1


def near_duplicate_pairs(sets: Sequence[frozenset[str]], threshold: float, num_perm: int = 128,
                         seed: int = 0) -> list[tuple[int, int, float]]:
    """Every pair ``(i, j, jaccard)`` with ``i < j`` whose true Jaccard is >= ``threshold``."""
    if len(sets) < 2:
        return []
    signatures = MinHash.bulk([[s.encode("utf-8") for s in sorted(x)] for x in sets],
                              num_perm=num_perm, seed=seed)
    lsh = MinHashLSH(num_perm=num_perm, params=lsh_params(threshold, num_perm))
    with lsh.insertion_session() as session:
        for i, sig in enumerate(signatures):
            session.insert(i, sig, check_duplication=False)
    pairs = []
    for i, sig in enumerate(signatures):
        for j in lsh.query(sig):
            if j > i and (score := jaccard(sets[i], sets[j])) >= threshold:
                pairs.append((i, j, score))
    return sorted(pairs)


def deduplicate(texts: Sequence[str], threshold: float, shingle_size: int, num_perm: int = 128,
                seed: int = 0) -> dict[int, tuple[int, float]]:
    """Which texts to drop: ``{index: (index of the kept near-duplicate, jaccard)}``.

    Earlier texts win: a text is dropped when it is a near-duplicate of a text already kept
    (greedy, not whole clusters, so a chain A~B~C with A and C far apart keeps A and C).
    Callers order the texts by priority (the bundled hold-out clauses first).
    """
    sets = [shingles(t, shingle_size) for t in texts]
    partners: dict[int, list[tuple[int, float]]] = {}
    for i, j, score in near_duplicate_pairs(sets, threshold, num_perm, seed):
        partners.setdefault(j, []).append((i, score))
    dropped: dict[int, tuple[int, float]] = {}
    for j in sorted(partners):
        kept = [(i, s) for i, s in partners[j] if i not in dropped]
        if kept:
            dropped[j] = max(kept, key=lambda p: (p[1], -p[0]))
    return dropped


def find_leaks(splits: dict[str, Sequence[dict]], threshold: float, shingle_size: int,
               num_perm: int = 128, seed: int = 0, field: str = "prompt") -> list[Leak]:
    """Near-duplicate pairs (on ``field``) whose two rows sit in different splits."""
    owners = [(name, row) for name, rows in splits.items() for row in rows]
    sets = [shingles(row[field], shingle_size) for _, row in owners]
    leaks = []
    for i, j, score in near_duplicate_pairs(sets, threshold, num_perm, seed):
        (split_a, row_a), (split_b, row_b) = owners[i], owners[j]
        if split_a != split_b:
            leaks.append(Leak(split_a, str(row_a["id"]), split_b, str(row_b["id"]), round(score, 4)))
    return leaks


def assert_no_leakage(splits: dict[str, Sequence[dict]], threshold: float, shingle_size: int,
                      num_perm: int = 128, seed: int = 0) -> None:
    """Raise :class:`LeakageError` naming the first cross-split near-duplicate pair, if any."""
    leaks = find_leaks(splits, threshold, shingle_size, num_perm, seed)
    if leaks:
        first = leaks[0]
        raise LeakageError(
            f"leakage: {first.split_a} row '{first.id_a}' and {first.split_b} row '{first.id_b}' "
            f"are near-duplicates (Jaccard {first.jaccard:.2f} >= {threshold}); "
            f"{len(leaks)} such pair(s) in all"
        )
