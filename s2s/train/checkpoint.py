"""Self-contained checkpoints: one file with everything needed to translate or resume.

A checkpoint is a dict of tensors and plain Python values only, so it loads with
``torch.load(weights_only=True)`` and opening one cannot run code. Keys:
``format``/``format_version``, ``config`` (resolved, plain dict), ``model`` (state dict),
``tokenizers`` ({"src": bytes, "tgt": bytes}: the SentencePiece models), ``step``, ``epoch``,
``scores`` (the last validation), and for resuming ``optimizer``, ``scheduler``, ``sampler``,
``rng``, ``trainer``.

Writes go to ``NAME.tmp``, are flushed and fsynced, then renamed over ``NAME``: a crash at any
moment leaves either the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import warnings
import struct
import zipfile
from pathlib import Path
from typing import Any, Sequence

import torch

from s2s.errors import CheckpointError, file_problem, storage_error

FORMAT = "s2s-checkpoint"
FORMAT_VERSION = 1


def save_checkpoint(state: dict[str, Any], path: str | Path) -> None:
    """Atomically write ``state`` (plus the format tag) to ``path``. A failed write (a full
    disk: torch raises RuntimeError for it) removes the temporary file, leaves any previous
    ``path`` as it was, and is one :class:`~s2s.errors.StorageError` line."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "wb") as handle:
            torch.save({"format": FORMAT, "format_version": FORMAT_VERSION, **state}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except (OSError, RuntimeError) as err:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise storage_error(path, err, _tensor_bytes(state)) from None


def _tensor_bytes(value: Any) -> int:
    """Bytes of the tensors in a nested checkpoint value (about the file's size)."""
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def remove_orphans(directory: Path) -> list[Path]:
    """Delete the ``*.tmp`` files an interrupted checkpoint (or metrics) write left in a run
    directory; return them."""
    orphans = sorted(directory.glob("*.pt.tmp")) + sorted(directory.glob("metrics.jsonl.tmp"))
    for orphan in orphans:
        orphan.unlink(missing_ok=True)
    return orphans


def _unpickler_reason(err: Exception) -> str:
    """The informative line of torch's weights-only error (the rest is generic advice)."""
    boilerplate = ("Weights only load failed", "Check the documentation", "Please file an issue")
    for line in str(err).splitlines():
        line = line.strip()
        if line and not line.startswith(boilerplate):
            return line.rstrip(".")
    return "unsupported content"


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and check a checkpoint; any problem is one :class:`CheckpointError` line."""
    path = Path(path)
    problem = file_problem(path)
    if problem:
        raise CheckpointError(f"checkpoint '{path}' {problem}")
    try:
        with warnings.catch_warnings():  # torch warns about old pickle protocols on stderr
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = _unpickler_reason(err)
        if "global" in reason.lower():
            raise CheckpointError(f"{path}: refused to load: the file references Python objects "
                                  f"that could run code when unpickled ({reason}); an s2s "
                                  f"checkpoint holds only tensors and plain values") from None
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason})") from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError, KeyError,
            IndexError, struct.error) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint (truncated or not a torch "
                              f"file: {type(err).__name__}: {reason})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an s2s checkpoint")
    version = state.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format version {version}; this s2s reads "
                              f"version {FORMAT_VERSION}")
    return state


def average_checkpoints(paths: Sequence[str | Path]) -> dict[str, Any]:
    """A checkpoint whose weights are the element-wise mean of those in ``paths`` (the same
    model config and tokenizers in each): the config, tokenizers, step and epoch of the last,
    no optimizer or data-order state — it translates like any checkpoint but does not resume.
    Any mismatch is one :class:`CheckpointError` line naming the file."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    states = [load_checkpoint(path) for path in paths]
    for path, state in zip(paths, states):
        missing = sorted({"config", "model", "tokenizers"} - set(state))
        if missing:
            raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    first, reference = states[0], str(paths[0])

    def shapes(state: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        return {name: tuple(tensor.shape) for name, tensor in state["model"].items()}

    for path, state in zip(paths[1:], states[1:]):
        if state["config"].get("model") != first["config"].get("model"):
            raise CheckpointError(f"{path}: its model config differs from {reference}'s; only "
                                  f"checkpoints of one model can be averaged")
        if state["tokenizers"] != first["tokenizers"]:
            raise CheckpointError(f"{path}: its SentencePiece models differ from {reference}'s; "
                                  f"only checkpoints of one model can be averaged")
        if shapes(state) != shapes(first):
            raise CheckpointError(f"{path}: its weights do not match {reference}'s")
    averaged = {}
    for name, tensor in first["model"].items():
        if tensor.is_floating_point():
            total = sum(state["model"][name].double() for state in states)
            averaged[name] = (total / len(states)).to(tensor.dtype)
        else:
            averaged[name] = tensor.clone()
    last = states[-1]
    return {"config": last["config"], "model": averaged, "tokenizers": last["tokenizers"],
            "step": last.get("step", 0), "epoch": last.get("epoch", 0), "scores": {},
            "averaged_from": [str(path) for path in paths]}


def export_checkpoint(path: str | Path, fp16: bool = False) -> dict[str, Any]:
    """What translating with the checkpoint at ``path`` needs — config, weights, tokenizers,
    step, epoch and scores — without the optimizer, scheduler, data-order and random state;
    ``fp16``: floating-point weights stored as float16."""
    state = load_checkpoint(path)
    missing = sorted({"config", "model", "tokenizers"} - set(state))
    if missing:
        raise CheckpointError(f"{path}: checkpoint lacks {', '.join(missing)}")
    weights = {name: (tensor.half() if fp16 and tensor.is_floating_point() else tensor)
               for name, tensor in state["model"].items()}
    return {"config": state["config"], "model": weights, "tokenizers": state["tokenizers"],
            "step": state.get("step", 0), "epoch": state.get("epoch", 0),
            "scores": state.get("scores", {}), "exported_from": str(path)}

