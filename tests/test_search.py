"""Greedy and beam search: agreement, optimality on a tiny model, batching, scores."""

from __future__ import annotations

import itertools
import threading

import pytest
import torch

from s2s.data.batching import collate
from s2s.search.beam import _top_extensions_plain, beam_search, top_extensions
from s2s.search.common import length_penalty, max_output_lengths
from s2s.search.greedy import greedy_search, greedy_stream
from s2s.search.runner import search
from s2s.data.tokenizer import SPECIAL
from tests.conftest import ATTENTION_NAMES, tiny_model

SOURCES = [[5, 6, 7, 8], [9, 4], [10, 11, 12, 13, 14, 15], [4], [7, 7, 9]]


def encode(sources):
    batch = collate(sources, None, list(range(len(sources))))
    return batch.src, batch.src_lengths


@torch.no_grad()
def sequence_log_prob(model, source, tokens, with_eos):
    """Σ log p(y_t | y_<t, x) by stepping through ``tokens`` (+ EOS)."""
    src, lengths = encode([source])
    memory, state = model.encode(src, lengths)
    prev, total = torch.tensor([SPECIAL.bos]), 0.0
    for token in tokens + ([SPECIAL.eos] if with_eos else []):
        log_probs, state, _ = model.step(prev, state, memory)
        total += float(log_probs[0, token])
        prev = torch.tensor([token])
    return total


@pytest.mark.parametrize("name", ATTENTION_NAMES)
@pytest.mark.parametrize("input_feeding", [False, True])
def test_beam_of_one_is_greedy(name, input_feeding):
    model = tiny_model(name, input_feeding=input_feeding, seed=3).eval()
    src, lengths = encode(SOURCES)
    limits = torch.tensor([6, 3, 9, 2, 5])
    greedy = greedy_search(model, src, lengths, limits)
    beam = beam_search(model, src, lengths, limits, beam_size=1)
    assert [h.tokens for h in greedy] == [hyps[0].tokens for hyps in beam]
    for g, hyps in zip(greedy, beam):
        assert g.log_prob == pytest.approx(hyps[0].log_prob, abs=1e-5)


@pytest.mark.parametrize("name", ["general", "bahdanau"])
@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_large_beam_finds_the_exhaustive_optimum(name, alpha):
    vocab, limit = 7, 3
    model = tiny_model(name, vocab=vocab, seed=5).eval()
    allowed = [SPECIAL.unk] + list(range(SPECIAL.eos + 1, vocab))
    source = [4, 5, 6]
    candidates = []
    for n in range(limit + 1):
        for body in itertools.product(allowed, repeat=n):
            with_eos = n < limit  # at the limit a hypothesis ends without EOS
            log_prob = sequence_log_prob(model, source, list(body), with_eos)
            length = n + (1 if with_eos else 0)
            candidates.append((log_prob / length_penalty(length, alpha), list(body)))
    best_score, best_tokens = max(candidates, key=lambda c: c[0])
    src, lengths = encode([source])
    hyps = beam_search(model, src, lengths, torch.tensor([limit]), beam_size=len(candidates),
                       alpha=alpha, n_best=3)
    assert hyps[0][0].tokens == best_tokens
    assert hyps[0][0].score == pytest.approx(best_score, abs=1e-4)
    assert [h.score for h in hyps[0]] == sorted((h.score for h in hyps[0]), reverse=True)


@pytest.mark.parametrize("name", ["general", "bahdanau", "multihead"])
def test_batched_results_equal_one_at_a_time(name):
    model = tiny_model(name, seed=7).eval()
    together = search(model, SOURCES, batch_size=8, max_output_length=10, max_output_ratio=2.0,
                      beam_size=4, n_best=2)
    for source, hyps in zip(SOURCES, together):
        alone = search(model, [source], batch_size=1, max_output_length=10,
                       max_output_ratio=2.0, beam_size=4, n_best=2)[0]
        assert [h.tokens for h in hyps] == [h.tokens for h in alone]
        for a, b in zip(hyps, alone):
            assert a.score == pytest.approx(b.score, abs=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.6])
