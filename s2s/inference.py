"""Using a trained model: rebuild it from a checkpoint and translate text."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from s2s.checkpoint import load_checkpoint
from s2s.config import Config, config_from_dict
from s2s.data import Tokenizers
from s2s.errors import CheckpointError, ConfigError, DataError
from s2s.model import Seq2Seq, build_model
from s2s.prepack import prepack_available, prepack_for_cpu
from s2s.search import Hypothesis, search
from s2s.tokenizer import SPECIAL


@dataclass
class Translator:
    """A model with its tokenizers and config, ready to translate raw sentences."""

    model: Seq2Seq
    tokenizers: Tokenizers
    config: Config
    device: torch.device

    def translate(self, sentences: Sequence[str], beam_size: int = 1,
                  batch_size: int | None = None, workers: int | None = None) -> list[str]:
        """Detokenized best translations; an empty input line gives an empty output line."""
        return [nbest[0][0] for nbest in self.translate_nbest(sentences, beam_size, 1,
                                                               batch_size, workers=workers)]

    def translate_nbest(self, sentences: Sequence[str], beam_size: int = 1, n_best: int = 1,
                        batch_size: int | None = None, keep_attention: bool = False,
                        workers: int | None = None) -> list[list[tuple[str, Hypothesis]]]:
        """For each sentence, ``n_best`` (text, hypothesis) pairs, best first. ``batch_size``
        and ``workers`` (see :func:`~s2s.search.search`) default to the config's
        ``evaluation`` values."""
        ev = self.config.evaluation
        cleaned = [clean_input(s) for s in sentences]
        wanted = [i for i, text in enumerate(cleaned) if text]  # empty lines are not searched
        sources = self.tokenizers.src.encode_batch([cleaned[i] for i in wanted])
        results = search(self.model, sources, batch_size or ev.batch_size,
                         ev.max_output_length, ev.max_output_ratio,
                         self.device, beam_size=max(beam_size, n_best), alpha=ev.length_penalty,
                         n_best=n_best, keep_attention=keep_attention,
                         workers=ev.workers if workers is None else workers)
        out: list[list[tuple[str, Hypothesis]]] = [[("", Hypothesis([], 0.0, 0.0))]
                                                   for _ in sentences]
        for i, hyps in zip(wanted, results):
            out[i] = [(self.tokenizers.tgt.decode(h.tokens), h) for h in hyps]
        return out


def clean_input(text: str) -> str:
    """Control characters become spaces (SentencePiece would keep them as unknown pieces)."""
    return "".join(" " if (ord(c) < 32 or 127 <= ord(c) < 160) else c for c in text).strip()


def model_from_state(state: dict, device: torch.device, source: str = "checkpoint") -> Translator:
    """Rebuild config, tokenizers and model from a loaded checkpoint dict."""
    try:
        config = config_from_dict(state["config"], f"{source} config")
        tokenizers = Tokenizers.from_checkpoint(state["tokenizers"])
        model = build_model(config.model, len(tokenizers.src), len(tokenizers.tgt), SPECIAL,
                            config.data.max_length + 1)
        model.load_state_dict(state["model"])
    except KeyError as err:
        raise CheckpointError(f"{source}: checkpoint lacks the entry {err}") from None
    except (TypeError, AttributeError) as err:
        raise CheckpointError(f"{source}: checkpoint entries have the wrong form ({err})") from None
    except (ConfigError, DataError) as err:
        raise CheckpointError(f"{source}: {err}") from None
    except RuntimeError as err:
        reason = str(err).strip().splitlines()[0]
        raise CheckpointError(f"{source}: weights do not fit the model its config describes "
                              f"({reason})") from None
    model.to(device).eval()
    return Translator(model, tokenizers, config, device)


def load_translator(path: str | Path, device: str = "auto", int8: bool = False,
                    prepack: bool = True) -> Translator:
    """Everything needed to translate, from one checkpoint file; ``int8``: see
    :func:`quantize_int8`. On the CPU the fp32 weights are otherwise prepacked for oneDNN
    (:mod:`s2s.prepack`: same model, faster steps) unless ``prepack`` is False."""
    resolved = resolve_device("cpu" if int8 and device == "auto" else device)
    if int8 and resolved.type != "cpu":
        raise ConfigError("int8 decoding runs on the CPU only; add --device cpu")
    translator = model_from_state(load_checkpoint(path, map_location="cpu"), resolved, str(path))
    if int8:
        translator.model = quantize_int8(translator.model)
    elif prepack and resolved.type == "cpu" and prepack_available():
        prepack_for_cpu(translator.model)
    return translator


def quantize_int8(model: Seq2Seq) -> Seq2Seq:
    """Dynamic int8 quantization for CPU decoding: the weights of every linear layer and LSTM
    are stored as int8 (per tensor) and activations are quantized on the fly, so the output
    projection and the LSTM steps run as int8 matrix products (fbgemm). Faster, slightly
    different numbers: on Multi30k BLEU moved by about 0.1 (docs/benchmarks.md)."""
    quantization = getattr(getattr(torch, "ao", None), "quantization", None)
    if quantization is None or not hasattr(quantization, "quantize_dynamic"):
        raise ConfigError(f"int8 decoding needs torch.ao.quantization, which torch "
                          f"{torch.__version__} does not have; decode without --int8")
    with warnings.catch_warnings():  # its deprecation notices are not the user's concern
        warnings.simplefilter("ignore")
        return quantization.quantize_dynamic(model, {nn.Linear, nn.LSTM}, dtype=torch.qint8)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when present, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for, but torch sees no CUDA device; "
                          "use 'auto' or 'cpu'")
    return torch.device(name)
