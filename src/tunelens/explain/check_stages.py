"""The study's check stages after ``explain``: faithfulness, probes and layer views of one run.

Each runs only when ``study.checks`` switches it on, through the runner's own stage machinery
(:meth:`tunelens.study.StudyRunner.run_stage`): its output is ``checks/<kind>/<run>.json``
(:meth:`tunelens.layout.StudyLayout.check`), its stamp the fingerprint of its settings and of the
content of every file it reads, so a check re-runs when the model, the attributions or the
settings change, and never because a file was touched.

The checks that run share one load of the run's model (:class:`OneLoad`: loaded when the first
of them starts, never when all are skipped), as a real model takes seconds to load each time.

Probes and layer views read only the trained model (and the test split or its predictions), so a
retrieval cell, which shares its twin's model, is not probed twice: probes do not retrieve, and
its twin's layers are the same network. Faithfulness reads the run's own attributions, so every
run with attributions gets it.
"""

from __future__ import annotations

from pathlib import Path

from tunelens.config import GenerationConfig
from tunelens.fingerprint import fingerprint

FAITHFULNESS, PROBES, LAYERS = "faithfulness", "probes", "layers"
CHECK_STAGES = (FAITHFULNESS, PROBES, LAYERS)


def enabled_checks(checks, rag: bool) -> tuple[str, ...]:
    """The check stages a cell runs, in order: those ``checks`` (a study's ``checks:``) switch on,
    less probes and layer views for a retrieval cell (its twin's model, probed once there). The
    one rule for running them, counting them in the live view and in the dry run's estimate."""
    on = {FAITHFULNESS: checks.faithfulness.enabled, PROBES: checks.probes.enabled and not rag,
          LAYERS: checks.layers.enabled and not rag}
    return tuple(kind for kind in CHECK_STAGES if on[kind])


class OneLoad:
    """The run's (model on its device, tokenizer), loaded on the first call and kept for the next
    ones: the checks of one cell read the same model, none of them changes its weights."""

    def __init__(self, model_dir: Path):
        self.model_dir, self.pair = model_dir, None

    def __call__(self) -> tuple:
        if self.pair is None:
            from tunelens.models.loading import load_placed
            from tunelens.models.run_settings import ModelSettings

            self.pair = load_placed(str(self.model_dir), ModelSettings.of(str(self.model_dir)))
        return self.pair


def run_checks(runner, cell, status, base: str, explain_seed: int) -> None:
    """The switched-on checks of ``cell``, after its explain stage (``runner``: a StudyRunner)."""
    checks, layout, run = runner.study.checks, runner.layout, cell.identity
    model_dir, pred, attr = layout.model_dir(run), layout.predictions(run), layout.attributions(run)
    seed = cell.seed if cell.seed is not None else 0
    kinds = enabled_checks(checks, run.rag)
    loaded = OneLoad(model_dir)
    if FAITHFULNESS in kinds:
        cfg = checks.faithfulness
        out = layout.check(FAITHFULNESS, run)
        runner.run_stage(cell, status, FAITHFULNESS, out,
                      lambda: fingerprint(FAITHFULNESS, cfg.model_dump(mode="json"), explain_seed,
                                          files=[model_dir, pred, attr]),
                      lambda: _faithfulness(model_dir, pred, attr, out, cfg.points, explain_seed,
                                            loaded()))
    if PROBES in kinds:
        cfg, test = checks.probes, layout.split("test")
        generation = GenerationConfig(max_new_tokens=runner.study.generation.max_new_tokens)
        out = layout.check(PROBES, run)
        runner.run_stage(cell, status, PROBES, out,
                      lambda: fingerprint(PROBES, cfg.model_dump(mode="json"), seed,
                                          generation.model_dump(mode="json"), files=[model_dir, test]),
                      lambda: _probes(model_dir, test, out, cfg, seed, generation, loaded()))
    if LAYERS in kinds:
        cfg = checks.layers
        out = layout.check(LAYERS, run)
        local = Path(base).exists()
        runner.run_stage(cell, status, LAYERS, out,
                      lambda: fingerprint(LAYERS, cfg.model_dump(mode="json"), None if local else base,
                                          files=[model_dir, pred] + ([Path(base)] if local else [])),
                      lambda: _layers(model_dir, base, pred, out, cfg.max_examples, loaded()))


def _faithfulness(model_dir: Path, pred: Path, attr: Path, out: Path, points: int, seed: int,
                  loaded: tuple) -> None:
    from tunelens.explain.faithfulness_run import faithfulness_run

    faithfulness_run(str(model_dir), pred, [attr], out, points=points, seed=seed, progress=False,
                     loaded=loaded)


def _probes(model_dir: Path, test: Path, out: Path, cfg, seed: int, generation: GenerationConfig,
            loaded: tuple) -> None:
    from tunelens.explain.probe_run import probe_file

    probe_file(str(model_dir), test, out, kinds=cfg.kinds, max_examples=cfg.max_examples, seed=seed,
               method=cfg.method, progress=False, generation=generation, loaded=loaded)


def _layers(model_dir: Path, base: str, pred: Path, out: Path, max_examples: int,
            loaded: tuple) -> None:
    from tunelens.explain.layer_views import layer_views

    layer_views(str(model_dir), base, pred, out, max_examples=max_examples, loaded=loaded)
