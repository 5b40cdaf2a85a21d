"""Decoding many sentences: batches or greedy streams, several at once in worker threads."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Sequence, TypeVar

import torch

from s2s.data.batching import collate, sentence_batches
from s2s.search.beam import beam_search
from s2s.search.common import Hypothesis, SearchModel, max_output_lengths
from s2s.search.greedy import greedy_stream

T = TypeVar("T")

MAX_AUTO_WORKERS = 4  # a cap, not a measurement: the threads share the GIL


def decoding_workers(requested: int, device: torch.device | str) -> int:
    """How many batches (beam search) or streams of sentences (greedy search) :func:`search`
    decodes at once: ``requested``, or for 0 ("auto") one per torch thread on the CPU (at most
    :data:`MAX_AUTO_WORKERS`); always 1 on a GPU.

    Workers beat one batch on all threads, and cost little memory in a process whose malloc
    keeps one arena (the CPU backend's decoding settings; docs/performance.md).
    """
    if torch.device(device).type != "cpu":
        return 1
    if requested:
        return requested
    return min(torch.get_num_threads(), MAX_AUTO_WORKERS)


@torch.no_grad()
def search(model: SearchModel, sources: Sequence[Sequence[int]], batch_size: int,
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
    products (docs/performance.md). The hypotheses are the same; scores agree to float
    rounding.
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


def translate_ids(model: SearchModel, sources: Sequence[Sequence[int]], batch_size: int,
                  max_output_length: int, max_output_ratio: float,
                  device: torch.device | str = "cpu", beam_size: int = 1,
                  alpha: float = 0.0, workers: int = 1) -> list[list[int]]:
    """The best output ids for each source, in input order (``workers``: see :func:`search`)."""
    results = search(model, sources, batch_size, max_output_length, max_output_ratio, device,
                     beam_size, alpha, workers=workers)
    return [hyps[0].tokens for hyps in results]


