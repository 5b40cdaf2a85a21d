"""The CPU backend's building blocks agree with the plain torch operations they replace.
(tests/test_backend.py holds whole models on the two backends to each other.)"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from s2s.cpu import CpuBackend
from s2s.cpu.bahdanau import attentive_lstm
from s2s.cpu.decoding import AdditiveDecodingAttention
from s2s.cpu.dropout import FastDropout, step_masks
from s2s.cpu.folding import FoldedMemory
from s2s.cpu.int8 import quantize_int8
from s2s.cpu.lstm import (Segment, encoder_path, fused_rnn_available, length_segments,
                          packed_layout, run_encoder_lstm, step_product)
from s2s.cpu.prepack import PrepackedLinear, PrepackedLSTM
from s2s.cpu.products import onednn_available
from s2s.model.attention import build_attention
from s2s.model.decoder import Memory
from s2s.model.encoder import Encoder, run_packed
from s2s.search.runner import search
from tests.conftest import plain_and_prepared

needs_prepack = pytest.mark.skipif(not onednn_available(), reason="torch build lacks oneDNN")


# ------------------------------------------------------------------------------- dropout
def test_dropout_keeps_with_probability_1_minus_p_and_rescales():
    torch.manual_seed(0)
    drop = FastDropout(0.3).train()
    x = torch.ones(400, 500)
    y = drop(x)
    values = torch.unique(y).tolist()
    assert len(values) == 2 and values[0] == 0.0 and values[1] == pytest.approx(1 / 0.7)
    assert float((y > 0).float().mean()) == pytest.approx(0.7, abs=0.005)
    assert float(y.mean()) == pytest.approx(1.0, abs=0.01)


def test_dropout_gradient_is_the_mask():
    torch.manual_seed(1)
    drop = FastDropout(0.5).train()
    x = torch.randn(64, 32, requires_grad=True)
    y = drop(x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.where(y != 0, 2.0, 0.0))


def test_dropout_is_identity_in_eval_and_at_p0_and_masks_are_none():
    x = torch.randn(8, 4)
    assert torch.equal(FastDropout(0.4).eval()(x), x)
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert step_masks(nn.Dropout(0.4).eval(), (3, 8, 4), x) is None
    assert step_masks(nn.Dropout(0.0).train(), (3, 8, 4), x) is None
    masks = step_masks(nn.Dropout(0.4).train(), (3, 8, 4), x)
    assert masks.shape == (3, 8, 4)
    assert all(v == 0.0 or v == pytest.approx(1 / 0.6) for v in torch.unique(masks).tolist())


# ----------------------------------------------------------------------- step products
def test_step_product_is_x_times_w_transposed():
    x, w = torch.randn(7, 12), torch.randn(5, 12)
    torch.testing.assert_close(step_product(x, w), x @ w.t())


def _attentive_lstm_reference(known_gates, hidden, cell, keys, values, query_weight,
                              energy_weight, recurrent_weight, mask, context_masks):
    """The recurrence of s2s.cpu.bahdanau's docstring in plain torch operations (autograd)."""
    contexts, states, weights = [], [], []
    for t in range(known_gates.size(1)):
        energies = torch.tanh(keys + (hidden @ query_weight.t()).unsqueeze(1)) @ energy_weight
        alpha = torch.softmax(energies.masked_fill(~mask, float("-inf")), dim=-1)
        context = (alpha.unsqueeze(-1) * values).sum(1)
        dropped = context if context_masks is None else context * context_masks[t]
        gates = known_gates[:, t] + torch.cat([dropped, hidden], dim=1) @ recurrent_weight.t()
        in_gate, forget, candidate, out_gate = gates.chunk(4, dim=1)
        cell = torch.sigmoid(forget) * cell + torch.sigmoid(in_gate) * torch.tanh(candidate)
        hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
        contexts.append(context)
        states.append(hidden)
        weights.append(alpha)
    return torch.stack(contexts, 1), torch.stack(states, 1), torch.stack(weights, 1)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("batch,dropout", [(3, True), (9, False)])
