"""Training memory on the CPU: TRL's fused LM head in small vocabulary tiles
(:func:`tunelens.train.trainer_args.small_vocab_tiles`) must reach the kernel and change nothing
that is learned. The SmolLM2 peak itself is measured by ``benchmarks/train_throughput.py``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from _train_data import clause_rows, one_torch_thread, write_data  # noqa: F401

from tunelens.config import TrainConfig
from tunelens.train import StrategySpec
from tunelens.train.objectives import format_rows
from tunelens.train.trainer_args import cpu_lm_head, sft_config, small_vocab_tiles


def test_small_vocab_tiles_keep_loss_and_gradients(micro_model, tmp_path, monkeypatch):
    """Tiles of 64 columns over the micro model's 400-token vocabulary (7 tiles, against TRL's
    one) reach the kernel and give the loss and gradients of plain full-logits cross-entropy."""
    from datasets import Dataset
    from trl import SFTTrainer
    from trl.trainer import utils as trl_utils

    model, tokenizer = micro_model
    assert model.config.vocab_size > 64 * 2  # else one tile, and this test proves nothing
    args = sft_config(TrainConfig(max_length=256), StrategySpec("full"), "instruct", tmp_path)
    trainer = SFTTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list(format_rows(clause_rows(6), tokenizer, "instruct")))
    batch = next(iter(trainer.get_train_dataloader()))
    tiles: list[int] = []
    kernel = trl_utils._ChunkedLogProbFunction

    class Spy:
        @staticmethod
        def apply(*args):
            tiles.append(args[5])  # (hidden, weight, bias, targets, temperature, chunk_size, ...)
            return kernel.apply(*args)

    monkeypatch.setattr(trl_utils, "_ChunkedLogProbFunction", Spy)

    def loss_and_grads(loss_of):
        model.zero_grad()
        loss = loss_of()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters() if p.grad is not None]

    def reference():  # what the fused head stands for: full logits, shifted, labelled positions only
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        labels = batch["labels"][:, 1:]
        return torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)),
                                                 labels.reshape(-1), ignore_index=-100)

    default = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    full_loss, full_grads = loss_and_grads(reference)
    with small_vocab_tiles(64):
        assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 64
        tiled_loss, tiled_grads = loss_and_grads(lambda: trainer.compute_loss(model, dict(batch)))
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == default  # TRL's own value restored
    assert tiles == [64]
    assert tiled_loss == pytest.approx(full_loss, rel=1e-5)
    assert len(tiled_grads) == len(full_grads)
    for a, b in zip(tiled_grads, full_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_training_uses_both_cpu_savings():
    """train() opens cpu_lm_head: labelled positions only, and small tiles."""
    from trl.trainer import utils as trl_utils

    default = trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE
    with cpu_lm_head():
        assert trl_utils._use_triton(torch.device("cpu")) is True
        assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == 4096 < default
    assert trl_utils._use_triton(torch.device("cpu")) is False
    assert trl_utils._CHUNKED_LOGPROB_CHUNK_SIZE == default


HEAP_PROBE = """
import ctypes, torch
from tunelens.train.heap import pin_mmap_threshold

class Info(ctypes.Structure):  # glibc's struct mallinfo2
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena ordblks smblks hblks hblkhd usmblks fsmblks "
                                                "uordblks fordblks keepcost").split()]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Info
def mapped_by(nbytes):  # bytes in own mappings while a tensor of nbytes is alive
    before = libc.mallinfo2().hblkhd
    t = torch.empty(nbytes // 4)
    return libc.mallinfo2().hblkhd - before
big = torch.empty(2 << 20); del big  # freeing 8 MiB raises the threshold to 8 MiB (max 32)
# after the pin, a block larger than the heap's free top (the 4 MiB just freed) but below the
# raised threshold: unpinned it would extend the heap, pinned it gets its own mapping
print(mapped_by(4 << 20), pin_mmap_threshold(), mapped_by(7 << 20))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc only")
def test_pinned_mmap_threshold_maps_activation_sized_blocks():
    """After a large block is freed glibc serves a 4 MiB block from the heap (where freed
    activations pile up); pinned, a new 7 MiB block is mapped on its own, so freeing returns it
    (a block that fits the heap's free top is still served from it). In a subprocess: the pin
    lasts for the process."""
    out = subprocess.run([sys.executable, "-c", HEAP_PROBE], capture_output=True, text=True,
                         check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.split()
    heap, pinned, mapped = int(out[0]), out[1], int(out[2])
    assert heap == 0 and pinned == "True"
    assert mapped >= 7 << 20


def test_release_memory_pins_the_threshold(micro_model_dir, tmp_path, monkeypatch):
    """train() pins it when (and only when) train.release_memory is asked for."""
    from tunelens.config import TrackingConfig
    from tunelens.train import runner

    data = write_data(tmp_path / "data", n_train=4, n_val=2)
    calls: list[int] = []
    monkeypatch.setattr(runner, "pin_mmap_threshold", lambda: calls.append(1) or True)
    for release in (False, True):
        config = TrainConfig(max_steps=1, batch_size=2, max_length=64, logging_steps=1,
                             gradient_checkpointing=True, release_memory=release)
        runner.train(str(micro_model_dir), data, tmp_path / str(release), "lora", "instruct",
                     config, TrackingConfig(enabled=False))
        assert len(calls) == int(release)
