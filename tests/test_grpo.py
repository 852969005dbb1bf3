"""Strategy grpo: rewards from the rule checker, one-line refusals, and a tiny run end to end."""

from __future__ import annotations

import json
import os
import signal

import pytest
from _train_data import one_torch_thread, write_data  # noqa: F401
from transformers import TrainerCallback

from tunelens.config import TrackingConfig, TrainConfig, parse_study
from tunelens.errors import TunelensError
from tunelens.evaluate.rules import score_rule
from tunelens.train import rewards
from tunelens.train.runner import partial_dir

REF = "RULE 405.6: ramp.run_rise <= 760 mm"
COMPLETIONS = [
    REF,                                           # perfect
    "RULE 405.6: ramp.run_rise <= 30 in",          # other unit, same verdicts (30 in = 762 mm)
    "RULE 405.6: ramp.run_rise >= 760 mm",         # flipped comparator
    "RULE 405.6: ramp.slope <= 760 mm",            # other property
    "RULE 405.6: ramp.run_rise <= 760 mm IF ramp.width > 900 mm",
    "the rise is 760 mm",                          # not a rule
    REF + " and then some more words",             # a rule followed by rambling: not a rule
]
TINY = dict(max_steps=3, learning_rate=1e-2, batch_size=4, logging_steps=1, warmup_ratio=0.0,
            max_length=128)
# qlora: the SFT stage trains an adapter on a 4-bit base, which GRPO then trains further
TINY_GRPO = dict(steps=2, num_generations=2, prompts_per_step=2, max_completion_length=12,
                 sft_strategy="qlora", rewards={"exact": 0.5})  # TRL gets every weight


def test_rewards_are_the_evaluate_stages_rule_scores():
    for text in COMPLETIONS:
        got, want = rewards.score(text, REF), score_rule(text, REF)
        assert got["parses"] == float(want.parsed)
        assert got["fields"] == pytest.approx(want.field_accuracy)
        assert got["verdicts"] == pytest.approx(want.exec_agreement)
        assert got["exact"] == want.exec_accuracy
    assert rewards.score(REF, REF) == {"parses": 1.0, "fields": 1.0, "verdicts": 1.0, "length": 0.0,
                                       "exact": 1.0}
    flipped = rewards.score(COMPLETIONS[2], REF)
    assert 0.0 < flipped["verdicts"] < 1.0 and flipped["fields"] == pytest.approx(6 / 7)


def test_length_penalty_and_trl_signature():
    assert rewards.length_penalty("x" * 10, "y" * 20) == 0.0
    assert rewards.length_penalty("x" * 25, "y" * 20) == pytest.approx(-0.25)
    assert rewards.length_penalty("x" * 99, "y" * 20) == -1.0
    completions = [REF, [{"role": "assistant", "content": "nonsense"}]]  # text or chat messages
    out = {f.__name__: f(prompts=["p", "p"], completions=completions, reference=[REF, REF],
                         trainer_state=None) for f in rewards.REWARD_FUNCS}
    assert tuple(out) == rewards.REWARDS
    assert out["parses"] == [1.0, 0.0] and out["verdicts"] == [1.0, 0.0]
    weights = [0.25, 0.5, 1.0, 0.25, 0.0]
    assert rewards.total(rewards.score(REF, REF), weights) == pytest.approx(1.75)


def test_exact_pays_only_for_every_design_agreeing():
    """``exact`` is all or nothing on the verdicts, whatever the fields: what rule_exec_accuracy
    counts, and a weight of train.grpo.rewards (1 by default; 0 turns it off)."""
    from tunelens.train.grpo_settings import RewardWeights

    other_unit, flipped = rewards.score(COMPLETIONS[1], REF), rewards.score(COMPLETIONS[2], REF)
    assert other_unit["exact"] == 1.0 and other_unit["fields"] < 1.0  # 30 in: same verdicts
    assert 0.0 < flipped["verdicts"] < 1.0 and flipped["exact"] == 0.0  # half right pays nothing
    assert RewardWeights().exact == 1.0  # on by default (docs/grpo.md: what made GRPO raise it)
    weights = RewardWeights(exact=2.0).as_list()
    assert weights[rewards.REWARDS.index("exact")] == 2.0
    off = RewardWeights(exact=0.0).as_list()
    assert rewards.total(other_unit, weights) - rewards.total(other_unit, off) == pytest.approx(2.0)
    assert rewards.total(flipped, weights) == pytest.approx(rewards.total(flipped, off))


