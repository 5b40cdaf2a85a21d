"""The attentional LSTM decoder.

One step t, with encoder states h ``[B, S, C]``, decoder state s ``[B, D]`` (top layer) and the
previous output y(t-1):

* Luong family (``dot``, ``scaled_dot``, ``general``, ``location``, ``multihead``):
  s(t) = LSTM([E y(t-1); ṽ(t-1)?], s(t-1));  a(t), α(t) = attention(s(t), h)
* Bahdanau: a(t), α(t) = attention(s(t-1), h);  s(t) = LSTM([E y(t-1); ṽ(t-1)?; a(t)], s(t-1))

then for both the attentional vector ṽ(t) = tanh(W_v [a(t); s(t)]) (Luong et al.; without the
tanh when ``attentional_activation`` is "none", as OpenNMT-py's ``mlp`` attention) and
p(y(t)) = softmax(W_o dropout(ṽ(t))). ``ṽ(t-1)?`` is there with input feeding. Dropout acts on
E y(t-1) and on what else enters the LSTM.

Teacher forcing runs :meth:`Decoder.step` after step (:func:`step_by_step`) — or, when the score
uses s(t) and nothing of step t-1 but s(t-1) feeds step t (Luong attention without input
feeding), the LSTM over the whole target at once and the attention for all steps in one
batched product: no loop over time.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.model.attention import Attention
from s2s.model.encoder import EncoderOutput


class Memory(NamedTuple):
    """What the decoder attends over: the attention's precomputed ``keys``/``values``
    (``[B, S, *]``, or ``[B, heads, S, *]`` for multi-head) and ``mask [B, S]`` (True on
    tokens)."""

    keys: Tensor
    values: Tensor
    mask: Tensor

    def select(self, index: Tensor, source_length: Optional[int] = None) -> "Memory":
        """Sentences ``index [B']``, in that order; with ``source_length``, only that many
        source positions (the longest of the sentences kept)."""
        memory = self if source_length is None else self.narrow_source(source_length)
        return type(self)(*(t.index_select(0, index) for t in memory))

    def narrow_source(self, length: int) -> "Memory":
        """The first ``length`` source positions (views)."""
        return type(self)(self.keys.narrow(-2, 0, length), self.values.narrow(-2, 0, length),
                          self.mask[:, :length])

    def join(self, other: "Memory") -> "Memory":
        """These sentences, then ``other``'s, padded to the longer source with masked
        positions."""
        length = max(self.mask.size(1), other.mask.size(1))
        return type(self)(*(torch.cat(pair) for pair in zip(self._padded(length),
                                                            other._padded(length))))

    def _padded(self, length: int) -> "Memory":
        extra = length - self.mask.size(1)
        if not extra:
            return self
        return type(self)(F.pad(self.keys, (0, 0, 0, extra)), F.pad(self.values, (0, 0, 0, extra)),
                          F.pad(self.mask, (0, extra), value=False))


class DecoderState(NamedTuple):
    """hidden, cell ``[layers, B, D]``; feed ``[B, A]`` = ṽ(t-1) with input feeding, else
    ``[B, 0]``."""

    hidden: Tensor
    cell: Tensor
    feed: Tensor

    def select(self, index: Tensor) -> "DecoderState":
        return DecoderState(self.hidden.index_select(1, index), self.cell.index_select(1, index),
                            self.feed.index_select(0, index))

    def join(self, other: "DecoderState") -> "DecoderState":
        """These rows, then ``other``'s."""
        return DecoderState(torch.cat([self.hidden, other.hidden], dim=1),
                            torch.cat([self.cell, other.cell], dim=1),
                            torch.cat([self.feed, other.feed]))


StepRunner = Callable[["Decoder", Tensor, DecoderState, Memory, float], tuple[Tensor, Tensor]]


def step_by_step(decoder: "Decoder", tgt_in: Tensor, state: DecoderState, memory: Memory,
                 teacher_forcing_ratio: float = 1.0) -> tuple[Tensor, Tensor]:
    """Teacher forcing as :meth:`Decoder.step` after step: ṽ ``[B, T, A]``, α ``[B, T, S]``.

    With a ratio below 1 each sentence's input at step t is the gold token with that
    probability, else the model's own argmax at step t-1 (scheduled sampling).
    """
    vectors, weights = [], []
    prev = tgt_in[:, 0]
    for t in range(tgt_in.size(1)):
        vector, state, alpha = decoder.step(prev, state, memory)
        vectors.append(vector)
        weights.append(alpha)
        if t + 1 < tgt_in.size(1):
            prev = tgt_in[:, t + 1]
            if teacher_forcing_ratio < 1.0:
                with torch.no_grad():
                    predicted = decoder.output(vector).argmax(dim=-1)
                use_gold = torch.rand(prev.shape, device=prev.device) < teacher_forcing_ratio
                prev = torch.where(use_gold, prev, predicted)
    return torch.stack(vectors, dim=1), torch.stack(weights, dim=1)


class Decoder(nn.Module):
    """LSTM decoder with a pluggable :class:`~s2s.model.attention.Attention`.

    ``run_steps`` is the seam where a backend may put a faster equivalent of
    :func:`step_by_step` (docs/architecture.md).
    """

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_size: int, num_layers: int,
                 attention: Attention, encoder_size: int, *, dropout: float = 0.0,
                 hidden_dropout: float = 0.0, input_feeding: bool = False,
                 attentional_size: int | None = None, init: str = "bridge",
                 attentional_activation: str = "tanh", pad_id: int = 0,
                 tied_embeddings: bool = False) -> None:
        super().__init__()
        self.attention = attention
        self.input_feeding = input_feeding
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.attentional_size = attentional_size or hidden_size
        self.init = init
        self.attentional_tanh = attentional_activation == "tanh"
        self.embedding = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        rnn_input = embedding_dim + (self.attentional_size if input_feeding else 0)
        rnn_input += attention.context_size if attention.uses_previous_state else 0
        self.rnn = nn.LSTM(rnn_input, hidden_size, num_layers=num_layers, batch_first=True,
                           dropout=dropout if num_layers > 1 else 0.0)
        self.dropout = nn.Dropout(dropout)
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.attentional = nn.Linear(attention.context_size + hidden_size, self.attentional_size)
        self.output = nn.Linear(self.attentional_size, vocab_size)
        if tied_embeddings:
            self.output.weight = self.embedding.weight
        if init == "bridge":
            self.bridge_hidden = nn.Linear(encoder_size, hidden_size)
            self.bridge_cell = nn.Linear(encoder_size, hidden_size)
        self.run_steps: StepRunner = step_by_step

    def init_state(self, encoded: EncoderOutput) -> DecoderState:
        """s(0) from the encoder's final states: tanh(W_h h_S), W_c c_S ('bridge'), the states
        themselves ('last') or zeros; the same for every layer."""
        batch = encoded.states.size(0)
        if self.init == "bridge":
            hidden = torch.tanh(self.bridge_hidden(encoded.final_hidden))
            cell = self.bridge_cell(encoded.final_cell)
        elif self.init == "last":
            hidden, cell = encoded.final_hidden, encoded.final_cell
        else:
            hidden = cell = encoded.states.new_zeros(batch, self.hidden_size)
        feed_size = self.attentional_size if self.input_feeding else 0
        return DecoderState(hidden.unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous(),
                            cell.unsqueeze(0).repeat(self.num_layers, 1, 1).contiguous(),
                            encoded.states.new_zeros(batch, feed_size))

    def memory(self, encoded: EncoderOutput, src_mask: Tensor) -> Memory:
        """The attention's once-per-batch precomputation over the encoder states."""
        keys, values = self.attention.precompute(encoded.states, encoded.states)
        return Memory(keys, values, src_mask)

    @property
    def runs_loop_free(self) -> bool:
        """Whether full teacher forcing can skip the loop over time steps."""
        return not (self.attention.uses_previous_state or self.input_feeding)

    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             rows_per_sentence: int = 1) -> tuple[Tensor, DecoderState, Tensor]:
        """One step: y(t-1) ``[B]`` → ṽ(t) ``[B, A]``, the new state, α(t) ``[B, S]``.

        With ``rows_per_sentence`` = K > 1 (beam search), rows k·K … k·K + K − 1 belong to
        sentence k of ``memory``, which holds B / K sentences: the K rows attend to one copy
        of their sentence's states, as K queries of it.
        """
        embedded = self.dropout(self.embedding(prev_tokens))
        context, output, state, weights = self.recur(embedded, state, memory, rows_per_sentence)
        vector = self.attentional_vector(context, output)
        if self.input_feeding:
            state = state._replace(feed=vector)
        return vector, state, weights

    def recur(self, embedded: Tensor, state: DecoderState, memory: Memory,
              rows_per_sentence: int = 1) -> tuple[Tensor, Tensor, DecoderState, Tensor]:
        """The recurrent part of a step, from the embedded previous tokens ``[B, E]`` (after
        dropout): a(t) ``[B, C]``, s(t) ``[B, D]``, the new state (``feed`` unchanged) and
        α(t) ``[B, S]``."""
        extra = [state.feed] if self.input_feeding else []
        if self.attention.uses_previous_state:
            context, weights = self.attend(state.hidden[-1], memory, rows_per_sentence)
            extra.append(context)
        inputs = [embedded, self.dropout(torch.cat(extra, dim=-1))] if extra else [embedded]
        rnn_input = torch.cat(inputs, dim=-1).unsqueeze(1)  # [B, 1, I]
        output, (hidden, cell) = self.rnn(rnn_input, (state.hidden, state.cell))
        output = output.squeeze(1)
        if not self.attention.uses_previous_state:
            context, weights = self.attend(output, memory, rows_per_sentence)
        return context, output, DecoderState(hidden, cell, state.feed), weights

    def attend(self, query: Tensor, memory: Memory,
               rows_per_sentence: int = 1) -> tuple[Tensor, Tensor]:
        """query ``[B, D]`` → a ``[B, C]``, α ``[B, S]``; each sentence's K rows are K queries."""
        grouped = query.reshape(-1, rows_per_sentence, query.size(-1))   # [B / K, K, D]
        context, weights = self.attention(grouped, *memory)
        return context.reshape(query.size(0), -1), weights.reshape(query.size(0), -1)

    def attentional_vector(self, context: Tensor, output: Tensor) -> Tensor:
        """ṽ = tanh(W_v [a; s]) (or W_v [a; s]) ``[..., A]`` from a ``[..., C]``, s
        ``[..., D]``."""
        vector = self.attentional(torch.cat([context, output], dim=-1))
        return torch.tanh(vector) if self.attentional_tanh else vector

    def forward(self, tgt_in: Tensor, state: DecoderState, memory: Memory,
                teacher_forcing_ratio: float = 1.0) -> tuple[Tensor, Tensor]:
        """Teacher forcing over ``tgt_in [B, T]`` (BOS + the target without its EOS): ṽ(1..T)
        ``[B, T, A]`` and α ``[B, T, S]``; ``teacher_forcing_ratio``: see
        :func:`step_by_step`."""
        if teacher_forcing_ratio >= 1.0 and self.runs_loop_free:
            return self._forward_loop_free(tgt_in, state, memory)
        return self.run_steps(self, tgt_in, state, memory, teacher_forcing_ratio)

    def _forward_loop_free(self, tgt_in: Tensor, state: DecoderState,
                           memory: Memory) -> tuple[Tensor, Tensor]:
        embedded = self.dropout(self.embedding(tgt_in))                 # [B, T, E]
        outputs, _ = self.rnn(embedded, (state.hidden, state.cell))     # [B, T, D]
        context, weights = self.attention(outputs, *memory)             # [B, T, C], [B, T, S]
        return self.attentional_vector(context, outputs), weights

    def project(self, vectors: Tensor) -> Tensor:
        """Logits ``[..., V]`` from attentional vectors ``[..., A]``."""
        return self.output(self.hidden_dropout(vectors))
