"""The entry points as a user runs them: errors are one ``error:`` line and exit status 2."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from s2s.train.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
TOY = "configs/toy.yaml"


def run(script: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    """Exit status 2, and stderr is exactly one ``error: ...`` line containing each needle."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, (result.returncode, result.stderr)
    lines = result.stderr.splitlines()
    assert len(lines) == 1, f"stderr is not one line: {result.stderr!r}"
    line = lines[0]
    assert line.startswith("error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


# ------------------------------------------------------------------------------ train.py
def test_train_unknown_key_override(tmp_path):
    result = run("train.py", "--config", TOY, "--set", "model.atention=dot",
                 "--set", f"training.output_dir={tmp_path / 'run'}")
    line = assert_user_error(result, "model.atention", "did you mean 'attention'?")
    assert line.startswith("error: --set model.atention=dot: ") and TOY not in line
    assert not (tmp_path / "run").exists()


def test_train_bad_value_override(tmp_path):
    result = run("train.py", "--config", TOY, "--set", "model.decoder.dropout=1.5",
                 "--set", f"training.output_dir={tmp_path / 'run'}")
    assert_user_error(result, "model.decoder.dropout", "1.5")


def test_train_override_with_invalid_yaml(tmp_path):
    result = run("train.py", "--config", TOY, "--set", "training.betas=[0.9, 0.99",
                 "--set", f"training.output_dir={tmp_path / 'run'}")
    assert_user_error(result, "training.betas", "not valid YAML")


def test_train_missing_config_file(tmp_path):
    missing = tmp_path / "missing.yaml"
    result = run("train.py", "--config", missing)
    assert_user_error(result, str(missing), "does not exist")


def test_train_invalid_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  attention: [dot\n", encoding="utf-8")
    result = run("train.py", "--config", path)
    assert_user_error(result, str(path), "invalid YAML at line")


def test_train_missing_data_file(tmp_path):
    config = {
        "name": "missing-data",
        "data": {"corpus": "files", "src_lang": "de", "tgt_lang": "en",
                 "train": str(tmp_path / "nowhere" / "train"),
                 "valid": str(tmp_path / "nowhere" / "valid")},
        "training": {"output_dir": str(tmp_path / "run"), "device": "cpu"},
    }
    path = tmp_path / "files.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = run("train.py", "--config", path)
    assert_user_error(result, str(tmp_path / "nowhere" / "train.de"), "does not exist")


def test_train_refuses_existing_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"an earlier run")
    result = run("train.py", "--config", TOY, "--set", f"training.output_dir={out}")
    assert_user_error(result, str(out), "last.pt", "--resume", "--overwrite")
    assert (out / "last.pt").read_bytes() == b"an earlier run"  # untouched


def test_train_resume_missing_checkpoint(tmp_path):
    result = run("train.py", "--config", TOY, "--set", f"training.output_dir={tmp_path / 'r'}",
                 "--resume", tmp_path / "nope.pt")
    assert_user_error(result, str(tmp_path / "nope.pt"))


# --------------------------------------------------------------------------- evaluate.py
def test_evaluate_missing_checkpoint(tmp_path):
    result = run("evaluate.py", "--checkpoint", tmp_path / "none.pt")
    assert_user_error(result, str(tmp_path / "none.pt"), "does not exist")


@pytest.mark.parametrize("content", [
    random.Random(0).randbytes(4096),
    b"just some text\nthat is not a checkpoint\n",
    b"",
], ids=["random-bytes", "text", "empty"])
def test_evaluate_non_checkpoint_file(tmp_path, content):
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    result = run("evaluate.py", "--checkpoint", path)
    assert_user_error(result, str(path))


def test_evaluate_plain_pickle_file_is_one_line(tmp_path):
    import pickle

    path = tmp_path / "plain.pkl"
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=4))
    assert_user_error(run("evaluate.py", "--checkpoint", path), str(path))


def test_evaluate_foreign_torch_file(tmp_path):
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    result = run("evaluate.py", "--checkpoint", path)
    assert_user_error(result, str(path), "not an s2s checkpoint")


