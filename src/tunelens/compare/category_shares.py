"""Where the attribution mass goes: the share of |score| per token category, per example.

Shares are computed per example and then averaged, so every example weighs the same whatever its
length; an example's shares sum to 1. Categories not in the fixed list are kept under their own
name, so nothing silently disappears.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
