"""The update that reads nothing back on the host (what training does on CUDA), run on the CPU:
it equals the host-checked update, reads no tensor value, and still skips and counts updates
with a non-finite loss or gradient (read at the next log line)."""

from __future__ import annotations

import contextlib

import pytest
import torch

from s2s.model.seq2seq import Seq2Seq
from s2s.train.trainer import Trainer, TrainingStopped
from tests.test_precision import with_scaler
from tests.test_training import small_config


def trainer_for(tmp_path, *extra: str, sync_free: bool) -> Trainer:
    trainer = Trainer(small_config(tmp_path, *extra), backend="plain")
    trainer.sync_free = sync_free
    return trainer


@pytest.mark.parametrize("scaler", [False, True], ids=["fp32", "with-scaler"])
def test_sync_free_training_equals_host_checked_training(tmp_path, scaler):
    runs = []
    for sync_free in (False, True):
        losses: list[float] = []
        trainer = trainer_for(tmp_path / str(sync_free), "training.max_steps=12",
                              sync_free=sync_free)
        if scaler:
            with_scaler(trainer)
        trainer.on_update = lambda record: losses.append(record.loss)
        trainer.train()
        runs.append((trainer, losses))
    (host, host_losses), (device, device_losses) = runs
    assert device_losses == host_losses and len(host_losses) == 12
    for (name, a), b in zip(host.model.state_dict().items(), device.model.state_dict().values()):
        assert torch.equal(a, b), name
    steps = [s["step"] for s in device.optimizer.state.values()]
    assert all(int(step) == 12 for step in steps)


@contextlib.contextmanager
def host_reads_forbidden():
    """Any Python-level read of a tensor's value (item, bool, float, int, tolist) raises."""
    def refuse(self, *args, **kwargs):
        raise AssertionError("a tensor value was read on the host")

    names = ("item", "__bool__", "__float__", "__int__", "tolist")
    saved = {name: getattr(torch.Tensor, name) for name in names}
    try:
        for name in names:
            setattr(torch.Tensor, name, refuse)
        yield
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


def test_a_sync_free_update_reads_no_tensor_value(tmp_path):
    trainer = trainer_for(tmp_path, "training.max_steps=3", sync_free=True)
    batches = trainer._batches()
    trainer._update([next(batches)])  # the first one creates the optimizer's state
    with host_reads_forbidden():
        loss, tokens = trainer._update([next(batches)])
    assert isinstance(loss, torch.Tensor) and tokens > 0
    with pytest.raises(AssertionError, match="read on the host"), host_reads_forbidden():
        trainer_for(tmp_path / "host", sync_free=False)._update([next(batches)])


def poison(monkeypatch, from_call: int, until_call: int = 10**9) -> None:
    """Multiply the loss of forward calls from_call..until_call (counting from 1) by NaN."""
    real_forward = Seq2Seq.forward
    calls = {"n": 0}

    def poisoned(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if from_call <= calls["n"] <= until_call:
                return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(Seq2Seq, "forward", poisoned)


def test_sync_free_skipped_updates_stop_the_run_at_the_next_log_line(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path, "training.max_steps=50", "training.max_bad_steps=3",
                          "training.log_every=4", "training.validate_every=100",
                          sync_free=True)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    poison(monkeypatch, from_call=1)
    with pytest.raises(TrainingStopped, match="4 updates in a row had a non-finite loss"):
        trainer.train()
    assert trainer.state.step == 4 and trainer.state.bad_steps == 4
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a skipped update"
    assert all(int(s["step"]) == 0 for s in trainer.optimizer.state.values())


def test_sync_free_bad_updates_are_logged_and_training_goes_on(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path, "training.max_steps=8", "training.max_bad_steps=3",
                          "training.log_every=4", "training.validate_every=100",
                          sync_free=True)
    poison(monkeypatch, from_call=2, until_call=3)  # two in a row: under max_bad_steps
    trainer.train()
    assert trainer.state.step == 8 and trainer.state.bad_steps == 0
    assert all(int(s["step"]) == 6 for s in trainer.optimizer.state.values())
    log = (tmp_path / "train.log").read_text()
    assert ("step 4: skipped 2 of the updates since the last log line (non-finite loss or "
            "gradient; 2 in a row at most)") in log
