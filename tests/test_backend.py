"""The CPU backend computes what the plain model computes: losses, gradients and translations,
for every attention type, with and without input feeding; a subclass with a changed score is
never sent down a path written for its parent; the switch picks the backend."""

from __future__ import annotations

import pytest
import torch

from s2s.backend import PlainBackend, select_backend
from s2s.cpu import CpuBackend
from s2s.cpu.decoding import AdditiveDecodingAttention, CpuDecoding
from s2s.cpu.folding import FoldedMemory
from s2s.errors import ConfigError
from s2s.model.attention import ADDITIVE, ATTENTIONS, WEIGHTED_VALUES, BahdanauAttention, register
from s2s.model.decoder import step_by_step
from s2s.model.encoder import run_packed
from s2s.model.seq2seq import cross_entropy
from s2s.search.runner import search
from tests.conftest import (ATTENTION_NAMES, assert_finite_differences, plain_and_prepared,
                            random_batch, tiny_model)


def test_the_bahdanau_recurrence_drops_out_as_the_plain_decoder_does(monkeypatch):
    """With dropout on, the fused recurrence gets the context's keep-masks, one per step and
    sentence (scaled 1 / (1 − p) or 0; none in eval mode), and the embeddings are dropped once
    — the plain decoder's dropout, in one sampler call (the masks' effect on the recurrence is
    tested in test_cpu_backend.py)."""
    import s2s.cpu.bahdanau as bahdanau

    seen = []
    real = bahdanau.attentive_lstm
    monkeypatch.setattr(bahdanau, "attentive_lstm",
                        lambda *args, **kw: seen.append(args[-1]) or real(*args, **kw))
    model = tiny_model("bahdanau", backend="cpu", dropout=0.4)
    calls = []
    model.decoder.dropout.register_forward_hook(lambda *_: calls.append(1))
    batch = random_batch(seed=8)
    model.train()(batch)
    masks = seen[-1]
    steps, context = batch.tgt_in.size(1), model.decoder.attention.context_size
    assert masks.shape == (steps, batch.size, context) and len(calls) == 1
    values = torch.unique(masks).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.6)
    assert 0.5 < float((masks > 0).float().mean()) < 0.7
    model.eval()(batch)
    assert seen[-1] is None


def _loss_and_gradients(model, batch, **options):
    model.zero_grad()
    out = model(batch, **options)
    out.loss.backward()
    return out, {name: p.grad.clone() for name, p in model.named_parameters()}


def assert_same_training(plain, fast, batch, **options):
    """Equal loss, nll, correct count and gradient of every parameter."""
    (plain_out, plain_grads), (fast_out, fast_grads) = (
        _loss_and_gradients(model, batch, **options) for model in (plain, fast))
    torch.testing.assert_close(fast_out.loss, plain_out.loss)
    torch.testing.assert_close(fast_out.nll, plain_out.nll)
    assert int(fast_out.correct) == int(plain_out.correct) and fast_out.tokens == plain_out.tokens
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fast_grads[name], grad, msg=name)


def twins(name: str, **options):
    """The same tiny model twice: plain, and with the CPU backend's training seams."""
    return tiny_model(name, **options), tiny_model(name, backend="cpu", **options)


@pytest.mark.parametrize("num_layers", [1, 2])
@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_training_on_the_cpu_backend_equals_the_plain_model(name, input_feeding, num_layers):
    """In training mode (the fused encoder with its training flag, the Bahdanau recurrence by
    hand, the fused loss with label smoothing; dropout 0 so both see the same inputs) and in
    eval mode (validation's loss)."""
    plain, fast = twins(name, input_feeding=input_feeding, num_layers=num_layers)
    assert fast.encoder.run_lstm is not run_packed and fast.output_loss is not cross_entropy
    assert fast.decoder.run_steps is not step_by_step
    batch = random_batch(seed=4)
    for training in (True, False):
        plain.train(training)
        fast.train(training)
        assert_same_training(plain, fast, batch, label_smoothing=0.1)


def test_scheduled_sampling_on_the_cpu_backend_equals_the_plain_model():
    """The CPU backend leaves scheduled sampling to step_by_step: only its encoder and loss
    differ here, and the coin flips stay the plain model's."""
    plain, fast = twins("bahdanau")
    batch = random_batch(seed=5)
    outputs = []
    for model in (plain, fast):
        torch.manual_seed(3)  # the same coin flips for gold or predicted tokens
        outputs.append(_loss_and_gradients(model.train(), batch, teacher_forcing_ratio=0.5))
    torch.testing.assert_close(outputs[1][0].loss, outputs[0][0].loss)
    for name, grad in outputs[0][1].items():
        torch.testing.assert_close(outputs[1][1][name], grad, msg=name)


SOURCES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [4, 19, 4], [7, 7, 7, 9],
           [18], [6, 12, 15, 9, 4, 11]]


