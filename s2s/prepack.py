"""Faster fp32 decoding on the CPU: weights reordered once into oneDNN's blocked layout.

Search multiplies the same weights by a few dozen rows hundreds of times. torch's CPU matrix
product (MKL's sgemm) runs the output projection, ``[64, 512] × [512, 8001]``, at about 100
GFLOP/s on these 2-core machines; oneDNN's linear with its weight reordered ahead of time runs
it at about 150 (docs/benchmarks.md). Reordering once per loaded model pays for itself in the
first batch. Beam search moreover multiplies the encoder states by the weights that take the
attention's context in, once per sentence, instead of multiplying each beam's context by them
at every step (:class:`ContextFolding`). The arithmetic is the same fp32 model; only the order
of the sums differs, so scores agree to float rounding.

Swapped-in modules fall back to the original ones whenever gradients are on, in training mode
or for inputs they were not built for, so a prepacked model still trains and tests correctly.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor, nn

from s2s.decoder import Decoder, DecoderState, FoldedMemory, Memory
from s2s.model import Seq2Seq
from s2s.products import onednn_available, onednn_linear

ROWS_HINT = 64  # oneDNN picks its blocking for about this many rows
ROW_MULTIPLE = 8  # decoding products' row counts are padded to a multiple of this


def prepack_available() -> bool:
    """Whether this torch build has oneDNN's prepacked linear on the CPU."""
    return onednn_available()


def _packed_linear(x: Tensor, packed: Tensor, bias: Optional[Tensor]) -> Tensor:
    """x ``[N, in]`` Wᵀ + b → ``[N, out]`` with W from :func:`_pack`.

    N is padded to a multiple of :data:`ROW_MULTIPLE` with zero rows: oneDNN prepares one
    primitive per row count, and a decoding process keeps only a few
    (:func:`s2s.allocator.configure_decoding_process`); greedy search's streams run at every row
    count from ¾ of the batch to all of it, and padded they meet 3 instead of 17 (greedy
    1.09×, same peak memory; docs/benchmarks.md, "Eighth round").
    """
    rows = x.size(0)
    extra = (-rows) % ROW_MULTIPLE
    if not extra:
        return onednn_linear(x, packed, bias)
    return onednn_linear(torch.cat([x, x.new_zeros(extra, x.size(1))]), packed, bias)[:rows]


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


def _gate_order(size: int) -> Tensor:
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

    The product is oneDNN's, with the joined weight prepacked like :class:`PrepackedLinear`'s:
    on the AVX-512 hosts of December 2026 it ran the step 1.4× faster than MKL at 64 rows and
    5× at a few rows, where a greedy batch's last steps are (docs/benchmarks.md, "Eighth
    round"). Longer inputs, training mode and gradients go to the wrapped LSTM.
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
        """Layer ``layer``'s [W_ih W_hh] ``[4H, I + H]``, prepacked (:func:`_pack`), and
        b_ih + b_hh ``[4H]``, gates in i f o g order; ``input_columns``: only these columns of
        W_ih."""
        lstm = self.lstm
        order = _gate_order(lstm.hidden_size)
        input_weight = getattr(lstm, f"weight_ih_l{layer}").detach()
        if input_columns is not None:
            input_weight = input_weight[:, input_columns]
        weight = torch.cat([input_weight, getattr(lstm, f"weight_hh_l{layer}").detach()], dim=1)
        bias = getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")
        return _pack(weight[order]), bias.detach()[order].contiguous()

    def forward(self, x: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor,
                                                                        tuple[Tensor, Tensor]]:
        """x ``[B, 1, I]``, (h, c) ``[L, B, D]`` → output ``[B, 1, D]``, (h, c) ``[L, B, D]``."""
        if not _fast_path(self, x) or x.size(1) != 1:
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
            gates = _packed_linear(torch.cat([layer_input, hidden[layer]], dim=1), weight, bias)
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


