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


def step_product(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x·Wᵀ (+ b) ``[B, out]`` for the few rows of one step, x ``[B, in]``, W ``[out, in]``.

    On the CPU this is computed as (W·xᵀ)ᵀ with B padded to a multiple of 8: MKL runs that
    orientation 20–35% faster than torch's x·Wᵀ when B is such a multiple, and up to 15%
    slower when it is not (``scripts/bench_kernels.py``, docs/benchmarks.md). The result is a
    column-major view, which element-wise operations and later products take as they are.
    """
    if x.device.type != "cpu":
        return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    rows = x.size(0)
    if rows % 8:
        x = torch.cat([x, x.new_zeros(8 - rows % 8, x.size(1))])
    product = (torch.mm(weight, x.t()) if bias is None
               else torch.addmm(bias.unsqueeze(1), weight, x.t()))
    return product.t()[:rows]


class _DeferredWeightLinear(torch.autograd.Function):
    """y = x·Wᵀ for one step; ∂L/∂W is returned once, by the first step, for all steps."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, weight_t: Tensor,
                ledger: list[tuple[Tensor, Tensor]], first: bool) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        ctx.weight_t, ctx.ledger, ctx.first = weight_t, ledger, first
        return step_product(x, weight)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Optional[Tensor], None, None, None]:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        ctx.ledger.append((grad, x))
        weight_grad = None
        if ctx.first:  # every later step has filed its pair by now
            grads, inputs = zip(*ctx.ledger)
            ctx.ledger.clear()
            weight_grad = torch.cat(grads).t() @ torch.cat(inputs)
        return step_product(grad, ctx.weight_t), weight_grad, None, None, None


class StepLinear:
    """x ↦ x·Wᵀ (no bias) for the steps of one recurrence, x ``[B, in]`` → ``[B, out]``.

    Each call is a :func:`step_product`. With gradients on, a call's backward only files its
    (∂L/∂y, x) pair and the first call's backward — which autograd runs last, because each
    call's input depends on the previous call's output — returns ∂W = Σ_t ∂y(t)ᵀ·x(t) as one
    large product instead of one small product per step. So: one instance per sequence, and
    only for a weight used in a recurrence.
    """

    def __init__(self, weight: Tensor) -> None:
        self.weight = weight
        self.deferred = torch.is_grad_enabled() and weight.requires_grad
        # Wᵀ laid out for the backward's ∂L/∂x = ∂L/∂y·W, itself a step_product
        self.weight_t = weight.detach().t().contiguous() if self.deferred else weight
        self.ledger: list[tuple[Tensor, Tensor]] = []
        self.calls = 0

    def __call__(self, x: Tensor) -> Tensor:
        first, self.calls = self.calls == 0, self.calls + 1
        if self.deferred and torch.is_grad_enabled():
            return _DeferredWeightLinear.apply(x, self.weight, self.weight_t, self.ledger, first)
        return step_product(x, self.weight)


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
        self.recurrent = StepLinear(torch.cat([w_ih[:, self.known_size:], w_hh], dim=1))
        self.hidden, self.cell = hidden, cell

    def step(self, t: int, extra: Tensor) -> Tensor:
        """Advance from s(t-1) with the step's ``extra [B, C]`` input; returns s(t)."""
        recurrent = self.recurrent(torch.cat([extra, self.hidden], dim=1))
        gates = self.known_gates[t] + recurrent  # row-major, like its first operand
        input_forget, candidate, output = gates.split([2 * self.lstm.hidden_size,
                                                       self.lstm.hidden_size,
                                                       self.lstm.hidden_size], dim=1)
        input_gate, forget_gate = torch.sigmoid(input_forget).chunk(2, dim=1)
        self.cell = forget_gate * self.cell + input_gate * torch.tanh(candidate)
        self.hidden = torch.sigmoid(output) * torch.tanh(self.cell)
        return self.hidden
