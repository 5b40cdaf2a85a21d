#!/usr/bin/env python
"""s2s against JoeyNMT and OpenNMT-py on the same data and model, one after the other.

    python scripts/bench.py                      # s2s and both peers (~25 min on 2 cores)
    python scripts/bench.py --peers-from RUNS/peers/results.json   # reuse a peer run
    python scripts/bench.py --rounds 3           # three rounds, alternating who goes first,
                                                 # with the median of the per-round ratios
    python scripts/bench.py --tables-from RUN.json   # the tables of a saved run, again

Uses the peers' prepared data and install scripts (``../shared/bench/peers``: run
``install_joeynmt.sh``, ``install_opennmt_torch213.sh`` and ``prepare_data.sh`` first). s2s
reads the same raw text with the same 8k joint SentencePiece model (``spm8k.model``).

Measured, each in its own process under ``/usr/bin/time -v`` (peak RSS):

* training of the matched Bahdanau model (``configs/bench_matched.yaml``): real target tokens/s
  over the last 80% of updates, as the peers' parser computes it; s2s and OpenNMT-py train
  ``--updates`` (250), JoeyNMT ``--joey-updates`` (150, its slower pace);
* the loop-free Luong variant (general attention, no input feeding, same sizes), s2s only;
* greedy and beam-5 decoding of test_2016_flickr (1000 sentences) with each toolkit's final
  checkpoint: batches of 64 sentences, at most 100 output tokens, no length penalty; time as
  the toolkit's own timer reports it (model loading excluded), BLEU with sacrebleu; s2s also
  with ``--int8`` (dynamic int8 weights). s2s decodes with its default ``evaluation.workers``
  (on 2 cores two workers, one torch thread each), the peers with their defaults.
  Decoding runs after all trainings, in ``--passes`` (3) passes that each decode with every
  toolkit, in an order rotated from pass to pass; each figure is the pass with the median
  sentences/s (one decoding of 1,000 sentences lasts 3–40 s, shorter than the VM's swings),
  with the highest peak RSS of its passes.

Prints one markdown table with the s2s/peer ratios; ``--json`` writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s2s.cpu.products import cpuinfo  # noqa: E402

PEERS_DIR = ROOT.parent / "shared" / "bench" / "peers"
TEST = "test_2016_flickr"


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


REUSE = False  # --resume: steps whose log records a successful run are not run again


def completed(log: Path) -> bool:
    """Whether the step logged in ``log`` ran to a successful end."""
    timing = log.with_suffix(".time")
    return timing.is_file() and "Exit status: 0" in timing.read_text()


def timed(cmd: list[str], log: Path, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run ``cmd`` under ``/usr/bin/time -v``; stdout+stderr go to ``log``. Returns the last
    stdout line and the peak RSS (MiB)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    timing = log.with_suffix(".time")
    if not (REUSE and completed(log)):
        with open(log, "w", encoding="utf-8") as out:
            code = subprocess.call(["/usr/bin/time", "-v", "-o", str(timing)] + cmd, stdout=out,
                                   stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})
        if code != 0:
            fail(f"{' '.join(cmd[:3])} ... exited with {code}; see {log}")
    rss = next(int(line.split(":")[1]) / 1024 for line in timing.read_text().splitlines()
               if "Maximum resident set size" in line)
    lines = [line for line in log.read_text(encoding="utf-8").splitlines() if line.strip()]
    return {"last_line": lines[-1] if lines else "", "peak_rss_mib": rss}


# ------------------------------------------------------------------------------------ s2s
def s2s_data_overrides(data: Path) -> list[str]:
    return ["data.corpus=files", f"data.train={data}/train.raw", f"data.valid={data}/val.raw",
            f"data.test={data}/{TEST}.raw", f"data.tokenizer.model={data}/spm8k.model"]


def s2s_train(name: str, data: Path, runs: Path, updates: int, extra: list[str]) -> dict:
    out = runs / name
    if not (REUSE and completed(runs / f"{name}.log")):
        shutil.rmtree(out, ignore_errors=True)
    sets = [arg for item in s2s_data_overrides(data) + extra for arg in ("--set", item)]
    run = timed([sys.executable, str(ROOT / "scripts" / "bench_train.py"), "--config",
                 str(ROOT / "configs" / "bench_matched.yaml"), "--steps", str(updates),
                 "--json", "--keep", str(out)] + sets, runs / f"{name}.log")
    result = json.loads(run["last_line"])
    result["peak_rss_mib"] = run["peak_rss_mib"]
    result["checkpoint"] = str(out / "last.pt")
    return result


def s2s_decode(checkpoint: str, data: Path, runs: Path, beam: int, int8: bool = False,
               tag: str = "") -> dict:
    name = f"beam{beam}" + ("_int8" if int8 else "") + tag
    run = timed([sys.executable, str(ROOT / "evaluate.py"), "--checkpoint", checkpoint,
                 "--src", f"{data}/{TEST}.raw.de", "--ref", f"{data}/{TEST}.raw.en",
                 "--beam", str(beam), "--batch-size", "64", "--output",
                 str(runs / f"s2s_{name}.hyp"), "--json"] + (["--int8"] if int8 else []),
                runs / f"s2s_decode_{name}.log")
    scores = json.loads(run["last_line"])
    return {"sent_per_s": scores["sentences_per_second"], "out_tok_s": scores["tokens_per_second"],
            "bleu": scores["bleu"], "peak_rss_mib": run["peak_rss_mib"],
            "workers": scores.get("workers", 1)}


def median_pass(passes: list[dict]) -> dict:
    """One decoding figure from several passes over the same checkpoint: the pass with the
    median sentences/s (the lower middle one for an even count), its peak RSS replaced by the
    highest of all passes; ``passes`` lists every pass's sentences/s."""
    chosen = sorted(passes, key=lambda p: p["sent_per_s"])[(len(passes) - 1) // 2]
    return {**chosen, "peak_rss_mib": max(p["peak_rss_mib"] for p in passes),
            "passes": [p["sent_per_s"] for p in passes]}


# ---------------------------------------------------------------------------------- peers
def prepare_peer_files(data: Path) -> None:
    """Two files the peers' configs read but prepare_data.py does not write: JoeyNMT's dev set
    (the first 100 validation lines) and OpenNMT-py's vocabulary ("piece count" lines)."""
    for lang in ("de", "en"):
        dev = data / f"val100.sp.{lang}"
        if not dev.is_file():
            lines = (data / f"val.sp.{lang}").read_text(encoding="utf-8").splitlines()[:100]
            dev.write_text("\n".join(lines) + "\n", encoding="utf-8")
    onmt_vocab = data / "vocab.joint.onmt"
    if not onmt_vocab.is_file():
        pieces = (data / "vocab.joint.txt").read_text(encoding="utf-8").splitlines()
        onmt_vocab.write_text("".join(f"{piece} 1\n" for piece in pieces), encoding="utf-8")


PEER_PREFIXES = {"JoeyNMT": ("joeynmt", "joey"), "OpenNMT-py": ("opennmt", "onmt")}


def peer_env(runs: Path) -> dict[str, str]:
    return {"RUNS": str(runs / "peers")}


def train_peers(peers: Path, runs: Path, updates: int, joey_updates: int) -> None:
    """Train both peers through their own script (runs under ``runs/peers``)."""
    prepare_peer_files(Path(os.environ.get("DATA", "/tmp/anchors-data")))
    for label, steps in (("JoeyNMT", joey_updates), ("OpenNMT-py", updates)):
        toolkit, prefix = PEER_PREFIXES[label]
        print(f"[peers] training {toolkit} for {steps} updates", flush=True)
        timed(["bash", str(peers / "run_train.sh"), toolkit, f"{prefix}_train_r1", str(steps)],
              runs / "peer_logs" / f"{prefix}_train_r1.log", peer_env(runs))


def decode_peer(peers: Path, runs: Path, label: str, beam: int, tag: str) -> None:
    """One decoding pass of a trained peer through its own script (``run_decode.sh``)."""
    toolkit, prefix = PEER_PREFIXES[label]
    timed(["bash", str(peers / "run_decode.sh"), toolkit, f"{prefix}_train_r1", str(beam), tag],
          runs / "peer_logs" / f"decode_{prefix}_train_r1_beam{beam}{tag}.log", peer_env(runs))


def parse_peers(peers: Path, runs: Path) -> dict:
    """The peers' own parser over their runs' logs (it needs the prep venv's sacrebleu)."""
    python = Path(os.environ.get("VENV_DIR", "/tmp/anchors-venvs")) / "prep" / "bin" / "python"
    timed([str(python), str(peers / "parse_results.py")], runs / "peer_logs" / "parse.log",
          peer_env(runs))
    return json.loads((runs / "peers" / "results.json").read_text())


def peer_figures(results: dict, tags: Optional[list[str]] = None) -> dict[str, dict]:
    """{'JoeyNMT': {...}, 'OpenNMT-py': {...}} from the peers' parser output; a decoding
    figure is the :func:`median_pass` of the runs decoded with the same beam: those named
    ``..._beamN`` + one of ``tags`` (:func:`pass_tags`), or with any tag when None (a results
    file of an earlier run)."""
    figures: dict[str, dict] = {}
    for label, (_, prefix) in PEER_PREFIXES.items():
        train = next(r for r in results["train"] if r["run"] == f"{prefix}_train_r1")
        row = {"train_tok_s": train["tgt_tok_s"], "train_rss": train["peak_rss_mib"],
               "updates": train["updates"], "tok_per_update": train["tgt_tok_per_batch"]}
        for beam in (1, 5):
            name = f"decode_{prefix}_train_r1_beam{beam}"
            passes = [{"sent_per_s": r["sent_per_s"], "out_tok_s": r["out_tok_s"],
                       "bleu": r["bleu"], "peak_rss_mib": r["peak_rss_mib"]}
                      for r in results["decode"]
                      if (r["run"] in [name + tag for tag in tags] if tags is not None
                          else r["run"] == name or r["run"].startswith(f"{name}_p"))]
            if not passes:
                raise KeyError(name)
            row[f"beam{beam}"] = median_pass(passes)
        figures[label] = row
    return figures


# ---------------------------------------------------------------------------------- table
def tokens_per_sentence(decoding: dict) -> float:
    """Mean output length of a decoding run: sentences/s depends on it as much as on speed,
    and barely trained checkpoints of different toolkits differ in it."""
    return decoding["out_tok_s"] / decoding["sent_per_s"]


def table(s2s: dict, luong: Optional[dict], peers: dict[str, dict]) -> str:
    systems = {"s2s": s2s, **peers}
    names = list(systems)
    header = "| | " + " | ".join(names + [f"s2s / {p}" for p in peers]) + " |"
    lines = [header, "|---" * (1 + len(names) + len(peers)) + "|"]

    def s2s_only_row(label: str, value: float, peer_value, fmt: str) -> None:
        """A figure only s2s has, with its ratio to each peer's ``peer_value(peer)``."""
        cells = [fmt.format(value)] + ["—"] * len(peers)
        cells += [f"{value / peer_value(peers[p]):.2f}×" for p in peers]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")

    def row(label: str, get, fmt: str = "{:.0f}", ratio: bool = True) -> None:
        values = [get(systems[n]) for n in names]
        cells = [fmt.format(v) if v is not None else "—" for v in values]
        ratios = [f"{values[0] / get(systems[p]):.2f}×" if ratio and values[0] is not None
                  and get(systems[p]) else "" for p in peers]
        lines.append(f"| {label} | " + " | ".join(cells + ratios) + " |")

    row("training, real target tok/s (Bahdanau)", lambda s: s["train_tok_s"])
    if luong is not None:
        s2s_only_row("training, real target tok/s (Luong general, loop-free)",
                     luong["tgt_tokens_per_s"], lambda peer: peer["train_tok_s"], "{:.0f}")
    row("updates (the first 20% not timed)", lambda s: s["updates"], ratio=False)
    row("real target tokens per update", lambda s: s["tok_per_update"], ratio=False)
    row("training peak RSS, MiB", lambda s: s["train_rss"])
    for beam, label in ((1, "greedy"), (5, "beam 5")):
        row(f"{label}: sentences/s", lambda s, b=beam: s[f"beam{b}"]["sent_per_s"], "{:.1f}")
        row(f"{label}: output tokens/s", lambda s, b=beam: s[f"beam{b}"]["out_tok_s"])
        row(f"{label}: output tokens per sentence", lambda s, b=beam: tokens_per_sentence(
            s[f"beam{b}"]), "{:.1f}", ratio=False)
        row(f"{label}: BLEU", lambda s, b=beam: s[f"beam{b}"]["bleu"], "{:.2f}", ratio=False)
        row(f"{label}: peak RSS, MiB", lambda s, b=beam: s[f"beam{b}"]["peak_rss_mib"])
        if f"beam{beam}_int8" in s2s:
            int8 = s2s[f"beam{beam}_int8"]
            s2s_only_row(f"{label}, s2s --int8: sentences/s (BLEU {int8['bleu']:.2f}, "
                         f"{int8['peak_rss_mib']:.0f} MiB)", int8["sent_per_s"],
                         lambda peer, b=beam: peer[f"beam{b}"]["sent_per_s"], "{:.1f}")
    return "\n".join(lines)


def train_s2s(args: argparse.Namespace, runs: Path) -> tuple[dict, dict, Optional[dict]]:
    """s2s's training figures, its training result (with the checkpoint) and the Luong one."""
    print(f"[s2s] training bench_matched for {args.updates} updates", flush=True)
    trained = s2s_train("s2s_bahdanau", args.data, runs, args.updates, [])
    s2s = {"train_tok_s": trained["tgt_tokens_per_s"], "train_rss": trained["peak_rss_mib"],
           "updates": trained["steps"], "tok_per_update": trained["tgt_tokens_per_update"]}
    luong = None
    if not args.no_luong:
        print("[s2s] training the loop-free Luong variant", flush=True)
        luong = s2s_train("s2s_luong", args.data, runs, args.updates,
                          ["model.attention=general", "model.decoder.input_feeding=false"])
    return s2s, trained, luong


def decode_all(args: argparse.Namespace, runs: Path, checkpoint: str,
               peer_labels: list[str]) -> tuple[dict, dict[str, dict]]:
    """Every toolkit decodes test_2016_flickr greedy and with beam 5, ``--passes`` times: each
    pass runs all of them one after the other, starting one later in the order each pass, so
    the VM's drift over minutes reaches all alike. Returns s2s's :func:`median_pass` figures
    (fp32 and ``_int8``) and the peers' decoding passes, parsed (by :func:`peer_figures`)."""
    systems = ["s2s"] + peer_labels
    s2s_passes: dict[str, list[dict]] = {}
    tags = pass_tags(args.passes)
    for index, tag in enumerate(tags):
        order = systems[index % len(systems):] + systems[:index % len(systems)]
        for beam in (1, 5):
            print(f"[decode] pass {index + 1} of {args.passes}, beam {beam}: "
                  f"{', '.join(order)}", flush=True)
            for system in order:
                if system != "s2s":
                    decode_peer(args.peers_dir, runs, system, beam, tag)
                    continue
                for int8 in (False, True):
                    key = f"beam{beam}" + ("_int8" if int8 else "")
                    s2s_passes.setdefault(key, []).append(
                        s2s_decode(checkpoint, args.data, runs, beam, int8, tag))
    s2s = {key: median_pass(passes) for key, passes in s2s_passes.items()}
    peers = peer_figures(parse_peers(args.peers_dir, runs), tags) if peer_labels else {}
    return s2s, peers


def pass_tags(passes: int) -> list[str]:
    """What each decoding pass's logs and runs are named with: ``_p1`` … (none for one)."""
    return [f"_p{index + 1}" for index in range(passes)] if passes > 1 else [""]


def measure_round(args: argparse.Namespace, runs: Path,
                  peers_first: bool) -> tuple[dict, Optional[dict], dict, dict]:
    """One round: the trainings (the peers' before or after s2s's), then every decoding.
    Returns s2s's figures, the Luong training result, the peers' figures and s2s's training
    result."""
    run_peers = not (args.s2s_only or args.peers_from)
    if run_peers and peers_first:
        train_peers(args.peers_dir, runs, args.updates, args.joey_updates)
    s2s, trained, luong = train_s2s(args, runs)
    if run_peers and not peers_first:
        train_peers(args.peers_dir, runs, args.updates, args.joey_updates)
    decoded, peers = decode_all(args, runs, trained["checkpoint"],
                                list(PEER_PREFIXES) if run_peers else [])
    s2s.update(decoded)
    if args.peers_from:
        peers = peer_figures(json.loads(args.peers_from.read_text()))
    return s2s, luong, peers, trained


def median_table(results: list[tuple[dict, Optional[dict], dict]]) -> str:
    """Each round's s2s / peer ratio of the speed figures, and their median."""
    speeds = [("training tok/s (Bahdanau)", lambda s, _: s["train_tok_s"],
               lambda p: p["train_tok_s"]),
              ("training tok/s (Luong loop-free vs their Bahdanau)",
               lambda _, luong: luong["tgt_tokens_per_s"] if luong else None,
               lambda p: p["train_tok_s"])]
    for beam, label in ((1, "greedy"), (5, "beam 5")):
        speeds += [(f"{label} sentences/s", lambda s, _, b=beam: s[f"beam{b}"]["sent_per_s"],
                    lambda p, b=beam: p[f"beam{b}"]["sent_per_s"]),
                   (f"{label} sentences/s, s2s --int8",
                    lambda s, _, b=beam: s[f"beam{b}_int8"]["sent_per_s"],
                    lambda p, b=beam: p[f"beam{b}"]["sent_per_s"]),
                   (f"{label} output tokens/s",
                    lambda s, _, b=beam: s[f"beam{b}"]["out_tok_s"],
                    lambda p, b=beam: p[f"beam{b}"]["out_tok_s"])]
    rounds = len(results)
    lines = ["| s2s / peer | " + " | ".join(f"round {i + 1}" for i in range(rounds))
             + " | median |", "|---" * (rounds + 2) + "|"]
    for peer in results[0][2]:
        for label, ours, theirs in speeds:
            ratios = [ours(s2s, luong) / theirs(peers[peer]) for s2s, luong, peers in results
                      if ours(s2s, luong) is not None]
            if ratios:
                lines.append(f"| {label}, vs {peer} | "
                             + " | ".join(f"{r:.2f}×" for r in ratios)
                             + f" | **{statistics.median(ratios):.2f}×** |")
    return "\n".join(lines)


def tables_from(saved: dict) -> str:
    """The tables a run printed, again, from what its ``--json`` wrote."""
    rounds = saved["rounds"] if "rounds" in saved else [saved]
    results = [(r["s2s"], r.get("s2s_luong"), r.get("peers", {})) for r in rounds]
    parts = [table(*result) for result in results]
    if len(results) > 1 and results[0][2]:
        parts.append(median_table(results))
    return "\n\n".join(parts)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("/tmp/anchors-data"),
                        help="the peers' prepared data (prepare_data.sh)")
    parser.add_argument("--peers-dir", type=Path, default=PEERS_DIR)
    parser.add_argument("--runs", type=Path, default=Path("/tmp/s2s-bench"),
                        help="where checkpoints, logs and hypotheses go")
    parser.add_argument("--updates", type=int, default=250)
    parser.add_argument("--joey-updates", type=int, default=150)
    parser.add_argument("--peers-from", type=Path,
                        help="a results.json from an earlier peer run instead of running them")
    parser.add_argument("--s2s-only", action="store_true", help="measure s2s alone")
    parser.add_argument("--no-luong", action="store_true", help="skip the loop-free variant")
    parser.add_argument("--json", type=Path, help="write every figure here")
    parser.add_argument("--rounds", type=int, default=1,
                        help="repeat the comparison this many times (in --runs/roundN), "
                             "alternating which side goes first, and print each round's ratios "
                             "and their median")
    parser.add_argument("--passes", type=int, default=3,
                        help="decoding passes per round, every toolkit in each; a decoding "
                             "figure is the pass with the median sentences/s (default 3)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the steps an interrupted run in --runs completed")
    parser.add_argument("--tables-from", type=Path, metavar="JSON",
                        help="print the tables of an earlier run from its --json file, "
                             "measuring nothing")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.passes < 1:
        parser.error("--passes must be at least 1")
    if args.tables_from:
        try:
            saved = json.loads(args.tables_from.read_text(encoding="utf-8"))
        except OSError as error:
            fail(f"{args.tables_from}: cannot read it ({error.strerror})")
        except ValueError as error:
            fail(f"{args.tables_from}: not JSON ({error})")
        try:
            print(tables_from(saved))
        except (KeyError, TypeError, ZeroDivisionError) as error:
            fail(f"{args.tables_from}: not what bench.py --json writes (missing or bad "
                 f"{error})")
        return 0
    global REUSE
    REUSE = args.resume
    if not args.peers_dir.is_dir():
        fail(f"the peers' scripts are not in {args.peers_dir}: bench.py compares against "
             f"JoeyNMT and OpenNMT-py installed and fed by them (docs/performance.md, "
             f"'Reproducing'); pass --peers-dir DIR, or time s2s alone with "
             f"scripts/bench_train.py")
    venvs = Path(os.environ.get("VENV_DIR", "/tmp/anchors-venvs"))
    if not (args.s2s_only or args.peers_from):
        for peer, script in (("joeynmt", "install_joeynmt.sh"),
                             ("opennmt-t213", "install_opennmt_torch213.sh")):
            if not (venvs / peer / "bin" / "python").is_file():
                fail(f"{peer} is not installed in {venvs / peer}; run "
                     f"{args.peers_dir / script} first (or pass --s2s-only)")
    for name in ["spm8k.model"] + [f"{s}.raw.{lang}" for s in ("train", "val", TEST)
                                   for lang in ("de", "en")]:
        if not (args.data / name).is_file():
            fail(f"{args.data / name} is missing; run {args.peers_dir}/prepare_data.sh first")
    if shutil.which("/usr/bin/time") is None:
        fail("/usr/bin/time is needed for peak RSS (apt install time)")

    cpu = cpuinfo("model name")
    results = []
    for index in range(args.rounds):
        runs = args.runs if args.rounds == 1 else args.runs / f"round{index + 1}"
        if args.rounds > 1:
            print(f"== round {index + 1} of {args.rounds}", flush=True)
        # odd rounds train the peers first, so a drift of the machine's speed over the
        # ≈ 20 minutes of a round does not always favour the same side
        s2s, luong, peers, trained = measure_round(args, runs, peers_first=index % 2 == 1)
        results.append((s2s, luong, peers))
        print()
        print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs "
              f"({cpu or 'model unknown'}); s2s torch threads "
              f"{trained['threads']}; padding efficiency (target) "
              f"{trained['tgt_padding_efficiency']:.1%}")
        print(table(s2s, luong, peers))
        print(flush=True)
    if args.rounds > 1 and results[0][2]:
        print(median_table(results))
    if args.json:
        rounds = [{"s2s": s2s, "s2s_luong": luong, "peers": peers,
                   "cpu": cpu} for s2s, luong, peers in results]
        args.json.write_text(json.dumps(rounds[0] if args.rounds == 1 else {"rounds": rounds},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
