"""scripts/bench.py's tables and ratios, from made-up figures (nothing is measured here)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from types import SimpleNamespace

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


def test_a_decoding_figure_is_the_median_pass_with_the_highest_peak(bench):
    passes = [decoding(300.0, 10.0), decoding(250.0, 10.0), decoding(400.0, 10.0)]
    passes[2]["peak_rss_mib"] = 450.0
    figure = bench.median_pass(passes)
    assert figure["sent_per_s"] == 300.0 and figure["out_tok_s"] == 3000.0
    assert figure["peak_rss_mib"] == 450.0 and figure["passes"] == [300.0, 250.0, 400.0]
    assert bench.median_pass(passes[:2])["sent_per_s"] == 250.0  # even count: the lower one


def peer_results(sent_per_s: dict[str, list[float]]) -> dict:
    """What the peers' parse_results.py writes, for passes of made-up speeds."""
    train = [{"run": f"{p}_train_r1", "tgt_tok_s": 1000.0, "peak_rss_mib": 900.0,
              "updates": 250, "tgt_tok_per_batch": 970.0} for p in ("joey", "onmt")]
    decode = [{"run": f"decode_{name}_p{k + 1}" if len(speeds) > 1 else f"decode_{name}",
               "sent_per_s": speed, "out_tok_s": 10 * speed, "bleu": 4.0, "peak_rss_mib": 500.0}
              for name, speeds in sent_per_s.items() for k, speed in enumerate(speeds)]
    return {"train": train, "decode": decode}


def test_peer_figures_take_the_median_of_their_passes_or_the_single_run(bench):
    passes = {f"{p}_train_r1_beam{b}": [60.0, 90.0, 70.0] for p in ("joey", "onmt")
              for b in (1, 5)}
    figures = bench.peer_figures(peer_results(passes))
    assert figures["OpenNMT-py"]["beam5"]["sent_per_s"] == 70.0
    assert figures["JoeyNMT"]["beam1"]["passes"] == [60.0, 90.0, 70.0]
    single = bench.peer_figures(peer_results({name: [80.0] for name in passes}))
    assert single["JoeyNMT"]["beam1"]["sent_per_s"] == 80.0
    # an earlier run's fourth pass in the same folder is not this run's
    stale = peer_results({name: [60.0, 90.0, 70.0, 10.0] for name in passes})
    assert bench.peer_figures(stale, bench.pass_tags(3))["JoeyNMT"]["beam1"]["passes"] == [
        60.0, 90.0, 70.0]


def test_decoding_passes_rotate_the_order_and_give_medians(bench, monkeypatch, tmp_path):
    calls = []
    drift = {"_p1": 0.0, "_p2": 50.0, "_p3": -20.0}

    def s2s_decode(checkpoint, data, runs, beam, int8=False, tag=""):
        calls.append(("s2s", beam, int8, tag))
        return decoding(300.0 / beam * (2 if int8 else 1) + drift[tag], 10.0)

    def decode_peer(peers, runs, label, beam, tag):
        calls.append((label, beam, tag))

    monkeypatch.setattr(bench, "s2s_decode", s2s_decode)
    monkeypatch.setattr(bench, "decode_peer", decode_peer)
    monkeypatch.setattr(bench, "parse_peers", lambda peers, runs: "parsed")
    monkeypatch.setattr(bench, "peer_figures", lambda results, tags: {"parsed": results})
    args = SimpleNamespace(passes=3, peers_dir=tmp_path, data=tmp_path)
    s2s, peers = bench.decode_all(args, tmp_path, "last.pt", ["JoeyNMT", "OpenNMT-py"])
    firsts = [call[0] for i, call in enumerate(calls)
              if i == 0 or calls[i - 1][1] != call[1] or calls[i - 1][-1] != call[-1]]
    assert firsts == ["s2s", "s2s", "JoeyNMT", "JoeyNMT", "OpenNMT-py", "OpenNMT-py"]
    assert {call[-1] for call in calls} == {"_p1", "_p2", "_p3"}
    assert s2s["beam1"]["passes"] == [300.0, 350.0, 280.0]
    assert s2s["beam1"]["sent_per_s"] == 300.0 and s2s["beam1_int8"]["sent_per_s"] == 600.0
    assert s2s["beam5"]["sent_per_s"] == 60.0
    assert peers == {"parsed": "parsed"}


def test_without_the_peers_bench_says_what_to_run_first(tmp_path):
    result = subprocess.run([sys.executable, str(SCRIPT), "--peers-dir",
                             str(tmp_path / "none")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "the peers' scripts are not in" in line and "scripts/bench_train.py" in line
    (tmp_path / "peers").mkdir()
    result = subprocess.run([sys.executable, str(SCRIPT), "--peers-dir",
                             str(tmp_path / "peers")], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "VENV_DIR": str(tmp_path / "v")})
    [line] = result.stderr.strip().splitlines()
    assert "joeynmt is not installed" in line and "install_joeynmt.sh first" in line
