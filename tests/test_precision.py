"""Mixed precision (training.precision): bf16 autocast trains on the CPU, fp16 is refused
without CUDA, and the fp16 gradient scaler's state survives a resume exactly."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2s.train.checkpoint import load_checkpoint
from s2s.train.precision import Precision
from s2s.train.trainer import Trainer
from tests.test_cli import assert_user_error
from tests.test_training import SMALL, TOY, small_config

ROOT = Path(__file__).resolve().parents[1]
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_bf16_autocast_trains_the_toy_task_on_the_cpu(tmp_path):
    losses = []
    trainer = Trainer(small_config(tmp_path, "training.precision=bf16", "training.max_steps=100",
                                   "training.validate_every=1000", "training.log_every=50",
                                   "training.learning_rate=0.01", "model.decoder.dropout=0",
                                   "model.decoder.hidden_dropout=0"),
                      on_update=lambda record: losses.append(record.loss_per_token))
    assert trainer.backend.name == "plain"  # the CPU backend's kernels are float32
    with trainer.precision.autocast():
        logits = trainer.model.decoder.output(torch.ones(1, 32))
    assert logits.dtype == torch.bfloat16  # products run in bf16 under autocast
    trainer.train()
    assert all(torch.isfinite(torch.tensor(losses)))
    assert sum(losses[-10:]) / 10 < 0.7 * sum(losses[:10]) / 10
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_fp16_without_cuda_is_one_clear_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    result = subprocess.run([sys.executable, "train.py", "--config", str(TOY),
                             *[f"--set={o}" for o in SMALL],
                             f"--set=training.output_dir={tmp_path}",
                             "--set=training.precision=fp16"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert_user_error(result, "config key 'training.precision': fp16 needs a CUDA device")


def with_scaler(trainer: Trainer) -> Trainer:
    """Give the trainer a gradient scaler on the CPU (fp16 itself needs CUDA; the scaler's
    bookkeeping — scaled backward, unscale before clipping, step, update, state — is the
    same)."""
    trainer.precision.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10,
                                                    growth_interval=3)
    return trainer


def test_the_gradient_scaler_state_resumes_exactly(tmp_path):
    straight = with_scaler(Trainer(small_config(tmp_path / "a", "training.max_steps=14")))
    straight.train()
    first = with_scaler(Trainer(small_config(tmp_path / "b", "training.max_steps=7")))
    first.train()
    saved = load_checkpoint(tmp_path / "b" / "last.pt")["scaler"]
    assert saved["scale"] == first.precision.scaler.get_scale() != 2.0**10  # it grew
    resumed = with_scaler(Trainer(small_config(tmp_path / "b", "training.max_steps=14"),
                                  resume="auto"))
    resumed._restore(load_checkpoint(tmp_path / "b" / "last.pt"))  # again, now with a scaler
    assert resumed.precision.scaler.state_dict() == saved
    resumed.train()
    assert resumed.precision.scaler.state_dict() == straight.precision.scaler.state_dict()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        assert torch.equal(a, b)


def test_an_overflow_under_the_scaler_is_not_a_bad_step(tmp_path, monkeypatch):
    trainer = with_scaler(Trainer(small_config(tmp_path, "training.max_steps=3",
                                               "training.max_bad_steps=1")))
    calls = {"n": 0}
    original = trainer.precision.unscale

    def overflowing(optimizer):
        calls["n"] += 1
        if calls["n"] == 2:  # the second update's scaled gradients overflow
            next(trainer.model.parameters()).grad.fill_(float("inf"))
        original(optimizer)

    monkeypatch.setattr(trainer.precision, "unscale", overflowing)
    trainer.train()  # max_bad_steps=1 would stop training at a counted bad step
    assert trainer.state.step == 3 and trainer.state.bad_steps == 0
    assert trainer.precision.scaler.get_scale() < 2.0**10  # lowered after the overflow


@cuda
@pytest.mark.cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_training_steps_on_cuda(tmp_path, precision):
    trainer = Trainer(small_config(tmp_path, f"training.precision={precision}",
                                   "training.max_steps=20", "training.device=cuda"))
    trainer.train()
    assert trainer.state.step == 20 and trainer.state.bad_steps == 0
    state = load_checkpoint(tmp_path / "last.pt")
    assert bool(state["scaler"]) == (precision == "fp16")
