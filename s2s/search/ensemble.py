"""Several models searched as one: at each step the mean of their log-probabilities.

An :class:`Ensemble` has the search interface of one model (``encode``, ``step``), so greedy and
beam search run over it unchanged; its memory and state hold one part per member and pick,
reorder and join rows part by part. The members must share the target vocabulary.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence

import torch
from torch import Tensor

from s2s.search.common import SearchModel


class EnsembleMemory(NamedTuple):
    """One memory per member."""

    parts: tuple[Any, ...]

    def select(self, index: Tensor, source_length: Optional[int] = None) -> "EnsembleMemory":
        return EnsembleMemory(tuple(part.select(index, source_length) for part in self.parts))

    def join(self, other: "EnsembleMemory") -> "EnsembleMemory":
        return EnsembleMemory(tuple(a.join(b) for a, b in zip(self.parts, other.parts)))


class EnsembleState(NamedTuple):
    """One decoder state per member."""

    parts: tuple[Any, ...]

    def select(self, index: Tensor) -> "EnsembleState":
        return EnsembleState(tuple(part.select(index) for part in self.parts))

    def join(self, other: "EnsembleState") -> "EnsembleState":
        return EnsembleState(tuple(a.join(b) for a, b in zip(self.parts, other.parts)))


class Ensemble:
    """log p(y(t) | …) = (1/M) Σₘ log pₘ(y(t) | …) over the M ``members``; the attention
    weights returned are the members' mean."""

    def __init__(self, members: Sequence[SearchModel]) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one model")
        self.members = list(members)
        self.special = self.members[0].special

    @property
    def training(self) -> bool:
        return self.members[0].training

    def train(self, mode: bool = True) -> "Ensemble":
        for member in self.members:
            member.train(mode)
        return self

    def eval(self) -> "Ensemble":
        return self.train(False)

    def encode(self, src: Tensor, src_lengths: Tensor,
               rows_per_sentence: int = 1) -> tuple[EnsembleMemory, EnsembleState]:
        encoded = [member.encode(src, src_lengths, rows_per_sentence) for member in self.members]
        return (EnsembleMemory(tuple(memory for memory, _ in encoded)),
                EnsembleState(tuple(state for _, state in encoded)))

    def step(self, prev_tokens: Tensor, state: EnsembleState, memory: EnsembleMemory,
             rows_per_sentence: int = 1) -> tuple[Tensor, EnsembleState, Tensor]:
        steps = [member.step(prev_tokens, part_state, part_memory, rows_per_sentence)
                 for member, part_state, part_memory in zip(self.members, state.parts,
                                                            memory.parts)]
        log_probs = torch.stack([log_probs for log_probs, _, _ in steps]).mean(dim=0)
        weights = torch.stack([weights for _, _, weights in steps]).mean(dim=0)
        return log_probs, EnsembleState(tuple(new for _, new, _ in steps)), weights
