"""What greedy and beam search share: the model interface they need, hypotheses, the GNMT
length penalty and the per-sentence output length limit.

A searcher needs only ``model.encode(src, lengths, rows_per_sentence) -> (memory, state)`` and
``model.step(prev_tokens [B], state, memory, rows_per_sentence) -> (log_probs [B, V], state,
weights [B, S])`` (:class:`SearchModel`); ``memory.select`` / ``state.select`` pick and reorder
sentences and rows, ``memory.join`` / ``state.join`` append newly encoded ones. Neither search
ever emits padding or BOS. A hypothesis ends with EOS or at its sentence's length limit; its
score is the sum of its tokens' log-probabilities (EOS included when emitted), divided by the
GNMT length penalty ((5 + |y|) / 6)^alpha, |y| counting EOS (alpha = 0: no penalty).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Protocol

import torch
from torch import Tensor

from s2s.data.tokenizer import SpecialIds


class SearchModel(Protocol):
    """What search needs of a model: :class:`s2s.model.Seq2Seq` is one, and so is what a
    backend builds for decoding (``Backend.prepare_decoding``)."""

    special: SpecialIds
    training: bool

    def encode(self, src: Tensor, src_lengths: Tensor,
               rows_per_sentence: int = 1) -> tuple[Any, Any]: ...

    def step(self, prev_tokens: Tensor, state: Any, memory: Any,
             rows_per_sentence: int = 1) -> tuple[Tensor, Any, Tensor]: ...

    def train(self, mode: bool = True) -> Any: ...

    def eval(self) -> Any: ...


def max_output_lengths(src_lengths: Tensor, max_output_length: int, ratio: float) -> Tensor:
    """Per sentence: min(max_output_length, ceil(ratio × source length)), at least 1."""
    limit = torch.ceil(src_lengths.float() * ratio).long().clamp(min=1)
    return limit.clamp(max=max_output_length)


def forbid_specials(log_probs: Tensor, special: SpecialIds) -> Tensor:
    """Padding and BOS are never outputs."""
    log_probs[:, special.pad] = float("-inf")
    log_probs[:, special.bos] = float("-inf")
    return log_probs


def length_penalty(length: int | Tensor, alpha: float) -> float | Tensor:
    """GNMT: lp(y) = ((5 + |y|) / 6)^alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """tokens: output ids without EOS; log_prob: summed token log-probabilities (EOS included
    when the hypothesis ended with it); score: log_prob / length penalty; attention
    ``[len(tokens) (+1 with EOS), source length (+1 for its EOS)]`` when asked for."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: Optional[Tensor] = field(default=None, repr=False)


def make_hypothesis(tokens: list[int], log_prob: float, alpha: float,
                    attention: Optional[Tensor], with_eos: bool) -> Hypothesis:
    """The hypothesis of ``tokens`` (without EOS) and its summed ``log_prob``; ``attention``
    ``[≥ steps, S]`` is cut to its steps."""
    length = len(tokens) + (1 if with_eos else 0)
    return Hypothesis(tokens, log_prob, log_prob / length_penalty(length, alpha),
                      attention[:length].cpu() if attention is not None else None)
