"""The checks every verb makes before working: a writable --out, valid choices, --threads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tunelens.cli import main
from tunelens.cli.options import existing, set_threads
from tunelens.errors import TunelensError, check_choice
from tunelens.io import check_writable
from tunelens.train.catalog import STRATEGIES


@pytest.fixture()
def readonly_dir(tmp_path):
    """A folder no file can be created in. Root ignores permission bits, so as root it is /proc
    (no regular files can be created there); the fixture proves the folder refuses writes."""
    if os.geteuid() == 0:
        folder = Path("/proc")
    else:
        folder = tmp_path / "ro"
        folder.mkdir()
        folder.chmod(0o555)
    with pytest.raises(OSError):
        (folder / "probe.txt").write_text("x")
    yield folder
    if folder != Path("/proc"):
        folder.chmod(0o755)


@pytest.fixture()
def a_file(tmp_path):
    path = tmp_path / "a_file.txt"
    path.write_text("not a folder\n")
    return path


def _no_work(*args, **kwargs):
    raise AssertionError("the verb started its work before checking --out")


def _one_line_error(capsys, code: int, pattern: str) -> str:
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert err.startswith("error:") and "\n" not in err, err
    assert pattern in err, err
    return err


def test_check_writable_accepts_new_paths_and_refuses_unwritable_ones(tmp_path, a_file, readonly_dir):
    assert check_writable(tmp_path / "new" / "deeper" / "m.json") == tmp_path / "new" / "deeper" / "m.json"
    assert check_writable(tmp_path / "existing-dir", "dir")
    assert not (tmp_path / "new").exists()  # checking creates nothing
    with pytest.raises(TunelensError, match="is a folder, expected a file"):
        check_writable(tmp_path, "file")
    with pytest.raises(TunelensError, match="is a file, expected a folder"):
        check_writable(a_file, "dir")
    with pytest.raises(TunelensError, match=f"{a_file} is a file"):
        check_writable(a_file / "sub" / "m.json")
    with pytest.raises(TunelensError, match="is not writable"):
        check_writable(readonly_dir / "sub" / "m.json")
    assert not list(tmp_path.glob(".tunelens-probe-*"))  # the probe leaves nothing behind


def test_existing_and_check_choice_are_one_line():
    with pytest.raises(TunelensError, match="nowhere.jsonl: no such file"):
        existing(Path("nowhere.jsonl"))
    assert check_choice(None, STRATEGIES, "--strategy", optional=True) is None
    assert check_choice("lora", STRATEGIES, "--strategy") == "lora"
    with pytest.raises(TunelensError, match=r"--strategy None: expected one of full, lora"):
        check_choice(None, STRATEGIES, "--strategy")  # not optional: None is no choice
    with pytest.raises(TunelensError, match=r"--strategy 'fulll': expected one of full, lora"):
        check_choice("fulll", STRATEGIES, "--strategy", optional=True)


@pytest.fixture()
def predictions(tmp_path):
    path = tmp_path / "preds.jsonl"
    path.write_text(json.dumps({"id": "1", "prompt": "p", "reference": "r", "prediction": "r"}) + "\n")
    return path


def test_evaluate_refuses_unwritable_out_before_scoring(predictions, tmp_path, a_file, readonly_dir,
                                                        monkeypatch, capsys):
    monkeypatch.setattr("tunelens.evaluate.evaluate", _no_work)
    base = ["evaluate", "--predictions", str(predictions), "--out"]
    _one_line_error(capsys, main([*base, str(tmp_path)]), "is a folder, expected a file")
    _one_line_error(capsys, main([*base, str(a_file / "m.json")]), f"{a_file} is a file")
    _one_line_error(capsys, main([*base, str(readonly_dir / "m.json")]), "is not writable")


def test_generate_refuses_unwritable_out_before_loading_the_model(predictions, a_file,
                                                                  readonly_dir, monkeypatch, capsys):
    monkeypatch.setattr("tunelens.infer.generate.generate_predictions", _no_work)
    base = ["generate", "--model", "any", "--data", str(predictions), "--out"]
    _one_line_error(capsys, main([*base, str(a_file.parent)]), "is a folder, expected a file")
    _one_line_error(capsys, main([*base, str(a_file / "p.jsonl")]), f"{a_file} is a file")
    _one_line_error(capsys, main([*base, str(readonly_dir / "p.jsonl")]), "is not writable")


def test_zoo_build_refuses_unwritable_out_before_training(a_file, readonly_dir, monkeypatch, capsys):
    monkeypatch.setattr("tunelens.models.zoo.build_zoo", _no_work)
    base = ["zoo", "build", "--preset", "quick", "--out"]
    _one_line_error(capsys, main([*base, str(a_file)]), "is a file, expected a folder")
    _one_line_error(capsys, main([*base, str(a_file / "zoo")]), f"{a_file} is a file")
    _one_line_error(capsys, main([*base, str(readonly_dir / "zoo")]), "is not writable")


@pytest.mark.parametrize("argv", [
    ["data", "build", "--out", "{bad}"],
    ["data", "prepare", "--input", "{src}", "--out", "{bad}"],
    ["categories", "--input", "{src}", "--out", "{bad}/c.jsonl"],
    ["explain", "--model", "m", "--data", "{src}", "--out", "{bad}/a.parquet"],
    ["rag", "index", "--corpus", "{src}", "--out", "{bad}/idx"],
    ["train", "--model", "m", "--data", "{dir}", "--strategy", "lora", "--objective", "causal",
     "--out", "{bad}/run"],
    ["export", "--model", "{dir}", "--out", "{bad}/merged"],
    ["faithfulness", "--model", "m", "--data", "{src}", "--attributions", "{src}",
     "--out", "{bad}/f.json"],
])
def test_every_writing_verb_checks_out_first(argv, predictions, a_file, capsys):
    values = {"bad": str(a_file), "src": str(predictions), "dir": str(predictions.parent)}
    code = main([a.format(**values) for a in argv])
    _one_line_error(capsys, code, str(a_file))


def test_bad_choices_and_values_are_one_line_before_any_work(predictions, tmp_path, monkeypatch,
                                                             capsys):
    monkeypatch.setattr("tunelens.explain.explain_run", _no_work)
    explain = ["explain", "--model", "m", "--data", str(predictions), "--out", str(tmp_path / "a.pq")]
    _one_line_error(capsys, main([*explain, "--method", "shap"]), "--method 'shap': expected one of")
    _one_line_error(capsys, main([*explain, "--granularity", "line"]), "--granularity 'line'")
    _one_line_error(capsys, main([*explain, "--baseline", "zero"]), "--baseline 'zero'")
    _one_line_error(capsys, main([*explain, "--n-samples", "0"]), "explain: bad value for 'n_samples'")
    train = ["train", "--model", "m", "--data", str(tmp_path), "--out", str(tmp_path / "run")]
    _one_line_error(capsys, main([*train, "--strategy", "lorax", "--objective", "causal"]),
                    "--strategy 'lorax': expected one of full, lora, qlora, dora, freeze")
    _one_line_error(capsys, main([*train, "--strategy", "lora", "--objective", "chat"]),
                    "--objective 'chat'")
    monkeypatch.setattr("tunelens.infer.generate.generate_predictions", _no_work)
    generate = ["generate", "--model", "m", "--data", str(predictions), "--out",
                str(tmp_path / "p.jsonl")]
    _one_line_error(capsys, main([*generate, "--max-new-tokens", "0"]),
                    "generate: bad value for 'max_new_tokens'")
    _one_line_error(capsys, main([*generate, "--num-samples", "3"]), "needs do_sample")


def test_flags_are_laid_over_the_config_section(predictions, tmp_path, monkeypatch, capsys):
    seen = {}

    def fake_generate(model, data, out, config, rag_index=None, rag_k=None, **settings):
        seen.update(config=config, rag_k=rag_k, settings=settings)
        return {"rows": 1, "tokens_generated": 3, "seconds": 0.5, "tokens_per_second": 6.0,
                "rag_k": rag_k, "prompt_format": settings["prompt_format"]}

    monkeypatch.setattr("tunelens.infer.generate.generate_predictions", fake_generate)
    config = tmp_path / "study.yaml"
    config.write_text("generation: {max_new_tokens: 7, top_k: 5}\nrag: {k: 4}\n")
    code = main(["generate", "--model", "m", "--data", str(predictions), "--out",
                 str(tmp_path / "p.jsonl"), "--config", str(config), "--top-k", "9", "--stop", "\\n",
                 "--prompt-format", "plain", "--dtype", "bfloat16"])
    assert code == 0, capsys.readouterr().err
    gen = seen["config"]
    assert (gen.max_new_tokens, gen.top_k, gen.stop, seen["rag_k"]) == (7, 9, ["\n"], 4)
    assert seen["settings"] == {"dtype": "bfloat16", "trust_remote_code": None, "prompt_format": "plain"}
    assert "6.0" in capsys.readouterr().out  # tokens/s through format.number


def test_threads_flag_sets_torch_threads(predictions, tmp_path, monkeypatch, capsys):
    import torch

    seen = {}

    def fake_evaluate(predictions, out, config):
        seen["threads"] = torch.get_num_threads()
        return {"aggregate": {"bleu": 12.5, "chrf": None}, "intervals": {"bleu": [10.0, 15.0]},
                "info": {"examples": 1}}

    monkeypatch.setattr("tunelens.evaluate.evaluate", fake_evaluate)
    before = torch.get_num_threads()
    try:
        assert main(["evaluate", "--predictions", str(predictions), "--out",
                     str(tmp_path / "m.json"), "--threads", "2"]) == 0
        assert seen["threads"] == 2
        set_threads(None)  # not given: torch's setting is left alone
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    out = capsys.readouterr().out
    assert "12.5000" in out and "[10.0000, 15.0000]" in out
