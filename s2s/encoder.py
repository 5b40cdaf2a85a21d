"""The recurrent encoder: embeddings and a (bi)LSTM over packed sequences."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s.dropout import Dropout
from s2s.recurrent import (fused_rnn_available, lstm_layer_weights, packed_layout, packed_lstm,
                           segmented_lstm)


class EncoderOutput(NamedTuple):
    """states ``[B, S, output_size]`` (zero on padding); final_hidden / final_cell
    ``[B, output_size]``: the last layer's final states, both directions concatenated."""

    states: Tensor
    final_hidden: Tensor
    final_cell: Tensor


class Encoder(nn.Module):
    """h(1..S) = LSTM(dropout(E·x(1..S))), dropout applied to the outputs as well.

    Sequences are packed, so padding never enters the recurrence: the states of a sentence do
    not depend on how much padding its batch has.
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 bidirectional: bool, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.rnn = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                           bidirectional=bidirectional,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = Dropout(dropout)
        self.num_directions = 2 if bidirectional else 1
        self.output_size = hidden_size * self.num_directions

    def forward(self, src: Tensor, lengths: Tensor, reference: bool = False) -> EncoderOutput:
        """src ``[B, S]`` token ids, lengths ``[B]`` (on the CPU or the device).

        On the CPU in float32 with oneDNN (same parameters, same results to float rounding) the
        LSTM runs as :func:`~s2s.recurrent.segmented_lstm`, oneDNN's fused RNN over runs of
        sentences without padding; on the CPU otherwise (float64, a build without oneDNN) in
        training as :func:`~s2s.recurrent.packed_lstm` (``nn.LSTM`` over packed sequences
        projects every step's input separately and leaves a per-step graph for autograd). On a
        GPU, for an int8 LSTM, or with ``reference``: ``nn.LSTM`` over packed sequences.
        """
        embedded = self.dropout(self.embedding(src))
        path = "module" if reference else self._path(src)
        if path == "fused":
            states, final_hidden, final_cell = segmented_lstm(embedded, lengths, self.rnn,
                                                              self.training)
        elif path == "by hand":
            states, final_hidden, final_cell = self._run_by_hand(embedded, lengths)
        else:
            states, final_hidden, final_cell = self._run_module(embedded, lengths)
        return EncoderOutput(self.dropout(states), final_hidden, final_cell)

    def _path(self, src: Tensor) -> str:
        """How :meth:`forward` runs the LSTM: "fused", "by hand" or "module" (see there). An
        int8 (dynamically quantized) LSTM has no float weights to hand over."""
        if src.device.type != "cpu" or type(self.rnn) is not nn.LSTM:
            return "module"
        if fused_rnn_available() and self.rnn.weight_ih_l0.dtype == torch.float32:
            return "fused"
        return "by hand" if torch.is_grad_enabled() else "module"

    def _run_module(self, embedded: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        packed_out, (h_n, c_n) = self.rnn(packed)
        states, _ = pad_packed_sequence(packed_out, batch_first=True,
                                        total_length=embedded.size(1))
        return states, self._last_layer(h_n), self._last_layer(c_n)

    def _run_by_hand(self, embedded: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """states ``[B, S, D·H]`` (zero on padding) and the top layer's final states."""
        batch, padded_length, _ = embedded.shape
        layout = packed_layout(lengths, padded_length, embedded.device)
        indices = [layout.forward_index, layout.reverse_index][:self.num_directions]
        which = torch.cat(indices)                                            # [D·N]
        direction = torch.repeat_interleave(
            torch.arange(self.num_directions, device=which.device), layout.forward_index.numel())
        flat = embedded.reshape(batch * padded_length, -1)
        for layer in range(self.rnn.num_layers):
            if layer:
                flat = F.dropout(flat, self.rnn.dropout, self.training)
            input_weight, bias, recurrent_weight = self._layer_weights(layer)
            inputs = flat.index_select(0, which).view(self.num_directions, -1, flat.size(1))
            states, cells = packed_lstm(inputs, layout, input_weight, bias, recurrent_weight)
            size = states.size(2)
            flat = flat.new_zeros(batch * padded_length, self.num_directions, size).index_put(
                (which, direction), states.reshape(-1, size)).view(batch * padded_length, -1)
        final_hidden = states[:, layout.final_rows].transpose(0, 1).reshape(batch, -1)
        final_cell = cells[:, layout.final_rows].transpose(0, 1).reshape(batch, -1)
        return flat.view(batch, padded_length, -1), final_hidden, final_cell

    def _layer_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor]:
        """W_ih ``[D, 4H, E]``, b_ih + b_hh ``[D, 4H]``, W_hh ``[D, 4H, H]`` of one layer."""
        directions = [lstm_layer_weights(self.rnn, layer, direction)
                      for direction in range(self.num_directions)]
        input_weight, recurrent_weight, input_bias, recurrent_bias = (
            torch.stack(tensors) for tensors in zip(*directions))
        return input_weight, input_bias + recurrent_bias, recurrent_weight

    def _last_layer(self, final: Tensor) -> Tensor:
        """[layers × directions, B, H] -> [B, directions × H] for the top layer."""
        top = final[-self.num_directions:]
        return torch.cat(list(top), dim=-1)
