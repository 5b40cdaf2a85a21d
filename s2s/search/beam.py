"""Beam search over a whole batch at once: sentences × beams rows in one tensor."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from s2s.search.common import (Hypothesis, SearchModel, forbid_specials, length_penalty,
                               make_hypothesis)


@torch.no_grad()
def beam_search(model: SearchModel, src: Tensor, src_lengths: Tensor, max_lengths: Tensor,
                beam_size: int, alpha: float = 0.0, n_best: int = 1,
                keep_attention: bool = False) -> list[list[Hypothesis]]:
    """Beam search over the whole batch at once: ``sentences × beam_size`` rows in one tensor.

    Each step scores every (beam, token) extension, keeps the 2·K best per sentence, sets aside
    the EOS extensions that rank among the top K as finished hypotheses, and continues with the
    K best non-EOS ones. A sentence is done when it has K finished hypotheses, when its
    ``n_best`` best finished scores can no longer be beaten by any live beam (log-probabilities
    only fall, so a live beam's best reachable score is bounded; stopping then changes nothing
    in the result), or when it reaches its length limit (its live beams are then finished as
    they are). Done sentences leave the batch, so they cost nothing further, and the search
    stops when none is left. Returns the ``n_best`` hypotheses of each sentence, best first.
    """
    special, beams = model.special, beam_size
    device = src.device
    # The first step runs one row per sentence (all beams would be identical); from then on
    # each sentence has ``beams`` rows.
    memory, state = model.encode(src, src_lengths, rows_per_sentence=beams)
    limits = max_lengths.to(device)
    active = torch.arange(src.size(0), device=device)  # original index of each live sentence
    beam_scores = torch.zeros(src.size(0), 1, device=device)
    prev = torch.full((src.size(0),), special.bos, dtype=torch.long, device=device)
    history = torch.empty(src.size(0), 0, dtype=torch.long, device=device)
    attention = torch.empty(src.size(0), 0, src.size(1), device=device)
    finished: list[list[Hypothesis]] = [[] for _ in range(src.size(0))]
    finished_count = torch.zeros(src.size(0), dtype=torch.long, device=device)
    kth_best = torch.full((src.size(0),), float("-inf"), device=device)  # n_best-th finished
    beam_range = torch.arange(beams, device=device)

    source_lengths = src_lengths.tolist()

    def finish(hits: Tensor, rows: Tensor, scores: Tensor, with_eos: bool) -> None:
        """Set aside hypotheses ``hits [N, 2]`` = (live sentence, column) of ``rows``/``scores``."""
        for b, col in hits.tolist():
            row, sentence = int(rows[b, col]), int(active[b])
            hyps = finished[sentence]
            weights = attention[row, :, :source_lengths[sentence]] if keep_attention else None
            hyps.append(make_hypothesis(history[row].tolist(), float(scores[b, col]), alpha,
                                        weights, with_eos))
            if len(hyps) >= n_best:
                kth_best[b] = sorted((h.score for h in hyps), reverse=True)[n_best - 1]

    for t in range(int(limits.max())):
        batch, width = beam_scores.shape
        offsets = (torch.arange(batch, device=device) * width).unsqueeze(1)
        log_probs, state, alpha_t = model.step(prev, state, memory, rows_per_sentence=width)
        top_scores, origin, tokens = top_extensions(forbid_specials(log_probs, special),
                                                    beam_scores, 2 * beams)  # [B, 2K] each
        is_eos = tokens == special.eos
        if keep_attention:
            attention = torch.cat([attention, alpha_t.unsqueeze(1)], dim=1)
        # ---- finished: EOS among the top K
        eos_hits = is_eos[:, :beams] & torch.isfinite(top_scores[:, :beams])
        finished_count += eos_hits.sum(dim=1)
        finish(eos_hits.nonzero(), origin + offsets, top_scores, with_eos=True)
        # ---- live: the K best non-EOS extensions (a stable sort moves EOS ones behind)
        order = (is_eos.long() * 2 * beams + torch.arange(2 * beams, device=device)).argsort(-1)
        keep = order[:, :beams]
        beam_scores = top_scores.gather(1, keep)
        source_rows = (origin.gather(1, keep) + offsets).view(-1)
        prev = tokens.gather(1, keep).view(-1)
        history = torch.cat([history.index_select(0, source_rows), prev.unsqueeze(1)], dim=1)
        if keep_attention:
            attention = attention.index_select(0, source_rows)
        # ---- sentences at their length limit finish their live beams as they are
        at_limit = limits <= t + 1
        offsets = (torch.arange(batch, device=device) * beams).unsqueeze(1)
        finish((at_limit[:, None] & torch.isfinite(beam_scores)).nonzero(), beam_range + offsets,
               beam_scores, with_eos=False)
        unbeatable = kth_best >= _best_reachable(beam_scores[:, 0], t + 1, limits, alpha)
        done = at_limit | (finished_count >= beams) | unbeatable
        if bool(done.all()):
            break
        # ---- done sentences leave the batch; the rows of the others are gathered once
        if bool(done.any()):
            live = (~done).nonzero().squeeze(1)
            live_rows = (live.unsqueeze(1) * beams + beam_range).view(-1)
            source_rows = source_rows.index_select(0, live_rows)
            memory = memory.select(live)  # one copy per sentence, shared by its beams
            prev, history = prev.index_select(0, live_rows), history.index_select(0, live_rows)
            if keep_attention:
                attention = attention.index_select(0, live_rows)
            active, limits = active.index_select(0, live), limits.index_select(0, live)
            beam_scores = beam_scores.index_select(0, live)
            finished_count = finished_count.index_select(0, live)
            kth_best = kth_best.index_select(0, live)
        state = state.select(source_rows)
    return [sorted(hyps, key=lambda h: -h.score)[:n_best] for hyps in finished]


EXTENSION_BLOCK = 32  # vocabulary columns per block in top_extensions' first pass


def top_extensions(log_probs: Tensor, beam_scores: Tensor, k: int) -> tuple[Tensor, Tensor,
                                                                              Tensor]:
    """The ``k`` best extensions of each sentence's beams, best first: their scores
    (beam score + token log-probability), beams (row within the sentence) and tokens, each
    ``[B, k]``, from ``log_probs [B·W, V]`` and ``beam_scores [B, W]``.

    The same as ``topk`` over the ``[B, W·V]`` sums (up to the order of exactly equal scores),
    without forming them or sorting all of them: the vocabulary is cut into blocks of
    :data:`EXTENSION_BLOCK` columns, and a block's best extension is its largest log-probability
    plus its beam's score. Every one of the k best extensions lies in one of the k blocks whose
    best is highest (a block outside them is beaten by k blocks' bests, so are its entries),
    so one pass takes the blocks' maxima and ``topk`` then looks only at those k blocks.
    Where there are too few blocks for this to pay (a tiny vocabulary), plain ``topk``.
    """
    batch, width = beam_scores.shape
    vocab = log_probs.size(-1)
    block = EXTENSION_BLOCK
    blocks = -(-vocab // block)  # per row, the last one maybe partial
    if width * blocks < 4 * k:
        return _top_extensions_plain(log_probs, beam_scores, k)
    whole = vocab // block * block
    maxima = log_probs[:, :whole].view(-1, vocab // block, block).amax(dim=-1)  # [B·W, blocks]
    if whole < vocab:
        maxima = torch.cat([maxima, log_probs[:, whole:].amax(dim=-1, keepdim=True)], dim=1)
    bests = (maxima + beam_scores.view(-1, 1)).view(batch, width * blocks)
    chosen = bests.topk(k, dim=-1).indices                                     # [B, k]
    device = log_probs.device
    first_row = (torch.arange(batch, device=device) * width).unsqueeze(1)
    rows = chosen // blocks + first_row                                         # [B, k]
    columns = ((chosen % blocks) * block).unsqueeze(-1) + torch.arange(block, device=device)
    inside = columns < vocab                                                    # [B, k, block]
    entries = log_probs[rows.unsqueeze(-1), columns.clamp(max=vocab - 1)]
    entries = entries.masked_fill_(~inside, float("-inf"))
    entries += beam_scores.view(-1)[rows].unsqueeze(-1)
    scores, picked = entries.view(batch, -1).topk(k, dim=-1)                   # [B, k]
    beams = rows.gather(1, picked // block) - first_row
    return scores, beams, columns.view(batch, -1).gather(1, picked)


def _top_extensions_plain(log_probs: Tensor, beam_scores: Tensor, k: int) -> tuple[Tensor,
                                                                                   Tensor, Tensor]:
    """:func:`top_extensions` by ``topk`` over all ``[B, W·V]`` sums (adds to log_probs in
    place)."""
    batch, width = beam_scores.shape
    vocab = log_probs.size(-1)
    sums = log_probs.add_(beam_scores.view(-1, 1)).view(batch, -1)
    if sums.size(1) < k:  # a tiny vocabulary at the first step
        sums = torch.nn.functional.pad(sums, (0, k - sums.size(1)), value=float("-inf"))
    scores, ids = sums.topk(k, dim=-1)
    return scores, (ids // vocab).clamp(max=width - 1), ids % vocab


def _best_reachable(log_probs: Tensor, length: int, limits: Tensor, alpha: float) -> Tensor:
    """Upper bound ``[B]`` on the final score of live beams with summed ``log_probs [B]`` (≤ 0)
    and ``length`` tokens: more tokens only lower the sum, and the penalty can at most reach its
    value at the shortest (length + 1 with EOS) or longest (the limit) finish."""
    if alpha == 0.0:
        return log_probs
    shortest = length_penalty(length + 1, alpha)
    longest = length_penalty(limits.float(), alpha)
    return log_probs / torch.clamp(longest, min=shortest)


