"""Checkpoints written before the model and its CPU speed paths were split apart (s2s at commit
2690b29) still load, translate and resume as they did then, on either backend.

``tests/fixtures/pre_move`` holds two toy checkpoints that code wrote (Bahdanau attention;
general attention with input feeding), with its translations and the losses of its resumed
run (``make_pre_move.py`` there, run once at that commit; it is never regenerated: it stands
for the checkpoints users have).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s2s.config import config_from_dict
from s2s.inference import load_translator
from s2s.train.checkpoint import load_checkpoint
from s2s.train.trainer import Trainer

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pre_move"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text(encoding="utf-8"))
MODELS = ["bahdanau", "general_feeding"]


@pytest.mark.parametrize("backend", ["auto", "plain"])
@pytest.mark.parametrize("name", MODELS)
def test_an_old_checkpoint_translates_as_it_did(name, backend):
    translator = load_translator(FIXTURES / f"{name}.pt", "cpu", backend=backend)
    expected = EXPECTED[name]
    for beam in (1, 3):
        nbest = translator.translate_nbest(expected["sources"], beam, 1)
        assert [found[0][0] for found in nbest] == expected[f"beam{beam}"]
        assert [found[0][1].score for found in nbest] == pytest.approx(
            expected[f"beam{beam}_scores"], abs=1e-4)


@pytest.mark.parametrize("name", MODELS)
def test_an_old_checkpoint_resumes_as_it_did(name, tmp_path):
    """Ten more updates from its last.pt: the losses that code's resumed run had."""
    run = tmp_path / name
    run.mkdir()
    shutil.copy(FIXTURES / f"{name}.pt", run / "last.pt")
    raw = load_checkpoint(run / "last.pt")["config"]
    raw["training"].update(output_dir=str(run), max_steps=310)
    losses: list[float] = []
    Trainer(config_from_dict(raw), resume="auto",
            on_update=lambda update: losses.append(update.loss_per_token)).train()
    assert losses == pytest.approx(EXPECTED[name]["resumed_losses"], rel=1e-5)
