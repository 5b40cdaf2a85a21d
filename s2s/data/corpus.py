"""Parallel text: reading files (plain or .gz), known corpora (Multi30k), filtering.

Files are read strictly: a file that is missing, empty, not UTF-8, or whose line count differs
from its other side fails with a :class:`~s2s.errors.DataError` naming the file (and line).
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import shutil
import urllib.error
import urllib.request
import zlib
from http.client import HTTPException
from dataclasses import dataclass
from pathlib import Path

from s2s.errors import DataError, file_problem

log = logging.getLogger(__name__)

MIRROR_ENV = "S2S_DATA_MIRROR"
MULTI30K_URL = "https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/raw/"
MULTI30K_TEST_SETS = ("test_2016_flickr", "test_2017_flickr", "test_2017_mscoco",
                      "test_2018_flickr")
MULTI30K_SPLITS = {"train": "train", "valid": "val", "test": "test_2016_flickr",
                   **{name: name for name in MULTI30K_TEST_SETS}}
MULTI30K_LANGS = ("de", "en", "fr", "cs")
MULTI30K_SHA256 = {
    "train.de.gz": "726e39b2fa9eb9ffb6dc763fb35a179f80fae06ffc5d28b6ace5faa883de28a6",
    "train.en.gz": "d79cfa999dd4c51d2cb42499b6796d5a882c3a8a961923c25a898c90f8bbd56f",
    "val.de.gz": "f0cba2f995189cf5770f29a8a9a537a3ad3f51657ad873405082ff6863a5e75a",
    "val.en.gz": "14f7d25ddd868909a9213e361768460edcacdd6ab9d1e77b92560dc10c10dc28",
    "test_2016_flickr.de.gz": "9204244e408ccb38d2a55cfcd344df15005fc42a07a6e55ca6c52b6ababb8cc8",
    "test_2016_flickr.en.gz": "611d361c6334bc7246101d48097c13cf5c4413c5befc793cc629934359d532d9",
    "test_2017_flickr.de.gz": "a2c89666db00c495cd8513b9d708d5a3acc205d7de312ef2bf5fb7ebc1540aee",
    "test_2017_flickr.en.gz": "76a444ee25172e72695cddb13ae4a3bda59430617be88e0bb46b60504f054074",
    "test_2017_mscoco.de.gz": "799e4854c25d601cb6cb6be29eabe5667734c61ace2f495e03e429031a0bc338",
    "test_2017_mscoco.en.gz": "aab300bfb4427697987e02cd0aacd44bfe8aa50456231b6474c08038bbed2b58",
    "test_2018_flickr.de.gz": "ddd0130c7d97482dc5197a02141dae8dd79f20f03586c480d675c09a32daf608",
    "test_2018_flickr.en.gz": "ef4f4844037d4c5dea75c9a8ed5fd78905967a26f67c255e230cc9780032654d",
}


@dataclass
class ParallelText:
    """Aligned sentence pairs read from ``src_path`` / ``tgt_path``."""

    src: list[str]
    tgt: list[str]
    src_path: str = ""
    tgt_path: str = ""

    def __len__(self) -> int:
        return len(self.src)


def read_lines(path: str | Path, allow_empty: bool = False) -> list[str]:
    """All lines of a UTF-8 text file (``.gz`` decompressed), stripped of surrounding space."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise DataError(f"data file '{path}' {problem}")
    opener = gzip.open if path.suffix == ".gz" else open
    lines = []
    try:
        with opener(path, "rb") as handle:
            for number, raw in enumerate(handle, start=1):
                try:
                    lines.append(raw.decode("utf-8").strip())
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}, line {number}: not valid UTF-8 "
                                    f"(byte {err.start + 1}: {raw[err.start:err.start + 1]!r})"
                                    ) from None
    except (OSError, EOFError, zlib.error) as err:
        raise DataError(f"{path}: cannot read the file ({err})") from None
    if not lines and not allow_empty:
        raise DataError(f"data file '{path}' is empty")
    return lines


def read_parallel(src_path: str | Path, tgt_path: str | Path) -> ParallelText:
    """Read both sides and check that they have the same number of lines."""
    src, tgt = read_lines(src_path), read_lines(tgt_path)
    if len(src) != len(tgt):
        raise DataError(f"parallel files differ in length: '{src_path}' has {len(src)} lines, "
                        f"'{tgt_path}' has {len(tgt)}")
    return ParallelText(src, tgt, str(src_path), str(tgt_path))


