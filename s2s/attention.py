"""Attention modules: one class per score function, chosen by name through a registry.

The contract every module follows (shapes use B = batch, T = query steps, S = source length):

* ``precompute(keys, values)`` runs once per batch, before decoding, and returns the keys and
  values in the form ``forward`` wants them (e.g. ``W2·h`` for Bahdanau). Default: unchanged.
* ``forward(query, keys, values, mask)`` takes ``query [B, T, query_size]`` (``T = 1`` for a
  single decoder step, ``T = tgt_len`` for the loop-free teacher-forced path), precomputed
  ``keys``/``values [B, S, *]`` and ``mask [B, S]`` (True on real source tokens). It returns
  ``context [B, T, context_size]`` and ``weights [B, T, S]``: rows sum to 1 and are exactly zero
  on padded positions.
* ``uses_previous_state``: True when the score uses s(t-1) and the context is fed into the
  LSTM input (Bahdanau); False when it uses s(t), computed after the LSTM step (Luong).
* ``context_is_weighted_values``: True when the context is ``weights @ values`` (the base
  class's ``forward``), so linear maps of it can be applied to the values once per batch
  instead (``s2s.prepack.ContextFolding``); a subclass whose ``forward`` does more sets False.

A new score function is one subclass plus ``@register("name")``.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

ATTENTIONS: dict[str, type["Attention"]] = {}


def register(name: str) -> Callable[[type["Attention"]], type["Attention"]]:
    """Class decorator adding an attention type under ``name`` (its YAML ``model.attention``)."""

    def add(cls: type[Attention]) -> type[Attention]:
        ATTENTIONS[name] = cls
        return cls

    return add


def _sigmoid_tanh_(x: Tensor) -> Tensor:
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


class _SigmoidTanh(torch.autograd.Function):
    """tanh(x) = 2σ(2x) − 1 in place (x must be a temporary); backward g·(1 − y²)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        y = _sigmoid_tanh_(x)
        ctx.mark_dirty(x)
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return torch.ops.aten.tanh_backward(grad, y)


def fast_tanh_(x: Tensor) -> Tensor:
    """tanh, in place on the temporary ``x``, for the large ``[B, T, S, A]`` Bahdanau energies.

    On CPU torch's tanh (1-ULP Sleef) costs about 2.5× its sigmoid, and tanh(x) = 2σ(2x) − 1
    agrees with it to ~2e-7; in place, it also allocates no second energy-sized tensor.
    """
    if x.device.type != "cpu":
        return torch.tanh_(x)
    if not (torch.is_grad_enabled() and x.requires_grad):
        return _sigmoid_tanh_(x)
    return _SigmoidTanh.apply(x)


