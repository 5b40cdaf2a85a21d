"""Shared fixtures: a tiny model factory and a padded toy batch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s2s.data.batching import collate  # noqa: E402
from s2s.config import ModelConfig  # noqa: E402
from s2s.cpu import CpuBackend  # noqa: E402
from s2s.model.seq2seq import build_model  # noqa: E402
from s2s.data.tokenizer import SPECIAL  # noqa: E402

ATTENTION_NAMES = ["dot", "scaled_dot", "general", "bahdanau", "location", "multihead"]
SHARED_MIRROR = ROOT.parent / "shared" / "data" / "multi30k"


def tiny_model_config(attention: str, input_feeding: bool = False, dropout: float = 0.0,
                      num_layers: int = 1, init: str = "bridge", encoder_size: int = 8,
                      attentional_size: int | None = None,
                      attentional_activation: str = "tanh") -> ModelConfig:
    cfg = ModelConfig(attention=attention, embedding_dim=12, num_heads=2)
    cfg.encoder.hidden_size = encoder_size
    cfg.encoder.num_layers = num_layers
    cfg.encoder.dropout = dropout
    cfg.decoder.hidden_size = 16
    cfg.decoder.num_layers = num_layers
    cfg.decoder.dropout = dropout
    cfg.decoder.hidden_dropout = dropout
    cfg.decoder.input_feeding = input_feeding
    cfg.decoder.init = init
    cfg.decoder.attentional_size = attentional_size
    cfg.decoder.attentional_activation = attentional_activation
    return cfg


def tiny_model(attention: str, vocab: int = 20, seed: int = 0, backend: str = "plain",
               **options):
    """A tiny model for the toy vocabulary: the plain model, or (``backend="cpu"``) with the
    CPU backend's training seams filled."""
    torch.manual_seed(seed)
    model = build_model(tiny_model_config(attention, **options), vocab, vocab, SPECIAL, 16)
    return CpuBackend().prepare_training(model) if backend == "cpu" else model


def plain_and_prepared(attention: str, seed: int = 11, **options):
    """One tiny model twice, in eval mode: as it is, and prepared for decoding by the CPU
    backend (what search runs for it)."""
    plain = tiny_model(attention, seed=seed, **options).eval()
    prepared = CpuBackend().prepare_decoding(tiny_model(attention, seed=seed, **options).eval())
    return plain, prepared


def assert_finite_differences(model, batch, entries: int = 2, seed: int = 0) -> None:
    """The gradient of ``model``'s summed loss on ``batch`` (float64, no dropout) against
    central differences, at ``entries`` random entries of every parameter tensor."""
    model.zero_grad()
    model(batch).loss.backward()
    gen = torch.Generator().manual_seed(seed)
    step = 1e-6
    for name, param in model.named_parameters():
        assert param.grad is not None, name
        flat, grad = param.data.view(-1), param.grad.view(-1)
        for index in torch.randint(flat.numel(), (entries,), generator=gen).tolist():
            original = flat[index].item()
            with torch.no_grad():
                flat[index] = original + step
                above = model(batch).loss.item()
                flat[index] = original - step
                below = model(batch).loss.item()
                flat[index] = original
            numeric = (above - below) / (2 * step)
            assert abs(numeric - grad[index].item()) <= 1e-7 + 1e-4 * abs(numeric), (
                name, index, numeric, grad[index].item())


def random_batch(seed: int = 0, vocab: int = 20, lengths=((5, 4), (2, 6), (7, 1), (3, 3))):
    """A batch whose sentences have different lengths on both sides (so there is padding)."""
    gen = torch.Generator().manual_seed(seed)
    first = SPECIAL.eos + 1
    src = [torch.randint(first, vocab, (s,), generator=gen).tolist() for s, _ in lengths]
    tgt = [torch.randint(first, vocab, (t,), generator=gen).tolist() for _, t in lengths]
    return collate(src, tgt, list(range(len(lengths))))


REVERSAL_PAIRS = [([5, 6, 7], [7, 6, 5]), ([8, 9, 10, 11], [11, 10, 9, 8]), ([12, 5], [5, 12]),
                  ([6, 6, 13], [13, 6, 6]), ([14, 15, 16, 17, 18], [18, 17, 16, 15, 14]),
                  ([9, 19], [19, 9])]


def overfit(model, pairs=REVERSAL_PAIRS, updates: int = 300):
    """Train ``model`` on one batch of ``pairs`` with Adam; returns the batch and the last
    update's loss per target token."""
    batch = collate([p[0] for p in pairs], [p[1] for p in pairs], list(range(len(pairs))))
    optimizer = torch.optim.Adam(model.parameters(), lr=0.02)
    model.train()
    for _ in range(updates):
        optimizer.zero_grad()
        out = model(batch)
        (out.loss / out.tokens).backward()
        optimizer.step()
    return batch, float(out.loss.detach()) / out.tokens


@pytest.fixture
def shared_mirror(monkeypatch):
    """Point S2S_DATA_MIRROR at the local Multi30k copy, or skip."""
    mirror = os.environ.get("S2S_DATA_MIRROR") or (str(SHARED_MIRROR)
                                                   if SHARED_MIRROR.is_dir() else None)
    if not mirror:
        pytest.skip("no Multi30k mirror: S2S_DATA_MIRROR is unset and ../shared/data/multi30k "
                    "does not exist (the network is not used in tests)")
    monkeypatch.setenv("S2S_DATA_MIRROR", mirror)
    return mirror


@pytest.fixture(scope="session")
def toy_run(tmp_path_factory):
    """configs/toy.yaml trained once per test session, unchanged but for the output directory
    (and two attention plots per validation)."""
    from s2s.config import load_config
    from s2s.train.trainer import Trainer

    out = tmp_path_factory.mktemp("toy")
    config = load_config(ROOT / "configs" / "toy.yaml",
                         [f"training.output_dir={out}", "training.progress_bar=false",
                          "training.plot_attention=2"])
    result = Trainer(config).train()
    return out, result