def find_side(prefix: str, lang: str) -> Path:
    """``PREFIX.LANG``, or ``PREFIX.LANG.gz`` when only that exists."""
    plain = Path(f"{prefix}.{lang}")
    gz = Path(f"{prefix}.{lang}.gz")
    if plain.is_file() or not gz.is_file():
        return plain
    return gz


# ------------------------------------------------------------------------------- Multi30k
def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _copy_from_mirror(name: str, mirror: str, target: Path) -> None:
    if "://" not in mirror:
        source = Path(mirror) / name
        problem = file_problem(source)
        if problem:
            raise DataError(f"{MIRROR_ENV}={mirror}: '{source}' {problem}")
        try:
            shutil.copyfile(source, target)
        except OSError as err:
            target.unlink(missing_ok=True)
            raise DataError(f"cannot copy '{source}' to '{target}' ({err.strerror})") from None
        return
    _download(mirror.rstrip("/") + "/" + name, target)


def _download(url: str, target: Path) -> None:
    from tqdm import tqdm

    try:
        with urllib.request.urlopen(url, timeout=30) as response, open(target, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=target.name,
                      leave=False) as bar:
                received = 0
                for block in iter(lambda: response.read(1 << 16), b""):
                    out.write(block)
                    received += len(block)
                    bar.update(len(block))
            if total and received < total:  # urllib returns a cut-off body without complaint
                raise HTTPException(f"the connection closed after {received:,} of "
                                    f"{total:,} bytes")
    except (urllib.error.URLError, OSError, TimeoutError, HTTPException) as err:
        target.unlink(missing_ok=True)
        reason = (f"HTTP {err.code}: {err.reason}" if isinstance(err, urllib.error.HTTPError)
                  else getattr(err, "reason", err))
        raise DataError(f"cannot download {url} ({reason}); without network "
                        f"access, set {MIRROR_ENV} to a directory or URL holding the Multi30k "
                        f"files") from None


def fetch_multi30k_file(name: str, directory: Path) -> Path:
    """Make sure ``directory/name`` exists, fetching it from the mirror or upstream and checking
    its SHA-256 where the checksum is known."""
    target = directory / name
    if target.is_file():
        return target
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        log.info("fetching %s from %s", name, mirror)
        _copy_from_mirror(name, mirror, partial)
    else:
        log.info("downloading %s from %s", name, MULTI30K_URL)
        _download(MULTI30K_URL + name, partial)
    expected = MULTI30K_SHA256.get(name)
    if expected and _sha256(partial) != expected:
        partial.unlink()
        raise DataError(f"{name}: SHA-256 mismatch after download (expected {expected}); "
                        f"the file is corrupt or the source has changed")
    partial.replace(target)
    return target


def multi30k_prefix(split: str, root: str | Path, src_lang: str, tgt_lang: str) -> str:
    """Fetch one Multi30k split (``train``, ``valid``, ``test`` = test_2016_flickr, or a test
    set by name: :data:`MULTI30K_TEST_SETS`) for both languages and return its path prefix
    (``root/multi30k/<name>``; files end in ``.LANG.gz``)."""
    for lang in (src_lang, tgt_lang):
        if lang not in MULTI30K_LANGS:
            raise DataError(f"Multi30k has no language '{lang}'; it has "
                            f"{', '.join(MULTI30K_LANGS)}")
    directory = Path(root) / "multi30k"
    name = MULTI30K_SPLITS[split]
    for lang in (src_lang, tgt_lang):
        fetch_multi30k_file(f"{name}.{lang}.gz", directory)
    return str(directory / name)


# ------------------------------------------------------------------------------ filtering
@dataclass
class FilterCounts:
    kept: int = 0
    empty: int = 0
    too_long: int = 0
    cut: int = 0       # held-out pairs kept but cut to max_eval_length
    cut_to: int = 0

    def describe(self) -> str:
        text = (f"kept {self.kept} pairs, dropped {self.empty} with an empty side and "
                f"{self.too_long} longer than max_length")
        if self.cut:
            text += (f"; {self.cut} longer than data.max_eval_length cut to {self.cut_to} "
                     f"subwords a side for the loss and decoding (scored against the whole "
                     f"reference)")
        return text


def filter_pairs(src_ids: list[list[int]], tgt_ids: list[list[int]],
                 max_length: int) -> tuple[list[int], FilterCounts]:
    """Indices of pairs with both sides non-empty and at most ``max_length`` subwords."""
    keep, counts = [], FilterCounts()
    for index, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            counts.empty += 1
        elif len(s) > max_length or len(t) > max_length:
            counts.too_long += 1
        else:
            keep.append(index)
    counts.kept = len(keep)
    return keep, counts
