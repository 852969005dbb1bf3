"""The ``tune:`` section of a study: what ``tunelens tune`` searches, per strategy, and what it found.

Torch-free and Optuna-free on purpose: :mod:`tunelens.config` holds this section, and validating
a study must load neither. The search space is per strategy, so full fine-tuning and LoRA are
each compared at their own best settings (one shared learning rate favours whichever strategy it
happens to suit). A parameter is named once here (:data:`PARAMS`: its kind and the
``train:`` key it sets); a range is checked against :class:`~tunelens.config.TrainConfig`
itself, so the bounds a range may take are the schema's, never restated.

``best`` is written by ``tunelens tune`` into ``<out>/best.yaml``: per strategy, the ``train:``
settings of its best trial, laid over ``train:`` for that strategy's cells (:meth:`TuneConfig.
train_for`); ``tuned_from`` names the tuning folder, whose figures the study's report shows.
"""

from __future__ import annotations

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from tunelens.train.catalog import ADAPTER_STRATEGIES, STRATEGIES, UNTRAINED

Strategy = Literal[tuple(STRATEGIES)]
# Strategies a trial can score by the validation loss of its supervised training: prompting only
# trains nothing, and GRPO's goal is its reward, not the loss its supervised start reaches.
UNTUNED = {UNTRAINED: "trains nothing", "grpo": "optimises a reward, not the validation loss"}
TUNABLE = tuple(s for s in STRATEGIES if s not in UNTUNED)
Number = int | float

