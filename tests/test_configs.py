"""Every config in configs/ trains and decodes on the plain backend (a smoke test: the toy
corpus stands in for the config's data, and a few updates for its budget)."""

from __future__ import annotations

from pathlib import Path

import pytest

from s2s.config import load_config
from s2s.inference import load_translator
from s2s.model.decoder import step_by_step
from s2s.model.encoder import run_packed
from s2s.model.seq2seq import cross_entropy
from s2s.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
TOY_DATA = ["data.corpus=toy", "data.src_lang=src", "data.tgt_lang=tgt",
            "data.toy_train_size=200", "data.tokenizer.joint=true",
            "data.tokenizer.vocab_size=32", "data.tokenizer.model_type=word",
            "data.tokenizer.model=null"]


def test_there_are_configs():
    assert {"bahdanau", "toy", "general", "multihead"} <= {path.stem for path in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda path: path.stem)
def test_the_plain_backend_trains_and_decodes_every_config(path, tmp_path):
    config = load_config(path, TOY_DATA + [
        f"training.output_dir={tmp_path}", "training.backend=plain", "training.max_steps=2",
        "training.validate_every=2", "training.progress_bar=false", "training.plot_attention=0",
        "evaluation.max_output_length=4"])
    trainer = Trainer(config)
    model = trainer.model
    assert trainer.backend.name == "plain" and model.encoder.run_lstm is run_packed
    assert model.decoder.run_steps is step_by_step and model.output_loss is cross_entropy
    result = trainer.train()
    assert result["steps"] == 2 and (tmp_path / "best.pt").is_file()
    translator = load_translator(tmp_path / "best.pt", "cpu", backend="plain")
    assert translator.search_model is translator.model
    for beam in (1, 3):
        outputs = translator.translate(["a b c", "", "d e f g h"], beam_size=beam)
        assert len(outputs) == 3 and outputs[1] == ""
