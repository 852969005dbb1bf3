"""Training options reach the trainer: 8-bit / paged AdamW (bitsandbytes) and gradient
checkpointing, which must really recompute and still train every strategy's weights."""

from __future__ import annotations

import sys

import pytest
import torch
from _train_data import one_torch_thread, write_data  # noqa: F401

from tunelens.config import TrainConfig
from tunelens.errors import TunelensError
from tunelens.train.runner import build_trainer, read_inputs
from tunelens.train.strategies import decoder_layers
from tunelens.train.trainer_args import check_optimizer, completion_positions_only

QUICK = dict(max_steps=1, batch_size=4, logging_steps=1, warmup_ratio=0.0, max_length=128,
             learning_rate=1e-2, full_learning_rate=1e-2)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_data(tmp_path_factory.mktemp("options-data"), n_train=8, n_val=4)


def _session(model_dir, data_dir, work, strategy, **settings):
    config = TrainConfig(**{**QUICK, **settings})
    inputs = read_inputs(str(model_dir), data_dir, strategy, "instruct", config, None)
    with completion_positions_only():
        return build_trainer(inputs, work, None, False)


@pytest.mark.filterwarnings("ignore:Paged optimizers are not supported on CPU")
@pytest.mark.parametrize("name", ["adamw_8bit", "paged_adamw_8bit"])
def test_8bit_adamw_keeps_its_states_in_8_bits(name, micro_model_dir, data_dir, tmp_path):
    session = _session(micro_model_dir, data_dir, tmp_path / "w", "full", optimizer=name)
    with completion_positions_only():
        session.trainer.train()
    optimizer = getattr(session.trainer.optimizer, "optimizer", session.trainer.optimizer)
    assert type(optimizer).__module__.startswith("bitsandbytes.")
    assert optimizer.args.optim_bits == 8 and optimizer.is_paged == name.startswith("paged")
    head = session.trainer.model.get_output_embeddings().weight  # 400 x 32: above bnb's 4096
    assert optimizer.state[head]["state1"].dtype == torch.uint8
    embedding = session.trainer.model.get_input_embeddings().weight  # the Trainer keeps 32 bits
    assert optimizer.state[embedding]["state1"].dtype == torch.float32  # for embeddings


def test_8bit_optimizer_without_bitsandbytes_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when not installed
    with pytest.raises(TunelensError, match="adamw_8bit needs bitsandbytes"):
        check_optimizer("adamw_8bit")
    check_optimizer("adamw")  # torch's needs nothing


def test_8bit_optimizer_bitsandbytes_cannot_run_is_one_line(monkeypatch):
    import bitsandbytes as bnb

    def broken(*args, **kwargs):
        raise RuntimeError("no 8-bit kernels for this device\nmore detail")

    monkeypatch.setattr(bnb.optim, "AdamW8bit", broken)
    with pytest.raises(TunelensError, match=r"cannot run it on this machine's cpu \(no 8-bit kernels "
                                            r"for this device\); use adamw$"):
        check_optimizer("adamw_8bit")


@pytest.mark.parametrize("strategy", ["full", "freeze", "lora", "qlora"])
def test_gradient_checkpointing_recomputes_and_still_trains(strategy, micro_model_dir, data_dir, tmp_path):
    """With checkpointing each block runs twice per step (forward, then again in backward), and
    the trainable weights inside the blocks still move (reentrant checkpointing without
    ``enable_input_require_grads`` leaves them without gradient above a frozen embedding)."""
    counts = {}
    for checkpointing in (False, True):
        session = _session(micro_model_dir, data_dir, tmp_path / str(checkpointing), strategy,
                           gradient_checkpointing=checkpointing)
        model = session.trainer.model
        top = decoder_layers(model)[-1]
        calls: list[int] = []  # on a sub-module: a checkpointed block re-runs forward, not __call__
        next(top.children()).register_forward_hook(lambda *_, seen=calls: seen.append(1))
        before = {n: p.detach().clone() for n, p in top.named_parameters() if p.requires_grad}
        assert before, "the top block has trainable weights"
        with completion_positions_only():
            session.trainer.train()
        after = dict(top.named_parameters())
        assert any(not torch.equal(before[n], after[n]) for n in before), "no block weight moved"
        counts[checkpointing] = len(calls)
    assert counts == {False: 1, True: 2}
