"""The ``train.grpo`` section: how strategy ``grpo`` starts, samples, is rewarded and regularised.

A module of its own, importing only pydantic and the strategy registry, so that reading a study
config never loads torch or TRL (:mod:`tunelens.config` holds it as ``TrainConfig.grpo``). What the
settings mean in training is :mod:`tunelens.train.grpo`'s; what each reward scores is
:mod:`tunelens.train.rewards`'.

GRPO needs a policy that already writes rules: on a model that never emits a parseable rule every
completion of a group scores the same, the group-relative advantage is zero and nothing is
learned. So a supervised start is required: ``init_from`` (a finished training run) or an SFT
stage of ``sft_steps`` inside the same run (not both: steps of a stage that would not run). A
group of one completion has no "relative" either. Each is refused here, at load time, with one
line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelens.train.catalog import STRATEGIES

GRPO = "grpo"
# What a supervised start may be: every strategy that trains by supervision.
SupervisedStrategy = Literal[tuple(s for s in STRATEGIES if s not in (GRPO, "none"))]


class RewardWeights(BaseModel):
    """Weight of each reward (TRL sums them, weighted, into one reward per completion)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    parses: float = Field(0.25, ge=0.0, description="1 when the rule grammar accepts the completion")
    fields: float = Field(0.5, ge=0.0, description="share of the 7 rule fields equal to the reference's")
    verdicts: float = Field(1.0, ge=0.0, description="share of the reference's sample designs on "
                            "which the completion's verdict agrees (the main reward)")
    length: float = Field(0.25, ge=0.0, description="weight of the penalty for text beyond the "
                          "reference's length (0 to -1)")
    exact: float = Field(1.0, ge=0.0, description="1 when the verdicts agree on every sample "
                         "design (rule_exec_accuracy), else 0; 0: off")

    def as_list(self) -> list[float]:
        """In :data:`tunelens.train.rewards.REWARDS` order."""
        return [self.parses, self.fields, self.verdicts, self.length, self.exact]


class GrpoConfig(BaseModel):
    """Strategy ``grpo``: a supervised start, then TRL's GRPOTrainer with the rule checker as reward."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    init_from: str | None = Field(
        None, description="a finished training run folder (its run.json) to start from; default: "
        "an SFT stage inside the run (in a study, the cell's own, seeded like its SFT twin)")
    sft_strategy: SupervisedStrategy = Field(
        "lora", description="the SFT stage's strategy; GRPO then trains the same parameters "
        "(the adapter of lora/dora/qlora, the weights full/freeze train)")
    sft_steps: int | None = Field(
        None, ge=0, description="steps of the SFT stage; default: train.max_steps (the same "
        "training as the study's cell of sft_strategy); 0 needs init_from")
    steps: int = Field(200, ge=1, description="GRPO optimisation steps")
    num_generations: int = Field(
        16, description="group size: completions sampled per prompt, scored against each other")
    prompts_per_step: int = Field(4, ge=1, description="prompts per step (each sampled "
                                  "num_generations times)")
    beta: float = Field(0.04, ge=0.0, description="KL coefficient to the supervised start "
                        "(0: no reference model)")
    learning_rate: float = Field(
        1e-4, gt=0.0, description="GRPO's rate, well below SFT's: a sampled step is noisier than "
        "a supervised one (on the quick ladder SFT's own rate undid the SFT; docs/grpo.md)")
    temperature: float = Field(
        0.5, gt=0.0, description="sampling temperature of the groups (low enough that samples "
        "resemble the greedy decoding evaluated, high enough that a group differs; docs/grpo.md)")
    max_completion_length: int = Field(64, ge=1, description="most tokens sampled per completion")
    rewards: RewardWeights = RewardWeights()

    @field_validator("num_generations")
    @classmethod
    def _a_group(cls, value: int) -> int:
        if value < 2:
            raise ValueError(f"a group of {value} completion has no relative advantage; use 2 or more")
        return value

    @model_validator(mode="after")
    def _supervised_start(self) -> GrpoConfig:
        if self.sft_steps == 0 and self.init_from is None:
            raise ValueError("strategy grpo needs a supervised start: set train.grpo.init_from to "
                             "a trained run, or train.grpo.sft_steps above 0")
        if self.sft_steps and self.init_from is not None:
            raise ValueError("train.grpo.init_from is the supervised start, so no SFT stage would "
                             "run its train.grpo.sft_steps; set one of the two")
        return self

    def start_folder(self) -> Path | None:
        """``init_from`` as a path (None: an SFT stage inside the run)."""
        return Path(self.init_from).expanduser() if self.init_from else None
