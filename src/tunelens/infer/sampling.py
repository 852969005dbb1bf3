"""Decoding controls: our :class:`GenerationConfig` as transformers settings, and stop strings.

transformers does the decoding (greedy, temperature, top-p, top-k, repetition penalty, n samples
per prompt). Stop strings are ours because transformers' ``StopStringCriteria`` matches the end
of the *whole* sequence, prompt included: the plain template ends with a newline, so the default
stop ``"\\n\\n"`` would fire on the first generated newline. :class:`StopCriteria` looks only at
generated text, records where each row finished (for honest token counts), and lets ``generate``
end the batch as soon as every row has hit EOS or a stop string.
"""

from __future__ import annotations

import torch
from transformers import GenerationConfig as HFGenerationConfig
from transformers import StoppingCriteria

from tunelens.config import GenerationConfig


def hf_generation_config(config: GenerationConfig, tokenizer, model) -> HFGenerationConfig:
    """Every decoding setting explicit, so a checkpoint's own defaults (top_k=50, ...) never leak in."""
    eos = eos_token_ids(tokenizer, model)
    kwargs: dict = {
        "max_new_tokens": config.max_new_tokens,
        "do_sample": config.do_sample,
        "repetition_penalty": config.repetition_penalty,
        "num_return_sequences": config.num_samples,
        "pad_token_id": tokenizer.pad_token_id,
        "eos_token_id": eos or None,
        "use_cache": True,
    }
    if config.do_sample:
        kwargs.update(temperature=config.temperature, top_p=config.top_p, top_k=config.top_k)
    return HFGenerationConfig(**kwargs)


def eos_token_ids(tokenizer, model) -> list[int]:
    """EOS ids from the model's generation config (chat models list several) and the tokenizer."""
    ids: list[int] = []
    gen_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for value in (gen_eos, tokenizer.eos_token_id):
        if value is None:
            continue
        for i in value if isinstance(value, list | tuple) else [value]:
            if i not in ids:
                ids.append(int(i))
    return ids


def truncate_at_stop(text: str, stops: list[str]) -> str:
    """Cut ``text`` at the earliest occurrence of any stop string (the stop itself dropped)."""
    cut = len(text)
    for stop in stops:
        if stop:
            at = text.find(stop)
            if at != -1:
                cut = min(cut, at)
    return text[:cut]


class StopCriteria(StoppingCriteria):
    """Per-row stop on EOS or on a stop string in the *generated* text only.

    ``lengths[i]`` is how many tokens row ``i`` generated up to and including the token that
    finished it (or all of them if it never finished). Left padding makes every row's generated
    part start at the same column, ``prompt_len``.
    """

    def __init__(self, tokenizer, stops: list[str], prompt_len: int, eos_ids: list[int]):
        self.tokenizer = tokenizer
        self.stops = [s for s in stops if s]
        self.prompt_len = prompt_len
        self.eos_ids = torch.tensor(eos_ids or [-1], dtype=torch.long)
        self.done: torch.Tensor | None = None
        self.lengths: torch.Tensor | None = None

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        generated = input_ids[:, self.prompt_len:]
        steps = generated.shape[1]
        if self.done is None:
            self.done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
            self.lengths = torch.zeros(input_ids.shape[0], dtype=torch.long)
        open_rows = ~self.done
        hit = torch.isin(generated[:, -1].cpu(), self.eos_ids) & open_rows
        if self.stops:
            candidates = (open_rows & ~hit).nonzero().flatten().tolist()
            if candidates:
                texts = self.tokenizer.batch_decode(generated[candidates].tolist(),
                                                    skip_special_tokens=True)
                for row, text in zip(candidates, texts, strict=True):
                    if any(stop in text for stop in self.stops):
                        hit[row] = True
        self.lengths[hit] = steps
        self.done |= hit
        return self.done.to(input_ids.device).clone()

    def final_lengths(self, steps: int) -> torch.Tensor:
        """Lengths after ``generate`` returned ``steps`` new columns; unfinished rows used them all."""
        if self.lengths is None:
            raise RuntimeError("generate never called the stopping criterion")
        return torch.where(self.done, self.lengths, torch.full_like(self.lengths, steps))
