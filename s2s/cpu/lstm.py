"""LSTMs on the CPU, and the pieces the CPU backend's recurrences share.

* :func:`step_product`: x·Wᵀ for the few rows of one recurrence step, on the faster kernel.
* :func:`lstm_cell` and :func:`lstm_cell_backward`: one LSTM cell, forward and backward by hand,
  gates in ``nn.LSTM``'s order i, f, g, o.
* The encoder's (bi)LSTM, two ways, each equal to ``nn.LSTM`` over packed sequences (which on
  the CPU projects every step's input separately and leaves a per-step graph for autograd):
  :func:`segmented_lstm` runs oneDNN's fused RNN over runs of sentences without padding;
  :func:`packed_lstm` (float64, builds without oneDNN) projects all tokens of both directions
  in one product, runs only W_hh s(t-1) step by step and sums ∂W_hh once.
  :func:`run_encoder_lstm` picks one for ``Encoder.run_lstm``.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from s2s.cpu.products import linear, on_onednn
from s2s.model.encoder import run_packed


def step_product(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x·Wᵀ (+ b) ``[B, out]`` for the few rows of one step, x ``[B, in]``, W ``[out, in]``.

    On oneDNN (:mod:`s2s.cpu.products`) this is its linear, much faster than MKL's product at a
    few rows. Otherwise on the CPU (float64, a build without oneDNN, an Intel CPU) it is
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


def lstm_cell(gates: Tensor, cell: Tensor, activations_out: Tensor, cell_out: Tensor,
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


def lstm_cell_backward(grad_state: Tensor, grad_cell: Tensor, activations: Tensor,
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
            lstm_cell(gates, previous_cell, activations_out=activations[:, here],
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
            grad_previous_cell = lstm_cell_backward(grad_state, grad_cell, activations[:, here],
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
    cell of :func:`lstm_cell`. The input projection runs once for all N tokens; only the
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
    a batch without padding it runs as one fused oneDNN RNN, forward and backward, several times
    faster (docs/performance.md). So the sentences,
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


# ------------------------------------------------------- the seam Encoder.run_lstm on the CPU
def encoder_path(lstm: nn.Module, embedded: Tensor) -> str:
    """How :func:`run_encoder_lstm` runs ``lstm`` over ``embedded``: "fused"
    (:func:`segmented_lstm`: float32 where torch has oneDNN), "by hand" (:func:`packed_lstm`:
    with gradients otherwise) or "plain" (the model's own ``run_packed``: no gradient
    otherwise, another device, an int8 LSTM with no float weights to hand over)."""
    if (embedded.device.type != "cpu" or type(lstm) is not nn.LSTM or not lstm.bias
            or lstm.proj_size or not lstm.batch_first):
        return "plain"
    if fused_rnn_available() and lstm.weight_ih_l0.dtype == torch.float32:
        return "fused"
    return "by hand" if torch.is_grad_enabled() else "plain"


def run_encoder_lstm(lstm: nn.LSTM, embedded: Tensor,
                     lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The seam ``Encoder.run_lstm`` on the CPU: ``run_packed``'s result (states
    ``[B, S, D·H]``, zero on padding; the top layer's final state and cell ``[B, D·H]``) by
    the path :func:`encoder_path` picks."""
    path = encoder_path(lstm, embedded)
    if path == "fused":
        return segmented_lstm(embedded, lengths, lstm, lstm.training)
    if path == "by hand":
        return _packed_by_hand(lstm, embedded, lengths)
    return run_packed(lstm, embedded, lengths)


def _packed_by_hand(lstm: nn.LSTM, embedded: Tensor,
                    lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``lstm`` layer by layer through :func:`packed_lstm`, both directions at once."""
    batch, padded_length, _ = embedded.shape
    directions = 2 if lstm.bidirectional else 1
    layout = packed_layout(lengths, padded_length, embedded.device)
    which = torch.cat([layout.forward_index, layout.reverse_index][:directions])    # [D·N]
    direction = torch.repeat_interleave(torch.arange(directions, device=which.device),
                                        layout.forward_index.numel())
    flat = embedded.reshape(batch * padded_length, -1)
    for layer in range(lstm.num_layers):
        if layer:
            flat = F.dropout(flat, lstm.dropout, lstm.training)
        weights = [lstm_layer_weights(lstm, layer, d) for d in range(directions)]
        input_weight, recurrent_weight, input_bias, recurrent_bias = (
            torch.stack(tensors) for tensors in zip(*weights))
        inputs = flat.index_select(0, which).view(directions, -1, flat.size(1))
        states, cells = packed_lstm(inputs, layout, input_weight, input_bias + recurrent_bias,
                                    recurrent_weight)
        size = states.size(2)
        flat = flat.new_zeros(batch * padded_length, directions, size).index_put(
            (which, direction), states.reshape(-1, size)).view(batch * padded_length, -1)
    final_hidden = states[:, layout.final_rows].transpose(0, 1).reshape(batch, -1)
    final_cell = cells[:, layout.final_rows].transpose(0, 1).reshape(batch, -1)
    return flat.view(batch, padded_length, -1), final_hidden, final_cell
