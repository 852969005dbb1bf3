"""``tunelens tune``: Optuna trials on the micro model, resume, pruning, and bad search spaces."""

from __future__ import annotations

import json
import sqlite3

import optuna
import pytest
import yaml
from _train_data import clause_rows, one_torch_thread  # noqa: F401
from transformers import TrainerControl, TrainerState

from tunelens.cli import main
from tunelens.config import TrainConfig, load_study, parse_study
from tunelens.errors import TunelensError
from tunelens.tune.pruning import PruneOnEval


def _study(tmp_path, model_dir, **tune) -> dict:
    source = tmp_path / "clauses.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in clause_rows(60)))
    return {"name": "micro", "models": [{"name": "m", "path": str(model_dir)}], "strategies": ["lora"],
            "data": {"source": str(source), "val_fraction": 0.2},
            "train": {"max_steps": 4, "batch_size": 4, "max_length": 64, "logging_steps": 2,
                      "learning_rate": 1e-3},
            "tune": {"spaces": {"lora": {"learning_rate": {"low": 1e-4, "high": 3e-2, "log": True},
                                         "lora_rank": {"choices": [2, 4, 8]}}},
                     "evaluations": 2, **tune}}


def _write(tmp_path, raw: dict):
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _trials(db) -> list[tuple[int, str]]:
    with sqlite3.connect(db) as con:
        return con.execute("select number, state from trials order by number").fetchall()


def test_tune_writes_the_study_db_and_a_best_study_and_a_rerun_adds_trials(micro_model_dir, tmp_path):
    study_file, out = _write(tmp_path, _study(tmp_path, micro_model_dir)), tmp_path / "tuned"
    assert main(["tune", str(study_file), "--trials", "2", "--out", str(out), "--threads", "1"]) == 0
    assert [n for n, _ in _trials(out / "optuna.db")] == [0, 1]
    summary = json.loads((out / "tuning.json").read_text())["strategies"]["lora"]
    assert summary["trials"][0]["baseline"]  # trial 0 ran at the study's own settings
    assert summary["trials"][0]["params"] == {"learning_rate": 1e-3, "lora_rank": 8}
    assert summary["best"]["value"] == min(t["value"] for t in summary["trials"] if t["value"])
    assert [s for s, _ in summary["trials"][0]["intermediate"]] == [2, 4]  # evaluations: 2
    assert sorted(p.name for p in (out / "trials" / "lora" / "trial-001").iterdir()) == ["run.json"]

    best = load_study(out / "best.yaml")  # a study `tunelens run` takes
    assert best.tune.tuned_from == str(out.resolve())
    params = summary["best"]["params"]
    tuned = best.tune.train_for(best.train, "lora")
    assert (tuned.learning_rate, tuned.lora.rank) == (params["learning_rate"], params["lora_rank"])
    assert best.tune.train_for(best.train, "full") == best.train
    assert (out / "figures" / "tuning_history.png").stat().st_size > 0

    from tunelens.report.tuning import section  # a study run from best.yaml shows the tuning

    shown = section(out / "best.yaml")
    assert shown["source"] == str(out.resolve()) and set(shown["figures"]) >= {"history", "curves"}
    assert shown["rows"][0]["best"] == f"{summary['best']['value']:.4f}"
    assert section(study_file) is None  # not tuned: no section

    from tunelens.tune import tune_study

    result = tune_study(load_study(study_file), out, 1)  # the same Optuna study, one more trial
    assert [n for n, _ in _trials(out / "optuna.db")] == [0, 1, 2]
    assert sum(result.summary["strategies"]["lora"]["counts"].values()) == 3

    changed = _study(tmp_path, micro_model_dir)
    changed["tune"]["spaces"]["lora"]["lora_rank"] = {"choices": [2, 4]}
    with pytest.raises(TunelensError, match="searched other settings"):
        tune_study(parse_study(changed), out, 1)  # trials of another space are not mixed in


def _finished_trial(search, losses):
    trial = search.ask()
    for step, loss in losses:
        trial.report(loss, step)
    search.tell(trial, losses[-1][1])


