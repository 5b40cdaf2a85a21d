"""Token-budget batches with length bucketing, and collation into padded tensors.

Training batches come from :class:`TokenBatchSampler`: each epoch the pairs are sorted by
(target length, source length) with random tie-breaking, cut into batches whose padded size
``sentences × longest side`` stays within ``batch_tokens``, and the batches are shuffled. Nearly
every position in a batch is a real token, and the order is reproducible from (seed, epoch).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import torch
from torch import Tensor

from s2s.data.tokenizer import SPECIAL


@dataclass
class Batch:
    """Padded tensors for one batch (B sentences).

    src ``[B, S]``: source ids + EOS; src_lengths ``[B]`` (CPU); tgt_in ``[B, T]``: BOS + target;
    tgt_out ``[B, T]``: target + EOS; tgt_mask ``[B, T]``: True on real target positions;
    indices: each row's position in the dataset; tgt_positions ``[N]``: the real target
    positions as indices into the flattened ``[B·T]``, found on the CPU when the batch is made
    (selecting by them needs no device-to-host copy on a GPU, a boolean mask would). Target
    fields are None for inference.
    """

    src: Tensor
    src_lengths: Tensor
    tgt_in: Optional[Tensor]
    tgt_out: Optional[Tensor]
    tgt_mask: Optional[Tensor]
    indices: list[int]
    tgt_positions: Optional[Tensor] = None

    @property
    def size(self) -> int:
        return self.src.size(0)

    def to(self, device: torch.device | str) -> "Batch":
        """The batch's tensors on ``device``; to a GPU from pinned memory, without waiting."""
        pin = torch.device(device).type == "cuda"
        move = (lambda t: (t.pin_memory() if pin else t).to(device, non_blocking=True)
                if t is not None else None)
        return Batch(move(self.src), self.src_lengths, move(self.tgt_in), move(self.tgt_out),
                     move(self.tgt_mask), self.indices, move(self.tgt_positions))


def _pad(rows: Sequence[Sequence[int]], prefix: list[int], suffix: list[int]) -> Tensor:
    width = max(len(r) for r in rows) + len(prefix) + len(suffix)
    out = torch.full((len(rows), width), SPECIAL.pad, dtype=torch.long)
    for i, row in enumerate(rows):
        ids = prefix + list(row) + suffix
        out[i, :len(ids)] = torch.tensor(ids, dtype=torch.long)
    return out


def collate(src: Sequence[Sequence[int]], tgt: Optional[Sequence[Sequence[int]]],
            indices: list[int]) -> Batch:
    """Pad id sequences into a :class:`Batch` (EOS appended to sources, BOS/EOS to targets)."""
    src_tensor = _pad(src, [], [SPECIAL.eos])
    src_lengths = torch.tensor([len(s) + 1 for s in src], dtype=torch.long)
    if tgt is None:
        return Batch(src_tensor, src_lengths, None, None, None, indices)
    tgt_in = _pad(tgt, [SPECIAL.bos], [])
    tgt_out = _pad(tgt, [], [SPECIAL.eos])
    tgt_mask = tgt_out != SPECIAL.pad
    return Batch(src_tensor, src_lengths, tgt_in, tgt_out, tgt_mask, indices,
                 tgt_mask.flatten().nonzero().squeeze(1))


class TokenBatchSampler:
    """Yields lists of dataset indices; resumable through :meth:`state_dict`.

    A batch's cost is ``sentences × max(longest source + 1, longest target + 1)``, at most
    ``batch_tokens`` (a single over-long pair still gets a batch of its own).
    """

    def __init__(self, src_lengths: Sequence[int], tgt_lengths: Sequence[int],
                 batch_tokens: int, seed: int = 0, shuffle: bool = True) -> None:
        self.src_lengths = list(src_lengths)
        self.tgt_lengths = list(tgt_lengths)
        self.batch_tokens = batch_tokens
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._batches: Optional[list[list[int]]] = None

    def batches_for_epoch(self, epoch: int) -> list[list[int]]:
        rng = random.Random(self.seed * 1_000_003 + epoch)
        tie = [rng.random() for _ in self.src_lengths] if self.shuffle else list(
            range(len(self.src_lengths)))
        order = sorted(range(len(self.src_lengths)),
                       key=lambda i: (self.tgt_lengths[i], self.src_lengths[i], tie[i]))
        batches, current, longest = [], [], 0
        for index in order:
            length = max(self.src_lengths[index], self.tgt_lengths[index]) + 1
            if current and (len(current) + 1) * max(longest, length) > self.batch_tokens:
                batches.append(current)
                current, longest = [], 0
            current.append(index)
            longest = max(longest, length)
        if current:
            batches.append(current)
        if self.shuffle:
            rng.shuffle(batches)
        return batches

    def __len__(self) -> int:
        return len(self._epoch_batches())

    def _epoch_batches(self) -> list[list[int]]:
        if self._batches is None:
            self._batches = self.batches_for_epoch(self.epoch)
        return self._batches

    def __iter__(self) -> Iterator[list[int]]:
        """The remaining batches of the current epoch; afterwards the next epoch begins."""
        batches = self._epoch_batches()
        while self.position < len(batches):
            batch = batches[self.position]
            self.position += 1
            yield batch
        self.epoch += 1
        self.position = 0
        self._batches = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position, self.seed = state["epoch"], state["position"], state["seed"]
        self._batches = None


def sentence_batches(lengths: Sequence[int], batch_size: int,
                     max_tokens: int = 0) -> list[list[int]]:
    """Indices grouped ``batch_size`` at a time in length order (for decoding and held-out
    losses; callers restore the original order through :attr:`Batch.indices`); with
    ``max_tokens``, a batch also stops before ``sentences × longest`` would pass it (a long
    sentence then gets a batch of its own)."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for index in order:
        full = len(current) >= batch_size or (
            max_tokens and (len(current) + 1) * lengths[index] > max_tokens)
        if current and full:
            batches.append(current)
            current = []
        current.append(index)
    if current:
        batches.append(current)
    return batches
