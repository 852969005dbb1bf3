"""The bundled code-compliance dataset, written through the same pipeline as a user's file.

:func:`tunelens.data.compliance.dataset.bundled_rows` makes the rows (generated clauses plus
hand-written ones); this module only feeds them to :func:`tunelens.data.prepare.run_pipeline`
so that cleaning, de-duplication, splitting and the leakage check are the ones a user's data
gets. The one difference: hold-out rows (hand-written clauses whose topics or phrasings the
generator never produces) all go to the test split, on top of the test fraction of the rest,
so the test split measures generalisation beyond the generator as well as within it.

The card also states how the hand-written clauses were checked against the public texts they
paraphrase (``handwritten_check``: rows verified / corrected / unverified; docs/dataset.md).
"""

from __future__ import annotations

from pathlib import Path

from tunelens.config import DataConfig
from tunelens.data.prepare import Step, check_out, run_pipeline, write_dataset


def bundled_records(seed: int = 0) -> list[dict]:
    """The bundled rows in the pipeline's input form (``_where`` names the row, ``_holdout``)."""
    from tunelens.data.compliance.dataset import bundled_rows

    records = []
    for n, row in enumerate(bundled_rows(seed=seed), start=1):
        records.append({
            "id": str(row["id"]), "topic": row["topic"], "source": row["source"],
            "prompt": row["prompt"], "completion": row["completion"],
            "_where": f"bundled row {n} ({row['id']})", "_holdout": bool(row.get("holdout", False)),
        })
    return records


def build_bundled(out: Path, config: DataConfig, on_step: Step | None = None) -> dict:
    """Write the bundled dataset's splits and data card to ``out``; return the card."""
    out = Path(out)
    check_out(out)
    if on_step:
        on_step("generating")
    records = bundled_records(seed=config.seed)
    facts = {"source": "bundled", "format": "generated", "ids_generated": False,
             "columns": {"id": "id", "topic": "topic", "prompt": "prompt", "completion": "completion"},
             "dropped_columns": []}
    splits, card = run_pipeline(records, config, facts, on_step)
    from tunelens.data.compliance.dataset import check_summary

    card["handwritten_check"] = check = check_summary()
    card["notes"] = [f"{card['holdout']['forced_to_test']} hold-out row(s) placed in test on top of "
                     f"the test fraction of the other rows",
                     f"hand-written clauses checked against the public texts: {check['verified']} "
                     f"verified, {check['corrected']} corrected, {check['unverified']} unverified "
                     f"(see {check['described_in']})"]
    if on_step:
        on_step("writing")
    write_dataset(out, splits, card)
    return card
