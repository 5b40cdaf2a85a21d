#!/usr/bin/env python
"""Decoding speed of one checkpoint under different worker counts, alternating in one process.

    python scripts/bench_decode.py --checkpoint runs/x/last.pt --src test.de \
        [--beam 1 5] [--workers 1 2] [--rounds 3] [--batch-size 64] [--int8]

For each beam size, each round decodes the whole file once per worker count, in turn, so the
machine's drifts hit every setting alike; prints the median seconds and sentences/s of each
setting, its ratio to the first worker count, and whether every setting wrote the same
hypotheses. One untimed pass first warms the caches. ``--workers 0`` is the automatic choice.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from s2s.backend import select_backend  # noqa: E402
from s2s.cli import (add_backend_flag, non_negative_int, positive_int,  # noqa: E402
                     reports_errors)
from s2s.data.corpus import read_lines  # noqa: E402
from s2s.inference import Translator, load_translator  # noqa: E402
from s2s.search.runner import decoding_workers  # noqa: E402


def timed_pass(translator: Translator, sources: list[str], beam: int, batch_size: int,
               workers: int) -> tuple[float, list[str]]:
    start = time.perf_counter()
    outputs = translator.translate(sources, beam, batch_size, workers=workers)
    return time.perf_counter() - start, outputs


@reports_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--src", required=True, help="source file, one sentence per line")
    parser.add_argument("--beam", type=positive_int, nargs="+", default=[1, 5])
    parser.add_argument("--workers", type=non_negative_int, nargs="+", default=[1, 0])
    parser.add_argument("--rounds", type=positive_int, default=3)
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--int8", action="store_true")
    add_backend_flag(parser)
    args = parser.parse_args(argv)
    select_backend(args.backend, "cpu").configure_process("decoding")  # as evaluate.py does
    translator = load_translator(args.checkpoint, "cpu", args.int8, args.backend)
    sources = read_lines(args.src)
    print(f"{len(sources)} sentences, batches of {args.batch_size}, "
          f"{torch.get_num_threads()} torch threads, {args.backend} backend"
          f"{', int8' if args.int8 else ''}")
    for beam in args.beam:
        timed_pass(translator, sources, beam, args.batch_size, args.workers[0])  # warm-up
        seconds: dict[int, list[float]] = {w: [] for w in args.workers}
        outputs: dict[int, list[str]] = {}
        for _ in range(args.rounds):
            for workers in args.workers:
                elapsed, outputs[workers] = timed_pass(translator, sources, beam,
                                                       args.batch_size, workers)
                seconds[workers].append(elapsed)
        same = all(out == outputs[args.workers[0]] for out in outputs.values())
        base = statistics.median(seconds[args.workers[0]])
        for workers, times in seconds.items():
            median = statistics.median(times)
            auto = f" (auto: {decoding_workers(0, 'cpu')})" if workers == 0 else ""
            print(f"beam {beam}, workers {workers}{auto}: median {median:.2f} s "
                  f"({' '.join(f'{t:.2f}' for t in times)}), "
                  f"{len(sources) / median:.1f} sentences/s, {base / median:.2f}× workers "
                  f"{args.workers[0]}")
        print(f"beam {beam}: same hypotheses under every setting: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
