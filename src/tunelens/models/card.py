"""The model card (README.md) written next to each ladder checkpoint.

A hub model comes with a card saying what it is and how it was trained; a ladder model gets the
same, so a folder copied out of a study still explains itself. The YAML header is the hub's
model-card metadata, so hub tooling reads it too.
"""

from __future__ import annotations


def model_card(spec, entry: dict, corpus: dict) -> str:
    """README.md of one rung: ``spec`` is its :class:`~tunelens.models.zoo.Preset`, ``entry`` its
    ladder entry, ``corpus`` the corpus summary of ladder.json."""
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [llama, tunelens, code-compliance, from-scratch]
---

# {entry['name']}

A {entry['params']:,}-parameter Llama-architecture causal language model, pre-trained from scratch
by `tunelens zoo build --preset {spec.name}` as one rung of a scale ladder. It is a research
fixture for studying fine-tuning, not a useful language model.

| | |
|---|---|
| parameters | {entry['params']:,} |
| layers / hidden / heads / MLP | {entry['num_layers']} / {entry['hidden_size']} / {entry['num_heads']} / \
{entry['intermediate_size']} |
| tokens seen | {entry['tokens_seen']:,} |
| optimiser steps | {entry['steps']} (batch {spec.batch_size} x {spec.block_size} tokens) |
| peak learning rate | {entry['learning_rate']} (AdamW, warmup + cosine, transformers Trainer) |
| final training loss | {entry['final_loss']} |
| training time | {entry['seconds']} s |
| tokenizer | byte-level BPE, {spec.vocab_size} tokens, trained on the same corpus |
| max context | {spec.max_positions} tokens |
| seed | {spec.seed} |

## Training data

{corpus['source']}, non-holdout rows only ({corpus['clauses']} unique
clauses and {corpus['rules']} unique rules; {corpus['holdout_rows_excluded']} holdout rows
excluded; corpus fingerprint `{corpus['fingerprint']}`). Clauses and rules were
seen as separate documents, never as pairs, so the clause-to-rule mapping is left to fine-tuning.

## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained("path/to/{entry['name']}")
tokenizer = AutoTokenizer.from_pretrained("path/to/{entry['name']}")
```
"""
