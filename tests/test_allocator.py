"""reuse_large_blocks: large blocks freed and allocated again mostly cost no fresh pages."""

import resource

import pytest
import torch

from s2s.allocator import _mallopt, reuse_large_blocks


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
