"""s2s.cpu.products: oneDNN's products equal torch's, on views too, and the plain fallback."""

from __future__ import annotations

import pytest
import torch

import s2s.cpu.products as products
from s2s.cpu.products import linear, onednn_available, times, transposed_times

needs_onednn = pytest.mark.skipif(not onednn_available(), reason="torch build lacks oneDNN")


@pytest.fixture(params=["onednn", "plain"])
def kernel(request, monkeypatch):
    """Run a test with the products on oneDNN (where the build has it) and on torch's own."""
    if request.param == "onednn" and not onednn_available():
        pytest.skip("torch build lacks oneDNN")
    monkeypatch.setattr(products, "_ONEDNN", request.param == "onednn")
    return request.param


def test_products_equal_torch_s_on_views_and_with_bias(kernel):
    gen = torch.Generator().manual_seed(0)
    buffer = torch.randn(37, 40, generator=gen)
    x = buffer[:, 8:]                                   # rows with a stride: a column slice
    weight = torch.randn(24, 32, generator=gen)
    bias = torch.randn(24, generator=gen)
    torch.testing.assert_close(linear(x, weight, bias), x @ weight.t() + bias)
    torch.testing.assert_close(linear(x, weight), x @ weight.t())
    other = torch.randn(32, 24, generator=gen)          # as the output layer's ∂x = G·W
    torch.testing.assert_close(times(x, other), x @ other)
    torch.testing.assert_close(times(x, other.t().contiguous().t()), x @ other)
    grad = torch.randn(37, 24, generator=gen)
    torch.testing.assert_close(transposed_times(grad, x), grad.t() @ x)


@needs_onednn
@pytest.mark.filterwarnings("ignore:TF32 acceleration on top of oneDNN")  # flags() sets it too
def test_only_float32_cpu_tensors_go_to_onednn_and_only_while_it_is_enabled(monkeypatch):
    monkeypatch.setattr(products, "_ONEDNN", True)  # as on a CPU where oneDNN is preferred
    assert products.on_onednn(torch.ones(2, 2))
    assert not products.on_onednn(torch.ones(2, 2, dtype=torch.float64))  # oneDNN refuses it
    with torch.backends.mkldnn.flags(enabled=False):
        assert not products.on_onednn(torch.ones(2, 2))


@needs_onednn
def test_onednn_is_preferred_except_where_mkl_runs_its_best_kernels():
    assert products.onednn_preferred("AuthenticAMD")
    assert products.onednn_preferred("")  # unknown: oneDNN, as where it was measured faster
    assert not products.onednn_preferred("GenuineIntel")
    assert products._ONEDNN == products.onednn_preferred(products.cpu_vendor())


def test_the_cpu_vendor_and_model_are_read_from_proc_cpuinfo(tmp_path, monkeypatch):
    vendor = products.cpu_vendor()
    assert isinstance(vendor, str) and "\n" not in vendor
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/cpuinfo":
            path = tmp_path / "cpuinfo"
            path.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n"
                            "model name\t: AMD EPYC 9R14 96-Core Processor\n"
                            "processor\t: 1\nvendor_id\t: AuthenticAMD\n")
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    assert products.cpu_vendor() == "AuthenticAMD"
    assert products.cpuinfo("model name") == "AMD EPYC 9R14 96-Core Processor"
    assert products.cpuinfo("no such field") == ""
    monkeypatch.setattr("builtins.open", lambda *a, **k: (_ for _ in ()).throw(OSError()))
    assert products.cpu_vendor() == ""


def test_a_weight_changed_in_place_is_read_afresh(kernel):
    # training changes its weights in place every update: no product may keep a stale copy
    x, weight = torch.randn(9, 16), torch.randn(8, 16)
    before = linear(x, weight)
    weight.mul_(-2.0)
    torch.testing.assert_close(linear(x, weight), -2.0 * before)
    torch.testing.assert_close(times(x, weight.t()), -2.0 * before)


def test_an_empty_batch_gives_an_empty_product(kernel):
    assert linear(torch.randn(0, 6), torch.randn(3, 6)).shape == (0, 3)
