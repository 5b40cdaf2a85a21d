"""scripts/bench.py's tables and ratios, from made-up figures (nothing is measured here)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def decoding(sent_per_s: float, tokens_per_sentence: float) -> dict:
    return {"sent_per_s": sent_per_s, "out_tok_s": sent_per_s * tokens_per_sentence,
            "bleu": 1.0, "peak_rss_mib": 400.0}


def system(train: float, greedy: float, beam: float, length: float, int8: bool = False) -> dict:
    figures = {"train_tok_s": train, "train_rss": 900.0, "updates": 250, "tok_per_update": 965,
               "beam1": decoding(greedy, length), "beam5": decoding(beam, length)}
    if int8:
        figures["beam1_int8"] = decoding(2 * greedy, length)
        figures["beam5_int8"] = decoding(2 * beam, length)
    return figures


def a_round(s2s_train: float, peer_train: float) -> dict:
    return {"s2s": system(s2s_train, 300.0, 100.0, 12.0, int8=True),
            "s2s_luong": {"tgt_tokens_per_s": 2 * s2s_train},
            "peers": {"Peer": system(peer_train, 200.0, 80.0, 10.0)}}


def rows(text: str) -> dict[str, list[str]]:
    """Markdown table rows by their first cell."""
    table = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) > 1:
            table[cells[0]] = cells[1:]
    return table


def test_the_table_gives_ratios_and_output_lengths(bench):
    saved = a_round(2000.0, 1000.0)
    table = rows(bench.table(saved["s2s"], saved["s2s_luong"], saved["peers"]))
    assert table["training, real target tok/s (Bahdanau)"] == ["2000", "1000", "2.00×"]
    assert table["greedy: sentences/s"] == ["300.0", "200.0", "1.50×"]
    assert table["greedy: output tokens/s"] == ["3600", "2000", "1.80×"]
    assert table["beam 5: output tokens per sentence"][:2] == ["12.0", "10.0"]
    assert table["training, real target tok/s (Luong general, loop-free)"][-1] == "4.00×"


def test_the_median_table_takes_each_rounds_ratio_and_their_median(bench):
    saved = {"rounds": [a_round(1500.0, 1000.0), a_round(2000.0, 1000.0),
                        a_round(1600.0, 1000.0)]}
    medians = rows(bench.tables_from(saved).split("\n\n")[-1])
    assert medians["training tok/s (Bahdanau), vs Peer"] == ["1.50×", "2.00×", "1.60×",
                                                            "**1.60×**"]
    assert medians["beam 5 output tokens/s, vs Peer"][-1] == "**1.50×**"
    assert medians["greedy sentences/s, s2s --int8, vs Peer"][-1] == "**3.00×**"


def test_tables_from_a_saved_run_and_a_clear_error_for_a_bad_file(tmp_path):
    good, bad = tmp_path / "run.json", tmp_path / "bad.json"
    good.write_text(json.dumps(a_round(2000.0, 1000.0)))
    bad.write_text(json.dumps({"rounds": [{"s2s": {}}]}))
    shown = subprocess.run([sys.executable, str(SCRIPT), "--tables-from", str(good)],
                           capture_output=True, text=True)
    assert shown.returncode == 0 and "| greedy: sentences/s | 300.0 | 200.0 | 1.50× |" in shown.stdout
    failed = subprocess.run([sys.executable, str(SCRIPT), "--tables-from", str(bad)],
                            capture_output=True, text=True)
    assert failed.returncode == 2
    assert failed.stderr.startswith(f"error: {bad}: not what bench.py --json writes")
    assert len(failed.stderr.strip().splitlines()) == 1