def test_attentive_lstm_equals_autograd_through_plain_ops(dtype, batch, dropout):
    """The fused Bahdanau recurrence's outputs and hand-written backward (every input's
    gradient) against autograd on the plain equations, with source padding (one sentence of
    a single token), dropout masks on the context and batches that are and are not multiples
    of 8 rows."""
    gen = torch.Generator().manual_seed(batch)
    steps, sources, size, attention, context = 5, 6, 4, 7, 5

    def param(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen, dtype=dtype).requires_grad_()

    inputs = {"known_gates": param(batch, steps, 4 * size), "hidden": param(batch, size),
              "cell": param(batch, size), "keys": param(batch, sources, attention),
              "values": param(batch, sources, context), "query_weight": param(attention, size),
              "energy_weight": param(attention),
              "recurrent_weight": param(4 * size, context + size)}
    mask = torch.ones(batch, sources, dtype=torch.bool)
    mask[1, 3:] = False
    mask[-1, 1:] = False
    masks = ((torch.rand(steps, batch, context, generator=gen) > 0.3).to(dtype) / 0.7
             if dropout else None)
    upstream = (torch.randn(batch, steps, context, generator=gen, dtype=dtype),
                torch.randn(batch, steps, size, generator=gen, dtype=dtype))

    def backward(contexts: torch.Tensor, states: torch.Tensor) -> dict[str, torch.Tensor]:
        ((contexts * upstream[0]).sum() + (states * upstream[1]).sum()).backward()
        grads = {name: tensor.grad for name, tensor in inputs.items()}
        for tensor in inputs.values():
            tensor.grad = None
        return grads

    fused = attentive_lstm(mask=mask, context_masks=masks, **inputs)
    fused_grads = backward(fused.contexts, fused.states)
    plain = _attentive_lstm_reference(*inputs.values(), mask, masks)
    plain_grads = backward(*plain[:2])

    tolerance = {} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-5}
    for got, expected in zip(fused, plain):
        torch.testing.assert_close(got, expected, **tolerance)
    assert not fused.weights.requires_grad
    assert torch.all(fused.weights.masked_select(~mask.unsqueeze(1)) == 0)
    for name in inputs:
        torch.testing.assert_close(fused_grads[name], plain_grads[name], msg=name, **tolerance)


def test_bahdanau_decoding_energies_equal_the_plain_ones():
    """Without gradients the CPU backend's Bahdanau attention computes 2·wᵀσ(2z) − Σw; also
    over int8 layers, and with gradients it is the plain module."""
    torch.manual_seed(7)
    attention = build_attention("bahdanau", 6, 10)
    fast = AdditiveDecodingAttention(attention)
    keys, values = attention.precompute(torch.randn(3, 5, 10), torch.randn(3, 5, 10))
    mask = torch.tensor([[True] * 5, [True] * 2 + [False] * 3, [True] + [False] * 4])
    query = torch.randn(3, 2, 6)
    plain = attention(query, keys, values, mask)
    for got, want in zip(fast(query, keys, values, mask), plain):  # gradients on: the module
        assert torch.equal(got, want)
    with torch.no_grad():
        for got, want in zip(fast(query, keys, values, mask), plain):
            torch.testing.assert_close(got, want.detach())
        int8 = AdditiveDecodingAttention(quantize_int8(attention))
        for got, want in zip(int8(query, keys, values, mask), plain):
            torch.testing.assert_close(got, want.detach(), atol=0.05, rtol=0.05)


# ---------------------------------------------------------------------------- prepacking
@needs_prepack
def test_prepacked_linear_equals_linear_and_falls_back_with_gradients():
    torch.manual_seed(4)
    linear = nn.Linear(12, 70).eval()
    packed = PrepackedLinear(linear).eval()
    x = torch.randn(3, 5, 12)
    with torch.no_grad():
        torch.testing.assert_close(packed(x), linear(x))
    x.requires_grad_(True)
    packed(x).sum().backward()  # the gradient path is the wrapped linear's
    assert x.grad is not None and linear.weight.grad is not None


@needs_prepack
@pytest.mark.parametrize("num_layers", [1, 2])
def test_prepacked_lstm_step_equals_lstm(num_layers):
    torch.manual_seed(5)
    lstm = nn.LSTM(9, 16, num_layers=num_layers, batch_first=True).eval()
    packed = PrepackedLSTM(lstm).eval()
    x = torch.randn(4, 1, 9)
    state = (torch.randn(num_layers, 4, 16), torch.randn(num_layers, 4, 16))
    with torch.no_grad():
        out, (hidden, cell) = packed(x, state)
        ref_out, (ref_hidden, ref_cell) = lstm(x, state)
        longer = torch.randn(4, 3, 9)  # more than one step: the wrapped LSTM's answer
        torch.testing.assert_close(packed(longer, state)[0], lstm(longer, state)[0])
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(hidden, ref_hidden)
    torch.testing.assert_close(cell, ref_cell)


SOURCE = torch.tensor([[5, 6, 7, 8, 9, 3], [10, 11, 12, 3, 0, 0], [13, 3, 0, 0, 0, 0]])
LENGTHS = torch.tensor([6, 4, 2])