def test_scores_are_summed_log_probs_with_the_documented_penalty(alpha):
    model = tiny_model("bahdanau", seed=11).eval()
    src, lengths = encode(SOURCES)
    results = beam_search(model, src, lengths, torch.full((len(SOURCES),), 6), beam_size=3,
                          alpha=alpha, n_best=3)
    for source, hyps in zip(SOURCES, results):
        assert 1 <= len(hyps) <= 3
        for hyp in hyps:
            with_eos = len(hyp.tokens) < 6
            expected = sequence_log_prob(model, source, hyp.tokens, with_eos)
            assert hyp.log_prob == pytest.approx(expected, abs=1e-4)
            length = len(hyp.tokens) + (1 if with_eos else 0)
            assert hyp.score == pytest.approx(expected / length_penalty(length, alpha), abs=1e-4)


def test_outputs_respect_the_length_limit_and_never_contain_specials():
    model = tiny_model("general", seed=2).eval()
    src, lengths = encode(SOURCES)
    limits = torch.tensor([1, 2, 3, 4, 5])
    for hyps, limit in zip(beam_search(model, src, lengths, limits, beam_size=4, n_best=4),
                           limits.tolist()):
        for hyp in hyps:
            assert len(hyp.tokens) <= limit
            assert not {SPECIAL.pad, SPECIAL.bos, SPECIAL.eos} & set(hyp.tokens)


def test_attention_is_kept_for_plotting():
    model = tiny_model("general", seed=2).eval()
    src, lengths = encode(SOURCES[:2])
    assert int(lengths[0]) != int(lengths[1])
    for index, hyps in enumerate(beam_search(model, src, lengths, torch.tensor([5, 5]),
                                             beam_size=2, keep_attention=True)):
        hyp = hyps[0]
        assert hyp.attention.shape[1] == int(lengths[index])  # its own source, with EOS
        assert hyp.attention.shape[0] in (len(hyp.tokens), len(hyp.tokens) + 1)
        torch.testing.assert_close(hyp.attention.sum(-1), torch.ones(hyp.attention.shape[0]))


class _CountingModel:
    """Wraps a model and counts decoder steps (batch rows summed over steps)."""

    def __init__(self, model):
        self.model, self.rows = model, 0
        self.special = model.special

    def encode(self, *args, **options):
        return self.model.encode(*args, **options)

    def step(self, prev, state, memory, rows_per_sentence=1):
        self.rows += prev.numel()
        return self.model.step(prev, state, memory, rows_per_sentence)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("n_best", [1, 3])
def test_stopping_when_unbeatable_changes_no_result(monkeypatch, alpha, n_best):
    import s2s.search.beam as search_module
    model = tiny_model("bahdanau", seed=5).eval()
    with torch.no_grad():
        model.decoder.output.weight *= 4.0  # peaked distributions ...
        model.decoder.output.bias[SPECIAL.eos] += 0.5  # ... that finish early and late
    src, lengths = encode(SOURCES)
    limits = torch.full((len(SOURCES),), 6)
    pruned = _CountingModel(model)
    fast = beam_search(pruned, src, lengths, limits, 6, alpha, n_best)
    monkeypatch.setattr(search_module, "_best_reachable",
                        lambda scores, *_: torch.full_like(scores, float("inf")))
    exhaustive = _CountingModel(model)
    slow = beam_search(exhaustive, src, lengths, limits, 6, alpha, n_best)
    for field in ("tokens", "score"):
        assert [[getattr(h, field) for h in hyps] for hyps in fast] == \
            [[getattr(h, field) for h in hyps] for hyps in slow]
    assert all(len(hyps) == n_best for hyps in fast)
    assert pruned.rows <= exhaustive.rows
    if alpha == 0.0 or n_best == 1:  # here the bound is tight enough to stop some early
        assert pruned.rows < exhaustive.rows


