"""Typed configuration: YAML sections mapped onto dataclasses and validated on load.

A config file has the sections ``data``, ``model``, ``training`` and ``evaluation`` (and an
optional top-level ``name``). Every key is declared below with its type, default and allowed
range; :func:`load_config` rejects unknown keys (with a did-you-mean suggestion), values of the
wrong type and values out of range, always naming the dotted key path, e.g.
``model.decoder.dropout: expected a number in [0, 1), got 1.5``.

Overrides from the command line (``--set training.max_steps=100``) are applied to the raw
mapping before validation, so they are checked exactly like values from the file.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import os
import re
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

from s2s.errors import ConfigError, file_problem


def _num(default: Any, lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
         hi_open: bool = False, doc: str = "") -> Any:
    """A numeric field with an allowed range ``[lo, hi]`` (ends optionally open)."""
    meta = {"lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open, "doc": doc}
    return field(default=default, metadata=meta)


# Upper bounds far above any sensible value, so that a typo fails here in one line rather than
# in the allocator; what a model of allowed sizes needs is checked against the machine's memory
# before it is built (s2s.footprint).
MAX_WIDTH = 65_536        # embedding, hidden and attention sizes
MAX_LAYERS = 64
MAX_VOCAB = 1_000_000
MAX_TOKENS = 10_000_000   # batch budgets, sentence counts
MAX_LENGTH = 100_000      # tokens in one sentence
MAX_SEED = 2**32 - 1      # numpy's and many tools' seed range; torch and random accept it too


def _sub(factory: type) -> Any:
    return field(default_factory=factory)


# --------------------------------------------------------------------------------------- data
@dataclass
class TokenizerConfig:
    """SentencePiece settings; the model is trained on the training split and cached in the run,
    unless ``model`` names an existing ``.model`` file (shared by source and target; then the
    training settings below are not used)."""

    model: Optional[str] = None

    joint: bool = True
    vocab_size: int = _num(8000, 8, MAX_VOCAB)
    src_vocab_size: Optional[int] = _num(None, 8, MAX_VOCAB)
    tgt_vocab_size: Optional[int] = _num(None, 8, MAX_VOCAB)
    model_type: Literal["unigram", "bpe", "char", "word"] = "unigram"
    character_coverage: float = _num(1.0, 0.9, 1.0)
    input_sentence_size: int = _num(1_000_000, 1, MAX_TOKENS)


@dataclass
class DataConfig:
    """Where the parallel text comes from and how it is cut into batches.

    ``corpus`` is ``multi30k`` (downloaded on first use), ``toy`` (generated offline) or
    ``files``: then ``train``, ``valid`` and ``test`` are path prefixes, and the files are
    ``PREFIX.SRC_LANG`` / ``PREFIX.TGT_LANG`` (a ``.gz`` suffix is found on its own).
    """

    corpus: Literal["files", "multi30k", "toy"] = "files"
    src_lang: str = "de"
    tgt_lang: str = "en"
    train: Optional[str] = None
    valid: Optional[str] = None
    test: Optional[str] = None
    root: str = "data"
    max_length: int = _num(100, 1, MAX_LENGTH)
    max_eval_length: int = _num(250, 1, MAX_LENGTH,
                                doc="held-out pairs longer than this (subwords) are cut to it "
                                    "for the loss and decoding, and counted in the log")
    batch_tokens: int = _num(2000, 1, MAX_TOKENS)
    valid_batch_size: int = _num(64, 1, MAX_TOKENS)
    toy_train_size: int = _num(20000, 10, MAX_TOKENS)
    tokenizer: TokenizerConfig = _sub(TokenizerConfig)


# -------------------------------------------------------------------------------------- model
@dataclass
class EncoderConfig:
    hidden_size: int = _num(256, 1, MAX_WIDTH)
    num_layers: int = _num(1, 1, MAX_LAYERS)
    bidirectional: bool = True
    dropout: float = _num(0.2, 0.0, 1.0, hi_open=True)
    word_dropout: float = _num(0.0, 0.0, 1.0, hi_open=True)


@dataclass
class DecoderConfig:
    hidden_size: int = _num(512, 1, MAX_WIDTH)
    num_layers: int = _num(1, 1, MAX_LAYERS)
    dropout: float = _num(0.2, 0.0, 1.0, hi_open=True)
    hidden_dropout: float = _num(0.2, 0.0, 1.0, hi_open=True)
    word_dropout: float = _num(0.0, 0.0, 1.0, hi_open=True)
    input_feeding: bool = False
    attentional_size: Optional[int] = _num(None, 1, MAX_WIDTH)
    init: Literal["bridge", "last", "zeros"] = "bridge"
    attentional_activation: Literal["tanh", "none"] = "tanh"


@dataclass
class ModelConfig:
    """Sizes of the encoder-decoder and the attention it uses (see ``s2s.model.attention``)."""

    attention: str = "bahdanau"
    plugins: list[str] = field(default_factory=list)
    embedding_dim: int = _num(256, 1, MAX_WIDTH)
    src_embedding_dim: Optional[int] = _num(None, 1, MAX_WIDTH)
    tgt_embedding_dim: Optional[int] = _num(None, 1, MAX_WIDTH)
    attention_size: Optional[int] = _num(None, 1, MAX_WIDTH)
    num_heads: int = _num(1, 1, MAX_WIDTH)
    tied_embeddings: bool = False
    initializer: Literal["xavier", "uniform"] = "xavier"
    init_range: float = _num(0.1, 0.0, lo_open=True, doc="r of the uniform initializer")
    encoder: EncoderConfig = _sub(EncoderConfig)
    decoder: DecoderConfig = _sub(DecoderConfig)


# ----------------------------------------------------------------------------------- training
@dataclass
class SchedulerConfig:
    type: Literal["constant", "plateau", "warmup_inverse_sqrt"] = "plateau"
    factor: float = _num(0.5, 0.0, 1.0, lo_open=True, hi_open=True)
    patience: int = _num(2, 0)
    min_lr: float = _num(1e-6, 0.0)
    warmup_steps: int = _num(1000, 1)


@dataclass
class EarlyStoppingConfig:
    metric: Literal["bleu", "val_loss", "ppl", "exact_match"] = "bleu"
    patience: int = _num(5, 1)
    min_delta: float = _num(0.0, 0.0)


@dataclass
class TrainingConfig:
    seed: int = _num(42, 0, MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    backend: Literal["auto", "plain"] = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    num_threads: int = _num(0, 0, 1024, doc="0 keeps torch's default")
    output_dir: str = "runs/default"
    optimizer: Literal["adam", "adamw"] = "adam"
    learning_rate: float = _num(3e-4, 0.0, lo_open=True)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = _num(0.0, 0.0)
    clip_grad_norm: float = _num(5.0, 0.0, doc="0 disables clipping")
    label_smoothing: float = _num(0.0, 0.0, 1.0, hi_open=True)
    normalization: Literal["tokens", "sentences"] = "tokens"
    teacher_forcing_ratio: float = _num(1.0, 0.0, 1.0, doc="at update 0 for a decay schedule")
    teacher_forcing_schedule: Literal["constant", "linear", "exponential",
                                      "inverse_sigmoid"] = "constant"
    teacher_forcing_decay: float = _num(0.0, 0.0)
    teacher_forcing_min: float = _num(0.0, 0.0, 1.0)
    accumulate_steps: int = _num(1, 1, 100_000)
    max_steps: int = _num(0, 0, doc="0 means no step budget")
    max_epochs: int = _num(0, 0, doc="0 means no epoch budget")
    max_minutes: float = _num(0.0, 0.0, doc="0 means no time budget")
    validate_every: int = _num(1000, 1)
    log_every: int = _num(50, 1)
    keep_checkpoints: int = _num(1, 0, 100_000)
    max_bad_steps: int = _num(5, 1)
    progress_bar: bool = True
    tensorboard: bool = False
    plot_attention: int = _num(0, 0, 1000, doc="validation sentences drawn as heatmaps per validation")
    scheduler: SchedulerConfig = _sub(SchedulerConfig)
    early_stopping: EarlyStoppingConfig = _sub(EarlyStoppingConfig)


@dataclass
class EvaluationConfig:
    beam_size: int = _num(5, 1, 1000)
    length_penalty: float = _num(0.0, 0.0)
    batch_size: int = _num(64, 1, MAX_TOKENS)
    max_output_length: int = _num(100, 1, MAX_LENGTH)
    max_output_ratio: float = _num(2.0, 0.0, lo_open=True)
    workers: int = _num(0, 0, 1024, doc="CPU: batches (beam) or sentence streams (greedy) decoded "
                                  "at once, each in its own thread; 0 = one per torch thread "
                                  "(at most 4)")


@dataclass
class Config:
    name: str = "s2s"
    data: DataConfig = _sub(DataConfig)
    model: ModelConfig = _sub(ModelConfig)
    training: TrainingConfig = _sub(TrainingConfig)
    evaluation: EvaluationConfig = _sub(EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as plain Python values (YAML- and checkpoint-safe)."""
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------- validation
def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of: " + ", ".join(str(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in inner) + " or null"
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        tp, getattr(tp, "__name__", str(tp)))


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple = 1, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = 40


