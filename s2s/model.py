"""``Seq2Seq``: encoder + attentional decoder + loss, and ``build_model`` from the config."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from s2s.attention import build_attention
from s2s.batching import Batch
from s2s.config import ModelConfig
from s2s.decoder import Decoder, DecoderState, Memory
from s2s.encoder import Encoder
from s2s.tokenizer import SpecialIds


class LossOutput(NamedTuple):
    """loss: summed over real target tokens (with label smoothing if asked); nll: summed
    negative log-likelihood (no smoothing); tokens: number of real target tokens."""

    loss: Tensor
    nll: Tensor
    tokens: int
    correct: Tensor


class _SoftmaxCrossEntropy(torch.autograd.Function):
    """Σₙ [(1 − ε)(lse(xₙ) − xₙ,gold) + ε(lse(xₙ) − meanᵥ xₙ,ᵥ)], i.e. cross-entropy with label
    smoothing ε summed over rows of ``logits [N, V]``, and its gradient softmax(x) − (1 − ε)·
    onehot − ε/V written in one pass: neither the log-probabilities nor a zero-filled one-hot
    gradient is ever materialized, and the gradient overwrites the logits (no 4·N·V-byte
    allocation). Returns (loss, nll) — the nll carries no gradient."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, gold: Tensor,
                smoothing: float) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        # in blocks of rows: logsumexp's [N, V] temporaries then stay in cache (2.4× faster
        # on a [1100, 8001] batch, same values; docs/benchmarks.md)
        lse = torch.cat([torch.logsumexp(rows, dim=-1) for rows in logits.split(64)])  # [N]
        nll = (lse - logits.gather(1, gold.unsqueeze(1)).squeeze(1)).sum()
        loss = nll.clone()  # two outputs: only the loss is differentiable
        if smoothing > 0:
            uniform = (lse - logits.mean(dim=-1)).sum()
            loss = (1.0 - smoothing) * nll + smoothing * uniform
        ctx.save_for_backward(logits, gold, lse)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    def backward(ctx: Any, grad: Tensor, _: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        logits, gold, lse = ctx.saved_tensors
        eps = ctx.smoothing
        # in place: nothing else needs the logits now, and a second backward through this
        # graph fails autograd's version check instead of reading them
        result = logits.sub_(lse.unsqueeze(1)).exp_().mul_(grad)  # softmax · g
        result.scatter_add_(1, gold.unsqueeze(1),
                            (-(1.0 - eps) * grad).expand(gold.numel(), 1).to(result.dtype))
        if eps > 0:
            result.sub_(grad * eps / logits.size(1))
        return result, None, None


class Seq2Seq(nn.Module):
    """p(y | x) = Π_t softmax(W_o ṽ(t)), ṽ from :class:`~s2s.decoder.Decoder` over the
    states of :class:`~s2s.encoder.Encoder`."""

    def __init__(self, encoder: Encoder, decoder: Decoder, special: SpecialIds) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.special = special

    def encode(self, src: Tensor, src_lengths: Tensor) -> tuple[Memory, DecoderState]:
        """src ``[B, S]``, src_lengths ``[B]`` → the memory to attend over and s(0)."""
        encoded = self.encoder(src, src_lengths)
        mask = src != self.special.pad
        return self.decoder.memory(encoded, mask), self.decoder.init_state(encoded)

    def step(self, prev_tokens: Tensor, state: DecoderState, memory: Memory,
             rows_per_sentence: int = 1) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoding step for search: log-probabilities ``[B, V]``, new state, α ``[B, S]``
        (B rows; see :meth:`Decoder.step` for ``rows_per_sentence``)."""
        vector, state, weights = self.decoder.step(prev_tokens, state, memory, rows_per_sentence)
        return torch.log_softmax(self.decoder.project(vector).float(), dim=-1), state, weights

    def forward(self, batch: Batch, teacher_forcing_ratio: float = 1.0,
                label_smoothing: float = 0.0, force_loop: bool = False) -> LossOutput:
        """Teacher-forced loss over the real (non-padding) target tokens of ``batch``.

        The output layer and the loss run once, over only the real tokens: padded positions
        cost no output-layer compute.
        """
        memory, state = self.encode(batch.src, batch.src_lengths)
        vectors, _ = self.decoder(batch.tgt_in, state, memory, teacher_forcing_ratio,
                                  force_loop=force_loop)
        real = batch.tgt_mask
        logits = self.decoder.project(vectors[real]).float()   # [N, V]
        gold = batch.tgt_out[real]                             # [N]
        loss, nll = _SoftmaxCrossEntropy.apply(logits, gold, label_smoothing)
        correct = (logits.argmax(dim=-1) == gold).sum()
        return LossOutput(loss, nll, int(gold.numel()), correct)


def initialize(model: nn.Module) -> None:
    """Xavier-uniform matrices, zero biases, LSTM forget-gate bias 1, zero padding rows."""
    for name, param in model.named_parameters():
        if param.dim() > 1:
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
                      init=dec.init, pad_id=special.pad, tied_embeddings=cfg.tied_embeddings)
    model = Seq2Seq(encoder, decoder, special)
    initialize(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
