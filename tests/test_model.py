"""Encoder, decoder and the whole model: shapes, padding, equivalent paths, learning."""

from __future__ import annotations

import pytest
import torch

from s2s.data.batching import collate
from s2s.model.decoder import step_by_step
from s2s.model.seq2seq import build_model, drop_words
from s2s.data.tokenizer import SPECIAL
from tests.conftest import (ATTENTION_NAMES, REVERSAL_PAIRS, assert_finite_differences, overfit,
                            random_batch, tiny_model, tiny_model_config)

LUONG = [name for name in ATTENTION_NAMES if name != "bahdanau"]


def test_encoder_states_do_not_depend_on_padding():
    model = tiny_model("general", num_layers=2).eval()
    sentence = [5, 6, 7, 8]
    alone = collate([sentence], None, [0])
    padded = collate([sentence, list(range(4, 14))], None, [0, 1])
    out_alone = model.encoder(alone.src, alone.src_lengths)
    out_padded = model.encoder(padded.src, padded.src_lengths)
    length = alone.src.size(1)
    torch.testing.assert_close(out_padded.states[0, :length], out_alone.states[0])
    assert torch.all(out_padded.states[0, length:] == 0)
    torch.testing.assert_close(out_padded.final_hidden[0], out_alone.final_hidden[0])
    torch.testing.assert_close(out_padded.final_cell[0], out_alone.final_cell[0])


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_decoder_output_shapes(name):
    model = tiny_model(name).eval()
    batch = random_batch()
    memory, state = model.encode(batch.src, batch.src_lengths)
    vectors, weights = model.decoder(batch.tgt_in, state, memory)
    assert vectors.shape == (batch.size, batch.tgt_in.size(1), model.decoder.attentional_size)
    assert weights.shape == (batch.size, batch.tgt_in.size(1), batch.src.size(1))
    torch.testing.assert_close(weights.sum(-1), torch.ones(weights.shape[:2]))
    assert torch.all(weights.masked_select((batch.src == SPECIAL.pad)[:, None, :].expand_as(
        weights)) == 0)
    log_probs, state, alpha = model.step(batch.tgt_in[:, 0], state, memory)
    assert log_probs.shape == (batch.size, 20) and alpha.shape == (batch.size, batch.src.size(1))


def _loss_and_gradients(model, batch, vectors_of=None):
    """The summed loss of ``batch`` and every parameter's gradient; ``vectors_of(memory,
    state)`` replaces the decoder's teacher-forced pass."""
    model.zero_grad()
    if vectors_of is None:
        loss = model(batch).loss
    else:
        memory, state = model.encode(batch.src, batch.src_lengths)
        vectors = vectors_of(memory, state)
        logits = model.decoder.project(vectors[batch.tgt_mask])
        loss = torch.nn.functional.cross_entropy(logits, batch.tgt_out[batch.tgt_mask],
                                                 reduction="sum")
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("name", LUONG)
@pytest.mark.parametrize("num_layers", [1, 2])
def test_the_loop_free_path_equals_step_by_step(name, num_layers):
    """Luong attention without input feeding: the LSTM over the whole target and one batched
    attention give the loss and gradients of step() after step()."""
    model = tiny_model(name, num_layers=num_layers).eval()  # no dropout: the same inputs
    assert model.decoder.runs_loop_free
    batch = random_batch(seed=3)
    loop_free = _loss_and_gradients(model, batch)
    stepped = _loss_and_gradients(model, batch, lambda memory, state: step_by_step(
        model.decoder, batch.tgt_in, state, memory)[0])
    torch.testing.assert_close(loop_free[0], stepped[0])
    for name_, grad in loop_free[1].items():
        torch.testing.assert_close(grad, stepped[1][name_], msg=name_)


def test_input_feeding_and_bahdanau_take_the_loop():
    assert not tiny_model("general", input_feeding=True).decoder.runs_loop_free
    assert not tiny_model("bahdanau").decoder.runs_loop_free


@pytest.mark.parametrize("name", ATTENTION_NAMES)
@pytest.mark.parametrize("input_feeding", [False, True])
def test_gradients_reach_every_parameter(name, input_feeding):
    model = tiny_model(name, input_feeding=input_feeding, dropout=0.1)
    model.train()
    out = model(random_batch(seed=1), label_smoothing=0.1)
    out.loss.backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, pname


def test_loss_counts_only_real_tokens():
    model = tiny_model("general").eval()
    batch = random_batch()
    out = model(batch)
    assert out.tokens == int((batch.tgt_out != SPECIAL.pad).sum()) == sum(t + 1 for t in (4, 6, 1, 3))
    # the same sentences one at a time give the same summed loss
    total = 0.0
    for i in range(batch.size):
        src = batch.src[i, :batch.src_lengths[i] - 1].tolist()
        tgt = batch.tgt_out[i][batch.tgt_mask[i]][:-1].tolist()
        total += float(model(collate([src], [tgt], [0])).loss.detach())
    assert float(out.loss.detach()) == pytest.approx(total, rel=1e-5)


