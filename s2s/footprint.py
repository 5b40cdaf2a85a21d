"""What a model needs, known before it is built: its tensors' shapes and the memory to train or
run it, checked against what the machine has.

A size typed wrong in a config, or a checkpoint whose config does not match its tensors, must
fail in one line here — never by allocating gigabytes first. Shapes come from building the model
on PyTorch's ``meta`` device (no storage), so they are exactly the model's; memory is an
estimate, deliberately generous, of float32 weights, gradients, Adam's two moments and the
activations one batch keeps for the backward pass.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch

from s2s.config import Config, ModelConfig
from s2s.data.tokenizer import SPECIAL
from s2s.errors import CheckpointError, ConfigError
from s2s.model.seq2seq import build_model

FLOAT = 4  # bytes


def model_shapes(cfg: ModelConfig, src_vocab: int, tgt_vocab: int,
                 max_source_length: int) -> dict[str, torch.Size]:
    """The state-dict names and shapes of the model ``cfg`` describes; nothing is allocated."""
    with torch.device("meta"):
        model = build_model(cfg, src_vocab, tgt_vocab, SPECIAL, max_source_length)
    return {name: tensor.shape for name, tensor in model.state_dict().items()}


def parameter_count(shapes: Mapping[str, torch.Size]) -> int:
    return sum(shape.numel() for shape in shapes.values())


def check_weights(weights: Any, shapes: Mapping[str, torch.Size], source: str) -> None:
    """Raise one :class:`CheckpointError` line naming the first tensor of ``weights`` (a state
    dict from a file) that is missing, extra or of another shape than ``shapes``."""
    if not isinstance(weights, Mapping):
        raise CheckpointError(f"{source}: its weights are not a mapping of names to tensors")
    for name, shape in shapes.items():
        tensor = weights.get(name)
        if not isinstance(tensor, torch.Tensor):
            raise CheckpointError(f"{source}: the weights lack '{name}', which the model its "
                                  f"config describes has")
        if tensor.shape != shape:
            raise CheckpointError(f"{source}: weight '{name}' has shape {list(tensor.shape)}, "
                                  f"but the model its config describes needs {list(shape)}")
    extra = [name for name in weights if name not in shapes]
    if extra:
        raise CheckpointError(f"{source}: weight '{extra[0]}' is not part of the model its "
                              f"config describes")


def _activations_per_token(cfg: Config, tgt_vocab: int) -> int:
    """Floats one target (and source) token keeps for the backward pass, generously."""
    model = cfg.model
    enc, dec = model.encoder, model.decoder
    directions = 2 if enc.bidirectional else 1
    memory_width = enc.hidden_size * directions
    attention = model.attention_size or dec.hidden_size
    attentional = dec.attentional_size or dec.hidden_size
    encoder = enc.num_layers * directions * 8 * enc.hidden_size
    decoder = dec.num_layers * 8 * dec.hidden_size + 3 * (memory_width + attentional)
    energies = 2 * (cfg.data.max_length + 1) * (attention if model.attention == "bahdanau"
                                                else max(model.num_heads, 1))
    output = 3 * tgt_vocab
    return 2 * (encoder + decoder + energies + output)


def training_bytes(cfg: Config, parameters: int, tgt_vocab: int) -> int:
    """Weights, gradients and Adam's moments, plus one batch's activations (a batch holds at
    most ``data.batch_tokens`` padded tokens a side, or one longest pair)."""
    tokens = max(cfg.data.batch_tokens, cfg.data.max_length + 2)
    return 4 * FLOAT * parameters + FLOAT * tokens * _activations_per_token(cfg, tgt_vocab)


def decoding_bytes(cfg: Config, parameters: int, tgt_vocab: int) -> int:
    """Weights plus a batch of beams' scores over the vocabulary at each step."""
    evaluation = cfg.evaluation
    rows = evaluation.batch_size * evaluation.beam_size
    return FLOAT * parameters + 4 * FLOAT * rows * (tgt_vocab + evaluation.max_output_length)


def machine_memory(device: torch.device) -> int:
    """Bytes of memory on ``device``: the GPU's, or the host's (within a cgroup limit)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit.isdigit():
            total = min(total, int(limit))
    except OSError:
        pass
    return total


def gigabytes(count: float) -> str:
    return f"{count / 2**30:,.1f} GiB"


def check_memory(needed: int, parameters: int, device: torch.device, what: str) -> None:
    """Refuse, in one :class:`ConfigError` line, work that needs more memory than ``device``
    has; ``what`` says what the memory is for ("training", "decoding")."""
    available = machine_memory(device)
    if needed > available:
        where = "the GPU" if device.type == "cuda" else "this machine"
        raise ConfigError(
            f"{what} this model needs about {gigabytes(needed)} ({parameters:,} "
            f"parameters, with one batch's activations), more than the {gigabytes(available)} "
            f"{where} has; make the model smaller (model.*.hidden_size, embedding sizes, "
            f"data.tokenizer.vocab_size) or the batches (data.batch_tokens, evaluation.batch_size)")
