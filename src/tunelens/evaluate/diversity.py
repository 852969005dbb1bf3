"""Diversity of sampled generations: distinct-n over all samples and self-BLEU within a prompt.

distinct-n (Li et al., 2016) is the number of distinct word n-grams over the number of n-grams,
pooled over every sample of every prompt. Self-BLEU (Zhu et al., 2018, Texygen) is the BLEU of each
sample against the other samples of the same prompt, averaged; high self-BLEU means the samples
repeat each other. sacrebleu computes each BLEU; the pooling is ours.

distinct-n gets a jackknife interval, not a bootstrap one: a bootstrap resample repeats some
prompts, and a repeated prompt adds n-grams but never new distinct ones, so every resample's
distinct-n sits below the real one and the percentile interval can miss the estimate entirely (the
bootstrap is known to fail for counts of distinct values). Leaving one prompt out at a time has no
such bias, and it is cheap here: what a prompt removes is the n-grams no other prompt has.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import sparse, stats

from tunelens.evaluate.bootstrap import Resampler
from tunelens.evaluate.metrics import sentence_bleu_multi, word_ngrams

DISTINCT_ORDERS = (1, 2)


@dataclass
class DistinctStats:
    """Which n-grams each example's samples contain, and how many n-grams they have in all."""

    incidence: sparse.csr_matrix  # (examples, distinct n-grams), 1 where present
    totals: np.ndarray  # (examples,), n-gram count with repeats

    @classmethod
    def from_samples(cls, samples: list[list[str]], n: int) -> DistinctStats:
        vocab: dict[tuple[str, ...], int] = {}
        rows, cols, totals = [], [], []
        for i, texts in enumerate(samples):
            seen: set[int] = set()
            total = 0
            for text in texts:
                tokens = text.split()
                total += max(len(tokens) - n + 1, 0)
                seen.update(vocab.setdefault(g, len(vocab)) for g in word_ngrams(text, n))
            rows.extend([i] * len(seen))
            cols.extend(seen)
            totals.append(total)
        incidence = sparse.csr_matrix(
            (np.ones(len(rows)), (rows, cols)), shape=(len(samples), max(len(vocab), 1))
        )
        return cls(incidence, np.asarray(totals, dtype=np.float64))

    def value(self) -> float | None:
        total = self.totals.sum()
        if total == 0:
            return None
        return float((self.incidence.getnnz(axis=0) > 0).sum() / total)

    def leave_one_out(self) -> np.ndarray:
        """distinct-n with each example left out in turn (NaN where nothing would be left)."""
        spread = self.incidence.getnnz(axis=0)  # in how many examples each n-gram occurs
        only_here = self.incidence @ (spread == 1).astype(np.float64)  # n-grams nobody else has
        distinct = (spread > 0).sum() - np.asarray(only_here).ravel()
        totals = self.totals.sum() - self.totals
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(totals > 0, distinct / totals, np.nan)

    def interval(self, confidence: float) -> tuple[float, float] | None:
        """Jackknife normal interval: value ± z · jackknife standard error."""
        values = self.leave_one_out()
        values = values[~np.isnan(values)]
        point = self.value()
        if point is None or values.size < 2:
            return None
        n = values.size
        se = np.sqrt((n - 1) / n * np.sum((values - values.mean()) ** 2))
        z = stats.norm.ppf(0.5 + confidence / 2)
        return float(point - z * se), float(point + z * se)


def self_bleu(samples: list[str]) -> float | None:
    """Mean BLEU (0-100) of each sample against the others; None with fewer than two samples."""
    if len(samples) < 2:
        return None
    scores = [
        sentence_bleu_multi(sample, samples[:j] + samples[j + 1:]) for j, sample in enumerate(samples)
    ]
    return float(np.mean(scores))


def diversity_metrics(samples: list[list[str]], resampler: Resampler) -> tuple[dict, dict, list]:
    """(aggregate values, their intervals, per-example self-BLEU) for prompts with samples."""
    aggregate: dict[str, float | None] = {}
    intervals: dict[str, tuple[float, float] | None] = {}
    for n in DISTINCT_ORDERS:
        stats = DistinctStats.from_samples(samples, n)
        aggregate[f"distinct_{n}"] = stats.value()
        intervals[f"distinct_{n}"] = stats.interval(resampler.confidence)
    per_example = [self_bleu(s) for s in samples]
    present = [v for v in per_example if v is not None]
    aggregate["self_bleu"] = float(np.mean(present)) if present else None
    intervals["self_bleu"] = resampler.mean(per_example) if present else None
    return aggregate, intervals, per_example
