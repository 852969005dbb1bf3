"""Two perturbations per row: packed suffixes over the cached prefix, so batching wastes no work.

Why: with a prefix cache, perturbation p needs the body only on its suffix (positions p onwards),
but a padded batch computes every row to the batch's longest suffix, so rows that could reuse
more prefix recompute it (on SmolLM2 the scorer's best plan still computed ~25% more positions
than the exact work). Token occlusion's suffixes have complementary lengths: the one starting at
p and the one starting at L - 1 - p add up to the same width for every p, so pairing the longest
with the shortest fills every row exactly.

Each segment of a packed row sees its own prefix of the unperturbed cache (keys ``[0, p)``) and,
causally, its own new tokens, through a custom 4-D additive mask; its positions are given
explicitly (``position_ids``), so rotary or learned position embeddings see the true positions.
Transformers passes a 4-D mask through unchanged to eager and SDPA attention alike. The scorer
checks once per model that packed scores equal unpacked ones and otherwise keeps its plain plan.
No library packs rows against a shared KV prefix this way (``DataCollatorWithFlattening`` packs
whole sequences, without a cache), hence this module.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Packed:
    """Inputs of one packed forward pass and where each variant's predictions come out."""

    ids: torch.Tensor  # [rows, width]
    positions: torch.Tensor  # [rows, width]
    mask: torch.Tensor  # [rows, 1, width, prefix + width], 0 = attend, dtype min = masked
    prefix: int  # cached positions every row's keys start with
    gather_rows: torch.Tensor  # [variants, 1]: the packed row of each variant
    gather_cols: torch.Tensor  # [variants, targets]: the column predicting each target token


def pair_up(suffix_lengths: np.ndarray) -> tuple[list[list[int]], int]:
    """Rows of at most two variants (longest with shortest) and the common row width."""
    order = np.argsort(-suffix_lengths, kind="stable")
    n = len(order)
    width = int(suffix_lengths[order[0]] + (suffix_lengths[order[-1]] if n > 1 else 0))
    rows, i, j = [], 0, n - 1
    while i <= j:
        if i < j and suffix_lengths[order[i]] + suffix_lengths[order[j]] <= width:
            rows.append([int(order[i]), int(order[j])])
            j -= 1
        else:
            rows.append([int(order[i])])
        i += 1
    return rows, width


def pack(variants: list[np.ndarray], shared: np.ndarray, target: np.ndarray, rows: list[list[int]],
         width: int, pad_id: int, dtype: torch.dtype, device) -> Packed:
    """Build one packed batch: ``rows`` lists, per packed row, the variant indices it holds."""
    n_target = len(target)
    prefix = int(max(shared[i] for row in rows for i in row))
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    positions = np.zeros((len(rows), width), dtype=np.int64)
    allowed = np.zeros((len(rows), width, prefix + width), dtype=bool)
    allowed[:, :, 0] = True  # padding queries attend to something (no NaN rows)
    order = [i for row in rows for i in row]
    gather_rows = np.zeros(len(variants), dtype=np.int64)
    gather_cols = np.zeros((len(variants), n_target), dtype=np.int64)
    causal = np.tril(np.ones((width, width), dtype=bool))
    for r, row in enumerate(rows):
        offset = 0
        for i in row:
            p = int(shared[i])
            segment = np.concatenate([variants[i][p:], target[:-1]])
            n = len(segment)
            ids[r, offset:offset + n] = segment
            positions[r, offset:offset + n] = p + np.arange(n)
            allowed[r, offset:offset + n, 0] = p > 0
            allowed[r, offset:offset + n, :p] = True
            allowed[r, offset:offset + n, prefix + offset:prefix + offset + n] = causal[:n, :n]
            gather_rows[i] = r
            gather_cols[i] = offset + len(variants[i]) - p - 1 + np.arange(n_target)
            offset += n
    assert sorted(order) == list(range(len(variants)))
    mask = torch.zeros(allowed.shape, dtype=dtype)
    mask.masked_fill_(torch.from_numpy(~allowed), torch.finfo(dtype).min)
    return Packed(
        ids=torch.as_tensor(ids, device=device),
        positions=torch.as_tensor(positions, device=device),
        mask=mask[:, None].to(device),
        prefix=prefix,
        gather_rows=torch.as_tensor(gather_rows[:, None], device=device),
        gather_cols=torch.as_tensor(gather_cols, device=device),
    )