MANY_SOURCES = [[4 + (i * 7 + j * 3) % 16 for j in range(1 + i % 9)] for i in range(23)]


@pytest.mark.parametrize("beam_size, n_best", [(1, 1), (3, 2)])
def test_batches_in_worker_threads_give_the_same_hypotheses(beam_size, n_best):
    model = tiny_model("bahdanau", seed=13).eval()
    threads = torch.get_num_threads()
    kwargs = dict(batch_size=4, max_output_length=8, max_output_ratio=2.0, beam_size=beam_size,
                  n_best=n_best, keep_attention=True)
    alone = search(model, MANY_SOURCES, workers=1, **kwargs)
    encode, decoding_threads = model.encode, set()

    def encode_and_note_the_thread(*args, **options):
        decoding_threads.add(threading.get_ident())
        return encode(*args, **options)

    model.encode = encode_and_note_the_thread
    together = search(model, MANY_SOURCES, workers=3, **kwargs)
    assert len(decoding_threads) > 1 and threading.get_ident() not in decoding_threads
    assert torch.get_num_threads() == threads  # the workers' share does not leak out
    for a_hyps, b_hyps in zip(alone, together):
        assert [h.tokens for h in a_hyps] == [h.tokens for h in b_hyps]
        for a, b in zip(a_hyps, b_hyps):
            assert a.score == pytest.approx(b.score, abs=1e-5)
            torch.testing.assert_close(a.attention, b.attention)


def test_a_failing_batch_in_a_worker_fails_the_search_and_restores_the_mode():
    model = tiny_model("general", seed=2).train()
    threads = torch.get_num_threads()
    bad = MANY_SOURCES[:10] + [[999]]  # an id past the vocabulary
    with pytest.raises(IndexError):
        search(model, bad, batch_size=2, max_output_length=5, max_output_ratio=2.0, workers=2)
    assert model.training and torch.get_num_threads() == threads


def test_auto_workers_follow_the_threads_on_the_cpu_only(monkeypatch):
    from s2s.search.runner import MAX_AUTO_WORKERS, decoding_workers

    monkeypatch.setattr(torch, "get_num_threads", lambda: 2)
    assert decoding_workers(0, "cpu") == 2
    assert decoding_workers(3, "cpu") == 3
    monkeypatch.setattr(torch, "get_num_threads", lambda: 64)
    assert decoding_workers(0, "cpu") == MAX_AUTO_WORKERS
    assert decoding_workers(0, "cuda") == decoding_workers(2, "cuda") == 1


