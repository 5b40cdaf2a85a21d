"""SentencePiece subword vocabularies: training, loading from bytes, encoding, decoding.

Every model s2s trains reserves the same special ids: 0 = padding, 1 = unknown,
2 = begin-of-sentence, 3 = end-of-sentence.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Sequence

import sentencepiece as spm

from s2s.errors import DataError


@dataclass(frozen=True)
class SpecialIds:
    pad: int = 0
    unk: int = 1
    bos: int = 2
    eos: int = 3


SPECIAL = SpecialIds()


class Tokenizer:
    """A SentencePiece model held in memory (so it can live inside a checkpoint)."""

    def __init__(self, model_bytes: bytes) -> None:
        self.model_bytes = bytes(model_bytes)
        self._sp = spm.SentencePieceProcessor()
        try:
            self._sp.LoadFromSerializedProto(self.model_bytes)
        except Exception as err:  # sentencepiece raises a bare RuntimeError/OSError
            raise DataError(f"invalid SentencePiece model ({err})") from None
        ids = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if ids != (SPECIAL.pad, SPECIAL.unk, SPECIAL.bos, SPECIAL.eos):
            raise DataError(f"SentencePiece model has special ids pad/unk/bos/eos = {ids}; "
                            f"s2s needs 0/1/2/3")

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "unigram",
              character_coverage: float = 1.0,
              input_sentence_size: int = 1_000_000) -> "Tokenizer":
        """Train on ``sentences``; ``vocab_size`` is an upper bound (smaller data gets fewer)."""
        buffer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(sentences), model_writer=buffer, vocab_size=vocab_size,
                model_type=model_type, character_coverage=character_coverage,
                pad_id=SPECIAL.pad, unk_id=SPECIAL.unk, bos_id=SPECIAL.bos, eos_id=SPECIAL.eos,
                hard_vocab_limit=False, input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True, num_threads=2, minloglevel=2,
                bos_piece="<s>", eos_piece="</s>", pad_piece="<pad>", unk_piece="<unk>")
        except RuntimeError as err:
            raise DataError(f"SentencePiece training failed: {err}") from None
        return cls(buffer.getvalue())

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self._sp.encode(text, out_type=int)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._sp.encode(list(texts), out_type=int, num_threads=2)

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def id_to_piece(self, ids: Sequence[int]) -> list[str]:
        return [self._sp.id_to_piece(int(i)) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize, ignoring padding, BOS and EOS (unknown pieces stay visible)."""
        skip = (SPECIAL.pad, SPECIAL.bos, SPECIAL.eos)
        return self._sp.decode([int(i) for i in ids if int(i) not in skip])
