"""One rule for prompts longer than a model's context window, shared by generate, explain and serve.

A model reads at most ``context_length(model)`` positions (``max_position_embeddings``). Past it,
generation does not fail: it runs attention over every token, position embeddings past their
range, for minutes (a 5 MB prompt ran past two minutes before this rule). So every stage that
feeds a model asks for a token budget first — the context less what it adds after the prompt
(``max_new_tokens`` for generation, the target's tokens for attribution) — and fits the prompt
into it the same way:

* Cut from the LEFT: the end of a prompt (the clause, the ``### Rule:`` cue or the chat
  template's generation prompt) is what the next token depends on; the instruction and retrieved
  examples at the start are what a short context can best lose.
* Leading special tokens (BOS, a chat template's first marker) are kept: the model was trained
  with them in front.
* The count is reported, never silent: :func:`warn_truncated` warns once per call with the number
  of prompts cut, and each :class:`Fitted` says how many characters of its text the model did not
  see (exact, from the tokenizer's offsets).

Why not the tokenizer's own ``truncation_side="left"``: a fast tokenizer tokenizes the *whole*
text before truncating (7 s for 5 MB), so :class:`PromptFitter` tokenizes only a tail of the text
long enough to hold the budget — no token is longer than the vocabulary's longest entry, so
``(budget + 2) x`` that many characters always suffice; the loop widens the tail if a normalizer
ever proves that bound wrong.
"""

from __future__ import annotations

import functools
import warnings
from dataclasses import dataclass

from tunelens.errors import TunelensError

# Config fields that hold the context length, by model family (the first present wins).
_LENGTH_FIELDS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length", "n_ctx")
_HEAD_CHARS = 256  # enough text to see a template's leading special tokens


def context_length(model) -> int | None:
    """Positions the model reads (``max_position_embeddings`` or its family's name); None if unknown."""
    config = getattr(model, "config", model)
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    for name in _LENGTH_FIELDS:
        value = getattr(text, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def prompt_budget(model, reserve: int, what: str = "max_new_tokens") -> int | None:
    """Tokens a prompt may use: the context less ``reserve`` (None when the length is unknown)."""
    length = context_length(model)
    if length is None:
        return None
    if reserve >= length:
        raise TunelensError(f"{what} ({reserve} tokens) leaves no room for a prompt in the model's "
                            f"context ({length} tokens)")
    return length - reserve


@functools.lru_cache(maxsize=4)
def longest_token_chars(tokenizer) -> int:
    """Characters of the vocabulary's longest entry: no token covers more of a text than that."""
    return max((len(t) for t in tokenizer.get_vocab()), default=1) or 1


def min_tokens(tokenizer, text: str) -> int:
    """A lower bound on the tokens of ``text``, without tokenizing it (seconds for megabytes)."""
    return -(-len(text) // longest_token_chars(tokenizer))


@dataclass
class Fitted:
    """A prompt's token ids within the budget, and how many characters of its text were cut."""

    ids: list[int]
    truncated_chars: int = 0


class PromptFitter:
    """Tokenizes prompts into at most ``budget`` ids, cutting from the left (module docstring)."""

    def __init__(self, tokenizer, budget: int | None, add_special_tokens: bool = True):
        self.tokenizer = tokenizer
        self.budget = budget
        self.add_special_tokens = add_special_tokens
        self.special = set(getattr(tokenizer, "all_special_ids", None) or [])
        self.fast = bool(getattr(tokenizer, "is_fast", False))
        self.window = (budget + 2) * longest_token_chars(tokenizer) if budget else 0

    def __call__(self, text: str) -> Fitted:
        if self.budget is None or len(text) <= self.window or not self.fast:
            ids = self.tokenizer(text, add_special_tokens=self.add_special_tokens)["input_ids"]
            if self.budget is None or len(ids) <= self.budget:
                return Fitted(list(ids))
            if not self.fast:
                return self._cut_ids(list(ids))
        return self._cut_text(text)

    def _lead(self, text: str) -> tuple[list[int], int]:
        """Leading special ids of ``text`` as encoded, and the character where they end."""
        enc = self.tokenizer(text[:_HEAD_CHARS], add_special_tokens=self.add_special_tokens,
                             return_offsets_mapping=True)
        ids, end = [], 0
        for i, (_, stop) in zip(enc["input_ids"], enc["offset_mapping"], strict=True):
            if i not in self.special:
                break
            ids.append(int(i))
            end = max(end, int(stop))
        return ids, end

    def _cut_text(self, text: str) -> Fitted:
        lead, lead_end = self._lead(text)
        room = self._room(lead)
        start = max(lead_end, len(text) - self.window)
        while True:
            enc = self.tokenizer(text[start:], add_special_tokens=False, return_offsets_mapping=True)
            ids = enc["input_ids"]
            # one token more than the room: the first token of a cut tail may be half a word
            if start == lead_end or len(ids) > room:
                break
            start = max(lead_end, len(text) - 2 * (len(text) - start))
        if len(ids) <= room:
            return Fitted(lead + list(ids))
        kept_from = start + int(enc["offset_mapping"][-room][0])
        return Fitted(lead + list(ids[-room:]), truncated_chars=kept_from - lead_end)

    def _cut_ids(self, ids: list[int]) -> Fitted:
        """Slow tokenizers (no offsets): the whole text was tokenized; count the cut by decoding."""
        n_lead = next((n for n, i in enumerate(ids) if i not in self.special), len(ids))
        room = self._room(ids[:n_lead])
        dropped = ids[n_lead:len(ids) - room]
        return Fitted(ids[:n_lead] + ids[len(ids) - room:],
                      truncated_chars=len(self.tokenizer.decode(dropped)))

    def _room(self, lead: list[int]) -> int:
        room = self.budget - len(lead)
        if room < 1:
            raise TunelensError(f"a prompt budget of {self.budget} tokens holds nothing but special tokens")
        return room


def fit_to_context(tokenizer, texts: list[str], budget: int | None,
                   add_special_tokens: bool = True) -> list[Fitted]:
    """Every text fitted into ``budget`` tokens, with one warning counting those that were cut."""
    fitter = PromptFitter(tokenizer, budget, add_special_tokens)
    fitted = [fitter(t) for t in texts]
    warn_truncated(sum(f.truncated_chars > 0 for f in fitted), len(texts))
    return fitted


class ContextWarning(UserWarning):
    """Some prompts were cut to fit the context (a caller that warns itself may filter these)."""


def warn_truncated(cut: int, total: int, what: str = "prompts") -> None:
    """The one warning (per call, not per prompt) that some prompts lost their beginning."""
    if cut:
        warnings.warn(f"{cut} of {total} {what} did not fit the model's context and lost their "
                      "beginning; 'truncated_chars' says how much", ContextWarning, stacklevel=3)
