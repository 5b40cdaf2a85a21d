"""The output layer and the training loss as one autograd function.

For the N real target positions of a batch, with ṽ ``[N, D]`` the attentional vectors,
W_o ``[V, D]``, b_o ``[V]`` the output layer and y ``[N]`` the gold tokens:

    x(n) = W_o ṽ(n) + b_o                                           (logits, [N, V])
    L    = Σₙ (1 − ε)(lse(x(n)) − x(n)_y(n)) + ε(lse(x(n)) − meanᵥ x(n)ᵥ)
    ∂L/∂x(n) = softmax(x(n)) − (1 − ε)·onehot(y(n)) − ε/V

(cross-entropy with label smoothing ε, summed: :func:`s2s.model.seq2seq.cross_entropy`). The
output layer is half the model's arithmetic, and three things make it cheaper than
``nn.Linear`` followed by ``F.cross_entropy``:

- its three products (logits, ∂ṽ, ∂W_o) run where they run fastest (:mod:`s2s.cpu.products`);
  on MKL, W_o is padded with zero rows to a multiple of 8 so that the logits' rows are 8-float
  aligned (MKL's product into [N, 8008] runs markedly faster than into [N, 8001]); the padded
  columns are sliced off before anything reads them;
- logsumexp runs over blocks of 64 rows, whose temporaries stay in cache;
- the gradient is written over the logits in one pass: neither log-probabilities nor a
  one-hot nor a second [N, V] buffer is ever allocated.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from s2s.cpu.products import linear, on_onednn, times, transposed_times
from s2s.model.seq2seq import cross_entropy

_ROW_BLOCK = 64  # rows of logits per logsumexp call
_ALIGN = 8       # floats: the logits' row length is padded to a multiple of this on the CPU


def _aligned(weight: Tensor, bias: Optional[Tensor]) -> tuple[Tensor, Optional[Tensor]]:
    """W ``[V, D]`` and b ``[V]`` with zero rows appended up to a multiple of ``_ALIGN``
    on the CPU (the copy costs about 1% of the product it speeds up); as they are elsewhere."""
    vocab = weight.size(0)
    if weight.device.type != "cpu" or vocab % _ALIGN == 0:
        return weight, bias
    rows = vocab + _ALIGN - vocab % _ALIGN
    padded = weight.new_empty(rows, weight.size(1))
    padded[:vocab].copy_(weight)
    padded[vocab:].zero_()
    if bias is not None:
        bias = torch.cat([bias, bias.new_zeros(rows - vocab)])
    return padded, bias


def _logits(vectors: Tensor, weight: Tensor, bias: Optional[Tensor]) -> Tensor:
    """ṽ W_oᵀ + b_o ``[N, V]``: oneDNN's product where there is one (:mod:`s2s.cpu.products`),
    else MKL's over the aligned weight."""
    if on_onednn(vectors):
        return linear(vectors, weight, bias)
    vocab = weight.size(0)
    padded_weight, padded_bias = _aligned(weight, bias)
    return (vectors @ padded_weight.t() if padded_bias is None
            else torch.addmm(padded_bias, vectors, padded_weight.t()))[:, :vocab]


def _logsumexp_rows(logits: Tensor) -> Tensor:
    """lse over the last dimension of ``[N, V]``, in row blocks → ``[N]``."""
    return torch.cat([torch.logsumexp(rows, dim=-1) for rows in logits.split(_ROW_BLOCK)])


class _LinearCrossEntropy(torch.autograd.Function):
    """(loss, nll, correct) from ṽ ``[N, D]``, W_o, b_o, y ``[N]``; see the module docstring.
    nll (no smoothing) and correct (argmax = gold count) carry no gradient. The logits and the
    loss are in ṽ's dtype (training runs in float32)."""

    @staticmethod
    def forward(ctx: Any, vectors: Tensor, weight: Tensor, bias: Optional[Tensor], gold: Tensor,
                smoothing: float) -> tuple[Tensor, Tensor, Tensor]:  # type: ignore[override]
        logits = _logits(vectors, weight, bias)
        lse = _logsumexp_rows(logits)
        gold_logits = logits.gather(1, gold.unsqueeze(1)).squeeze(1)
        nll = (lse - gold_logits).sum()
        loss = nll.clone()  # the differentiable output must be a tensor of its own
        if smoothing > 0:
            uniform = (lse - logits.mean(dim=-1)).sum()
            loss = (1.0 - smoothing) * nll + smoothing * uniform
        # gold is the argmax iff its logit is the row's largest (ties, which argmax breaks by
        # index, do not occur in float logits); amax runs 4× faster than argmax here
        correct = (gold_logits >= logits.amax(dim=-1)).sum()
        ctx.save_for_backward(vectors, weight, logits, gold, lse)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll, correct)
        return loss, nll, correct

    @staticmethod
    @once_differentiable  # it overwrites what it saved: no graph of its own backward
    def backward(ctx: Any, grad: Tensor, *_: Tensor
                 ) -> tuple[Optional[Tensor], Optional[Tensor], Optional[Tensor], None, None]:  # type: ignore[override]
        vectors, weight, logits, gold, lse = ctx.saved_tensors
        eps = ctx.smoothing
        # in place: nothing else needs the logits now, and a second backward through this
        # graph fails autograd's version check instead of reading them
        grad_logits = logits.sub_(lse.unsqueeze(1)).exp_().mul_(grad)  # softmax · g
        grad_logits.scatter_add_(1, gold.unsqueeze(1),
                                 (-(1.0 - eps) * grad).expand(gold.numel(), 1).to(logits.dtype))
        if eps > 0:
            grad_logits.sub_(grad * eps / logits.size(1))
        needs = ctx.needs_input_grad
        return (times(grad_logits, weight) if needs[0] else None,
                transposed_times(grad_logits, vectors) if needs[1] else None,
                grad_logits.sum(dim=0) if needs[2] else None, None, None)


def linear_cross_entropy(vectors: Tensor, weight: Tensor, bias: Optional[Tensor], gold: Tensor,
                         smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Summed label-smoothed cross-entropy of softmax(ṽ W_oᵀ + b_o) against ``gold``.

    vectors ``[N, D]``, weight ``[V, D]``, bias ``[V]`` or None, gold ``[N]`` →
    (loss, nll, correct): the loss (differentiable), the unsmoothed negative log-likelihood
    and the number of positions whose argmax is the gold token (both without gradient).
    """
    return _LinearCrossEntropy.apply(vectors, weight, bias, gold, smoothing)


def fused_cross_entropy(vectors: Tensor, output: nn.Module, gold: Tensor,
                        smoothing: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """The seam ``Seq2Seq.output_loss``: :func:`linear_cross_entropy` over the weight and bias
    of an output layer that is exactly :class:`torch.nn.Linear`; the model's own
    :func:`~s2s.model.seq2seq.cross_entropy` for anything else (a subclass, an int8 layer),
    whose forward it must not bypass."""
    if type(output) is not nn.Linear:
        return cross_entropy(vectors, output, gold, smoothing)
    return linear_cross_entropy(vectors, output.weight, output.bias, gold, smoothing)
