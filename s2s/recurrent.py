"""Recurrences run by hand, forward and backward through time: the teacher-forced Bahdanau
decoder (:func:`attentive_lstm`) and the encoder's packed (bi)LSTM (:func:`packed_lstm`); and
the encoder's (bi)LSTM as oneDNN's fused RNN over sentences of equal length
(:func:`segmented_lstm`).

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

The encoder's LSTM over packed sentences is the same idea without attention: ``nn.LSTM`` on the
CPU projects each step's inputs separately and leaves a per-step graph for autograd;
:func:`packed_lstm` projects all tokens of both directions in one product, runs only
W_hh s(t-1) step by step (both directions in one batched product) and sums ∂W_hh once.
Where torch has oneDNN, :func:`segmented_lstm` is faster still, forward and backward (the
encoder uses it then; :func:`packed_lstm` remains for float64 and builds without oneDNN).
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from s2s.products import linear, on_onednn, transposed_times


def step_product(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x·Wᵀ (+ b) ``[B, out]`` for the few rows of one step, x ``[B, in]``, W ``[out, in]``.

    On the CPU in float32 this is oneDNN's linear (:mod:`s2s.products`: 1.2–1.4× MKL's product
    at 24–88 rows, 2–3× at 8). Otherwise on the CPU (float64, a build without oneDNN) it is
    computed as (W·xᵀ)ᵀ with B padded to a multiple of 8, the orientation MKL runs fastest
    (``scripts/bench_kernels.py``); the result is then a column-major view, which element-wise
    operations and later products take as they are.
    """
    if x.device.type != "cpu" or on_onednn(x):
        return linear(x, weight, bias)
    rows = x.size(0)
    extra = padded_rows(rows, x) - rows
    if extra:
        x = torch.cat([x, x.new_zeros(extra, x.size(1))])
    product = (torch.mm(weight, x.t()) if bias is None
               else torch.addmm(bias.unsqueeze(1), weight, x.t()))
    return product.t()[:rows]