class ContextFolding:
    """Beam search's products of the context a(t) moved into the memory, once per sentence.

    a(t) = Σᵢ α(t)ᵢ h(i) reaches the rest of a step only through matrix products: the
    attentional layer's ṽ(t) = W_v [a(t); s(t)] + b = W_va a(t) + W_vs s(t) + b, and with
    Bahdanau attention the LSTM's input weights W_ia of its a(t) columns. Since

        W a(t) = Σᵢ α(t)ᵢ (W h(i)),

    multiplying the encoder states by W = [W_ia; W_va] once per batch (``[B, S, (4D +) A]``
    with D the decoder's hidden size, A its attentional size, C the context size;
    :meth:`fold`) lets every step attend to the products directly. Per beam row and step the
    weighted sum then costs S·(4D + A) multiply-adds where the plain step paid S·C for it and
    C·(4D + A) for the products (S ≈ 15 against C = 512 on Multi30k). The fold itself costs
    S·C·(4D + A) per sentence, so it pays when several rows attend to each sentence: beam
    search, not greedy search. Same model, same arithmetic but for the order of the sums;
    scores agree to float rounding.

    Built by :func:`prepack_for_cpu` for a decoder whose attention has
    ``context_is_weighted_values``; :meth:`Decoder.step <s2s.decoder.Decoder.step>` hands
    it the steps over a :class:`~s2s.decoder.FoldedMemory`. Decoding only: the weights are
    copies taken when it is built.
    """

    def __init__(self, decoder: Decoder, lstm: PrepackedLSTM) -> None:
        context = decoder.attention.context_size
        weight = decoder.attentional.weight.detach()             # [A, C + D]
        bias = decoder.attentional.bias
        self.lstm = lstm
        # Bahdanau: a(t) is the last C columns of the first LSTM layer's input
        self.context_feeds_lstm = decoder.attention.uses_previous_state
        self.first_layer: Optional[tuple[Tensor, Tensor]] = None
        self.gate_width = 0
        consumers = []
        if self.context_feeds_lstm:
            inputs = lstm.lstm.input_size
            gate_rows = _gate_order(decoder.hidden_size)
            consumers.append(lstm.lstm.weight_ih_l0.detach()[:, inputs - context:][gate_rows])
            self.first_layer = lstm.joined_layer(0, slice(0, inputs - context))
            self.gate_width = 4 * decoder.hidden_size
        consumers.append(weight[:, :context])
        self.values_weight = torch.cat(consumers)                 # [(4D +) A, C]
        self.state_weight = _pack(weight[:, context:])            # [A, D]
        self.bias = None if bias is None else bias.detach().clone()

    def applies(self, decoder: Decoder, values: Tensor) -> bool:
        """Whether :meth:`fold` serves these attention values ``[B, S, C]``, and :meth:`step`
        the folded ones (decoding on the CPU in fp32: eval mode, no gradients)."""
        return _fast_path(decoder, values) and values.dim() == 3

    def fold(self, memory: Memory) -> FoldedMemory:
        """``memory`` with its values ``[B, S, C]`` multiplied by [W_ia; W_va]:
        ``[B, S, (4D +) A]``."""
        values = memory.values
        return FoldedMemory(memory.keys, values @ self.values_weight.t(), memory.mask)

    def step(self, decoder: Decoder, prev_tokens: Tensor, state: DecoderState,
             memory: FoldedMemory, rows_per_sentence: int) -> tuple[Tensor, DecoderState,
                                                                   Tensor]:
        """:meth:`Decoder.step <s2s.decoder.Decoder.step>` over a folded memory (eval mode):
        ṽ(t) ``[B, A]``, the new state, α(t) ``[B, S]``."""
        embedded = decoder.embedding(prev_tokens)
        inputs = torch.cat([embedded, state.feed], dim=1) if decoder.input_feeding else embedded
        if self.context_feeds_lstm:  # α from s(t-1); attended: W_ia a(t) and W_va a(t)
            attended, weights = decoder._attend(state.hidden[-1], memory, rows_per_sentence)
            output, hidden, cell = self.lstm.step(inputs, state.hidden, state.cell,
                                                  self.first_layer, attended[:, :self.gate_width])
            attended = attended[:, self.gate_width:]
        else:                        # α from s(t); attended: W_va a(t)
            output, hidden, cell = self.lstm.step(inputs, state.hidden, state.cell)
            attended, weights = decoder._attend(output, memory, rows_per_sentence)
        vector = _packed_linear(output, self.state_weight, self.bias).add_(attended)
        if decoder.attentional_tanh:
            vector = torch.tanh(vector)
        feed = vector if decoder.input_feeding else state.feed
        return vector, DecoderState(hidden, cell, feed), weights


def prepack_for_cpu(model: Seq2Seq) -> Seq2Seq:
    """Swap the decoder's LSTM and every linear layer with more than one output (output
    projection, attentional layer, attention projections, bridges; not the Bahdanau energy
    wᵀ, a matrix-vector product) for the prepacked modules above, in place, and give the
    decoder a :class:`ContextFolding` for beam search where its attention allows. For decoding
    only: the packed copies do not follow later changes to the weights."""
    for parent in list(model.modules()):
        if isinstance(parent, (PrepackedLinear, PrepackedLSTM)):
            continue  # already swapped
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear) and child.out_features > 1:
                setattr(parent, name, PrepackedLinear(child).train(child.training))
    decoder = model.decoder
    if isinstance(decoder.rnn, nn.LSTM):
        decoder.rnn = PrepackedLSTM(decoder.rnn).train(decoder.rnn.training)
    if isinstance(decoder.rnn, PrepackedLSTM) and decoder.attention.context_is_weighted_values:
        decoder.folding = ContextFolding(decoder, decoder.rnn)
    return model