def test_scheduled_sampling_runs_and_differs_from_teacher_forcing():
    model = tiny_model("general")
    model.train()
    batch = random_batch(seed=2)
    torch.manual_seed(0)
    forced = model(batch, teacher_forcing_ratio=1.0)
    torch.manual_seed(0)
    sampled = model(batch, teacher_forcing_ratio=0.0)
    sampled.loss.backward()
    assert not torch.isclose(forced.loss, sampled.loss)
    assert model.encoder.embedding.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("init", ["bridge", "last", "zeros"])
def test_decoder_initial_state(init):
    cfg = tiny_model_config("general", init=init)
    cfg.encoder.hidden_size = 8
    cfg.decoder.hidden_size = 16  # 2 × 8, so 'last' fits
    model = build_model(cfg, 20, 20, SPECIAL, 16).eval()
    batch = random_batch()
    encoded = model.encoder(batch.src, batch.src_lengths)
    state = model.decoder.init_state(encoded)
    assert state.hidden.shape == (1, batch.size, 16)
    if init == "last":
        torch.testing.assert_close(state.hidden[0], encoded.final_hidden)
    if init == "zeros":
        assert torch.all(state.hidden == 0) and torch.all(state.cell == 0)


def test_tied_embeddings_share_one_matrix():
    cfg = tiny_model_config("general")
    cfg.tied_embeddings = True
    cfg.embedding_dim = 16
    model = build_model(cfg, 20, 20, SPECIAL, 16)
    assert model.decoder.output.weight is model.decoder.embedding.weight


@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_tiny_model_overfits_a_handful_of_pairs(name):
    """Six reversal pairs are memorized: loss near zero, greedy output exact."""
    from s2s.search.greedy import greedy_search

    model = tiny_model(name, input_feeding=(name == "general"))
    batch, loss = overfit(model)
    assert loss < 0.05
    model.eval()
    hyps = greedy_search(model, batch.src, batch.src_lengths, torch.full((batch.size,), 8))
    assert [h.tokens for h in hyps] == [p[1] for p in REVERSAL_PAIRS]


