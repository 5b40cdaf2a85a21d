"""Scheduled sampling: the teacher-forcing probability over updates follows its formula, the
trainer feeds it to the model, and bad settings are one clear line."""

from __future__ import annotations

import math

import pytest

from s2s.config import ConfigError, TrainingConfig, config_from_dict
from s2s.model.seq2seq import Seq2Seq
from s2s.train.schedule import teacher_forcing_ratio
from s2s.train.trainer import Trainer
from tests.test_training import small_config


def schedule(name: str, start: float = 1.0, decay: float = 0.0, floor: float = 0.0):
    return TrainingConfig(teacher_forcing_ratio=start, teacher_forcing_schedule=name,
                          teacher_forcing_decay=decay, teacher_forcing_min=floor)


def test_each_schedule_follows_its_formula():
    assert [teacher_forcing_ratio(schedule("constant", 0.8, 0.5), i) for i in (0, 99)] == [0.8, 0.8]
    linear = schedule("linear", 1.0, 0.001, 0.25)
    assert [teacher_forcing_ratio(linear, i) for i in (0, 100, 500, 750, 10_000)] == \
        pytest.approx([1.0, 0.9, 0.5, 0.25, 0.25])
    exponential = schedule("exponential", 0.9, 0.99)
    assert teacher_forcing_ratio(exponential, 0) == 0.9
    assert teacher_forcing_ratio(exponential, 100) == pytest.approx(0.9 * 0.99 ** 100)  # 0.329
    sigmoid = schedule("inverse_sigmoid", 1.0, 1000.0, 0.1)
    assert teacher_forcing_ratio(sigmoid, 0) == pytest.approx(1000 / 1001)
    assert teacher_forcing_ratio(sigmoid, 5000) == pytest.approx(1000 / (1000 + math.exp(5)))
    assert teacher_forcing_ratio(sigmoid, 10 ** 9) == 0.1  # no overflow, the floor


@pytest.mark.parametrize("name,decay,expected", [
    ("exponential", 1.5, "factor per update in (0, 1]"),
    ("exponential", 0.0, "factor per update in (0, 1]"),
    ("inverse_sigmoid", 0.5, "at least 1")])
def test_a_decay_outside_its_schedule_s_range_is_one_clear_error(name, decay, expected):
    raw = {"data": {"corpus": "toy"}, "training": {"teacher_forcing_schedule": name,
                                                   "teacher_forcing_decay": decay}}
    with pytest.raises(ConfigError, match="training.teacher_forcing_decay") as error:
        config_from_dict(raw)
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_the_trainer_feeds_the_scheduled_ratio_update_by_update(tmp_path, monkeypatch):
    seen = []
    real_forward = Seq2Seq.forward

    def recording(self, batch, teacher_forcing_ratio=1.0, *args, **kwargs):
        if self.training:
            seen.append(teacher_forcing_ratio)
        return real_forward(self, batch, teacher_forcing_ratio, *args, **kwargs)

    monkeypatch.setattr(Seq2Seq, "forward", recording)
    config = small_config(tmp_path, "training.max_steps=5", "training.validate_every=5",
                          "training.teacher_forcing_schedule=linear",
                          "training.teacher_forcing_decay=0.1",
                          "training.accumulate_steps=2")
    Trainer(config).train()
    expected = [1.0, 1.0, 0.9, 0.9, 0.8, 0.8, 0.7, 0.7, 0.6, 0.6]  # two batches an update
    assert seen == pytest.approx(expected)


def test_warmup_inverse_sqrt_follows_its_formula_and_survives_resume(tmp_path):
    def lrs(trainer):
        seen = []
        trainer.on_update = lambda record: seen.append(trainer.optimizer.param_groups[0]["lr"])
        trainer.train()
        return seen

    options = ["training.scheduler.type=warmup_inverse_sqrt",
               "training.scheduler.warmup_steps=4", "training.learning_rate=0.01",
               "training.validate_every=100"]
    straight = lrs(Trainer(small_config(tmp_path / "a", "training.max_steps=10", *options)))
    # after update s (1-based) the rate set for the next one: lr · min((s + 1) / w,
    # sqrt(w / (s + 1))), w = 4: rising to lr at s + 1 = w, then falling
    expected = [0.01 * min((s + 1) / 4, math.sqrt(4 / (s + 1))) for s in range(1, 11)]
    assert straight == pytest.approx(expected)
    first = lrs(Trainer(small_config(tmp_path / "b", "training.max_steps=6", *options)))
    second = lrs(Trainer(small_config(tmp_path / "b", "training.max_steps=10", *options),
                         resume="auto"))
    assert first + second == pytest.approx(straight)


def validation(trainer: Trainer, bleu: float, final: bool = False) -> float:
    """Feed one validation with this BLEU through the trainer's bookkeeping; the new lr."""
    trainer.state.step += 1
    scores = {"step": trainer.state.step, "epoch": 1, "val_loss": 1.0, "ppl": 2.7,
              "bleu": bleu, "exact_match": 0.0, "lr": trainer.optimizer.param_groups[0]["lr"]}
    trainer._after_validation(scores, record_only=final)
    return trainer.optimizer.param_groups[0]["lr"]


def test_the_plateau_scheduler_halves_after_patience_and_a_final_validation_counts_nothing(
        tmp_path):
    options = ["training.scheduler.type=plateau", "training.scheduler.patience=1",
               "training.scheduler.factor=0.5", "training.learning_rate=0.01",
               "training.early_stopping.metric=bleu", "training.early_stopping.patience=10"]
    trainer = Trainer(small_config(tmp_path / "a", *options))
    # best 10; then 9 (1 bad: within patience 1), 8 (2 bad > 1: halve), 20 (better), 5, 5
    lrs = [validation(trainer, bleu) for bleu in (10, 9, 8, 20, 5)]
    assert lrs == pytest.approx([0.01, 0.01, 0.005, 0.005, 0.005])
    state = (trainer.state.best_score, trainer.state.bad_validations,
             trainer.scheduler.state_dict()["num_bad_epochs"])
    assert validation(trainer, 1, final=True) == pytest.approx(0.005)  # a closing validation
    assert (trainer.state.best_score, trainer.state.bad_validations,
            trainer.scheduler.state_dict()["num_bad_epochs"]) == state == (20, 1, 1)
    assert validation(trainer, 5) == pytest.approx(0.0025)  # the second bad one after 20

    # the same, split: resumed after the closing validation, it goes on exactly
    first = Trainer(small_config(tmp_path / "b", *options))
    for bleu in (10, 9, 8, 20, 5):
        validation(first, bleu)
    validation(first, 1, final=True)
    resumed = Trainer(small_config(tmp_path / "b", *options), resume="auto")
    assert (resumed.state.best_score, resumed.state.bad_validations) == (20, 1)
    assert validation(resumed, 5) == pytest.approx(0.0025)
