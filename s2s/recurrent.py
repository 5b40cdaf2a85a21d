"""A one-layer LSTM stepped by hand, for teacher-forced training of the Bahdanau decoder.

At step t the decoder LSTM reads [E·y(t-1); a(t)], and a(t) depends on s(t-1), so the layer
must run one step at a time. Calling ``nn.LSTM`` once per step works, but each call multiplies
a small batch by the whole input matrix and, in backward, computes and accumulates a full
weight gradient from that small batch. :class:`SteppedLSTM` runs the same equations

    gates(t) = W_e·E y(t-1) + [W_a, W_hh]·[a(t); s(t-1)] + b_ih + b_hh
    c(t) = σ(f)⊙c(t-1) + σ(i)⊙tanh(g),   s(t) = σ(o)⊙tanh(c(t))      (gates = i, f, g, o)

with the parameters of that ``nn.LSTM`` but (1) W_e·E y for all steps as one large product
before the loop, and (2) the weight gradient of [W_a, W_hh] deferred: each step's backward only
files its (∂L/∂gates, input) pair, and the step that ran first — whose backward autograd runs
last — sums them as one large product ∂W = Σ_t ∂gates(t)ᵀ·[a(t); s(t-1)].
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn


class _DeferredWeightLinear(torch.autograd.Function):
    """y = x·Wᵀ for one step; ∂L/∂W is returned once, by the first step, for all steps."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, ledger: list[tuple[Tensor, Tensor]],
                first: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x, weight)
        ctx.ledger, ctx.first = ledger, first
        return x @ weight.t()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Optional[Tensor], None, None]:  # type: ignore[override]
        x, weight = ctx.saved_tensors
        ctx.ledger.append((grad, x))
        weight_grad = None
        if ctx.first:  # every later step has filed its pair by now
            grads, inputs = zip(*ctx.ledger)
            ctx.ledger.clear()
            weight_grad = torch.cat(grads).t() @ torch.cat(inputs)
        return grad @ weight, weight_grad, None, None


class SteppedLSTM:
    """One pass over a sequence with a one-layer, unidirectional ``lstm``'s parameters.

    ``start(known [B, T, E], hidden, cell)`` projects the inputs known in advance (the
    embedded targets) for all T steps; ``step(t, extra [B, C])`` then advances one step with the
    input computed on the way (the context) and returns s(t) ``[B, H]``.
    """

    def __init__(self, lstm: nn.LSTM, known_size: int) -> None:
        if lstm.num_layers != 1 or lstm.bidirectional or not lstm.bias:
            raise ValueError("SteppedLSTM needs a one-layer, unidirectional LSTM with biases")
        self.lstm = lstm
        self.known_size = known_size

    def start(self, known: Tensor, hidden: Tensor, cell: Tensor) -> None:
        """known ``[B, T, E]``; hidden, cell ``[B, H]`` (the initial state)."""
        w_ih, w_hh = self.lstm.weight_ih_l0, self.lstm.weight_hh_l0
        bias = self.lstm.bias_ih_l0 + self.lstm.bias_hh_l0
        known_gates = torch.addmm(bias, known.flatten(0, 1), w_ih[:, :self.known_size].t())
        # unbind, not [:, t] per step: its backward stacks all steps' gradients at once instead
        # of zero-filling and accumulating a [B, T, 4H] tensor at every step
        self.known_gates = known_gates.view(*known.shape[:2], -1).unbind(1)
        self.recurrent_weight = torch.cat([w_ih[:, self.known_size:], w_hh], dim=1)
        self.hidden, self.cell = hidden, cell
        self.ledger: list[tuple[Tensor, Tensor]] = []

    def step(self, t: int, extra: Tensor) -> Tensor:
        """Advance from s(t-1) with the step's ``extra [B, C]`` input; returns s(t)."""
        x = torch.cat([extra, self.hidden], dim=1)
        if torch.is_grad_enabled() and self.recurrent_weight.requires_grad:
            recurrent = _DeferredWeightLinear.apply(x, self.recurrent_weight, self.ledger, t == 0)
        else:
            recurrent = x @ self.recurrent_weight.t()
        gates = self.known_gates[t] + recurrent
        input_forget, candidate, output = gates.split([2 * self.lstm.hidden_size,
                                                       self.lstm.hidden_size,
                                                       self.lstm.hidden_size], dim=1)
        input_gate, forget_gate = torch.sigmoid(input_forget).chunk(2, dim=1)
        self.cell = forget_gate * self.cell + input_gate * torch.tanh(candidate)
        self.hidden = torch.sigmoid(output) * torch.tanh(self.cell)
        return self.hidden
