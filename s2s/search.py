"""Decoding: batched greedy and beam search over the model's step interface.

A searcher only needs ``model.encode(src, lengths, rows_per_sentence) -> (memory, state)`` and
``model.step(prev_tokens [B], state, memory, rows_per_sentence) -> (log_probs [B, V], state,
weights [B, S])``; ``memory.select`` / ``state.select`` pick and reorder sentences and rows,
``memory.join`` / ``state.join`` append newly encoded ones. Beam search keeps one memory row
per sentence: its K beams are K consecutive state rows that attend to it as K queries
(``rows_per_sentence = K``). Greedy search streams sentences through a batch that new ones
join as others finish (:func:`greedy_stream`).

Neither search ever emits padding or BOS. A hypothesis ends with EOS or at its sentence's
length limit; its score is the sum of its tokens' log-probabilities (EOS included when emitted),
divided by the GNMT length penalty ((5 + |y|) / 6)^alpha, |y| counting EOS (alpha = 0: no
penalty).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence, TypeVar

import torch
from torch import Tensor

from s2s.batching import collate, sentence_batches
from s2s.decoder import DecoderState, Memory
from s2s.model import Seq2Seq

T = TypeVar("T")


def max_output_lengths(src_lengths: Tensor, max_output_length: int, ratio: float) -> Tensor:
    """Per sentence: min(max_output_length, ceil(ratio × source length)), at least 1."""
    limit = torch.ceil(src_lengths.float() * ratio).long().clamp(min=1)
    return limit.clamp(max=max_output_length)


@torch.no_grad()
def greedy_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_lengths: Tensor,
                  alpha: float = 0.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Argmax decoding for a batch: one :class:`Hypothesis` per sentence. Sentences that have
    finished (EOS or length limit) leave the batch, so they cost nothing further."""
    batches = iter([((src, src_lengths, max_lengths.to(src.device)), list(range(src.size(0))))])
    found = _greedy(model, lambda _: next(batches, None), 0, alpha, keep_attention)
    return [found[i] for i in range(src.size(0))]


Admission = tuple[Tensor, Tensor, Tensor]  # src [B, S], src_lengths [B], max_lengths [B]
REFILL_DIVISOR = 4  # greedy_stream admits sentences once 1/4 of its rows are free (1/2, 1/8:
                    # the same speed within noise, docs/benchmarks.md)


