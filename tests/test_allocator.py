"""reuse_large_blocks: large blocks freed and allocated again mostly cost no fresh pages.
configure_decoding_process: small prepared-product caches, one malloc arena for new threads."""

import os
import resource
import subprocess
import sys

import pytest
import torch

from s2s.cpu.allocator import (_mallopt, configure_decoding_process, configure_training_process,
                           reuse_large_blocks)


def _page_faults_of_logits(rounds: int) -> int:
    """Faults while allocating, filling and freeing logits-sized blocks (35 MB, above
    glibc's 32 MiB mmap threshold), a little different in size each time as batches are."""
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for i in range(rounds):
        torch.empty(1100 + 7 * (i % 5), 8008).fill_(1.0)
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before


@pytest.mark.skipif(_mallopt() is None, reason="needs glibc's mallopt")
def test_large_blocks_are_reused_instead_of_mapped_afresh():
    if not reuse_large_blocks():
        pytest.skip("this glibc caps the mmap threshold at 32 MiB")
    _page_faults_of_logits(3)
    pages_per_block = 1100 * 8008 * 4 // resource.getpagesize()
    # mapped afresh (glibc's default) each round faults all its pages in again: 30 blocks'
    # worth; reused, about 5 (measured: 261,372 vs 43,942 faults)
    assert _page_faults_of_logits(30) < 12 * pages_per_block


def test_a_threshold_out_of_range_is_refused():
    with pytest.raises(ValueError, match="threshold"):
        reuse_large_blocks(1 << 31)


ARENAS_AFTER_THREADS = """
import ctypes, os, sys, threading
import torch
from s2s.cpu.allocator import configure_decoding_process
if sys.argv[1] == "configured":
    assert configure_decoding_process(8)
blocks = []
def allocate():
    blocks.append(torch.ones(1000, 1000))  # malloc'ed in this thread
threads = [threading.Thread(target=allocate) for _ in range(3)]
for thread in threads: thread.start()
for thread in threads: thread.join()
print(os.environ.get("ONEDNN_PRIMITIVE_CACHE_CAPACITY"), os.environ.get("LRU_CACHE_CAPACITY"))
sys.stdout.flush()
ctypes.CDLL("libc.so.6").malloc_stats()  # one "Arena N:" line per arena, on stderr
"""


@pytest.mark.skipif(_mallopt() is None, reason="needs glibc's mallopt")
@pytest.mark.parametrize("setting", ["configured", "default"])
def test_decoding_process_keeps_new_threads_in_one_arena(setting):
    env = {k: v for k, v in os.environ.items()
           if k not in ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "LRU_CACHE_CAPACITY",
                        "MALLOC_ARENA_MAX")}
    run = subprocess.run([sys.executable, "-c", ARENAS_AFTER_THREADS, setting], env=env,
                         capture_output=True, text=True, check=True)
    arenas = run.stderr.count("Arena ")
    if setting == "configured":
        assert run.stdout.split() == ["8", "8"] and arenas == 1
    else:
        assert run.stdout.split() == ["None", "None"] and arenas > 1


def test_decoding_settings_leave_the_environment_s_own_and_refuse_an_empty_cache(monkeypatch):
    environment = {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64"}
    monkeypatch.setattr(os, "environ", environment)  # a stand-in: the real one stays as it is
    monkeypatch.setattr("s2s.cpu.allocator._mallopt", lambda: None)  # leave this process's malloc
    assert configure_decoding_process(8) is False
    assert environment == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "64", "LRU_CACHE_CAPACITY": "8"}
    with pytest.raises(ValueError, match="at least 1"):
        configure_decoding_process(0)


def test_training_processes_get_the_small_caches_too(monkeypatch):
    environment: dict[str, str] = {}
    monkeypatch.setattr(os, "environ", environment)
    configure_training_process()
    assert environment == {"ONEDNN_PRIMITIVE_CACHE_CAPACITY": "16", "LRU_CACHE_CAPACITY": "16"}
