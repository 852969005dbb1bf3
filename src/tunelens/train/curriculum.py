"""Curriculum ordering: present training examples easy-first instead of shuffled.

Neither TRL nor transformers orders data by difficulty (transformers' ``group_by_length`` groups
for padding, it does not order), so the ordering is ours; the trainer then reads the data in
order (``train_sampling_strategy="sequential"``). Difficulty is either the example's token length
or the base model's mean loss on its target tokens (the completion for ``instruct``, every token
for ``causal``), measured once before training.
"""

from __future__ import annotations

from tunelens.train.objectives import example_text


def order(examples: list[dict], how: str, tokenizer, model=None, batch_size: int = 8) -> list[dict]:
    """``examples`` (TRL-formatted) sorted easy-first by ``how`` ('none', 'length' or 'loss')."""
    if how == "none":
        return examples
    if how == "length":
        keys = [len(tokenizer(example_text(e))["input_ids"]) for e in examples]
    elif how == "loss":
        if model is None:
            raise ValueError("curriculum 'loss' needs the base model")
        keys = example_losses(model, tokenizer, examples, batch_size=batch_size)
    else:
        raise ValueError(f"unknown curriculum {how!r}")
    ranked = sorted(range(len(examples)), key=lambda i: (keys[i], i))
    return [examples[i] for i in ranked]


def example_losses(model, tokenizer, examples: list[dict], batch_size: int = 8,
                   max_length: int = 1024) -> list[float]:
    """Mean next-token loss of each example's target tokens under ``model`` (no gradients)."""
    import torch

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    losses: list[float] = []
    for start in range(0, len(examples), batch_size):
        batch = examples[start:start + batch_size]
        ids, targets = zip(*(_ids_and_targets(tokenizer, e, max_length) for e in batch), strict=True)
        width = max(len(x) for x in ids)
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        input_ids = torch.full((len(ids), width), pad, dtype=torch.long)
        labels = torch.full((len(ids), width), -100, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, (x, t) in enumerate(zip(ids, targets, strict=True)):
            input_ids[row, : len(x)] = torch.tensor(x)
            labels[row, : len(t)] = torch.tensor(t)
            mask[row, : len(x)] = 1
        with torch.no_grad():
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device)).logits.float()
        logp = torch.log_softmax(logits[:, :-1], dim=-1)
        gold = labels[:, 1:].to(device)
        keep = gold != -100
        nll = -logp.gather(-1, gold.clamp(min=0).unsqueeze(-1)).squeeze(-1) * keep
        losses.extend((nll.sum(1) / keep.sum(1).clamp(min=1)).tolist())
    model.train(was_training)
    return losses


def _ids_and_targets(tokenizer, example: dict, max_length: int) -> tuple[list[int], list[int]]:
    ids = tokenizer(example_text(example))["input_ids"][:max_length]
    if "text" in example:
        return ids, list(ids)
    n_prompt = len(tokenizer(example["prompt"])["input_ids"])
    return ids, [-100] * min(n_prompt, len(ids)) + ids[n_prompt:]