@pytest.mark.parametrize("backend", ["plain", "cpu"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_loss_and_gradients_match_torch_cross_entropy(smoothing, backend):
    model = tiny_model("general", backend=backend).eval()
    batch = random_batch(seed=2)
    out = model(batch, label_smoothing=smoothing)
    out.loss.backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    memory, state = model.encode(batch.src, batch.src_lengths)
    vectors, _ = model.decoder(batch.tgt_in, state, memory)
    logits = model.decoder.project(vectors[batch.tgt_mask])
    gold = batch.tgt_out[batch.tgt_mask]
    expected = torch.nn.functional.cross_entropy(logits, gold, reduction="sum",
                                                 label_smoothing=smoothing)
    expected.backward()
    torch.testing.assert_close(out.loss, expected)
    torch.testing.assert_close(out.nll, torch.nn.functional.cross_entropy(
        logits, gold, reduction="sum").detach())
    assert not out.nll.requires_grad
    for name, param in model.named_parameters():
        torch.testing.assert_close(fused[name], param.grad, msg=name)


@pytest.mark.parametrize("backend", ["plain", "cpu"])
@pytest.mark.parametrize("input_feeding", [False, True])
@pytest.mark.parametrize("name", ATTENTION_NAMES)
def test_gradients_equal_finite_differences(name, input_feeding, backend):
    """Gradients against central differences of the whole model's loss in float64, at a few
    entries of every parameter tensor: autograd's on the plain model, and on the CPU backend
    every backward written by hand (the fused loss, the Bahdanau recurrence, the encoder's
    packed LSTM)."""
    model = tiny_model(name, input_feeding=input_feeding, backend=backend).double().train()
    assert_finite_differences(model, random_batch(seed=3), entries=3)


def test_attentional_activation_none_leaves_out_the_tanh():
    with_tanh = tiny_model("bahdanau", seed=5)
    cfg = tiny_model_config("bahdanau")
    cfg.decoder.attentional_activation = "none"
    torch.manual_seed(5)
    linear = build_model(cfg, 20, 20, SPECIAL, 16)
    linear.load_state_dict(with_tanh.state_dict())  # same parameters: only ṽ's activation differs
    context, output = torch.randn(3, 16), torch.randn(3, 16)
    plain = linear.decoder.attentional_vector(context, output)
    assert torch.allclose(torch.tanh(plain), with_tanh.decoder.attentional_vector(context, output))
    assert plain.abs().max() > 1.0 or not torch.allclose(plain, torch.tanh(plain))
    batch = random_batch(seed=2)
    assert not torch.allclose(linear(batch).loss, with_tanh(batch).loss)


def test_xavier_initializer_zeroes_biases_but_the_forget_gate_s():
    model = tiny_model("bahdanau")
    params = dict(model.named_parameters())
    bias = params["decoder.rnn.bias_ih_l0"]
    size = bias.numel() // 4
    assert torch.all(bias[size:2 * size] == 1) and torch.all(bias[:size] == 0)
    assert torch.all(params["decoder.rnn.bias_hh_l0"] == 0)
    weight = params["decoder.output.weight"]                         # [V, attentional_size]
    bound = (6 / sum(weight.shape)) ** 0.5
    assert weight.abs().max() <= bound and weight.abs().max() > bound / 2


@pytest.mark.parametrize("init_range", [0.1, 0.5])
def test_uniform_initializer_draws_every_parameter_within_its_range(init_range):
    cfg = tiny_model_config("bahdanau")
    cfg.initializer, cfg.init_range = "uniform", init_range
    torch.manual_seed(0)
    model = build_model(cfg, 20, 20, SPECIAL, 16)
    for name, param in model.named_parameters():
        values = param.detach().flatten()
        if name.endswith("embedding.weight"):
            assert torch.all(param[SPECIAL.pad] == 0), name  # padding rows stay zero
            values = torch.cat([param[:SPECIAL.pad], param[SPECIAL.pad + 1:]]).flatten()
        assert values.abs().max() <= init_range, name
        # biases too, and spread over the range: not Xavier's bounds, not zeros
        assert values.abs().max() > init_range / 2 or values.numel() < 4, name
        assert values.min() < 0 < values.max() or values.numel() < 4, name


def test_word_dropout_replaces_real_tokens_by_unk_in_training_only():
    torch.manual_seed(0)
    tokens = torch.tensor([[SPECIAL.bos, 5, 6, 7, SPECIAL.eos, SPECIAL.pad]] * 2000)
    dropped = drop_words(tokens, 0.3, SPECIAL)
    real = tokens > SPECIAL.eos
    assert torch.equal(dropped[~real], tokens[~real])  # BOS, EOS and padding stay
    assert set(dropped[real].unique().tolist()) == {5, 6, 7, SPECIAL.unk}
    assert float((dropped[real] == SPECIAL.unk).float().mean()) == pytest.approx(0.3, abs=0.02)
    assert drop_words(tokens, 0.0, SPECIAL) is tokens
    cfg = tiny_model_config("general")
    cfg.encoder.word_dropout, cfg.decoder.word_dropout = 0.5, 0.25
    model = build_model(cfg, 20, 20, SPECIAL, 16)
    assert model.word_dropout == (0.5, 0.25)
    batch = random_batch(seed=1)
    model.eval()
    torch.testing.assert_close(model(batch).loss, model(batch).loss)  # no dropout in eval
    model.train()
    losses = {float(model(batch).loss.detach()) for _ in range(3)}
    assert len(losses) == 3


# ------------------------------------------------- what the formulas say, checked directly
@pytest.mark.parametrize("num_layers", [1, 2])
def test_the_bridge_initial_state_is_its_formula(num_layers):
    model = tiny_model("general", num_layers=num_layers, seed=4).eval()
    batch = random_batch()
    decoder = model.decoder
    with torch.no_grad():
        encoded = model.encoder(batch.src, batch.src_lengths)
        state = decoder.init_state(encoded)
        hidden = torch.tanh(encoded.final_hidden @ decoder.bridge_hidden.weight.T
                            + decoder.bridge_hidden.bias)
        cell = encoded.final_cell @ decoder.bridge_cell.weight.T + decoder.bridge_cell.bias
    assert state.hidden.shape == (num_layers, batch.src.size(0), decoder.hidden_size)
    for layer in range(num_layers):  # s(0) = tanh(W_h h_S + b_h), c(0) = W_c c_S + b_c
        torch.testing.assert_close(state.hidden[layer], hidden)
        torch.testing.assert_close(state.cell[layer], cell)


def test_scheduled_sampling_feeds_the_model_s_own_argmax():
    model = tiny_model("bahdanau", seed=6).eval()
    batch = random_batch()
    decoder = model.decoder
    fed, vectors = [], []
    original = decoder.step

    def recording(prev, state, memory, *args):
        fed.append(prev.clone())
        vector, state, alpha = original(prev, state, memory, *args)
        vectors.append(vector.detach())
        return vector, state, alpha

    decoder.step = recording
    with torch.no_grad():
        memory, state = model.encode(batch.src, batch.src_lengths)
        step_by_step(decoder, batch.tgt_in, state, memory, teacher_forcing_ratio=0.0)
    assert torch.equal(fed[0], batch.tgt_in[:, 0])  # BOS
    for t in range(1, len(fed)):  # ratio 0: always the argmax of the step before
        assert torch.equal(fed[t], decoder.output(vectors[t - 1]).argmax(dim=-1))
    assert any(not torch.equal(fed[t], batch.tgt_in[:, t]) for t in range(1, len(fed)))
