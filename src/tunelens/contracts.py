"""The files stages hand each other, as pydantic models: one definition, one error format.

A stage reads files another stage (or a user) wrote: dataset rows, predictions, a training run's
``run.json``, a ``metrics/<run>.json``, a run's identity. Each is described here once, and read
through :func:`read_rows` (JSONL, one model per line) or :func:`read_object` (one JSON document),
so every reader checks the same things and fails the same way: one :class:`TunelensError` line,
``file:line: field 'prompt': <reason>`` (``file: field ...`` for a whole-file document, where
the line of a field is not known). Row models remember where they came from (``row.where``) so a
stage's own later checks can name the line too.

Strings are strict: a JSON number where text is expected is an error, never turned into text
(a prompt ``5`` is almost always a wrong column, and silently training on "5" hides it). The
one exception is an id, where an integer is unambiguous and common: it is read as its text.
Numbers and NaN follow :mod:`tunelens.io`'s NaN policy (no NaN or Infinity in a JSON file; an
undefined number is ``null``), which the readers apply before a model sees a value.

Extra keys are allowed (kept on the model) so that a file with more columns than a stage needs
still reads; the models say what must be there and of what type.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    PrivateAttr,
    StrictStr,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from tunelens.errors import TunelensError
from tunelens.io import iter_jsonl, json_kind, printable, read_json

# -- field types --------------------------------------------------------------------------------


def _not_blank(value: str) -> str:
    if not value.strip():
        raise PydanticCustomError("blank", "is empty")
    return value


def _row_id(value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise PydanticCustomError("row_id", "must be a string or an integer, got {kind}",
                                  {"kind": json_kind(value)})
    return _not_blank(str(value))


def _ordered_pair(value: list[float]) -> list[float]:
    if value[0] > value[1]:
        raise PydanticCustomError("interval", "lower bound above the upper bound")
    return value


Text = Annotated[StrictStr, AfterValidator(_not_blank)]
"""Text that says something: a string, not only whitespace."""
AnyText = StrictStr
"""Any string, empty included (a model may generate nothing; that is a prediction too)."""
RowId = Annotated[str, PlainValidator(_row_id)]
"""A row's id: non-empty text, or an integer read as its text."""
Count = Annotated[int, Field(ge=0)]
Amount = Annotated[float, Field(ge=0)]
Interval = Annotated[list[float], Field(min_length=2, max_length=2), AfterValidator(_ordered_pair)]


class Contract(BaseModel):
    """Strict types (no number read as text, no text read as a number), extra keys kept."""

    model_config = ConfigDict(strict=True, extra="allow")


class Row(Contract):
    """A JSONL row; ``where`` is ``file:line`` once read by :func:`read_rows`."""

    _where: str = PrivateAttr(default="")

    @property
    def where(self) -> str:
        return self._where


# -- rows ---------------------------------------------------------------------------------------


class DatasetRow(Row):
    """A row of ``data/{train,val,test}.jsonl`` (TRL's prompt/completion convention).

    ``source`` is ``generated`` or ``handwritten`` in the bundled set; a user's file may carry
    its own labels, so any non-empty text is accepted.
    """

    id: RowId
    topic: Text
    source: Text
    prompt: Text
    completion: Text


class ClauseRow(Row):
    """A row a stage runs a model on (generate, explain, a RAG corpus): a prompt, the rest optional.

    A dataset row is one; so is a predictions row. Stages needing more ask for it with
    ``read_rows(..., require=("id",))`` (generate) or ``require=("completion",)`` (training, a
    RAG corpus). A completion, when there is one, says something, as in a dataset row.
    """

    id: RowId | None = None
    prompt: Text
    completion: Text | None = None
    topic: AnyText | None = None
    source: AnyText | None = None


class TextRow(Row):
    """A line of ``tunelens categories --input``: a text to tag (other keys are kept)."""

    text: AnyText


class TableRow(Row):
    """A user's row in ``data prepare`` after column mapping, before cleaning.

    Text or null: a null or empty prompt/completion is not an error here but a row the cleaning
    drops with its reason in the data card. The keys must be there (a missing column in one
    JSONL row is an error). Every CSV cell is text already; JSONL and Parquet keep their types,
    so a number where a prompt should be is an error naming the line or row.
    """

    id: RowId | None = None
    topic: AnyText | None = None
    source: AnyText | None = None
    prompt: AnyText | None
    completion: AnyText | None


class PredictionRow(Row):
    """A row of ``predictions/<run>.jsonl`` (:func:`tunelens.infer.generate.generate_predictions`).

    ``reference`` is null when the input had no completion (generation for its own sake);
    evaluation asks for it with ``require=("reference",)``, and the judge for ``prompt``.
    """

    id: RowId
    prompt: Text | None = None
    reference: AnyText | None = None
    prediction: AnyText
    samples: list[AnyText] | None = None
    rendered_prompt: AnyText | None = None
    topic: AnyText | None = None
    source: AnyText | None = None
    retrieved: list[RowId] | None = None
    truncated_chars: Count | None = None


