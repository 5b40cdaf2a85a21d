"""A model prepared for decoding on the CPU: what the CPU backend hands to search.

:func:`prepare_decoding` changes a model that will only decode, in place: the encoder's LSTM
runs on oneDNN's fused RNN (``Encoder.run_lstm``), every linear layer with more than one output
and the decoder's LSTM are swapped for prepacked ones (:mod:`s2s.cpu.prepack`), and Bahdanau's
own attention class for :class:`AdditiveDecodingAttention`. It returns a :class:`CpuDecoding`,
which search drives through ``encode``/``step`` like the model itself, and which folds the
context's products into the memory for beam search (:mod:`s2s.cpu.folding`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from s2s.cpu.folding import ContextFolding, FoldedMemory
from s2s.cpu.lstm import run_encoder_lstm
from s2s.cpu.prepack import PrepackedLinear, PrepackedLSTM
from s2s.cpu.products import onednn_available
from s2s.model.attention import ADDITIVE, WEIGHTED_VALUES, Attention, BahdanauAttention, attend
from s2s.model.decoder import Decoder, DecoderState, Memory
from s2s.model.seq2seq import Seq2Seq


class AdditiveDecodingAttention(Attention):
    """Bahdanau attention without gradients on the CPU: wᵀtanh(z) = 2·wᵀσ(2z) − Σw (the
    constant does not change the softmax, but is kept), z = W₁s + W₂h.

    Three passes over the ``[B, 1, S, A]`` energies (sum, sigmoid, product with w) instead of
    six for tanh, one query row at a time so the temporary stays that size. Wraps the model's
    :class:`~s2s.model.attention.BahdanauAttention` (exactly that class: it declares
    ``additive``) and leaves everything else — gradients, other devices — to it.
    """

    speedups = frozenset({WEIGHTED_VALUES})

    def __init__(self, attention: BahdanauAttention) -> None:
        super().__init__(attention.query_size, attention.key_size)
        self.attention = attention
        self.uses_previous_state = attention.uses_previous_state
        self.context_size = attention.context_size

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self.attention.precompute(keys, values)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        if torch.is_grad_enabled() or keys.device.type != "cpu":
            return self.attention(query, keys, values, mask)
        projected = self.attention.query_proj(query)                          # [B, T, A]
        rows = [self._doubled_energies(projected[:, t:t + 1], keys)
                for t in range(projected.size(1))]
        energies = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
        sum_w = self.attention.energy(keys.new_ones(1, keys.size(-1)))        # Σw
        return attend(energies.mul_(2.0).sub_(sum_w), values, mask)

    def _doubled_energies(self, projected: Tensor, keys: Tensor) -> Tensor:
        """wᵀσ(2(W₁s + W₂h)) ``[B, T, S]`` from W₁s ``[B, T, A]``, W₂h ``[B, S, A]``."""
        doubled = torch.add((2.0 * projected).unsqueeze(2), keys.unsqueeze(1), alpha=2.0)
        return self.attention.energy(doubled.sigmoid_()).squeeze(-1)


class CpuDecoding:
    """The search interface (``encode``, ``step``, ``special``, ``train``/``eval``) over a model
    prepared by :func:`prepare_decoding`.

    With several rows per sentence (beam search), the ``Decoder`` class itself and an attention
    declaring ``weighted_values``, ``encode`` folds the context's products into the memory and ``step``
    steps over it (:class:`~s2s.cpu.folding.ContextFolding`); otherwise both are the model's.
    Log-probabilities are computed in place over the step's fresh logits.
    """

    def __init__(self, model: Seq2Seq) -> None:
        self.model = model
        self.special = model.special
        decoder = model.decoder
        foldable = (type(decoder) is Decoder and isinstance(decoder.rnn, PrepackedLSTM)
                    and type(decoder.attention).declares(WEIGHTED_VALUES))
        self.folding = ContextFolding(decoder, decoder.rnn) if foldable else None

    @property
    def training(self) -> bool:
        return self.model.training

    def train(self, mode: bool = True) -> "CpuDecoding":
        self.model.train(mode)
        return self

    def eval(self) -> "CpuDecoding":
        return self.train(False)

    def encode(self, src: Tensor, src_lengths: Tensor,
               rows_per_sentence: int = 1) -> tuple[Memory, DecoderState]:
        """:meth:`Seq2Seq.encode`, the memory folded for several rows per sentence."""
        memory, state = self.model.encode(src, src_lengths)
        folding = self.folding if rows_per_sentence > 1 else None
        if folding is not None and folding.applies(self.model.decoder, memory.values):
            memory = folding.fold(memory)
        return memory, state

    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             rows_per_sentence: int = 1) -> tuple[Tensor, DecoderState, Tensor]:
        """:meth:`Seq2Seq.step`: log-probabilities ``[B, V]``, the new state, α ``[B, S]``."""
        decoder = self.model.decoder
        if isinstance(memory, FoldedMemory):
            if self.folding is None or not self.folding.applies(decoder, memory.values):
                raise RuntimeError("a folded memory is for decoding: eval mode, no gradients, "
                                   "float32 on the CPU")
            vector, state, weights = self.folding.step(decoder, prev_tokens, state, memory,
                                                       rows_per_sentence)
        else:
            vector, state, weights = decoder.step(prev_tokens, state, memory, rows_per_sentence)
        logits = decoder.project(vector).float()
        if torch.is_grad_enabled():
            return torch.log_softmax(logits, dim=-1), state, weights
        # each row is read whole before it is written: one [B, V] block less per step
        return torch.log_softmax(logits, dim=-1, out=logits), state, weights


def prepare_decoding(model: Seq2Seq) -> CpuDecoding:
    """Prepare ``model`` (fp32 or int8) for decoding on the CPU, in place (see the module
    docstring); the prepacked copies do not follow later changes to the weights."""
    model.encoder.run_lstm = run_encoder_lstm
    decoder = model.decoder
    if type(decoder.attention).declares(ADDITIVE):
        attention = decoder.attention
        decoder.attention = AdditiveDecodingAttention(attention).train(attention.training)
    if onednn_available():
        _prepack(model)
    return CpuDecoding(model)


def _prepack(model: Seq2Seq) -> None:
    """Every fp32 linear layer with more than one output (not Bahdanau's energy wᵀ, a
    matrix-vector product) and the decoder's LSTM become their prepacked equivalents."""
    for parent in list(model.modules()):
        if isinstance(parent, (PrepackedLinear, PrepackedLSTM)):
            continue  # already swapped
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.out_features > 1:
                setattr(parent, name, PrepackedLinear(child).train(child.training))
    decoder = model.decoder
    if type(decoder.rnn) is nn.LSTM:
        decoder.rnn = PrepackedLSTM(decoder.rnn).train(decoder.rnn.training)
