"""Data-parallel training through torchrun (gloo on the CPU): N processes over an update's
N × k batches equal one process accumulating them, checkpoints are written once, and a run
resumes with another number of processes; a signal to any one process stops them all with one
saved checkpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
# the toy task, small, without dropout (each process draws its own masks)
SMALL = ["data.toy_train_size=400", "model.embedding_dim=16", "model.encoder.hidden_size=16",
         "model.decoder.hidden_size=32", "training.validate_every=4", "training.log_every=1",
         "training.progress_bar=false", "data.batch_tokens=300", "data.valid_batch_size=100"]


def train(output_dir: Path, processes: int, *extra: str, resume: bool = False):
    launcher = ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                 f"--nproc_per_node={processes}"] if processes > 1 else [sys.executable])
    overrides = [f"--set={o}" for o in [*SMALL, f"training.output_dir={output_dir}", *extra]]
    result = subprocess.run([*launcher, "train.py", "--config", "configs/toy.yaml", *overrides,
                             *(["--resume", "auto"] if resume else [])],
                            cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return torch.load(run_dir / "last.pt", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    first, second = weights(a), weights(b)
    assert first.keys() == second.keys()
    for name in first:
        torch.testing.assert_close(first[name], second[name], rtol=1e-5, atol=1e-6)


def test_two_processes_equal_one_accumulating_their_batches(tmp_path):
    result = train(tmp_path / "two", 2, "training.max_steps=6")
    train(tmp_path / "one", 1, "training.max_steps=6", "training.accumulate_steps=2")
    assert_same_weights(tmp_path / "two", tmp_path / "one")
    log = (tmp_path / "two" / "train.log").read_text(encoding="utf-8")
    assert log.count(" model: ") == 1 and log.count("validation step 4:") == 1  # rank 0 only
    assert "2 processes: each takes its share" in log
    steps = [json.loads(line)["step"]
             for line in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [4, 6]
    assert result.stderr.count("done: 6 steps") == 1


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)], ids=["2-then-1", "1-then-2"])
def test_a_run_resumes_with_another_number_of_processes(tmp_path, first, then):
    def accumulate(processes: int) -> str:  # 2 batches an update, however many processes
        return f"training.accumulate_steps={2 // processes}"

    train(tmp_path / "straight", 1, "training.max_steps=8", accumulate(1))
    train(tmp_path / "split", first, "training.max_steps=4", accumulate(first))
    train(tmp_path / "split", then, "training.max_steps=8", accumulate(then), resume=True)
    assert_same_weights(tmp_path / "split", tmp_path / "straight")
    state = torch.load(tmp_path / "split" / "last.pt", weights_only=True)
    assert state["step"] == 8


def rank_pid(launcher: subprocess.Popen, rank: int) -> int | None:
    """The process id of ``rank`` among torchrun's workers (read from their environment)."""
    children = Path(f"/proc/{launcher.pid}/task/{launcher.pid}/children")
    for pid in children.read_text().split() if children.exists() else []:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"RANK={rank}".encode() in environ:
            return int(pid)
    return None


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads /proc")
def test_a_signal_to_one_rank_saves_once_and_stops_every_rank(tmp_path):
    import signal
    import time

    out = tmp_path / "run"
    overrides = [f"--set={o}" for o in [*SMALL, f"training.output_dir={out}",
                                         "training.max_steps=100000",
                                         "training.validate_every=100000"]]
    launcher = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "train.py", "--config", "configs/toy.yaml", *overrides],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        log = out / "train.log"
        deadline = time.monotonic() + 300
        while not (log.is_file() and "step 3 " in log.read_text(encoding="utf-8")):
            assert launcher.poll() is None and time.monotonic() < deadline, "no training"
            time.sleep(0.2)
        os.kill(rank_pid(launcher, 1), signal.SIGTERM)  # the rank that writes nothing
        _, stderr = launcher.communicate(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    # rank 0 alone says it (torchrun then reports the workers' exit status its own way)
    stopped = [line for line in stderr.splitlines() if "interrupted by SIGTERM at step" in line]
    assert len(stopped) == 1, stderr[-3000:]
    step = int(stopped[0].split("at step ")[1].split(";")[0])
    assert torch.load(out / "last.pt", weights_only=True)["step"] == step
    resumed = train(out, 1, "training.max_steps=" + str(step + 2), resume=True)
    assert torch.load(out / "last.pt", weights_only=True)["step"] == step + 2
    assert "resumed from step" in (out / "train.log").read_text(encoding="utf-8")
    assert resumed.returncode == 0
