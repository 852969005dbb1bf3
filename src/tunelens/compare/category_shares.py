"""Where the attribution mass goes: the share of |score| per token category, per example.

Shares are computed per example and then averaged, so every example weighs the same whatever its
length; an example's shares sum to 1. Categories not in the fixed list are kept under their own
name, so nothing silently disappears.

A share alone is not reliance: a clause that is half numbers gives numbers half the mass under
uniform attribution, and a tokenizer that splits numbers into more pieces gives them more
features. **Enrichment** divides it out: a category's mean share of |attribution| ÷ its mean share
of the features (both averaged over examples, a ratio of means so an example without the category
does not divide by zero). 1 = attributed in proportion to its size, 2 = twice that. Its interval
is a percentile bootstrap over examples (numerator and denominator resampled together).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from tunelens.compare.scale import resample_sizes
from tunelens.data.compliance.categories import CATEGORIES


def per_example(attributions: pd.DataFrame) -> pd.DataFrame:
    """Rows: examples; columns: categories (the fixed ones first); values sum to 1 per row."""
    frame = attributions[["example_id", "category"]].copy()
    frame["mass"] = np.abs(attributions["score"].to_numpy(dtype=float))
    frame = frame[np.isfinite(frame["mass"])]
    table = frame.pivot_table(index="example_id", columns="category", values="mass", aggfunc="sum",
                              fill_value=0.0)
    extra = sorted(c for c in table.columns if c not in CATEGORIES)
    table = table.reindex(columns=[*CATEGORIES, *extra], fill_value=0.0)
    totals = table.sum(axis=1)
    table = table[totals > 0]
    return table.div(totals[totals > 0], axis=0)


def feature_shares(attributions: pd.DataFrame) -> pd.DataFrame:
    """Rows: examples; columns: categories; the share of the example's features in each."""
    frame = attributions[["example_id", "category"]][np.isfinite(attributions["score"].to_numpy(float))]
    table = pd.crosstab(frame["example_id"], frame["category"]).astype(float)
    extra = sorted(c for c in table.columns if c not in CATEGORIES)
    table = table.reindex(columns=[*CATEGORIES, *extra], fill_value=0.0)
    return table.div(table.sum(axis=1), axis=0)


def enrichment(shares: pd.DataFrame, counts: pd.DataFrame, samples: int, confidence: float,
               seed: int) -> dict[str, dict]:
    """Per category: mean mass share ÷ mean feature share, with a bootstrap interval over examples.

    Only examples with attribution mass count (the rows of ``shares``); a category with no
    features in them has no enrichment (None).
    """
    counts = counts.reindex(index=shares.index, columns=shares.columns, fill_value=0.0)
    out = {}
    tail = (1 - confidence) / 2 * 100
    for i, c in enumerate(shares.columns):
        if len(shares) == 0 or counts[c].sum() == 0:
            out[c] = {"mean": None, "lo": None, "hi": None, "n": int(len(shares))}
            continue
        est, boot = resample_sizes(shares[[c]], [[c]], samples, seed + i, denominator=counts[[c]])
        dist = boot[:, 0][np.isfinite(boot[:, 0])]
        out[c] = {"mean": float(est[0]), "lo": float(np.percentile(dist, tail)),
                  "hi": float(np.percentile(dist, 100 - tail)), "n": int(len(shares))}
    return out
