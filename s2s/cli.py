"""Command-line entry points (``train.py``, ``evaluate.py``): argument parsing and one call
into the library. User errors print ``error: <one line>`` and exit with status 2."""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

from s2s.data.corpus import MULTI30K_TEST_SETS
from s2s.errors import ConfigError, S2SError, output_problem, writing

if TYPE_CHECKING:
    from s2s.inference import Translator


def _int_at_least(text: str, lowest: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < lowest:
        raise argparse.ArgumentTypeError(f"expected a number of at least {lowest}, got {value}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of at least 1."""
    return _int_at_least(text, 1)


def non_negative_int(text: str) -> int:
    """argparse type: an integer of at least 0."""
    return _int_at_least(text, 0)


BACKEND_HELP = ("'plain': the model exactly as s2s/model writes it; 'auto': the CPU backend's "
                "faster equivalents on the CPU, the plain model elsewhere")


def add_backend_flag(parser: argparse.ArgumentParser, default: Optional[str] = "auto",
                     overrides: str = "") -> None:
    """``--backend auto|plain``; ``overrides``: the config key it overrides, if any."""
    prefix = f"overrides {overrides}: " if overrides else ""
    parser.add_argument("--backend", choices=["auto", "plain"], default=default,
                        help=prefix + BACKEND_HELP + f" (default: {default or overrides})")


WORKERS_HELP = ("CPU: batches decoded at once, each in its own thread (default: "
                "evaluation.workers of the checkpoint's config; 0 = one per torch thread, "
                "at most 4)")


def reports_errors(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[..., int]:
    """Turn user-caused failures into one ``error:`` line: status 2 for bad input, 1 for a
    file system problem (disk full, no permission), 130 for Ctrl-C."""

    @functools.wraps(main)
    def wrapper(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except S2SError as err:
            print(f"error: {err}", file=sys.stderr)
            return err.exit_code
        except KeyboardInterrupt:
            print("error: interrupted", file=sys.stderr)
            return 130
        except BrokenPipeError:  # e.g. piped into `head`: the reader left, nothing to report
            sys.stderr.close()
            return 141
        except OSError as err:
            where = f" '{err.filename}'" if err.filename else ""
            print(f"error: {err.strerror or err}{where}", file=sys.stderr)
            return 1

    return wrapper


def add_search_flags(parser: argparse.ArgumentParser) -> None:
    """Search settings a user tunes, over the checkpoint's ``evaluation`` section."""
    parser.add_argument("--alpha", type=float, default=None, metavar="A",
                        help="GNMT length penalty ((5 + |y|) / 6)^A (default: "
                             "evaluation.length_penalty; 0 = none)")
    parser.add_argument("--max-length", type=positive_int, default=None, metavar="N",
                        help="longest output in subwords (default: evaluation.max_output_length)")
    parser.add_argument("--max-ratio", type=float, default=None, metavar="R",
                        help="longest output as a multiple of the source length (default: "
                             "evaluation.max_output_ratio)")


def _with_search_flags(translator: Translator, args: argparse.Namespace) -> Translator:
    """``translator`` with the search flags given on the command line applied (checked like
    the config keys they override)."""
    settings = {key: value for key, value in (("length_penalty", args.alpha),
                                              ("max_output_length", args.max_length),
                                              ("max_output_ratio", args.max_ratio))
                if value is not None}
    if not settings:
        return translator
    try:
        return translator.with_search(**settings)
    except ConfigError as err:
        flags = {"length_penalty": "--alpha", "max_output_length": "--max-length",
                 "max_output_ratio": "--max-ratio"}
        message = str(err)
        for key, flag in flags.items():
            message = message.replace(f"config key 'evaluation.{key}'", flag)
        raise S2SError(message) from None


@reports_errors
def train_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Train an LSTM encoder-decoder with attention.")
    parser.add_argument("--config", required=True, help="YAML config file")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key by its dotted path")
    parser.add_argument("--resume", metavar="CHECKPOINT",
                        help="continue from a checkpoint ('auto': last.pt in output_dir)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in an output_dir that already holds a run")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"],
                        help="overrides training.device")
    add_backend_flag(parser, None, "training.backend")
    args = parser.parse_args(argv)

    from s2s.backend import resolve_device, select_backend
    from s2s.config import load_config
    from s2s.train.trainer import TrainingStopped, Trainer

    config = load_config(args.config, args.overrides)
    device = resolve_device(args.device or config.training.device)
    select_backend(args.backend or config.training.backend, device).configure_process("training")
    trainer = Trainer(config, resume=args.resume, overwrite=args.overwrite, device=args.device,
                      backend=args.backend)
    try:
        trainer.train()
    except TrainingStopped as stop:
        if str(stop):  # in a distributed run, rank 0 alone has something to say
            print(str(stop), file=sys.stderr)
        return stop.exit_code
    return 0


@reports_errors
def evaluate_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Score a checkpoint (BLEU, chrF, exact match) or a hypothesis file.")
    parser.add_argument("--checkpoint", nargs="+", metavar="CKPT",
                        help="checkpoint to translate with; several: an ensemble (their "
                             "log-probabilities averaged at each step)")
    parser.add_argument("--split", default=None,
                        choices=["valid", "val", "test", *MULTI30K_TEST_SETS],
                        help="a split of the checkpoint's corpus (default: test; for Multi30k "
                             "also its other test sets by name)")
    parser.add_argument("--src", help="source file to translate (with --ref)")
    parser.add_argument("--ref", help="reference file")
    parser.add_argument("--hyp", help="score this hypothesis file against --ref, no model")
    parser.add_argument("--beam", type=positive_int, default=None,
                        help="beam size (default: evaluation.beam_size of the checkpoint's "
                             "config); 1 = greedy")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--workers", type=non_negative_int, default=None, help=WORKERS_HELP)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--int8", action="store_true",
                        help="CPU only: int8 weights for linear layers and LSTMs (faster, "
                             "BLEU within about 0.1)")
    add_backend_flag(parser)
    add_search_flags(parser)
    parser.add_argument("--output", help="write the translations here, one per line")
    parser.add_argument("--tgt-lang", metavar="LANG",
                        help="the references' language, for the Moses tokenizer of the "
                             "lowercased tokenized BLEU (default: the checkpoint's "
                             "data.tgt_lang; 'en' with --hyp)")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON line")
    args = parser.parse_args(argv)

    from s2s.data.corpus import read_lines
    from s2s.metrics import bleu, bleu_lc_tok, chrf, exact_match

    if args.output:  # before the decoding, not after it
        _check_output(args.output)
    if args.hyp:
        if not args.ref:
            raise S2SError("--hyp needs --ref: the references to score against")
        given = [flag for flag, value in (("--checkpoint", args.checkpoint), ("--src", args.src),
                                          ("--split", args.split), ("--beam", args.beam),
                                          ("--output", args.output)) if value]
        if given:
            raise S2SError(f"--hyp scores a file of translations: {', '.join(given)} would be "
                           f"ignored; leave {'it' if len(given) == 1 else 'them'} out")
        hyps, refs = read_lines(args.hyp), read_lines(args.ref)
        speed, lang = None, args.tgt_lang or "en"
        scored = f"{args.hyp} against {args.ref}"
    else:
        if not args.checkpoint:
            raise S2SError("give --checkpoint (to translate) or --hyp and --ref (to score a file)")
        hyps, refs, speed, lang, scored = _translate_for_evaluation(args)
        if args.output:
            with writing(args.output):
                Path(args.output).write_text("".join(h + "\n" for h in hyps), encoding="utf-8")
    if len(hyps) != len(refs):
        raise S2SError(f"{len(hyps)} hypotheses but {len(refs)} references; they must align")
    scores = [bleu(hyps, refs), bleu_lc_tok(hyps, refs, lang), chrf(hyps, refs)]
    result = {"bleu": scores[0].score, "bleu_lc_tok": scores[1].score, "chrf": scores[2].score,
              "exact_match": exact_match(hyps, refs), "sentences": len(hyps), "scored": scored,
              "signatures": {"bleu": scores[0].signature, "bleu_lc_tok": scores[1].signature,
                             "chrf": scores[2].signature}}
    if speed:
        result.update(speed)
    if args.json:
        print(json.dumps(result))
        return 0
    print(f"scored       {scored}")
    print(f"BLEU         {scores[0].score:6.2f}  (sacreBLEU, cased)  {scores[0].signature}")
    print(f"BLEU lc.tok  {scores[1].score:6.2f}  (lowercased, Moses-tokenized, as Multi30k "
          f"papers report it)  {scores[1].signature}")
    print(f"chrF         {scores[2].score:6.2f}  {scores[2].signature}")
    print(f"exact match  {result['exact_match']:.2f}% of {len(hyps)} sentences")
    if speed:
        mode = "greedy" if speed["beam"] == 1 else f"beam {speed['beam']}"
        print(f"decoding  {speed['sentences_per_second']:.1f} sentences/s  "
              f"{speed['tokens_per_second']:.0f} tokens/s  ({speed['seconds']:.2f} s, {mode}, "
              f"{speed['device']})")
    return 0


def _load_for_decoding(args: argparse.Namespace) -> Translator:
    """The process set up for decoding by the backend (before anything runs), then
    ``--checkpoint`` loaded for ``--device``, ``--int8`` and ``--backend``."""
    from s2s.backend import select_backend
    from s2s.inference import decoding_device, load_translator

    device = decoding_device(args.device, args.int8)
    select_backend(args.backend, device).configure_process("decoding")
    return _with_search_flags(load_translator(args.checkpoint, args.device, args.int8,
                                              args.backend), args)


def _translate_for_evaluation(args: argparse.Namespace) -> tuple[list[str], list[str], dict,
                                                                   str, str]:
    """Hypotheses, references, decoding speed, the target language of ``--checkpoint``, and
    what was scored (the split and its files, or --src and --ref)."""
    from s2s.data.corpus import read_lines
    from s2s.data.splits import read_split
    from s2s.search.runner import decoding_workers

    translator = _load_for_decoding(args)
    if args.src:
        if not args.ref:
            raise S2SError("--src needs --ref: the references to score against")
        sources, refs = read_lines(args.src), read_lines(args.ref)
        scored = f"{args.src} against {args.ref}"
        if len(sources) != len(refs):
            raise S2SError(f"'{args.src}' has {len(sources)} lines but '{args.ref}' has "
                           f"{len(refs)}")
    else:
        split = {"val": "valid", None: "test"}.get(args.split, args.split)
        text = read_split(translator.config.data, split)
        if text is None:
            raise S2SError(f"the checkpoint's config names no '{split}' split "
                           f"(data.{split}); use --src and --ref")
        sources, refs = text.src, text.tgt
        scored = f"the {split} split" + (f": {text.src_path} against {text.tgt_path}"
                                         if text.src_path else "")
    beam = args.beam or translator.config.evaluation.beam_size
    workers = decoding_workers(translator.config.evaluation.workers if args.workers is None
                               else args.workers, translator.device)
    start = time.perf_counter()
    results = _translate_in_pieces(translator, sources, beam, args.batch_size, workers)
    seconds = time.perf_counter() - start
    hyps = [nbest[0][0] for nbest in results]
    tokens = sum(len(nbest[0][1].tokens) for nbest in results)
    speed = {"seconds": seconds, "sentences_per_second": len(hyps) / seconds,
             "tokens_per_second": tokens / seconds, "beam": beam, "workers": workers,
             "device": str(translator.device) + (" int8" if args.int8 else "")}
    return hyps, refs, speed, args.tgt_lang or translator.config.data.tgt_lang, scored


def _score_translations(translator: Translator, args: argparse.Namespace) -> int:
    """``--score FILE``: forced decoding of FILE's lines given the input's, one
    ``log-probability<TAB>perplexity`` line per pair."""
    from s2s.data.corpus import read_lines

    sources = (read_lines(args.input, allow_empty=True) if args.input
               else list(_stdin_lines()))
    targets = read_lines(args.score, allow_empty=True)
    if len(sources) != len(targets):
        raise S2SError(f"{len(sources)} input lines but '{args.score}' has {len(targets)}; "
                       f"they must align")
    for score in translator.score(sources, targets, args.batch_size):
        print(f"{score.log_prob:.4f}\t{score.perplexity:.4f}")
    return 0


def _stdin_lines() -> Iterator[str]:
    """Standard input's lines as they arrive, decoded; invalid UTF-8 names its line."""
    for number, raw in enumerate(sys.stdin.buffer, start=1):
        try:
            yield raw.decode("utf-8").rstrip("\r\n")
        except UnicodeDecodeError:
            raise S2SError(f"standard input, line {number}: not valid UTF-8") from None


def _check_output(path: str, flag: str = "--output") -> None:
    """Refuse an output path that cannot be written, before the work whose result goes there."""
    problem = output_problem(path)
    if problem:
        raise S2SError(f"{flag} '{path}' {problem}")


PIECE = 2000  # sentences decoded between two updates of evaluate.py's progress bar


def _translate_in_pieces(translator: Translator, sources: list[str], beam: int,
                         batch_size: Optional[int], workers: int) -> list:
    """``translator.translate_nbest`` over ``sources``, :data:`PIECE` sentences at a time with a
    progress bar on a terminal when there is more than one piece (the same hypotheses: search
    decodes each sentence on its own)."""
    from tqdm import tqdm

    results: list = []
    with tqdm(total=len(sources), unit="sent", file=sys.stderr, leave=False,
              disable=len(sources) <= PIECE or not sys.stderr.isatty()) as bar:
        for begin in range(0, len(sources), PIECE):
            piece = sources[begin:begin + PIECE]
            results += translator.translate_nbest(piece, beam, 1, batch_size, workers=workers)
            bar.update(len(piece))
    return results


@reports_errors
def average_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Average the weights of checkpoints of one model into a new checkpoint.")
    parser.add_argument("checkpoints", nargs="+", metavar="CKPT",
                        help="checkpoints of one training run, e.g. runs/x/step_*.pt")
    parser.add_argument("--output", required=True, help="where to write the averaged one")
    args = parser.parse_args(argv)

    from s2s.train.checkpoint import average_checkpoints, save_checkpoint

    _check_output(args.output)
    save_checkpoint(average_checkpoints(args.checkpoints), args.output)
    print(f"averaged {len(args.checkpoints)} checkpoints into {args.output}")
    return 0


@reports_errors
def translate_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Translate text with a checkpoint: one line in, one line out.")
    parser.add_argument("--checkpoint", nargs="+", required=True, metavar="CKPT",
                        help="checkpoint to translate with; several: an ensemble (their "
                             "log-probabilities averaged at each step)")
    parser.add_argument("--input", help="file to translate (default: standard input)")
    parser.add_argument("--beam", type=positive_int, default=None,
                        help="beam size (default: evaluation.beam_size from the checkpoint)")
    parser.add_argument("--nbest", type=positive_int, default=1,
                        help="print the K best translations per line as 'K-index<TAB>score<TAB>"
                             "text' (K lines per input line)")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    parser.add_argument("--workers", type=non_negative_int, default=None, help=WORKERS_HELP)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--int8", action="store_true",
                        help="CPU only: int8 weights for linear layers and LSTMs (faster, "
                             "BLEU within about 0.1)")
    add_backend_flag(parser)
    add_search_flags(parser)
    parser.add_argument("--score", metavar="FILE",
                        help="instead of translating, score the translations in FILE (one per "
                             "input line): print each one's log-probability and perplexity")
    args = parser.parse_args(argv)

    from s2s.data.corpus import read_lines
    from s2s.inference import clean_input

    if args.beam and args.nbest > args.beam:
        raise S2SError(f"--nbest {args.nbest} is larger than --beam {args.beam}: a beam keeps "
                       f"at most its size of hypotheses")
    translator = _load_for_decoding(args)
    if args.score:
        return _score_translations(translator, args)
    beam = max(args.beam or translator.config.evaluation.beam_size, args.nbest)

    def emit(lines: list[str]) -> None:
        results = translator.translate_nbest(lines, beam, args.nbest, args.batch_size,
                                             workers=args.workers)
        for line, nbest in zip(lines, results):
            if not clean_input(line):  # nothing was translated: only the line's place is kept
                nbest = []
            for rank, (text, hyp) in enumerate(nbest):
                print(text if args.nbest == 1 else f"{rank}\t{hyp.score:.4f}\t{text}")
            for rank in range(len(nbest), args.nbest):  # keep K lines per input line
                print("" if args.nbest == 1 else f"{rank}\t-inf\t")
        sys.stdout.flush()

    if args.input:
        emit(read_lines(args.input, allow_empty=True))
        return 0
    interactive = sys.stdin.isatty()
    chunk: list[str] = []
    for line in _stdin_lines():
        chunk.append(line)
        if interactive or len(chunk) >= (args.batch_size or 64):
            emit(chunk)
            chunk = []
    if chunk:
        emit(chunk)
    return 0


@reports_errors
def export_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        description="Write a translation-only checkpoint: weights, config and tokenizers, no "
                    "optimizer, scheduler or data-order state.")
    parser.add_argument("checkpoint", help="a checkpoint (e.g. runs/x/best.pt)")
    parser.add_argument("output", help="the file to write")
    parser.add_argument("--fp16", action="store_true",
                        help="store the weights as float16 (half the size; they are float32 "
                             "again when loaded)")
    args = parser.parse_args(argv)

    from s2s.train.checkpoint import export_checkpoint, save_checkpoint

    _check_output(args.output, "output")
    save_checkpoint(export_checkpoint(args.checkpoint, args.fp16), args.output)
    before, after = Path(args.checkpoint).stat().st_size, Path(args.output).stat().st_size
    print(f"wrote {args.output}: {after / 2**20:.1f} MB ({before / 2**20:.1f} MB before)")
    return 0


