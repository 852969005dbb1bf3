"""Where everything of a study lives, and who each run is: the one description of a study folder.

Every module that reads or writes a study folder asks :class:`StudyLayout` for the path instead
of joining strings of its own, so the layout (drawn in ``docs/architecture.md``) is stated once.
A run's identity — model, strategy, objective, prompt, retrieval, seed — is data (:class:`RunIdentity`),
written to ``runs/<run>.json`` by the study runner and into each trained model's ``run.json``;
readers load it from there and never parse it back out of a file name.

::

    <out>/
      study.yaml                     resolved config          .lock      held while a run is going
                                                              .lock.pid  its holder's PID
      status.json                    cells and their state    .stamps/   one fingerprint per output
      runs/<run>.json                identity of each run     logs/      a traceback per failed cell
      data/{train,val,test}.jsonl    rag/  (index)            mlflow.db + mlartifacts/  (tracking)
      models/<train run>/            weights or adapter, tokenizer, run.json
      predictions/<run>.jsonl        metrics/<run>.json       attributions/<run>.parquet (+ .html)
      stats/*.json                   figures/*.png            report.html
      checks/{faithfulness,probes,layers}/<run>.json          (only the checks a study switches on)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from tunelens.io import write_json


@dataclass(frozen=True)
class RunIdentity:
    """Who a run is. RAG runs share the trained model of their non-RAG twin (``train_name``)."""

    model: str
    strategy: str
    objective: str
    rag: bool = False
    seed: int | None = None  # None: a run outside a study (``tunelens train``), no replicates
    prompt: str | None = None  # a named prompt of the study's ``prompts`` axis; None: none named
    # the prompt whose trained model this run shares (same format and instruction: few-shot
    # examples are added at generation only); None: its own
    train_prompt: str | None = None

    @property
    def name(self) -> str:
        """``<model>__<strategy>__<objective>[__<prompt>][__rag][__s<seed>]``: a label, never
        parsed back."""
        return "__".join([self.model, self.strategy, self.objective]
                         + ([self.prompt] if self.prompt else [])
                         + (["rag"] if self.rag else [])
                         + ([f"s{self.seed}"] if self.seed is not None else []))

    @property
    def train_name(self) -> str:
        """The name of the trained model this run uses (the same for a run and its RAG twin, and
        for prompts that differ only in their few-shot examples)."""
        return replace(self, rag=False, prompt=self.train_prompt or self.prompt, train_prompt=None).name

    @property
    def cell(self) -> str:
        """The name without the seed: replicates of one cell share it."""
        return replace(self, seed=None).name

    @property
    def arm(self) -> str:
        """What the comparison sets against each other within a model and objective: the
        strategy, with the prompt when the study names one (``lora · few-shot-3``)."""
        from tunelens.train.catalog import ARM_JOIN

        return f"{self.strategy}{ARM_JOIN}{self.prompt}" if self.prompt else self.strategy

    def to_dict(self) -> dict:
        """The record of ``runs/<run>.json`` (the prompt fields only when the study names one)."""
        out = {"name": self.name, **asdict(self)}
        for key in ("prompt", "train_prompt"):
            if out[key] is None:
                del out[key]
        return out

    @classmethod
    def from_dict(cls, raw: dict, origin: str = "identity") -> RunIdentity:
        """Strictly: a seed of "1" or a rag of "false" is an error, not a guess."""
        from tunelens.contracts import RunIdentityRecord, parse_row

        record = parse_row(raw, RunIdentityRecord, origin)
        return cls(**record.model_dump(include=IDENTITY_FIELDS))


IDENTITY_FIELDS = {f.name for f in fields(RunIdentity)}


@dataclass(frozen=True)
class StudyLayout:
    """The paths of one study folder (nothing is created by asking)."""

    root: Path

    def __post_init__(self):
        object.__setattr__(self, "root", Path(self.root))

    # -- study-wide files ---------------------------------------------------------------------
    @property
    def study_yaml(self) -> Path:
        return self.root / "study.yaml"

    @property
    def status(self) -> Path:
        return self.root / "status.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def lock_pid(self) -> Path:
        """Beside the lock: the PID of the run holding it, so a second run can name it."""
        return self.root / ".lock.pid"

    @property
    def stamps(self) -> Path:
        return self.root / ".stamps"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def split(self, name: str) -> Path:
        """``data/<name>.jsonl`` for ``train``, ``val`` or ``test``."""
        return self.data / f"{name}.jsonl"

    @property
    def rag(self) -> Path:
        return self.root / "rag"

    @property
    def runs(self) -> Path:
        return self.root / "runs"

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def predictions_dir(self) -> Path:
        return self.root / "predictions"

    @property
    def metrics_dir(self) -> Path:
        return self.root / "metrics"

    @property
    def attributions_dir(self) -> Path:
        return self.root / "attributions"

    @property
    def stats(self) -> Path:
        return self.root / "stats"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def mlflow_artifacts(self) -> Path:
        return self.root / "mlartifacts"

    # -- per run ------------------------------------------------------------------------------
    def model_dir(self, run: RunIdentity) -> Path:
        return self.models / run.train_name

    def run_json(self, run: RunIdentity) -> Path:
        """The trained model's record (written last: a model folder without it is unfinished)."""
        return self.model_dir(run) / "run.json"

    def predictions(self, run: RunIdentity) -> Path:
        return self.predictions_dir / f"{run.name}.jsonl"

    def metrics(self, run: RunIdentity) -> Path:
        return self.metrics_dir / f"{run.name}.json"

    def attributions(self, run: RunIdentity) -> Path:
        return self.attributions_dir / f"{run.name}.parquet"

    @property
    def checks(self) -> Path:
        return self.root / "checks"

    def check(self, kind: str, run: RunIdentity) -> Path:
        """``checks/<kind>/<run>.json``: one explanation check (faithfulness, probes, layers)."""
        return self.checks / kind / f"{run.name}.json"

    def log(self, run: RunIdentity) -> Path:
        return self.logs / f"{run.name}.txt"

    def identity_file(self, run: RunIdentity) -> Path:
        return self.runs / f"{run.name}.json"

    def write_identity(self, run: RunIdentity) -> None:
        write_json(self.identity_file(run), run.to_dict())

    def identities(self) -> list[RunIdentity]:
        """Every run recorded in ``runs/``, sorted by name."""
        found = []
        from tunelens.contracts import RunIdentityRecord, read_object

        for path in sorted(self.runs.glob("*.json")):
            record = read_object(path, RunIdentityRecord)
            found.append(RunIdentity(**record.model_dump(include=IDENTITY_FIELDS)))
        return sorted(found, key=lambda r: r.name)
