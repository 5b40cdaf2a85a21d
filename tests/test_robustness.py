"""Interruption, crash-safe checkpoints, non-finite losses, pruning, resume mismatches."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from s2s.train.checkpoint import load_checkpoint, save_checkpoint
from s2s.errors import CheckpointError
from s2s.model.seq2seq import Seq2Seq
from s2s.train.trainer import Trainer, TrainingStopped
from tests.test_training import SMALL, TOY, small_config

ROOT = Path(__file__).resolve().parents[1]


def start_training(output_dir: Path, *extra: str) -> subprocess.Popen:
    overrides = [f"--set={o}" for o in SMALL + [f"training.output_dir={output_dir}", *extra]]
    return subprocess.Popen([sys.executable, "train.py", "--config", str(TOY), *overrides],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 600.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_saves_last_checkpoint_and_resume_finishes(tmp_path, sig):
    process = start_training(tmp_path, "training.max_steps=100000", "training.validate_every=20")
    try:
        wait_for(tmp_path / "best.pt", process)  # the first validation has happened
        process.send_signal(sig)
        _, stderr = process.communicate(timeout=300)
    finally:
        process.kill()
    assert process.returncode == 128 + sig
    assert "--resume auto" in stderr and "Traceback" not in stderr
    step = load_checkpoint(tmp_path / "last.pt")["step"]
    assert step >= 20
    resumed = subprocess.run(
        [sys.executable, "train.py", "--config", str(tmp_path / "config.yaml"), "--resume",
         "auto", f"--set=training.max_steps={step + 5}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert load_checkpoint(tmp_path / "last.pt")["step"] == step + 5


def test_sigkill_during_save_leaves_a_loadable_checkpoint(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"counter": -1, "weights": torch.zeros(10)}, path)
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, torch\n"
        f"sys.path.insert(0, {str(ROOT)!r})\n"
        "from s2s.train.checkpoint import save_checkpoint\n"
        "big = torch.randn(4_000_000)\n"
        "for i in range(10**6):\n"
        f"    save_checkpoint({{'counter': i, 'weights': big}}, {str(path)!r})\n")])
    temporary = path.with_name(path.name + ".tmp")
    deadline = time.monotonic() + 300
    # the event to interrupt: a write in progress, after at least one finished save
    while not (temporary.exists() and load_checkpoint(path)["counter"] >= 1):
        assert writer.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    writer.send_signal(signal.SIGKILL)
    writer.wait(timeout=30)
    state = load_checkpoint(path)
    assert state["counter"] >= 1 and state["weights"].numel() == 4_000_000


def test_non_finite_losses_skip_updates_then_stop(tmp_path, monkeypatch):
    trainer = Trainer(small_config(tmp_path, "training.max_steps=50",
                                   "training.max_bad_steps=3"))
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real_forward = Seq2Seq.forward

    def poisoned(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        return out._replace(loss=out.loss * float("nan"))

    monkeypatch.setattr(Seq2Seq, "forward", poisoned)
    with pytest.raises(TrainingStopped, match="3 updates in a row had a non-finite loss"):
        trainer.train()
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a skipped update"


def test_a_finite_loss_with_non_finite_gradients_stops_with_status_1_and_keeps_the_checkpoint(
        tmp_path):
    Trainer(small_config(tmp_path, "training.max_steps=5")).train()
    good = (tmp_path / "last.pt").read_bytes()
    trainer = Trainer(small_config(tmp_path, "training.max_steps=50", "training.max_bad_steps=3"),
                      resume="auto")
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    losses = []
    trainer.on_update = lambda record: losses.append(record.loss)
    next(trainer.model.parameters()).register_hook(lambda grad: grad * float("inf"))
    with pytest.raises(TrainingStopped, match="3 updates in a row") as info:
        trainer.train()
    assert info.value.exit_code == 1
    # two skipped updates reported, the third stops the run: all with finite losses
    assert len(losses) == 2 and all(math.isfinite(loss) for loss in losses)
    for name, value in trainer.model.state_dict().items():
        assert torch.equal(value, before[name]), f"{name} changed by a skipped update"
    assert (tmp_path / "last.pt").read_bytes() == good  # the last good checkpoint, untouched


def test_one_bad_step_is_skipped_and_training_goes_on(tmp_path, monkeypatch):
    trainer = Trainer(small_config(tmp_path, "training.max_steps=6"))
    real_forward = Seq2Seq.forward
    calls = {"n": 0}

    def once(self, *args, **kwargs):
        out = real_forward(self, *args, **kwargs)
        calls["n"] += 1
        return out._replace(loss=out.loss * float("inf")) if calls["n"] == 2 else out

    monkeypatch.setattr(Seq2Seq, "forward", once)
    result = trainer.train()
    assert result["steps"] == 6 and trainer.state.bad_steps == 0
    log = (tmp_path / "train.log").read_text()
    assert "step 2: non-finite loss" in log


def test_old_checkpoints_are_pruned_but_best_is_kept(tmp_path):
    Trainer(small_config(tmp_path, "training.max_steps=25", "training.keep_checkpoints=2")).train()
    assert sorted(p.name for p in tmp_path.glob("step_*.pt")) == ["step_20.pt", "step_25.pt"]
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "last.pt").is_file()


def test_resume_with_a_different_model_is_refused(tmp_path):
    Trainer(small_config(tmp_path, "training.max_steps=5")).train()
    with pytest.raises(CheckpointError, match=r"model\.decoder\.hidden_size"):
        Trainer(small_config(tmp_path, "training.max_steps=10", "model.decoder.hidden_size=48"),
                resume="auto")


def test_resume_auto_without_a_run_is_a_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no last.pt"):
        Trainer(small_config(tmp_path, "training.max_steps=5"), resume="auto")


def test_overwrite_starts_afresh(tmp_path):
    Trainer(small_config(tmp_path, "training.max_steps=5")).train()
    trainer = Trainer(small_config(tmp_path, "training.max_steps=5"), overwrite=True)
    trainer.train()
    steps = [json.loads(l)["step"] for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [5]


def test_a_failing_overwrite_loses_no_file(tmp_path):
    Trainer(small_config(tmp_path, "training.max_steps=5")).train()
    before = (tmp_path / "last.pt").read_bytes()
    result = subprocess.run(
        [sys.executable, "train.py", "--config", str(TOY), "--overwrite",
         f"--set=training.output_dir={tmp_path}", "--set=data.corpus=files",
         f"--set=data.train={tmp_path / 'missing'}", f"--set=data.valid={tmp_path / 'missing'}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert (tmp_path / "last.pt").read_bytes() == before
    assert (tmp_path / "best.pt").is_file() and (tmp_path / "metrics.jsonl").is_file()


def test_a_second_signal_while_saving_is_ignored(tmp_path, monkeypatch):
    """A real SIGINT asks for a save; a second one arriving during that save is ignored (no
    KeyboardInterrupt tearing the write, one last.pt at the step of the first)."""
    trainer = Trainer(small_config(tmp_path, "training.max_steps=100"))
    original = trainer.save
    saves = []

    def save_interrupted_again(name, scores=None):
        os.kill(os.getpid(), signal.SIGINT)  # the second Ctrl-C, in the middle of the save
        time.sleep(0.05)  # let the handler run here
        saves.append(name)
        return original(name, scores)

    monkeypatch.setattr(trainer, "save", save_interrupted_again)
    trainer.on_update = lambda record: (os.kill(os.getpid(), signal.SIGINT)
                                        if record.step == 3 else None)
    with pytest.raises(TrainingStopped) as info:
        trainer.train()
    assert info.value.exit_code == 128 + signal.SIGINT
    assert saves == ["last.pt"] and load_checkpoint(tmp_path / "last.pt")["step"] == 3
