"""Corpus reading and data preparation: strict files, Multi30k from a mirror, toy task, caching."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import pytest

from s2s.data import corpus
from s2s.data.batching import TokenBatchSampler
from s2s.config import DataConfig, TokenizerConfig
from s2s.data.corpus import (MIRROR_ENV, ParallelText, filter_pairs, find_side, multi30k_prefix,
                        read_lines, read_parallel)
from s2s.data.splits import Tokenizers, build_tokenizers, encode_split, load_dataset, read_split
from s2s.errors import DataError
from s2s.data.tokenizer import Tokenizer
from s2s.data.toy import HELD_OUT_SIZE, reverse, toy_splits


def write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def one_line(err: pytest.ExceptionInfo) -> str:
    message = str(err.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


# ------------------------------------------------------------------------------ reading
def test_read_parallel_ok(tmp_path):
    src = write(tmp_path / "a.de", ["eins", "  zwei  ", "drei"])
    tgt = write(tmp_path / "a.en", ["one", "two", "three"])
    text = read_parallel(src, tgt)
    assert text.src == ["eins", "zwei", "drei"]
    assert text.tgt == ["one", "two", "three"]
    assert len(text) == 3
    assert text.src_path == str(src) and text.tgt_path == str(tgt)


def test_line_counts_differ(tmp_path):
    src = write(tmp_path / "train.de", ["a", "b", "c"])
    tgt = write(tmp_path / "train.en", ["a", "b"])
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    message = one_line(info)
    assert str(src) in message and str(tgt) in message
    assert "3 lines" in message
    assert "has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "bad.de"
    path.write_bytes(b"gut\nauch gut\nkaputt \xff hier\nok\n")
    with pytest.raises(DataError) as info:
        read_lines(path)
    message = one_line(info)
    assert str(path) in message
    assert "line 3" in message
    assert "UTF-8" in message


def test_invalid_utf8_in_gz(tmp_path):
    path = tmp_path / "bad.en.gz"
    with gzip.open(path, "wb") as handle:
        handle.write(b"fine\n\xc3\x28 broken\n")
    with pytest.raises(DataError) as info:
        read_lines(path)
    assert "line 2" in one_line(info)


def test_invalid_utf8_through_read_parallel(tmp_path):
    src = write(tmp_path / "x.de", ["a", "b", "c"])
    tgt = tmp_path / "x.en"
    tgt.write_bytes(b"a\nb\n\x80c\n")
    with pytest.raises(DataError) as info:
        read_parallel(src, tgt)
    message = one_line(info)
    assert str(tgt) in message and "line 3" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.de"
    path.write_bytes(b"")
    with pytest.raises(DataError) as info:
        read_lines(path)
    message = one_line(info)
    assert str(path) in message and "empty" in message


def test_empty_gz_file(tmp_path):
    path = tmp_path / "empty.de.gz"
    with gzip.open(path, "wb"):
        pass
    with pytest.raises(DataError, match="empty"):
        read_lines(path)


def test_missing_file(tmp_path):
    path = tmp_path / "nope.de"
    with pytest.raises(DataError) as info:
        read_lines(path)
    message = one_line(info)
    assert str(path) in message and "does not exist" in message


def test_missing_side_of_a_pair(tmp_path):
    src = write(tmp_path / "p.de", ["a"])
    with pytest.raises(DataError, match="p.en"):
        read_parallel(src, tmp_path / "p.en")


def test_gz_read_transparently(tmp_path):
    lines = ["Ein Hund läuft.", "Zwei Männer", "ça va"]
    path = tmp_path / "train.de.gz"
    with gzip.open(path, "wt", encoding="utf-8") as handle:
        handle.write("".join(line + "\n" for line in lines))
    assert read_lines(path) == lines


def test_corrupt_gz_is_a_data_error(tmp_path):
    path = tmp_path / "broken.de.gz"
    path.write_bytes(b"this is not gzip data at all\n")
    with pytest.raises(DataError) as info:
        read_lines(path)
    message = one_line(info)
    assert str(path) in message


def test_truncated_gz_is_a_data_error(tmp_path):
    path = tmp_path / "cut.de.gz"
    blob = gzip.compress(("word " * 2000 + "\n").encode() * 20)
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError) as info:
        read_lines(path)
    assert str(path) in one_line(info)


def test_find_side_prefers_plain_then_gz(tmp_path):
    prefix = str(tmp_path / "train")
    assert find_side(prefix, "de") == Path(prefix + ".de")  # neither exists: the plain name
    with gzip.open(prefix + ".de.gz", "wt") as handle:
        handle.write("x\n")
    assert find_side(prefix, "de") == Path(prefix + ".de.gz")
    write(Path(prefix + ".de"), ["y"])
    assert find_side(prefix, "de") == Path(prefix + ".de")


def test_read_split_files_corpus_with_gz(tmp_path):
    with gzip.open(tmp_path / "train.de.gz", "wt", encoding="utf-8") as handle:
        handle.write("a b\nc d\n")
    write(tmp_path / "train.en", ["b a", "d c"])
    cfg = DataConfig(corpus="files", train=str(tmp_path / "train"), valid=str(tmp_path / "v"))
    text = read_split(cfg, "train")
    assert text.src == ["a b", "c d"] and text.tgt == ["b a", "d c"]
    assert read_split(cfg, "test") is None


# ------------------------------------------------------------------------------ filtering
def test_filter_pairs_counts():
    src = [[1, 2], [], [1] * 5, [3], [4, 4], [1]]
    tgt = [[1], [2], [1], [], [4] * 6, [1, 1, 1]]
    keep, counts = filter_pairs(src, tgt, max_length=3)
    assert keep == [0, 5]
    assert (counts.kept, counts.empty, counts.too_long) == (2, 2, 2)
    assert counts.describe() == ("kept 2 pairs, dropped 2 with an empty side and 2 longer "
                                 "than max_length")


def test_filter_pairs_boundary_is_inclusive():
    keep, counts = filter_pairs([[1, 2, 3]], [[1, 2, 3]], max_length=3)
    assert keep == [0] and counts.too_long == 0


@pytest.fixture(scope="module")
def toy_tokenizers() -> Tokenizers:
    text = toy_splits(200)["train"]
    tok = Tokenizer.train(text.src + text.tgt, 32, "word")
    return Tokenizers(tok, tok)


def test_encode_split_all_filtered_is_clear(toy_tokenizers):
    text = ParallelText(["a b c d e", "f g h i j k"], ["e d c b a", "k j i h g f"],
                        "some/train.src", "some/train.tgt")
    with pytest.raises(DataError) as info:
        encode_split(text, toy_tokenizers, max_length=2, name="train")
    message = one_line(info)
    assert "train split" in message
    assert "some/train.src" in message and "some/train.tgt" in message
    assert "all 2 pairs were filtered out" in message
    assert "2 longer than max_length" in message
    assert "data.max_length" in message


def test_encode_split_keeps_raw_text_of_kept_pairs(toy_tokenizers):
    text = ParallelText(["a b", "a b c d e f g h", "c"], ["b a", "h g f e d c b a", "c"])
    split, counts = encode_split(text, toy_tokenizers, max_length=4, name="valid")
    assert counts.kept == 2 and counts.too_long == 1
    assert split.kept == [0, 2]
    assert split.references == ["b a", "c"]
    assert split.sources == ["a b", "c"]
    assert len(split) == 2


# ------------------------------------------------------------------------------- toy task
def test_toy_is_deterministic():
    first, second = toy_splits(300), toy_splits(300)
    for name in ("train", "valid", "test"):
        assert first[name].src == second[name].src
        assert first[name].tgt == second[name].tgt
    assert toy_splits(300, seed=7)["train"].src != first["train"].src


def test_toy_sizes_and_disjoint_splits():
    splits = toy_splits(1000)
    assert len(splits["train"]) == 1000
    assert len(splits["valid"]) == HELD_OUT_SIZE == len(splits["test"])
    train = set(splits["train"].src)
    valid, test = set(splits["valid"].src), set(splits["test"].src)
    assert len(valid) == HELD_OUT_SIZE and len(test) == HELD_OUT_SIZE  # distinct
    assert not train & valid
    assert not train & test
    assert not valid & test


def test_toy_targets_are_reversals():
    for text in toy_splits(200).values():
        for src, tgt in zip(text.src, text.tgt):
            assert tgt.split() == src.split()[::-1]
            assert reverse(src) == tgt
    assert reverse("k d a f") == "f a d k"


def test_toy_train_prefix_is_stable_across_sizes():
    # a larger training set extends a smaller one (same seed, same held-out sets)
    small, large = toy_splits(100), toy_splits(200)
    assert large["train"].src[:100] == small["train"].src
    assert large["valid"].src == small["valid"].src


def test_read_split_toy():
    cfg = DataConfig(corpus="toy", src_lang="src", tgt_lang="tgt", toy_train_size=50)
    assert len(read_split(cfg, "train")) == 50
    assert len(read_split(cfg, "test")) == HELD_OUT_SIZE


# -------------------------------------------------------------------------------- Multi30k
def test_multi30k_from_mirror(tmp_path, monkeypatch, shared_mirror):
    # shared_mirror (conftest.py) sets S2S_DATA_MIRROR to the local copy, or skips
    prefix = multi30k_prefix("valid", tmp_path, "de", "en")
    assert prefix == str(tmp_path / "multi30k" / "val")
    for lang in ("de", "en"):
        assert (tmp_path / "multi30k" / f"val.{lang}.gz").is_file()
        assert not (tmp_path / "multi30k" / f"val.{lang}.gz.part").exists()
    text = read_parallel(find_side(prefix, "de"), find_side(prefix, "en"))
    assert len(text.src) == 1014 and len(text.tgt) == 1014
    # a second call uses the files already there, even with no mirror at all
    monkeypatch.setenv(MIRROR_ENV, str(tmp_path / "nowhere"))
    assert multi30k_prefix("valid", tmp_path, "de", "en") == prefix


@pytest.mark.parametrize("name,lines", [("test_2017_flickr", 1000), ("test_2017_mscoco", 461),
                                        ("test_2018_flickr", 1071)])
def test_multi30k_s_other_test_sets_by_name(tmp_path, shared_mirror, name, lines):
    """Read with their checksums checked (the mirror needs them: a missing file skips)."""
    if not (Path(shared_mirror) / f"{name}.de.gz").is_file():
        pytest.skip(f"the mirror has no {name}")
    config = DataConfig(corpus="multi30k", root=str(tmp_path))
    text = read_split(config, name)
    assert len(text.src) == len(text.tgt) == lines
    assert {f"{name}.de.gz", f"{name}.en.gz"} <= set(corpus.MULTI30K_SHA256)


def test_a_multi30k_test_set_of_another_corpus_is_one_clear_error():
    with pytest.raises(DataError, match="split 'test_2017_flickr' is a Multi30k test set, but "
                                        "the corpus is 'toy'"):
        read_split(DataConfig(corpus="toy"), "test_2017_flickr")


def test_multi30k_mirror_without_files(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    with pytest.raises(DataError) as info:
        multi30k_prefix("valid", tmp_path / "root", "de", "en")
    message = one_line(info)
    assert MIRROR_ENV in message
    assert "val.de.gz" in message
    assert not list((tmp_path / "root" / "multi30k").glob("*.gz"))


def test_multi30k_corrupt_file_fails_checksum(tmp_path, monkeypatch):
    mirror = tmp_path / "mirror"
    mirror.mkdir()
    (mirror / "val.de.gz").write_bytes(b"\x1f\x8b garbage, not the real file " * 10)
    monkeypatch.setenv(MIRROR_ENV, str(mirror))
    root = tmp_path / "root"
    with pytest.raises(DataError) as info:
        multi30k_prefix("valid", root, "de", "en")
    message = one_line(info)
    assert "val.de.gz" in message
    assert "SHA-256" in message
    assert corpus.MULTI30K_SHA256["val.de.gz"] in message
    # neither the corrupt file nor its partial copy is left behind
    assert not (root / "multi30k" / "val.de.gz").exists()
    assert not (root / "multi30k" / "val.de.gz.part").exists()


def test_multi30k_unknown_language(tmp_path):
    with pytest.raises(DataError) as info:
        multi30k_prefix("valid", tmp_path, "de", "xx")
    message = one_line(info)
    assert "'xx'" in message and "de, en, fr, cs" in message


# ------------------------------------------------------------------------ tokenizer cache
def small_toy_config(**tokenizer) -> DataConfig:
    tok = {"joint": True, "vocab_size": 32, "model_type": "word", **tokenizer}
    return DataConfig(corpus="toy", src_lang="src", tgt_lang="tgt", toy_train_size=200,
                      max_length=20, tokenizer=TokenizerConfig(**tok))


def test_tokenizers_are_cached(tmp_path, monkeypatch):
    cfg = small_toy_config()
    train = read_split(cfg, "train")
    cache = tmp_path / "tokenizer"
    first = build_tokenizers(cfg, train, cache)
    assert (cache / "spm_joint.model").is_file()
    assert (cache / "tokenizer.json").is_file()
    assert first.joint

    def no_training(*args, **kwargs):
        raise AssertionError("SentencePiece was trained again instead of reusing the cache")

    monkeypatch.setattr(Tokenizer, "train", no_training)
    second = build_tokenizers(cfg, train, cache)
    assert second.src.model_bytes == first.src.model_bytes
    assert second.tgt.model_bytes == first.tgt.model_bytes
    assert second.src.encode("a b c") == first.src.encode("a b c")


def test_tokenizer_cache_is_invalidated_by_new_text_or_settings(tmp_path, monkeypatch):
    cfg = small_toy_config()
    train = read_split(cfg, "train")
    cache = tmp_path / "tokenizer"
    build_tokenizers(cfg, train, cache)
    calls = []
    real_train = Tokenizer.train.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return real_train(cls, *args, **kwargs)

    monkeypatch.setattr(Tokenizer, "train", classmethod(counting))
    changed = ParallelText(train.src[:-1], train.tgt[:-1])
    build_tokenizers(cfg, changed, cache)
    assert len(calls) == 1
    build_tokenizers(small_toy_config(vocab_size=30), changed, cache)
    assert len(calls) == 2


def test_separate_tokenizers_cached(tmp_path, monkeypatch):
    cfg = small_toy_config(joint=False)
    train = read_split(cfg, "train")
    cache = tmp_path / "tok"
    first = build_tokenizers(cfg, train, cache)
    assert (cache / "spm_src.model").is_file() and (cache / "spm_tgt.model").is_file()
    monkeypatch.setattr(Tokenizer, "train", lambda *a, **k: pytest.fail("retrained"))
    second = build_tokenizers(cfg, train, cache)
    assert second.src.model_bytes == first.src.model_bytes
    assert second.tgt.model_bytes == first.tgt.model_bytes


def test_load_dataset_toy_end_to_end(tmp_path):
    data = load_dataset(small_toy_config(), tmp_path / "tok")
    assert set(data.splits) == {"train", "valid"}
    assert len(data.splits["train"]) == 200
    assert len(data.splits["valid"]) == HELD_OUT_SIZE
    tok = data.tokenizers.tgt
    assert tok.decode(data.splits["valid"].tgt_ids[0]) == data.splits["valid"].references[0]


def _external_spm(path: Path) -> Path:
    """A SentencePiece model numbered like most external ones: unk/bos/eos = 0/1/2, no pad."""
    import sentencepiece as spm
    sentences = [f"the {w} sat on the mat number {i}" for i, w in
                 enumerate(["cat", "dog", "bird", "fish", "cow"] * 40)]
    spm.SentencePieceTrainer.train(sentence_iterator=iter(sentences), model_prefix=str(path),
                                   vocab_size=40, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
                                   hard_vocab_limit=False, minloglevel=2)
    return path.with_suffix(".model")


def test_external_spm_model_ids_are_remapped(tmp_path):
    import sentencepiece as spm
    model = _external_spm(tmp_path / "ext")
    sp = spm.SentencePieceProcessor(model_file=str(model))
    tok = Tokenizer.from_file(str(model))
    assert len(tok) == sp.get_piece_size() + 1  # a padding id is added
    text = "the cat sat on the mat number 7"
    ids = tok.encode(text)
    assert ids == [i + 1 for i in sp.encode(text)]  # pad comes first, the rest shift by one
    assert not {0, 2, 3} & set(ids)  # no ordinary piece lands on pad/bos/eos
    assert tok.decode([2] + ids + [3, 0]) == text
    assert tok.pieces(text) == tok.id_to_piece(ids)
    assert tok.id_to_piece([0, 1, 2, 3]) == ["<pad>", "<unk>", "<s>", "</s>"]
    assert tok.encode_batch([text, ""]) == [ids, []]


def test_own_spm_model_ids_are_unchanged(toy_tokenizers):
    tok = toy_tokenizers.src
    text = "abc"
    assert tok.encode(text) == tok._sp.encode(text)
    assert len(tok) == tok._sp.get_piece_size()


def test_configured_spm_model_is_used_for_both_sides(tmp_path):
    model = _external_spm(tmp_path / "ext")
    cfg = DataConfig(tokenizer=TokenizerConfig(model=str(model)))
    train = ParallelText(["the cat"], ["the dog"], "x")
    tokenizers = build_tokenizers(cfg, train, tmp_path / "cache")
    assert tokenizers.src is tokenizers.tgt
    assert tokenizers.src.model_bytes == model.read_bytes()
    assert not (tmp_path / "cache").exists()


def test_missing_or_bad_spm_model_is_clear(tmp_path):
    with pytest.raises(DataError, match=r"nope\.model: cannot read"):
        Tokenizer.from_file(str(tmp_path / "nope.model"))
    bad = tmp_path / "bad.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"bad\.model: invalid SentencePiece model"):
        Tokenizer.from_file(str(bad))


def test_spm_model_needs_joint(tmp_path):
    from s2s.config import ConfigError, config_from_dict
    with pytest.raises(ConfigError, match="data.tokenizer.model.*joint: true"):
        config_from_dict({"data": {"corpus": "toy", "tokenizer": {"model": "x.model",
                                                                  "joint": False}}})


# ----------------------------------------------------------------- the batch sampler's promises
def sampler_lengths(seed: int = 0, count: int = 300):
    rng = random.Random(seed)
    src = [rng.randint(1, 40) for _ in range(count)]
    tgt = [rng.randint(1, 40) for _ in range(count)]
    src[7], tgt[7] = 250, 3  # one pair longer than the budget allows with company
    return src, tgt


def test_every_pair_once_per_epoch_and_no_batch_over_the_budget():
    src, tgt = sampler_lengths()
    sampler = TokenBatchSampler(src, tgt, batch_tokens=200, seed=3)
    for epoch in range(3):
        batches = list(sampler)
        assert sorted(i for batch in batches for i in batch) == list(range(len(src)))
        for batch in batches:
            cost = len(batch) * max(max(src[i], tgt[i]) + 1 for i in batch)
            assert cost <= 200 or len(batch) == 1
        assert [7] in batches  # the over-long pair alone
    assert sampler.epoch == 3
    assert TokenBatchSampler(src, tgt, 200, seed=3).batches_for_epoch(1) != \
        TokenBatchSampler(src, tgt, 200, seed=3).batches_for_epoch(2)  # reshuffled per epoch


def test_the_mid_epoch_state_restores_the_same_order():
    src, tgt = sampler_lengths(seed=1)
    straight = TokenBatchSampler(src, tgt, batch_tokens=300, seed=5)
    reference = [batch for _ in range(2) for batch in straight]
    interrupted = TokenBatchSampler(src, tgt, batch_tokens=300, seed=5)
    iterator = iter(interrupted)
    first = [next(iterator) for _ in range(4)]
    resumed = TokenBatchSampler(src, tgt, batch_tokens=300, seed=0)
    resumed.load_state_dict(interrupted.state_dict())
    rest = list(resumed) + list(resumed)
    assert first + rest[:len(reference) - 4] == reference
