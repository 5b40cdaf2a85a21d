"""Using a trained model: rebuild it from a checkpoint and translate text."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from s2s.backend import resolve_device, select_backend
from s2s.config import Config, config_from_dict
from s2s.data.batching import Batch, collate, sentence_batches
from s2s.data.splits import Tokenizers
from s2s.data.tokenizer import SPECIAL
from s2s.errors import CheckpointError, ConfigError, DataError, S2SError
from s2s.footprint import (check_memory, check_weights, decoding_bytes, model_shapes,
                           parameter_count)
from s2s.model.seq2seq import Seq2Seq, build_model
from s2s.search.common import Hypothesis, SearchModel
from s2s.search.ensemble import Ensemble
from s2s.search.runner import search
from s2s.train.checkpoint import load_checkpoint


@dataclass(frozen=True)
class SentenceScore:
    """A target's log-probability under the model (natural log, EOS included) and its length
    in subwords (EOS included)."""

    log_prob: float
    tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(-self.log_prob / max(self.tokens, 1))


@dataclass
class Translator:
    """A model with its tokenizers and config, ready to translate raw sentences.
    ``search_model`` is what search runs (default: the model itself; a backend's, from
    :func:`load_translator`)."""

    model: Seq2Seq
    tokenizers: Tokenizers
    config: Config
    device: torch.device
    search_model: Optional[SearchModel] = None

    def __post_init__(self) -> None:
        if self.search_model is None:
            self.search_model = self.model

    @classmethod
    def load(cls, path: str | Path | Sequence[str | Path], device: str = "auto",
             backend: str = "auto", int8: bool = False) -> "Translator":
        """The translator of a checkpoint (several: an ensemble); see :func:`load_translator`."""
        return load_translator(path, device, int8, backend)

    def with_search(self, **settings: Any) -> "Translator":
        """This translator with ``evaluation`` settings replaced (``length_penalty``,
        ``max_output_length``, ``max_output_ratio``, ``batch_size``, ``workers``); the model is
        shared, not copied."""
        try:
            evaluation = dataclasses.replace(self.config.evaluation, **settings)
            config = config_from_dict({**self.config.to_dict(),
                                       "evaluation": dataclasses.asdict(evaluation)})
        except TypeError as err:
            raise ConfigError(f"unknown search setting ({err})") from None
        return dataclasses.replace(self, config=config)

    def score(self, sources: Sequence[str], targets: Sequence[str],
              batch_size: int | None = None) -> list[SentenceScore]:
        """Forced decoding: for each (source, target) pair, the model's log-probability of the
        target's subwords and EOS given the source, and the perplexity per subword."""
        if len(sources) != len(targets):
            raise S2SError(f"{len(sources)} sources but {len(targets)} targets; they must align")
        src_ids = self.tokenizers.src.encode_batch([clean_input(s) for s in sources])
        tgt_ids = self.tokenizers.tgt.encode_batch([clean_input(t) for t in targets])
        lengths = [max(len(s), len(t)) for s, t in zip(src_ids, tgt_ids)]
        scores: list[SentenceScore] = [SentenceScore(0.0, 0)] * len(sources)
        self.model.eval()
        for indices in sentence_batches(lengths, batch_size or self.config.evaluation.batch_size):
            batch = collate([src_ids[i] for i in indices], [tgt_ids[i] for i in indices],
                            indices).to(self.device)
            for index, log_prob, count in zip(indices, *self._forced(batch)):
                scores[index] = SentenceScore(log_prob, count)
        return scores

    @torch.no_grad()
    def _forced(self, batch: Batch) -> tuple[list[float], list[int]]:
        """Summed log-probabilities of each row's target (EOS included) and its length."""
        memory, state = self.model.encode(batch.src, batch.src_lengths)
        vectors, _ = self.model.decoder(batch.tgt_in, state, memory, 1.0)   # [B, T, A]
        log_probs = torch.log_softmax(self.model.decoder.project(vectors).float(), dim=-1)
        gold = log_probs.gather(-1, batch.tgt_out.unsqueeze(-1)).squeeze(-1)  # [B, T]
        gold = gold.masked_fill(~batch.tgt_mask, 0.0)
        return gold.sum(dim=1).tolist(), batch.tgt_mask.sum(dim=1).tolist()

    def translate(self, sentences: Sequence[str], beam_size: int = 1,
                  batch_size: int | None = None, workers: int | None = None) -> list[str]:
        """Detokenized best translations; an empty input line gives an empty output line."""
        return [nbest[0][0] for nbest in self.translate_nbest(sentences, beam_size, 1,
                                                               batch_size, workers=workers)]

    def translate_nbest(self, sentences: Sequence[str], beam_size: int = 1, n_best: int = 1,
                        batch_size: int | None = None, keep_attention: bool = False,
                        workers: int | None = None) -> list[list[tuple[str, Hypothesis]]]:
        """For each sentence, ``n_best`` (text, hypothesis) pairs, best first. ``batch_size``
        and ``workers`` (see :func:`~s2s.search.runner.search`) default to the config's
        ``evaluation`` values."""
        ev = self.config.evaluation
        cleaned = [clean_input(s) for s in sentences]
        wanted = [i for i, text in enumerate(cleaned) if text]  # empty lines are not searched
        sources = self.tokenizers.src.encode_batch([cleaned[i] for i in wanted])
        results = search(self.search_model, sources, batch_size or ev.batch_size,
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
        shapes = model_shapes(config.model, len(tokenizers.src), len(tokenizers.tgt),
                              config.data.max_length + 1)
        check_weights(state["model"], shapes, source)
        parameters = parameter_count(shapes)
        check_memory(decoding_bytes(config, parameters, len(tokenizers.tgt)), parameters,
                     device, "decoding with")
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


def decoding_device(device: str, int8: bool = False) -> torch.device:
    """The device ``device`` ("auto", "cpu", "cuda") means for decoding; int8 runs on the CPU
    only ("auto" is the CPU then)."""
    if int8 and device not in ("auto", "cpu"):  # said before the device is even looked for
        raise ConfigError("int8 decoding runs on the CPU only; add --device cpu")
    return resolve_device("cpu" if int8 else device)


def load_translator(paths: str | Path | Sequence[str | Path], device: str = "auto",
                    int8: bool = False, backend: str = "auto") -> Translator:
    """Everything needed to translate, from one checkpoint file — or from several, decoded as an
    ensemble (:class:`~s2s.search.ensemble.Ensemble`; the checkpoints must share their
    SentencePiece models, and the first's config is the translator's) — on ``device`` with
    ``backend`` ("auto" or "plain", :func:`s2s.backend.select_backend`); ``int8``: int8 weights
    for the linear layers and LSTMs (the CPU backend's, on the CPU only)."""
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    resolved = decoding_device(device, int8)
    chosen = select_backend(backend, resolved)
    states = [load_checkpoint(path, map_location="cpu") for path in paths]
    for path, state in zip(paths[1:], states[1:]):
        if state.get("tokenizers") != states[0].get("tokenizers"):
            raise CheckpointError(f"{path}: its SentencePiece models differ from {paths[0]}'s; "
                                  f"an ensemble needs one vocabulary")
    translators = [model_from_state(state, resolved, str(path))
                   for path, state in zip(paths, states)]
    first = translators[0]
    models = [chosen.quantize_int8(t.model) if int8 else t.model for t in translators]
    search_models = [chosen.prepare_decoding(model) for model in models]
    first.model = models[0]
    first.search_model = search_models[0] if len(models) == 1 else Ensemble(search_models)
    return first