class _AdditiveEnergies(torch.autograd.Function):
    """e = wᵀ tanh(W₂h + W₁s) ``[B, T, S]`` from W₂h ``[B, S, A]``, W₁s ``[B, T, A]`` and w ``[A]``.

    The backward is written by hand: ∂z = (1 − y²) ⊙ w ⊙ ∂e in place on the saved
    y = tanh(z), then summed over T for W₂h and over S for W₁s. Autograd's would compute
    ``nn.Linear(A, 1)``'s input gradient as an [M, 1] × [1, A] matrix product, which MKL runs at
    ≈ 2 GFLOP/s (3.5% of a training step on the benchmark model), and allocate two more
    [B, T, S, A] tensors.
    """

    @staticmethod
    def forward(ctx: Any, keys: Tensor, projected: Tensor, weight: Tensor) -> Tensor:  # type: ignore[override]
        # keys first: the [B, T, S, A] sum takes their row-major layout even when
        # ``projected`` is a transposed view (see s2s.recurrent.step_product)
        hidden = fast_tanh_(keys.unsqueeze(1) + projected.unsqueeze(2))  # grad mode is off here
        ctx.save_for_backward(hidden, weight)
        return hidden @ weight

    @staticmethod
    @once_differentiable  # it overwrites what it saved
    def backward(ctx: Any, grad: Tensor) -> tuple[Optional[Tensor], ...]:  # type: ignore[override]
        hidden, weight = ctx.saved_tensors
        needs_keys, needs_projected, needs_weight = ctx.needs_input_grad
        grad_weight = (hidden.reshape(-1, hidden.size(-1)).t() @ grad.reshape(-1)
                       if needs_weight else None)
        grad_z = hidden.mul_(hidden).neg_().add_(1.0).mul_(weight).mul_(grad.unsqueeze(-1))
        return (grad_z.sum(dim=1) if needs_keys else None,
                grad_z.sum(dim=2) if needs_projected else None, grad_weight)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis of ``scores [B, T, S]`` with ``mask [B, S]`` False positions
    forced to exactly zero weight."""
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    return torch.softmax(scores, dim=-1)


def attend(scores: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """α = masked softmax of ``scores [B, T, S]``; returns (α·values ``[B, T, C]``, α)."""
    weights = masked_softmax(scores, mask)
    return torch.bmm(weights, values), weights


class Attention(nn.Module):
    """Base class; see the module docstring for the contract."""

    uses_previous_state: bool = False
    context_is_weighted_values: bool = True

    def __init__(self, query_size: int, key_size: int, **_: int) -> None:
        super().__init__()
        self.query_size = query_size
        self.key_size = key_size
        self.context_size = key_size

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Per-batch work on ``keys, values [B, S, key_size]``; default: none."""
        return keys, values

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """Unnormalized scores ``[B, T, S]`` for ``query [B, T, Dq]``."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        return attend(self.score(query, keys), values, mask)


@register("dot")
class DotAttention(Attention):
    """Luong dot: score(s, h) = sᵀh. Needs query_size == key_size."""

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register("scaled_dot")
class ScaledDotAttention(Attention):
    """Vaswani scaled dot: score(s, h) = sᵀh / √n, n = key_size."""

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2)) / math.sqrt(self.key_size)


@register("general")
class GeneralAttention(Attention):
    """Luong general: score(s, h) = sᵀ W h, with W·h computed once per batch."""

    def __init__(self, query_size: int, key_size: int, **_: int) -> None:
        super().__init__(query_size, key_size)
        self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self.key_proj(keys), values  # [B, S, Dq]

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register("bahdanau")
@register("concat")
class BahdanauAttention(Attention):
    """Bahdanau (additive / concat): score(s(t-1), h) = wᵀ tanh(W₁ s(t-1) + W₂ h).

    W₂h is computed once per batch in :meth:`precompute`; the decoder scores with its previous
    state and feeds the context into the LSTM input.
    """

    uses_previous_state = True

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None,
                 **_: int) -> None:
        super().__init__(query_size, key_size)
        size = attention_size or query_size
        self.query_proj = nn.Linear(query_size, size, bias=False)
        self.key_proj = nn.Linear(key_size, size, bias=True)
        self.energy = nn.Linear(size, 1, bias=False)

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self.key_proj(keys), values  # [B, S, A]

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return self._energies(self.query_proj(query), keys)

    def _energies(self, projected: Tensor, keys: Tensor) -> Tensor:
        """wᵀ tanh(W₁s + W₂h) ``[B, T, S]`` from W₁s ``[B, T, A]`` and W₂h ``[B, S, A]``."""
        if not torch.is_grad_enabled() and keys.device.type == "cpu":
            # decoding: wᵀtanh(z) = 2·wᵀσ(2z) − Σw, three passes over [B, T, S, A]
            # (sum, sigmoid, product with w) instead of six; one query row (beam) at a time,
            # so the temporary stays [B, 1, S, A]
            rows = [self._decoding_energies(projected[:, t:t + 1], keys)
                    for t in range(projected.size(1))]
            energies = rows[0] if len(rows) == 1 else torch.cat(rows, dim=1)
            return energies.mul_(2.0).sub_(self.energy(keys.new_ones(1, keys.size(-1))))  # Σw
        return _AdditiveEnergies.apply(keys, projected, self.energy.weight.view(-1))

    def _decoding_energies(self, projected: Tensor, keys: Tensor) -> Tensor:
        """wᵀσ(2(W₁s + W₂h)) ``[B, T, S]`` from W₁s ``[B, T, A]``, W₂h ``[B, S, A]``."""
        doubled = torch.add((2.0 * projected).unsqueeze(2), keys.unsqueeze(1), alpha=2.0)
        return self.energy(doubled.sigmoid_()).squeeze(-1)


@register("location")
class LocationAttention(Attention):
    """Luong location: a(t) = softmax(W s(t)), from the decoder state alone.

    W maps the state to one logit per source position up to ``max_source_length``; positions
    beyond a sentence's length (padding) are masked and the rest renormalized. Positions past
    ``max_source_length`` can never be attended to.
    """

    def __init__(self, query_size: int, key_size: int, max_source_length: int = 128,
                 **_: int) -> None:
        super().__init__(query_size, key_size)
        self.max_source_length = max_source_length
        self.position_logits = nn.Linear(query_size, max_source_length)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        src_len = keys.size(1)
        logits = self.position_logits(query)  # [B, T, max_len]
        if src_len <= self.max_source_length:
            return logits[:, :, :src_len]
        unreachable = logits.new_full((*logits.shape[:2], src_len - self.max_source_length),
                                      float("-inf"))
        return torch.cat([logits, unreachable], dim=-1)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        if keys.size(1) > self.max_source_length:
            mask = mask.clone()
            mask[:, self.max_source_length:] = False
        return super().forward(query, keys, values, mask)


@register("multihead")
class MultiHeadAttention(Attention):
    """Multi-head scaled dot-product attention (Vaswani et al.).

    headᵢ = softmax((s Wᵢ^Q)(H Wᵢ^K)ᵀ / √d_h) H Wᵢ^V with d_h = d / num_heads and d = query_size;
    context = [head₁; …; head_k] W^O, of size d. Keys and values are projected once per batch.
    The returned weights are the mean over heads (still summing to 1) for plotting.
    """

    context_is_weighted_values = False  # the heads' weights differ, and W^O follows

    def __init__(self, query_size: int, key_size: int, num_heads: int = 1, **_: int) -> None:
        super().__init__(query_size, key_size)
        if query_size % num_heads:
            raise ValueError(f"num_heads={num_heads} must divide query_size={query_size}")
        self.num_heads = num_heads
        self.head_size = query_size // num_heads
        self.context_size = query_size
        self.query_proj = nn.Linear(query_size, query_size, bias=False)
        self.key_proj = nn.Linear(key_size, query_size, bias=False)
        self.value_proj = nn.Linear(key_size, query_size, bias=False)
        self.out_proj = nn.Linear(query_size, query_size, bias=False)

    def _split(self, x: Tensor) -> Tensor:
        """[B, L, d] -> [B, heads, L, d_h]"""
        batch, length, _ = x.shape
        return x.view(batch, length, self.num_heads, self.head_size).transpose(1, 2)

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self._split(self.key_proj(keys)), self._split(self.value_proj(values))

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        batch, steps, _ = query.shape
        q = self._split(self.query_proj(query))                      # [B, h, T, d_h]
        scores = q @ keys.transpose(2, 3) / math.sqrt(self.head_size)  # [B, h, T, S]
        scores = scores.masked_fill(~mask[:, None, None, :], float("-inf"))
        weights = torch.softmax(scores, dim=-1)
        heads = weights @ values                                     # [B, h, T, d_h]
        context = heads.transpose(1, 2).reshape(batch, steps, self.context_size)
        return self.out_proj(context), weights.mean(dim=1)


def build_attention(name: str, query_size: int, key_size: int, **options: int) -> Attention:
    """Instantiate the attention registered as ``name``."""
    if name not in ATTENTIONS:
        raise KeyError(f"unknown attention '{name}'; known: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name](query_size, key_size, **options)
