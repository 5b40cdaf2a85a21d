"""The recurrent encoder: embeddings and a (bi)LSTM over packed sequences."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from s2s.dropout import Dropout


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

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        """src ``[B, S]`` token ids, lengths ``[B]`` (on the CPU or the device)."""
        embedded = self.dropout(self.embedding(src))
        packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                      enforce_sorted=False)
        packed_out, (h_n, c_n) = self.rnn(packed)
        states, _ = pad_packed_sequence(packed_out, batch_first=True, total_length=src.size(1))
        return EncoderOutput(self.dropout(states), self._last_layer(h_n), self._last_layer(c_n))

    def _last_layer(self, final: Tensor) -> Tensor:
        """[layers × directions, B, H] -> [B, directions × H] for the top layer."""
        top = final[-self.num_directions:]
        return torch.cat(list(top), dim=-1)
