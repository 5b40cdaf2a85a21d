"""Config validation: every bad value fails with one ConfigError line naming its dotted key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from s2s.config import Config, config_from_dict, load_config
from s2s.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted((REPO / "configs").glob("*.yaml"))

# A minimal valid config that needs no data files (the offline toy corpus).
BASE = {"data": {"corpus": "toy", "src_lang": "src", "tgt_lang": "tgt"}}


def with_(**sections) -> dict:
    """BASE with the given sections merged in (one level deep)."""
    raw = copy.deepcopy(BASE)
    for name, value in sections.items():
        if isinstance(value, dict) and isinstance(raw.get(name), dict):
            raw[name].update(value)
        else:
            raw[name] = value
    return raw


def config_error(raw) -> str:
    with pytest.raises(ConfigError) as info:
        config_from_dict(raw)
    message = str(info.value)
    assert "\n" not in message, f"message is not one line: {message!r}"
    return message


def write_yaml(path: Path, raw) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


def test_base_is_valid():
    cfg = config_from_dict(BASE)
    assert isinstance(cfg, Config)
    assert cfg.data.corpus == "toy"


# ---------------------------------------------------------------------------- unknown keys
def test_unknown_top_level_key():
    message = config_error(with_(modle={"attention": "dot"}))
    assert "'modle'" in message
    assert "did you mean 'model'?" in message


def test_unknown_nested_key_names_full_path_and_suggestion():
    message = config_error(with_(model={"encoder": {"hiden_size": 128}}))
    assert "unknown config key 'model.encoder.hiden_size'" in message
    assert "did you mean 'hidden_size'?" in message
    assert "valid keys in 'model.encoder'" in message


def test_unknown_key_without_close_match_lists_valid_keys():
    message = config_error(with_(training={"zzzzqqq": 1}))
    assert "'training.zzzzqqq'" in message
    assert "did you mean" not in message
    assert "learning_rate" in message  # valid keys listed


def test_unknown_key_in_file_names_file_and_path(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", with_(model={"decoder": {"hiden_size": 3}}))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ")
    assert "'model.decoder.hiden_size'" in message
    assert "did you mean 'hidden_size'?" in message


def test_section_that_is_not_a_mapping():
    message = config_error(with_(model={"encoder": 5}))
    assert "'model.encoder'" in message
    assert "mapping" in message


def test_top_level_not_a_mapping():
    message = config_error([1, 2])
    assert "expected a mapping" in message


# ------------------------------------------------------------------------------ wrong types
@pytest.mark.parametrize("raw, path, expected, got", [
    (with_(model={"encoder": {"hidden_size": "big"}}), "model.encoder.hidden_size",
     "expected an integer", "'big' (str)"),
    (with_(model={"encoder": {"hidden_size": True}}), "model.encoder.hidden_size",
     "expected an integer", "True (bool)"),
    (with_(training={"max_steps": 1.5}), "training.max_steps", "expected an integer",
     "1.5 (float)"),
    (with_(training={"learning_rate": [0.1]}), "training.learning_rate", "expected a number",
     "[0.1] (list)"),
    (with_(model={"encoder": {"bidirectional": "yes"}}), "model.encoder.bidirectional",
     "expected true or false", "'yes' (str)"),
    (with_(training={"betas": 0.9}), "training.betas", "expected a list of a number",
     "0.9 (float)"),
    (with_(name=3), "name", "expected a string", "3 (int)"),
], ids=["str-for-int", "bool-for-int", "float-for-int", "list-for-float", "str-for-bool",
        "float-for-list", "int-for-str"])
def test_wrong_type(raw, path, expected, got):
    message = config_error(raw)
    assert f"config key '{path}'" in message
    assert expected in message
    assert got in message


def test_list_item_has_indexed_path():
    message = config_error(with_(training={"betas": [0.9, "x"]}))
    assert "'training.betas[1]'" in message


def test_int_widens_to_float():
    cfg = config_from_dict(with_(training={"learning_rate": 1}))
    assert cfg.training.learning_rate == 1.0
    assert isinstance(cfg.training.learning_rate, float)


def test_bad_initializer_lists_choices():
    message = config_error(with_(model={"initializer": "glorot"}))
    assert "'model.initializer'" in message and "uniform, xavier" in message


def test_bad_literal_value_lists_choices():
    message = config_error(with_(training={"optimizer": "adamm"}))
    assert "'training.optimizer'" in message
    assert "did you mean 'adam'?" in message
    assert "adam, adamw" in message


# ---------------------------------------------------------------------------- out of range
@pytest.mark.parametrize("raw, path, interval, value", [
    (with_(model={"encoder": {"hidden_size": -3}}), "model.encoder.hidden_size",
     "a value in [1, 65536]", "-3"),
    (with_(model={"encoder": {"hidden_size": 1_000_000_000}}), "model.encoder.hidden_size",
     "a value in [1, 65536]", "1000000000"),
    (with_(model={"embedding_dim": 0}), "model.embedding_dim", "a value in [1, 65536]", "0"),
    (with_(model={"decoder": {"dropout": 1.0}}), "model.decoder.dropout",
     "a finite value in [0, 1)", "1.0"),
    (with_(model={"decoder": {"dropout": -0.1}}), "model.decoder.dropout",
     "a finite value in [0, 1)", "-0.1"),
    (with_(training={"learning_rate": 0}), "training.learning_rate",
     "a finite value in (0, inf)", "0"),
    (with_(training={"learning_rate": float("inf")}), "training.learning_rate",
     "a finite value in (0, inf)", "inf"),
    (with_(evaluation={"length_penalty": float("-inf")}), "evaluation.length_penalty",
     "a finite value in [0, inf)", "-inf"),
    (with_(training={"scheduler": {"factor": 1}}), "training.scheduler.factor",
     "a finite value in (0, 1)", "1.0"),
    (with_(training={"learning_rate": float("nan")}), "training.learning_rate",
     "a finite value in (0, inf)", "nan"),
    (with_(model={"init_range": 0}), "model.init_range", "a finite value in (0, inf)", "0"),
    (with_(training={"seed": 2**64}), "training.seed", "a value in [0, 4294967295]",
     str(2**64)),
    (with_(training={"seed": -1}), "training.seed", "a value in [0, 4294967295]", "-1"),
    (with_(training={"num_threads": 10**9}), "training.num_threads", "a value in [0, 1024]",
     "1000000000"),
    (with_(data={"tokenizer": {"vocab_size": 10**9}}), "data.tokenizer.vocab_size",
     "a value in [8, 1000000]", "1000000000"),
], ids=["negative-size", "huge-size", "zero-size", "dropout-1", "dropout-negative", "lr-0",
        "lr-inf", "penalty-minus-inf", "factor-1", "lr-nan", "init-range-0",
        "seed-too-big", "seed-negative", "threads", "vocab"])
def test_out_of_range(raw, path, interval, value):
    message = config_error(raw)
    assert f"config key '{path}'" in message
    assert f"expected {interval}" in message
    assert f"got {value}" in message


def test_infinity_in_yaml_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data: {corpus: toy}\ntraining: {learning_rate: .inf}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: config key 'training.learning_rate': expected a finite "
                               f"value in (0, inf), got inf")


def test_range_edges_that_are_allowed():
    cfg = config_from_dict(with_(model={"decoder": {"dropout": 0.0}},
                                 training={"teacher_forcing_ratio": 1.0, "max_steps": 0}))
    assert cfg.model.decoder.dropout == 0.0
    assert cfg.training.teacher_forcing_ratio == 1.0


def test_betas_out_of_range():
    message = config_error(with_(training={"betas": [0.9, 1.0]}))
    assert "'training.betas'" in message


# ---------------------------------------------------------------------- cross-field checks
def test_num_heads_must_divide_decoder_hidden_size():
    message = config_error(with_(model={"attention": "multihead", "num_heads": 3,
                                        "decoder": {"hidden_size": 128}}))
    assert "'model.num_heads'" in message
    assert "3 does not divide model.decoder.hidden_size (128)" in message


def test_num_heads_that_divide_are_fine():
    cfg = config_from_dict(with_(model={"attention": "multihead", "num_heads": 4,
                                        "decoder": {"hidden_size": 128}}))
    assert cfg.model.num_heads == 4


def test_num_heads_ignored_for_other_attention():
    config_from_dict(with_(model={"attention": "bahdanau", "num_heads": 3,
                                  "decoder": {"hidden_size": 128}}))


def test_unknown_attention_lists_valid_and_suggests():
    message = config_error(with_(model={"attention": "bahdanu"}))
    assert "'model.attention'" in message
    assert "unknown value 'bahdanu'" in message
    assert "did you mean 'bahdanau'?" in message
    for name in ("bahdanau", "concat", "dot", "general", "location", "multihead", "scaled_dot"):
        assert name in message


@pytest.mark.parametrize("attention", ["dot", "scaled_dot"])
def test_dot_attention_needs_matching_sizes(attention):
    message = config_error(with_(model={"attention": attention,
                                        "encoder": {"hidden_size": 128, "bidirectional": True},
                                        "decoder": {"hidden_size": 512}}))
    assert "'model.attention'" in message
    assert "model.decoder.hidden_size (512)" in message
    assert "encoder output size (256" in message


def test_dot_attention_with_matching_sizes_is_fine():
    cfg = config_from_dict(with_(model={"attention": "dot",
                                        "encoder": {"hidden_size": 128, "bidirectional": True},
                                        "decoder": {"hidden_size": 256}}))
    assert cfg.model.attention == "dot"


def test_files_corpus_needs_train_and_valid():
    message = config_error({"data": {"corpus": "files"}})
    assert "'data.train'" in message


# --------------------------------------------------------------------------- reading files
def test_missing_config_file(tmp_path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"config file '{path}' does not exist"


def test_config_path_that_is_a_directory(tmp_path):
    with pytest.raises(ConfigError, match="is a directory, not a file"):
        load_config(tmp_path)


def test_invalid_yaml_has_line_and_column(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data:\n  corpus: toy\nmodel:\n  attention: [dot\n  encoder: {}\n",
                    encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: invalid YAML at line ")
    assert ", column " in message


def test_invalid_yaml_exact_position(tmp_path):
    path = tmp_path / "tab.yaml"
    path.write_text("data:\n  corpus: toy\n\tmodel: 1\n", encoding="utf-8")  # tab indent
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "line 3, column 1" in str(info.value)


def test_yaml_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n"])
def test_empty_yaml_file(tmp_path, text):
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "empty" in str(info.value)
    assert str(path) in str(info.value)


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


# ------------------------------------------------------------------------------- overrides
TOY = REPO / "configs" / "toy.yaml"


def test_override_applies():
    cfg = load_config(TOY, ["training.max_steps=100", "model.attention=bahdanau",
                            "training.learning_rate=0.001", "model.encoder.bidirectional=false"])
    assert cfg.training.max_steps == 100
    assert cfg.model.attention == "bahdanau"
    assert cfg.training.learning_rate == pytest.approx(1e-3)
    assert cfg.model.encoder.bidirectional is False


@pytest.mark.parametrize("value", ["1e-3", "5e-4", "1.0e-3"])
def test_override_float_in_exponent_notation(value):
    # YAML 1.1 reads '1e-3' (no dot) as a string; a float key accepts it as the number
    cfg = load_config(TOY, [f"training.learning_rate={value}"])
    assert cfg.training.learning_rate == pytest.approx(float(value))
    assert isinstance(cfg.training.learning_rate, float)


def test_float_in_exponent_notation_in_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  corpus: toy\n  src_lang: a\n  tgt_lang: b\n"
                    "training:\n  learning_rate: 2e-4\n  scheduler:\n    min_lr: 1e-7\n",
                    encoding="utf-8")
    cfg = load_config(path)
    assert cfg.training.learning_rate == pytest.approx(2e-4)
    assert cfg.training.scheduler.min_lr == pytest.approx(1e-7)


def test_non_numeric_string_for_float_still_fails():
    with pytest.raises(ConfigError, match=r"'training.learning_rate': expected a number, "
                                          r"got 'fast' \(str\)"):
        load_config(TOY, ["training.learning_rate=fast"])
    with pytest.raises(ConfigError, match="'training.learning_rate': expected a finite value in"):
        load_config(TOY, ["training.learning_rate=-1e-3"])


def test_exponent_string_is_not_accepted_for_int():
    with pytest.raises(ConfigError, match="'training.max_steps': expected an integer"):
        load_config(TOY, ["training.max_steps=1e3"])


def test_override_does_not_change_file_defaults():
    assert load_config(TOY).training.max_steps == 1200


def test_later_override_wins():
    cfg = load_config(TOY, ["training.max_steps=5", "training.max_steps=7"])
    assert cfg.training.max_steps == 7


def test_override_of_unknown_key_fails_with_path():
    with pytest.raises(ConfigError) as info:
        load_config(TOY, ["training.max_stepz=100"])
    message = str(info.value)
    assert "'training.max_stepz'" in message
    assert "did you mean 'max_steps'?" in message


def test_override_with_unknown_section_fails_with_path():
    with pytest.raises(ConfigError) as info:
        load_config(TOY, ["model.encoderr.hidden_size=3"])
    assert "'model.encoderr'" in str(info.value)


def test_override_is_validated():
    with pytest.raises(ConfigError) as info:
        load_config(TOY, ["model.decoder.dropout=1.5"])
    assert "'model.decoder.dropout'" in str(info.value)
    assert "1.5" in str(info.value)
    with pytest.raises(ConfigError, match="'training.max_steps': expected an integer"):
        load_config(TOY, ["training.max_steps=lots"])


def test_override_through_a_scalar_fails():
    with pytest.raises(ConfigError) as info:
        load_config(TOY, ["training.max_steps.inner=3"])
    message = str(info.value)
    assert "'training.max_steps.inner=3'" in message
    assert "'training.max_steps' is a value, not a section" in message


def test_override_through_top_level_scalar_fails():
    with pytest.raises(ConfigError, match="'name' is a value, not a section"):
        load_config(TOY, ["name.x=1"])


@pytest.mark.parametrize("text", ["training.max_steps", "=3", "  =3"])
def test_malformed_override(text):
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        load_config(TOY, [text])


def test_override_with_invalid_yaml_value():
    with pytest.raises(ConfigError) as info:
        load_config(TOY, ["training.betas=[0.9, 0.99"])
    assert "not valid YAML" in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------- shipped configs
@pytest.mark.parametrize("path", CONFIG_FILES, ids=[p.name for p in CONFIG_FILES])
def test_shipped_config_loads_and_round_trips(path):
    cfg = load_config(path)
    again = config_from_dict(cfg.to_dict())
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_configs_were_found():
    assert len(CONFIG_FILES) >= 2


def test_round_trip_through_yaml(tmp_path):
    from s2s.config import save_config

    cfg = load_config(TOY, ["model.attention=multihead", "model.num_heads=4"])
    save_config(cfg, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("override, key", [
    ("model.decoder.dropout=1.5", "model.decoder.dropout"),
    ("training.betas=[0.9, x]", "training.betas[1]"),
    ("model={attention: dott}", "model.attention"),
], ids=["value", "list-item", "section"])
def test_an_override_error_names_the_command_line_not_the_file(override, key):
    with pytest.raises(ConfigError) as info:
        load_config(TOY, ["training.max_steps=5", override])
    assert str(info.value).startswith(f"--set {override}: ")
    assert key in str(info.value) and str(TOY) not in str(info.value)


def test_an_error_in_the_file_still_names_the_file(tmp_path):
    path = write_yaml(tmp_path / "c.yaml", with_(model={"decoder": {"dropout": 2}}))
    with pytest.raises(ConfigError) as info:
        load_config(path, ["training.max_steps=5"])
    assert str(info.value).startswith(f"{path}: config key 'model.decoder.dropout'")
