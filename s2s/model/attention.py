"""Attention: one class per score function, chosen by name through a registry.

At a decoder step the query s (the decoder state) is scored against every encoder state h(i);
a softmax over the real source positions gives the weights α, and the context is
a = Σᵢ αᵢ h(i). Shapes: B sentences, T query steps (1 for one decoding step, the target
length for the loop-free teacher-forced path), S source positions.

The contract every attention module follows:

* ``precompute(keys, values)`` runs once per batch over the encoder states ``[B, S, key_size]``
  and returns the keys and values in the form ``forward`` takes them (Bahdanau's W₂h, say).
* ``forward(query, keys, values, mask)``: query ``[B, T, query_size]``, mask ``[B, S]`` (True
  on real tokens) → context ``[B, T, context_size]`` and weights ``[B, T, S]`` (rows sum to 1,
  exactly zero on padding).
* ``uses_previous_state``: True when the query is s(t-1) and the context feeds the LSTM
  input (Bahdanau); False when it is s(t), after the LSTM step (Luong).
* ``speedups``: what a backend may compute in its own way for this very class (see
  :meth:`Attention.declares`). A subclass inherits none of them, so a changed score never runs
  down a path written for its parent.

A new score function is one subclass plus ``@register("name")``; docs/architecture.md has a
worked example.
"""

from __future__ import annotations

import math
from typing import Callable, ClassVar

import torch
from torch import Tensor, nn

ATTENTIONS: dict[str, type["Attention"]] = {}

WEIGHTED_VALUES = "weighted_values"  # context = weights @ values, values = the encoder states
ADDITIVE = "additive"  # Bahdanau's score, with its query_proj, key_proj and energy layers


def register(name: str) -> Callable[[type["Attention"]], type["Attention"]]:
    """Class decorator adding an attention type under ``name`` (its YAML ``model.attention``)."""

    def add(cls: type[Attention]) -> type[Attention]:
        ATTENTIONS[name] = cls
        return cls

    return add


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """softmax over the last axis of ``scores [B, T, S]``; positions where ``mask [B, S]`` is
    False get exactly zero weight."""
    return torch.softmax(scores.masked_fill(~mask.unsqueeze(1), float("-inf")), dim=-1)


def attend(scores: Tensor, values: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """α = masked softmax of ``scores [B, T, S]``; returns (α·values ``[B, T, C]``, α)."""
    weights = masked_softmax(scores, mask)
    return torch.bmm(weights, values), weights


class Attention(nn.Module):
    """Base class: ``forward`` = softmax of :meth:`score` over the real positions, then the
    weighted sum of the values. See the module docstring for the contract."""

    uses_previous_state: bool = False
    speedups: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, query_size: int, key_size: int, **_: int) -> None:
        super().__init__()
        self.query_size = query_size
        self.key_size = key_size
        self.context_size = key_size

    @classmethod
    def declares(cls, speedup: str) -> bool:
        """Whether this class itself (not a base class) lists ``speedup`` in ``speedups``."""
        return speedup in vars(cls).get("speedups", ())

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        """Once per batch, over ``keys, values [B, S, key_size]``; default: unchanged."""
        return keys, values

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        """Unnormalized scores ``[B, T, S]`` for ``query [B, T, query_size]``."""
        raise NotImplementedError

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        return attend(self.score(query, keys), values, mask)


@register("dot")
class DotAttention(Attention):
    """Luong dot: score(s, h) = sᵀh. Needs query_size == key_size."""

    speedups = frozenset({WEIGHTED_VALUES})

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register("scaled_dot")
class ScaledDotAttention(Attention):
    """Scaled dot (Vaswani et al.): score(s, h) = sᵀh / √n, n = key_size."""

    speedups = frozenset({WEIGHTED_VALUES})

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2)) / math.sqrt(self.key_size)


@register("general")
class GeneralAttention(Attention):
    """Luong general: score(s, h) = sᵀ W h, with W h ``[B, S, query_size]`` once per batch."""

    speedups = frozenset({WEIGHTED_VALUES})

    def __init__(self, query_size: int, key_size: int, **_: int) -> None:
        super().__init__(query_size, key_size)
        self.key_proj = nn.Linear(key_size, query_size, bias=False)

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self.key_proj(keys), values

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        return torch.bmm(query, keys.transpose(1, 2))


