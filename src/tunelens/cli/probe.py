"""The probe verb: counterfactual and robustness probes of a run (:mod:`tunelens.explain.probes`)."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelens.cli import options as opt
from tunelens.cli.app import app, console
from tunelens.config import GenerationConfig
from tunelens.errors import check_choice
from tunelens.explain.catalog import METHODS
from tunelens.explain.checks_settings import PROBE_KINDS
from tunelens.format import choices, interval, number
from tunelens.io import check_writable


@app.command("probe")
def probe_cmd(
    model: str = opt.model_option(),
    data: Path = typer.Option(..., "--data", help="JSONL of rows with 'id' and 'prompt' (the "
                              "clause); a dataset split works as it is."),
    out: Path = opt.out_option("Probe report (JSON): per kind the rate of correct behaviour with "
                               "its bootstrap interval, examples, and every probe's record."),
    kinds: str = typer.Option(",".join(PROBE_KINDS), "--kinds",
                              help="Comma-separated probe kinds: number and section and occupancy "
                              "(the rule must follow the edit), unit, jurisdiction and person (it "
                              "must not change its verdicts)."),
    max_examples: int = typer.Option(None, "--max-examples", min=1, help="A sample of N rows, "
                                     "stratified by topic and source (seeded by --seed); default: all."),
    method: str = typer.Option("occlusion", "--method", help="Attribution method for the edited "
                               "span's share of attribution (two attributions per probe): "
                               + choices(METHODS) + "; or none to skip attribution."),
    max_new_tokens: int = opt.field_option(GenerationConfig, "max_new_tokens", "--max-new-tokens",
                                           "Longest rule generated", min=1),
    anchors: int = typer.Option(0, "--anchors", min=0, help="Also find the anchor (the smallest set "
                                "of clause words that keeps the rule's --anchor-field with "
                                "precision >= 0.95) of the first N clauses; each costs hundreds "
                                "of generations."),
    anchor_field: str = typer.Option("limit", "--anchor-field", help="What the anchor keeps: limit "
                                     "(comparator, value and unit), rule (all of it) or one field: "
                                     "id, element, property, comparator, value, unit, conditions."),
    seed: int = typer.Option(0, "--seed", help="Seed of the sample, the edits and the bootstrap."),
    dtype: str = opt.dtype_option(trained=False),
    trust_remote_code: bool = opt.trust_remote_code_option(trained=False),
    prompt_format: str = opt.prompt_format_option(trained=False),
    threads: int = opt.threads_option(),
) -> None:
    """Edit each clause in controlled ways (another unit, section number, jurisdiction, occupancy,
    a neutral word for people, a changed number) and check the model's rule follows the edits it
    should and ignores the others."""
    from tunelens.explain.anchors import FIELDS
    from tunelens.explain.probes import make_edits

    chosen = [k.strip() for k in kinds.split(",") if k.strip()]
    make_edits([], chosen)  # unknown kinds: one line, before anything loads
    check_choice(anchor_field, FIELDS, "--anchor-field", optional=True)
    if method != "none":
        check_choice(method, METHODS, "--method", optional=True)
    opt.check_model_settings(dtype, prompt_format)
    opt.existing(data)
    check_writable(out, "file")
    opt.set_threads(threads)
    from tunelens.explain.probe_run import probe_file

    generation = GenerationConfig(**({} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}))
    report = probe_file(model, data, out, chosen, max_examples, seed,
                        None if method == "none" else method, generation=generation, anchors=anchors,
                        anchor_field=anchor_field, dtype=dtype,
                        trust_remote_code=trust_remote_code, prompt_format=prompt_format)
    _print_report(out, report)


def _print_report(out: Path, report: dict) -> None:
    from tunelens.explain.probes import KINDS

    rows = [(kind, KINDS[kind], s["scored"], s["unparsed"] + s["not_applicable"],
             interval(s["rate"], *(s["interval"] or (None, None))),
             "yes" if s["passed"] else "no", number(s["edited_share_before"]),
             number(s["edited_share_after"])) for kind, s in report["kinds"].items()]
    opt.print_table(f"probe -> {out}", ("kind", "rule must", "scored", "skipped", "correct [95% CI]",
                                        "passed", "share on edit before", "after"), rows, left=2)
    for found in report.get("anchors", []):
        console.print(found.get("sentence") or found["error"], highlight=False, markup=False)
