"""The trainer end to end: the toy task is learned, checkpoints are complete and
self-contained, runs are deterministic and resume exactly."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from s2s.train.checkpoint import load_checkpoint
from s2s.config import load_config
from s2s.inference import load_translator
from s2s.data.toy import reverse, toy_splits
from s2s.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "configs" / "toy.yaml"

SMALL = ["data.toy_train_size=400", "model.embedding_dim=16", "model.encoder.hidden_size=16",
         "model.decoder.hidden_size=32", "training.validate_every=5", "training.log_every=1",
         "training.progress_bar=false", "data.batch_tokens=300", "data.valid_batch_size=100",
         "model.decoder.dropout=0.3", "model.decoder.hidden_dropout=0.3"]


def small_config(output_dir: Path, *extra: str):
    return load_config(TOY, SMALL + [f"training.output_dir={output_dir}", *extra])


@pytest.mark.slow
def test_toy_config_learns_the_task(toy_run):
    out, result = toy_run
    assert result["best_score"] >= 99.0  # exact match on held-out sequences, percent
    lines = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines and {"step", "val_loss", "ppl", "bleu", "exact_match"} <= set(lines[-1])
    assert max(l["exact_match"] for l in lines) >= 99.0
    assert (out / "config.yaml").is_file() and (out / "train.log").is_file()
    plots = sorted((out / "attention").glob("*.png"))
    assert len(plots) == 2 * len(lines) and all(p.stat().st_size > 1000 for p in plots)


@pytest.mark.slow
def test_checkpoint_alone_translates(toy_run, tmp_path):
    out, _ = toy_run
    lonely = tmp_path / "empty" / "model.pt"
    lonely.parent.mkdir()
    shutil.copy(out / "best.pt", lonely)
    state = torch.load(lonely, weights_only=True)  # plain tensors and values only
    assert isinstance(state["tokenizers"]["src"], bytes)
    translator = load_translator(lonely, "cpu")
    sources = toy_splits(10)["test"].src[:50]
    hyps = translator.translate(sources + [""], beam_size=3)
    assert hyps[-1] == ""
    assert sum(h == reverse(s) for h, s in zip(hyps, sources)) >= 49


def train_recording(config, **options) -> tuple[Trainer, list[float]]:
    """A finished run and its loss per target token at each update."""
    losses: list[float] = []
    trainer = Trainer(config, on_update=lambda update: losses.append(update.loss_per_token),
                      **options)
    trainer.train()
    return trainer, losses


@pytest.mark.parametrize("backend", ["auto", "plain"])
def test_two_runs_with_one_seed_have_identical_losses(tmp_path, backend):
    _, first = train_recording(small_config(tmp_path / "a", "training.max_steps=12"),
                               backend=backend)
    _, second = train_recording(small_config(tmp_path / "b", "training.max_steps=12"),
                                backend=backend)
    assert len(first) == 12
    assert first == second


def test_resume_continues_exactly(tmp_path):
    straight, straight_losses = train_recording(
        small_config(tmp_path / "straight", "training.max_steps=20"))
    _, first_half = train_recording(small_config(tmp_path / "split", "training.max_steps=10"))
    rest, second_half = train_recording(
        small_config(tmp_path / "split", "training.max_steps=20"), resume="auto")
    assert first_half + second_half == straight_losses
    for (name, a), b in zip(straight.model.state_dict().items(), rest.model.state_dict().values()):
        assert torch.equal(a, b), name


def test_outputs_and_checkpoint_contents(tmp_path):
    trainer = Trainer(small_config(tmp_path, "training.max_steps=10"))
    trainer.train()
    for name in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml", "train.log",
                 "tokenizer/spm_joint.model"):
        assert (tmp_path / name).is_file(), name
    state = load_checkpoint(tmp_path / "last.pt")
    assert state["step"] == 10
    assert {"config", "model", "tokenizers", "optimizer", "sampler", "rng", "scores"} <= set(state)
    assert not list(tmp_path.glob("*.tmp"))
    metrics = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [5, 10]


def test_early_stopping_ends_the_run(tmp_path):
    trainer = Trainer(small_config(tmp_path, "training.max_steps=200",
                                   "training.learning_rate=1e-9",
                                   "training.early_stopping.patience=2",
                                   "training.early_stopping.metric=val_loss",
                                   "training.early_stopping.min_delta=1.0"))
    result = trainer.train()
    assert result["steps"] == 15  # first validation sets the best, two more fail to improve


def test_accumulation_and_epoch_budget(tmp_path):
    trainer = Trainer(small_config(tmp_path, "training.max_epochs=1",
                                   "training.accumulate_steps=2"))
    batches = len(trainer.sampler)
    result = trainer.train()
    assert result["steps"] == (batches + 1) // 2


def test_a_time_budget_stops_training_and_validates_at_the_end(tmp_path):
    trainer = Trainer(small_config(tmp_path, "training.max_minutes=0.0001",
                                   "training.validate_every=1000"))
    result = trainer.train()
    assert result["steps"] == 1  # the first update already takes longer than 6 ms
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["final"] and record["step"] == 1 and record["elapsed"] > 0
    assert load_checkpoint(tmp_path / "last.pt")["trainer"]["elapsed"] == trainer.state.elapsed


def test_a_run_shorter_than_validate_every_still_writes_best_pt(tmp_path):
    trainer = Trainer(small_config(tmp_path, "training.max_steps=3",
                                   "training.validate_every=1000"))
    trainer.train()
    best, last = load_checkpoint(tmp_path / "best.pt"), load_checkpoint(tmp_path / "last.pt")
    assert best["step"] == last["step"] == 3 and best["scores"]["final"]
    assert trainer.state.best_score is None  # a longer run would not count it either


@pytest.mark.parametrize("normalization", ["tokens", "sentences"])
def test_accumulating_k_batches_is_one_k_times_larger_batch(tmp_path, normalization):
    options = [f"training.normalization={normalization}", "model.decoder.dropout=0",
               "model.decoder.hidden_dropout=0", "training.backend=plain"]
    split_run = Trainer(small_config(tmp_path / "a", *options))
    one_run = Trainer(small_config(tmp_path / "b", *options))
    for trainer in (split_run, one_run):  # compare the gradients the update would apply
        trainer.optimizer.step = lambda: None
    first, second = split_run.sampler.batches_for_epoch(0)[:2]
    loss_split, tokens_split = split_run._update([first, second])
    loss_one, tokens_one = one_run._update([first + second])
    assert tokens_split == tokens_one and loss_split == pytest.approx(loss_one, rel=1e-5)
    for a, b in zip(split_run.model.parameters(), one_run.model.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-7)
        assert a.grad.abs().sum() > 0
