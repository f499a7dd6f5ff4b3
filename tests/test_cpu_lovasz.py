"""The compiled CPU Lovász extension (csrc/lovasz_cpu.cpp) against a naive per-row loop and the torch backend."""

import numpy as np
import pytest
import torch

from fastloss.losses.lovasz import LovaszSoftmaxLoss
from fastloss.ops import cpu_lovasz
from fastloss.ops.lovasz import lovasz_extension

pytestmark = pytest.mark.skipif(not cpu_lovasz.available(), reason="fastloss._C has no CPU Lovász kernel")


def naive_row(e, g, valid=None):
    """Eqs. 11-13 by a Python loop over the elements in decreasing error order, ties by element index
    (the order a stable sort gives), ignored elements dropped: (loss, d in element order)."""
    n = len(e)
    keep = np.ones(n, bool) if valid is None else valid.astype(bool)
    order = [i for i in np.lexsort((np.arange(n), -e)) if keep[i]]
    G = float(g[keep].sum())
    d = np.zeros(n)
    loss, cum_g, cum_ng, prev = 0.0, 0.0, 0.0, 0.0
    for i in order:
        cum_g += g[i]
        cum_ng += 1.0 - g[i]
        jac = 1.0 - (G - cum_g) / (G + cum_ng)
        d[i] = jac - prev
        prev = jac
        loss += e[i] * d[i]
    return loss, d


def _hard_rows(N, seed, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    e = torch.rand(6, N, generator=gen, dtype=torch.float64)
    g = (torch.rand(6, N, generator=gen) < 0.3).to(torch.float64)
    g[1] = 0.0  # absent class: G = 0
    g[2] = 1.0  # all foreground
    e[3] = torch.randint(0, 4, (N,), generator=gen).to(torch.float64) / 4  # heavy ties
    e[4] = 0.375  # all equal
    g[5] = torch.rand(N, generator=gen, dtype=torch.float64)  # soft foreground
    return e.to(dtype), g.to(dtype)


def _value_and_grad(e, g, valid, upstream):
    x = e.clone().requires_grad_()
    out = cpu_lovasz.lovasz_extension_cpu(x, g, valid)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("N", [1, 7, 2049])
@pytest.mark.parametrize("with_valid", [False, True])
def test_rows_match_the_naive_loop(dtype, N, with_valid):
    e, g = _hard_rows(N, seed=N, dtype=dtype)
    valid = None
    if with_valid:
        valid = torch.rand(e.shape, generator=torch.Generator().manual_seed(5)) < 0.8
        valid[0] = False  # a row with nothing counted: loss 0, no gradient
    upstream = torch.linspace(-1.0, 2.0, e.shape[0], dtype=dtype)
    val, grad = _value_and_grad(e, g, valid, upstream)
    assert val.dtype == dtype and grad.dtype == dtype
    tol = 1e-12 if dtype == torch.float64 else 2e-6
    for r in range(e.shape[0]):
        v = None if valid is None else valid[r].numpy()
        ref_v, ref_d = naive_row(e[r].double().numpy(), g[r].double().numpy(), v)
        assert abs(val[r].item() - ref_v) <= tol * max(1.0, abs(ref_v)), (r, val[r].item(), ref_v)
        np.testing.assert_allclose(grad[r].double().numpy(), upstream[r].item() * ref_d, rtol=tol, atol=tol)
    if with_valid:
        assert val[0].item() == 0.0 and torch.equal(grad[0], torch.zeros_like(grad[0]))
        assert torch.equal(grad[~valid], torch.zeros_like(grad[~valid]))  # ignored elements get nothing


def test_matches_the_torch_backend_without_ties(monkeypatch):
    gen = torch.Generator().manual_seed(1)
    e = torch.rand(5, 3000, generator=gen, dtype=torch.float64)  # float64: no ties
    g = (torch.rand(5, 3000, generator=gen) < 0.4).double()
    valid = torch.rand(5, 3000, generator=gen) < 0.9
    upstream = torch.tensor([1.0, -0.5, 2.0, 0.25, 3.0], dtype=torch.float64)
    got = _value_and_grad(e, g, valid, upstream)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    x = e.clone().requires_grad_()
    want = lovasz_extension(x, g, valid)
    (want * upstream).sum().backward()
    torch.testing.assert_close(got[0], want.detach(), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[1], x.grad, rtol=1e-12, atol=1e-14)


def test_tied_errors_change_the_subgradient_but_not_the_loss(monkeypatch):
    e = (torch.randint(0, 3, (3, 500), generator=torch.Generator().manual_seed(2)).double() / 3)
    g = (torch.rand(3, 500, generator=torch.Generator().manual_seed(3)) < 0.5).double()
    got, grad = _value_and_grad(e, g, None, torch.ones(3, dtype=torch.float64))
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    want = lovasz_extension(e, g)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    # within a tied group the d values are shared out differently, their sum is the same
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    x = e.clone().requires_grad_()
    lovasz_extension(x, g).sum().backward()
    for r in range(3):
        for v in e[r].unique():
            sel = e[r] == v
            assert abs(grad[r][sel].sum().item() - x.grad[r][sel].sum().item()) < 1e-12


def test_nan_error_gives_nan_like_the_torch_backend(monkeypatch):
    e = torch.rand(2, 50, dtype=torch.float64)
    e[1, 7] = float("nan")
    g = (torch.arange(50) % 2).double().expand(2, 50)
    got = cpu_lovasz.lovasz_extension_cpu(e, g)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    want = lovasz_extension(e, g)
    assert torch.isfinite(got[0]) and torch.isnan(got[1]) and torch.isnan(want[1])
    torch.testing.assert_close(got[0], want[0])


def test_threads_give_identical_bits():
    e, g = _hard_rows(4097, seed=11, dtype=torch.float32)
    e = e.repeat(3, 1)
    g = g.repeat(3, 1)
    old = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            results.append(_value_and_grad(e, g, None, torch.ones(e.shape[0])))
    finally:
        torch.set_num_threads(old)
    for v, gr in results[1:]:
        assert torch.equal(v, results[0][0]) and torch.equal(gr, results[0][1])


def test_gradcheck_and_opcheck():
    gen = torch.Generator().manual_seed(4)
    e = torch.rand(3, 40, generator=gen, dtype=torch.float64, requires_grad=True)
    g = (torch.rand(3, 40, generator=gen) < 0.5).double()
    valid = torch.rand(3, 40, generator=gen) < 0.8
    assert torch.autograd.gradcheck(lambda t: cpu_lovasz.lovasz_extension_cpu(t, g, valid), (e,))
    torch.library.opcheck(torch.ops.fastloss.cpu_lovasz.default, (e, g, valid))
    torch.library.opcheck(torch.ops.fastloss.cpu_lovasz.default, (e.detach().float(), g.float(), None))


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_loss_on_the_compiled_path_matches_the_torch_backend(per_image, ignore_index, monkeypatch):
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 4, 9, 8, 7, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 1, 9, 8, 7), generator=gen)
    loss = LovaszSoftmaxLoss(per_image=per_image, ignore_index=ignore_index)
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    calls = []
    real = cpu_lovasz._lovasz_op
    monkeypatch.setattr(cpu_lovasz, "_lovasz_op", lambda *a: calls.append(1) or real(*a))
    xa = x.clone().requires_grad_()
    va = loss(xa, y)
    va.backward()
    assert calls, "the compiled kernel did not serve the CPU loss"
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    xb = x.clone().requires_grad_()
    vb = loss(xb, y)
    vb.backward()
    torch.testing.assert_close(va, vb, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-13)
