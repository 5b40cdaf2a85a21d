"""The encoder: embeddings and a (bidirectional, multi-layer) LSTM over packed sequences.

    h(1..S) = dropout(LSTM(dropout(E x(1..S))))

with x ``[B, S]`` the source ids (EOS last, then padding) and h ``[B, S, D·H]`` (D directions of
H units, concatenated). Sequences are packed, so padding never enters the recurrence: a
sentence's states do not depend on how long the other sentences of its batch are.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence


class EncoderOutput(NamedTuple):
    """states ``[B, S, D·H]`` (zero on padding); final_hidden, final_cell ``[B, D·H]``: the top
    layer's last states, directions concatenated."""

    states: Tensor
    final_hidden: Tensor
    final_cell: Tensor


def top_layer(final: Tensor, directions: int) -> Tensor:
    """nn.LSTM's final states ``[layers·D, B, H]`` → the top layer's ``[B, D·H]``."""
    return final[-directions:].transpose(0, 1).reshape(final.size(1), -1)


def run_packed(lstm: nn.LSTM, embedded: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``lstm`` over the real tokens of ``embedded [B, S, E]``, ``lengths [B]``: states
    ``[B, S, D·H]`` (zero on padding) and the top layer's final state and cell ``[B, D·H]``."""
    packed = pack_padded_sequence(embedded, lengths.cpu(), batch_first=True,
                                  enforce_sorted=False)
    outputs, (hidden, cell) = lstm(packed)
    states, _ = pad_packed_sequence(outputs, batch_first=True, total_length=embedded.size(1))
    directions = 2 if lstm.bidirectional else 1
    return states, top_layer(hidden, directions), top_layer(cell, directions)


LSTMRunner = Callable[[nn.LSTM, Tensor, Tensor], tuple[Tensor, Tensor, Tensor]]


class Encoder(nn.Module):
    """Embedding, dropout, LSTM, dropout. ``run_lstm`` is the seam where a backend may put a
    faster equivalent of :func:`run_packed` (docs/architecture.md)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 bidirectional: bool, dropout: float, pad_id: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.rnn = nn.LSTM(embedding_dim, hidden_size, num_layers=num_layers, batch_first=True,
                           bidirectional=bidirectional,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.output_size = hidden_size * (2 if bidirectional else 1)
        self.run_lstm: LSTMRunner = run_packed

    def forward(self, src: Tensor, lengths: Tensor) -> EncoderOutput:
        """src ``[B, S]`` token ids, lengths ``[B]`` (all ≥ 1; on the CPU or the device)."""
        embedded = self.dropout(self.embedding(src))
        states, final_hidden, final_cell = self.run_lstm(self.rnn, embedded, lengths)
        return EncoderOutput(self.dropout(states), final_hidden, final_cell)
