"""s2s: LSTM encoder-decoder translation models with pluggable attention.

The Python API: ``from s2s import Translator``; ``Translator.load("best.pt")`` then
``.translate(sentences, beam_size=5)`` and ``.score(sources, targets)``.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["Translator", "SentenceScore"]


def __getattr__(name: str) -> Any:
    """Import the API on first use: ``import s2s`` stays free of torch and of every module."""
    if name in __all__:
        from s2s import inference
        return getattr(inference, name)
    raise AttributeError(f"module 's2s' has no attribute {name!r}")
