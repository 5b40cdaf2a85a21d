"""The offline toy task: reverse a sequence of letters.

``"k d a f"`` → ``"f a d k"``. Deterministic for a seed, generated in memory (no download), and
it needs attention: the first output token depends on the last input token, whatever the length.
Held-out pairs never occur in the training split.
"""

from __future__ import annotations

import random

from s2s.data.corpus import ParallelText

ALPHABET = "abcdefghijklmnopqrst"
MIN_LENGTH, MAX_LENGTH = 3, 14
HELD_OUT_SIZE = 500


def _sequence(rng: random.Random) -> str:
    length = rng.randint(MIN_LENGTH, MAX_LENGTH)
    return " ".join(rng.choice(ALPHABET) for _ in range(length))


def reverse(sentence: str) -> str:
    return " ".join(reversed(sentence.split()))


def _distinct(rng: random.Random, size: int, excluded: set[str]) -> list[str]:
    sentences: list[str] = []
    while len(sentences) < size:
        sentence = _sequence(rng)
        if sentence not in excluded:
            excluded.add(sentence)
            sentences.append(sentence)
    return sentences


def toy_splits(train_size: int, seed: int = 1234) -> dict[str, ParallelText]:
    """``train`` (``train_size`` pairs), ``valid`` and ``test`` (500 pairs each, all distinct
    and absent from ``train``)."""
    rng = random.Random(seed)
    taken: set[str] = set()
    sources = {"valid": _distinct(rng, HELD_OUT_SIZE, taken),
               "test": _distinct(rng, HELD_OUT_SIZE, taken)}
    held_out = set(taken)
    sources["train"] = [s for s in (_sequence(rng) for _ in range(train_size * 2))
                        if s not in held_out][:train_size]
    return {name: ParallelText(src, [reverse(s) for s in src], f"toy:{name}", f"toy:{name}")
            for name, src in sources.items()}
