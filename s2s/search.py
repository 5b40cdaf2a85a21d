"""Decoding: batched greedy search over the model's step interface.

A searcher only needs ``model.encode(src, lengths) -> (memory, state)`` and
``model.step(prev_tokens [B], state, memory) -> (log_probs [B, V], state, weights [B, S])``;
``memory.select`` / ``state.select`` reorder the batch (for beams).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import Tensor

from s2s.batching import collate, sentence_batches
from s2s.model import Seq2Seq


def max_output_lengths(src_lengths: Tensor, max_output_length: int, ratio: float) -> Tensor:
    """Per sentence: min(max_output_length, ceil(ratio × source length)), at least 1."""
    limit = torch.ceil(src_lengths.float() * ratio).long().clamp(min=1)
    return limit.clamp(max=max_output_length)


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor,
                  max_lengths: Tensor) -> tuple[list[list[int]], Tensor]:
    """Argmax decoding for a batch.

    Returns each sentence's output ids (EOS and what follows removed) and the attention
    weights ``[B, L, S]`` of every step (L = steps taken).
    """
    special = model.special
    memory, state = model.encode(src, src_lengths)
    batch = src.size(0)
    prev = torch.full((batch,), special.bos, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    limits = max_lengths.to(src.device)
    tokens, weights = [], []
    for t in range(int(limits.max())):
        log_probs, state, alpha = model.step(prev, state, memory)
        prev = log_probs.argmax(dim=-1).masked_fill(finished, special.pad)
        tokens.append(prev)
        weights.append(alpha)
        finished |= (prev == special.eos) | (limits <= t + 1)
        if bool(finished.all()):
            break
    ids = torch.stack(tokens, dim=1).tolist()
    return [_strip(row, special.eos, special.pad) for row in ids], torch.stack(weights, dim=1)


def _strip(row: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for token in row:
        if token in (eos, pad):
            break
        out.append(token)
    return out


@torch.no_grad()
def translate_ids(model: Seq2Seq, sources: Sequence[Sequence[int]], batch_size: int,
                  max_output_length: int, max_output_ratio: float,
                  device: torch.device | str = "cpu") -> list[list[int]]:
    """Greedy translations of id sequences, batched by length, returned in input order."""
    was_training = model.training
    model.eval()
    outputs: list[list[int]] = [[] for _ in sources]
    for indices in sentence_batches([len(s) for s in sources], batch_size):
        batch = collate([sources[i] for i in indices], None, indices).to(device)
        limits = max_output_lengths(batch.src_lengths, max_output_length, max_output_ratio)
        hyps, _ = greedy_search(model, batch.src, batch.src_lengths, limits)
        for index, hyp in zip(indices, hyps):
            outputs[index] = hyp
    model.train(was_training)
    return outputs


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(min(nll_sum / max(tokens, 1), 100.0))