# name -> (kind, the train: key it sets (dotted: nested), adapters only)
PARAMS: dict[str, tuple[type, str, bool]] = {
    "learning_rate": (float, "learning_rate", False),
    "lora_rank": (int, "lora.rank", True),
    "lora_alpha": (int, "lora.alpha", True),
    "lora_dropout": (float, "lora.dropout", True),
    "dropout": (float, "dropout", False),
    "warmup_ratio": (float, "warmup_ratio", False),
    "weight_decay": (float, "weight_decay", False),
    "batch_size": (int, "batch_size", False),
    "max_steps": (int, "max_steps", False),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ParamRange(_Strict):
    """One dimension: ``{low, high[, log][, step]}`` (uniform, or log-uniform) or ``{choices}``."""

    low: Number | None = None
    high: Number | None = None
    log: bool = Field(False, description="sample log-uniformly (learning rates); low must be > 0")
    step: Number | None = Field(None, gt=0, description="grid step (not with log)")
    choices: list[Number] | None = Field(None, description="a categorical dimension instead")

    @model_validator(mode="after")
    def _a_range_or_choices(self) -> ParamRange:
        given = [v for v in (self.low, self.high, self.step, *(self.choices or ())) if v is not None]
        if any(isinstance(v, bool) or not math.isfinite(v) for v in given):
            raise ValueError("values must be finite numbers")
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give choices or low/high, not both")
            if not self.choices or len(set(self.choices)) != len(self.choices):
                raise ValueError("choices must list at least one value, each once")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give low and high (or choices)")
        if self.low >= self.high:
            raise ValueError(f"low ({self.low}) must be below high ({self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        if self.log and self.step is not None:
            raise ValueError("a log range takes no step")
        return self

    def values(self) -> list[Number]:
        """The values whose validity decides the range's: its ends, or every choice."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]


class StrategySpace(_Strict):
    """The dimensions searched for one strategy; a parameter left out keeps the study's value."""

    learning_rate: ParamRange | None = None
    lora_rank: ParamRange | None = None
    lora_alpha: ParamRange | None = None
    lora_dropout: ParamRange | None = None
    dropout: ParamRange | None = None
    warmup_ratio: ParamRange | None = None
    weight_decay: ParamRange | None = None
    batch_size: ParamRange | None = None
    max_steps: ParamRange | None = None

    @field_validator(*PARAMS)
    @classmethod
    def _fits_the_schema(cls, value: ParamRange | None, info) -> ParamRange | None:
        if value is not None:
            check_range(info.field_name, value)
        return value

    @model_validator(mode="after")
    def _not_empty(self) -> StrategySpace:
        if not self.dimensions():
            raise ValueError("empty search space (list at least one parameter)")
        return self

    def dimensions(self) -> dict[str, ParamRange]:
        return {name: getattr(self, name) for name in PARAMS if getattr(self, name) is not None}


def check_range(name: str, rng: ParamRange) -> None:
    """Every end (or choice) of ``name`` must be a value ``train:`` accepts there."""
    from tunelens.config import TrainConfig, format_validation_error  # loaded by now: it holds us

    kind, key = PARAMS[name][:2]
    if kind is int and any(not isinstance(v, int) for v in rng.values() + [rng.step or 1]):
        raise ValueError(f"{name} takes whole numbers")
    from pydantic import ValidationError

    for value in rng.values():
        try:
            TrainConfig.model_validate(nested(key, value))
        except ValidationError as exc:
            raise ValueError(f"{value} is outside what train accepts ({format_validation_error(exc)})") \
                from None


def nested(key: str, value) -> dict:
    """``lora.rank`` -> ``{"lora": {"rank": value}}``."""
    head, _, rest = key.partition(".")
    return {head: nested(rest, value) if rest else value}


def train_key(name: str, strategy: str) -> str:
    """The ``train:`` key a parameter sets for ``strategy``: whole-weight strategies train at
    ``full_learning_rate`` (see :func:`tunelens.train.trainer_args.learning_rate`)."""
    if name == "learning_rate" and strategy not in ADAPTER_STRATEGIES:
        return "full_learning_rate"
    return PARAMS[name][1]


def overrides(strategy: str, params: dict) -> dict:
    """A trial's parameters as a partial, nested ``train:`` section."""
    out: dict = {}
    for name, value in params.items():
        out = merge(out, nested(train_key(name, strategy), value))
    return out


def current_value(name: str, strategy: str, train: dict):
    """What the study trains ``strategy`` at today (None: the model's own, e.g. its dropout)."""
    if name == "learning_rate" and strategy not in ADAPTER_STRATEGIES:
        return train["full_learning_rate"] or train["learning_rate"] / 5
    value = train
    for part in PARAMS[name][1].split("."):
        value = value[part]
    return value


def default_space(strategy: str, train: dict) -> StrategySpace:
    """The space searched when a study has none for ``strategy``: the learning rate over two
    decades around the usual rates, warm-up, batch size, and for adapters their shape. Steps are
    not searched by default (at a fixed budget of nothing else, more steps always win).
    Categorical choices include the study's own value, so trial 0 can be the study's settings."""
    def choices(values: list[int], current: int) -> ParamRange:
        return ParamRange(choices=sorted({*values, current}))

    space = {"warmup_ratio": ParamRange(low=0.0, high=0.2),
             "batch_size": choices([4, 8, 16], train["batch_size"])}
    if strategy in ADAPTER_STRATEGIES:
        lora = train["lora"]
        space |= {"learning_rate": ParamRange(low=1e-4, high=1e-2, log=True),
                  "lora_rank": choices([4, 8, 16, 32], lora["rank"]),
                  "lora_alpha": choices([8, 16, 32, 64], lora["alpha"]),
                  "lora_dropout": ParamRange(low=0.0, high=0.2)}
    else:
        space |= {"learning_rate": ParamRange(low=1e-5, high=3e-3, log=True),
                  "weight_decay": ParamRange(low=0.0, high=0.1)}
    return StrategySpace(**space)


class TuneConfig(_Strict):
    """``tunelens tune``: the search space per strategy, how trials are pruned, and its results."""

    model: str | None = Field(None, description="the study model (its name) trials train; default: "
                              "the first")
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="stop a trial whose validation loss at an evaluation is worse than "
        "the median of earlier trials at that step, or Hyperband's successive halving")
    startup_trials: int = Field(2, ge=0, description="trials per strategy run to the end before any "
                                "is pruned (and before TPE stops sampling at random)")
    evaluations: int = Field(4, ge=1, description="validation-loss reports per trial (what pruning "
                             "acts on), unless train.eval_steps is set")
    spaces: dict[Strategy, StrategySpace] = Field(
        default_factory=dict, description="per strategy; one not listed gets the default space")
    tuned_from: str | None = Field(None, description="written by tunelens tune: the tuning folder "
                                   "whose figures the report shows")
    best: dict[Strategy, dict] = Field(
        default_factory=dict, description="written by tunelens tune: per strategy, the train: "
        "settings of its best trial, laid over train: for that strategy's cells")

    @field_validator("spaces")
    @classmethod
    def _spaces_search_something(cls, spaces: dict) -> dict:
        for strategy, space in spaces.items():
            if strategy in UNTUNED:
                raise ValueError(f"{strategy}: cannot be tuned ({UNTUNED[strategy]})")
            wasted = [n for n in space.dimensions() if PARAMS[n][2] and strategy not in ADAPTER_STRATEGIES]
            if wasted:
                raise ValueError(f"{strategy}: {', '.join(wasted)} tune adapters only, and "
                                 f"{strategy} trains none")
        return spaces

    @field_validator("best")
    @classmethod
    def _best_is_train_settings(cls, best: dict) -> dict:
        from tunelens.config import TrainConfig

        for settings in best.values():
            TrainConfig.model_validate(settings)  # a partial train: section (unknown keys fail)
        return best

    def space_for(self, strategy: str, train: dict) -> StrategySpace:
        return self.spaces.get(strategy) or default_space(strategy, train)

    def train_for(self, train, strategy: str):
        """``train`` (a TrainConfig) with the tuned settings of ``strategy`` laid over it."""
        settings = self.best.get(strategy)
        if not settings:
            return train
        return type(train).model_validate(merge(train.model_dump(), settings))


def merge(base: dict, over: dict) -> dict:
    """``over`` laid over ``base``, nested sections merged key by key."""
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) \
            else value
    return out
