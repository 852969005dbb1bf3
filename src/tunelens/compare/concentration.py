"""How concentrated one example's attribution is: Gini, normalised entropy, top-k mass.

All three look at |score|, the size of a feature's effect whatever its sign, so a run that leans
hard on two tokens (pushing the target up or down) reads as concentrated. They are a few lines of
numpy each; no maintained library computes them on one vector without pulling in a framework
(scikit-learn has none of them, and the inequality packages on PyPI are unmaintained).

Conventions: Gini is the usual mean-absolute-difference form, 0 for a uniform vector and
(n-1)/n for a one-hot one; entropy is divided by log(n) so it runs from 0 (one-hot) to 1
(uniform). An example whose scores are all zero has no distribution and yields NaN, and is left
out of every comparison rather than counted as "uniform".

Comparable across models. The Gini of pure noise grows with the number of features (i.i.d.
exponential scores: 0.44 at n=8, 0.49 at n=40), so a model whose tokenizer cuts a clause into
more pieces looks "more concentrated". Two remedies, both on by default where they matter:

* ``gini_adjusted`` = observed Gini ÷ the Gini expected for ``n`` exchangeable scores. The null
  is i.i.d. exponential |scores|, for which the expected sample Gini is exactly (n-1)/(2n)
  (David, 1968; the exponential is the maximum-entropy law of a positive score of given mean).
  1 means "as concentrated as noise of that length", 2 twice that. We do not simulate the null
  from the run's own pooled scores: a run that always puts its mass on two tokens has a heavy
  tailed pool, and the null drawn from it would absorb the very concentration being measured.
* word-level features (:func:`to_words`): token rows merged into words by their character spans,
  scores summed, used whenever the runs compared differ in tokenizer (compare decides).

Attributions that record a ``target`` (``reference`` or ``generation``) are measured on the
reference rows, or on the generation rows in a study that explained only those
(:func:`tunelens.compare.targets.main_target`); a table without the column is all reference.
:mod:`tunelens.compare.targets` compares the two targets.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

METRICS = ("gini", "entropy", "top_k_share")
EXTRA_METRICS = ("gini_adjusted",)  # per example too, but not one of the classic three


def expected_gini(n: int) -> float:
    """Expected sample Gini of ``n`` i.i.d. exponential scores: (n-1)/(2n); NaN below 2."""
    return float("nan") if n < 2 else (n - 1) / (2.0 * n)


def gini_adjusted(values) -> float:
    """Gini ÷ its expectation under exchangeable (i.i.d. exponential) scores of the same count."""
    x = np.asarray(values, dtype=float)
    return gini(x) / expected_gini(x.size) if x.size >= 2 else float("nan")


def to_words(attributions: pd.DataFrame) -> pd.DataFrame:
    """Token rows merged into words: a word ends where the next token's span does not start at
    its end (a space between), or the next token starts with a space marker. Scores are summed
    (a word's effect is its tokens' joint effect, to first order); the category is the word's
    most frequent non-OTHER one, else OTHER. Without spans, every token is its own word."""
    if not {"start", "end"} <= set(attributions.columns):
        return attributions
    frame = attributions.sort_values(["example_id", "position"]).reset_index(drop=True)
    start = pd.to_numeric(frame["start"], errors="coerce")
    end = pd.to_numeric(frame["end"], errors="coerce")
    token = frame["token"].astype(str) if "token" in frame.columns else pd.Series("", index=frame.index)
    same_example = frame["example_id"].eq(frame["example_id"].shift())
    glued = start.eq(end.shift()) & ~token.str.match(r"^(\s|Ġ|▁)")
    frame["word"] = (~(same_example & glued)).cumsum()
    words = frame.groupby("word", sort=True).agg(
        example_id=("example_id", "first"), position=("position", "first"), score=("score", "sum"),
        start=("start", "min"), end=("end", "max"))
    named = frame[frame["category"] != "OTHER"].groupby(["word", "category"]).size()
    top = named.sort_values(ascending=False, kind="stable").reset_index().drop_duplicates("word")
    words["category"] = top.set_index("word")["category"].reindex(words.index).fillna("OTHER")
    return words.reset_index(drop=True)


def gini(values) -> float:
    x = np.sort(np.abs(np.asarray(values, dtype=float)))
    n, total = x.size, x.sum()
    if n == 0 or not np.isfinite(total) or total <= 0:
        return float("nan")
    ranks = np.arange(1, n + 1)
    return float(2.0 * np.sum(ranks * x) / (n * total) - (n + 1) / n)


def normalised_entropy(values) -> float:
    x = np.abs(np.asarray(values, dtype=float))
    n, total = x.size, x.sum()
    if n < 2 or not np.isfinite(total) or total <= 0:
        return float("nan")
    p = x[x > 0] / total
    return float(-np.sum(p * np.log(p)) / np.log(n))


def top_k_share(values, k: int) -> float:
    x = np.abs(np.asarray(values, dtype=float))
    total = x.sum()
    if x.size == 0 or not np.isfinite(total) or total <= 0:
        return float("nan")
    return float(np.sort(x)[::-1][:k].sum() / total)


def per_example(attributions: pd.DataFrame, top_k: int) -> pd.DataFrame:
    """One row per example of one run: its concentration numbers and feature count."""
    rows = []
    for example_id, group in attributions.groupby("example_id", sort=True):
        s = group["score"].to_numpy(dtype=float)
        s = s[np.isfinite(s)]
        rows.append({"example_id": example_id, "gini": gini(s), "entropy": normalised_entropy(s),
                     "top_k_share": top_k_share(s, top_k), "gini_adjusted": gini_adjusted(s),
                     "n_features": int(s.size)})
    frame = pd.DataFrame(rows, columns=["example_id", *METRICS, *EXTRA_METRICS, "n_features"])
    return frame.set_index("example_id")
