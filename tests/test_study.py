"""scripts/compare_attention.py on the toy task: it trains and evaluates each type, writes its
section of the results file with the table, the curves and the heatmaps, and replaces that
section when run again."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def test_the_attention_study_writes_its_section(tmp_path):
    results = tmp_path / "docs" / "results.md"
    results.parent.mkdir()
    results.write_text("# Results\n\nEarlier text stays.\n", encoding="utf-8")
    command = [sys.executable, "scripts/compare_attention.py", "--config", "configs/toy.yaml",
               "--minutes", "0.02", "--types", "general", "bahdanau", "--runs",
               str(tmp_path / "runs"), "--results", str(results), "--set",
               "data.toy_train_size=200", "--set", "training.validate_every=5"]
    for _ in range(2):  # the second run reuses the trained models
        result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
    text = results.read_text(encoding="utf-8")
    assert text.startswith("# Results\n\nEarlier text stays.\n")
    assert text.count("<!-- attention-study -->") == text.count("<!-- /attention-study -->") == 1
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert [row.split("`")[1] for row in rows] == ["general", "bahdanau"]
    for name in ("attention_study_curves.png", "attention_study_general.png",
                 "attention_study_bahdanau.png"):
        assert f"]({name})" in text
        assert (results.parent / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "runs" / "general" / "study.json").is_file()
