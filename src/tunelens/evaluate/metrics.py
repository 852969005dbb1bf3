"""Text metrics of predictions against references: per example, and the statistics bootstrap needs.

BLEU and chrF come from sacrebleu and ROUGE from rouge-score, called the documented way so our
numbers are theirs. What sacrebleu offers for resampling is per-sentence *sufficient statistics*
(n-gram match counts): we keep them so the bootstrap can re-sum them per resample and let sacrebleu
turn each sum into a corpus score, instead of re-tokenising the corpus a thousand times. Word
n-gram Jaccard and whitespace-normalised exact match are a few lines each and have no library home.

Private API, pinned: the statistics come from ``Metric._extract_corpus_statistics`` and are scored
by ``Metric._compute_score_from_stats`` — the two methods sacrebleu's own paired bootstrap uses.
They are private: BLEU has a public ``BLEU.compute_bleu`` but chrF has no public counterpart, and
the public alternative (``corpus_score`` on every resampled corpus) re-tokenises the corpus a
thousand times. Every use goes through :func:`sacrebleu_private`, which fails with one clear
line naming the sacrebleu version if a release moves them, and ``tests/test_evaluate.py``
(``test_sacrebleu_private_api_is_pinned``) fails loudly on such a release before any user does.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

JACCARD_ORDERS = (1, 2, 3, 4)
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


@functools.lru_cache(maxsize=1)
def _bleu_corpus():
    from sacrebleu.metrics import BLEU

    return BLEU()


@functools.lru_cache(maxsize=1)
def _bleu_sentence():
    from sacrebleu.metrics import BLEU

    # sacrebleu's sentence_bleu() default: orders with no n-grams at all are left out.
    return BLEU(effective_order=True)


@functools.lru_cache(maxsize=1)
def _chrf():
    from sacrebleu.metrics import CHRF

    return CHRF()


@functools.lru_cache(maxsize=1)
def _rouge():
    from rouge_score import rouge_scorer

    # No stemming: rules and code are not English prose, and Porter stemming would merge
    # identifiers ("heights" / "height") that a rule checker treats as different.
    return rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)


SACREBLEU_PRIVATE = ("_extract_corpus_statistics", "_compute_score_from_stats")


def sacrebleu_private(metric, name: str):
    """``metric.<name>``, one of :data:`SACREBLEU_PRIVATE`, or a clear error if sacrebleu moved it."""
    method = getattr(metric, name, None)
    if not callable(method):
        import sacrebleu

        raise RuntimeError(
            f"sacrebleu {sacrebleu.__version__} has no {type(metric).__name__}.{name}: tunelens "
            "scores bootstrap resamples with this private sacrebleu method (see "
            "tunelens/evaluate/metrics.py); install a sacrebleu 2.x that has it")
    return method


@dataclass
class CorpusStats:
    """Per-example sufficient statistics of a corpus-level metric, and how to score a sum of them."""

    name: str
    stats: np.ndarray  # (examples, d), float64
    metric: object  # a sacrebleu metric
    sentence_metric: object  # the same metric as sacrebleu's sentence-level functions set it up

    def score(self, summed: np.ndarray) -> float:
        """The corpus score of already-summed statistics (one resample, or the whole corpus)."""
        # _compute_score_from_stats is how sacrebleu's own bootstrap scores resamples.
        return float(sacrebleu_private(self.metric, "_compute_score_from_stats")(list(summed)).score)

    def corpus_score(self) -> float:
        return self.score(self.stats.sum(axis=0))

    def sentence_scores(self) -> np.ndarray:
        """Each example's sentence-level score, from its own row (what sentence_score computes)."""
        compute = sacrebleu_private(self.sentence_metric, "_compute_score_from_stats")
        return np.array([compute(list(row)).score for row in self.stats])


