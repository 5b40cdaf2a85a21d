"""Faster fp32 decoding on the CPU: weights reordered once into oneDNN's blocked layout.

Search multiplies the same weights by a few dozen rows hundreds of times. torch's CPU matrix
product (MKL's sgemm) runs the output projection, ``[64, 512] × [512, 8001]``, at about 100
GFLOP/s on these 2-core machines; oneDNN's linear with its weight reordered ahead of time runs
it at about 150 (docs/benchmarks.md). Reordering once per loaded model pays for itself in the
first batch. The arithmetic is the same fp32 model; only the order of the sums differs, so
scores agree to float rounding.

Swapped-in modules fall back to the original ones whenever gradients are on, in training mode
or for inputs they were not built for, so a prepacked model still trains and tests correctly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from s2s.model import Seq2Seq
from s2s.recurrent import step_product

ROWS_HINT = 64  # oneDNN picks its blocking for about this many rows


def prepack_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear on the CPU."""
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight"))


def _packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x ``[N, in]`` Wᵀ + b → ``[N, out]`` with W from :func:`_pack`."""
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


def _pack(weight: Tensor) -> Tensor:
    """``[out, in]`` weight → oneDNN's blocked layout (an opaque tensor only
    :func:`_packed_linear` reads)."""
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), ROWS_HINT)


def _fast_path(module: nn.Module, x: Tensor) -> bool:
    return (not module.training and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and x.numel() > 0)


class PrepackedLinear(nn.Module):
    """y = x Wᵀ + b, ``[..., in]`` → ``[..., out]``, for inference; the wrapped
    :class:`~torch.nn.Linear` still serves the gradient path."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.linear = linear
        self._packed = _pack(linear.weight)
        self._bias = None if linear.bias is None else linear.bias.detach()

    @property
    def weight(self) -> Tensor:
        return self.linear.weight

    @property
    def bias(self) -> Optional[Tensor]:
        return self.linear.bias

    def forward(self, x: Tensor) -> Tensor:
        if not _fast_path(self, x):
            return self.linear(x)
        flat = x.reshape(-1, x.size(-1)).contiguous()
        out = _packed_linear(flat, self._packed, self._bias)
        return out.reshape(*x.shape[:-1], out.size(-1))


class PrepackedLSTM(nn.Module):
    """A batch-first, unidirectional :class:`~torch.nn.LSTM` for one-step inputs
    ``[B, 1, I]`` (what search feeds the decoder), each layer one product with its two weight
    matrices joined once:

        [i f o g] = [x; h(t-1)] [W_ih W_hh]ᵀ + b_ih + b_hh      (gate rows reordered so the
        c(t) = σ(f) ⊙ c(t-1) + σ(i) ⊙ tanh(g)                    three sigmoid gates are one
        h(t) = σ(o) ⊙ tanh(c(t))                                 contiguous block)

    The product is a :func:`~s2s.recurrent.step_product` (MKL beats oneDNN here at beam
    sizes; ``scripts/bench_kernels.py``). Longer inputs, training mode and gradients go to the
    wrapped LSTM.
    """

    def __init__(self, lstm: nn.LSTM) -> None:
        super().__init__()
        if not lstm.batch_first or lstm.bidirectional or lstm.proj_size or not lstm.bias:
            raise ValueError("PrepackedLSTM takes a batch-first, unidirectional LSTM with "
                             "biases and no projection")
        self.lstm = lstm
        size = lstm.hidden_size
        order = torch.cat([torch.arange(0, 2 * size), torch.arange(3 * size, 4 * size),
                           torch.arange(2 * size, 3 * size)])     # torch's i f g o → i f o g
        self._layers: list[tuple[Tensor, Tensor]] = []
        for layer in range(lstm.num_layers):
            weight = torch.cat([getattr(lstm, f"weight_ih_l{layer}"),
                                getattr(lstm, f"weight_hh_l{layer}")], dim=1)
            bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
            self._layers.append((weight.detach()[order].contiguous(),
                                 bias.detach()[order].contiguous()))

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor,
                                                                        tuple[Tensor, Tensor]]:
        """x ``[B, 1, I]``, (h, c) ``[L, B, D]`` → output ``[B, 1, D]``, (h, c) ``[L, B, D]``."""
        if not _fast_path(self, x) or x.size(1) != 1:
            return self.lstm(x, state)
        hidden, cell = state
        size = self.lstm.hidden_size
        layer_input = x[:, 0]
        hiddens, cells = [], []
        for layer, (weight, bias) in enumerate(self._layers):
            gates = step_product(torch.cat([layer_input, hidden[layer]], dim=1), weight, bias)
            gates[:, :3 * size].sigmoid_()
            gates[:, 3 * size:].tanh_()
            in_gate, forget, out_gate, candidate = gates.split(size, dim=1)
            new_cell = torch.addcmul(forget * cell[layer], in_gate, candidate)
            layer_input = out_gate * torch.tanh(new_cell)
            hiddens.append(layer_input)
            cells.append(new_cell)
        return layer_input.unsqueeze(1), (torch.stack(hiddens), torch.stack(cells))


def prepack_for_cpu(model: Seq2Seq) -> Seq2Seq:
    """Swap the decoder's LSTM and every linear layer with more than one output (output
    projection, attentional layer, attention projections, bridges; not the Bahdanau energy
    wᵀ, a matrix-vector product) for the prepacked modules above, in place. For decoding only:
    the packed copies do not follow later changes to the weights."""
    for parent in list(model.modules()):
        if isinstance(parent, (PrepackedLinear, PrepackedLSTM)):
            continue  # already swapped
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.out_features > 1:
                setattr(parent, name, PrepackedLinear(child).train(child.training))
    decoder = model.decoder
    if isinstance(decoder.rnn, nn.LSTM):
        decoder.rnn = PrepackedLSTM(decoder.rnn).train(decoder.rnn.training)
    return model
