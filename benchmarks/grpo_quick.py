"""Does GRPO beat its supervised start? SFT vs SFT+GRPO on the quick ladder, scored on the val split.

For each seed: an SFT of the quick ladder model that writes rules (``full``, 300 steps: the
quick study's own 12 LoRA steps write none, so GRPO would have nothing to push on), then strategy
``grpo`` started from that very run (``train.grpo.init_from``, so both arms share one SFT), then
greedy generation on ``val.jsonl`` for both (the generate stage's own decoding) and, per arm, the
mean GRPO reward (the weighted sum, the training weights) and the evaluate stage's rule scores:
parse rate, field accuracy, execution agreement and accuracy, false positives and negatives.
Then each arm's mean ± sd over the seeds, the paired GRPO − SFT difference, on how many seeds
GRPO was better, and two tests over every seed × row pair: Wilcoxon signed-rank on the reward,
exact McNemar on ``rule_exec_accuracy`` (rows only one arm gets entirely right).

    python benchmarks/grpo_quick.py --rung tl-q4 --seeds 0 1 2 --out /tmp/grpo-quick
    python benchmarks/grpo_quick.py --seeds 0 1 2 --temperature 0.7 --group 8 --out /tmp/g-t07

GRPO runs with ``train.grpo``'s defaults unless a flag changes one. Both arms are scored with the
run's reward weights (``--exact`` included). A finished ``<out>/sft_s<seed>`` is reused, so a GRPO
variant can start from an earlier run's SFT arms (copy them in).

Writes ``<out>/results.json``; docs/grpo.md quotes runs of it. Not in the suite: minutes, not
seconds (about 1.5 minutes of SFT and 4.5 of GRPO a seed, one thread on a core of its own).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path


def arm_scores(predictions: Path, weights: list[float]) -> dict:
    from tunelens.evaluate.rules import score_rule
    from tunelens.train.rewards import score, total

    rows = [json.loads(line) for line in predictions.read_text().splitlines()]
    rule = [score_rule(r["prediction"], r["reference"]) for r in rows]
    scored = [s for s in rule if s is not None]
    return {
        "n": len(rows),
        "mean_reward": statistics.fmean(total(score(r["prediction"], r["reference"]), weights)
                                        for r in rows),
        "rule_parse_rate": statistics.fmean(s.parsed for s in scored),
        "rule_field_accuracy": statistics.fmean(s.field_accuracy for s in scored),
        "rule_exec_agreement": statistics.fmean(s.exec_agreement for s in scored),
        "rule_exec_accuracy": statistics.fmean(s.exec_accuracy for s in scored),
        "rule_false_positive_rate": statistics.fmean(s.false_positive_rate for s in scored),
        "rule_false_negative_rate": statistics.fmean(s.false_negative_rate for s in scored),
    }


def one_seed(base: str, data: Path, out: Path, seed: int, args) -> dict:
    from tunelens.config import GenerationConfig, TrackingConfig, TrainConfig
    from tunelens.infer.generate import generate_predictions
    from tunelens.train import train

    tracking = TrackingConfig(uri=f"sqlite:///{out / 'mlflow.db'}")
    sft_cfg = TrainConfig(max_steps=args.sft_steps, batch_size=8, max_length=160, logging_steps=4,
                          seed=seed, learning_rate=args.sft_lr)
    asked = {"steps": args.grpo_steps, "beta": args.beta, "num_generations": args.group,
             "prompts_per_step": args.prompts, "temperature": args.temperature,
             "learning_rate": args.grpo_lr}  # unset: train.grpo's defaults
    grpo = {"init_from": str(out / f"sft_s{seed}"), "max_completion_length": args.max_new_tokens,
            **{k: v for k, v in asked.items() if v is not None}, "rewards": reward_weights(args)}
    grpo_cfg = sft_cfg.model_copy(update={"grpo": sft_cfg.grpo.model_validate(grpo)})
    timing = {}
    t0 = time.perf_counter()
    timing["sft_s"] = None  # reused: no SFT time to set GRPO's against
    if not (out / f"sft_s{seed}" / "run.json").exists():  # one SFT per seed, whatever GRPO tries
        train(base, data, out / f"sft_s{seed}", args.sft_strategy, "instruct", sft_cfg, tracking,
              progress=True)
        timing["sft_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    info = train(base, data, out / f"grpo_s{seed}", "grpo", "instruct", grpo_cfg, tracking, progress=True)
    timing["grpo_s"] = time.perf_counter() - t0
    timing["load_average"] = os.getloadavg()[0]  # the machine is shared: say how busy it was
    gen = GenerationConfig(max_new_tokens=args.max_new_tokens)
    weights = grpo_cfg.grpo.rewards.as_list()
    result = {"seed": seed, **timing, "train_rewards": [info["rewards"][0], info["rewards"][-1]]}
    for arm in ("sft", "grpo"):
        pred = out / f"{arm}_s{seed}.val.jsonl"
        generate_predictions(str(out / f"{arm}_s{seed}"), data / "val.jsonl", pred, gen, progress=False)
        result[arm] = arm_scores(pred, weights)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rung", default="tl-q4", help="quick ladder model (tl-q1 .. tl-q4)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--sft-steps", type=int, default=300, help="quick.yaml's 12 write no rule yet")
    parser.add_argument("--sft-lr", type=float, default=1e-2,
                        help="train.learning_rate (full trains at a fifth of it)")
    parser.add_argument("--sft-strategy", default="full", help="LoRA on tl-q4: parse rate 0.03 at 300 steps")
    parser.add_argument("--grpo-steps", type=int, help="train.grpo.steps")
    parser.add_argument("--group", type=int, help="train.grpo.num_generations")
    parser.add_argument("--prompts", type=int, help="train.grpo.prompts_per_step")
    parser.add_argument("--beta", type=float, help="train.grpo.beta")
    parser.add_argument("--grpo-lr", type=float, help="train.grpo.learning_rate")
    parser.add_argument("--temperature", type=float, help="train.grpo.temperature")
    parser.add_argument("--exact", type=float,
                        help="train.grpo.rewards.exact: the all-designs-agree term's weight")
    parser.add_argument("--versus", type=Path, help="an earlier run's --out: compare this GRPO arm "
                        "with its GRPO arm, seed by seed (e.g. with and without --exact)")
    parser.add_argument("--max-new-tokens", type=int, default=40, help="quick.yaml's generation")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from tunelens.config import DataConfig
    from tunelens.data.build import build_bundled
    from tunelens.models.zoo import build_zoo

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    zoo = {e["name"]: e["path"] for e in build_zoo("quick", Path.home() / ".cache/tunelens/zoo/quick")}
    data = args.out / "data"
    if not (data / "val.jsonl").exists():
        build_bundled(data, DataConfig())
    results = [one_seed(str(zoo[args.rung]), data, args.out, s, args) for s in args.seeds]
    (args.out / "results.json").write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                                       "results": results}, indent=1))
    print_table(results)
    print_pooled(args.out, [r["seed"] for r in results], reward_weights(args).as_list())
    if args.versus is not None:
        print_versus(args.out, args.versus, [r["seed"] for r in results], reward_weights(args).as_list())


KEYS = ("mean_reward", "rule_parse_rate", "rule_field_accuracy", "rule_exec_agreement",
        "rule_exec_accuracy", "rule_false_positive_rate", "rule_false_negative_rate")


def print_table(results: list[dict]) -> None:
    """Per seed both arms; then each arm's mean ± standard deviation over the seeds, the paired
    difference (GRPO − SFT, seed by seed) likewise, and on how many seeds GRPO was better."""
    from tunelens.evaluate import specs

    names = [k.replace("rule_", "") for k in KEYS]
    print("seed   arm " + " ".join(names) + "  (GRPO s / SFT s, load average)")
    for r in results:
        for arm in ("sft", "grpo"):
            cells = [f"{r[arm][k]:>{len(name)}.3f}" for k, name in zip(KEYS, names, strict=True)]
            ratio = f"{r['grpo_s'] / r['sft_s']:.2f}" if r.get("sft_s") else "SFT reused"
            tail = f"  ({ratio}, {r['load_average']:.2f})" if arm == "grpo" and "load_average" in r else ""
            print(f"{r['seed']:>4} {arm:>5} " + " ".join(cells) + tail)
    spread = statistics.stdev if len(results) > 1 else (lambda _: 0.0)
    rows = {arm: [[r[arm][k] for r in results] for k in KEYS] for arm in ("sft", "grpo")}
    rows["grpo - sft"] = [[g - s for g, s in zip(gv, sv, strict=True)]
                          for gv, sv in zip(rows["grpo"], rows["sft"], strict=True)]
    for label, columns in rows.items():
        cells = [f"{statistics.fmean(v):.3f}±{spread(v):.3f}" for v in columns]
        print(f"mean {label}: " + " ".join(f"{n}={c}" for n, c in zip(names, cells, strict=True)))
    sign = [-1 if specs.lower_is_better(k) else 1 for k in KEYS]  # false positives: lower is better
    better = [sum(d * w > 0 for d in diffs) for diffs, w in zip(rows["grpo - sft"], sign, strict=True)]
    print("seeds where GRPO is better: " + " ".join(
        f"{n}={h}/{len(results)}" for n, h in zip(names, better, strict=True)))


def reward_weights(args):
    """train.grpo.rewards' defaults, with ``--exact`` when given (both arms are scored with these)."""
    from tunelens.train.grpo_settings import RewardWeights

    return RewardWeights(**({} if args.exact is None else {"exact": args.exact}))


