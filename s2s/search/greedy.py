"""Greedy search: the argmax at every step, for a batch or for a stream of sentences that join
the batch as others finish (:func:`greedy_stream`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from s2s.data.batching import collate
from s2s.model.decoder import DecoderState, Memory
from s2s.search.common import (Hypothesis, SearchModel, forbid_specials, make_hypothesis,
                               max_output_lengths)


@torch.no_grad()
def greedy_search(model: SearchModel, src: Tensor, src_lengths: Tensor, max_lengths: Tensor,
                  alpha: float = 0.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Argmax decoding for a batch: one :class:`Hypothesis` per sentence. Sentences that have
    finished (EOS or length limit) leave the batch, so they cost nothing further."""
    batches = iter([((src, src_lengths, max_lengths.to(src.device)), list(range(src.size(0))))])
    found = _greedy(model, lambda _: next(batches, None), 0, alpha, keep_attention)
    return [found[i] for i in range(src.size(0))]


Admission = tuple[Tensor, Tensor, Tensor]  # src [B, S], src_lengths [B], max_lengths [B]
REFILL_DIVISOR = 4  # greedy_stream admits sentences once 1/4 of its rows are free (1/2, 1/8:
                    # the same speed within noise)


@torch.no_grad()
def greedy_stream(model: SearchModel, sources: Sequence[Sequence[int]], batch_size: int,
                  max_output_length: int, max_output_ratio: float, device: torch.device | str,
                  alpha: float = 0.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Greedy search over ``sources``, in their order, with up to ``batch_size`` sentences
    decoded at once: as sentences finish, the next ones join the batch, as many as there are
    free rows once at least a quarter of them are free. One :class:`Hypothesis` per source, in
    input order.

    Against fixed batches this keeps the decoder's products at full width: a fixed batch runs
    its last steps for its few longest outputs, and on the CPU a step over a few rows costs
    about as much as one over dozens (it reads every weight once). The hypotheses are those of
    :func:`greedy_search`.
    """
    queue = list(range(len(sources)))[::-1]  # popped from the end: the given order

    def admit(free: int) -> Optional[tuple[Admission, list[int]]]:
        if not queue:
            return None
        ids = [queue.pop() for _ in range(min(free, len(queue)))]
        batch = collate([sources[i] for i in ids], None, ids).to(device)
        limits = max_output_lengths(batch.src_lengths, max_output_length, max_output_ratio)
        return (batch.src, batch.src_lengths, limits), ids

    found = _greedy(model, admit, batch_size, alpha, keep_attention)
    return [found[i] for i in range(len(sources))]


@dataclass
class _GreedyRows:
    """The sentences greedy search is decoding, one row each: the decoder's memory and state,
    the last token, summed log-probability, tokens so far and length limit of each row, its
    sentence's id and source length."""

    memory: Memory
    state: DecoderState
    prev: Tensor
    log_prob: Tensor
    steps: Tensor
    limits: Tensor
    ids: list[int]
    src_lengths: Tensor

    def select(self, index: Tensor) -> "_GreedyRows":
        """Rows ``index``, the memory cut to their longest source."""
        lengths = self.src_lengths.index_select(0, index)
        return _GreedyRows(self.memory.select(index, int(lengths.max())),
                           self.state.select(index), self.prev.index_select(0, index),
                           self.log_prob.index_select(0, index),
                           self.steps.index_select(0, index), self.limits.index_select(0, index),
                           [self.ids[i] for i in index.tolist()], lengths)

    def join(self, other: "_GreedyRows") -> "_GreedyRows":
        """These rows, then ``other``'s (sentences joining the batch)."""
        def cat(mine: Tensor, theirs: Tensor) -> Tensor:
            return torch.cat([mine, theirs])

        return _GreedyRows(self.memory.join(other.memory), self.state.join(other.state),
                           cat(self.prev, other.prev), cat(self.log_prob, other.log_prob),
                           cat(self.steps, other.steps), cat(self.limits, other.limits),
                           self.ids + other.ids, cat(self.src_lengths, other.src_lengths))


def _greedy(model: SearchModel, admit: Callable[[int], Optional[tuple[Admission, list[int]]]],
            capacity: int, alpha: float, keep_attention: bool) -> dict[int, Hypothesis]:
    """The greedy loop: {sentence id: hypothesis} for every sentence ``admit`` hands out.

    ``admit(free)`` returns up to ``free`` more sentences (``(src, src_lengths, max_lengths)``
    and their ids) or None when there are no more. It is asked first for ``capacity`` and then,
    whenever at least a quarter of ``capacity`` rows are free, for that many (``capacity`` 0:
    only when no row is left, as for one batch).
    """
    special = model.special
    rows: Optional[_GreedyRows] = None
    tokens: dict[int, list[int]] = {}
    weights: dict[int, list[Tensor]] = {}
    found: dict[int, Hypothesis] = {}
    refill_at = max(1, capacity // REFILL_DIVISOR)
    while True:
        free = capacity - (len(rows.ids) if rows is not None else 0)
        if rows is None or (capacity and free >= refill_at):
            admitted = admit(free)
            if admitted is not None:
                new = _start_rows(model, *admitted)
                rows = new if rows is None else rows.join(new)
                tokens.update((b, []) for b in new.ids)
                weights.update((b, []) for b in new.ids)
        if rows is None:
            return found
        log_probs, state, alpha_t = model.step(rows.prev, rows.state, rows.memory)
        best, prev = forbid_specials(log_probs, special).max(dim=-1)
        rows.state, rows.prev, rows.steps = state, prev, rows.steps + 1
        rows.log_prob += best
        is_eos = prev == special.eos
        done = is_eos | (rows.limits <= rows.steps)
        for b, token in zip(rows.ids, prev.tolist()):
            tokens[b].append(token)
        if keep_attention:
            for i, (b, length) in enumerate(zip(rows.ids, rows.src_lengths.tolist())):
                weights[b].append(alpha_t[i, :length])
        for i in done.nonzero().squeeze(1).tolist():
            b, eos = rows.ids[i], bool(is_eos[i])
            found[b] = make_hypothesis(tokens[b][:-1] if eos else tokens[b],
                                       float(rows.log_prob[i]), alpha,
                                       torch.stack(weights[b]) if keep_attention else None, eos)
        if bool(done.all()):
            rows = None
        elif bool(done.any()):
            rows = rows.select((~done).nonzero().squeeze(1))


def _start_rows(model: SearchModel, admission: Admission, ids: list[int]) -> _GreedyRows:
    """Encode admitted sentences: their rows, before their first step."""
    src, src_lengths, limits = admission
    memory, state = model.encode(src, src_lengths)
    device = src.device
    return _GreedyRows(memory, state, torch.full((len(ids),), model.special.bos, device=device),
                       torch.zeros(len(ids), device=device),
                       torch.zeros(len(ids), dtype=torch.long, device=device), limits, list(ids),
                       src_lengths.to(device))