def corpus_stats(predictions: list[str], references: list[str],
                 names: tuple[str, ...] = ("bleu", "chrf")) -> dict[str, CorpusStats]:
    """Sentence statistics of BLEU and chrF, one row per example (single reference each)."""
    out = {}
    metrics = {"bleu": (_bleu_corpus, _bleu_sentence), "chrf": (_chrf, _chrf)}
    for name in names:
        corpus, sentence = (make() for make in metrics[name])
        stats = sacrebleu_private(corpus, "_extract_corpus_statistics")(predictions, [references])
        out[name] = CorpusStats(name, np.asarray(stats, dtype=np.float64), corpus, sentence)
    return out


def sentence_bleu_multi(prediction: str, references: list[str]) -> float:
    return float(_bleu_sentence().sentence_score(prediction, references).score)


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1/2/L F-measures (rouge-score's argument order is target, prediction)."""
    scores = _rouge().score(reference, prediction)
    return {name: float(scores[name].fmeasure) for name in ROUGE_TYPES}


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    tokens = text.split()
    return {tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)}


def ngram_jaccard(prediction: str, reference: str, orders=JACCARD_ORDERS) -> float:
    """Mean over n of |A∩B| / |A∪B| for the word n-gram sets of both texts.

    Orders that neither text is long enough to have are left out of the mean (two one-word texts
    are compared on unigrams only); two empty texts are identical and score 1.
    """
    values = []
    for n in orders:
        a, b = word_ngrams(prediction, n), word_ngrams(reference, n)
        union = a | b
        if union:
            values.append(len(a & b) / len(union))
    if not values:
        return 1.0 if normalise_whitespace(prediction) == normalise_whitespace(reference) else 0.0
    return float(np.mean(values))


def normalise_whitespace(text: str) -> str:
    return " ".join(text.split())


def exact_match(prediction: str, reference: str) -> float:
    return float(normalise_whitespace(prediction) == normalise_whitespace(reference))


def semantic_similarity(predictions: list[str], references: list[str],
                        model_path: str | None = None) -> np.ndarray:
    """Cosine similarity of sentence embeddings (all-MiniLM-L6-v2 by default), one per pair."""
    p = _embedded(tuple(predictions), model_path)
    r = _embedded_references(tuple(references), model_path)
    return np.clip(np.einsum("ij,ij->i", p, r).astype(np.float64), -1.0, 1.0)


def _embedded(texts: tuple[str, ...], model_path: str | None) -> np.ndarray:
    """One row per text, each distinct text embedded once. A text's vector depends (in the last
    bits) on the batch it was padded with, so a list is always embedded on its own: the same
    list gives the same vectors whatever was embedded before."""
    from tunelens.models.embeddings import embed

    distinct = list(dict.fromkeys(texts))
    index = {t: i for i, t in enumerate(distinct)}
    return embed(distinct, path=model_path)[[index[t] for t in texts]]


@functools.lru_cache(maxsize=4)
def _embedded_references(texts: tuple[str, ...], model_path: str | None) -> np.ndarray:
    """The references of a test split are the same for every run of a study: embedded once per
    process (read-only: the cached array is shared)."""
    vectors = _embedded(texts, model_path)
    vectors.flags.writeable = False
    return vectors


def text_metrics(predictions: list[str], references: list[str], embedding_model: str | None = None,
                 stats: dict[str, CorpusStats] | None = None) -> dict[str, np.ndarray]:
    """Every per-example text metric, as arrays aligned with the inputs.

    Sentence BLEU and chrF are read off the corpus statistics (``stats``, computed if not given)
    rather than tokenising every pair a second time.
    """
    stats = stats or corpus_stats(predictions, references)
    rows = [rouge(p, r) for p, r in zip(predictions, references, strict=True)]
    return {
        "bleu": stats["bleu"].sentence_scores(),
        "chrf": stats["chrf"].sentence_scores(),
        **{name: np.array([row[name] for row in rows]) for name in ROUGE_TYPES},
        "ngram_jaccard": np.array(
            [ngram_jaccard(p, r) for p, r in zip(predictions, references, strict=True)]
        ),
        "semantic_similarity": semantic_similarity(predictions, references, embedding_model),
        "exact_match": np.array(
            [exact_match(p, r) for p, r in zip(predictions, references, strict=True)]
        ),
    }