@register("bahdanau")
@register("concat")
class BahdanauAttention(Attention):
    """Bahdanau (additive, concat): score(s(t-1), h) = wᵀ tanh(W₁ s(t-1) + W₂ h).

    W₂h + b ``[B, S, A]`` (A = attention_size) once per batch; the decoder scores with its
    previous state and feeds the context into the LSTM input.
    """

    uses_previous_state = True
    speedups = frozenset({WEIGHTED_VALUES, ADDITIVE})

    def __init__(self, query_size: int, key_size: int, attention_size: int | None = None,
                 **_: int) -> None:
        super().__init__(query_size, key_size)
        size = attention_size or query_size
        self.query_proj = nn.Linear(query_size, size, bias=False)   # W₁
        self.key_proj = nn.Linear(key_size, size, bias=True)        # W₂, b
        self.energy = nn.Linear(size, 1, bias=False)                # w

    def precompute(self, keys: Tensor, values: Tensor) -> tuple[Tensor, Tensor]:
        return self.key_proj(keys), values

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        hidden = torch.tanh(self.query_proj(query).unsqueeze(2) + keys.unsqueeze(1))  # [B,T,S,A]
        return self.energy(hidden).squeeze(-1)


@register("location")
class LocationAttention(Attention):
    """Luong location: α(t) = softmax(W s(t)), from the decoder state alone.

    W gives one logit per source position up to ``max_source_length``; padded positions are
    masked and the rest renormalized. Positions past ``max_source_length`` get no weight.
    """

    speedups = frozenset({WEIGHTED_VALUES})

    def __init__(self, query_size: int, key_size: int, max_source_length: int = 128,
                 **_: int) -> None:
        super().__init__(query_size, key_size)
        self.max_source_length = max_source_length
        self.position_logits = nn.Linear(query_size, max_source_length)

    def score(self, query: Tensor, keys: Tensor) -> Tensor:
        logits = self.position_logits(query)  # [B, T, max_source_length]
        extra = keys.size(1) - self.max_source_length
        if extra <= 0:
            return logits[:, :, :keys.size(1)]
        return torch.cat([logits, logits.new_full((*logits.shape[:2], extra), -math.inf)], -1)

    def forward(self, query: Tensor, keys: Tensor, values: Tensor,
                mask: Tensor) -> tuple[Tensor, Tensor]:
        if keys.size(1) > self.max_source_length:
            mask = mask.clone()
            mask[:, self.max_source_length:] = False
        return super().forward(query, keys, values, mask)


@register("multihead")
class MultiHeadAttention(Attention):
    """Multi-head scaled dot product (Vaswani et al.), d = query_size, d_h = d / num_heads:

        headᵢ = softmax((s Wᵢ^Q)(H Wᵢ^K)ᵀ / √d_h) H Wᵢ^V,    a = [head₁; …; head_k] W^O.

    Keys and values are projected once per batch (``[B, heads, S, d_h]``). The weights returned
    are the heads' mean (rows still sum to 1), for plotting.
    """

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
        q = self._split(self.query_proj(query))                        # [B, h, T, d_h]
        scores = q @ keys.transpose(2, 3) / math.sqrt(self.head_size)  # [B, h, T, S]
        weights = torch.softmax(scores.masked_fill(~mask[:, None, None, :], -math.inf), -1)
        heads = (weights @ values).transpose(1, 2)                     # [B, T, h, d_h]
        context = self.out_proj(heads.reshape(batch, steps, self.context_size))
        return context, weights.mean(dim=1)


def build_attention(name: str, query_size: int, key_size: int, **options: int) -> Attention:
    """The attention registered as ``name``, for queries and keys of these sizes."""
    if name not in ATTENTIONS:
        raise KeyError(f"unknown attention '{name}'; known: {', '.join(sorted(ATTENTIONS))}")
    return ATTENTIONS[name](query_size, key_size, **options)
