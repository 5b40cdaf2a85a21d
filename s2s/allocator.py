"""Keep large freed blocks in the process for reuse (glibc, Linux).

glibc's malloc serves every block above a threshold (at most 32 MiB by default) with a fresh
``mmap`` and returns it to the kernel on ``free``. A training step allocates its logits
``[N, V]`` (1,100 × 8,008 floats = 35 MB on the benchmark model) anew each step, so each
step first-touches its 8,600 pages afresh (≈ 10 ms); on the benchmark model's training steps,
page faults went from ≈ 5,000 to ≈ 600 per step with the blocks reused (docs/benchmarks.md).
It is a process-wide setting: the :class:`~s2s.trainer.Trainer` makes it when it trains on
the CPU. Raising the mmap and trim thresholds makes
malloc serve those blocks from, and return them to, its heap.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Callable, Optional

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_large_blocks(threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold`` bytes (< 2 GiB) from malloc's heap and keep up to
    that much free memory there, for the rest of the process. Returns whether both settings
    took effect: False where there is no glibc, and on old glibc versions that cap the mmap
    threshold at 32 MiB (the trim threshold is still raised there)."""
    if not 0 < threshold < 1 << 31:
        raise ValueError(f"threshold must be in (0, 2 GiB), got {threshold}")
    mallopt = _mallopt()
    if mallopt is None:
        return False
    mapped = bool(mallopt(_M_MMAP_THRESHOLD, threshold))
    trimmed = bool(mallopt(_M_TRIM_THRESHOLD, threshold))
    return mapped and trimmed


def _mallopt() -> Optional[Callable[[int, int], int]]:
    """glibc's ``mallopt``, or None (not Linux, or a libc without it such as musl)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
