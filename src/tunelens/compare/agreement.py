"""Do two runs look at the same tokens? Rank correlation, top-k overlap and JS divergence.

Per example, features of the two runs are matched by their character span in the prompt
(``start``, ``end``), so runs of different models still compare where their tokenizers cut the
clause the same way; without spans, by position. A span whose token text differs between the two
runs (a RAG prompt shifts every offset) is not a match. Spearman and Kendall are computed on the
signed scores (a feature that helps in one run and hurts in the other is a disagreement); top-k
overlap and the Jensen–Shannon divergence use |score| (which features carry the mass). JS is
base 2, squared from scipy's distance, so it runs from 0 (identical) to 1.

Noise floor: the seeds of one cell (see :mod:`tunelens.compare.runs`) are compared the same way;
their agreement is the floor two *different* strategies should be judged against. The unit is the
replicate pair, not the example: each pair of seeds is summarised by its mean over examples, each
cell by the mean of its pairs, and the floor is the mean over cells with an interval that
resamples cells (the examples of one pair are not independent evidence about seed noise, and
pooling them would make the interval far too narrow). When every replicate pair agrees perfectly
(Spearman within 1e-9 of 1: deterministic occlusion of identical models), the floor is marked
``degenerate``: there is no seed variation to compare with, and the report says so instead of
finding every strategy pair "below the floor". With no replicates there is no floor.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd
from scipy import stats
from scipy.spatial.distance import jensenshannon

from tunelens.compare.intervals import mean_interval

METRICS = ("spearman", "kendall", "top_k_overlap", "js_divergence")
_MARKERS = " \t\nĠ▁Ċ"


class Features:
    """One example of one run: feature keys, scores and token texts, with a key → index map.

    Plain arrays and a dict rather than a pandas frame: alignment runs once per example per pair
    of runs (thousands of times in a study) and a pandas join costs milliseconds each.
    """

    def __init__(self, keys: list, scores: np.ndarray, tokens: list):
        self.scores, self.tokens = scores, tokens
        self.index: dict = {}
        for i, k in enumerate(keys):
            self.index.setdefault(k, i)


def example_vectors(attributions: pd.DataFrame) -> dict[str, Features]:
    """Per example, its features keyed by character span (or by position without spans)."""
    use_spans = bool(attributions["start"].notna().all() and attributions["end"].notna().all())
    out = {}
    for example_id, g in attributions.groupby("example_id", sort=True):
        if use_spans:
            keys = list(zip(g["start"].astype(int).tolist(), g["end"].astype(int).tolist(), strict=True))
        else:
            keys = g["position"].astype(int).tolist()
        tokens = [None if t is None or (isinstance(t, float) and np.isnan(t)) else str(t).strip(_MARKERS)
                  for t in g["token"].tolist()]
        out[example_id] = Features(keys, g["score"].to_numpy(float), tokens)
    return out


def align(a: Features, b: Features) -> tuple[np.ndarray, np.ndarray]:
    """Scores of the features both runs have (same key and, where known, same token text)."""
    ia, ib = [], []
    for key, i in a.index.items():
        j = b.index.get(key)
        if j is None:
            continue
        ta, tb = a.tokens[i], b.tokens[j]
        if ta is not None and tb is not None and ta != tb:
            continue
        if np.isfinite(a.scores[i]) and np.isfinite(b.scores[j]):
            ia.append(i)
            ib.append(j)
    return a.scores[ia], b.scores[ib]


def pair_metrics(a, b, k: int) -> dict[str, float]:
    """Agreement of two aligned score vectors (NaN where a measure is undefined)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    nan = float("nan")
    if a.size < 2:
        return dict.fromkeys(METRICS, nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(a, b).statistic
        tau = stats.kendalltau(a, b).statistic
    kk = min(k, a.size)
    top_a = set(np.argsort(-np.abs(a), kind="stable")[:kk])
    top_b = set(np.argsort(-np.abs(b), kind="stable")[:kk])
    return {"spearman": float(rho), "kendall": float(tau), "top_k_overlap": len(top_a & top_b) / kk,
            "js_divergence": js_divergence(a, b)}


def js_divergence(a, b) -> float:
    """Jensen–Shannon divergence (base 2) of the normalised |scores|; NaN if either is all zero."""
    pa, pb = np.abs(np.asarray(a, dtype=float)), np.abs(np.asarray(b, dtype=float))
    if pa.sum() <= 0 or pb.sum() <= 0:
        return float("nan")
    return float(jensenshannon(pa / pa.sum(), pb / pb.sum(), base=2) ** 2)


def run_pair(va: dict, vb: dict, k: int) -> pd.DataFrame:
    """Per-example agreement of two runs over the examples both explained."""
    rows = []
    for ex in sorted(set(va) & set(vb)):
        sa, sb = align(va[ex], vb[ex])
        rows.append({"example_id": ex, "n_features": int(sa.size), **pair_metrics(sa, sb, k)})
    return pd.DataFrame(rows, columns=["example_id", "n_features", *METRICS])


def summarise(per_example: pd.DataFrame, samples: int, confidence: float, seed: int) -> dict:
    return {m: mean_interval(per_example[m], samples, confidence, seed) for m in METRICS}


def agreement(vectors: dict[str, dict], replicates: dict[str, list[str]], k: int, samples: int,
              confidence: float, seed: int) -> dict:
    """Every pair of primary runs, the runs × runs Spearman matrix, and the seed-to-seed floor.

    ``vectors`` maps run → example vectors (primary runs and replicates); ``replicates`` maps a
    cell to its run names, the primary first; the matrix keeps the order of the cells.
    """
    primary = [names[0] for names in replicates.values() if names[0] in vectors]
    pairs, matrix = [], np.eye(len(primary))
    for (i, a), (j, b) in itertools.combinations(enumerate(primary), 2):
        per = run_pair(vectors[a], vectors[b], k)
        summary = summarise(per, samples, confidence, seed)
        pairs.append({"a": a, "b": b, "n_examples": int(per["spearman"].notna().sum()), **summary})
        matrix[i, j] = matrix[j, i] = _or_nan(summary["spearman"]["mean"])
    floor = noise_floor(vectors, replicates, k, samples, confidence, seed)
    return {"metrics": list(METRICS), "top_k": k, "pairs": pairs,
            "matrix": {"runs": primary, "spearman": [[_json(v) for v in row] for row in matrix]},
            "noise_floor": floor}


def noise_floor(vectors: dict[str, dict], replicates: dict[str, list[str]], k: int, samples: int,
                confidence: float, seed: int) -> dict | None:
    """Seed-to-seed agreement: replicate pairs summarised per cell, the floor over cells."""
    cells = {}
    for cell, names in sorted(replicates.items()):
        names = [n for n in names if n in vectors]
        if len(names) < 2:
            continue
        pair_means = pd.DataFrame([run_pair(vectors[a], vectors[b], k)[list(METRICS)].mean()
                                   for a, b in itertools.combinations(names, 2)])
        # NaN where undefined: compare_study writes it as null (io's NaN policy)
        cells[cell] = {"runs": names, "n_pairs": int(len(pair_means)),
                       **{m: float(pair_means[m].mean()) for m in METRICS}}
    if not cells:
        return None
    per_cell = pd.DataFrame([{m: c[m] for m in METRICS} for c in cells.values()])
    rho = per_cell["spearman"].dropna()
    degenerate = bool(len(rho) and (rho >= 1.0 - 1e-9).all())
    return {"unit": "replicate pairs averaged per cell; interval over cells", "cells": cells,
            "n_cells": len(cells), "n_pairs": sum(c["n_pairs"] for c in cells.values()),
            "degenerate": degenerate, **summarise(per_cell, samples, confidence, seed)}


def _or_nan(v) -> float:
    return float("nan") if v is None else float(v)


def _json(v: float) -> float | None:
    return None if not np.isfinite(v) else round(float(v), 6)
