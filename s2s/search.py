"""Decoding: batched greedy and beam search over the model's step interface.

A searcher only needs ``model.encode(src, lengths) -> (memory, state)`` and
``model.step(prev_tokens [B], state, memory) -> (log_probs [B, V], state, weights [B, S])``;
``memory.select`` / ``state.select`` pick and reorder batch rows (beam expansion, reordering).

Neither search ever emits padding or BOS. A hypothesis ends with EOS or at its sentence's
length limit; its score is the sum of its tokens' log-probabilities (EOS included when emitted),
divided by the GNMT length penalty ((5 + |y|) / 6)^alpha, |y| counting EOS (alpha = 0: no
penalty).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from s2s.batching import collate, sentence_batches
from s2s.model import Seq2Seq


def max_output_lengths(src_lengths: Tensor, max_output_length: int, ratio: float) -> Tensor:
    """Per sentence: min(max_output_length, ceil(ratio × source length)), at least 1."""
    limit = torch.ceil(src_lengths.float() * ratio).long().clamp(min=1)
    return limit.clamp(max=max_output_length)


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_lengths: Tensor,
                  alpha: float = 0.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Argmax decoding for a batch: one :class:`Hypothesis` per sentence."""
    special = model.special
    memory, state = model.encode(src, src_lengths)
    batch = src.size(0)
    prev = torch.full((batch,), special.bos, dtype=torch.long, device=src.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    ended_with_eos = torch.zeros(batch, dtype=torch.bool, device=src.device)
    log_prob = torch.zeros(batch, device=src.device)
    limits = max_lengths.to(src.device)
    tokens, weights = [], []
    for t in range(int(limits.max())):
        log_probs, state, alpha_t = model.step(prev, state, memory)
        best, prev = _forbid_specials(log_probs, special).max(dim=-1)
        log_prob += best.masked_fill(finished, 0.0)
        prev = prev.masked_fill(finished, special.pad)
        tokens.append(prev)
        if keep_attention:
            weights.append(alpha_t)
        ended_with_eos |= prev == special.eos
        finished |= (prev == special.eos) | (limits <= t + 1)
        if bool(finished.all()):
            break
    rows = torch.stack(tokens, dim=1).tolist()
    attention = torch.stack(weights, dim=1) if keep_attention else None
    return [_hypothesis(_strip(row, special.eos, special.pad), float(log_prob[b]), alpha,
                        attention[b] if attention is not None else None,
                        with_eos=bool(ended_with_eos[b]))
            for b, row in enumerate(rows)]


def _forbid_specials(log_probs: Tensor, special) -> Tensor:
    """Padding and BOS are never outputs."""
    log_probs[:, special.pad] = float("-inf")
    log_probs[:, special.bos] = float("-inf")
    return log_probs


def length_penalty(length: int, alpha: float) -> float:
    """GNMT: lp(y) = ((5 + |y|) / 6)^alpha."""
    return ((5.0 + length) / 6.0) ** alpha


@dataclass
class Hypothesis:
    """tokens: output ids without EOS; log_prob: summed token log-probabilities (EOS included
    when the hypothesis ended with it); score: log_prob / length penalty; attention
    ``[len(tokens) (+1 with EOS), S]`` when asked for."""

    tokens: list[int]
    log_prob: float
    score: float
    attention: Optional[Tensor] = field(default=None, repr=False)


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_lengths: Tensor,
                beam_size: int, alpha: float = 0.0, n_best: int = 1,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search over the whole batch at once: ``B × beam_size`` rows in one tensor.

    Each step scores every (beam, token) extension, keeps the 2·K best per sentence, sets aside
    the EOS extensions that rank among the top K as finished hypotheses, and continues with the
    K best non-EOS ones. A sentence is done when it has K finished hypotheses or reaches its
    length limit (its live beams are then finished as they are); the search stops when every
    sentence is done. Returns the ``n_best`` hypotheses of each sentence, best first.
    """
    special, beams = model.special, beam_size
    batch, device = src.size(0), src.device
    memory, state = model.encode(src, src_lengths)
    rows = torch.arange(batch, device=device).repeat_interleave(beams)
    memory, state = memory.select(rows), state.select(rows)
    limits = max_lengths.to(device)
    beam_scores = torch.full((batch, beams), float("-inf"), device=device)
    beam_scores[:, 0] = 0.0  # all beams start identical: expand only the first
    prev = torch.full((batch * beams,), special.bos, dtype=torch.long, device=device)
    history = torch.empty(batch * beams, 0, dtype=torch.long, device=device)
    attention = torch.empty(batch * beams, 0, src.size(1), device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    finished_count = torch.zeros(batch, dtype=torch.long, device=device)
    offsets = (torch.arange(batch, device=device) * beams).unsqueeze(1)

    def finish(hits: Tensor, rows: Tensor, scores: Tensor, with_eos: bool) -> None:
        """Set aside hypotheses ``hits [N, 2]`` = (sentence, column) of ``rows``/``scores``."""
        for b, col in hits.tolist():
            row = int(rows[b, col])
            finished[b].append(_hypothesis(history[row].tolist(), float(scores[b, col]), alpha,
                                           attention[row] if keep_attention else None,
                                           with_eos))

    for t in range(int(limits.max())):
        log_probs, state, alpha_t = model.step(prev, state, memory)
        vocab = log_probs.size(-1)
        candidates = (beam_scores.view(-1, 1) + _forbid_specials(log_probs, special))
        top_scores, top_ids = candidates.view(batch, -1).topk(2 * beams, dim=-1)  # [B, 2K]
        origin, tokens = top_ids // vocab, top_ids % vocab
        is_eos = tokens == special.eos
        if keep_attention:
            attention = torch.cat([attention, alpha_t.unsqueeze(1)], dim=1)
        # ---- finished: EOS among the top K, for sentences still searching
        eos_hits = is_eos[:, :beams] & torch.isfinite(top_scores[:, :beams]) & ~done[:, None]
        finished_count += eos_hits.sum(dim=1)
        finish(eos_hits.nonzero(), origin + offsets, top_scores, with_eos=True)
        # ---- live: the K best non-EOS extensions (a stable sort moves EOS ones behind)
        order = (is_eos.long() * 2 * beams + torch.arange(2 * beams, device=device)).argsort(-1)
        keep = order[:, :beams]
        beam_scores = top_scores.gather(1, keep)
        source_rows = (origin.gather(1, keep) + offsets).view(-1)
        prev = tokens.gather(1, keep).view(-1)
        history = torch.cat([history.index_select(0, source_rows), prev.unsqueeze(1)], dim=1)
        state = state.select(source_rows)
        if keep_attention:
            attention = attention.index_select(0, source_rows)
        # ---- sentences at their length limit finish their live beams as they are
        at_limit = (limits <= t + 1) & ~done
        live_rows = torch.arange(beams, device=device) + offsets
        finish((at_limit[:, None] & torch.isfinite(beam_scores)).nonzero(), live_rows,
               beam_scores, with_eos=False)
        done |= at_limit | (finished_count >= beams)
        if bool(done.all()):
            break
        beam_scores = beam_scores.masked_fill(done[:, None], float("-inf"))
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]


def _hypothesis(tokens: list[int], log_prob: float, alpha: float, attention: Optional[Tensor],
                with_eos: bool) -> Hypothesis:
    length = len(tokens) + (1 if with_eos else 0)
    return Hypothesis(tokens, log_prob, log_prob / length_penalty(length, alpha),
                      attention[:length].cpu() if attention is not None else None)


def _strip(row: list[int], eos: int, pad: int) -> list[int]:
    out = []
    for token in row:
        if token in (eos, pad):
            break
        out.append(token)
    return out


@torch.no_grad()
def search(model: Seq2Seq, sources: Sequence[Sequence[int]], batch_size: int,
           max_output_length: int, max_output_ratio: float, device: torch.device | str = "cpu",
           beam_size: int = 1, alpha: float = 0.0, n_best: int = 1,
           keep_attention: bool = False) -> list[list[Hypothesis]]:
    """n-best hypotheses for each id sequence (greedy when ``beam_size`` is 1 and one is
    asked for), batched by length and returned in input order."""
    was_training = model.training
    model.eval()
    outputs: list[list[Hypothesis]] = [[] for _ in sources]
    for indices in sentence_batches([len(s) for s in sources], batch_size):
        batch = collate([sources[i] for i in indices], None, indices).to(device)
        limits = max_output_lengths(batch.src_lengths, max_output_length, max_output_ratio)
        if beam_size == 1 and n_best == 1:
            results = [[h] for h in greedy_search(model, batch.src, batch.src_lengths, limits,
                                                  alpha, keep_attention)]
        else:
            results = beam_search(model, batch.src, batch.src_lengths, limits, beam_size, alpha,
                                  n_best, keep_attention)
        for index, hyps in zip(indices, results):
            outputs[index] = hyps
    model.train(was_training)
    return outputs


def translate_ids(model: Seq2Seq, sources: Sequence[Sequence[int]], batch_size: int,
                  max_output_length: int, max_output_ratio: float,
                  device: torch.device | str = "cpu", beam_size: int = 1,
                  alpha: float = 0.0) -> list[list[int]]:
    """The best output ids for each source, in input order."""
    results = search(model, sources, batch_size, max_output_length, max_output_ratio, device,
                     beam_size, alpha)
    return [hyps[0].tokens for hyps in results]


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(min(nll_sum / max(tokens, 1), 100.0))