def print_pooled(out: Path, seeds: list[int], weights: list[float]) -> None:
    """Paired tests over every seed × validation row: is GRPO's gain more than row-level noise?"""
    from scipy.stats import binomtest, wilcoxon

    from tunelens.evaluate.rules import score_rule
    from tunelens.train.rewards import score, total

    diffs, only = [], {"sft": 0, "grpo": 0}
    for seed in seeds:
        rows = {arm: [json.loads(line) for line in (out / f"{arm}_s{seed}.val.jsonl").read_text()
                      .splitlines()] for arm in ("sft", "grpo")}
        for a, b in zip(rows["sft"], rows["grpo"], strict=True):
            right = {arm: score_rule(r["prediction"], r["reference"]).exec_accuracy
                     for arm, r in (("sft", a), ("grpo", b))}
            only["sft"] += right["sft"] > right["grpo"]
            only["grpo"] += right["grpo"] > right["sft"]
            diffs.append(total(score(b["prediction"], b["reference"]), weights)
                         - total(score(a["prediction"], a["reference"]), weights))
    moved = [d for d in diffs if d != 0]
    p_reward = wilcoxon(moved).pvalue if moved else 1.0
    n = only["sft"] + only["grpo"]
    p_exec = binomtest(only["grpo"], n, 0.5).pvalue if n else 1.0
    print(f"pooled over {len(diffs)} seed x row pairs: reward GRPO - SFT {statistics.fmean(diffs):+.3f} "
          f"(Wilcoxon p={p_reward:.2g}); rule_exec_accuracy right only with GRPO {only['grpo']}, "
          f"only with SFT {only['sft']} (exact McNemar p={p_exec:.2g})")



