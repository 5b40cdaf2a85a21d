"""Matrix products on the CPU through oneDNN, where torch's own go to MKL.

MKL's sgemm (behind torch's ``mm``/``addmm``/``linear``) takes its fastest (AVX-512) kernels on
Intel CPUs only; elsewhere oneDNN's linear runs the model's products faster, while on Intel
CPUs MKL is as fast or faster (docs/performance.md; ``scripts/bench_kernels.py``). So the
products here go to oneDNN where the build has it and the CPU is not Intel's
(:func:`onednn_preferred`). oneDNN's only entry point in torch is its linear, y = x Wᵀ + b, so
each product is written as one, with the operands in the orientation oneDNN runs fastest.
Elsewhere (an Intel CPU, float64, a build without oneDNN) they are torch's plain products; the
results agree to float rounding either way.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def onednn_available() -> bool:
    """Whether this torch build has oneDNN's linear (and its weight prepacking) on the CPU."""
    ops = getattr(torch.ops, "mkldnn", None)
    return (torch.backends.mkldnn.is_available() and ops is not None
            and hasattr(ops, "_linear_pointwise") and hasattr(ops, "_reorder_linear_weight"))


def cpuinfo(field: str) -> str:
    """The first value of ``field`` in /proc/cpuinfo ("" where there is none)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as lines:
            for line in lines:
                name, _, value = line.partition(":")
                if name.strip() == field:
                    return value.strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor id ("GenuineIntel", "AuthenticAMD", …; "" where unknown)."""
    return cpuinfo("vendor_id")


def onednn_preferred(vendor: Optional[str] = None) -> bool:
    """Whether this module's products go to oneDNN: the build has it and MKL is not at its
    best on this CPU (``vendor``, default :func:`cpu_vendor`, is not Intel's)."""
    return onednn_available() and (cpu_vendor() if vendor is None else vendor) != "GenuineIntel"


_ONEDNN = onednn_preferred()


def on_onednn(x: Tensor) -> bool:
    """Whether products with ``x`` go to oneDNN: a float32 CPU tensor, oneDNN present and
    enabled (``torch.backends.mkldnn.flags(enabled=False)`` turns it off)."""
    return (_ONEDNN and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.enabled)


def onednn_linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x Wᵀ + b ``[N, out]`` by oneDNN, x ``[N, in]``, W ``[out, in]`` (plain or a view; no
    autograd)."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def linear(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None) -> Tensor:
    """x Wᵀ + b ``[N, out]`` from x ``[N, in]``, W ``[out, in]``, b ``[out]`` (no autograd)."""
    if on_onednn(x):
        return onednn_linear(x, weight, bias)
    return x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())


def times(a: Tensor, b: Tensor) -> Tensor:
    """a·b ``[M, N]`` from a ``[M, K]``, b ``[K, N]`` (no autograd): the linear a (bᵀ)ᵀ."""
    return onednn_linear(a, b.t()) if on_onednn(a) else a @ b


def transposed_times(a: Tensor, b: Tensor) -> Tensor:
    """aᵀ·b ``[M, N]`` from a ``[K, M]``, b ``[K, N]`` — a weight's gradient summed over K rows
    (no autograd). On oneDNN as (bᵀ a)ᵀ: with aᵀ as the input it ran at half the speed."""
    if on_onednn(a):
        return onednn_linear(b.t(), a.t()).t()
    return a.t() @ b
