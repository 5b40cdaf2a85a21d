"""The attentional LSTM decoder.

One step t (B = batch, S = source length, D = decoder hidden size):

* Luong family (``dot``, ``scaled_dot``, ``general``, ``location``, ``multihead``):
  s(t) = LSTM([E·y(t-1); ṽ(t-1)?], s(t-1)); a(t), α(t) = attention(s(t), h)
* Bahdanau: a(t), α(t) = attention(s(t-1), h); s(t) = LSTM([E·y(t-1); ṽ(t-1)?; a(t)], s(t-1))

then, for both, the attentional vector ṽ(t) = tanh(W_v [a(t); s(t)]) (Luong et al.; without the
tanh, as OpenNMT-py's ``mlp`` attention, when ``attentional_activation`` is "none") and the
output distribution p(y(t)) = softmax(W_o dropout(ṽ(t))). ``ṽ(t-1)?`` is present with input
feeding.

When the score uses s(t) and nothing feeds back from step t-1 into step t (Luong attention, no
input feeding, full teacher forcing), :meth:`Decoder.forward` runs the LSTM over the whole
target at once and attends for all steps in one batched product — no Python loop over time.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.attention import Attention, BahdanauAttention
from s2s.dropout import Dropout
from s2s.encoder import EncoderOutput
from s2s.recurrent import AttentiveLSTMOutput, attentive_lstm

if TYPE_CHECKING:
    from s2s.prepack import ContextFolding


class Memory(NamedTuple):
    """What the decoder attends over: the attention's precomputed ``keys``/``values``
    (``[B, S, *]``, or ``[B, heads, S, *]`` for multi-head) and ``mask [B, S]`` (True = token)."""

    keys: Tensor
    values: Tensor
    mask: Tensor

    def select(self, index: Tensor, source_length: Optional[int] = None) -> "Memory":
        """Rows ``index [B']`` of the batch (beam expansion and reordering); with
        ``source_length``, only the first that many source positions (those sentences' longest,
        when the longer ones have left)."""
        memory = self if source_length is None else self.narrow_source(source_length)
        return type(self)(*(t.index_select(0, index) for t in memory))

    def narrow_source(self, length: int) -> "Memory":
        """The first ``length`` source positions (keys and values along their second-to-last
        axis, the mask along its last; views)."""
        return type(self)(self.keys.narrow(-2, 0, length), self.values.narrow(-2, 0, length),
                          self.mask[:, :length])

    def join(self, other: "Memory") -> "Memory":
        """This memory's sentences, then ``other``'s, both padded to the longer source with
        masked positions (sentences joining a batch being decoded)."""
        length = max(self.mask.size(1), other.mask.size(1))
        return type(self)(*(torch.cat(pair) for pair in zip(self._padded(length),
                                                            other._padded(length))))

    def _padded(self, length: int) -> "Memory":
        extra = length - self.mask.size(1)
        if not extra:
            return self
        return type(self)(F.pad(self.keys, (0, 0, 0, extra)), F.pad(self.values, (0, 0, 0, extra)),
                          F.pad(self.mask, (0, extra), value=False))


class FoldedMemory(Memory):
    """A :class:`Memory` whose ``values`` are the encoder states already multiplied by the
    weights that take the context in (``[B, S, *]``, see :class:`s2s.prepack.ContextFolding`):
    attending to them gives those products of a(t) directly. :meth:`Decoder.memory` builds
    one when asked for several rows per sentence (beam search) by a prepacked model."""

    __slots__ = ()


class DecoderState(NamedTuple):
    """hidden, cell ``[layers, B, D]``; feed ``[B, attentional_size]`` = ṽ(t-1) (``[B, 0]``
    without input feeding)."""

    hidden: Tensor
    cell: Tensor
    feed: Tensor

    def select(self, index: Tensor) -> "DecoderState":
        return DecoderState(self.hidden.index_select(1, index), self.cell.index_select(1, index),
                            self.feed.index_select(0, index))

    def join(self, other: "DecoderState") -> "DecoderState":
        """This state's rows, then ``other``'s."""
        return DecoderState(torch.cat([self.hidden, other.hidden], dim=1),
                            torch.cat([self.cell, other.cell], dim=1),
                            torch.cat([self.feed, other.feed]))


class Decoder(nn.Module):
    """LSTM decoder with a pluggable :class:`~s2s.attention.Attention` module."""

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
        self.dropout = Dropout(dropout)
        self.hidden_dropout = Dropout(hidden_dropout)
        self.attentional = nn.Linear(attention.context_size + hidden_size, self.attentional_size)
        self.output = nn.Linear(self.attentional_size, vocab_size)
        if tied_embeddings:
            self.output.weight = self.embedding.weight
        if init == "bridge":
            self.bridge_hidden = nn.Linear(encoder_size, hidden_size)
            self.bridge_cell = nn.Linear(encoder_size, hidden_size)
        # set by s2s.prepack for decoding on the CPU (a plain attribute, not a submodule)
        self.folding: Optional[ContextFolding] = None

    # ------------------------------------------------------------------------------- setup
    def init_state(self, encoded: EncoderOutput) -> DecoderState:
        """s(0) from the encoder's final states: tanh(W_h h_S), W_c c_S ('bridge'), the states
        themselves ('last') or zeros; repeated over the decoder's layers."""
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

    def memory(self, encoded: EncoderOutput, src_mask: Tensor,
               rows_per_sentence: int = 1) -> Memory:
        """Run the attention's once-per-batch precomputation over the encoder states.

        ``rows_per_sentence``: how many decoder rows will attend to each sentence (the beam
        size in beam search). With several, a prepacked model folds the context's products
        into the memory (:class:`s2s.prepack.ContextFolding`); with one that would cost about
        what it saves.
        """
        keys, values = self.attention.precompute(encoded.states, encoded.states)
        memory = Memory(keys, values, src_mask)
        folding = self.folding if rows_per_sentence > 1 else None
        if folding is not None and folding.applies(self, values):
            return folding.fold(memory)
        return memory

    @property
    def runs_loop_free(self) -> bool:
        """Whether full teacher forcing can skip the loop over time steps."""
        return not (self.attention.uses_previous_state or self.input_feeding)

    # -------------------------------------------------------------------------------- steps
    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             rows_per_sentence: int = 1) -> tuple[Tensor, DecoderState, Tensor]:
        """One step. prev_tokens ``[B]`` → ṽ(t) ``[B, attentional_size]``, s(t), α(t) ``[B, S]``.

        With ``rows_per_sentence`` = K > 1 (beam search), rows k·K … k·K + K − 1 all belong to
        sentence k of ``memory``, which then holds B / K sentences: the K beams attend to one
        copy of their sentence's encoder states, as K queries of it. Over a
        :class:`FoldedMemory` the step is :meth:`s2s.prepack.ContextFolding.step`'s.
        """
        if isinstance(memory, FoldedMemory):
            if self.folding is None or not self.folding.applies(self, memory.values):
                raise RuntimeError("a folded memory is for decoding: eval mode, no gradients, "
                                   "a prepacked model (see s2s.prepack.ContextFolding)")
            return self.folding.step(self, prev_tokens, state, memory, rows_per_sentence)
        embedded = self.dropout(self.embedding(prev_tokens))
        context, output, state, weights = self._recur(embedded, state, memory,
                                                      rows_per_sentence)
        vector = self._attentional_vector(context, output)
        if self.input_feeding:
            state = state._replace(feed=vector)
        return vector, state, weights

    def _recur(self, embedded: Tensor, state: DecoderState, memory: Memory,
               rows_per_sentence: int = 1) -> tuple[Tensor, Tensor, DecoderState, Tensor]:
        """The recurrent part of a step from the (dropped-out) embedded previous tokens
        ``[B, E]``: a(t) ``[B, C]``, s(t) ``[B, D]`` (top layer), the new state (``feed``
        unchanged) and α(t) ``[B, S]``."""
        extra = [state.feed] if self.input_feeding else []
        if self.attention.uses_previous_state:
            context, weights = self._attend(state.hidden[-1], memory, rows_per_sentence)
            extra.append(context)
        inputs = [embedded, self.dropout(torch.cat(extra, dim=-1))] if extra else [embedded]
        rnn_input = torch.cat(inputs, dim=-1).unsqueeze(1)  # [B, 1, I]
        output, (hidden, cell) = self.rnn(rnn_input, (state.hidden, state.cell))
        output = output.squeeze(1)
        if not self.attention.uses_previous_state:
            context, weights = self._attend(output, memory, rows_per_sentence)
        return context, output, DecoderState(hidden, cell, state.feed), weights

    def _attend(self, query: Tensor, memory: Memory, rows_per_sentence: int) -> tuple[Tensor,
                                                                                      Tensor]:
        """query ``[B, D]`` → a ``[B, C]``, α ``[B, S]``; each sentence's K rows are its queries."""
        grouped = query.reshape(-1, rows_per_sentence, query.size(-1))   # [B / K, K, D]
        context, weights = self.attention(grouped, *memory)
        return context.reshape(query.size(0), -1), weights.reshape(query.size(0), -1)

    def _attentional_vector(self, context: Tensor, output: Tensor) -> Tensor:
        """ṽ = tanh(W_v [a; s]) (or W_v [a; s]) ``[..., attentional_size]`` from a, s ``[..., C]``,
        ``[..., D]``."""
        vector = self.attentional(torch.cat([context, output], dim=-1))
        return torch.tanh(vector) if self.attentional_tanh else vector

    def forward(self, tgt_in: Tensor, state: DecoderState, memory: Memory,
                teacher_forcing_ratio: float = 1.0,
                force_loop: bool = False) -> tuple[Tensor, Tensor]:
        """Teacher-forced decoding of ``tgt_in [B, T]`` (BOS + target without its last token).

        Returns ṽ(1..T) ``[B, T, attentional_size]`` and α ``[B, T, S]``. With a ratio below
        1, each sentence's input at step t is the gold token with that probability, else the
        model's own argmax from step t-1 (scheduled sampling). ``force_loop`` runs the plain
        reference path, :meth:`step` after step, instead of the faster equivalent ones.
        """
        if force_loop:
            return self._forward_stepwise(tgt_in, state, memory, teacher_forcing_ratio)
        if self.runs_loop_free and teacher_forcing_ratio >= 1.0:
            return self._forward_parallel(tgt_in, state, memory)
        return self._forward_loop(tgt_in, state, memory, teacher_forcing_ratio)

    def _forward_parallel(self, tgt_in: Tensor, state: DecoderState,
                          memory: Memory) -> tuple[Tensor, Tensor]:
        rnn_input = self.dropout(self.embedding(tgt_in))                  # [B, T, E]
        outputs, _ = self.rnn(rnn_input, (state.hidden, state.cell))      # [B, T, D]
        context, weights = self.attention(outputs, *memory)               # [B, T, C], [B, T, S]
        return self._attentional_vector(context, outputs), weights

    def _forward_loop(self, tgt_in: Tensor, state: DecoderState, memory: Memory,
                      teacher_forcing_ratio: float) -> tuple[Tensor, Tensor]:
        if self.input_feeding or teacher_forcing_ratio < 1.0:
            return self._forward_stepwise(tgt_in, state, memory, teacher_forcing_ratio)
        # Nothing from ṽ(t) feeds step t+1: only the recurrence runs step by step, and the
        # attentional layer runs once over all steps (one large product instead of T small).
        embedded = self.dropout(self.embedding(tgt_in))  # [B, T, E]: one lookup, one mask
        if self.num_layers == 1 and isinstance(self.attention, BahdanauAttention):
            contexts, outputs, weights = self._bahdanau_stepped(embedded, state, memory)
        else:
            context_list, output_list, weight_list = [], [], []
            for step_input in embedded.unbind(1):
                context, output, state, alpha = self._recur(step_input, state, memory)
                context_list.append(context)
                output_list.append(output)
                weight_list.append(alpha)
            contexts, outputs = torch.stack(context_list, 1), torch.stack(output_list, 1)
            weights = torch.stack(weight_list, 1)
        return self._attentional_vector(contexts, outputs), weights

    def _bahdanau_stepped(self, embedded: Tensor, state: DecoderState,
                          memory: Memory) -> AttentiveLSTMOutput:
        """The Bahdanau recurrence over all steps as one function with a hand-written backward
        (:func:`~s2s.recurrent.attentive_lstm`; the embedding half of the LSTM input projected
        once): a(t), s(t) and α(t) as :meth:`_recur` computes them, stacked over t."""
        attention, lstm = self.attention, self.rnn
        assert isinstance(attention, BahdanauAttention)
        batch, steps, embedding_dim = embedded.shape
        masks = self.dropout.masks((steps, batch, attention.context_size), embedded)
        w_ih = lstm.weight_ih_l0
        known_gates = torch.addmm(lstm.bias_ih_l0 + lstm.bias_hh_l0, embedded.flatten(0, 1),
                                  w_ih[:, :embedding_dim].t()).view(batch, steps, -1)
        recurrent = torch.cat([w_ih[:, embedding_dim:], lstm.weight_hh_l0], dim=1)
        return attentive_lstm(known_gates, state.hidden[0], state.cell[0], memory.keys,
                              memory.values, memory.mask, attention.query_proj.weight,
                              attention.energy.weight.view(-1), recurrent, masks)

    def _forward_stepwise(self, tgt_in: Tensor, state: DecoderState, memory: Memory,
                          teacher_forcing_ratio: float) -> tuple[Tensor, Tensor]:
        vectors, weights = [], []
        prev = tgt_in[:, 0]
        for t in range(tgt_in.size(1)):
            vector, state, alpha = self.step(prev, state, memory)
            vectors.append(vector)
            weights.append(alpha)
            if t + 1 < tgt_in.size(1):
                prev = tgt_in[:, t + 1]
                if teacher_forcing_ratio < 1.0:
                    prev = self._sample_inputs(prev, vector, teacher_forcing_ratio)
        return torch.stack(vectors, dim=1), torch.stack(weights, dim=1)

    def _sample_inputs(self, gold: Tensor, vector: Tensor, ratio: float) -> Tensor:
        with torch.no_grad():
            predicted = self.output(vector).argmax(dim=-1)
        use_gold = torch.rand(gold.shape, device=gold.device) < ratio
        return torch.where(use_gold, gold, predicted)

    def project(self, vectors: Tensor) -> Tensor:
        """Logits ``[..., V]`` from attentional vectors ``[..., attentional_size]``."""
        return self.output(self.hidden_dropout(vectors))