def padded_rows(rows: int, like: Tensor) -> int:
    """``rows`` rounded up to a multiple of 8 where :func:`step_product` runs on MKL (the CPU
    without oneDNN, or float64), as they are elsewhere; ``like``: a tensor of the product's."""
    return rows + (-rows) % 8 if like.device.type == "cpu" and not on_onednn(like) else rows


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
            cell, state = _lstm_cell(gates, cell, activations_out=activations[t],
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
            grad_cell = _lstm_cell_backward(grad_state, grad_cell, activations[t], cells[t],
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


def _lstm_cell(gates: Tensor, cell: Tensor, activations_out: Tensor, cell_out: Tensor,
               state_out: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """c(t), s(t) ``[..., H]`` from the gates ``[..., 4H]`` (i, f, g, o) and c(t-1); σ(i), σ(f),
    tanh(g), σ(o) are written into ``activations_out``, c(t) into ``cell_out`` (and s(t) into
    ``state_out`` when given)."""
    size = cell.size(-1)
    torch.sigmoid(gates[..., :2 * size], out=activations_out[..., :2 * size])
    torch.tanh(gates[..., 2 * size:3 * size], out=activations_out[..., 2 * size:3 * size])
    torch.sigmoid(gates[..., 3 * size:], out=activations_out[..., 3 * size:])
    in_gate, forget, candidate, out_gate = activations_out.chunk(4, dim=-1)
    cell = torch.addcmul(forget * cell, in_gate, candidate, out=cell_out)
    if state_out is None:
        return cell, out_gate * torch.tanh(cell)
    return cell, torch.mul(out_gate, torch.tanh(cell), out=state_out)


def _lstm_cell_backward(grad_state: Tensor, grad_cell: Tensor, activations: Tensor,
                        cell: Tensor, previous_cell: Tensor, out: Tensor) -> Tensor:
    """Writes ∂gates ``[..., 4H]`` (before the activations) into ``out``; returns ∂c(t-1).

    From s = σ(o)·tanh(c), c = σ(f)·c(t-1) + σ(i)·tanh(g): ∂c += ∂s·σ(o)·(1 − tanh² c),
    ∂o = ∂s·tanh c·σ'(o), ∂i = ∂c·tanh g·σ'(i), ∂f = ∂c·c(t-1)·σ'(f), ∂g = ∂c·σ(i)·(1 − tanh² g).
    """
    in_gate, forget, candidate, out_gate = activations.chunk(4, dim=-1)
    grad_in, grad_forget, grad_candidate, grad_out = out.chunk(4, dim=-1)
    tanh_cell = torch.tanh(cell)
    torch.mul(grad_state, tanh_cell, out=grad_out).mul_(out_gate - out_gate * out_gate)
    grad_cell = grad_cell + grad_state * out_gate * (1.0 - tanh_cell * tanh_cell)
    torch.mul(grad_cell, candidate, out=grad_in).mul_(in_gate - in_gate * in_gate)
    torch.mul(grad_cell, previous_cell, out=grad_forget).mul_(forget - forget * forget)
    torch.mul(grad_cell, in_gate, out=grad_candidate).mul_(1.0 - candidate * candidate)
    return grad_cell * forget


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


# ------------------------------------------------------------------ the encoder's (bi)LSTM
class PackedLayout(NamedTuple):
    """Where the real tokens of a padded ``[B, S]`` batch go in a packed, time-major recurrence.

    Packed row ``offsets[t] + j`` is step t of the j-th longest sentence (ties in batch order),
    so step t occupies ``batch_sizes[t]`` consecutive rows and the sentences still running at
    step t + 1 are the first rows of step t. A sentence read backwards (the reverse direction)
    has the same lengths, so both directions share the layout; only the token at each row differs.
    """

    batch_sizes: list[int]   # rows per step, non-increasing
    offsets: list[int]       # first packed row of each step
    forward_index: Tensor    # [N] flat position b·S + t in the padded batch of each packed row
    reverse_index: Tensor    # [N] the same for the reversed sentence: b·S + (L_b − 1 − t)
    final_rows: Tensor       # [B] each sentence's packed row at its last step, batch order
    previous_rows: Tensor    # [N − B] for the rows of steps t ≥ 1, the row of step t − 1


def packed_layout(lengths: Tensor, padded_length: int, device: torch.device) -> PackedLayout:
    """The layout of sentences of ``lengths`` ``[B]`` (all ≥ 1) padded to ``padded_length``."""
    lengths = lengths.cpu().long()
    order = torch.argsort(lengths, descending=True, stable=True)
    steps = int(lengths[order[0]])
    sizes = (lengths.unsqueeze(0) > torch.arange(steps).unsqueeze(1)).sum(1)     # [steps]
    starts = torch.cumsum(sizes, 0) - sizes
    step = torch.repeat_interleave(torch.arange(steps), sizes)                     # [N]
    rank = torch.arange(step.numel()) - starts[step]
    sentence = order[rank]
    final_rows = torch.empty_like(order)
    final_rows[order] = starts[lengths[order] - 1] + torch.arange(order.numel())
    later = step > 0
    previous_rows = starts[step[later] - 1] + rank[later]
    forward_index = sentence * padded_length + step
    reverse_index = sentence * padded_length + lengths[sentence] - 1 - step
    return PackedLayout(sizes.tolist(), starts.tolist(),
                        *(index.to(device) for index in (forward_index, reverse_index,
                                                         final_rows, previous_rows)))


def _continuing_rows(layout: PackedLayout, t: int) -> slice:
    """The packed rows of step t − 1 whose sentences go on to step t (t ≥ 1)."""
    return slice(layout.offsets[t - 1], layout.offsets[t - 1] + layout.batch_sizes[t])


class _PackedLSTM(torch.autograd.Function):
    """The recurrence of :func:`packed_lstm`, forward and backward through time by hand."""

    @staticmethod
    def forward(ctx: Any, input_gates: Tensor, recurrent_weight: Tensor,
                layout: PackedLayout) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        directions, _, gate_size = input_gates.shape
        size = gate_size // 4
        activations = torch.empty_like(input_gates)         # σ(i), σ(f), tanh(g), σ(o)
        cells = input_gates.new_empty(directions, input_gates.size(1), size)
        states = torch.empty_like(cells)
        recurrent_t = recurrent_weight.transpose(1, 2)      # [D, H, 4H]
        for t, (rows, start) in enumerate(zip(layout.batch_sizes, layout.offsets)):
            here = slice(start, start + rows)
            if t == 0:
                gates, previous_cell = input_gates[:, here], cells.new_zeros(directions, rows, size)
            else:
                before = _continuing_rows(layout, t)
                gates = torch.baddbmm(input_gates[:, here], states[:, before], recurrent_t)
                previous_cell = cells[:, before]
            _lstm_cell(gates, previous_cell, activations_out=activations[:, here],
                       cell_out=cells[:, here], state_out=states[:, here])
        ctx.save_for_backward(activations, cells, states, recurrent_weight)
        ctx.layout = layout
        return states, cells

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_states: Optional[Tensor],
                 grad_cells: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        activations, cells, states, recurrent_weight = ctx.saved_tensors
        layout: PackedLayout = ctx.layout
        directions, _, size = cells.shape
        grad_gates = torch.empty_like(activations)
        carried_state = cells.new_zeros(directions, layout.batch_sizes[0], size)  # ∂s(t) from t + 1
        carried_cell = torch.zeros_like(carried_state)
        for t in reversed(range(len(layout.batch_sizes))):
            rows, start = layout.batch_sizes[t], layout.offsets[t]
            here = slice(start, start + rows)
            grad_state, grad_cell = carried_state[:, :rows], carried_cell[:, :rows]
            if grad_states is not None:
                grad_state = grad_state + grad_states[:, here]
            if grad_cells is not None:
                grad_cell = grad_cell + grad_cells[:, here]
            previous_cell = (cells.new_zeros(directions, rows, size) if t == 0
                             else cells[:, _continuing_rows(layout, t)])
            grad_previous_cell = _lstm_cell_backward(grad_state, grad_cell, activations[:, here],
                                                     cells[:, here], previous_cell,
                                                     out=grad_gates[:, here])
            if t:
                carried_cell[:, :rows] = grad_previous_cell
                carried_state[:, :rows] = torch.bmm(grad_gates[:, here], recurrent_weight)
        first = layout.batch_sizes[0]
        # ∂W_hh = Σ_{t ≥ 1} ∂gates(t)ᵀ s(t-1): one product over all rows after the first step
        grad_weight = torch.bmm(grad_gates[:, first:].transpose(1, 2),
                                states[:, layout.previous_rows])
        return grad_gates, grad_weight, None


def packed_lstm(inputs: Tensor, layout: PackedLayout, input_weight: Tensor, bias: Tensor,
                recurrent_weight: Tensor) -> tuple[Tensor, Tensor]:
    """One LSTM layer over packed sentences, every direction at once, from zero states.

    inputs ``[D, N, E]`` (direction d's tokens in ``layout`` order), input_weight W_ih
    ``[D, 4H, E]``, bias b_ih + b_hh ``[D, 4H]``, recurrent_weight W_hh ``[D, 4H, H]``.
    Returns the states and cells ``[D, N, H]``: gates(t) = W_ih x(t) + b + W_hh s(t-1), then the
    cell of :func:`_lstm_cell`. The input projection runs once for all N tokens; only the
    recurrent product runs step by step (one batched product for the directions), and its
    weight gradient is summed once after the backward loop.
    """
    input_gates = torch.baddbmm(bias.unsqueeze(1), inputs, input_weight.transpose(1, 2))
    return _PackedLSTM.apply(input_gates, recurrent_weight, layout)


# ------------------------------------------- the encoder's (bi)LSTM on oneDNN's fused RNN
class Segment(NamedTuple):
    """Steps ``start``..``end`` − 1, run by the first ``rows`` sentences of a batch sorted
    longest first: those at least ``end`` tokens long."""

    rows: int
    start: int
    end: int


def length_segments(sorted_lengths: list[int]) -> list[Segment]:
    """The segments of sentences of ``sorted_lengths`` (non-increasing, all ≥ 1): one per
    distinct length, shortest first; every row of a segment is real at each of its steps."""
    segments, start = [], 0
    for end in sorted(set(sorted_lengths)):
        segments.append(Segment(sum(1 for length in sorted_lengths if length >= end), start, end))
        start = end
    return segments


def fused_rnn_available() -> bool:
    """Whether ``torch.lstm`` over a CPU batch without padding runs as oneDNN's fused RNN (the
    build has oneDNN and it is enabled)."""
    return torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled


def lstm_layer_weights(lstm: nn.LSTM, layer: int, direction: int) -> list[Tensor]:
    """W_ih, W_hh, b_ih, b_hh of one layer and direction (1: reverse) of a biased ``lstm``, in
    the order ``torch.lstm`` takes them."""
    suffix = "_reverse" if direction else ""
    return [getattr(lstm, f"{name}_l{layer}{suffix}")
            for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]


def segmented_lstm(inputs: Tensor, lengths: Tensor, lstm: nn.LSTM,
                   training: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """``lstm`` (batch-first, biased, no projection) over padded sentences, with autograd.

    inputs ``[B, S, E]``, lengths ``[B]`` (all ≥ 1); ``training``: dropout between layers, as
    ``lstm.dropout`` says. Returns the top layer's states ``[B, S, D·H]`` (zero on padding) and
    its final states and cells ``[B, D·H]`` (directions concatenated), as ``nn.LSTM`` over the
    packed sentences gives them.

    ``nn.LSTM`` over packed sentences on the CPU runs step by step on MKL's products, while over
    a batch without padding it runs as one fused oneDNN RNN, forward and backward (on a Zen 5
    host: 2.5× faster for a bidirectional 64 × 20 batch with no gradient, 1.6× forward and
    backward against :func:`packed_lstm`; docs/benchmarks.md, "Ninth round"). So the sentences,
    sorted longest first, run in :func:`length_segments`: all of them for the shortest one's
    steps, then those still running from the states they reached — one fused call per distinct
    length and direction (the oneDNN RNN example "rnn_training_f32" splits a batch the same
    way). Search sorts its batches by length and training buckets them, so a batch has a few
    distinct lengths. The reverse direction reads each sentence backwards within its own
    length, so its segments are the same.
    """
    batch, padded_length, _ = inputs.shape
    lengths = lengths.cpu()
    order = torch.argsort(lengths, descending=True, stable=True)
    sorted_lengths = lengths[order]
    segments = length_segments(sorted_lengths.tolist())
    directions = 2 if lstm.bidirectional else 1
    if directions > 1:
        positions = torch.arange(padded_length)
        within = positions < sorted_lengths.unsqueeze(1)
        backwards = torch.where(within, sorted_lengths.unsqueeze(1) - 1 - positions, positions)
        backwards = backwards.to(inputs.device)      # [B, S]: position read at reversed step t
    x = inputs.index_select(0, order.to(inputs.device))
    for layer in range(lstm.num_layers):
        if layer:
            x = F.dropout(x, lstm.dropout, training)
        outputs, finals = [], []
        for direction in range(directions):
            read = _reversed_within(x, backwards) if direction else x
            states, final_state, final_cell = _run_segments(
                read, segments, lstm_layer_weights(lstm, layer, direction))
            outputs.append(_reversed_within(states, backwards) if direction else states)
            finals.append((final_state, final_cell))
        x = torch.cat(outputs, dim=-1) if directions > 1 else outputs[0]
    restore = torch.argsort(order).to(inputs.device)
    final_states = torch.cat([state for state, _ in finals], dim=-1)
    final_cells = torch.cat([cell for _, cell in finals], dim=-1)
    return (x.index_select(0, restore), final_states.index_select(0, restore),
            final_cells.index_select(0, restore))


def _reversed_within(x: Tensor, backwards: Tensor) -> Tensor:
    """x ``[B, S, F]`` with each sentence's real positions in reverse order (padding stays)."""
    return x.gather(1, backwards.unsqueeze(-1).expand_as(x))


def _run_segments(x: Tensor, segments: list[Segment],
                  weights: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """One direction of one layer: states ``[B, S, H]`` (zero past each sentence's end) and each
    sentence's final state and cell ``[B, H]``; x ``[B, S, E]`` sorted longest first."""
    batch, padded_length, _ = x.shape
    state = cell = x.new_zeros(1, batch, weights[1].size(1))
    pieces, final_states, final_cells = [], [], []
    for i, (rows, start, end) in enumerate(segments):
        # arguments after the weights: biases, layers, dropout, train (keep what the backward
        # needs), bidirectional, batch first
        out, state, cell = torch.lstm(x[:rows, start:end], (state[:, :rows], cell[:, :rows]),
                                      weights, True, 1, 0.0, torch.is_grad_enabled(), False, True)
        pieces.append(F.pad(out, (0, 0, 0, 0, 0, batch - rows)))      # rows past the segment: 0
        running = segments[i + 1].rows if i + 1 < len(segments) else 0
        final_states.append(state[0, running:rows])                   # the rows that end here
        final_cells.append(cell[0, running:rows])
    states = torch.cat(pieces, dim=1)
    states = F.pad(states, (0, 0, 0, padded_length - states.size(1)))  # steps past the longest
    # the sentences ended shortest first, i.e. from the last sorted row up
    return states, torch.cat(final_states[::-1]), torch.cat(final_cells[::-1])
