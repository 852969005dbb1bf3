"""What is perturbed: features (tokens, words or character spans) and the baselines that replace them.

Captum's ``TextTokenInput``/``TextTemplateInput`` build one feature set per call and rebuild the
model input for every perturbation in Python; here a prompt is tokenized once, each feature is a
set of token positions, and a binary presence mask over features becomes the perturbed token ids
with one vectorised assignment. The perturbed ids also carry the first position that differs from
the unperturbed prompt, which is what lets the scorer reuse the unperturbed prefix's KV cache.

Positions of special tokens (BOS, chat markers, zero-width tokens added by the post-processor) are
never features, nor are tokens outside ``feature_window`` (e.g. the instruction template around a
clause): they stay in the input as fixed context.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from tunelens.errors import TunelensError, check_choice
from tunelens.explain import catalog

GRANULARITIES = tuple(catalog.GRANULARITIES)  # the names live in the catalog; the code here
BASELINES = tuple(catalog.BASELINES)


@dataclass
class Features:
    """One tokenized prompt split into features.

    ``groups[j]`` holds the token positions of feature j in ``input_ids``; ``spans[j]`` its
    (start, end) character offsets in the prompt; ``texts[j]`` the prompt text of that span.
    """

    input_ids: np.ndarray
    groups: list[np.ndarray]
    texts: list[str]
    spans: list[tuple[int, int]]
    token_offsets: np.ndarray
    special: np.ndarray
    window_first: int = 0

    def __len__(self) -> int:
        return len(self.groups)

    def fit(self, budget: int | None) -> tuple[Features, int]:
        """These features in at most ``budget`` tokens, and the characters cut to get there.

        The rule of :mod:`tunelens.models.context`: context is cut from the left, after the
        leading special tokens (BOS). Only context before the feature window may go; when even
        that is not enough the prompt does not fit, a one-line error (the caller names it).
        """
        excess = len(self.input_ids) - budget if budget is not None else 0
        if excess <= 0:
            return self, 0
        lead = int(np.argmin(self.special)) if not self.special.all() else len(self.special)
        if lead + excess > self.window_first:
            raise TunelensError(
                f"the prompt's features need {len(self.input_ids) - self.window_first + lead} "
                f"tokens with what follows them, more than the {budget} the model's context leaves "
                "beside the target"
            )
        keep = np.r_[0:lead, lead + excess:len(self.input_ids)]
        lead_end = int(self.token_offsets[:lead, 1].max()) if lead else 0
        cut = int(self.token_offsets[lead + excess, 0]) - lead_end
        fitted = Features(self.input_ids[keep], [g - excess for g in self.groups], self.texts,
                          self.spans, self.token_offsets[keep], self.special[keep],
                          self.window_first - excess)
        return fitted, cut

    @property
    def first_positions(self) -> np.ndarray:
        return np.array([g.min() if len(g) else len(self.input_ids) for g in self.groups], dtype=np.int64)


def tokenize(tokenizer, prompt: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, char offsets, special-token flags) of ``prompt`` as the model sees it.

    Special tokens are added (BOS, as Captum's ``TextTokenInput`` and generation do) unless the
    text already starts with the BOS token, as a rendered chat template does.
    """
    if not getattr(tokenizer, "is_fast", False):
        raise TunelensError(
            f"{type(tokenizer).__name__}: attribution needs a fast tokenizer (character offsets)"
        )
    bos = getattr(tokenizer, "bos_token", None)
    add_special = not (isinstance(bos, str) and bos and prompt.startswith(bos))
    enc = tokenizer(prompt, return_offsets_mapping=True, add_special_tokens=add_special)
    ids = np.asarray(enc["input_ids"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
    special_ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    special = np.array([int(i) in special_ids for i in ids], dtype=bool)
    special |= offsets[:, 0] == offsets[:, 1]
    return ids, offsets, special


def build_features(tokenizer, prompt: str, granularity: str = "token",
                   spans: list[tuple[int, int]] | None = None,
                   feature_window: tuple[int, int] | None = None) -> Features:
    """Split ``prompt`` into features of the given granularity (see the module docstring)."""
    if not prompt:
        raise TunelensError("empty prompt: nothing to attribute")
    check_granularity(granularity)
    ids, offsets, special = tokenize(tokenizer, prompt)
    if feature_window is None:
        lo, hi = 0, len(prompt)
    else:
        lo, hi = (int(v) for v in feature_window)
        if not 0 <= lo < hi <= len(prompt):
            raise TunelensError(
                f"feature_window {feature_window} is not a non-empty range inside the prompt "
                f"(length {len(prompt)})"
            )
    inside = ~special & (offsets[:, 0] < hi) & (offsets[:, 1] > lo)
    if granularity == "token":
        positions = np.flatnonzero(inside)
        groups = [np.array([p]) for p in positions]
        char_spans = [(int(offsets[p, 0]), int(offsets[p, 1])) for p in positions]
    elif granularity == "word":
        groups, char_spans = _words(prompt, offsets, inside, lo, hi)
    else:
        if spans is None:
            raise TunelensError("granularity 'span' needs spans: a list of (start, end) per prompt")
        groups, char_spans = _spans(prompt, offsets, inside, spans)
    if not groups:
        raise TunelensError(f"prompt has no {granularity} features to attribute: {prompt[:60]!r}")
    texts = [prompt[s:e] for s, e in char_spans]
    return Features(ids, groups, texts, char_spans, offsets, special, int(np.argmax(inside)))


def check_granularity(granularity: str) -> None:
    check_choice(granularity, GRANULARITIES, "unknown granularity")


def _stripped(prompt: str, start: int, end: int) -> tuple[int, int]:
    while start < end and prompt[start].isspace():
        start += 1
    while end > start and prompt[end - 1].isspace():
        end -= 1
    return start, end


def _words(prompt, offsets, inside, lo, hi):
    """Group sub-word tokens by the whitespace-delimited word holding their first visible character.

    Tokens made only of whitespace belong to no word: they stay as context, like separators.
    """
    word_of = np.full(len(prompt) + 1, -1, dtype=np.int64)
    words = []
    for m in re.finditer(r"\S+", prompt[lo:hi]):
        word_of[lo + m.start():lo + m.end()] = len(words)
        words.append((lo + m.start(), lo + m.end()))
    members: dict[int, list[int]] = {}
    for pos in np.flatnonzero(inside):
        s, e = _stripped(prompt, int(offsets[pos, 0]), int(offsets[pos, 1]))
        if s < e and word_of[s] >= 0:
            members.setdefault(int(word_of[s]), []).append(int(pos))
    order = sorted(members)
    return [np.array(members[w]) for w in order], [words[w] for w in order]


def _spans(prompt, offsets, inside, spans):
    """One feature per given span; a token goes to the span it overlaps most (ties: the first)."""
    clean = []
    for span in spans:
        try:
            s, e = (int(v) for v in span)
        except (TypeError, ValueError):
            raise TunelensError(f"span {span!r} is not a (start, end) pair") from None
        if not 0 <= s < e <= len(prompt):
            raise TunelensError(f"span ({s}, {e}) is empty or outside the prompt (length {len(prompt)})")
        clean.append((s, e))
    if not clean:
        raise TunelensError("granularity 'span' got an empty list of spans")
    members: list[list[int]] = [[] for _ in clean]
    for pos in np.flatnonzero(inside):
        ts, te = int(offsets[pos, 0]), int(offsets[pos, 1])
        overlaps = [min(te, e) - max(ts, s) for s, e in clean]
        best = int(np.argmax(overlaps))
        if overlaps[best] > 0:
            members[best].append(int(pos))
    for (s, e), m in zip(clean, members, strict=True):
        if not m:
            raise TunelensError(f"span ({s}, {e}) {prompt[s:e]!r} covers no token of the prompt")
    return [np.array(m) for m in members], clean


# Neutral replacements of the 'auto' baseline when the tokenizer has no usable unk or pad: the
# token of one space, else of one full stop (the name recorded, the text encoded).
NEUTRAL = {"space": " ", "period": "."}


@dataclass(frozen=True)
class Baseline:
    """The baseline that actually runs: ``name`` (unk, pad, mask, space, period, delete, sample),
    its token id and text (None for delete and sample), and the name that was asked for."""

    name: str
    token_id: int | None
    text: str | None
    asked: str

    def describe(self) -> str:
        """``auto → space (' ')`` style: what ran, and that auto chose it."""
        shown = self.name if self.text is None else f"{self.name} ({self.text!r})"
        return f"auto → {shown}" if self.asked == "auto" else shown


def resolve_baseline(tokenizer, baseline: str) -> Baseline:
    """The baseline ``baseline`` means for this tokenizer (``auto`` resolved; see the rule below).

    ``auto``: the unk token when the tokenizer has one, else its pad token, else the neutral
    token of :data:`NEUTRAL` (a space, else a full stop). An unk or pad that is really EOS or BOS
    does not count: byte-level BPE tokenizers (GPT-2) name ``<|endoftext|>`` as unk, and pad
    defaults to EOS for tokenizers without one (SmolLM2's pad is its end-of-turn token); an
    end-of-text marker in the middle of a clause is a strong signal, not an absence. A space has
    no content of its own and is one token in byte-level BPE, SentencePiece and tiktoken-style
    vocabularies alike.
    """
    if baseline not in NEUTRAL:
        check_choice(baseline, BASELINES, "unknown baseline")
    if baseline in ("delete", "sample"):
        return Baseline(baseline, None, None, baseline)
    if baseline in NEUTRAL:
        return _neutral(tokenizer, baseline, baseline)
    if baseline != "auto":
        token_id = getattr(tokenizer, f"{baseline}_token_id", None)
        if token_id is None:
            raise TunelensError(
                f"tokenizer {type(tokenizer).__name__} has no {baseline} token; use another baseline "
                f"({', '.join(BASELINES)})"
            )
        return Baseline(baseline, int(token_id), getattr(tokenizer, f"{baseline}_token"), baseline)
    markers = {getattr(tokenizer, "eos_token_id", None), getattr(tokenizer, "bos_token_id", None)}
    for name in ("unk", "pad"):
        token_id = getattr(tokenizer, f"{name}_token_id", None)
        if token_id is not None and token_id not in markers:
            return Baseline(name, int(token_id), getattr(tokenizer, f"{name}_token"), "auto")
    for name in NEUTRAL:
        try:
            return _neutral(tokenizer, name, "auto")
        except TunelensError:
            continue
    raise TunelensError(f"tokenizer {type(tokenizer).__name__}: baseline auto found no unk, no pad "
                        "and no single-token space or full stop; use baseline delete or sample")


def _neutral(tokenizer, name: str, asked: str) -> Baseline:
    ids = tokenizer(NEUTRAL[name], add_special_tokens=False)["input_ids"]
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    if len(ids) != 1 or ids[0] in special:
        raise TunelensError(f"tokenizer {type(tokenizer).__name__}: {NEUTRAL[name]!r} is not one "
                            "ordinary token")
    return Baseline(name, int(ids[0]), NEUTRAL[name], asked)


def baseline_token(tokenizer, baseline: str) -> int | None:
    """The replacement token id of a fixed-token baseline; None for 'delete' and 'sample'."""
    return resolve_baseline(tokenizer, baseline).token_id


def sample_replacements(tokenizer, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` token ids drawn uniformly from the vocabulary without special tokens."""
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    vocab = np.array([i for i in range(len(tokenizer)) if i not in special], dtype=np.int64)
    return rng.choice(vocab, size=n)


class Perturber:
    """Turns presence masks over features into perturbed token ids.

    ``replacement`` is one token id per position of the prompt (a fixed baseline broadcast, or
    sampled tokens), or None for deletion, where absent tokens are removed and later ones shift.
    """

    def __init__(self, features: Features, replacement: np.ndarray | None):
        self.features = features
        self.replacement = replacement
        n = len(features.input_ids)
        self._membership = np.zeros((len(features), n), dtype=bool)
        for j, g in enumerate(features.groups):
            self._membership[j, g] = True
        self._first = features.first_positions

    def __call__(self, masks: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """(perturbed ids per mask, first perturbed position per mask) for masks [n, features]."""
        masks = np.asarray(masks, dtype=bool)
        absent_tokens = (~masks).astype(np.int64) @ self._membership.astype(np.int64) > 0
        n_tok = len(self.features.input_ids)
        first = np.where(~masks, self._first[None, :], n_tok).min(axis=1)
        base = self.features.input_ids
        if self.replacement is None:
            return [base[~a] for a in absent_tokens], first
        out = np.where(absent_tokens, self.replacement[None, :], base[None, :])
        return list(out), first