def _exact_and_reward(path: Path, weights: list[float]) -> list[tuple[float, float]]:
    """Per validation row of a predictions file: (rule_exec_accuracy, weighted reward)."""
    from tunelens.evaluate.rules import score_rule
    from tunelens.train.rewards import score, total

    rows = [json.loads(line) for line in path.read_text().splitlines()]
    return [(score_rule(r["prediction"], r["reference"]).exec_accuracy,
             total(score(r["prediction"], r["reference"]), weights)) for r in rows]


def print_versus(out: Path, other: Path, seeds: list[int], weights: list[float]) -> None:
    """This run's GRPO arm against another run's (same seeds, same SFT arms): rules entirely
    right per seed, and pooled rows only one of them gets right (exact McNemar)."""
    from scipy.stats import binomtest

    only = {"this": 0, "other": 0}
    for seed in seeds:
        mine = _exact_and_reward(out / f"grpo_s{seed}.val.jsonl", weights)
        theirs = _exact_and_reward(other / f"grpo_s{seed}.val.jsonl", weights)
        only["this"] += sum(a[0] > b[0] for a, b in zip(mine, theirs, strict=True))
        only["other"] += sum(b[0] > a[0] for a, b in zip(mine, theirs, strict=True))
        print(f"seed {seed}: rules entirely right, this GRPO {sum(a for a, _ in mine):.0f}, "
              f"{other}'s {sum(b for b, _ in theirs):.0f} of {len(mine)}; reward (these weights) "
              f"{statistics.fmean(r for _, r in mine):.3f} vs {statistics.fmean(r for _, r in theirs):.3f}")
    n = only["this"] + only["other"]
    p = binomtest(only["this"], n, 0.5).pvalue if n else 1.0
    print(f"pooled: right only with this GRPO {only['this']}, only with {other}'s {only['other']} "
          f"(exact McNemar p={p:.2g})")


if __name__ == "__main__":
    main()
