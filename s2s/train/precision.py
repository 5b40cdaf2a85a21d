"""Mixed-precision training: ``training.precision`` fp32, bf16 or fp16.

bf16 and fp16 run the forward pass under ``torch.autocast`` (matrix products in half
precision, reductions and the loss in float32); the weights, gradients and optimizer state stay
float32. fp16's narrow range needs a gradient scaler: the loss is multiplied by a scale before
the backward pass and the gradients divided by it before clipping; an update whose scaled
gradients overflowed is skipped and the scale lowered. That skip is the scaler's normal work,
not a "bad step", and the scaler's state is part of the checkpoint so a resumed run goes on
exactly. fp16 needs CUDA (its scaler and kernels are CUDA's); bf16 runs on the CPU too.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, ContextManager, Optional

import torch

from s2s.errors import ConfigError

log = logging.getLogger("s2s")

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (on the CPU: AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()


class Precision:
    """Autocast, backward and optimizer step for one precision on one device."""

    def __init__(self, name: str, device: torch.device) -> None:
        if name == "fp16" and device.type != "cuda":
            raise ConfigError("config key 'training.precision': fp16 needs a CUDA device (its "
                              "gradient scaler and kernels are CUDA's); use bf16 or fp32 on the "
                              "CPU")
        if name == "bf16" and device.type == "cuda" and not native_bf16(device):
            raise ConfigError("config key 'training.precision': this GPU has no bf16 support; "
                              "use fp16 or fp32")
        if name == "bf16" and device.type == "cpu" and not native_bf16(device):
            log.info("bf16 on a CPU without native bf16 (AVX512-BF16 or AMX): torch emulates "
                     "it, usually slower than fp32")
        self.name = name
        self.device = device
        self.scaler: Optional[torch.amp.GradScaler] = (
            torch.amp.GradScaler(device.type) if name == "fp16" else None)

    def autocast(self) -> ContextManager[Any]:
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.name])

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def unscale(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients back to their true size (before clipping); fp16 only."""
        if self.scaler is not None:
            self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, finite: bool) -> None:
        """The optimizer step when the gradients are ``finite``; then the scaler's update (which
        lowers the scale after an overflow)."""
        if self.scaler is None:
            if finite:
                optimizer.step()
            return
        if finite:
            self.scaler.step(optimizer)
        self.scaler.update()

    def state_dict(self) -> dict[str, Any]:
        return self.scaler.state_dict() if self.scaler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