@needs_prepack
@pytest.mark.parametrize("name", ["bahdanau", "general", "multihead"])
def test_a_prepared_model_steps_like_the_plain_one(name):
    plain, prepared = plain_and_prepared(name)
    decoder = prepared.model.decoder
    assert isinstance(decoder.output, PrepackedLinear) and isinstance(decoder.rnn, PrepackedLSTM)
    assert isinstance(decoder.attention, AdditiveDecodingAttention) == (name == "bahdanau")
    # the swapped-in modules keep the model's mode, so they serve steps called directly
    assert not any(module.training for module in prepared.model.modules())
    prev = torch.tensor([2, 5, 7])
    with torch.no_grad():
        results = []
        for model in (plain, prepared):
            memory, state = model.encode(SOURCE, LENGTHS)
            log_probs, state, alpha = model.step(prev, state, memory)
            log_probs2, _, _ = model.step(log_probs.argmax(-1), state, memory)
            results.append((log_probs, alpha, log_probs2))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


# context 2 × 5 = 10, decoder 16, attentional layer 7: a column boundary mixed up shows
UNEQUAL = {"encoder_size": 5, "attentional_size": 7}
FOLDABLE = [("bahdanau", {}), ("bahdanau", {"input_feeding": True, "num_layers": 2}),
            ("bahdanau", {"input_feeding": True, "num_layers": 2, **UNEQUAL}),
            ("general", {"input_feeding": True, **UNEQUAL}),
            ("bahdanau", {"attentional_activation": "none"}), ("general", {}),
            ("dot", {"input_feeding": True}), ("location", {"num_layers": 2}),
            ("scaled_dot", {"attentional_activation": "none"})]


@needs_prepack
@pytest.mark.parametrize("name,options", FOLDABLE)
def test_beam_steps_over_a_folded_memory_equal_the_plain_steps(name, options):
    """K rows per sentence attending to the context's products folded into the memory give
    the plain model's log-probabilities, attention weights and states, step after step."""
    plain, prepared = plain_and_prepared(name, **options)
    beams = 4
    rows = torch.arange(3).repeat_interleave(beams)
    torch.manual_seed(12)
    prev = torch.randint(3, 20, (3 * beams,))
    with torch.no_grad():
        results = []
        for model in (plain, prepared):
            memory, state = model.encode(SOURCE, LENGTHS, rows_per_sentence=beams)
            assert isinstance(memory, FoldedMemory) == (model is prepared)
            state = state.select(rows)
            log_probs, state, alpha = model.step(prev, state, memory, rows_per_sentence=beams)
            # the second step from other beams' states, over the memory rows search keeps
            reordered, kept = state.select(rows.flip(0)), memory.select(torch.tensor([2, 1, 0]))
            log_probs2, state2, alpha2 = model.step(log_probs.argmax(-1), reordered, kept,
                                                    rows_per_sentence=beams)
            results.append((log_probs, alpha, log_probs2, alpha2, *state2))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@needs_prepack
@pytest.mark.parametrize("name,options", FOLDABLE[:2] + [("general", {"input_feeding": True})])
def test_a_prepared_model_s_beam_search_finds_the_plain_model_s_hypotheses(name, options):
    plain, prepared = plain_and_prepared(name, **options)
    sources = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [4, 19, 4]]
    found = [search(model, sources, batch_size=2, max_output_length=8, max_output_ratio=3.0,
                    beam_size=3, n_best=2) for model in (plain, prepared)]
    for plain_hyps, prepared_hyps in zip(*found):
        assert [h.tokens for h in plain_hyps] == [h.tokens for h in prepared_hyps]
        assert [h.score for h in plain_hyps] == pytest.approx([h.score for h in prepared_hyps],
                                                               abs=1e-5)


@needs_prepack
@pytest.mark.parametrize("beam_size", [1, 3])
def test_two_workers_sharing_a_prepared_model_find_the_plain_model_s_hypotheses(beam_size):
    plain, prepared = plain_and_prepared("bahdanau", input_feeding=True)
    sources = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [4, 19, 4], [7, 7]]
    found = [search(model, sources, batch_size=2, max_output_length=8, max_output_ratio=3.0,
                    beam_size=beam_size, workers=workers)
             for model, workers in ((plain, 1), (prepared, 2))]
    assert [[h.tokens for h in hyps] for hyps in found[0]] == \
        [[h.tokens for h in hyps] for hyps in found[1]]


