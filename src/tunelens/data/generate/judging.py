"""The judge filter of ``data generate``: a second model grades each pair that passed the other
filters, and a pair graded below ``--min-judge-score`` goes to the rejects file.

The grade is the mean of the judge's accuracy and relevance (1 to 5) from
:mod:`tunelens.evaluate.judge` (the same client, retries and tolerant parser that grade
predictions), through the ``data-v1`` template, which asks whether the rule states exactly what
the clause requires (there is no reference to compare with). The grades are recorded in each kept
row's provenance; a judge that gives no parseable grade after its retries rejects the row rather
than keep it unchecked.
"""

from __future__ import annotations

from tunelens.config import JudgeConfig
from tunelens.evaluate.judge import judge_one, load_template, make_backend

FILTER = "judge"
TEMPLATE = "data-v1"


class PairJudge:
    """A judge backend and template, opened once for a whole ``data generate`` run."""

    def __init__(self, config: JudgeConfig, threshold: float):
        self.config, self.threshold = config, threshold
        self.template = load_template(config.template_version)
        self.backend = make_backend(config)

    def grade(self, row: dict) -> tuple[dict | None, str | None]:
        """(the grades to record, None) for a row that passes; (grades or None, reason) otherwise."""
        judged = judge_one(self.backend, self.template, row["prompt"], "", row["completion"], self.config)
        if judged.verdict is None:
            return None, f"the judge gave no parseable grade in {judged.attempts} attempt(s)"
        v = judged.verdict
        grades = {"accuracy": v.accuracy, "relevance": v.relevance,
                  "score": (v.accuracy + v.relevance) / 2, "template": self.template.version,
                  "judge": self.backend.name}
        if grades["score"] < self.threshold:
            why = f": {v.rationale}" if v.rationale else ""
            return grades, f"judge score {grades['score']:g} < {self.threshold:g}{why}"
        return grades, None

    def close(self) -> None:
        self.backend.close()