@pytest.mark.parametrize(("study", "says"), [
    ({"train": {"grpo": {"num_generations": 1}}}, "train.grpo.num_generations': Value error, a group of 1"),
    ({"train": {"grpo": {"sft_steps": 0}}}, "strategy grpo needs a supervised start"),
    ({"train": {"grpo": {"sft_steps": 5, "init_from": "run"}}}, "set one of the two"),
    ({"objectives": ["instruct", "causal"]}, "strategy grpo samples completions for prompts"),
    ({"models": [{"name": "m", "path": "m"}], "extra_cells": [{"model": "m", "objective": "causal"}],
      "strategies": ["grpo", "lora"]}, "it needs objective 'instruct', not 'causal'"),
])
def test_bad_grpo_configs_are_one_line(study, says):
    with pytest.raises(TunelensError) as err:
        parse_study({"strategies": ["lora", "grpo"], **study})
    assert says in str(err.value) and "\n" not in str(err.value)
    ok = {**study, "extra_cells": [{"model": "m", "strategy": "lora", "objective": "causal"}]}
    if "extra_cells" in study:  # the same causal cell of another strategy is fine
        parse_study({"strategies": ["grpo", "lora"], **ok})


def test_grpo_refusals_before_any_model_is_loaded(tmp_path):
    from tunelens.train import train

    data = write_data(tmp_path / "data", n_train=4, n_val=2)
    with pytest.raises(TunelensError, match="needs objective 'instruct'"):
        train("no-such-model", data, tmp_path / "a", "grpo", "causal")
    missing = TrainConfig(grpo={"init_from": str(tmp_path / "nothing")})
    with pytest.raises(TunelensError, match=r"init_from: .*nothing: not a finished training run"):
        train("no-such-model", data, tmp_path / "b", "grpo", "instruct", missing)
    other = tmp_path / "other-run"  # a start trained from another model than the run's
    other.mkdir()
    (other / "run.json").write_text(json.dumps({"strategy": "lora", "base_model": "another-model"}))
    with pytest.raises(TunelensError, match="was trained from another-model, not from this run's "
                                            "model no-such-model"):
        train("no-such-model", data, tmp_path / "c", "grpo", "instruct",
              TrainConfig(grpo={"init_from": str(other)}))


class CtrlC(TrainerCallback):
    """A real Ctrl-C at the start of GRPO step ``at_step + 1``."""

    def __init__(self, at_step: int) -> None:
        self.at_step = at_step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.at_step:
            os.kill(os.getpid(), signal.SIGINT)


class FakeTracker:
    """Stands in for tunelens.train.tracking.Tracker: keeps what would be sent to MLflow."""

    run_id, uri = "run", "memory"

    def __init__(self) -> None:
        self.metrics: list = []
        self.client = self

    def log_batch(self, run_id, metrics=()):
        self.metrics += list(metrics)


