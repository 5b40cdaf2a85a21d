"""CUDA as a first-class path (skipped without a GPU): training, validation, greedy and beam
search, evaluate.py and translate.py, resume, and DDP over two GPUs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2s.inference import load_translator
from s2s.train.checkpoint import load_checkpoint
from s2s.train.trainer import Trainer
from tests.test_training import small_config

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def run(*args, stdin: str = ""):
    return subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, input=stdin,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def cuda_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cuda")
    Trainer(small_config(out, "training.device=cuda", "training.max_steps=30")).train()
    return out


def test_training_runs_the_plain_model_on_the_gpu(cuda_run):
    state = load_checkpoint(cuda_run / "last.pt")
    assert state["step"] == 30
    assert (cuda_run / "metrics.jsonl").read_text().strip()


def test_the_optimizer_step_on_the_gpu_never_waits_for_the_host(tmp_path):
    """Clipping, the non-finite check, the skip decision and the fused Adam step stay on the
    GPU: CUDA's sync debug mode turns any device-to-host wait into an error. (The forward pass
    is left out: torch's packed sequences copy their sort order to the GPU, a wait of torch's.)"""
    trainer = Trainer(small_config(tmp_path, "training.device=cuda", "training.max_steps=3"))
    assert trainer.sync_free
    batches = trainer._batches()
    trainer._update([next(batches)])  # the first creates the optimizer's state
    loss, _ = trainer._accumulate_gradients([next(batches)])
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        trainer._apply_gradients(loss)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert trainer._bad_run.device.type == "cuda" and int(trainer._bad_run) == 0


def test_beam_1_equals_greedy_on_the_gpu(cuda_run):
    translator = load_translator(cuda_run / "best.pt", "cuda")
    assert translator.device.type == "cuda" and translator.search_model is translator.model
    sources = ["a b c", "d e f g", "h"]
    greedy = translator.translate(sources, beam_size=1)
    assert translator.translate(sources, beam_size=1) == greedy
    beams = translator.translate_nbest(sources, beam_size=1, n_best=1)
    assert [nbest[0][0] for nbest in beams] == greedy
    assert len(translator.translate(sources, beam_size=5)) == 3


def test_evaluate_and_translate_on_the_gpu(cuda_run):
    for beam in ("1", "5"):
        result = run(ROOT / "evaluate.py", "--checkpoint", cuda_run / "best.pt", "--split",
                     "test", "--beam", beam, "--device", "cuda", "--json")
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout.splitlines()[-1])["device"].startswith("cuda")
    result = run(ROOT / "scripts" / "translate.py", "--checkpoint", cuda_run / "best.pt",
                 "--device", "cuda", stdin="a b c\n\nd e\n")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3


def test_int8_is_refused_on_the_gpu(cuda_run):
    result = run(ROOT / "scripts" / "translate.py", "--checkpoint", cuda_run / "best.pt",
                 "--device", "cuda", "--int8", stdin="a\n")
    assert result.returncode == 2
    assert result.stderr.strip() == "error: int8 decoding runs on the CPU only; add --device cpu"


def test_resume_on_the_gpu_continues_the_run(tmp_path):
    straight = Trainer(small_config(tmp_path / "a", "training.device=cuda",
                                    "training.max_steps=12", "model.decoder.dropout=0",
                                    "model.decoder.hidden_dropout=0"))
    straight.train()
    Trainer(small_config(tmp_path / "b", "training.device=cuda", "training.max_steps=6",
                         "model.decoder.dropout=0", "model.decoder.hidden_dropout=0")).train()
    resumed = Trainer(small_config(tmp_path / "b", "training.device=cuda",
                                   "training.max_steps=12", "model.decoder.dropout=0",
                                   "model.decoder.hidden_dropout=0"), resume="auto")
    resumed.train()
    for a, b in zip(straight.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # cuDNN: not bitwise


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs")
def test_two_gpus_through_torchrun(tmp_path):
    result = run("-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                 "train.py", "--config", "configs/toy.yaml", "--set=training.device=cuda",
                 "--set=training.max_steps=20", f"--set=training.output_dir={tmp_path}",
                 "--set=training.progress_bar=false")
    assert result.returncode == 0, result.stderr[-3000:]
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 20
