"""Checkpoint averaging and ensemble decoding: an ensemble of one is the model, averaging copies
of one checkpoint changes nothing, an ensemble averages its members' log-probabilities, and
mismatched checkpoints are one clear line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from s2s.data.tokenizer import Tokenizer
from s2s.errors import CheckpointError
from s2s.inference import load_translator
from s2s.search.ensemble import Ensemble
from s2s.search.runner import search
from s2s.train.checkpoint import average_checkpoints, load_checkpoint, save_checkpoint
from tests.conftest import random_batch, tiny_model

ROOT = Path(__file__).resolve().parents[1]
PRE_MOVE = ROOT / "tests" / "fixtures" / "pre_move"
SOURCES = [[5, 6, 7, 8, 9], [10, 11], [12, 13, 14, 15, 16, 17, 18], [4, 19, 4], [7, 7, 9]]


def hypotheses(model, beam: int) -> list:
    found = search(model, SOURCES, batch_size=2, max_output_length=8, max_output_ratio=2.0,
                   beam_size=beam, n_best=min(beam, 2))
    return [[(h.tokens, h.score) for h in hyps] for hyps in found]


@pytest.mark.parametrize("beam", [1, 3])
def test_an_ensemble_of_one_model_or_of_copies_is_that_model(beam):
    model = tiny_model("bahdanau", seed=3).eval()
    alone = hypotheses(model, beam)
    assert hypotheses(Ensemble([model]), beam) == alone
    assert hypotheses(Ensemble([model, model]), beam) == alone


def test_an_ensemble_averages_its_members_log_probabilities():
    members = [tiny_model("bahdanau", seed=1).eval(), tiny_model("general", seed=2).eval()]
    ensemble = Ensemble(members)
    batch = random_batch(seed=5)
    prev = torch.tensor([2, 2, 2, 2])
    with torch.no_grad():
        memory, state = ensemble.encode(batch.src, batch.src_lengths)
        log_probs, state, weights = ensemble.step(prev, state, memory)
        log_probs2, _, _ = ensemble.step(log_probs.argmax(-1), state, memory)
        expected, expected2 = [], []
        for member in members:
            own_memory, own_state = member.encode(batch.src, batch.src_lengths)
            first, own_state, _ = member.step(prev, own_state, own_memory)
            expected.append(first)
            expected2.append(member.step(log_probs.argmax(-1), own_state, own_memory)[0])
    torch.testing.assert_close(log_probs, (expected[0] + expected[1]) / 2)
    torch.testing.assert_close(log_probs2, (expected2[0] + expected2[1]) / 2)
    assert weights.shape == (4, batch.src.size(1))
    # both searches run over the ensemble, streams joining and beams reordering the parts
    for beam in (1, 3):
        assert all(len(hyps) == min(beam, 2) for hyps in hypotheses(ensemble, beam))


def test_averaging_copies_of_a_checkpoint_changes_nothing(tmp_path):
    path = PRE_MOVE / "bahdanau.pt"
    averaged = average_checkpoints([path, path, path])
    original = load_checkpoint(path)
    for name, tensor in original["model"].items():
        assert torch.equal(averaged["model"][name], tensor), name
    assert "optimizer" not in averaged and averaged["step"] == original["step"]
    save_checkpoint(averaged, tmp_path / "avg.pt")
    sentences = ["a b c d", "q r s"]
    assert load_translator(tmp_path / "avg.pt", "cpu").translate(sentences, beam_size=3) == \
        load_translator(path, "cpu").translate(sentences, beam_size=3)


def test_averaging_two_checkpoints_is_their_mean_and_the_script_writes_it(tmp_path):
    original = load_checkpoint(PRE_MOVE / "bahdanau.pt")
    shifted = {**original, "model": {name: t + 1.0 if t.is_floating_point() else t
                                     for name, t in original["model"].items()}}
    save_checkpoint(shifted, tmp_path / "shifted.pt")
    output = tmp_path / "mean.pt"
    result = subprocess.run([sys.executable, "scripts/average_checkpoints.py",
                             str(PRE_MOVE / "bahdanau.pt"), str(tmp_path / "shifted.pt"),
                             "--output", str(output)], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    averaged = load_checkpoint(output)
    for name, tensor in original["model"].items():
        torch.testing.assert_close(averaged["model"][name], tensor + 0.5, msg=name)
    assert load_translator(output, "cpu").translate(["a b c"]) != [""]


def test_checkpoints_of_different_models_are_refused_in_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="general_feeding.pt: its model config differs"):
        average_checkpoints([PRE_MOVE / "bahdanau.pt", PRE_MOVE / "general_feeding.pt"])
    other = load_checkpoint(PRE_MOVE / "general_feeding.pt")
    other["tokenizers"] = {"src": Tokenizer.train(["x y z", "z y"] * 50, 12, "word").model_bytes,
                           "tgt": other["tokenizers"]["tgt"]}
    save_checkpoint(other, tmp_path / "other.pt")
    result = subprocess.run([sys.executable, "scripts/translate.py", "--checkpoint",
                             str(PRE_MOVE / "bahdanau.pt"), str(tmp_path / "other.pt")],
                            cwd=ROOT, input="a b\n", capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr == (f"error: {tmp_path / 'other.pt'}: its SentencePiece models differ "
                             f"from {PRE_MOVE / 'bahdanau.pt'}'s; an ensemble needs one "
                             f"vocabulary\n")


def test_evaluate_decodes_an_ensemble_of_checkpoints(tmp_path):
    """Two models of one vocabulary (Bahdanau; general attention with input feeding)."""
    sources, references = tmp_path / "src.txt", tmp_path / "ref.txt"
    sources.write_text("a b c d\nq r s t u\n", encoding="utf-8")
    references.write_text("d c b a\nu t s r q\n", encoding="utf-8")
    result = subprocess.run([sys.executable, "evaluate.py", "--checkpoint",
                             str(PRE_MOVE / "bahdanau.pt"), str(PRE_MOVE / "general_feeding.pt"),
                             "--src", str(sources), "--ref", str(references), "--beam", "3",
                             "--json"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    translator = load_translator([PRE_MOVE / "bahdanau.pt", PRE_MOVE / "general_feeding.pt"],
                                 "cpu")
    assert isinstance(translator.search_model, Ensemble)
    assert len(translator.search_model.members) == 2