@needs_prepack
def test_a_prepared_model_steps_through_the_plain_modules_with_gradients():
    """With gradients on (eval mode) or in training mode a prepared model's step is the plain
    one, so the decoder's embedding and LSTM get their gradients."""
    _, prepared = plain_and_prepared("bahdanau")
    decoder = prepared.model.decoder
    for training in (False, True):
        prepared.train(training)
        prepared.model.zero_grad()
        memory, state = prepared.encode(SOURCE[:2], LENGTHS[:2])
        log_probs, _, _ = prepared.step(torch.tensor([4, 17]), state, memory)
        log_probs.sum().backward()
        assert decoder.embedding.weight.grad[[4, 17]].abs().sum() > 0
        assert decoder.rnn.lstm.weight_ih_l0.grad.abs().sum() > 0


@needs_prepack
def test_the_memory_is_folded_for_several_rows_per_sentence_without_gradients_only():
    _, prepared = plain_and_prepared("bahdanau")
    src, lengths = SOURCE[:2], LENGTHS[:2]
    with torch.no_grad():
        assert type(prepared.encode(src, lengths)[0]) is Memory  # greedy: one row each
        assert isinstance(prepared.encode(src, lengths, rows_per_sentence=5)[0], FoldedMemory)
        prepared.train()
        assert type(prepared.encode(src, lengths, rows_per_sentence=5)[0]) is Memory
        prepared.eval()
    assert type(prepared.encode(src, lengths, rows_per_sentence=5)[0]) is Memory  # gradients
    with torch.no_grad():  # a folded memory stepped in training mode is refused, not misused
        folded, state = prepared.encode(src, lengths, rows_per_sentence=5)
        prepared.train()
        with pytest.raises(RuntimeError, match="folded memory is for decoding"):
            prepared.step(torch.tensor([5, 6]), state, folded)
        prepared.eval()
        prepared.model.double()  # not fp32: the plain memory
        assert type(prepared.encode(src, lengths, rows_per_sentence=5)[0]) is Memory
    # multi-head: each head weighs the values differently, so nothing can be folded
    _, multihead = plain_and_prepared("multihead")
    assert multihead.folding is None
    with torch.no_grad():
        assert type(multihead.encode(src, lengths, rows_per_sentence=5)[0]) is Memory


# ------------------------------------------------------------- the encoder's LSTM by hand
def test_packed_layout_orders_steps_longest_first():
    layout = packed_layout(torch.tensor([2, 3, 1, 3]), 4, torch.device("cpu"))
    assert layout.batch_sizes == [4, 3, 2] and layout.offsets == [0, 4, 7]
    # step 0: sentences 1, 3 (length 3, batch order), 0, 2; step 1: 1, 3, 0; step 2: 1, 3
    sentences = [1, 3, 0, 2, 1, 3, 0, 1, 3]
    steps = [0, 0, 0, 0, 1, 1, 1, 2, 2]
    assert layout.forward_index.tolist() == [b * 4 + t for b, t in zip(sentences, steps)]
    lengths = [2, 3, 1, 3]
    assert layout.reverse_index.tolist() == [b * 4 + lengths[b] - 1 - t
                                             for b, t in zip(sentences, steps)]
    assert layout.final_rows.tolist() == [6, 7, 3, 8]
    assert layout.previous_rows.tolist() == [0, 1, 2, 4, 5]


def _encoders(num_layers: int, bidirectional: bool, dropout: float = 0.0) -> tuple:
    """One encoder twice (same parameters): plain, and with the CPU backend's LSTM runner."""
    torch.manual_seed(0)
    plain = Encoder(30, 6, 5, num_layers, bidirectional, dropout=dropout, pad_id=0)
    fast = Encoder(30, 6, 5, num_layers, bidirectional, dropout=dropout, pad_id=0)
    fast.load_state_dict(plain.state_dict())
    fast.run_lstm = run_encoder_lstm
    assert plain.run_lstm is run_packed
    return plain, fast


def _padded_source(lengths: torch.Tensor, width: int) -> torch.Tensor:
    src = torch.randint(1, 30, (len(lengths), width))
    src[torch.arange(width) >= lengths[:, None]] = 0
    return src


@pytest.mark.parametrize("bidirectional,num_layers", [(True, 1), (True, 2), (False, 1),
                                                      (False, 3)])
