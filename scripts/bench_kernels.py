#!/usr/bin/env python
"""The kernel choices behind s2s's CPU speed, measured on this machine.

    python scripts/bench_kernels.py [--repeats 30]

For the products of one decoder step (a few dozen to a few hundred rows times a weight) it
prints GFLOP/s of ``F.linear`` (x·Wᵀ as torch computes it, on MKL), MKL's (W·xᵀ)ᵀ with the
rows padded to a multiple of 8 (:func:`s2s.cpu.lstm.step_product` without oneDNN), oneDNN's
linear (:func:`s2s.cpu.products.linear`, what the training recurrences use where the CPU is not
Intel's: :func:`s2s.cpu.products.onednn_preferred`) and oneDNN's linear
with the weight prepacked once (:mod:`s2s.cpu.prepack`, used for decoding); then the training
output layer's three products (logits, ∂x, ∂W over a batch of real target tokens) on MKL,
with the vocabulary as it is (8,001) and padded to a multiple of 8 rows, and on oneDNN
(:mod:`s2s.cpu.products`), and the whole output layer + loss, forward and backward, as
``F.linear`` + ``F.cross_entropy`` and as :func:`s2s.cpu.loss.linear_cross_entropy` on each; then
the time to draw and apply a dropout mask with ``torch.nn.Dropout`` and with
:class:`s2s.cpu.dropout.FastDropout`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import s2s.cpu.products as products  # noqa: E402
from s2s.cpu.allocator import reuse_large_blocks  # noqa: E402
from s2s.cpu.dropout import FastDropout  # noqa: E402
from s2s.cpu.loss import linear_cross_entropy  # noqa: E402
from s2s.cpu.lstm import step_product  # noqa: E402
from s2s.cpu.prepack import pack, packed_linear  # noqa: E402
from s2s.cpu.products import onednn_available  # noqa: E402

# (rows, in, out): decoder LSTM step, Bahdanau query projection, attentional layer, output
# projection — at training batch size (~70 sentences) and beam 5 × 64 sentences
SHAPES = [(70, 1024, 2048), (70, 512, 512), (64, 1280, 2048), (64, 512, 8001),
          (320, 1280, 2048), (320, 1024, 512), (320, 512, 8001)]


def seconds(fn: Callable[[], object], repeats: int) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def on_products(fn: Callable[[], object], onednn: bool) -> Callable[[], object]:
    """``fn`` with s2s's products on oneDNN (``onednn``) or on torch's own (MKL), whatever
    this CPU gets by default (:func:`s2s.cpu.products.onednn_preferred`)."""
    def run() -> object:
        saved, products._ONEDNN = products._ONEDNN, onednn
        try:
            return fn()
        finally:
            products._ONEDNN = saved
    return run


def on_torch_products(fn: Callable[[], object]) -> Callable[[], object]:
    return on_products(fn, False)


def on_onednn_products(fn: Callable[[], object]) -> Callable[[], object]:
    return on_products(fn, True)  # callers check onednn_available() first


def output_layer(repeats: int, rows: int = 1100, width: int = 512, vocab: int = 8001) -> None:
    """GFLOP/s of the training output layer's products, and ms of output layer + loss."""
    reuse_large_blocks()  # as the trainer does: the [rows, vocab] blocks are reused
    x = torch.randn(rows, width)
    flops = 2 * rows * width * vocab / 1e9
    print(f"\n| output layer, {rows} × {width} → V | logits x·Wᵀ GFLOP/s | ∂x = G·W | ∂W = Gᵀ·x |")
    print("|---|---|---|---|")
    for size in (vocab, vocab + (-vocab) % 8):
        weight, grad = torch.randn(size, width) * 0.05, torch.randn(rows, size)
        times = [seconds(fn, repeats) for fn in (lambda: F.linear(x, weight),
                                                 lambda: grad @ weight, lambda: grad.t() @ x)]
        print(f"| MKL, V = {size} | " + " | ".join(f"{flops / t:.0f}" for t in times) + " |")
    if onednn_available():
        weight, grad = torch.randn(vocab, width) * 0.05, torch.randn(rows, vocab)
        times = [seconds(on_onednn_products(fn), repeats) for fn in (
            lambda: products.linear(x, weight), lambda: products.times(grad, weight),
            lambda: products.transposed_times(grad, x))]
        print(f"| oneDNN, V = {vocab} | " + " | ".join(f"{flops / t:.0f}" for t in times) + " |")
    weight = (torch.randn(vocab, width) * 0.05).requires_grad_()
    bias = torch.zeros(vocab, requires_grad=True)
    vectors = x.clone().requires_grad_()
    gold = torch.randint(0, vocab, (rows,))

    def plain() -> None:
        F.cross_entropy(F.linear(vectors, weight, bias), gold, reduction="sum").backward()

    def fused() -> None:
        linear_cross_entropy(vectors, weight, bias, gold)[0].backward()

    print("\n| output layer + loss, forward + backward | ms |")
    print("|---|---|")
    print(f"| F.linear + F.cross_entropy | {seconds(plain, repeats) * 1e3:.1f} |")
    print(f"| s2s.cpu.loss.linear_cross_entropy, MKL | "
          f"{seconds(on_torch_products(fused), repeats) * 1e3:.1f} |")
    if onednn_available():
        print(f"| s2s.cpu.loss.linear_cross_entropy, oneDNN | "
              f"{seconds(on_onednn_products(fused), repeats) * 1e3:.1f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU vendor "
          f"{products.cpu_vendor() or 'unknown'}: s2s's training products on "
          f"{'oneDNN' if products.onednn_preferred() else 'MKL'}\n")
    print("| rows × in → out | F.linear GFLOP/s | MKL (W·xᵀ)ᵀ | oneDNN | oneDNN prepacked |")
    print("|---|---|---|---|---|")
    for rows, fan_in, fan_out in SHAPES:
        x, weight = torch.randn(rows, fan_in), torch.randn(fan_out, fan_in)
        flops = 2 * rows * fan_in * fan_out / 1e9
        plain = flops / seconds(lambda: F.linear(x, weight), args.repeats)
        stepped = flops / seconds(on_torch_products(lambda: step_product(x, weight)),
                                  args.repeats)
        onednn = packed = "n/a"
        if onednn_available():
            product = on_onednn_products(lambda: products.linear(x, weight))
            onednn = f"{flops / seconds(product, args.repeats):.0f}"
            w = pack(weight)
            packed = f"{flops / seconds(lambda: packed_linear(x, w, None), args.repeats):.0f}"
        print(f"| {rows} × {fan_in} → {fan_out} | {plain:.0f} | {stepped:.0f} | {onednn} | "
              f"{packed} |")
    output_layer(args.repeats)
    print("\n| dropout p = 0.2 on | torch.nn.Dropout ms | s2s Dropout ms |")
    print("|---|---|---|")
    for shape in [(70, 512), (1100, 512), (20, 70, 512)]:
        x = torch.randn(shape)
        plain_drop, fast_drop = torch.nn.Dropout(0.2).train(), FastDropout(0.2).train()
        a = seconds(lambda: plain_drop(x), args.repeats) * 1e3
        b = seconds(lambda: fast_drop(x), args.repeats) * 1e3
        print(f"| {list(shape)} | {a:.2f} | {b:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
