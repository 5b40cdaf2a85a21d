"""``Seq2Seq``: encoder + attentional decoder + loss, and ``build_model`` from the config."""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from s2s.attention import build_attention
from s2s.batching import Batch
from s2s.config import ModelConfig
from s2s.decoder import Decoder, DecoderState, Memory
from s2s.encoder import Encoder
from s2s.loss import linear_cross_entropy
from s2s.tokenizer import SpecialIds


class LossOutput(NamedTuple):
    """loss: summed over real target tokens (with label smoothing if asked); nll: summed
    negative log-likelihood (no smoothing); tokens: number of real target tokens."""

    loss: Tensor
    nll: Tensor
    tokens: int
    correct: Tensor


class Seq2Seq(nn.Module):
    """p(y | x) = Π_t softmax(W_o ṽ(t)), ṽ from :class:`~s2s.decoder.Decoder` over the
    states of :class:`~s2s.encoder.Encoder`."""

    def __init__(self, encoder: Encoder, decoder: Decoder, special: SpecialIds) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.special = special

    def encode(self, src: Tensor, src_lengths: Tensor, reference: bool = False,
               rows_per_sentence: int = 1) -> tuple[Memory, DecoderState]:
        """src ``[B, S]``, src_lengths ``[B]`` → the memory to attend over and s(0)
        (``reference``: through ``nn.LSTM``, see :meth:`Encoder.forward`;
        ``rows_per_sentence``: see :meth:`Decoder.memory`)."""
        encoded = self.encoder(src, src_lengths, reference=reference)
        mask = src != self.special.pad
        return (self.decoder.memory(encoded, mask, rows_per_sentence),
                self.decoder.init_state(encoded))

    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             rows_per_sentence: int = 1) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoding step for search: log-probabilities ``[B, V]``, new state, α ``[B, S]``
        (B rows; see :meth:`Decoder.step` for ``rows_per_sentence``)."""
        vector, state, weights = self.decoder.step(prev_tokens, state, memory, rows_per_sentence)
        logits = self.decoder.project(vector).float()
        if logits.device.type == "cpu" and not torch.is_grad_enabled():
            # over its own fresh logits: one [B, V] block less per step (each row is read
            # whole before it is written)
            return torch.log_softmax(logits, dim=-1, out=logits), state, weights
        return torch.log_softmax(logits, dim=-1), state, weights

    def forward(self, batch: Batch, teacher_forcing_ratio: float = 1.0,
                label_smoothing: float = 0.0, force_loop: bool = False) -> LossOutput:
        """Teacher-forced loss over the real (non-padding) target tokens of ``batch``.

        The output layer and the loss run once, over only the real tokens: padded positions
        cost no output-layer compute.
        """
        memory, state = self.encode(batch.src, batch.src_lengths, reference=force_loop)
        vectors, _ = self.decoder(batch.tgt_in, state, memory, teacher_forcing_ratio,
                                  force_loop=force_loop)
        real = batch.tgt_mask
        gold = batch.tgt_out[real]                                     # [N]
        # Decoder.project's two layers, with the output layer fused into the loss
        output = self.decoder.output
        vectors = self.decoder.hidden_dropout(vectors[real])           # [N, D]
        if isinstance(getattr(output, "weight", None), Tensor):
            loss, nll, correct = linear_cross_entropy(vectors, output.weight, output.bias, gold,
                                                      label_smoothing)
        else:  # an int8 output layer (inference only): the plain path
            logits = output(vectors).float()
            loss = F.cross_entropy(logits, gold, reduction="sum", label_smoothing=label_smoothing)
            nll = F.cross_entropy(logits, gold, reduction="sum").detach()
            correct = (logits.argmax(dim=-1) == gold).sum()
        return LossOutput(loss, nll, int(gold.numel()), correct)


def initialize(model: nn.Module, scheme: str = "xavier", init_range: float = 0.1) -> None:
    """Draw the parameters; padding rows of the embeddings are zero in both schemes.

    ``xavier``: matrices Xavier-uniform, U(±√(6 / (fan_in + fan_out))) (Glorot & Bengio), biases
    zero, LSTM forget-gate bias 1. ``uniform``: every parameter, biases included,
    U(±init_range), as Luong et al. (2015) and OpenNMT-py (its default ``param_init: 0.1``) do.
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
    """Build and initialize the model described by ``cfg``.

    ``max_source_length`` (source tokens including EOS) sizes the ``location`` attention.
    """
    encoder = Encoder(src_vocab_size, cfg.src_embedding_dim or cfg.embedding_dim,
                      cfg.encoder.hidden_size, cfg.encoder.num_layers, cfg.encoder.bidirectional,
                      cfg.encoder.dropout, special.pad)
    attention = build_attention(cfg.attention, cfg.decoder.hidden_size, encoder.output_size,
                                attention_size=cfg.attention_size, num_heads=cfg.num_heads,
                                max_source_length=max_source_length)
    dec = cfg.decoder
    decoder = Decoder(tgt_vocab_size, cfg.tgt_embedding_dim or cfg.embedding_dim,
                      dec.hidden_size, dec.num_layers, attention, encoder.output_size,
                      dropout=dec.dropout, hidden_dropout=dec.hidden_dropout,
                      input_feeding=dec.input_feeding, attentional_size=dec.attentional_size,
                      init=dec.init, attentional_activation=dec.attentional_activation,
                      pad_id=special.pad, tied_embeddings=cfg.tied_embeddings)
    model = Seq2Seq(encoder, decoder, special)
    initialize(model, cfg.initializer, cfg.init_range)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