def short_repr(value: Any) -> str:
    """``repr(value)`` cut short, without walking a huge or deeply nested value (an error
    message must never grow with the input)."""
    return _SHORT.repr(value)


def clip(text: str, limit: int = 100) -> str:
    """``text``, or its two ends around "..." when it is longer than ``limit``."""
    half = (limit - 3) // 2
    return text if len(text) <= limit else f"{text[:half]}...{text[-half:]}"


def _describe(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    return f"{short_repr(value)} ({type(value).__name__})"


def _bound(limit: float) -> str:
    return f"{limit:g}" if isinstance(limit, float) else str(limit)


def _check_range(value: float, meta: dict[str, Any], path: str) -> None:
    lo, hi = meta.get("lo"), meta.get("hi")
    too_low = lo is not None and (value <= lo if meta.get("lo_open") else value < lo)
    too_high = hi is not None and (value >= hi if meta.get("hi_open") else value > hi)
    if too_low or too_high or not math.isfinite(value):
        left = "(" if meta.get("lo_open") or lo is None else "["
        right = ")" if meta.get("hi_open") or hi is None else "]"
        lo_s = "-inf" if lo is None else _bound(lo)
        hi_s = "inf" if hi is None else _bound(hi)
        finite = "a finite value" if isinstance(value, float) else "a value"
        raise ConfigError(f"config key '{path}': expected {finite} in {left}{lo_s}, {hi_s}{right}, "
                          f"got {value!r}")


def _coerce(value: Any, tp: Any, path: str, meta: dict[str, Any]) -> Any:
    """Check ``value`` against the annotation ``tp``; return it (ints widen to float)."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, path)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _coerce(value, inner[0], path, meta)
    if origin is Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ConfigError(_unknown_value_message(path, value, [str(a) for a in allowed]))
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, "
                              f"got {_describe(value)}")
        item_tp = typing.get_args(tp)[0]
        return [_coerce(v, item_tp, f"{path}[{i}]", {}) for i, v in enumerate(value)]
    if tp is float and isinstance(value, str):
        value = _float_from_string(value, path)
    ok = {
        bool: isinstance(value, bool),
        int: isinstance(value, int) and not isinstance(value, bool),
        float: isinstance(value, (int, float)) and not isinstance(value, bool),
        str: isinstance(value, str),
    }.get(tp, True)
    if not ok:
        hint = (" (YAML reads unquoted yes/no/on/off as booleans: quote the value)"
                if tp is str and isinstance(value, bool) else "")
        raise ConfigError(f"config key '{path}': expected {_type_name(tp)}, got "
                          f"{_describe(value)}{hint}")
    if tp is float:
        value = float(value)
    if tp in (int, float):
        _check_range(value, meta, path)
    return value


def _float_from_string(value: str, path: str) -> Any:
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; accept it as the number it means."""
    try:
        return float(value)
    except ValueError:
        return value  # left for the type check to reject


def _unknown_value_message(path: str, value: Any, allowed: list[str]) -> str:
    guess = difflib.get_close_matches(value, allowed, n=1) if isinstance(value, str) else []
    hint = f" (did you mean '{guess[0]}'?)" if guess else ""
    return (f"config key '{path}': unknown value {short_repr(value)}{hint}; "
            f"expected one of: {', '.join(sorted(allowed))}")


def _build(cls: type, raw: Any, path: str) -> Any:
    """Instantiate dataclass ``cls`` from mapping ``raw``, validating every key."""
    where = f"section '{path}'" if path else "the config file"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping of keys to values, got {_describe(raw)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    for key in raw:
        if key not in fields:
            name = key if isinstance(key, str) else short_repr(key)
            full = f"{path}.{name}" if path else name
            guess = difflib.get_close_matches(name, list(fields), n=1)
            hint = f" (did you mean '{guess[0]}'?)" if guess else ""
            raise ConfigError(f"unknown config key '{full}'{hint}; valid keys"
                              f"{' in ' + repr(path) if path else ''}: {', '.join(fields)}")
    values = {}
    for name, fld in fields.items():
        if name in raw:
            full = f"{path}.{name}" if path else name
            values[name] = _coerce(raw[name], hints[name], full, dict(fld.metadata))
    return cls(**values)


def _check_model(cfg: Config) -> None:
    """Cross-field checks that a single key's type and range cannot express."""
    from s2s.model.attention import ATTENTIONS  # imported late: the registry lives there

    model = cfg.model
    if model.attention not in ATTENTIONS:
        raise ConfigError(_unknown_value_message("model.attention", model.attention,
                                                 list(ATTENTIONS)))
    enc_out = model.encoder.hidden_size * (2 if model.encoder.bidirectional else 1)
    dec = model.decoder.hidden_size
    if model.attention in ("dot", "scaled_dot") and enc_out != dec:
        raise ConfigError(
            f"config key 'model.attention': '{model.attention}' scores s(t)ᵀh(i), so "
            f"model.decoder.hidden_size ({dec}) must equal the encoder output size ({enc_out} = "
            f"{'2 × ' if model.encoder.bidirectional else ''}model.encoder.hidden_size)")
    if model.attention == "multihead" and dec % model.num_heads:
        raise ConfigError(f"config key 'model.num_heads': {model.num_heads} does not divide "
                          f"model.decoder.hidden_size ({dec}); heads have size hidden/num_heads")
    if model.decoder.init == "last" and enc_out != dec:
        raise ConfigError(f"config key 'model.decoder.init': 'last' copies the encoder's final "
                          f"state, so model.decoder.hidden_size ({dec}) must equal {enc_out}; "
                          f"use 'bridge' instead")
    tgt_emb = model.tgt_embedding_dim or model.embedding_dim
    att_size = model.decoder.attentional_size or dec
    if model.tied_embeddings and tgt_emb != att_size:
        raise ConfigError(f"config key 'model.tied_embeddings': tying needs the target embedding "
                          f"size ({tgt_emb}) to equal model.decoder.attentional_size ({att_size})")


def _check_data(cfg: Config) -> None:
    data = cfg.data
    if data.corpus == "files":
        for split in ("train", "valid"):
            if not getattr(data, split):
                raise ConfigError(f"config key 'data.{split}': required when data.corpus is "
                                  f"'files' (a path prefix; files are PREFIX.{data.src_lang} and "
                                  f"PREFIX.{data.tgt_lang})")
    if data.src_lang == data.tgt_lang and data.corpus != "toy":
        raise ConfigError(f"config keys 'data.src_lang'/'data.tgt_lang': both are "
                          f"'{data.src_lang}'; they must differ")
    if data.tokenizer.model is not None and not data.tokenizer.joint:
        raise ConfigError("config key 'data.tokenizer.model': one model serves both languages; "
                          "it needs data.tokenizer.joint: true")
    _check_teacher_forcing(cfg.training)
    if len(cfg.training.betas) != 2 or not all(0 <= b < 1 for b in cfg.training.betas):
        raise ConfigError(f"config key 'training.betas': expected two numbers in [0, 1), "
                          f"got {cfg.training.betas}")


def _check_teacher_forcing(training: TrainingConfig) -> None:
    schedule, decay = training.teacher_forcing_schedule, training.teacher_forcing_decay
    allowed = {"exponential": (0 < decay <= 1, "a factor per update in (0, 1]"),
               "inverse_sigmoid": (decay >= 1, "k of k / (k + exp(step / k)), at least 1")}
    ok, expected = allowed.get(schedule, (True, ""))
    if not ok:
        raise ConfigError(f"config key 'training.teacher_forcing_decay': the {schedule} "
                          f"schedule takes {expected}, got {decay!r}")


def import_plugins(raw: Any) -> None:
    """Import the modules ``model.plugins`` names (from the current directory or the Python
    path) so that the attention types they register exist before the config is checked."""
    model = raw.get("model") if isinstance(raw, dict) else None
    plugins = model.get("plugins") if isinstance(model, dict) else None
    if plugins is None:
        return
    if not isinstance(plugins, list) or not all(isinstance(p, str) and p for p in plugins):
        raise ConfigError(f"config key 'model.plugins': expected a list of module names, got "
                          f"{_describe(plugins)}")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    for name in plugins:
        try:
            importlib.import_module(name)
        except Exception as err:  # the module's own failure, whatever it is: one line
            reason = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise ConfigError(f"config key 'model.plugins': cannot import '{name}' "
                              f"({type(err).__name__}: {clip(reason)})") from None


def config_from_dict(raw: Any, source: str = "config") -> Config:
    """Validate a plain mapping (e.g. from YAML or a checkpoint) into a :class:`Config`,
    after importing its ``model.plugins``."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping with sections data, model, training, "
                          f"evaluation; got {_describe(raw)}")
    import_plugins(raw)
    cfg = _build(Config, raw, "")
    _check_model(cfg)
    _check_data(cfg)
    return cfg


MAX_YAML_NODES = 100_000  # a config has about a hundred; aliases may not expand past this


def _expanded_size(node: yaml.Node, sizes: dict[int, int]) -> int:
    """How many nodes ``node`` stands for once every alias in it is expanded; aliases point at
    shared nodes, so ``sizes`` (by node id) keeps this linear in the file's size."""
    if id(node) in sizes:
        if sizes[id(node)] < 0:
            raise ConfigError("a YAML alias refers to a node that contains it (a recursive "
                              "value)")
        return sizes[id(node)]
    sizes[id(node)] = -1
    children: list[yaml.Node] = []
    if isinstance(node, yaml.SequenceNode):
        children = list(node.value)
    elif isinstance(node, yaml.MappingNode):
        children = [part for pair in node.value for part in pair]
    total = 1 + sum(_expanded_size(child, sizes) for child in children)
    sizes[id(node)] = min(total, MAX_YAML_NODES + 1)
    return sizes[id(node)]


def safe_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, refusing documents whose anchors and aliases expand past
    :data:`MAX_YAML_NODES` nodes (an "alias bomb" is a few lines that expand to billions) and
    nesting too deep to walk."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, {}) > MAX_YAML_NODES:
            raise ConfigError(f"its anchors and aliases expand to more than {MAX_YAML_NODES:,} "
                              f"values; a config needs a few hundred")
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError("it is nested too deeply to read") from None
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=VALUE`` into its key path and YAML-parsed value."""
    key, sep, value = text.partition("=")
    shown = clip(text)  # messages quote a long override cut short
    if not sep or not key.strip():
        raise ConfigError(f"override '{shown}': expected KEY=VALUE, e.g. training.max_steps=100")
    try:
        parsed = safe_yaml(value) if value.strip() else ""
    except ConfigError as err:
        raise ConfigError(f"override '{shown}': {err}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"override '{shown}': value is not valid YAML "
                          f"({getattr(err, 'problem', None) or err})") from None
    return key.strip().split("."), parsed


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``dotted.key=value`` override set."""
    raw = copy.deepcopy(raw)
    for text in overrides:
        keys, value = parse_override(text)
        shown = clip(text)
        node = raw
        for depth, key in enumerate(keys[:-1]):
            child = node.setdefault(key, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override '{shown}': '{'.'.join(keys[:depth + 1])}' is a value, "
                                  f"not a section")
            node = child
        node[keys[-1]] = value
    return raw


PACKAGED_CONFIGS = Path(__file__).resolve().parent / "configs"


def packaged_configs() -> list[str]:
    """The names of the configs that ship with s2s (``--config toy`` finds ``toy.yaml``)."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def config_path(name: str | Path) -> Path:
    """``name`` as a path; a bare name that is no file here (``toy``, ``bahdanau.yaml``) is
    one of the packaged configs when there is one by that name."""
    path = Path(name)
    if path.exists() or len(path.parts) != 1:
        return path
    packaged = PACKAGED_CONFIGS / (path.name if path.suffix == ".yaml" else f"{path.name}.yaml")
    return packaged if packaged.is_file() else path


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with file, line and column in any parse error."""
    path = config_path(path)
    problem = file_problem(path)
    if problem:
        known = (f" (packaged configs: {', '.join(packaged_configs())})"
                 if len(path.parts) == 1 else "")
        raise ConfigError(f"config file '{path}' {problem}{known}")
    try:
        raw = safe_yaml(path.read_text(encoding="utf-8"))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise ConfigError(f"{path}: invalid YAML at {where}: {err.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: invalid YAML: {err}") from None
    if raw is None:
        raise ConfigError(f"{path}: the file is empty; expected sections data, model, training")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with sections data, model, training; "
                          f"got {_describe(raw)}")
    return raw


def load_config(path: str | Path, overrides: list[str] | None = None) -> Config:
    """Load, override and validate a YAML config file; an error names the file, or the
    ``--set`` override whose key it is about."""
    raw = apply_overrides(read_yaml(path), overrides or [])
    try:
        return config_from_dict(raw, str(path))
    except ConfigError as err:
        override = _override_behind(str(err), overrides or [])
        where = f"--set {clip(override)}" if override else str(path)
        raise ConfigError(f"{where}: {err}") from None


def _override_behind(message: str, overrides: list[str]) -> str | None:
    """The last override that set the key ``message`` is about (or a section above it)."""
    found = re.search(r"config keys? '([^']+)'", message)
    if not found:
        return None
    key = re.sub(r"\[\d+\]", "", found.group(1))
    for text in reversed(overrides):
        target = text.partition("=")[0].strip()
        if key == target or key.startswith(target + ".") or target.startswith(key + "."):
            return text
    return None


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
