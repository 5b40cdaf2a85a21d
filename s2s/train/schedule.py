"""The teacher-forcing probability over training: scheduled sampling (Bengio et al., 2015).

At update i (counted from 0) the decoder is fed the gold previous token with probability ε(i),
else its own argmax of the step before (:func:`s2s.model.decoder.step_by_step`):

    constant          ε(i) = ε₀
    linear            ε(i) = max(ε_min, ε₀ − c·i)
    exponential       ε(i) = max(ε_min, ε₀ · cⁱ)              0 < c ≤ 1
    inverse_sigmoid   ε(i) = max(ε_min, ε₀ · k / (k + exp(i / k)))     k ≥ 1

with ε₀ = ``training.teacher_forcing_ratio``, c or k = ``training.teacher_forcing_decay`` and
ε_min = ``training.teacher_forcing_min``. It depends on the update count alone, so a resumed run
continues the schedule exactly.
"""

from __future__ import annotations

import math

from s2s.config import TrainingConfig


def teacher_forcing_ratio(cfg: TrainingConfig, step: int) -> float:
    """ε at update ``step`` (0 for the first update) under ``cfg``'s schedule."""
    start, decay = cfg.teacher_forcing_ratio, cfg.teacher_forcing_decay
    schedule = cfg.teacher_forcing_schedule
    if schedule == "constant":
        return start
    if schedule == "linear":
        ratio = start - decay * step
    elif schedule == "exponential":
        ratio = start * decay ** step
    else:  # inverse sigmoid; exp(step / k) overflows long after the ratio reaches 0
        ratio = start * decay / (decay + math.exp(min(step / decay, 700.0)))
    return max(cfg.teacher_forcing_min, ratio)
