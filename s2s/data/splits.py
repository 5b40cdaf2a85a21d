"""From a ``DataConfig`` to encoded splits and tokenizers: the data side of training.

corpus files (or Multi30k / toy) → SentencePiece (trained on the training split, cached in the
run directory) → id sequences, filtered by length with the drops counted and logged.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from s2s.config import DataConfig, TokenizerConfig
from s2s.data.corpus import (FilterCounts, ParallelText, filter_pairs, find_side,
                             multi30k_prefix, read_parallel)
from s2s.data.tokenizer import Tokenizer
from s2s.data.toy import toy_splits
from s2s.errors import DataError, writing

log = logging.getLogger(__name__)

SPLITS = ("train", "valid", "test")


@dataclass
class Tokenizers:
    src: Tokenizer
    tgt: Tokenizer

    @property
    def joint(self) -> bool:
        return self.src.model_bytes == self.tgt.model_bytes

    def to_checkpoint(self) -> dict[str, bytes]:
        return {"src": self.src.model_bytes, "tgt": self.tgt.model_bytes}

    @classmethod
    def from_checkpoint(cls, blob: dict[str, bytes]) -> "Tokenizers":
        src = Tokenizer(blob["src"])
        return cls(src, src if blob["tgt"] == blob["src"] else Tokenizer(blob["tgt"]))


@dataclass
class EncodedSplit:
    """A split after tokenization: ids of the kept pairs and the raw text of all of them."""

    src_ids: list[list[int]]
    tgt_ids: list[list[int]]
    raw: ParallelText
    kept: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.src_ids)

    @property
    def references(self) -> list[str]:
        """Raw target sentences of the kept pairs (what BLEU is computed against)."""
        return [self.raw.tgt[i] for i in self.kept]

    @property
    def sources(self) -> list[str]:
        return [self.raw.src[i] for i in self.kept]


def read_split(cfg: DataConfig, split: str) -> Optional[ParallelText]:
    """Raw text of ``split`` (train/valid/test, or for Multi30k one of its test sets by name)
    for the configured corpus; None if not set."""
    if split not in SPLITS and cfg.corpus != "multi30k":
        raise DataError(f"split '{split}' is a Multi30k test set, but the corpus is "
                        f"'{cfg.corpus}'; use --src and --ref")
    if cfg.corpus == "toy":
        return toy_splits(cfg.toy_train_size)[split]
    if cfg.corpus == "multi30k":
        prefix = multi30k_prefix(split, cfg.root, cfg.src_lang, cfg.tgt_lang)
    else:
        prefix = getattr(cfg, split)
        if prefix is None:
            return None
    return read_parallel(find_side(prefix, cfg.src_lang), find_side(prefix, cfg.tgt_lang))


def _fingerprint(cfg: DataConfig, text: ParallelText) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(vars(cfg.tokenizer), sort_keys=True).encode())
    for side in (text.src, text.tgt):
        digest.update(str(len(side)).encode())
        for line in side:
            digest.update(line.encode("utf-8"))
            digest.update(b"\n")
    return digest.hexdigest()


def _cached_fingerprint(meta: Path) -> Optional[str]:
    """The fingerprint recorded beside cached models (None when unreadable: retrain)."""
    try:
        return json.loads(meta.read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError, AttributeError):
        return None


def configured_vocab(tok: TokenizerConfig) -> Optional[tuple[int, int]]:
    """The largest (source, target) vocabulary sizes ``tok`` can give (SentencePiece may give
    fewer), or None when a given ``.model`` file decides them."""
    if tok.model:
        return None
    if tok.joint:
        return tok.vocab_size, tok.vocab_size
    return tok.src_vocab_size or tok.vocab_size, tok.tgt_vocab_size or tok.vocab_size


def _train_tokenizer(sentences: list[str], vocab_size: int, cfg: DataConfig) -> Tokenizer:
    tok = cfg.tokenizer
    return Tokenizer.train(sentences, vocab_size, tok.model_type, tok.character_coverage,
                           tok.input_sentence_size)


def build_tokenizers(cfg: DataConfig, train: ParallelText,
                     cache_dir: Optional[Path]) -> Tokenizers:
    """Load the configured SentencePiece model, or train one on the training split, or reuse
    the copy cached in ``cache_dir`` when it was trained on the same text with the same
    settings."""
    if cfg.tokenizer.model is not None:
        shared = Tokenizer.from_file(cfg.tokenizer.model)
        log.info("using the SentencePiece model %s (%d ids)", cfg.tokenizer.model, len(shared))
        return Tokenizers(shared, shared)
    fingerprint = _fingerprint(cfg, train)
    names = ("joint",) if cfg.tokenizer.joint else ("src", "tgt")
    if cache_dir is not None:
        meta = cache_dir / "tokenizer.json"
        files = [cache_dir / f"spm_{n}.model" for n in names]
        if meta.is_file() and all(f.is_file() for f in files):
            if _cached_fingerprint(meta) == fingerprint:
                loaded = [Tokenizer(f.read_bytes()) for f in files]
                log.info("reusing the SentencePiece model(s) cached in %s", cache_dir)
                return Tokenizers(loaded[0], loaded[-1])
    empty = sum(1 for src, tgt in zip(train.src, train.tgt) if not (src and tgt))
    if empty == len(train):  # SentencePiece would fail on no text with its own message
        raise DataError(f"train split ({train.src_path}, {train.tgt_path}): all {len(train)} "
                        f"pairs were filtered out ({FilterCounts(empty=empty).describe()}); "
                        f"check the files")
    log.info("training SentencePiece (%s) on %d pairs", "joint" if cfg.tokenizer.joint else
             "separate", len(train))
    tok = cfg.tokenizer
    if tok.joint:
        joint = _train_tokenizer(train.src + train.tgt, tok.vocab_size, cfg)
        tokenizers = Tokenizers(joint, joint)
    else:
        tokenizers = Tokenizers(
            _train_tokenizer(train.src, tok.src_vocab_size or tok.vocab_size, cfg),
            _train_tokenizer(train.tgt, tok.tgt_vocab_size or tok.vocab_size, cfg))
    if cache_dir is not None:
        with writing(cache_dir):
            cache_dir.mkdir(parents=True, exist_ok=True)
            models = [tokenizers.src] if tok.joint else [tokenizers.src, tokenizers.tgt]
            for name, model in zip(names, models):
                (cache_dir / f"spm_{name}.model").write_bytes(model.model_bytes)
                (cache_dir / f"spm_{name}.vocab").write_text(model.vocab_text(), "utf-8")
            (cache_dir / "tokenizer.json").write_text(json.dumps({"fingerprint": fingerprint}))
    return tokenizers


def encode_split(text: ParallelText, tokenizers: Tokenizers, max_length: int,
                 name: str, cut_to: int = 0) -> tuple[EncodedSplit, FilterCounts]:
    """Encode ``text``, dropping pairs with an empty side or over ``max_length`` subwords and
    cutting longer ones to ``cut_to`` subwords a side (held-out sets: kept, but bounded)."""
    src_ids = tokenizers.src.encode_batch(text.src)
    tgt_ids = tokenizers.tgt.encode_batch(text.tgt)
    kept, counts = filter_pairs(src_ids, tgt_ids, max_length)
    if cut_to:
        counts.cut_to = cut_to
        for i in kept:
            if len(src_ids[i]) > cut_to or len(tgt_ids[i]) > cut_to:
                src_ids[i], tgt_ids[i] = src_ids[i][:cut_to], tgt_ids[i][:cut_to]
                counts.cut += 1
    if not kept:
        raise DataError(f"{name} split ({text.src_path}, {text.tgt_path}): all {len(text)} pairs "
                        f"were filtered out ({counts.describe()}); check the files or raise "
                        f"data.max_length")
    split = EncodedSplit([src_ids[i] for i in kept], [tgt_ids[i] for i in kept], text, kept)
    return split, counts


@dataclass
class Dataset:
    tokenizers: Tokenizers
    splits: dict[str, EncodedSplit]


def load_dataset(cfg: DataConfig, cache_dir: Optional[Path],
                 tokenizers: Optional[Tokenizers] = None,
                 splits: tuple[str, ...] = ("train", "valid")) -> Dataset:
    """Read, tokenize and filter the requested splits.

    Training pairs over ``max_length`` are dropped; held-out pairs are kept whatever their
    length (a score must cover the whole set), only empty ones are dropped, and those over
    ``max_eval_length`` are cut to it for the loss and decoding (counted in the log; their
    references stay whole).
    """
    raw = {name: read_split(cfg, name) for name in splits}
    if tokenizers is None:
        if raw.get("train") is None:
            raw["train"] = read_split(cfg, "train")
        tokenizers = build_tokenizers(cfg, raw["train"], cache_dir)
    encoded = {}
    for name in splits:
        text = raw[name]
        if text is None:
            continue
        held_out = name != "train"
        encoded[name], counts = encode_split(text, tokenizers,
                                             cfg.max_length if not held_out else 10**9, name,
                                             cfg.max_eval_length if held_out else 0)
        log.info("%s: %s", name, counts.describe())
    return Dataset(tokenizers, encoded)