@pytest.mark.parametrize("dtype,onednn", [(torch.float64, True), (torch.float32, True),
                                          (torch.float32, False)])
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # flags() sets it too
def test_encoder_in_training_equals_nn_lstm(bidirectional, num_layers, dtype, onednn):
    """The CPU encoder in training — segmented_lstm on oneDNN in float32, packed_lstm
    otherwise — against nn.LSTM over packed sequences: states, final states and every
    parameter's gradient, with tied lengths, a one-token sentence and padding past the longest
    sentence."""
    if onednn and dtype == torch.float32 and not fused_rnn_available():
        pytest.skip("this torch build has no oneDNN")
    encoders = [encoder.to(dtype) for encoder in _encoders(num_layers, bidirectional)]
    lengths = torch.tensor([4, 7, 1, 7, 3, 5])
    src = _padded_source(lengths, 9)
    probes = None
    results = []
    with torch.backends.mkldnn.flags(enabled=onednn):
        embedded = encoders[1].embedding(src)
        assert encoder_path(encoders[1].rnn, embedded) == (
            "fused" if onednn and dtype == torch.float32 else "by hand")
        for encoder in encoders:
            out = encoder(src, lengths)
            if probes is None:
                probes = [torch.randn_like(tensor) for tensor in out]
            sum((tensor * probe).sum() for tensor, probe in zip(out, probes)).backward()
            results.append((out, {n: p.grad.clone() for n, p in encoder.named_parameters()}))
    (module, module_grads), (ours, our_grads) = results
    for name, mine, theirs in zip(ours._fields, ours, module):
        torch.testing.assert_close(mine, theirs, msg=name)
    assert torch.all(ours.states[src == 0] == 0)
    for name, grad in module_grads.items():
        torch.testing.assert_close(our_grads[name], grad, msg=name)


@pytest.mark.skipif(not fused_rnn_available(), reason="this torch build has no oneDNN")
def test_fused_encoder_drops_out_between_layers_in_training_only():
    plain, fast = _encoders(2, True, dropout=0.5)
    fast.dropout.p = plain.dropout.p = 0.0  # only the LSTM's own dropout between its layers
    lengths = torch.tensor([4, 7, 2])
    src = _padded_source(lengths, 7)
    assert encoder_path(fast.rnn, fast.embedding(src)) == "fused"
    trained = fast(src, lengths).states
    fast.eval()
    plain.eval()
    torch.testing.assert_close(fast(src, lengths).states, plain(src, lengths).states)
    assert not torch.allclose(trained, fast(src, lengths).states)


# ------------------------------------------------- the encoder's LSTM with no gradient (oneDNN)
def test_length_segments_run_each_row_over_its_real_steps():
    # sorted lengths 7, 7, 5, 3, 1 → steps 0 all rows, 1-2 four, 3-4 three, 5-6 two
    assert length_segments([7, 7, 5, 3, 1]) == [Segment(5, 0, 1), Segment(4, 1, 3),
                                                 Segment(3, 3, 5), Segment(2, 5, 7)]
    assert length_segments([4, 4]) == [Segment(2, 0, 4)]


@pytest.mark.skipif(not fused_rnn_available(), reason="this torch build has no oneDNN")
@pytest.mark.parametrize("bidirectional,num_layers", [(True, 1), (True, 2), (False, 1),
                                                      (False, 3)])
def test_encoder_without_gradient_equals_nn_lstm(bidirectional, num_layers):
    """With no gradient the CPU encoder runs segmented_lstm: its states and final states equal
    nn.LSTM's over packed sequences (tied lengths, a one-token sentence, padding past the
    longest sentence), zero on padding, and stay so in a batch of equal lengths."""
    plain, fast = (encoder.eval() for encoder in _encoders(num_layers, bidirectional, 0.3))
    for lengths in (torch.tensor([4, 7, 1, 7, 3, 5]), torch.tensor([6, 6, 6])):
        src = _padded_source(lengths, 9)
        with torch.no_grad():
            assert encoder_path(fast.rnn, fast.embedding(src)) == "fused"
            ours, module = fast(src, lengths), plain(src, lengths)
        for name, mine, theirs in zip(ours._fields, ours, module):
            torch.testing.assert_close(mine, theirs, msg=name)
        assert torch.all(ours.states[src == 0] == 0)


def test_encoder_without_gradient_leaves_int8_and_float64_lstms_to_nn_lstm():
    encoder = Encoder(30, 6, 5, 1, True, dropout=0.0, pad_id=0).double().eval()
    src = torch.randint(1, 30, (2, 4))
    with torch.no_grad():
        assert encoder_path(encoder.rnn, encoder.embedding(src)) == "plain"
    quantized = quantize_int8(Encoder(30, 6, 5, 1, True, dropout=0.0, pad_id=0).eval())
    embedded = quantized.embedding(src)
    with torch.no_grad():
        assert encoder_path(quantized.rnn, embedded) == "plain"
    assert encoder_path(quantized.rnn, embedded) == "plain"
