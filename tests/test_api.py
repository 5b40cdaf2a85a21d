"""The Python API (`from s2s import Translator`) and the search flags of the commands."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import s2s
from s2s.train.trainer import Trainer
from tests.test_cli import assert_user_error
from tests.test_training import small_config

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("api")
    Trainer(small_config(out, "training.max_steps=20")).train()
    return out / "best.pt"


def run(script: str, *args, stdin: str = "") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=ROOT,
                          input=stdin, capture_output=True, text=True, timeout=300)


def test_import_s2s_stays_light_until_the_api_is_used():
    code = "import sys, s2s; print('torch' in sys.modules, 's2s.inference' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True)
    assert result.stdout.split() == ["False", "False"]


def test_translator_load_translate_and_score(checkpoint):
    translator = s2s.Translator.load(checkpoint, device="cpu")
    outputs = translator.translate(["a b c", "", "d e"], beam_size=3)
    assert len(outputs) == 3 and outputs[1] == ""
    scores = translator.score(["a b c", "d e"], [outputs[0], "x y z w"])
    assert all(isinstance(s, s2s.SentenceScore) for s in scores)
    assert scores[0].tokens == len(translator.tokenizers.tgt.encode(outputs[0])) + 1  # + EOS
    assert scores[0].log_prob < 0
    assert scores[0].perplexity == pytest.approx(math.exp(-scores[0].log_prob / scores[0].tokens))


def test_score_is_the_sum_of_the_model_s_step_log_probabilities(checkpoint):
    translator = s2s.Translator.load(checkpoint, device="cpu", backend="plain")
    source, target = "a b c d", "d c b a"
    [score] = translator.score([source], [target])
    model, special = translator.model, translator.model.special
    src = torch.tensor([translator.tokenizers.src.encode(source) + [special.eos]])
    previous, total = torch.tensor([special.bos]), 0.0
    with torch.no_grad():
        memory, state = model.encode(src, torch.tensor([src.shape[1]]))
        for token in translator.tokenizers.tgt.encode(target) + [special.eos]:
            log_probs, state, _ = model.step(previous, state, memory)
            total += float(log_probs[0, token])
            previous = torch.tensor([token])
    assert score.log_prob == pytest.approx(total, abs=1e-4)


def test_with_search_overrides_settings_and_checks_them(checkpoint):
    translator = s2s.Translator.load(checkpoint, device="cpu")
    short = translator.with_search(max_output_length=2)
    assert all(len(translator.tokenizers.tgt.encode(t)) <= 2
               for t in short.translate(["a b c d e f"]))
    assert translator.config.evaluation.max_output_length != 2  # the original is unchanged
    with pytest.raises(s2s.inference.ConfigError):
        translator.with_search(length_penalty=-1.0)


def test_translate_flags_override_the_checkpoint(checkpoint):
    result = run("scripts/translate.py", "--checkpoint", checkpoint, "--max-length", "1",
                 stdin="a b c d e\n")
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.split()) <= 1
    assert_user_error(run("scripts/translate.py", "--checkpoint", checkpoint, "--alpha", "-1",
                          stdin="a\n"), "--alpha", "expected a finite value")


def test_nbest_larger_than_beam_is_an_error(checkpoint):
    assert_user_error(run("scripts/translate.py", "--checkpoint", checkpoint, "--beam", "2",
                          "--nbest", "3", stdin="a\n"), "--nbest 3 is larger than --beam 2")


def test_translate_score_prints_log_probability_and_perplexity(checkpoint, tmp_path):
    targets = tmp_path / "hyps.txt"
    targets.write_text("c b a\nx\n", encoding="utf-8")
    result = run("scripts/translate.py", "--checkpoint", checkpoint, "--score", targets,
                 stdin="a b c\nx\n")
    assert result.returncode == 0, result.stderr
    translator = s2s.Translator.load(checkpoint, device="cpu")
    expected = translator.score(["a b c", "x"], ["c b a", "x"])
    for line, score in zip(result.stdout.splitlines(), expected):
        log_prob, perplexity = map(float, line.split("\t"))
        assert log_prob == pytest.approx(score.log_prob, abs=1e-3)
        assert perplexity == pytest.approx(score.perplexity, rel=1e-3)
    assert_user_error(run("scripts/translate.py", "--checkpoint", checkpoint, "--score",
                          targets, stdin="a\n"), "1 input lines but", "has 2")


def test_evaluate_refuses_options_it_would_ignore_and_names_what_it_scored(checkpoint, tmp_path):
    hyp, ref = tmp_path / "h.txt", tmp_path / "r.txt"
    hyp.write_text("a b\n", encoding="utf-8")
    ref.write_text("a b\n", encoding="utf-8")
    assert_user_error(run("evaluate.py", "--hyp", hyp, "--ref", ref, "--checkpoint", checkpoint),
                      "--checkpoint would be ignored")
    result = run("evaluate.py", "--hyp", hyp, "--ref", ref)
    assert result.returncode == 0 and f"scored       {hyp} against {ref}" in result.stdout
    result = run("evaluate.py", "--checkpoint", checkpoint, "--split", "test", "--beam", "1")
    assert result.returncode == 0, result.stderr
    assert "scored       the test split" in result.stdout


def test_the_vocabulary_is_written_beside_the_model(checkpoint):
    vocab = checkpoint.parent / "tokenizer" / "spm_joint.vocab"
    lines = vocab.read_text(encoding="utf-8").splitlines()
    translator = s2s.Translator.load(checkpoint, device="cpu")
    assert len(lines) == len(translator.tokenizers.src)
    pieces = [line.split("\t")[0] for line in lines]
    assert pieces[1:4] == ["<unk>", "<s>", "</s>"]  # s2s's ids: pad, unk, bos, eos
    assert translator.tokenizers.src.id_to_piece([7]) == [pieces[7]]


def test_a_licence_file_matches_the_project_metadata():
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License")
    assert 'license = { text = "MIT" }' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")


@pytest.mark.parametrize("fp16", [False, True], ids=["fp32", "fp16"])
def test_export_keeps_what_translating_needs(checkpoint, tmp_path, fp16):
    exported = tmp_path / "model.pt"
    result = subprocess.run([sys.executable, "-m", "s2s", "export", str(checkpoint),
                             str(exported), *(["--fp16"] if fp16 else [])], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    state = torch.load(exported, weights_only=True)
    assert {"optimizer", "scheduler", "sampler", "rng", "trainer"}.isdisjoint(state)
    assert exported.stat().st_size < checkpoint.stat().st_size
    weight_bytes = sum(t.numel() * t.element_size() for t in state["model"].values())
    full = torch.load(checkpoint, weights_only=True)["model"]
    assert weight_bytes == sum(t.numel() * t.element_size() for t in full.values()) // (
        2 if fp16 else 1)
    original = s2s.Translator.load(checkpoint, device="cpu")
    light = s2s.Translator.load(exported, device="cpu")
    sources = ["a b c", "d e f g", "h"]
    if fp16:  # the same weights to fp16 precision
        for a, b in zip(original.model.parameters(), light.model.parameters()):
            torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-3)
    else:
        assert light.translate(sources, beam_size=3) == original.translate(sources, beam_size=3)


def test_python_m_s2s_names_its_commands_and_plots_curves(checkpoint, tmp_path):
    result = subprocess.run([sys.executable, "-m", "s2s"], cwd=ROOT, capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == ("error: expected a command: train, evaluate, translate, "
                                     "average, export, plot")
    pytest.importorskip("matplotlib")
    png = tmp_path / "curves.png"
    result = subprocess.run([sys.executable, "-m", "s2s", "plot", "curves",
                             str(checkpoint.parent), "--output", str(png)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert png.stat().st_size > 1000


def test_int8_without_quantize_dynamic_is_one_line(monkeypatch):
    from s2s.cpu import int8
    from s2s.errors import ConfigError

    monkeypatch.delattr(torch.ao.quantization, "quantize_dynamic")
    with pytest.raises(ConfigError, match=r"--int8 needs torch.ao.quantization.quantize_dynamic"):
        int8.quantize_int8(torch.nn.Linear(2, 2))


def test_evaluate_decodes_long_sets_in_pieces_with_the_same_result(checkpoint, monkeypatch):
    from s2s import cli

    translator = s2s.Translator.load(checkpoint, device="cpu")
    sources = ["a b c", "d e", "f g h i", "", "b a"] * 3
    whole = cli._translate_in_pieces(translator, sources, 2, None, 1)
    monkeypatch.setattr(cli, "PIECE", 4)
    pieces = cli._translate_in_pieces(translator, sources, 2, None, 1)
    assert [r[0][0] for r in pieces] == [r[0][0] for r in whole]
    assert len(pieces) == len(sources)


def test_curves_of_runs_without_wall_times_have_only_the_update_panels(tmp_path):
    pytest.importorskip("matplotlib")
    import json

    from s2s.plotting import plot_curves

    run_dir = tmp_path / "old_run"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "bleu": s / 10, "val_loss": 5 - s / 100}) + "\n"
        for s in (100, 200, 300)), encoding="utf-8")
    png = plot_curves([run_dir], tmp_path / "c.png")
    from matplotlib.image import imread
    height, width = imread(str(png)).shape[:2]
    assert width < height  # one column of panels, not two


def test_evaluate_src_and_ref_score_the_translations_of_a_file(checkpoint, tmp_path):
    import json

    sources, references = tmp_path / "in.txt", tmp_path / "ref.txt"
    sources.write_text("a b c\nd e\n", encoding="utf-8")
    references.write_text("c b a\ne d\n", encoding="utf-8")
    hyps = tmp_path / "hyps.txt"
    result = run("evaluate.py", "--checkpoint", checkpoint, "--src", sources, "--ref",
                 references, "--beam", "2", "--json", "--output", hyps)
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout.splitlines()[-1])
    assert scores["sentences"] == 2 and scores["scored"] == f"{sources} against {references}"
    translator = s2s.Translator.load(checkpoint, device="cpu")
    expected = translator.translate(["a b c", "d e"], beam_size=2)
    assert hyps.read_text(encoding="utf-8").splitlines() == expected
    assert_user_error(run("evaluate.py", "--checkpoint", checkpoint, "--src", sources),
                      "--src needs --ref")


def test_invalid_utf8_on_translate_s_standard_input_names_the_line(checkpoint):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "translate.py"),
                             "--checkpoint", str(checkpoint)], cwd=ROOT,
                            input=b"a b\n\xff\xfe c\n", capture_output=True, timeout=300)
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert result.stderr.decode().strip() == "error: standard input, line 2: not valid UTF-8"


def test_int8_on_cuda_is_refused_before_the_device_is_looked_for():
    from s2s.errors import ConfigError
    from s2s.inference import decoding_device

    with pytest.raises(ConfigError, match="^int8 decoding runs on the CPU only; add --device cpu$"):
        decoding_device("cuda", int8=True)  # with or without a GPU here
    assert decoding_device("auto", int8=True).type == "cpu"
