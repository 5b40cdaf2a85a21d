"""The fused output layer + cross-entropy against nn.functional's plain path."""

import math

import pytest
import torch
import torch.nn.functional as F

from s2s.cpu.loss import linear_cross_entropy
from tests.test_products import kernel  # noqa: F401  (fixture: oneDNN and plain products)


def _inputs(vocab: int, bias: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    vectors = torch.randn(45, 16, generator=gen).requires_grad_()
    weight = (torch.randn(vocab, 16, generator=gen) * 0.5).requires_grad_()
    offset = (torch.randn(vocab, generator=gen) * 0.1).requires_grad_() if bias else None
    gold = torch.randint(0, vocab, (45,), generator=gen)
    return vectors, weight, offset, gold


@pytest.mark.parametrize("vocab", [37, 40, 8001])  # padded to 40 / already aligned / real size
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("bias", [True, False])
def test_matches_linear_then_cross_entropy(vocab, smoothing, bias, kernel):
    vectors, weight, offset, gold = _inputs(vocab, bias)
    loss, nll, correct = linear_cross_entropy(vectors, weight, offset, gold, smoothing)
    loss.backward()
    fused = [t.grad.clone() for t in (vectors, weight, offset) if t is not None]
    for t in (vectors, weight, offset):
        if t is not None:
            t.grad = None
    logits = F.linear(vectors, weight, offset)
    expected = F.cross_entropy(logits, gold, reduction="sum", label_smoothing=smoothing)
    expected.backward()
    torch.testing.assert_close(loss, expected)
    torch.testing.assert_close(nll, F.cross_entropy(logits, gold, reduction="sum").detach())
    assert int(correct) == int((logits.argmax(-1) == gold).sum())
    assert not nll.requires_grad and not correct.requires_grad
    plain = [t.grad for t in (vectors, weight, offset) if t is not None]
    for got, want in zip(fused, plain):  # sums over 8,001 terms in another order
        # relative to the gradient's own size (most entries of an 8,001-row weight's gradient
        # are ~1e-4: an absolute 1e-4 would accept anything)
        assert float((got - want).norm()) <= 1e-5 * float(want.norm())
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().mean()))


def test_padding_columns_never_leak_into_the_loss(monkeypatch):
    # the weight is padded only for torch's own product (oneDNN's needs no alignment)
    monkeypatch.setattr("s2s.cpu.products._ONEDNN", False)
    # with V = 37 the weight is padded to 40 rows, 3 of them zero: their zero logits would add 3·e⁰ to
    # every softmax denominator if they were not sliced off, which dominates here because
    # every real logit is far below 0
    vectors, weight, offset, gold = _inputs(37, True)
    with torch.no_grad():
        vectors.copy_(vectors.abs())
        weight.fill_(-3.0)
    loss, _, _ = linear_cross_entropy(vectors, weight, offset, gold)
    expected = F.cross_entropy(F.linear(vectors, weight, offset), gold, reduction="sum")
    torch.testing.assert_close(loss, expected)


def test_a_second_backward_is_refused_instead_of_reading_overwritten_logits():
    vectors, weight, offset, gold = _inputs(37, True)
    loss, _, _ = linear_cross_entropy(vectors, weight, offset, gold)
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError):
        loss.backward()


@pytest.mark.parametrize("backend", ["plain", "cpu"])
def test_the_loss_of_an_int8_model_is_close_to_its_float_one(backend):
    """An int8 output layer is no nn.Linear: the CPU backend's loss seam leaves it to the
    model's own cross-entropy."""
    from s2s.cpu.int8 import quantize_int8
    from tests.conftest import overfit, tiny_model

    model = tiny_model("general", backend=backend)
    batch, _ = overfit(model, updates=150)  # a trained model: far from uniform output
    model.eval()
    with torch.no_grad():
        exact = model(batch)
        approximate = quantize_int8(model)(batch)
    assert approximate.tokens == exact.tokens
    assert float(exact.nll) / exact.tokens < 0.25 * math.log(20)  # well below uniform
    torch.testing.assert_close(approximate.nll, exact.nll, rtol=0.1, atol=0.02 * exact.tokens)
    torch.testing.assert_close(approximate.loss, exact.loss, rtol=0.1, atol=0.02 * exact.tokens)


@pytest.mark.parametrize("vocab", [37, 8001])
def test_correct_counts_rows_whose_gold_is_the_argmax(vocab):
    vectors, weight, offset, _ = _inputs(vocab, bias=True, seed=1)
    best = F.linear(vectors, weight, offset).argmax(-1)
    rows = torch.arange(best.numel())
    gold = torch.where(rows % 3 == 0, best, (best + 1 + rows % 5) % vocab)  # every third right
    _, _, correct = linear_cross_entropy(vectors, weight, offset, gold, 0.0)
    assert int(correct) == int((rows % 3 == 0).sum()) == 15
