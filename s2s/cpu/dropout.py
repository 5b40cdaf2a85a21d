"""Inverted dropout with masks drawn from uniform samples, and masks for many steps at once."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor, nn


def keep_masks(p: float, shape: Sequence[int], like: Tensor) -> Tensor:
    """Scaled keep-masks ``[*shape]``: 1 / (1 − p) with probability 1 − p, else 0, drawn as
    [u ≥ p] for u ~ U[0, 1) (torch's ``bernoulli_`` costs about twice its uniform sampler on
    the CPU)."""
    if p >= 1.0:
        return like.new_zeros(shape)
    uniform = torch.rand(shape, dtype=like.dtype, device=like.device)
    return uniform.ge_(p).mul_(1.0 / (1.0 - p))  # in place: 1/(1-p) or 0


class FastDropout(nn.Dropout):
    """:class:`torch.nn.Dropout` (same distribution, same ``p``) with :func:`keep_masks` on the
    CPU; other devices use torch's own."""

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0 or x.device.type != "cpu":
            return super().forward(x)
        return x * keep_masks(self.p, x.shape, x)


def step_masks(dropout: nn.Dropout, shape: Sequence[int], like: Tensor) -> Optional[Tensor]:
    """``dropout``'s keep-masks for many steps at once (one sampler call for a whole loop), or
    None when it is off (eval mode, p = 0)."""
    if not dropout.training or dropout.p == 0.0:
        return None
    return keep_masks(dropout.p, shape, like)


def swap_dropout(model: nn.Module) -> None:
    """Every :class:`torch.nn.Dropout` of ``model`` becomes a :class:`FastDropout` with the
    same ``p`` and mode (dropout layers hold no parameters: the state dict is unchanged)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child) is nn.Dropout:
                setattr(parent, name, FastDropout(child.p, child.inplace).train(child.training))
