"""Tiny clause → rule data for the train/export tests (written by the tests, ~40 rows)."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

THINGS = ["stair", "ramp", "door", "corridor", "handrail"]
ATTRS = ["width", "slope", "height", "opening"]
WORDS = [("not less than", ">="), ("not more than", "<=")]


def clause_rows(n: int, seed: int = 0) -> list[dict]:
    rnd = random.Random(seed)
    rows = []
    for i in range(n):
        thing, attr, (words, op) = rnd.choice(THINGS), rnd.choice(ATTRS), rnd.choice(WORDS)
        value = rnd.randint(1, 99) * 10
        rows.append({"id": f"r{seed}-{i}", "topic": thing, "source": "generated",
                     "prompt": f"The {attr} of a {thing} shall be {words} {value} mm.",
                     "completion": f"RULE {thing}.{attr} {op} {value} mm"})
    return rows


def write_data(folder: Path, n_train: int = 40, n_val: int = 10) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in (("train", clause_rows(n_train, 0)), ("val", clause_rows(n_val, 1))):
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Micro-model matmuls gain nothing from threads, and on a busy 2-core machine OpenMP's
    spinning threads make them up to ~80x slower; restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