@pytest.mark.parametrize("vocab, width", [(1000, 5), (1001, 5), (1001, 1), (37, 5)])
def test_top_extensions_equal_topk_over_all_sums(vocab, width):
    """Blocks of the vocabulary (the last one partial at V = 1001; plain topk at V = 37)."""
    gen = torch.Generator().manual_seed(vocab + width)
    batch, k = 7, 10
    log_probs = torch.log_softmax(torch.randn(batch * width, vocab, generator=gen) * 3, dim=-1)
    log_probs[:, [SPECIAL.pad, SPECIAL.bos]] = float("-inf")
    log_probs[3 * width:4 * width, 40:] = float("-inf")  # a sentence with few finite entries
    beam_scores = -torch.rand(batch, width, generator=gen).cumsum(1) * 5
    sums = (log_probs + beam_scores.view(-1, 1)).view(batch, -1)
    expected_scores, ids = sums.topk(k, dim=-1)
    scores, beams, tokens = top_extensions(log_probs.clone(), beam_scores, k)
    assert torch.equal(scores, expected_scores)
    finite = torch.isfinite(expected_scores)
    assert torch.equal(beams[finite], (ids // vocab)[finite])
    assert torch.equal(tokens[finite], (ids % vocab)[finite])
    assert torch.equal(scores[finite], log_probs[beams + torch.arange(batch)[:, None] * width,
                                                 tokens][finite] + beam_scores.gather(1, beams)[finite])


@pytest.mark.parametrize("n_best", [1, 2])
def test_beam_search_by_vocabulary_blocks_equals_plain_topk(monkeypatch, n_best):
    import s2s.search.beam as search_module
    model = tiny_model("bahdanau", seed=17).eval()
    src, lengths = encode(MANY_SOURCES)
    limits = torch.full((len(MANY_SOURCES),), 8)
    monkeypatch.setattr(search_module, "EXTENSION_BLOCK", 2)  # 10 blocks of the 20 tokens
    calls = []
    blocked = search_module.top_extensions
    monkeypatch.setattr(search_module, "top_extensions",
                        lambda *args: calls.append(1) or blocked(*args))
    monkeypatch.setattr(search_module, "_top_extensions_plain",
                        lambda *args: calls.append(0) or _top_extensions_plain(*args))
    by_blocks = beam_search(model, src, lengths, limits, 3, 0.0, n_best)
    assert 1 in calls and calls.count(0) < calls.count(1)  # blocks after the first step
    monkeypatch.setattr(search_module, "top_extensions", _top_extensions_plain)
    plain = beam_search(model, src, lengths, limits, 3, 0.0, n_best)
    for field in ("tokens", "score"):
        assert [[getattr(h, field) for h in hyps] for hyps in by_blocks] == \
            [[getattr(h, field) for h in hyps] for hyps in plain]


class _RowCounter(_CountingModel):
    """Also records how many sentences each encode call admits and the widest step."""

    def __init__(self, model):
        super().__init__(model)
        self.encoded, self.widest = [], 0

    def encode(self, src, *args, **options):
        self.encoded.append(src.size(0))
        return super().encode(src, *args, **options)

    def step(self, prev, state, memory, rows_per_sentence=1):
        self.widest = max(self.widest, prev.numel())
        return super().step(prev, state, memory, rows_per_sentence)


@pytest.mark.parametrize("name", ATTENTION_NAMES)
@pytest.mark.parametrize("input_feeding", [False, True])
def test_streaming_sentences_through_the_batch_finds_the_batch_hypotheses(name, input_feeding):
    model = tiny_model(name, input_feeding=input_feeding, seed=7).eval()
    sources = sorted(MANY_SOURCES, key=len, reverse=True)
    counter = _RowCounter(model)
    streamed = greedy_stream(counter, sources, batch_size=4, max_output_length=8,
                             max_output_ratio=2.0, device="cpu", keep_attention=True)
    assert min(counter.encoded[1:]) < 4 and counter.widest <= 4  # sentences joined mid-way
    for index, (source, hyp) in enumerate(zip(sources, streamed)):
        src, lengths = encode([source])
        limit = max_output_lengths(lengths, 8, 2.0)
        alone = greedy_search(model, src, lengths, limit, keep_attention=True)[0]
        assert hyp.tokens == alone.tokens, index
        assert hyp.score == pytest.approx(alone.score, abs=1e-5)
        torch.testing.assert_close(hyp.attention, alone.attention)  # [steps, own source]
        assert hyp.attention.shape[1] == len(source) + 1  # with EOS


@pytest.mark.parametrize("name", ["bahdanau", "multihead"])  # [B, S, A] and [B, heads, S, d]
def test_a_joined_memory_masks_its_padding_and_narrows_back(name):
    model = tiny_model(name, seed=1).eval()
    long_src, long_lengths = encode([[5, 6, 7, 8, 9]])
    short_src, short_lengths = encode([[5, 6]])
    with torch.no_grad():
        long_memory, _ = model.encode(long_src, long_lengths)
        short_memory, _ = model.encode(short_src, short_lengths)
    joined = long_memory.join(short_memory)  # sources of 6 and 3 with EOS
    assert joined.keys.shape[-2] == joined.values.shape[-2] == 6
    assert joined.mask.tolist() == [[True] * 6, [True] * 3 + [False] * 3]
    assert not joined.keys[1, ..., 3:, :].any() and not joined.values[1, ..., 3:, :].any()
    narrowed = joined.select(torch.tensor([1]), source_length=3)
    for got, want in zip(narrowed, short_memory):
        torch.testing.assert_close(got, want)


# ------------------------------------------- independent references: hand-computed numbers
def test_the_gnmt_length_penalty_by_hand():
    # ((5 + |y|) / 6) ** alpha, computed by hand
    assert length_penalty(1, 1.0) == pytest.approx(1.0)
    assert length_penalty(7, 1.0) == pytest.approx(2.0)
    assert length_penalty(7, 0.5) == pytest.approx(2.0 ** 0.5)
    assert length_penalty(13, 0.6) == pytest.approx(3.0 ** 0.6)
    assert length_penalty(25, 2.0) == pytest.approx(25.0)
    assert length_penalty(4, 0.0) == 1.0


A, B_ = 4, 5  # the two word ids of the hand-worked example (after pad, unk, bos, eos)


class MarkovModel:
    """A 'model' whose next-token probabilities depend only on the previous token."""

    special = SPECIAL
    training = False
    PROBS = {SPECIAL.bos: {SPECIAL.eos: 0.1, A: 0.5, B_: 0.4},
             A: {SPECIAL.eos: 0.2, A: 0.3, B_: 0.5},
             B_: {SPECIAL.eos: 0.7, A: 0.2, B_: 0.1}}

    class Rows:
        def select(self, rows):
            return self

    def encode(self, src, src_lengths, rows_per_sentence=1):
        return self.Rows(), self.Rows()

    def step(self, prev, state, memory, rows_per_sentence=1):
        log_probs = torch.full((prev.numel(), 6), float("-inf"))
        for row, token in enumerate(prev.tolist()):
            for nxt, p in self.PROBS[token].items():
                log_probs[row, nxt] = torch.log(torch.tensor(p))
        return log_probs, state, torch.zeros(prev.numel(), 1)

    def eval(self):
        return self

    def train(self, mode=True):
        return self


@pytest.mark.parametrize("alpha, n_best, expected", [
    # step 1 keeps a (.5) and b (.4); step 2 ranks b·EOS .28, a·b .25, a·a .15, a·EOS .10:
    # b·EOS is in the top 2, so [b] finishes with .28; step 3 (the limit) ranks a·b·EOS
    # .175 first: [a, b] finishes with .175, and the sentence has its 2 hypotheses
    (0.0, 2, [([B_], 0.28, 2), ([A, B_], 0.175, 3)]),
    # with alpha 1 the scores are log p / ((5 + |y|) / 6): [b] -1.0911, [a, b] -1.3072
    (1.0, 2, [([B_], 0.28, 2), ([A, B_], 0.175, 3)]),
    (0.0, 1, [([B_], 0.28, 2)]),
])
def test_a_beam_search_worked_by_hand(alpha, n_best, expected):
    src = torch.tensor([[7, SPECIAL.eos]])
    [hyps] = beam_search(MarkovModel(), src, torch.tensor([2]), torch.tensor([3]), beam_size=2,
                         alpha=alpha, n_best=n_best)
    assert [h.tokens for h in hyps] == [tokens for tokens, _, _ in expected]
    for hyp, (_, probability, length) in zip(hyps, expected):
        log_prob = torch.log(torch.tensor(probability, dtype=torch.float64)).item()
        assert hyp.log_prob == pytest.approx(log_prob, abs=1e-5)
        assert hyp.score == pytest.approx(log_prob / ((5 + length) / 6) ** alpha, abs=1e-5)
    if alpha == 1.0:
        assert [round(h.score, 4) for h in hyps] == [-1.0911, -1.3072]
