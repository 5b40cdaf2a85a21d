#!/usr/bin/env python
"""The attention study: one model per attention type, everything else equal, the same
wall-clock budget for each.

    python scripts/compare_attention.py --config configs/bahdanau.yaml --minutes 20 \
        [--types dot general ...] [--runs runs/study] [--results docs/results.md] [--set K=V]

For each type, ``train.py`` with ``model.attention=TYPE`` and ``training.max_minutes=N`` into
``RUNS/TYPE``, then ``evaluate.py`` on the test set with its ``best.pt``, greedy and beam 5
(a type whose ``RUNS/TYPE/study.json`` exists is not run again). Then the study section of
RESULTS (between ``<!-- attention-study -->`` and ``<!-- /attention-study -->``, appended where
there is none) is written: a table (lowercased tokenized BLEU, sacreBLEU, chrF, validation
perplexity, parameters, training tokens/s, time), a PNG of validation BLEU and loss against
updates and wall time for all types, and the attention heatmap of one test sentence per type,
the PNGs next to RESULTS.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from s2s.cli import non_negative_int, reports_errors  # noqa: E402
from s2s.errors import S2SError  # noqa: E402

TYPES = ["dot", "scaled_dot", "general", "bahdanau", "location", "multihead"]
START, END = "<!-- attention-study -->", "<!-- /attention-study -->"


def run(command: list[str], log: Path) -> str:
    """Run ``command`` from the repository root, its output into ``log``; its stdout."""
    log.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([sys.executable, *command], cwd=ROOT, capture_output=True, text=True)
    log.write_text(result.stdout + result.stderr, encoding="utf-8")
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise S2SError(f"{command[0]} failed ({last}); see {log}")
    return result.stdout


def study_one(name: str, args: argparse.Namespace) -> dict:
    """Train and evaluate the model with attention ``name``; its figures."""
    out = args.runs / name
    summary = out / "study.json"
    if summary.is_file():
        return json.loads(summary.read_text(encoding="utf-8"))
    sets = [*args.overrides, f"model.attention={name}", f"training.max_minutes={args.minutes}",
            f"training.output_dir={out}", "training.progress_bar=false"]
    run(["train.py", "--config", str(args.config), "--overwrite",
         *[arg for item in sets for arg in ("--set", item)]], out / "study_train.log")
    figures = {"type": name}
    for beam in (1, 5):
        scores = json.loads(run(["evaluate.py", "--checkpoint", str(out / "best.pt"), "--split",
                                 "test", "--beam", str(beam), "--json"],
                                out / f"study_eval_beam{beam}.log").splitlines()[-1])
        figures[f"beam{beam}"] = {key: scores[key] for key in ("bleu", "bleu_lc_tok", "chrf")}
    figures.update(training_figures(out))
    summary.write_text(json.dumps(figures, indent=1) + "\n", encoding="utf-8")
    return figures


def training_figures(out: Path) -> dict:
    """Parameters, training speed and time from the run's log and checkpoints."""
    from s2s.train.checkpoint import load_checkpoint

    log = (out / "train.log").read_text(encoding="utf-8")
    parameters = re.findall(r"([\d,]+) parameters", log)
    speed = re.findall(r"([\d.]+) target tokens/s overall", log)
    best, last = load_checkpoint(out / "best.pt"), load_checkpoint(out / "last.pt")
    return {"parameters": int(parameters[-1].replace(",", "")) if parameters else None,
            "tokens_per_second": float(speed[-1]) if speed else None,
            "minutes": last["trainer"].get("elapsed", 0.0) / 60.0, "steps": last["step"],
            "best_step": best["step"], "valid_ppl": best["scores"].get("ppl")}


def table(results: list[dict]) -> str:
    lines = ["| attention | BLEU lc.tok greedy / beam 5 | sacreBLEU greedy / beam 5 | chrF beam 5 "
             "| valid ppl | parameters | training tok/s | minutes (updates) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        greedy, beam = r["beam1"], r["beam5"]
        lines.append(f"| `{r['type']}` | {greedy['bleu_lc_tok']:.2f} / {beam['bleu_lc_tok']:.2f} "
                     f"| {greedy['bleu']:.2f} / {beam['bleu']:.2f} | {beam['chrf']:.2f} "
                     f"| {r['valid_ppl']:.2f} | {r['parameters']:,} "
                     f"| {r['tokens_per_second']:,.0f} | {r['minutes']:.1f} ({r['steps']:,}) |")
    return "\n".join(lines)


def write_section(results: list[dict], args: argparse.Namespace) -> None:
    from s2s.data.splits import read_split
    from s2s.inference import load_translator
    from s2s.plotting import plot_curves, plot_translation

    figures = args.results.parent
    curves = plot_curves([args.runs / r["type"] for r in results],
                         figures / "attention_study_curves.png", [r["type"] for r in results])
    heatmaps = []
    for r in results:
        translator = load_translator(args.runs / r["type"] / "best.pt", "cpu")
        sentence = read_split(translator.config.data, "test").src[args.sentence]
        path = figures / f"attention_study_{r['type']}.png"
        plot_translation(translator, sentence, path)
        heatmaps.append(f"![{r['type']}]({path.name})")
    command = (f"python scripts/compare_attention.py --config {args.config} --minutes "
               f"{args.minutes:g}" + "".join(f" --set {item}" for item in args.overrides))
    section = "\n".join([
        START, "## The attention study", "",
        f"One model per attention type from `{args.config}`, everything else equal, "
        f"{args.minutes:g} minutes of training each (validations included); test set, best "
        f"checkpoint by validation BLEU. `{command}`", "", table(results), "",
        f"![validation BLEU and loss against updates and wall time]({curves.name})", "",
        f"Test sentence {args.sentence}, greedy, each type:", "", *heatmaps, END])
    text = args.results.read_text(encoding="utf-8") if args.results.is_file() else ""
    if START in text and END in text:
        text = text[:text.index(START)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section + "\n"
    args.results.write_text(text, encoding="utf-8")


@reports_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, required=True)
    parser.add_argument("--minutes", type=float, required=True,
                        help="training budget of each model, wall-clock minutes")
    parser.add_argument("--types", nargs="+", choices=TYPES, default=TYPES)
    parser.add_argument("--runs", type=Path, default=Path("runs/attention_study"))
    parser.add_argument("--results", type=Path, default=ROOT / "docs" / "results.md")
    parser.add_argument("--sentence", type=non_negative_int, default=0,
                        help="which test sentence to draw, counting from 0")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a config override for every model")
    args = parser.parse_args(argv)
    if args.minutes <= 0:
        parser.error("--minutes must be positive")
    args.runs = args.runs.resolve()
    results = []
    for name in args.types:
        print(f"[{name}] training for {args.minutes:g} minutes, then evaluating", flush=True)
        results.append(study_one(name, args))
    write_section(results, args)
    print(table(results))
    print(f"written to {args.results}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
