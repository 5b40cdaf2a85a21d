"""The whole model: p(y | x) = Πₜ softmax(W_o ṽ(t)), its loss, and building it from a config.

``Seq2Seq`` joins :class:`~s2s.model.encoder.Encoder` and :class:`~s2s.model.decoder.Decoder`.
Training calls ``forward(batch)``: the teacher-forced loss over the real target tokens. Search
calls ``encode`` once per batch and ``step`` once per output position.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, NamedTuple

import torch
from torch import Tensor, nn

from s2s.config import ModelConfig
from s2s.data.tokenizer import SpecialIds
from s2s.model.attention import build_attention
from s2s.model.decoder import Decoder, DecoderState, Memory
from s2s.model.encoder import Encoder

if TYPE_CHECKING:
    from s2s.data.batching import Batch


class LossOutput(NamedTuple):
    """loss: summed over the real target tokens, label-smoothed if asked (differentiable);
    nll: summed negative log-likelihood, unsmoothed; tokens: how many real target tokens;
    correct: how many of them are the argmax (nll and correct carry no gradient)."""

    loss: Tensor
    nll: Tensor
    tokens: int
    correct: Tensor


def cross_entropy(vectors: Tensor, output: nn.Module, gold: Tensor,
                  smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """(loss, nll, correct) of ``output``'s logits for ṽ ``[N, A]`` against ``gold [N]``:

        log p = log_softmax(W_o ṽ + b_o)                                   [N, V]
        loss  = Σₙ (1 − ε)(−log p(yₙ)) + ε · meanᵥ(−log p(v))              (label smoothing ε)
    """
    log_probs = torch.log_softmax(output(vectors), dim=-1)
    nll = -log_probs.gather(1, gold.unsqueeze(1)).squeeze(1)
    loss = nll if smoothing == 0 else (1.0 - smoothing) * nll - smoothing * log_probs.mean(-1)
    correct = (log_probs.argmax(dim=-1) == gold).sum()
    return loss.sum(), nll.sum().detach(), correct


def drop_words(tokens: Tensor, p: float, special: SpecialIds) -> Tensor:
    """Word dropout: each real token of ``tokens [B, L]`` (not padding, BOS or EOS) replaced by
    UNK with probability ``p``."""
    if p == 0.0:
        return tokens
    real = (tokens != special.pad) & (tokens != special.bos) & (tokens != special.eos)
    dropped = real & (torch.rand(tokens.shape, device=tokens.device) < p)
    return tokens.masked_fill(dropped, special.unk)


OutputLoss = Callable[[Tensor, nn.Module, Tensor, float], tuple[Tensor, Tensor, Tensor]]


class Seq2Seq(nn.Module):
    """Encoder + attentional decoder. ``output_loss`` is the seam where a backend may put a
    faster equivalent of :func:`cross_entropy` (docs/architecture.md)."""

    def __init__(self, encoder: Encoder, decoder: Decoder, special: SpecialIds,
                 word_dropout: tuple[float, float] = (0.0, 0.0)) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.special = special
        self.word_dropout = word_dropout  # source, target (teacher-forced inputs): training only
        self.output_loss: OutputLoss = cross_entropy

    def encode(self, src: Tensor, src_lengths: Tensor,
               rows_per_sentence: int = 1) -> tuple[Memory, DecoderState]:
        """src ``[B, S]``, src_lengths ``[B]`` → the memory to attend over and s(0).

        ``rows_per_sentence``: how many decoder rows will attend to each sentence (the beam
        size); the memory keeps one row per sentence either way, and a backend may use it.
        """
        encoded = self.encoder(src, src_lengths)
        return (self.decoder.memory(encoded, src != self.special.pad),
                self.decoder.init_state(encoded))

    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             rows_per_sentence: int = 1) -> tuple[Tensor, DecoderState, Tensor]:
        """One step for search: log-probabilities ``[B, V]``, the new state, α ``[B, S]``
        (see :meth:`Decoder.step` for ``rows_per_sentence``)."""
        vector, state, weights = self.decoder.step(prev_tokens, state, memory, rows_per_sentence)
        return torch.log_softmax(self.decoder.project(vector).float(), dim=-1), state, weights

    def forward(self, batch: Batch, teacher_forcing_ratio: float = 1.0,
                label_smoothing: float = 0.0) -> LossOutput:
        """The teacher-forced loss of ``batch``, over its real (non-padding) target tokens
        only: padded positions cost no output-layer work."""
        src, tgt_in = batch.src, batch.tgt_in
        if self.training:
            src = drop_words(src, self.word_dropout[0], self.special)
            tgt_in = drop_words(tgt_in, self.word_dropout[1], self.special)
        memory, state = self.encode(src, batch.src_lengths)
        vectors, _ = self.decoder(tgt_in, state, memory, teacher_forcing_ratio)
        real = batch.tgt_positions                       # [N] indices into the flattened [B·T]
        gold = batch.tgt_out.flatten()[real]                                  # [N]
        vectors = self.decoder.hidden_dropout(vectors.flatten(0, 1)[real])    # [N, A]
        loss, nll, correct = self.output_loss(vectors, self.decoder.output, gold, label_smoothing)
        return LossOutput(loss, nll, int(gold.numel()), correct)


def initialize(model: nn.Module, scheme: str = "xavier", init_range: float = 0.1) -> None:
    """Draw the parameters; the embeddings' padding rows are zero in both schemes.

    ``xavier``: matrices Xavier-uniform, U(±√(6 / (fan_in + fan_out))) (Glorot & Bengio), biases
    zero, LSTM forget-gate bias 1. ``uniform``: every parameter, biases included,
    U(±init_range), as Luong et al. (2015) and OpenNMT-py (``param_init: 0.1``) do.
    """
    for name, param in model.named_parameters():
        if scheme == "uniform":
            nn.init.uniform_(param, -init_range, init_range)
        elif param.dim() > 1:
            nn.init.xavier_uniform_(param)
        else:
            nn.init.zeros_(param)
            if "bias_ih" in name:  # gates are ordered input, forget, cell, output
                size = param.numel() // 4
                param.data[size:2 * size] = 1.0
    for module in model.modules():
        if isinstance(module, nn.Embedding) and module.padding_idx is not None:
            module.weight.data[module.padding_idx].zero_()


def build_model(cfg: ModelConfig, src_vocab_size: int, tgt_vocab_size: int,
                special: SpecialIds, max_source_length: int) -> Seq2Seq:
    """The model ``cfg`` describes, initialized; ``max_source_length`` (source tokens with EOS)
    sizes the ``location`` attention."""
    enc, dec = cfg.encoder, cfg.decoder
    encoder = Encoder(src_vocab_size, cfg.src_embedding_dim or cfg.embedding_dim,
                      enc.hidden_size, enc.num_layers, enc.bidirectional, enc.dropout, special.pad)
    attention = build_attention(cfg.attention, dec.hidden_size, encoder.output_size,
                                attention_size=cfg.attention_size, num_heads=cfg.num_heads,
                                max_source_length=max_source_length)
    decoder = Decoder(tgt_vocab_size, cfg.tgt_embedding_dim or cfg.embedding_dim,
                      dec.hidden_size, dec.num_layers, attention, encoder.output_size,
                      dropout=dec.dropout, hidden_dropout=dec.hidden_dropout,
                      input_feeding=dec.input_feeding, attentional_size=dec.attentional_size,
                      init=dec.init, attentional_activation=dec.attentional_activation,
                      pad_id=special.pad, tied_embeddings=cfg.tied_embeddings)
    model = Seq2Seq(encoder, decoder, special, (enc.word_dropout, dec.word_dropout))
    initialize(model, cfg.initializer, cfg.init_range)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
