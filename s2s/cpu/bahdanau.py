"""The teacher-forced decoder on the CPU: the seam ``Decoder.run_steps``
(:func:`run_decoder_steps`), with the Bahdanau recurrence run by hand, forward and backward
through time (:func:`attentive_lstm`).

At step t of the decoder (B sentences, S source positions, H = decoder size, A = attention
size, C = context size, gates in ``nn.LSTM``'s order i, f, g, o):

    e(t) = wᵀ tanh(W₂h + W₁ s(t-1))                       energies      [B, S]
    α(t) = softmax(e(t)) over real source positions                     [B, S]
    a(t) = Σᵢ α(t)ᵢ hᵢ                                     context       [B, C]
    gates(t) = W_e E y(t-1) + b + [W_a, W_hh]·[m(t) ⊙ a(t); s(t-1)]      [B, 4H]
    c(t) = σ(f) ⊙ c(t-1) + σ(i) ⊙ tanh(g),   s(t) = σ(o) ⊙ tanh(c(t))

(m(t): the context's dropout mask). Every step depends on the one before, so the loop runs in
Python. Written as plain torch operations, autograd records two dozen nodes per step, runs the
context's backward as batched products of one row (an outer product per step for ∂h) and
accumulates a fresh [B, S, A] gradient for the keys at every step. :func:`attentive_lstm` runs
the forward loop with no graph and its backward — backpropagation through time — by hand:

- weight gradients summed once over all steps, as one large product each
  (∂[W_a, W_hh] = Σₜ ∂gates(t)ᵀ x(t), ∂W₁ = Σₜ ∂(W₁s)(t)ᵀ s(t-1), ∂h = Σₜ α(t)ᵀ ∂a(t));
- tanh(z) kept as σ(2z), from which both wᵀtanh(z) = 2wᵀσ(2z) − Σw and
  1 − tanh²(z) = 4σ(2z)(1 − σ(2z)) follow, so the [B, S, A] energies take three passes forward
  and four backward, in place;
- each step's inputs x(t) = [m ⊙ a(t); s(t-1)] written into one buffer (its rows padded to a
  multiple of 8 where :func:`step_product` runs on MKL), with no per-step concatenation.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from s2s.cpu.dropout import step_masks
from s2s.cpu.lstm import lstm_cell, lstm_cell_backward, padded_rows, step_product
from s2s.cpu.products import transposed_times
from s2s.model.attention import ADDITIVE
from s2s.model.decoder import Decoder, DecoderState, Memory, step_by_step


class AttentiveLSTMOutput(NamedTuple):
    """contexts a(1..T) ``[B, T, C]``, states s(1..T) ``[B, T, H]``, weights α ``[B, T, S]``
    (the weights carry no gradient)."""

    contexts: Tensor
    states: Tensor
    weights: Tensor


class _AttentiveLSTM(torch.autograd.Function):
    """See the module docstring; the arguments are those of :func:`attentive_lstm`."""

    @staticmethod
    def forward(ctx: Any, known_gates: Tensor, hidden: Tensor, cell: Tensor, keys: Tensor,
                values: Tensor, query_weight: Tensor, energy_weight: Tensor,
                recurrent_weight: Tensor, mask: Tensor,
                context_masks: Optional[Tensor]) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        batch, steps, gate_size = known_gates.shape
        size, (sources, attention), context_size = gate_size // 4, keys.shape[1:], values.size(2)
        rows = padded_rows(batch, known_gates)
        new = known_gates.new_empty
        inputs = known_gates.new_zeros(steps, rows, context_size + size)  # x(t), padded rows 0
        activations = new(steps, batch, gate_size)  # σ(i), σ(f), tanh(g), σ(o)
        cells = new(steps, batch, size)
        sigmoids = new(steps, batch, sources, attention)  # σ(2z(t)) = (1 + tanh z(t)) / 2
        contexts, states = new(batch, steps, context_size), new(batch, steps, size)
        weights = new(steps, batch, sources)  # step-major: bmm wants each α(t) contiguous
        doubled_keys, padding = 2.0 * keys, ~mask
        initial_cell = cell
        inputs[0, :batch, context_size:] = hidden
        for t in range(steps):
            step_input = inputs[t]
            projected = step_product(step_input[:, context_size:], query_weight)[:batch]
            alpha, context = _attend(projected, doubled_keys, values, padding, energy_weight,
                                     sigmoids_out=sigmoids[t])
            weights[t] = alpha
            contexts[:, t] = context
            dropped = step_input[:batch, :context_size]
            if context_masks is None:
                dropped.copy_(context)
            else:
                torch.mul(context, context_masks[t], out=dropped)
            # known gates first: the sum is row-major like them (MKL's product is not)
            gates = known_gates[:, t] + step_product(step_input, recurrent_weight)[:batch]
            cell, state = lstm_cell(gates, cell, activations_out=activations[t],
                                    cell_out=cells[t])
            states[:, t] = state
            if t + 1 < steps:
                inputs[t + 1, :batch, context_size:] = state
        ctx.save_for_backward(inputs, activations, cells, sigmoids, weights, values,
                              query_weight, energy_weight, recurrent_weight, initial_cell,
                              context_masks)
        batch_major_weights = weights.transpose(0, 1)
        ctx.mark_non_differentiable(batch_major_weights)
        return contexts, states, batch_major_weights

    @staticmethod
    @once_differentiable  # it overwrites what it saved
    def backward(ctx: Any, grad_contexts: Optional[Tensor], grad_states: Optional[Tensor],
                 _: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        (inputs, activations, cells, sigmoids, weights, values, query_weight, energy_weight,
         recurrent_weight, initial_cell, context_masks) = ctx.saved_tensors
        steps, batch, gate_size = activations.shape
        size, context_size = gate_size // 4, values.size(2)
        sources, attention = sigmoids.shape[2:]
        zeros = inputs.new_zeros
        grad_gates = zeros(steps, inputs.size(1), gate_size)  # ∂gates(t), padded rows 0
        grad_projected = zeros(steps, inputs.size(1), attention)   # ∂(W₁s(t-1))
        grad_context = inputs.new_empty(steps, batch, context_size)  # ∂a(t)
        grad_keys, grad_energy_weight = zeros(batch, sources, attention), zeros(attention)
        values_t = values.transpose(1, 2).contiguous()  # [B, C, S]: bmm is 4× faster for ∂α
        recurrent_t, query_t = recurrent_weight.t().contiguous(), query_weight.t().contiguous()
        grad_state, grad_cell = zeros(batch, size), zeros(batch, size)
        for t in reversed(range(steps)):
            if grad_states is not None:
                grad_state = grad_state + grad_states[:, t]
            grad_cell = lstm_cell_backward(grad_state, grad_cell, activations[t], cells[t],
                                           cells[t - 1] if t else initial_cell,
                                           out=grad_gates[t, :batch])
            grad_input = step_product(grad_gates[t], recurrent_t)[:batch]  # [B, C + H]
            context = grad_input[:, :context_size]
            if context_masks is not None:
                context = context * context_masks[t]
            if grad_contexts is not None:
                context = context + grad_contexts[:, t]
            context = grad_context[t].copy_(context)  # contiguous, for bmm
            _attend_backward(context, weights[t], values_t, sigmoids[t], energy_weight,
                             grad_projected_out=grad_projected[t, :batch],
                             grad_keys_acc=grad_keys, grad_energy_weight_acc=grad_energy_weight)
            grad_state = (grad_input[:, context_size:]
                          + step_product(grad_projected[t], query_t)[:batch])
        flat_inputs = inputs.view(-1, inputs.size(2))
        grad_recurrent = transposed_times(grad_gates.view(-1, gate_size), flat_inputs)
        grad_query = transposed_times(grad_projected.view(-1, attention),
                                      flat_inputs[:, context_size:])
        grad_keys.mul_(4.0 * energy_weight)  # see _attend_backward
        grad_values = torch.bmm(weights.permute(1, 2, 0), grad_context.transpose(0, 1))
        return (grad_gates[:, :batch].transpose(0, 1), grad_state, grad_cell, grad_keys,
                grad_values, grad_query, grad_energy_weight, grad_recurrent, None, None)


def _attend(projected: Tensor, doubled_keys: Tensor, values: Tensor, padding: Tensor,
            energy_weight: Tensor, sigmoids_out: Tensor) -> tuple[Tensor, Tensor]:
    """α ``[B, S]`` and a = α·h ``[B, C]`` from W₁s ``[B, A]``, 2·W₂h ``[B, S, A]``, h, the
    padding ``[B, S]`` and w; σ(2z) ``[B, S, A]`` is written into ``sigmoids_out``."""
    # W₁s row-major (MKL's step_product returns it column-major): broadcast over S in that
    # layout, the sum would read it with a stride along A and run unvectorized (≈ 10× slower)
    z2 = torch.add(doubled_keys, projected.contiguous().unsqueeze(1), alpha=2.0,
                   out=sigmoids_out)
    energies = (z2.sigmoid_().view(-1, z2.size(-1)) @ energy_weight).view(padding.shape)
    # 2wᵀσ(2z) = wᵀtanh(z) + Σw: the constant does not change the softmax
    alpha = torch.softmax(energies.mul_(2.0).masked_fill_(padding, float("-inf")), dim=-1)
    return alpha, torch.bmm(alpha.unsqueeze(1), values).squeeze(1)


def _attend_backward(grad_context: Tensor, alpha: Tensor, values_t: Tensor, sigmoids: Tensor,
                     energy_weight: Tensor, grad_projected_out: Tensor, grad_keys_acc: Tensor,
                     grad_energy_weight_acc: Tensor) -> None:
    """From ∂a ``[B, C]`` (contiguous): writes ∂(W₁s) ``[B, A]``, adds Σ_T σ(1 − σ)·∂e to
    ``grad_keys_acc`` (∂keys once multiplied by 4w) and ∂w to its accumulator. ``values_t``
    is hᵀ ``[B, C, S]``; ``sigmoids`` σ(2z) ``[B, S, A]`` is overwritten."""
    grad_alpha = torch.bmm(grad_context.unsqueeze(1), values_t).squeeze(1)  # [B, S]
    grad_energies = alpha * (grad_alpha - (alpha * grad_alpha).sum(-1, keepdim=True))
    # e = 2wᵀσ − Σw: ∂w = Σ (2σ − 1)·∂e
    grad_energy_weight_acc.addmv_(sigmoids.view(-1, sigmoids.size(-1)).t(),
                                  grad_energies.view(-1), alpha=2.0).sub_(grad_energies.sum())
    # ∂z = (1 − tanh² z)·w·∂e = 4w ⊙ σ(1 − σ)·∂e
    slope = sigmoids.addcmul_(sigmoids, sigmoids, value=-1.0)  # σ(1 − σ), in place
    grad_keys_acc.addcmul_(slope, grad_energies.unsqueeze(-1))
    torch.bmm(grad_energies.unsqueeze(1), slope, out=grad_projected_out.unsqueeze(1))  # Σ_S
    grad_projected_out.mul_(4.0 * energy_weight)


def attentive_lstm(known_gates: Tensor, hidden: Tensor, cell: Tensor, keys: Tensor,
                   values: Tensor, mask: Tensor, query_weight: Tensor, energy_weight: Tensor,
                   recurrent_weight: Tensor,
                   context_masks: Optional[Tensor] = None) -> AttentiveLSTMOutput:
    """The recurrence of the module docstring over T teacher-forced steps.

    known_gates ``[B, T, 4H]`` = W_e E y(t-1) + b_ih + b_hh for every step; hidden, cell
    ``[B, H]`` = s(0), c(0); keys = W₂h + b₂ ``[B, S, A]``; values = h ``[B, S, C]``; mask
    ``[B, S]`` (True on real source tokens); query_weight W₁ ``[A, H]``; energy_weight w ``[A]``;
    recurrent_weight [W_a, W_hh] ``[4H, C + H]``; context_masks ``[T, B, C]`` (scaled dropout
    keep-masks) or None.
    """
    contexts, states, weights = _AttentiveLSTM.apply(
        known_gates, hidden, cell, keys, values, query_weight, energy_weight, recurrent_weight,
        mask, context_masks)
    return AttentiveLSTMOutput(contexts, states, weights)


def run_decoder_steps(decoder: Decoder, tgt_in: Tensor, state: DecoderState, memory: Memory,
                      teacher_forcing_ratio: float = 1.0) -> tuple[Tensor, Tensor]:
    """The seam ``Decoder.run_steps``: :func:`attentive_lstm` where it computes what
    :func:`~s2s.model.decoder.step_by_step` computes — full teacher forcing, no input feeding,
    one LSTM layer (``nn.LSTM`` itself, on the CPU), an attention declaring ``additive``
    (Bahdanau's own class) and the ``Decoder`` class itself (a subclass may change its step) —
    else :func:`step_by_step` itself."""
    if (teacher_forcing_ratio < 1.0 or type(decoder) is not Decoder or decoder.input_feeding
            or decoder.num_layers != 1 or type(decoder.rnn) is not nn.LSTM
            or tgt_in.device.type != "cpu" or not type(decoder.attention).declares(ADDITIVE)):
        return step_by_step(decoder, tgt_in, state, memory, teacher_forcing_ratio)
    embedded = decoder.dropout(decoder.embedding(tgt_in))  # [B, T, E]: one lookup, one mask
    contexts, outputs, weights = _additive_recurrence(decoder, embedded, state, memory)
    return decoder.attentional_vector(contexts, outputs), weights


def _additive_recurrence(decoder: Decoder, embedded: Tensor, state: DecoderState,
                         memory: Memory) -> AttentiveLSTMOutput:
    """a(t), s(t), α(t) of every step, as ``decoder.recur`` gives them, by
    :func:`attentive_lstm` (the embedding's part of the LSTM input projected once)."""
    attention, lstm = decoder.attention, decoder.rnn
    batch, steps, embedding_dim = embedded.shape
    masks = step_masks(decoder.dropout, (steps, batch, attention.context_size), embedded)
    w_ih = lstm.weight_ih_l0
    known_gates = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, embedded.flatten(0, 1),
                              w_ih[:, :embedding_dim].t()).view(batch, steps, -1)
    recurrent = torch.cat([w_ih[:, embedding_dim:], lstm.weight_hh_l0], dim=1)
    return attentive_lstm(known_gates, state.hidden[0], state.cell[0], memory.keys,
                          memory.values, memory.mask, attention.query_proj.weight,
                          attention.energy.weight.view(-1), recurrent, masks)
