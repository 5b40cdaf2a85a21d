"""Keep large freed blocks in the process for reuse (glibc, Linux).

glibc's malloc serves every block above a threshold (at most 32 MiB by default) with a fresh
``mmap`` and returns it to the kernel on ``free``. A training step allocates its logits
``[N, V]`` (1,100 × 8,008 floats = 35 MB on the benchmark model) anew each step, so each
step first-touches ~8,600 fresh pages: ≈ 4,400 page faults and ≈ 10 ms per step more than
with the block reused (docs/benchmarks.md). Raising the mmap and trim thresholds makes
malloc serve those blocks from, and return them to, its heap.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def reuse_large_blocks(threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold`` bytes from malloc's heap and keep up to that much
    free memory there. Returns whether it took effect (glibc only; a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # no glibc (musl, …)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, threshold)) and bool(
        mallopt(_M_TRIM_THRESHOLD, threshold))