class RunsCode:
    """Unpickling this runs a shell command."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_evaluate_refuses_pickle_that_runs_code(tmp_path):
    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pt"
    torch.save({"format": "s2s-checkpoint", "format_version": 1, "payload": RunsCode(marker)},
               path)
    assert not marker.exists()
    result = run("evaluate.py", "--checkpoint", path)
    assert_user_error(result, str(path), "refused to load")
    assert not marker.exists(), "loading the checkpoint ran code"


def test_refusal_names_the_blocked_global_not_torch_boilerplate(tmp_path):
    from s2s.train.checkpoint import load_checkpoint
    from s2s.errors import CheckpointError

    path = tmp_path / "evil.pt"
    torch.save(RunsCode(tmp_path / "PWNED"), path)
    with pytest.raises(CheckpointError, match="refused to load") as info:
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    assert "will likely succeed" not in str(info.value)
    assert "system" in str(info.value)


def test_evaluate_truncated_checkpoint(tmp_path):
    path = tmp_path / "cut.pt"
    save_checkpoint({"x": 1}, path)
    blob = path.read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    result = run("evaluate.py", "--checkpoint", path)
    assert_user_error(result, str(path), "not a readable checkpoint")


def test_evaluate_checkpoint_without_model(tmp_path):
    path = tmp_path / "bare.pt"
    save_checkpoint({"x": 1}, path)
    result = run("evaluate.py", "--checkpoint", path)
    assert_user_error(result, str(path), "lacks the entry 'config'")


def test_evaluate_needs_checkpoint_or_hyp():
    assert_user_error(run("evaluate.py"), "--checkpoint", "--hyp")


def test_evaluate_hyp_without_ref(tmp_path):
    hyp = tmp_path / "h.txt"
    hyp.write_text("a\n", encoding="utf-8")
    assert_user_error(run("evaluate.py", "--hyp", hyp), "--ref")


def test_evaluate_hyp_identical_to_ref(tmp_path):
    lines = "the cat sat on the mat\na dog runs in the park\nthree men are talking\n"
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text(lines, encoding="utf-8")
    ref.write_text(lines, encoding="utf-8")
    result = run("evaluate.py", "--hyp", hyp, "--ref", ref)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = result.stdout.splitlines()
    bleu = [line for line in out if line.startswith("BLEU ") and "lc.tok" not in line]
    lowercased = [line for line in out if line.startswith("BLEU lc.tok")]
    chrf = [line for line in out if line.startswith("chrF")]
    assert len(bleu) == len(lowercased) == len(chrf) == 1, result.stdout
    assert bleu[0].split()[1] == "100.00" and lowercased[0].split()[2] == "100.00"
    assert chrf[0].split()[1] == "100.00"
    assert any("exact match" in line and "100.00%" in line and "3 sentences" in line
               for line in out)


def test_evaluate_hyp_json(tmp_path):
    import json

    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("the cat sat on a mat\nhello there\n", encoding="utf-8")
    ref.write_text("the cat sat on the mat\nhello there\n", encoding="utf-8")
    result = run("evaluate.py", "--hyp", hyp, "--ref", ref, "--json")
    assert result.returncode == 0, result.stderr
    scores = json.loads(result.stdout)
    assert 0 < scores["bleu"] < 100 and 0 < scores["bleu_lc_tok"] < 100
    assert 0 < scores["chrf"] < 100
    assert scores["exact_match"] == 50.0
    assert scores["sentences"] == 2
    signatures = scores["signatures"]
    assert "tok:13a" in signatures["bleu"] and "tok:none" in signatures["bleu_lc_tok"]
    assert "moses-tok.en" in signatures["bleu_lc_tok"] and "chrF" not in signatures["chrf"]


def test_evaluate_prints_a_real_sacrebleu_signature(tmp_path):
    hyp = tmp_path / "hyp.txt"
    hyp.write_text("a b c d\n", encoding="utf-8")
    result = run("evaluate.py", "--hyp", hyp, "--ref", hyp)
    assert result.returncode == 0
    assert "|True" not in result.stdout
    assert "tok:13a" in result.stdout


def test_evaluate_hyp_ref_length_mismatch(tmp_path):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_text("a\nb\n", encoding="utf-8")
    ref.write_text("a\n", encoding="utf-8")
    assert_user_error(run("evaluate.py", "--hyp", hyp, "--ref", ref), "2 hypotheses",
                      "1 references")


def test_evaluate_hyp_invalid_utf8(tmp_path):
    hyp, ref = tmp_path / "hyp.txt", tmp_path / "ref.txt"
    hyp.write_bytes(b"ok\n\xff\n")
    ref.write_text("ok\nok\n", encoding="utf-8")
    assert_user_error(run("evaluate.py", "--hyp", hyp, "--ref", ref), str(hyp), "line 2")
