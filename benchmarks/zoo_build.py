"""Time `tunelens zoo build` per model, next to a plain PyTorch loop doing the same training.

    python benchmarks/zoo_build.py --preset quick          # or demo
    python benchmarks/zoo_build.py --preset demo --no-peer

The ladder is built from scratch (forced) in a temporary folder unless --out is given. The peer is
the cost floor: the same freshly initialised model, the same packed blocks, batch size, AdamW and
warmup + cosine schedule, in a bare loop with no Trainer, one thread like the build. The ratio
column is how much the Trainer's bookkeeping costs on top. Run by hand; nothing asserts on it.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path


def plain_loop(model, blocks, steps, batch_size, learning_rate, seed, warmup_ratio=0.1,
               weight_decay=0.01):
    import torch
    from transformers import get_cosine_schedule_with_warmup

    generator = torch.Generator().manual_seed(seed)
    data = torch.tensor(blocks)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    sched = get_cosine_schedule_with_warmup(opt, max(1, round(warmup_ratio * steps)), steps)
    model.train()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    tokens = 0
    start = time.perf_counter()
    try:
        order = torch.randperm(len(data), generator=generator)
        cursor = 0
        for _ in range(steps):
            if cursor >= len(order):
                order, cursor = torch.randperm(len(data), generator=generator), 0
            batch = data[order[cursor:cursor + batch_size]]
            cursor += batch_size
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            opt.zero_grad()
            tokens += batch.numel()
    finally:
        torch.set_num_threads(previous)
    return time.perf_counter() - start, tokens, loss.item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="quick")
    parser.add_argument("--out", type=Path, default=None, help="build here (default: a temp dir)")
    parser.add_argument("--no-peer", action="store_true", help="skip the plain-loop peer")
    args = parser.parse_args()

    from rich.console import Console
    from rich.table import Table
    from transformers import AutoTokenizer

    from tunelens.models.pretrain import pack_blocks
    from tunelens.models.zoo import PRESETS, _bundled_rows, build_zoo, new_llama, pretraining_texts

    with contextlib.ExitStack() as stack:
        out = args.out or Path(stack.enter_context(tempfile.TemporaryDirectory())) / "zoo"
        start = time.perf_counter()
        entries = build_zoo(args.preset, out, force=True)
        total = time.perf_counter() - start
        spec = PRESETS[args.preset]
        table = Table(title=f"zoo build --preset {args.preset}: {total:.1f} s in all")
        for col in ("model", "params", "tokens", "final loss", "Trainer s", "Trainer tok/s",
                    "plain loop s", "plain tok/s", "Trainer / plain"):
            table.add_column(col, justify="left" if col == "model" else "right")
        blocks = None
        for entry in entries:
            row = [entry["name"], f"{entry['params']:,}", f"{entry['tokens_seen']:,}",
                   f"{entry['final_loss']:.3f}", f"{entry['seconds']:.2f}",
                   f"{entry['tokens_seen'] / entry['seconds']:,.0f}"]
            if args.no_peer:
                row += ["-", "-", "-"]
            else:
                tok = AutoTokenizer.from_pretrained(entry["path"])
                if blocks is None:
                    clauses, rules = pretraining_texts(_bundled_rows(), seed=spec.seed)
                    blocks = (pack_blocks(tok, clauses, spec.block_size)
                              + pack_blocks(tok, rules, spec.block_size))
                rung = next(r for r in spec.rungs if r.name == entry["name"])
                model = new_llama(tok, rung.hidden_size, rung.num_layers, rung.num_heads,
                                  rung.intermediate_size, spec.max_positions, seed=spec.seed)
                secs, tokens, _ = plain_loop(model, blocks, spec.steps, spec.batch_size,
                                             rung.learning_rate, spec.seed)
                row += [f"{secs:.2f}", f"{tokens / secs:,.0f}", f"{entry['seconds'] / secs:.2f}x"]
            table.add_row(*row)
        Console(width=150).print(table)


if __name__ == "__main__":
    main()
