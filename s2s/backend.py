"""Where the model runs, decided once when a command starts: the device, and the backend.

``plain`` runs the model as ``s2s.model`` writes it, everywhere; ``auto`` runs the CPU backend
(:mod:`s2s.cpu`) on the CPU and the plain model elsewhere (on CUDA, cuDNN runs the plain
model's LSTMs).
"""

from __future__ import annotations

from typing import Protocol

import torch

from s2s.cpu import CpuBackend
from s2s.errors import ConfigError
from s2s.model.seq2seq import Seq2Seq
from s2s.search.common import SearchModel

BACKENDS = ("auto", "plain")


class Backend(Protocol):
    name: str

    def configure_process(self, purpose: str) -> None:
        """Process-wide settings for "training" or "decoding", before anything runs."""

    def prepare_training(self, model: Seq2Seq) -> Seq2Seq:
        """``model`` ready to train (in place)."""

    def prepare_decoding(self, model: Seq2Seq) -> SearchModel:
        """What search runs for ``model``, which from now on only decodes."""

    def quantize_int8(self, model: Seq2Seq) -> Seq2Seq:
        """An int8 copy of ``model`` for decoding."""


class PlainBackend:
    """The model as written: no seam filled, no module swapped, no process setting."""

    name = "plain"

    def configure_process(self, purpose: str) -> None:
        pass

    def prepare_training(self, model: Seq2Seq) -> Seq2Seq:
        return model

    def prepare_decoding(self, model: Seq2Seq) -> SearchModel:
        return model

    def quantize_int8(self, model: Seq2Seq) -> Seq2Seq:
        raise ConfigError("int8 decoding is part of the CPU backend; leave out --backend plain")


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else the CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA device; "
                          "use 'auto' or 'cpu'")
    return torch.device(name)


def select_backend(name: str, device: torch.device | str) -> Backend:
    """The backend ``name`` ("auto" or "plain") means on ``device``."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown backend '{name}'; expected one of: {', '.join(BACKENDS)}")
    if name == "plain" or torch.device(device).type != "cpu":
        return PlainBackend()
    return CpuBackend()
