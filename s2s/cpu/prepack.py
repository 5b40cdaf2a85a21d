"""Decoding modules on the CPU with their weights reordered once into oneDNN's blocked layout.

Search multiplies the same weights by a few dozen rows hundreds of times; oneDNN's linear with
its weight reordered ahead of time runs those products markedly faster than torch's (MKL's)
product (docs/performance.md), and the reordering pays for itself in the first batch. The
arithmetic is the same fp32 model; only the order of the sums differs, so scores agree to
float rounding.

The modules here wrap the originals and fall back to them whenever gradients are on, in training
mode or for inputs they were not built for; they are for models that only decode: the packed
copies do not follow later changes to the weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from s2s.cpu.products import onednn_linear

ROWS_HINT = 64  # oneDNN picks its blocking for about this many rows
ROW_MULTIPLE = 8  # decoding products' row counts are padded to a multiple of this


def packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x ``[N, in]`` Wᵀ + b → ``[N, out]`` with W from :func:`pack`.

    N is padded to a multiple of :data:`ROW_MULTIPLE` with zero rows: oneDNN prepares one
    primitive per row count, and a decoding process keeps only a few
    (:func:`s2s.cpu.allocator.configure_decoding_process`); greedy search's streams run at every
    row count from ¾ of the batch to all of it, and padded they meet a few instead of many.
    """
    rows = x.size(0)
    extra = (-rows) % ROW_MULTIPLE
    if not extra:
        return onednn_linear(x, packed, bias)
    return onednn_linear(torch.cat([x, x.new_zeros(extra, x.size(1))]), packed, bias)[:rows]


def pack(weight: Tensor) -> Tensor:
    """``[out, in]`` weight → oneDNN's blocked layout (an opaque tensor only
    :func:`packed_linear` reads)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)


def decoding_fast_path(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module`` decodes ``x`` on the prepacked path: eval mode, no gradients, a
    non-empty float32 CPU tensor."""
    return (not module.training and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.numel() > 0)


class PrepackedLinear(nn.Module):
    """y = x Wᵀ + b, ``[..., in]`` → ``[..., out]``, for inference; the wrapped
    :class:`~torch.nn.Linear` still serves the gradient path."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self._packed = pack(linear.weight)
        self._bias = None if linear.bias is None else linear.bias.detach()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        if not decoding_fast_path(self, x):
            return self.linear(x)
        flat = x.reshape(-1, x.size(-1)).contiguous()
        out = packed_linear(flat, self._packed, self._bias)
        return out.reshape(*x.shape[:-1], out.size(-1))


def gate_order(size: int) -> Tensor:
    """Row order taking torch's LSTM gates (i f g o) to i f o g: the three sigmoid gates
    become one contiguous block."""
    return torch.cat([torch.arange(0, 2 * size), torch.arange(3 * size, 4 * size),
                      torch.arange(2 * size, 3 * size)])


class PrepackedLSTM(nn.Module):
    """A batch-first, unidirectional :class:`~torch.nn.LSTM` for one-step inputs
    ``[B, 1, I]`` (what search feeds the decoder), each layer one product with its two weight
    matrices joined once:

        [i f o g] = [x; h(t-1)] [W_ih W_hh]ᵀ + b_ih + b_hh      (gate rows reordered so the
        c(t) = σ(f) ⊙ c(t-1) + σ(i) ⊙ tanh(g)                    three sigmoid gates are one
        h(t) = σ(o) ⊙ tanh(c(t))                                 contiguous block)

    The product is oneDNN's, with the joined weight prepacked like :class:`PrepackedLinear`'s
    (much faster than MKL's at the few rows of a greedy batch's last steps). Longer inputs,
    training mode and gradients go to the wrapped LSTM.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if not lstm.batch_first or lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError("PrepackedLSTM takes a batch-first, unidirectional LSTM with "
                             "biases and no projection")
        self.lstm = lstm
        self.layers = [self.joined_layer(layer) for layer in range(lstm.num_layers)]

    def joined_layer(self, layer: int, input_columns: Optional[slice] = None) -> tuple[Tensor,
                                                                                        Tensor]:
        """Layer ``layer``'s [W_ih W_hh] ``[4H, I + H]``, prepacked (:func:`pack`), and
        b_ih + b_hh ``[4H]``, gates in i f o g order; ``input_columns``: only these columns of
        W_ih."""
        lstm = self.lstm
        order = gate_order(lstm.hidden_size)
        input_weight = getattr(lstm, f"weight_ih_l{layer}").detach()
        if input_columns is not None:
            input_weight = input_weight[:, input_columns]
        weight = torch.cat([input_weight, getattr(lstm, f"weight_hh_l{layer}").detach()], dim=1)
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        return pack(weight[order]), bias.detach()[order].contiguous()

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor,
                                                                        tuple[Tensor, Tensor]]:
        """x ``[B, 1, I]``, (h, c) ``[L, B, D]`` → output ``[B, 1, D]``, (h, c) ``[L, B, D]``."""
        if not decoding_fast_path(self, x) or x.size(1) != 1:
            return self.lstm(x, state)
        output, hidden, cell = self.step(x[:, 0], *state)
        return output.unsqueeze(1), (hidden, cell)

    def step(self, x: Tensor, hidden: Tensor, cell: Tensor,
             first_layer: Optional[tuple[Tensor, Tensor]] = None,
             first_gates: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor]:
        """x ``[B, I]``, h, c ``[L, B, D]`` → top output ``[B, D]``, new h, c ``[L, B, D]``.

        ``first_layer`` replaces the first layer's joined weight and bias (one built by
        :meth:`joined_layer` for fewer input columns), and ``first_gates [B, 4H]`` (i f o g)
        is added to its gates: the product of the columns left out, computed elsewhere.
        """
        size = self.lstm.hidden_size
        layers = self.layers if first_layer is None else [first_layer, *self.layers[1:]]
        layer_input = x
        hiddens, cells = [], []
        for layer, (weight, bias) in enumerate(layers):
            gates = packed_linear(torch.cat([layer_input, hidden[layer]], dim=1), weight, bias)
            if layer == 0 and first_gates is not None:
                gates += first_gates
            gates[:, :3 * size].sigmoid_()
            gates[:, 3 * size:].tanh_()
            in_gate, forget, out_gate, candidate = gates.split(size, dim=1)
            new_cell = torch.addcmul(forget * cell[layer], in_gate, candidate)
            layer_input = out_gate * torch.tanh(new_cell)
            hiddens.append(layer_input)
            cells.append(new_cell)
        return layer_input, torch.stack(hiddens), torch.stack(cells)
