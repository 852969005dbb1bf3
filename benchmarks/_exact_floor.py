"""The exact-work floor of occlusion: multiply-adds the perturbations need, at this machine's rate.

Kept beside ``attribution_speed.py`` (not in the package) because it is a yardstick for the
benchmark, not something tunelens computes for users; the SmolLM2 table (``--shape smollm2``)
lives here too. What counts, for one prompt of L tokens
(every one a feature, as with SmolLM2's tokenizer, which adds no BOS) and a target of T tokens:

* the unperturbed pass once: the body on the L + T - 1 input positions (the last target token
  is never an input), the head on the T positions that predict target tokens;
* each of the L perturbations (position p replaced by the baseline): the prefix [0, p) is the
  unperturbed one, so with a prefix cache it is not recomputed; the body runs on positions
  p .. L + T - 2 (L + T - 1 - p of them) and the head on the T target positions only;
* the body, per position and layer: the q/k/v/o projections and the gated MLP (2 + 2·kv/heads
  + 3·intermediate/hidden times hidden² MACs) and attention over the i + 1 visible keys
  (2·heads·head_dim·(i + 1): scores and the weighted sum of values). In the last layer, a
  position that predicts no target token is never read again except through its keys and
  values, which the last layer does not need either: only positions L - 1 .. L + T - 2 run it
  in full, the others stop after layer ``layers - 1``.
* the head: hidden × vocabulary MACs per target position (the full vocabulary: the
  log-softmax needs every logit).

Not counted, so the floor is a lower bound: embeddings, norms, rotary embeddings, softmaxes and
the element-wise ops (no multiply-adds in a matrix product), the log-softmax's exponentials,
and any prefix a batch cannot share. Time floor = 2 × MACs / the measured float32
matrix-multiply rate (FLOP/s) at the benchmark's thread count.
"""

from __future__ import annotations

import os
import time


def body_position_macs(cfg, keys: int) -> int:
    """MACs of one layer at one position that attends to ``keys`` positions."""
    hidden, heads = cfg.hidden_size, cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or hidden // heads
    kv = (getattr(cfg, "num_key_value_heads", None) or heads) * head_dim
    proj = hidden * heads * head_dim * 2 + hidden * kv * 2  # q, o and k, v
    mlp = 3 * hidden * cfg.intermediate_size
    return proj + mlp + 2 * heads * head_dim * keys


def occlusion_macs(cfg, n_prompt: int, n_target: int) -> int:
    """Exact token-occlusion MACs for one prompt with a prefix cache (see the module docstring)."""
    layers, head = cfg.num_hidden_layers, cfg.hidden_size * cfg.vocab_size
    inputs = n_prompt + n_target - 1

    def run(first: int) -> int:  # body on positions first .. inputs - 1, head on the target
        macs = 0
        for i in range(first, inputs):
            full_layers = layers if i >= n_prompt - 1 else layers - 1
            macs += full_layers * body_position_macs(cfg, i + 1)
        return macs + n_target * head

    return run(0) + sum(run(p) for p in range(n_prompt))


def matmul_rate(threads: int, size: int = 1024, seconds: float = 0.5) -> float:
    """The machine's float32 matmul rate (FLOP/s), best of two probes (sizes 1024 and 2048):
    the best rate the hardware reaches, so the floor is never flattered by a slow probe."""
    from tunelens.memory import matmul_rate as probe

    return max(probe(threads, size=size, seconds=seconds), probe(threads, size=2 * size, seconds=seconds))


def bench_smollm2(args, console) -> None:
    """SmolLM2-135M-Instruct: tunelens vs Captum by-seq, each beside its exact-work floor.

    For each thread count (1 and 2 unless ``--threads``), the matmul probe, tunelens and Captum
    run interleaved, best of ``--repeats`` each, so the ratios compare runs under the same load.
    """
    import numpy as np
    import torch
    from attribution_speed import pick_examples, profile_tunelens, run_captum, run_tunelens
    from rich.table import Table

    from tunelens.data.compliance.dataset import bundled_rows
    from tunelens.explain.features import baseline_token
    from tunelens.models.loading import load_model

    model, tok = load_model("smollm2-135m")
    model.eval()
    prompts, targets = pick_examples(bundled_rows(seed=0), tok, n=4)
    lp = [len(tok(p)["input_ids"]) for p in prompts]
    lt = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in targets]
    macs = sum(occlusion_macs(model.config, a, b) for a, b in zip(lp, lt, strict=True))
    base = baseline_token(tok, "auto")
    console.print(f"[bold]smollm2-135m[/]: {len(prompts)} clauses of {lp} tokens, rules of {lt} tokens; "
                  f"baseline token {base}; exact work {macs / 1e12:.2f} TMAC = {2 * macs / 1e12:.2f} TFLOP")
    table = Table(title="occlusion on SmolLM2-135M: tunelens vs Captum by-seq, against the exact-work floor")
    for col in ("threads", "load avg", "matmul GFLOP/s", "floor s", "tunelens s", "x floor",
                "captum s", "x floor ", "speed-up", "max |Δ|"):
        table.add_column(col, justify="right")
    for threads in [args.threads] if args.threads else [1, 2]:
        torch.set_num_threads(threads)
        rate, t_ours, t_cap, ours, ref = 0.0, float("inf"), float("inf"), None, None
        for _ in range(args.repeats):
            rate = max(rate, matmul_rate(threads))
            start = time.perf_counter()
            ours = run_tunelens(model, tok, prompts, targets, baseline="auto")
            t_ours = min(t_ours, time.perf_counter() - start)
            start = time.perf_counter()
            ref = run_captum(model, tok, prompts, targets, baseline=base)
            t_cap = min(t_cap, time.perf_counter() - start)
        gap = max(np.abs(a.scores - b).max() for a, b in zip(ours, ref, strict=True))
        floor = 2 * macs / rate
        table.add_row(str(threads), f"{os.getloadavg()[0]:.2f}", f"{rate / 1e9:.0f}", f"{floor:.2f}",
                      f"{t_ours:.2f}", f"{t_ours / floor:.2f}x", f"{t_cap:.2f}", f"{t_cap / floor:.2f}x",
                      f"{t_cap / t_ours:.2f}x", f"{gap:.1e}")
    console.print(table)
    if args.profile:
        profile_tunelens(model, tok, prompts, targets, console)