@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("name", ATTENTION_NAMES)
@pytest.mark.parametrize("beam_size", [1, 3])
def test_search_on_the_cpu_backend_finds_the_plain_model_s_hypotheses(name, input_feeding,
                                                                       beam_size):
    """Greedy (streamed) and beam search, with the attention weights, and the training model
    with its seams (what validation decodes with) too."""
    plain, prepared = plain_and_prepared(name, seed=9, input_feeding=input_feeding)
    trained_seams = tiny_model(name, seed=9, backend="cpu", input_feeding=input_feeding)
    found = [search(model, SOURCES, batch_size=3, max_output_length=8, max_output_ratio=2.0,
                    beam_size=beam_size, n_best=min(beam_size, 2), keep_attention=True)
             for model in (plain, prepared, trained_seams)]
    for other in found[1:]:
        for plain_hyps, hyps in zip(found[0], other):
            assert [h.tokens for h in hyps] == [h.tokens for h in plain_hyps]
            assert [h.score for h in hyps] == pytest.approx([h.score for h in plain_hyps],
                                                            abs=1e-5)
            for hyp, plain_hyp in zip(hyps, plain_hyps):
                torch.testing.assert_close(hyp.attention, plain_hyp.attention,
                                           rtol=1e-5, atol=1e-5)


# ------------------------------------------- a new attention type: one class, one registry line
class SharpenedBahdanau(BahdanauAttention):
    """Bahdanau with its energies multiplied by 4 (a softmax temperature of 1/4): a changed
    score that the CPU backend's Bahdanau paths, written for the parent's, know nothing of."""

    def score(self, query, keys):
        return 4.0 * super().score(query, keys)


@pytest.fixture
def sharpened_bahdanau():
    register("sharpened_bahdanau")(SharpenedBahdanau)
    yield "sharpened_bahdanau"
    del ATTENTIONS["sharpened_bahdanau"]


def test_a_subclass_declares_no_speedup_of_its_parent(sharpened_bahdanau):
    assert BahdanauAttention.declares(ADDITIVE) and BahdanauAttention.declares(WEIGHTED_VALUES)
    assert not SharpenedBahdanau.declares(ADDITIVE)
    assert not SharpenedBahdanau.declares(WEIGHTED_VALUES)


def test_a_subclass_with_a_changed_score_trains_through_the_plain_path(sharpened_bahdanau):
    """On the CPU backend its loss and gradients are the plain model's, and its first step's
    attention weights are its parent's (same parameters, same s(0)) sharpened: softmax of
    4 × the parent's energies, i.e. of 4 log α. The changed score is what ran."""
    plain, fast = twins(sharpened_bahdanau)
    batch = random_batch(seed=6)
    assert_same_training(plain, fast, batch)
    parent = tiny_model("bahdanau", backend="cpu")
    parent.load_state_dict(fast.state_dict())
    weights = []
    for model in (fast, parent):
        memory, state = model.encode(batch.src, batch.src_lengths)
        weights.append(model.decoder(batch.tgt_in, state, memory)[1])
    first, parents_first = weights[0][:, 0], weights[1][:, 0]                 # [B, S]
    real = batch.src != 0
    expected = torch.softmax((4 * parents_first.log()).masked_fill(~real, -torch.inf), -1)
    torch.testing.assert_close(first, expected)
    assert not torch.allclose(first, parents_first, atol=1e-3)


def test_a_subclass_with_a_changed_score_has_the_right_gradients(sharpened_bahdanau):
    """Central differences of the CPU backend's loss in float64, at every parameter."""
    model = tiny_model(sharpened_bahdanau, backend="cpu").double().train()
    assert_finite_differences(model, random_batch(seed=7), seed=1)


def test_a_subclass_with_a_changed_score_decodes_through_the_plain_path(sharpened_bahdanau):
    plain, prepared = plain_and_prepared(sharpened_bahdanau, seed=9)
    assert type(prepared.model.decoder.attention) is SharpenedBahdanau and prepared.folding is None
    with torch.no_grad():
        memory, _ = prepared.encode(torch.tensor([[5, 6, 3]]), torch.tensor([3]), 4)
    assert not isinstance(memory, FoldedMemory)
    found = [search(model, SOURCES, batch_size=3, max_output_length=8, max_output_ratio=2.0,
                    beam_size=3) for model in (plain, prepared)]
    assert [[h.tokens for h in hyps] for hyps in found[0]] == \
        [[h.tokens for h in hyps] for hyps in found[1]]


# ------------------------------------------------------------------------------ the switch
def test_auto_is_the_cpu_backend_on_the_cpu_and_plain_elsewhere():
    assert isinstance(select_backend("auto", "cpu"), CpuBackend)
    assert isinstance(select_backend("plain", "cpu"), PlainBackend)
    assert isinstance(select_backend("auto", torch.device("cuda")), PlainBackend)
    with pytest.raises(ConfigError, match="unknown backend 'fast'"):
        select_backend("fast", "cpu")


def test_the_plain_backend_changes_nothing():
    model = tiny_model("bahdanau")
    before = {name: type(module) for name, module in model.named_modules()}
    backend = PlainBackend()
    assert backend.prepare_training(model) is model and backend.prepare_decoding(model) is model
    assert {name: type(module) for name, module in model.named_modules()} == before
    assert model.encoder.run_lstm is run_packed and model.output_loss is cross_entropy
    with pytest.raises(ConfigError, match="int8 decoding is part of the CPU backend"):
        backend.quantize_int8(model)


def test_preparing_for_decoding_keeps_what_search_needs():
    prepared = CpuBackend().prepare_decoding(tiny_model("bahdanau").train())
    assert isinstance(prepared, CpuDecoding) and prepared.special is prepared.model.special
    assert isinstance(prepared.model.decoder.attention, AdditiveDecodingAttention)
    assert prepared.eval() is prepared and not prepared.training
    assert not any(module.training for module in prepared.model.modules())