def test_tiny_grpo_run_logs_rewards_resumes_and_loads(micro_model_dir, tmp_path):
    from safetensors import safe_open

    from tunelens.models.loading import load_for_inference
    from tunelens.train import train
    from tunelens.train.grpo import _finished, log_rewards, supervised_start
    from tunelens.train.runner import read_inputs

    data = write_data(tmp_path / "data", n_train=8, n_val=4)
    out = tmp_path / "models" / "micro__grpo__instruct"
    cfg = TrainConfig(**TINY, grpo=TINY_GRPO)
    with pytest.raises(KeyboardInterrupt):  # Ctrl-C in GRPO step 1: checkpointed at its end
        train(str(micro_model_dir), data, out, "grpo", "instruct", cfg, TrackingConfig(enabled=False),
              callbacks=[CtrlC(0)])
    assert not out.exists() and (partial_dir(out) / "checkpoints" / "checkpoint-1").is_dir()
    sft_created = json.loads((out.parent / f".{out.name}.sft" / "run.json").read_text())["created"]

    info = train(str(micro_model_dir), data, out, "grpo", "instruct", cfg, TrackingConfig(enabled=False))
    assert info["resumed_from_step"] == 1 and info["global_step"] == 2
    assert [r["step"] for r in info["rewards"]] == [1, 2]  # step 1's log survived the interrupt
    for row in info["rewards"]:
        weighted = sum(w * row[n] for n, w in zip(rewards.REWARDS, cfg.grpo.rewards.as_list(), strict=True))
        assert row["reward"] == pytest.approx(weighted, abs=1e-5)  # TRL's sum of our five
    assert info["strategy"] == "grpo" and info["adapter"] is True
    assert info["grpo"]["start"] == "sft" and info["grpo"]["start_strategy"] == "qlora"
    # TRL casts a QLoRA adapter to bfloat16 but not its frozen KL copy; ours keeps both in the
    # base's compute dtype (float32), so no step moves the policy away from an equal reference
    saved = safe_open(out / "adapter_model.safetensors", "pt")
    assert {saved.get_slice(k).get_dtype() for k in saved.keys()} == {"F32"}
    sft = json.loads((out / "sft" / "run.json").read_text())
    assert sft["created"] == sft_created  # the SFT stage was not trained again on resuming
    assert info["train_loss"] == sft["train_loss"] and len(sft["train_loss"]) == 3
    assert info["quantization"] == sft["quantization"] and info["quantization"]["bits"] == 4
    assert info["val_loss_before"] == sft["val_loss_before"]
    assert not (out / "ref").exists() and not partial_dir(out).exists()

    logged = FakeTracker()  # what MLflow gets (a real store costs seconds to create; the Tracker
    log_rewards(logged, info["rewards"])  # itself is tested in test_train.py)
    assert sorted(m.step for m in logged.metrics if m.key == "reward/verdicts") == [1, 2]
    assert {m.key for m in logged.metrics} == {"reward", "kl", *(f"reward/{n}" for n in rewards.REWARDS)}
    model, tokenizer = load_for_inference(str(out))
    ids = tokenizer("The width", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=3, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    # only a GRPO setting changes: the SFT stage the finished run keeps is its start again
    changed = TrainConfig(**TINY, grpo={**TINY_GRPO, "beta": 0.0})
    inputs = read_inputs(str(micro_model_dir), data, "grpo", "instruct", changed, None)
    start = supervised_start(inputs, out, progress=False)
    assert start.inside and start.info["created"] == sft_created
    sft_key = read_inputs(str(micro_model_dir), data, "qlora", "instruct",
                          TrainConfig(**TINY), None).fingerprint()
    assert _finished(out / "sft", sft_key)  # the key the reuse checks ...
    assert not _finished(out / "sft", read_inputs(str(micro_model_dir), data, "qlora", "instruct",
                                                  TrainConfig(**{**TINY, "max_steps": 2}),
                                                  None).fingerprint())  # ... an SFT setting changes


def test_reward_section_draws_each_grpo_run(tmp_path):
    from tunelens.layout import StudyLayout
    from tunelens.report.html import _environment
    from tunelens.report.rewards import section

    layout = StudyLayout(tmp_path)
    assert section(layout, 60) is None  # no models folder: no section, no figure
    steps = [{"step": s, "reward": 0.1 * s, "parses": 1.0, "fields": 0.5, "verdicts": 0.1 * s,
              "length": 0.0, "kl": 0.01} for s in range(1, 11)]
    for name, record in (("a__grpo__instruct", {"rewards": steps}), ("b__lora__instruct", {})):
        (layout.models / name).mkdir(parents=True)
        (layout.models / name / "run.json").write_text(json.dumps(record))
    got = section(layout, 60)
    assert [r["name"] for r in got["rows"]] == ["a__grpo__instruct"]
    assert got["rows"][0]["cells"][0] == "0.150 → 0.950"  # means of the first and last 2 of 10 steps
    assert (layout.figures / "rewards.png").stat().st_size > 0
    html = _environment().get_template("rewards.html.j2").render(rewards=got)
    assert "a__grpo__instruct" in html and "data:image/png;base64," in html


def test_a_step_samples_every_group_at_once_and_scores_a_group_at_a_time(tmp_path):
    """One generation batch per optimizer step (prompts_per_step x num_generations completions),
    the loss over one group at a time (gradient accumulation), so memory is a group's."""
    from tunelens.config import TrainConfig
    from tunelens.train.trainer_args import grpo_args

    cfg = TrainConfig(grpo={"init_from": str(tmp_path), "num_generations": 4, "prompts_per_step": 3})
    args = grpo_args(cfg, tmp_path / "checkpoints")
    assert (args.per_device_train_batch_size, args.gradient_accumulation_steps) == (4, 3)
    assert args.generation_batch_size == 12 and args.steps_per_generation == 3
    assert args.loss_type == "dapo"  # normalised over the accumulated batch: the same step
