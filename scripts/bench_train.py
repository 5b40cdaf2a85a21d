#!/usr/bin/env python
"""Training throughput of a config: steady-state real target tokens/s over a fixed step budget.

    python scripts/bench_train.py --config configs/bahdanau.yaml --steps 200 [--set KEY=VALUE]
    python scripts/bench_train.py --config configs/bahdanau.yaml --processes 1 2

The first 20% of updates are warm-up and excluded. Also reports padding efficiency (real /
padded target positions over one epoch of batches) and peak RSS. No validation runs.

``--processes 1 2 ...`` measures data-parallel training through torchrun on this machine's
CPUs: N processes with cores / N threads each, their real target tokens/s summed, and the
scaling against one process with all the cores (each process keeps the config's batch_tokens,
so N processes make N× larger updates).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from s2s.backend import resolve_device, select_backend  # noqa: E402
from s2s.cli import add_backend_flag, positive_int, reports_errors  # noqa: E402
from s2s.config import load_config  # noqa: E402
from s2s.errors import S2SError  # noqa: E402
from s2s.train.trainer import Trainer, UpdateRecord  # noqa: E402


def padding_efficiency(trainer: Trainer) -> tuple[float, float]:
    """(target, source) real tokens / padded positions over one epoch of batches."""
    split = trainer.train_split
    real_t = padded_t = real_s = padded_s = 0
    for batch in trainer.sampler.batches_for_epoch(0):
        tgt = [len(split.tgt_ids[i]) + 1 for i in batch]
        src = [len(split.src_ids[i]) + 1 for i in batch]
        real_t, padded_t = real_t + sum(tgt), padded_t + len(tgt) * max(tgt)
        real_s, padded_s = real_s + sum(src), padded_s + len(src) * max(src)
    return real_t / padded_t, real_s / padded_s


@reports_errors
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--steps", type=positive_int, default=200,
                        help="updates to time (at least 10; the first 20%% are warm-up)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--keep", metavar="DIR",
                        help="train in DIR and keep its checkpoint (default: a temporary folder)")
    parser.add_argument("--processes", type=positive_int, nargs="+", metavar="N",
                        help="compare data-parallel runs of N processes on the CPU cores")
    add_backend_flag(parser, None, "training.backend")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10")
    if args.processes:
        return compare_processes(args)
    records: list[UpdateRecord] = []
    with tempfile.TemporaryDirectory() as scratch:
        out = args.keep or scratch
        config = load_config(args.config, args.overrides + [
            f"training.output_dir={out}", f"training.max_steps={args.steps}",
            f"training.validate_every={10**9}", "training.progress_bar=false",
            f"training.log_every={10**9}"])
        backend = args.backend or config.training.backend
        select_backend(backend, resolve_device(config.training.device)).configure_process(
            "training")  # as train.py does
        trainer = Trainer(config, backend=backend, on_update=records.append)
        trainer.valid_split = None  # throughput only: no validation, no final decode
        trainer.train()
    skip = max(1, len(records) // 5)
    t0, t1 = records[skip - 1].time, records[-1].time
    tokens = sum(record.tokens for record in records[skip:])
    tgt_eff, src_eff = padding_efficiency(trainer)
    result = {
        "config": args.config, "overrides": args.overrides, "steps": len(records),
        "steady_steps": len(records) - skip, "steady_tokens": tokens, "seconds": t1 - t0,
        "tgt_tokens_per_s": tokens / (t1 - t0),
        "updates_per_s": (len(records) - skip) / (t1 - t0),
        "tgt_tokens_per_update": tokens / (len(records) - skip),
        "tgt_padding_efficiency": tgt_eff, "src_padding_efficiency": src_eff,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "device": str(trainer.device), "backend": trainer.backend.name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(),
    }
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:24s} {value:.3f}" if isinstance(value, float) else f"{key:24s} {value}")
    return 0


def compare_processes(args: argparse.Namespace) -> int:
    """Each N of ``--processes`` under torchrun (1: a plain run), the same steps and config;
    print tokens/s summed over the processes and the scaling against the first N."""
    cores = os.cpu_count() or 1
    rows = []
    scratch = tempfile.TemporaryDirectory()  # one run directory for all of a run's processes
    for count in args.processes:
        threads = max(1, cores // count)
        command = [sys.executable, str(Path(__file__).resolve()), "--config", args.config,
                   "--steps", str(args.steps), "--json", "--keep", f"{scratch.name}/{count}",
                   *[f"--set={o}" for o in args.overrides],
                   f"--set=training.num_threads={threads}",
                   *(["--backend", args.backend] if args.backend else [])]
        if count > 1:
            command[:1] = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={count}"]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode:
            raise S2SError(f"{count} processes failed: {done.stderr.strip().splitlines()[-1:]}")
        results = [json.loads(line) for line in done.stdout.splitlines()
                   if line.startswith("{")]
        tokens = sum(r["steady_tokens"] for r in results)
        seconds = max(r["seconds"] for r in results)
        rows.append({"processes": count, "threads_each": threads,
                     "tgt_tokens_per_s": tokens / seconds})
    for row in rows:
        row["scaling"] = row["tgt_tokens_per_s"] / rows[0]["tgt_tokens_per_s"]
    if args.json:
        print(json.dumps({"config": args.config, "cores": cores, "runs": rows}))
        return 0
    print(f"{'processes':>9} {'threads':>7} {'tgt tok/s':>10} {'scaling':>8}   ({cores} cores)")
    for row in rows:
        print(f"{row['processes']:>9} {row['threads_each']:>7} {row['tgt_tokens_per_s']:>10,.0f} "
              f"{row['scaling']:>7.2f}×")
    return 0


if __name__ == "__main__":
    sys.exit(main())
