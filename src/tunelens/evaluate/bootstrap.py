"""Percentile bootstrap intervals for every aggregate, from one shared set of resamples.

Why not scipy.stats.bootstrap: it resamples one statistic at a time, while here a dozen metrics
(means, corpus BLEU/chrF) must be resampled over the *same* draws of examples, so the
intervals are paired and the expensive parts run once. A resample is held as a row of counts (how
often each example was drawn; a multinomial draw is exactly that), so the sum of any per-example
quantity over all resamples is one matrix product.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

Interval = tuple[float, float]


class Resampler:
    """``samples`` bootstrap resamples of ``n`` examples, drawn once from ``seed``."""

    def __init__(self, n: int, samples: int = 1000, seed: int = 0, confidence: float = 0.95):
        if n < 1:
            raise ValueError("need at least one example to resample")
        self.n = n
        self.confidence = confidence
        rng = np.random.default_rng(seed)
        self.counts = rng.multinomial(n, np.full(n, 1.0 / n), size=samples).astype(np.float64)

    def interval(self, replicates: np.ndarray) -> Interval | None:
        """Percentile interval of replicate values; resamples where it is undefined (NaN) are dropped."""
        replicates = np.asarray(replicates, dtype=np.float64)
        replicates = replicates[~np.isnan(replicates)]
        if replicates.size == 0:
            return None
        tail = (1.0 - self.confidence) / 2.0 * 100.0
        lo, hi = np.percentile(replicates, [tail, 100.0 - tail])
        return float(lo), float(hi)

    def mean_replicates(self, values) -> np.ndarray:
        """The mean of ``values`` in every resample; ``None``/NaN entries (missing) are skipped."""
        values = np.array([np.nan if v is None else v for v in values], dtype=np.float64)
        present = ~np.isnan(values)
        counts = self.counts[:, present]
        drawn = counts.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(drawn > 0, counts @ values[present] / drawn, np.nan)

    def mean(self, values) -> Interval | None:
        return self.interval(self.mean_replicates(values))

    def summed(self, stats: np.ndarray) -> np.ndarray:
        """Per-example statistics (n, d) summed within every resample: (samples, d)."""
        return self.counts @ np.asarray(stats, dtype=np.float64)

    def corpus(self, stats: np.ndarray, score: Callable[[np.ndarray], float]) -> Interval | None:
        """Interval of a corpus-level metric scored from summed sufficient statistics."""
        return self.interval(np.array([score(row) for row in self.summed(stats)]))
