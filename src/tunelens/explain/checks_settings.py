"""The ``checks`` section of a study: which explanation checks run after ``explain``, how cheaply.

A module of its own, importing only pydantic, so reading a study config never loads torch
(:mod:`tunelens.config` holds it as ``Study.checks``). Every check is off by default: a study that
does not ask for them keeps its stamps, its run time and its report. What each check measures is
its own module's: :mod:`tunelens.explain.faithfulness_run` (are the attributions faithful, against
a random ranking?), :mod:`tunelens.explain.probe_run` (does the rule follow a changed number and
ignore a renamed place?) and :mod:`tunelens.explain.layer_views` (where in the network did tuning
act?). Each writes one JSON per run, stamped like every other stage (:mod:`tunelens.study`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

# the probe kinds of tunelens.explain.probes.KINDS (a test checks that both agree)
PROBE_KINDS = ("number", "unit", "section", "occupancy", "jurisdiction", "person")


class _Check(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    enabled: bool = Field(False, description="run this check for every run of the study")


class FaithfulnessCheck(_Check):
    """Comprehensiveness, sufficiency and deletion/insertion areas of every attribution method of
    the run's parquet, beside a seeded random ranking (on the examples explain attributed)."""

    points: int = Field(11, ge=2, description="points of each deletion/insertion curve (cost: "
                        "one scored perturbation each, per method and example)")


class ProbeCheck(_Check):
    """Counterfactual edits of test clauses; the run's rule must follow or stay as the kind says."""

    kinds: list[str] = Field(default_factory=lambda: list(PROBE_KINDS),
                             description="probe kinds (number, unit, section, occupancy, "
                             "jurisdiction, person)")
    max_examples: int = Field(24, ge=1, description="test clauses edited (each costs one rule per "
                              "kind plus its own)")
    method: str | None = Field(None, description="also attribute every probe with this method "
                               "(two attributions per probe); None: rules only")

    @field_validator("kinds")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [k for k in value if k not in PROBE_KINDS]
        if unknown or not value:
            raise ValueError(f"unknown probe kind(s) {unknown} (known: {', '.join(PROBE_KINDS)})"
                             if unknown else "must list at least one probe kind")
        return value


class LayerCheck(_Check):
    """Per decoder layer: the logit lens of the reference, base-vs-tuned CKA and weight change."""

    max_examples: int = Field(4, ge=2, description="predictions rows whose prompts and references "
                              "are read (CKA over their tokens, the lens averaged over them)")


class ChecksConfig(BaseModel):
    """Explanation checks run per run after ``explain`` (all off by default)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    faithfulness: FaithfulnessCheck = FaithfulnessCheck()
    probes: ProbeCheck = ProbeCheck()
    layers: LayerCheck = LayerCheck()