@torch.no_grad()
def greedy_stream(model: Seq2Seq, sources: Sequence[Sequence[int]], batch_size: int,
                  max_output_length: int, max_output_ratio: float, device: torch.device | str,
                  alpha: float = 0.0, keep_attention: bool = False) -> list[Hypothesis]:
    """Greedy search over ``sources``, in their order, with up to ``batch_size`` sentences
    decoded at once: as sentences finish, the next ones join the batch, as many as there are
    free rows once at least a quarter of them are free. One :class:`Hypothesis` per source, in
    input order.

    Against fixed batches this keeps the decoder's products at full width: a fixed batch runs
    its last steps for its few longest outputs, and on the CPU a step over a few rows costs
    about as much as one over dozens (it reads every weight once; docs/benchmarks.md, "Eighth
    round"). The hypotheses are those of :func:`greedy_search`.
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


def _greedy(model: Seq2Seq, admit: Callable[[int], Optional[tuple[Admission, list[int]]]],
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
        best, prev = _forbid_specials(log_probs, special).max(dim=-1)
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
            found[b] = _hypothesis(tokens[b][:-1] if eos else tokens[b], float(rows.log_prob[i]),
                                   alpha, torch.stack(weights[b]) if keep_attention else None,
                                   eos)
        if bool(done.all()):
            rows = None
        elif bool(done.any()):
            rows = rows.select((~done).nonzero().squeeze(1))


def _start_rows(model: Seq2Seq, admission: Admission, ids: list[int]) -> _GreedyRows:
    """Encode admitted sentences: their rows, before their first step."""
    src, src_lengths, limits = admission
    memory, state = model.encode(src, src_lengths)
    device = src.device
    return _GreedyRows(memory, state, torch.full((len(ids),), model.special.bos, device=device),
                       torch.zeros(len(ids), device=device),
                       torch.zeros(len(ids), dtype=torch.long, device=device), limits, list(ids),
                       src_lengths.to(device))


def _forbid_specials(log_probs: Tensor, special) -> Tensor:
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


@torch.no_grad()
def beam_search(model: Seq2Seq, src: Tensor, src_lengths: Tensor, max_lengths: Tensor,
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
            hyps.append(_hypothesis(history[row].tolist(), float(scores[b, col]), alpha, weights,
                                    with_eos))
            if len(hyps) >= n_best:
                kth_best[b] = sorted((h.score for h in hyps), reverse=True)[n_best - 1]

    for t in range(int(limits.max())):
        batch, width = beam_scores.shape
        offsets = (torch.arange(batch, device=device) * width).unsqueeze(1)
        log_probs, state, alpha_t = model.step(prev, state, memory, rows_per_sentence=width)
        top_scores, origin, tokens = top_extensions(_forbid_specials(log_probs, special),
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


def _hypothesis(tokens: list[int], log_prob: float, alpha: float, attention: Optional[Tensor],
                with_eos: bool) -> Hypothesis:
    length = len(tokens) + (1 if with_eos else 0)
    return Hypothesis(tokens, log_prob, log_prob / length_penalty(length, alpha),
                      attention[:length].cpu() if attention is not None else None)


MAX_AUTO_WORKERS = 4  # a cap, not a measurement (2 cores only so far): the threads share the GIL


def decoding_workers(requested: int, device: torch.device | str) -> int:
    """How many batches (beam search) or streams of sentences (greedy search) :func:`search`
    decodes at once: ``requested``, or for 0 ("auto") one per torch thread on the CPU (at most
    :data:`MAX_AUTO_WORKERS`); always 1 on a GPU.

    On 2 cores two workers decode greedy search 1.17–1.28× and beam 5 ≈ 1.2× faster than one
    batch on both threads. Their extra peak memory is ≈ 20 MB in a process set up by
    :func:`s2s.allocator.configure_decoding_process` (evaluate.py and translate.py are),
    ≈ 60–110 MB otherwise (docs/benchmarks.md).
    """
    if torch.device(device).type != "cpu":
        return 1
    if requested:
        return requested
    return min(torch.get_num_threads(), MAX_AUTO_WORKERS)


@torch.no_grad()
def search(model: Seq2Seq, sources: Sequence[Sequence[int]], batch_size: int,
           max_output_length: int, max_output_ratio: float, device: torch.device | str = "cpu",
           beam_size: int = 1, alpha: float = 0.0, n_best: int = 1,
           keep_attention: bool = False, workers: int = 1) -> list[list[Hypothesis]]:
    """n-best hypotheses for each id sequence (greedy when ``beam_size`` is 1 and one is
    asked for), returned in input order. Beam search decodes batches of ``batch_size``
    sentences of similar length; greedy search streams the sentences, longest first, through
    :func:`greedy_stream` with up to ``batch_size`` of them at once.

    ``workers`` > 1 (CPU only; 0 = :func:`decoding_workers`' choice): that many batches (or
    greedy streams, the sentences dealt out in turn) are decoded at once, each in its own
    thread with its share of torch's threads. One thread per batch beats two threads per
    product, and one batch's element-wise work and Python bookkeeping overlap the other's
    products (on 2 cores greedy 1.17–1.28×, beam 5 ≈ 1.2×; docs/benchmarks.md). The
    hypotheses are the same; scores agree to float rounding.
    """
    was_training = model.training
    model.eval()
    greedy = beam_size == 1 and n_best == 1
    workers = decoding_workers(workers, device)
    if greedy:  # one stream of sentences per worker, longest first, dealt out in turn
        longest_first = sorted(range(len(sources)), key=lambda i: len(sources[i]), reverse=True)
        units = [longest_first[w::workers] for w in range(workers)]
    else:  # batches, longest first: the last to start are the quickest
        units = sentence_batches([len(s) for s in sources], batch_size)[::-1]
    units = [unit for unit in units if unit]

    def decode(indices: list[int]) -> list[list[Hypothesis]]:
        if greedy:
            return [[h] for h in greedy_stream(model, [sources[i] for i in indices], batch_size,
                                               max_output_length, max_output_ratio, device,
                                               alpha, keep_attention)]
        batch = collate([sources[i] for i in indices], None, indices).to(device)
        limits = max_output_lengths(batch.src_lengths, max_output_length, max_output_ratio)
        return beam_search(model, batch.src, batch.src_lengths, limits, beam_size, alpha,
                           n_best, keep_attention)

    try:
        if min(workers, len(units)) > 1:
            results = _in_threads(decode, units, min(workers, len(units)))
        else:
            results = [decode(indices) for indices in units]
    finally:
        model.train(was_training)
    outputs: list[list[Hypothesis]] = [[] for _ in sources]
    for indices, unit_results in zip(units, results):
        for index, hyps in zip(indices, unit_results):
            outputs[index] = hyps
    return outputs


def _in_threads(work: Callable[[list[int]], T], batches: list[list[int]],
                workers: int) -> list[T]:
    """``work`` over ``batches`` in ``workers`` threads, each taking the next batch when it is
    free and running torch ops on its share of the threads; results in ``batches`` order."""
    threads = torch.get_num_threads()
    try:
        with ThreadPoolExecutor(workers, initializer=torch.set_num_threads,
                                initargs=(max(1, threads // workers),)) as pool:
            return list(pool.map(work, batches))
    finally:
        # set_num_threads in a worker also changes the count threads started later inherit
        torch.set_num_threads(threads)


def translate_ids(model: Seq2Seq, sources: Sequence[Sequence[int]], batch_size: int,
                  max_output_length: int, max_output_ratio: float,
                  device: torch.device | str = "cpu", beam_size: int = 1,
                  alpha: float = 0.0, workers: int = 1) -> list[list[int]]:
    """The best output ids for each source, in input order (``workers``: see :func:`search`)."""
    results = search(model, sources, batch_size, max_output_length, max_output_ratio, device,
                     beam_size, alpha, workers=workers)
    return [hyps[0].tokens for hyps in results]


def perplexity(nll_sum: float, tokens: int) -> float:
    return math.exp(min(nll_sum / max(tokens, 1), 100.0))
