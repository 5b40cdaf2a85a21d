"""Process-wide memory settings: large freed blocks kept for reuse when training
(:func:`reuse_large_blocks`), small caches of prepared products (oneDNN, ideep) in every
process that runs s2s's products (:func:`limit_product_caches`, made by
:func:`configure_training_process` and :func:`configure_decoding_process`), and one malloc
arena when decoding. The malloc settings need glibc (Linux); elsewhere they do nothing.

glibc's malloc serves every block above a threshold (at most 32 MiB by default) with a fresh
``mmap`` and returns it to the kernel on ``free``. A training step allocates its logits
``[N, V]`` (tens of MB) anew each step, so each step first-touches thousands of pages afresh;
raising the mmap and trim thresholds makes malloc serve those blocks from, and return them to,
its heap, and the page faults of a training step fall about tenfold (docs/performance.md).
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Callable, Optional

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
PRIMITIVE_CACHE = 16  # prepared products kept by oneDNN and ideep (their default: 1,024)


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


def limit_product_caches(primitive_cache: int = PRIMITIVE_CACHE) -> None:
    """Keep ``primitive_cache`` prepared products in oneDNN's cache
    (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``) and in torch's ideep layer over it
    (``LRU_CACHE_CAPACITY``), each 1,024 by default: they keep one for every shape and thread
    they meet, and the shapes of s2s's products change with every batch (and in search with
    every finished sentence). On the benchmark model that held tens of MB when decoding and
    0.5–1 GB over 250 training updates; the last few shapes are what gets reused (a miss costs
    a fraction of a millisecond; 0 would crash ideep).

    The variables are set only where the environment does not set them, and take effect only
    if nothing has run on oneDNN yet in this process (both are read once, at first use).
    """
    if primitive_cache < 1:
        raise ValueError(f"primitive_cache must be at least 1, got {primitive_cache}")
    for variable in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY"):
        os.environ.setdefault(variable, str(primitive_cache))


def configure_training_process(primitive_cache: int = PRIMITIVE_CACHE) -> bool:
    """Settings for a process that trains, made before anything runs:
    :func:`limit_product_caches` and :func:`reuse_large_blocks`. Returns whether the latter
    took effect."""
    limit_product_caches(primitive_cache)
    return reuse_large_blocks()


def configure_decoding_process(primitive_cache: int = PRIMITIVE_CACHE) -> bool:
    """Settings for a process that decodes with worker threads (:func:`s2s.search.runner.search`),
    made before the model is loaded: :func:`limit_product_caches`, and malloc one arena for
    threads started from now on (each decoding thread would grow its own, and two workers'
    peak memory several times that of one).

    Returns whether the arena cap took effect (False without glibc).
    """
    limit_product_caches(primitive_cache)
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_ARENA_MAX, 1))
