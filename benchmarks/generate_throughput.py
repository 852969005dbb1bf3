"""Throughput of batched generation against a one-at-a-time ``model.generate`` loop.

Same model, same prompts (rendered through the training template), greedy decoding, no stop
strings (both sides stop at EOS or max_new_tokens), so the outputs must be identical; the table
says whether they are. Tokens are counted up to and including each row's EOS, so padding a
finished row while its batch runs on is not counted as work. Two workloads:

- ``natural``: rows stop at EOS. The pre-trained (not fine-tuned) ladder model stops after a
  handful of tokens on most clauses, so the prompts' prefill is most of the work and batching
  cannot shrink it on a CPU (prefill is already a matrix product).
- ``fixed``: EOS is suppressed (``min_new_tokens`` on the model's generation config, which both
  sides read) so every row decodes ``max_new_tokens`` tokens -- the usual throughput setting
  (vLLM's ``ignore_eos``), where batching pays off.

    python benchmarks/generate_throughput.py                 # largest quick-ladder model
    python benchmarks/generate_throughput.py --model PATH    # any causal LM folder
    python benchmarks/generate_throughput.py --threads 1     # steadier on a shared, busy CPU
Target: >= 5x the one-at-a-time tokens/s at batch 16.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import torch  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from tunelens.config import GenerationConfig  # noqa: E402
from tunelens.data.templates import render_prompt  # noqa: E402
from tunelens.infer.batching import encode_prompts, generate_texts  # noqa: E402
from tunelens.infer.sampling import eos_token_ids  # noqa: E402
from tunelens.models.loading import load_model  # noqa: E402

CLAUSES = [
    "The clear width of a stair shall be not less than 900 mm.",
    "Ramps shall have a slope not steeper than 1:12 where the rise exceeds 150 mm.",
    "Doors shall provide a clear opening of at least 815 mm.",
    "Corridors serving an occupant load of 50 or more shall be not less than 1100 mm wide.",
    "Handrails shall be between 865 mm and 965 mm above the stair nosing.",
    "Exit access travel distance shall not exceed 60 m unless the building is sprinklered.",
    "Stair riser heights shall be 178 mm maximum and 102 mm minimum.",
    "Guards shall be not less than 1070 mm high at open sides of walking surfaces.",
    "Headroom in stairways shall be not less than 2030 mm measured vertically from the nosing.",
    "Landings shall have a length not less than 1100 mm in the direction of travel.",
    "The maximum rise of a ramp run shall be 760 mm.",
    "Window sills in dwelling units shall be at least 600 mm above the finished floor.",
    "Smoke alarms shall be installed in each sleeping room.",
    "Accessible parking spaces shall be at least 2440 mm wide.",
    "Stair treads shall have a depth of not less than 280 mm.",
    "Emergency lighting shall provide an illumination of not less than 10 lx at floor level.",
    "Exit doors shall swing in the direction of egress travel where serving 50 or more persons.",
    "Ceiling height in habitable rooms shall be not less than 2300 mm.",
    "Fire extinguishers shall be located so that travel distance to one does not exceed 23 m.",
    "Toilet compartments for wheelchair users shall be at least 1500 mm wide.",
    "Openings in guards shall not allow passage of a sphere 100 mm in diameter.",
    "Spiral stairs shall have a clear width of at least 660 mm.",
    "The slope of a curb ramp shall not exceed 1:12.",
    "Elevator car doors shall provide a clear width of not less than 915 mm.",
    "Dead-end corridors shall not exceed 6 m in length.",
    "Balconies more than 600 mm above grade shall have guards.",
    "The width of an exit stair shall be at least 1100 mm in buildings over three storeys.",
    "Thresholds at doorways shall not exceed 13 mm in height.",
    "Grab bars shall be installed between 840 mm and 920 mm above the floor.",
    "Kitchen work surfaces in accessible units shall be no higher than 865 mm.",
    "Every exit shall discharge directly to a public way or an open space.",
    "Rooms with an occupant load over 49 shall have at least two exits.",
]


def quick_ladder_model(root: Path) -> str:
    """The largest model of the quick ladder, built once into ``root`` (reused afterwards).

    Pre-trained on the clauses above rather than the bundled dataset so the model, and so the
    measurement, does not change when the dataset does.
    """
    from tunelens.models.zoo import build_zoo

    rows = [{"prompt": c, "completion": "RULE " + " ".join(w for w in c.split() if w[0].isdigit())}
            for c in CLAUSES]
    entries = build_zoo("quick", root, rows=rows)
    return max(entries, key=lambda e: e["params"])["path"]


def one_at_a_time(model, tokenizer, prompts, max_new_tokens):
    """The peer: a plain ``model.generate`` per prompt, no padding; (texts, tokens)."""
    eos = set(eos_token_ids(tokenizer, model))
    texts, tokens = [], 0
    for ids in encode_prompts(tokenizer, prompts):
        with torch.inference_mode():
            out = model.generate(input_ids=torch.tensor([ids]),
                                 attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                 max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id)
        new = out[0, len(ids):].tolist()
        stop = next((n + 1 for n, t in enumerate(new) if t in eos), len(new))
        tokens += stop
        texts.append(tokenizer.decode(new[:stop], skip_special_tokens=True).strip())
    return texts, tokens


def measure(fn):
    start = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder; default: the quick ladder's largest")
    parser.add_argument("--prompts", type=int, default=32, help="number of prompts (16+)")
    parser.add_argument("--max-new-tokens", type=int, default=GenerationConfig().max_new_tokens)
    parser.add_argument("--batch-sizes", default="1,4,16,32")
    parser.add_argument("--workloads", default="natural,fixed")
    parser.add_argument("--zoo", default=os.path.join(tempfile.gettempdir(), "tunelens-bench-zoo"))
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    path = args.model or quick_ladder_model(Path(args.zoo))
    model, tokenizer = load_model(path)
    model.eval()
    params = sum(p.numel() for p in model.parameters())
    clauses = (CLAUSES * (args.prompts // len(CLAUSES) + 1))[: args.prompts]
    prompts = [render_prompt(tokenizer, c) for c in clauses]
    mean_prompt = sum(map(len, encode_prompts(tokenizer, prompts))) / len(prompts)
    generate_texts(model, tokenizer, prompts[:2], GenerationConfig(max_new_tokens=4))  # warm-up

    table = Table(title=f"greedy generation: {len(prompts)} prompts (mean {mean_prompt:.0f} tokens), "
                        f"max_new_tokens {args.max_new_tokens}, {Path(path).name} "
                        f"({params / 1e6:.2f}M params), torch threads {torch.get_num_threads()}")
    for col in ("workload", "method", "batch", "seconds", "tokens", "tokens/s", "speed-up", "equal"):
        table.add_column(col, justify="left" if col in ("workload", "method") else "right")
    for workload in args.workloads.split(","):
        model.generation_config.min_new_tokens = args.max_new_tokens if workload == "fixed" else None
        (ref_texts, ref_tokens), ref_seconds = measure(
            lambda: one_at_a_time(model, tokenizer, prompts, args.max_new_tokens))
        ref_rate = ref_tokens / ref_seconds
        table.add_row(workload, "model.generate loop", "1", f"{ref_seconds:.2f}", str(ref_tokens),
                      f"{ref_rate:.0f}", "1.0x", "(ref)")
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            config = GenerationConfig(max_new_tokens=args.max_new_tokens, stop=[], batch_size=bs)
            out, seconds = measure(lambda c=config: generate_texts(model, tokenizer, prompts, c))
            tokens = sum(g.tokens for g in out)
            equal = [g.samples[0] for g in out] == ref_texts
            table.add_row(workload, "generate_texts", str(bs), f"{seconds:.2f}", str(tokens),
                          f"{tokens / seconds:.0f}", f"{tokens / seconds / ref_rate:.1f}x",
                          "yes" if equal else "NO")
        table.add_section()
    Console(width=120).print(table)


if __name__ == "__main__":
    main()
