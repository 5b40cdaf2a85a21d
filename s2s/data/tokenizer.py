"""SentencePiece subword vocabularies: training, loading from bytes, encoding, decoding.

Every model s2s trains reserves the same special ids: 0 = padding, 1 = unknown,
2 = begin-of-sentence, 3 = end-of-sentence. A SentencePiece model trained elsewhere (for
instance one shared with other toolkits) may number its specials differently or have no
padding piece; its ids are then mapped: s2s's four specials first, then every other piece in
the model's own order (so a model with unk/bos/eos = 0/1/2 and no padding gives V + 1 ids).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
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
        self._to_model, self._to_sp = self._id_maps()

    def _id_maps(self) -> tuple[np.ndarray, np.ndarray]:
        """SentencePiece id → model id and back (model ids without a piece map to -1)."""
        sp = self._sp
        specials = (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id())
        if sp.unk_id() < 0:
            raise DataError("SentencePiece model has no unknown piece; s2s needs one")
        others = [i for i in range(sp.get_piece_size()) if i not in specials]
        to_sp = np.array(list(specials) + others, dtype=np.int64)
        to_model = np.full(sp.get_piece_size(), -1, dtype=np.int64)
        to_model[to_sp[to_sp >= 0]] = np.nonzero(to_sp >= 0)[0]
        return to_model, to_sp

    def vocab_text(self) -> str:
        """The vocabulary as SentencePiece writes it beside a ``.model``: one
        ``piece<TAB>score`` line per model id (the ids s2s uses: specials first)."""
        sp = self._sp
        lines = []
        for sp_id in self._to_sp.tolist():
            lines.append(f"{sp.id_to_piece(sp_id)}\t{sp.get_score(sp_id):g}" if sp_id >= 0
                         else "<pad>\t0")
        return "\n".join(lines) + "\n"

    @classmethod
    def from_file(cls, path: str) -> "Tokenizer":
        """Load a SentencePiece ``.model`` file trained elsewhere."""
        try:
            data = open(path, "rb").read()
        except OSError as err:
            raise DataError(f"{path}: cannot read the SentencePiece model ({err.strerror})") \
                from None
        try:
            return cls(data)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

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
        """Number of model ids (the embedding and output-layer rows)."""
        return len(self._to_sp)

    def encode(self, text: str) -> list[int]:
        return self._to_model[self._sp.encode(text, out_type=int)].tolist()

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encoded = self._sp.encode(list(texts), out_type=int, num_threads=2)
        return [self._to_model[ids].tolist() for ids in encoded]

    def pieces(self, text: str) -> list[str]:
        return self._sp.encode(text, out_type=str)

    def id_to_piece(self, ids: Sequence[int]) -> list[str]:
        names = ("<pad>", "<unk>", "<s>", "</s>")
        return [names[int(i)] if self._to_sp[int(i)] < 0 else
                self._sp.id_to_piece(int(self._to_sp[int(i)])) for i in ids]

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenize, ignoring padding, BOS and EOS (unknown pieces stay visible)."""
        skip = (SPECIAL.pad, SPECIAL.bos, SPECIAL.eos)
        return self._sp.decode([int(self._to_sp[int(i)]) for i in ids if int(i) not in skip])
