"""Beam search on the CPU with the context's products folded into the memory."""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from s2s.cpu.prepack import PrepackedLSTM, decoding_fast_path, gate_order, pack, packed_linear
from s2s.model.decoder import Decoder, DecoderState, Memory


class FoldedMemory(Memory):
    """A :class:`~s2s.model.decoder.Memory` whose ``values`` are the encoder states already
    multiplied by the weights that take the context in (``[B, S, (4D +) A]``, see
    :class:`ContextFolding`): attending to them gives those products of a(t) directly. Only
    :meth:`ContextFolding.step` reads one."""

    __slots__ = ()


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
    C·(4D + A) for the products (on Multi30k S is a few dozen at most, C 512). The fold itself
    costs S·C·(4D + A) per sentence, so it pays when several rows attend to each sentence: beam
    search, not greedy search. Same model, same arithmetic but for the order of the sums;
    scores agree to float rounding.

    Built by :class:`~s2s.cpu.decoding.CpuDecoding` for a decoder with a prepacked LSTM whose
    attention declares ``weighted_values``; it hands this class the steps over a
    :class:`FoldedMemory`. Decoding only: the weights are copies taken when it is built.
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
            gate_rows = gate_order(decoder.hidden_size)
            consumers.append(lstm.lstm.weight_ih_l0.detach()[:, inputs - context:][gate_rows])
            self.first_layer = lstm.joined_layer(0, slice(0, inputs - context))
            self.gate_width = 4 * decoder.hidden_size
        consumers.append(weight[:, :context])
        self.values_weight = torch.cat(consumers)                 # [(4D +) A, C]
        self.state_weight = pack(weight[:, context:])             # [A, D]
        self.bias = None if bias is None else bias.detach().clone()

    def applies(self, decoder: Decoder, values: Tensor) -> bool:
        """Whether :meth:`fold` serves these attention values ``[B, S, C]``, and :meth:`step`
        the folded ones (decoding on the CPU in fp32: eval mode, no gradients)."""
        return decoding_fast_path(decoder, values) and values.dim() == 3

    def fold(self, memory: Memory) -> FoldedMemory:
        """``memory`` with its values ``[B, S, C]`` multiplied by [W_ia; W_va]:
        ``[B, S, (4D +) A]``."""
        values = memory.values
        return FoldedMemory(memory.keys, values @ self.values_weight.t(), memory.mask)

    def step(self, decoder: Decoder, prev_tokens: Tensor, state: DecoderState,
             memory: FoldedMemory, rows_per_sentence: int) -> tuple[Tensor, DecoderState,
                                                                   Tensor]:
        """:meth:`Decoder.step <s2s.model.decoder.Decoder.step>` over a folded memory (eval
        mode): ṽ(t) ``[B, A]``, the new state, α(t) ``[B, S]``."""
        embedded = decoder.embedding(prev_tokens)
        inputs = torch.cat([embedded, state.feed], dim=1) if decoder.input_feeding else embedded
        if self.context_feeds_lstm:  # α from s(t-1); attended: W_ia a(t) and W_va a(t)
            attended, weights = decoder.attend(state.hidden[-1], memory, rows_per_sentence)
            output, hidden, cell = self.lstm.step(inputs, state.hidden, state.cell,
                                                  self.first_layer, attended[:, :self.gate_width])
            attended = attended[:, self.gate_width:]
        else:                        # α from s(t); attended: W_va a(t)
            output, hidden, cell = self.lstm.step(inputs, state.hidden, state.cell)
            attended, weights = decoder.attend(output, memory, rows_per_sentence)
        vector = packed_linear(output, self.state_weight, self.bias).add_(attended)
        if decoder.attentional_tanh:
            vector = torch.tanh(vector)
        feed = vector if decoder.input_feeding else state.feed
        return vector, DecoderState(hidden, cell, feed), weights