@reports_errors
def plot_main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Draw a translation's attention or runs' "
                                                 "training curves as a PNG.")
    commands = parser.add_subparsers(dest="command", required=True)
    attention = commands.add_parser("attention", help="the attention of one translation")
    attention.add_argument("--checkpoint", required=True)
    attention.add_argument("--sentence", required=True, help="source sentence to translate")
    attention.add_argument("--output", default="attention.png", help="PNG file to write")
    attention.add_argument("--beam", type=positive_int, default=1)
    attention.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    curves = commands.add_parser("curves", help="validation BLEU and loss of training runs "
                                                "against updates and wall time")
    curves.add_argument("runs", nargs="+", help="run directories (with metrics.jsonl)")
    curves.add_argument("--output", default="curves.png", help="PNG file to write")
    args = parser.parse_args(argv)

    _check_output(args.output)
    if args.command == "curves":
        from s2s.plotting import plot_curves

        plot_curves(args.runs, args.output)
        print(f"curves of {len(args.runs)} run(s) written to {args.output}")
        return 0
    from s2s.inference import load_translator
    from s2s.plotting import plot_translation

    translator = load_translator(args.checkpoint, args.device)
    text = plot_translation(translator, args.sentence, args.output, args.beam)
    print(f"{text}\nattention written to {args.output}")
    return 0


COMMANDS = {"train": train_main, "evaluate": evaluate_main, "translate": translate_main,
            "average": average_main, "export": export_main, "plot": plot_main}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m s2s COMMAND ...`` (or ``s2s COMMAND``): the commands by name."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        names = ", ".join(COMMANDS)
        if argv and argv[0] in ("-h", "--help"):
            print(f"usage: python -m s2s COMMAND [options]; commands: {names} "
                  f"(python -m s2s COMMAND --help for each)")
            return 0
        print(f"error: expected a command: {names}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])

