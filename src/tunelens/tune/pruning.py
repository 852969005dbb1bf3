"""The bridge from a training's periodic evaluations to Optuna's pruner.

transformers' own ``Trainer.hyperparameter_search(backend="optuna")`` runs the Optuna loop itself
around one Trainer; here a trial is a whole tunelens training (strategy applied, run folder,
``run.json``), so only the reporting is needed. Rather than raising ``TrialPruned`` inside
``trainer.train`` (which would cut the runner's clean-up short), the callback asks the Trainer to
stop through its public control flag: a pruned trial ends the way every run ends, with a final
validation loss and ``stopped_early`` in its ``run.json``.
"""

from __future__ import annotations

import math

from transformers import TrainerCallback


class PruneOnEval(TrainerCallback):
    """While training runs, at each evaluation: report the validation loss to ``trial`` at the
    global step, and stop training when the pruner says the trial is worse than its peers were
    at that step (or the loss is no longer finite). Evaluations before and after training (the
    runner's ``val_loss_before`` / ``val_loss_after``) are not reports."""

    def __init__(self, trial) -> None:
        self.trial = trial
        self.training = False
        self.pruned_at: int | None = None
        self.reported: list[tuple[int, float]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.training = True
        return control

    def on_train_end(self, args, state, control, **kwargs):
        self.training = False
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        loss = (metrics or {}).get("eval_loss")
        if not self.training or loss is None:
            return control
        if not math.isfinite(loss):
            self.pruned_at = state.global_step
            control.should_training_stop = True  # diverged: no later step will be better
            return control
        self.trial.report(float(loss), state.global_step)
        self.reported.append((state.global_step, float(loss)))
        if self.trial.should_prune():
            self.pruned_at = state.global_step
            control.should_training_stop = True
        return control