def test_the_pruning_callback_stops_a_trial_worse_than_the_median():
    search = optuna.create_study(pruner=optuna.pruners.MedianPruner(n_startup_trials=1))
    _finished_trial(search, [(2, 1.0), (4, 0.8)])

    def evaluate(callback, loss, step):
        control, state = TrainerControl(), TrainerState(global_step=step)
        callback.on_evaluate(None, state, control, metrics={"eval_loss": loss})
        return control.should_training_stop

    good = PruneOnEval(search.ask())
    assert not evaluate(good, 5.0, 0)  # before training: not a report, never pruned
    good.on_train_begin(None, None, TrainerControl())
    assert not evaluate(good, 0.9, 2) and good.pruned_at is None

    bad = PruneOnEval(search.ask())
    bad.on_train_begin(None, None, TrainerControl())
    assert evaluate(bad, 3.0, 2) and bad.pruned_at == 2
    assert bad.reported == [(2, 3.0)]


@pytest.mark.parametrize("space, message", [
    ({"lora": {}}, "tune.spaces.lora': Value error, empty search space"),
    ({"lora": {"learning_rate": {"low": 1e-2, "high": 1e-4}}}, "low (0.01) must be below high"),
    ({"lora": {"learning_rate": {"low": 0.0, "high": 1e-3, "log": True}}}, "log range needs low > 0"),
    ({"lora": {"lora_rank": {"choices": [0, 8]}}}, "0 is outside what train accepts"),
    ({"full": {"lora_rank": {"choices": [4, 8]}}}, "lora_rank tune adapters only"),
    ({"none": {"learning_rate": {"low": 1e-4, "high": 1e-3}}}, "none: cannot be tuned (trains nothing)"),
    ({"lora": {"learnin_rate": {"low": 1e-4, "high": 1e-3}}}, "unknown key 'tune.spaces.lora.learnin_rate'"),
])
def test_a_bad_search_space_is_one_line_and_writes_nothing(space, message, tmp_path, capsys):
    raw = _study(tmp_path, tmp_path)
    raw["tune"]["spaces"] = space
    out = tmp_path / "never"
    assert main(["tune", str(_write(tmp_path, raw)), "--trials", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_tuned_settings_lie_over_train_for_their_strategy_only():
    raw = {"strategies": ["full", "lora"], "train": {"learning_rate": 1e-3, "batch_size": 8},
           "tune": {"best": {"lora": {"learning_rate": 2e-3, "lora": {"rank": 16}},
                             "full": {"full_learning_rate": 1e-5}}}}
    study = parse_study(raw)
    lora, full = study.tune.train_for(study.train, "lora"), study.tune.train_for(study.train, "full")
    assert (lora.learning_rate, lora.lora.rank, lora.lora.alpha, lora.batch_size) == (2e-3, 16, 16, 8)
    assert (full.full_learning_rate, full.learning_rate, full.lora.rank) == (1e-5, 1e-3, 8)
    assert isinstance(lora, TrainConfig)
    with pytest.raises(TunelensError, match="tune.best"):
        parse_study({"tune": {"best": {"lora": {"learning_rat": 1e-3}}}})


def test_a_study_written_by_tune_trains_each_strategy_at_its_best_settings(tmp_path):
    from tunelens.config import parse_study
    from tunelens.matrix import estimate, expand_matrix
    from tunelens.study import StudyRunner

    study = parse_study({"models": [{"name": "m", "path": "m"}], "strategies": ["full", "lora"],
                         "train": {"max_steps": 10, "learning_rate": 1e-3},
                         "tune": {"best": {"lora": {"learning_rate": 5e-3, "max_steps": 20}}}})
    runner = StudyRunner(study, tmp_path / "s")
    by = {c.identity.strategy: c for c in expand_matrix(study)}
    assert runner._train_config(by["lora"]).learning_rate == 5e-3
    assert runner._train_config(by["full"]).learning_rate == 1e-3  # untuned: the study's
    assert estimate(study, list(by.values()))["train_steps"] == 30
