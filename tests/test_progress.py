"""Seeing training: the progress total for every budget, how long the budget will take,
example translations at validation, and what resuming a finished run says."""

from __future__ import annotations

import math
import shutil

import pytest

from s2s.errors import S2SError
from s2s.train.trainer import PACE_UPDATES, Trainer
from tests.test_training import small_config


def test_an_epoch_budget_has_a_total_in_updates(tmp_path):
    trainer = Trainer(small_config(tmp_path, "training.max_epochs=3", "training.max_steps=0",
                                   "training.accumulate_steps=2"))
    assert trainer._budget_updates() == 3 * math.ceil(len(trainer.sampler) / 2)
    both = Trainer(small_config(tmp_path / "b", "training.max_epochs=3", "training.max_steps=5"))
    assert both._budget_updates() == 5
    none = Trainer(small_config(tmp_path / "c", "training.max_steps=0"))
    assert none._budget_updates() is None


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("progress")
    Trainer(small_config(out, f"training.max_steps={PACE_UPDATES + 4}",
                         "training.validate_every=12")).train()
    return out


def test_the_log_says_how_long_the_budget_takes_and_shows_examples(finished_run):
    log = (finished_run / "train.log").read_text(encoding="utf-8")
    assert log.count("s an update: about ") == 1
    assert "minutes to the end of the budget" in log
    validations = log.count("validation step")
    assert validations == 2  # steps 12 and 24, and no closing one
    assert log.count("  source     ") == 2 * validations
    assert log.count("  reference  ") == 2 * validations


def test_resuming_a_finished_run_says_how_to_extend_it(finished_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(finished_run, run_dir)
    steps = PACE_UPDATES + 4
    with pytest.raises(S2SError) as info:
        Trainer(small_config(run_dir, f"training.max_steps={steps}",
                             "training.validate_every=12"), resume="auto")
    assert str(info.value) == (f"{run_dir / 'last.pt'}: the run is finished (step {steps}; its "
                               f"max_steps {steps} are done); to go on, extend it, e.g. --set "
                               f"training.max_steps={2 * steps} --resume auto")
    extended = Trainer(small_config(run_dir, f"training.max_steps={steps + 2}",
                                    "training.validate_every=12"), resume="auto")
    assert extended.train()["steps"] == steps + 2


def test_tensorboard_logs_training_validation_and_attention(tmp_path):
    pytest.importorskip("matplotlib")
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    Trainer(small_config(tmp_path, "training.tensorboard=true", "training.max_steps=10",
                         "training.validate_every=5", "training.log_every=2",
                         "training.plot_attention=1")).train()
    events = accumulator.EventAccumulator(str(tmp_path / "tensorboard"),
                                          size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_per_token", "train/learning_rate", "train/grad_norm",
            "train/tokens_per_second", "valid/val_loss", "valid/ppl", "valid/bleu",
            "valid/chrf", "valid/exact_match"} <= set(tags["scalars"])
    assert [e.step for e in events.Scalars("train/loss_per_token")] == [2, 4, 6, 8, 10]
    assert [e.step for e in events.Scalars("valid/bleu")] == [5, 10]
    assert all(e.value > 0 for e in events.Scalars("train/grad_norm"))
    assert [e.step for e in events.Images("attention/sentence0")] == [5, 10]


def test_tensorboard_without_the_package_is_one_line(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_tensorboard(name, *args, **kwargs):
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    with pytest.raises(S2SError, match=r"training.tensorboard': needs the tensorboard package"):
        Trainer(small_config(tmp_path, "training.tensorboard=true"))