# -- documents ----------------------------------------------------------------------------------


class RunIdentityRecord(Contract):
    """``runs/<run>.json``: who a run is (:class:`tunelens.layout.RunIdentity` as data)."""

    name: Text | None = None
    model: Text
    strategy: Text
    objective: Text
    rag: bool = False
    seed: Count | None = None
    prompt: Text | None = None
    train_prompt: Text | None = None


class LossPoint(Contract):
    step: Count
    loss: float | None


class RunRecord(Contract):
    """``models/<run>/run.json`` of a training run: the keys DESIGN.md promises, more allowed."""

    identity: RunIdentityRecord | None = None
    strategy: Text
    objective: Text
    base_model: Text
    trainable_params: Count
    total_params: Count
    train_loss: list[LossPoint]
    val_loss_before: float | None
    val_loss_after: float | None
    wall_seconds: Amount
    tokens_per_second: Amount | None
    peak_rss_mb: Amount | None

    @model_validator(mode="after")
    def _trainable_within_total(self) -> RunRecord:
        if self.trainable_params > self.total_params:
            raise PydanticCustomError("params", "trainable_params exceeds total_params")
        return self


class ExampleScores(Contract):
    """One example's scores in a metrics file (metric names are the evaluate stage's)."""

    id: RowId


class MetricsFile(Contract):
    """``metrics/<run>.json``: aggregate scores, their intervals, per-example scores, run facts.

    Metric names are not listed here: the metric registry of :mod:`tunelens.evaluate` owns them,
    and a file with fewer metrics (an older run, no rules) still reads.
    """

    aggregate: dict[str, float | None]
    intervals: dict[str, Interval | None] = {}
    per_example: list[ExampleScores]
    info: dict[str, Any] = {}

    @model_validator(mode="after")
    def _unique_examples(self) -> MetricsFile:
        seen: set[str] = set()
        for n, example in enumerate(self.per_example):
            if example.id in seen:
                raise PydanticCustomError("duplicate_id", "per_example.{n}: id '{id}' repeats",
                                          {"n": n, "id": printable(example.id)})
            seen.add(example.id)
        return self


# -- reading ------------------------------------------------------------------------------------

R = TypeVar("R", bound=Row)
C = TypeVar("C", bound=Contract)
Label = Callable[[str], str]


def field_label(name: str) -> str:
    return f"field '{name}'"


def describe(exc: ValidationError, label: Label = field_label) -> str:
    """The first problem of a validation error as ``field 'x': reason`` (and how many more)."""
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = printable(".".join(str(p) for p in err["loc"]))
    reason = err["msg"].removeprefix("Value error, ")
    reason = "missing" if err["type"] == "missing" else reason[:1].lower() + reason[1:]
    if err["type"].endswith("_type"):
        reason += f", got {json_kind(err['input'])}"
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{label(loc)}: {reason}{more}" if loc else f"{reason}{more}"


def parse_row(raw: dict, model: type[R], where: str, require: Iterable[str] = (),
              label: Label = field_label) -> R:
    """``raw`` as a ``model`` row that remembers ``where``; a problem is one error naming it.

    ``require`` names optional fields this caller needs present and not null.
    """
    try:
        row = model.model_validate(raw)
    except ValidationError as exc:
        raise TunelensError(f"{where}: {describe(exc, label)}") from None
    for name in require:
        if getattr(row, name, None) is None:
            raise TunelensError(f"{where}: {label(name)}: missing (needed here)")
    row._where = where
    return row


def read_rows(path: str | os.PathLike, model: type[R], *, require: Iterable[str] = (),
              allow_empty: bool = False, unique_ids: bool = False) -> list[R]:
    """Every row of a JSONL file as ``model``; the first bad line stops with ``file:line``.

    An empty file is an error unless ``allow_empty`` (an empty val split is legitimate).
    ``unique_ids`` also refuses a repeated ``id`` (rows that are joined on it).
    """
    path = Path(path)
    require = tuple(require)
    rows = [parse_row(raw, model, f"{path}:{line}", require) for line, raw in iter_jsonl(path)]
    if not rows and not allow_empty:
        raise TunelensError(f"{path}: empty file, no rows to read")
    if unique_ids:
        check_unique_ids((row.id, row.where) for row in rows)
    return rows


def read_object(path: str | os.PathLike, model: type[C]) -> C:
    """A JSON document (``run.json``, ``metrics/<run>.json``...) as ``model``, or one error line."""
    path = Path(path)
    raw = read_json(path)
    if not isinstance(raw, dict):
        raise TunelensError(f"{path}: expected a JSON object, got {json_kind(raw)}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise TunelensError(f"{path}: {describe(exc)}") from None


def check_unique_ids(ids: Iterable[tuple[str, str]]) -> None:
    """Refuse the first repeated id of ``(id, where)`` pairs, naming both places."""
    first: dict[str, str] = {}
    for row_id, where in ids:
        if row_id in first:
            raise TunelensError(f"{where}: duplicate id '{printable(row_id)}' (first at {first[row_id]})")
        first[row_id] = where
