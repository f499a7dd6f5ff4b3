"""Lovász extension kernels (fastloss/ops/triton_lovasz.py) under TRITON_INTERPRET=1 (or on a GPU), against
a naive loop over Eq. 13 written here in float64 and against the torch backend (fastloss/ops/lovasz.py)."""

import os

import numpy as np
import pytest
import torch

pytest.importorskip("triton")

from fastloss.ops import triton_lovasz  # noqa: E402
from fastloss.ops.lovasz import lovasz_extension  # noqa: E402
from fastloss.ops.triton_lovasz import lovasz_extension_triton, lovasz_rows_triton  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not INTERPRET, reason="Triton kernels need a GPU or TRITON_INTERPRET=1"
)
DEV = "cpu" if INTERPRET else "cuda"


@pytest.fixture(params=["one_block", "many_blocks"])
def blocks(request, monkeypatch):
    """one block per row (the interpreter default), or 256-element blocks whose partial sums are read
    in chunks of 4: a carried prefix across blocks and chunks, and a partial last block."""
    if request.param == "many_blocks":
        monkeypatch.setattr(triton_lovasz, "_INTERPRET_MAX_BLOCK", 256)
        monkeypatch.setattr(triton_lovasz, "_INTERPRET_PBLOCK", 4)
        monkeypatch.setattr(triton_lovasz, "_GPU_BLOCK", 256)
        monkeypatch.setattr(triton_lovasz, "_GPU_PBLOCK", 4)
    return request.param


# ----------------------------------------------------------------------------------------------------
# naive reference: Eq. 13, d_i = Δ(π_1..π_i) − Δ(π_1..π_{i−1}), each Δ from the explicit error set
# ----------------------------------------------------------------------------------------------------
def _jaccard_loss_of_set(g: np.ndarray, in_set: np.ndarray) -> float:
    """Δ_J of the error set S (in_set): 1 − |F \\ S| / |F ∪ S| with soft membership g of F."""
    inter = g[~in_set].sum()  # foreground not in the error set: still correctly predicted
    union = g.sum() + (1.0 - g[in_set]).sum()  # F ∪ S
    return 1.0 - inter / union


def naive_row(e_sorted: np.ndarray, g_sorted: np.ndarray):
    """(value, d) for one row already in the order of the sort, float64, by explicit sets."""
    n = e_sorted.shape[0]
    d = np.zeros(n)
    prev = 0.0  # Δ(∅) = 0
    for i in range(n):
        in_set = np.zeros(n, dtype=bool)
        in_set[: i + 1] = True
        cur = _jaccard_loss_of_set(g_sorted, in_set)
        d[i] = cur - prev
        prev = cur
    return float((e_sorted * d).sum()), d


def naive_extension(errors: torch.Tensor, gt: torch.Tensor, valid=None):
    """(values, dvalue/derrors) per row: ignored elements removed (Berman et al.'s ``ignore``), the rest in
    the order of torch.sort(descending) of the same key the implementations sort (so ties agree)."""
    R, N = errors.shape
    key = errors if valid is None else torch.where(valid, errors, torch.full_like(errors, -1.0))
    perm = torch.sort(key, dim=1, descending=True).indices.cpu().numpy()
    e = errors.detach().double().cpu().numpy()
    g = gt.double().cpu().numpy()
    v = np.ones((R, N), dtype=bool) if valid is None else valid.cpu().numpy()
    values = np.zeros(R)
    grad = np.zeros((R, N))
    for r in range(R):
        order = [k for k in perm[r] if v[r, k]]
        if not order:
            continue
        val, d = naive_row(e[r, order], g[r, order])
        values[r] = val
        grad[r, order] = d
    return torch.from_numpy(values), torch.from_numpy(grad)


def _rand_rows(R, N, seed, p_fg=0.3, soft=False):
    gen = torch.Generator().manual_seed(seed)
    e = torch.rand(R, N, generator=gen)
    if soft:
        g = torch.rand(R, N, generator=gen)
    else:
        g = torch.rand(R, N, generator=gen) < p_fg
    return e, g, gen


def _hard_rows(N, seed):
    """Rows with the awkward cases: absent class, all foreground, heavy ties, all-equal errors."""
    e, g, gen = _rand_rows(6, N, seed)
    g[1] = False  # G = 0: absent class
    g[2] = True  # all foreground
    e[3] = torch.randint(0, 4, (N,), generator=gen).float() / 4  # four distinct values: heavy ties
    e[4] = 0.375  # all equal
    return e, g


# ----------------------------------------------------------------------------------------------------
# lovasz_rows_triton: already-sorted rows
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("N", [1, 2, 7, 1000, 1283])
def test_rows_match_naive_eq13(N, blocks):
    e, g = _hard_rows(N, seed=N)
    order = torch.sort(e, dim=1, descending=True).indices
    se, sg = e.gather(1, order), g.gather(1, order)
    values, w = lovasz_rows_triton(se.to(DEV), sg.to(DEV))
    assert values.shape == (6,) and w.shape == (6, N)
    assert values.dtype == torch.float32 and w.dtype == torch.float32
    for r in range(6):
        ref_v, ref_d = naive_row(se[r].double().numpy(), sg[r].double().numpy())
        torch.testing.assert_close(w[r].cpu().double(), torch.from_numpy(ref_d), rtol=2e-6, atol=1e-12)
        torch.testing.assert_close(values[r].cpu().double(), torch.tensor(ref_v, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)


def test_rows_soft_foreground_match_naive(blocks):
    N = 700
    e, g, _ = _rand_rows(3, N, seed=5, soft=True)
    g[2, :350] = 0.0  # soft and exact zeros mixed
    order = torch.sort(e, dim=1, descending=True).indices
    se, sg = e.gather(1, order), g.gather(1, order)
    values, w = lovasz_rows_triton(se.to(DEV), sg.to(DEV))
    for r in range(3):
        ref_v, ref_d = naive_row(se[r].double().numpy(), sg[r].double().numpy())
        torch.testing.assert_close(w[r].cpu().double(), torch.from_numpy(ref_d), rtol=2e-5, atol=1e-9)
        torch.testing.assert_close(values[r].cpu().double(), torch.tensor(ref_v, dtype=torch.float64),
                                   rtol=1e-5, atol=1e-6)


def test_rows_closed_forms(blocks):
    """Cases with a value known without any Jaccard code.

    all-equal errors c: Σ d_i = J_N = 1 (the last intersection is empty), so the value is c;
    absent class (G = 0): J_i = 1 for i ≥ 1, so d = (1, 0, ..., 0) and the value is the largest error;
    N = 1: J_1 = 1 whatever g is, so d = 1 and the value is the error.
    """
    N = 1031
    e = torch.full((2, N), 0.625)
    g = torch.zeros(2, N, dtype=torch.bool)
    g[0, ::3] = True
    values, w = lovasz_rows_triton(e.to(DEV), g.to(DEV))
    torch.testing.assert_close(values.cpu(), torch.tensor([0.625, 0.625]), rtol=2e-6, atol=0)
    torch.testing.assert_close(w.sum(1).cpu().double(), torch.ones(2, dtype=torch.float64), rtol=1e-5, atol=0)
    # absent class, distinct sorted errors
    se = torch.linspace(0.9, 0.1, N).unsqueeze(0)
    values, w = lovasz_rows_triton(se.to(DEV), torch.zeros(1, N, device=DEV))
    expected_w = torch.zeros(1, N)
    expected_w[0, 0] = 1.0
    assert torch.equal(w.cpu(), expected_w)
    torch.testing.assert_close(values.cpu(), se[:, 0], rtol=1e-6, atol=0)
    # N = 1
    for gv in (0.0, 1.0, 0.4):
        values, w = lovasz_rows_triton(torch.tensor([[0.3]], device=DEV), torch.tensor([[gv]], device=DEV))
        torch.testing.assert_close(values.cpu(), torch.tensor([0.3]))
        torch.testing.assert_close(w.cpu(), torch.tensor([[1.0]]))


def test_rows_gt_dtypes_agree():
    e, g, _ = _rand_rows(2, 900, seed=11)
    se = torch.sort(e, dim=1, descending=True).values.to(DEV)
    outs = [lovasz_rows_triton(se, g.to(dtype).to(DEV))
            for dtype in (torch.bool, torch.uint8, torch.float16, torch.bfloat16, torch.float32, torch.float64)]
    for v, w in outs[1:]:
        assert torch.equal(v, outs[0][0]) and torch.equal(w, outs[0][1])


# ----------------------------------------------------------------------------------------------------
# lovasz_extension_triton: sort + fused gather/scatter, autograd
# ----------------------------------------------------------------------------------------------------
def _torch_extension(e, g, valid):
    """The torch backend's lovasz_extension (torch.sort, as the Triton path uses it, so that tied errors
    take the same order; CPU tensors would otherwise go to the compiled kernel, whose radix sort is
    stable)."""
    old = os.environ.get("FASTLOSS_BACKEND")
    os.environ["FASTLOSS_BACKEND"] = "torch"
    try:
        return lovasz_extension(e, g, valid)
    finally:
        if old is None:
            del os.environ["FASTLOSS_BACKEND"]
        else:
            os.environ["FASTLOSS_BACKEND"] = old


def _value_and_grad(fn, e, g, valid, upstream):
    x = e.clone().requires_grad_()
    out = fn(x, g, valid)
    (out * upstream).sum().backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("with_valid", [False, True])
@pytest.mark.parametrize("N", [1, 1000, 2049])
def test_extension_matches_naive_and_torch_backend(N, with_valid, blocks):
    e, g = _hard_rows(N, seed=100 + N)
    valid = None
    if with_valid:
        gen = torch.Generator().manual_seed(N)
        valid = torch.rand(6, N, generator=gen) < 0.8
        valid[5] = False  # a row with nothing counted: value 0, gradient 0
        valid[0, 0] = True
    upstream = torch.linspace(-1.0, 2.0, 6)
    e, g, upstream = e.to(DEV), g.to(DEV), upstream.to(DEV)
    valid = None if valid is None else valid.to(DEV)
    val, grad = _value_and_grad(lovasz_extension_triton, e, g, valid, upstream)
    assert val.dtype == torch.float32 and grad.dtype == torch.float32 and grad.shape == e.shape

    ref_v, ref_d = naive_extension(e, g, valid)
    torch.testing.assert_close(val.cpu().double(), ref_v, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.cpu().double(), ref_d * upstream.cpu().double().unsqueeze(1), rtol=2e-6,
                               atol=1e-12)
    # the torch backend, in float64 (same sort call, so the same tie-breaking)
    tv, tgrad = _value_and_grad(_torch_extension, e.double(), g.double(), valid, upstream.double())
    torch.testing.assert_close(val.cpu().double(), tv.cpu(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.cpu().double(), tgrad.cpu(), rtol=2e-6, atol=1e-12)
    if with_valid:
        assert val[5].item() == 0.0 and torch.all(grad[5] == 0)
        assert torch.all(grad[~valid] == 0)


def test_extension_soft_foreground_vs_torch_backend(blocks):
    e, g, _ = _rand_rows(4, 1500, seed=3, soft=True)
    g[1] = 0.0
    upstream = torch.tensor([1.0, -0.5, 2.0, 0.25])
    e, g, upstream = e.to(DEV), g.to(DEV), upstream.to(DEV)
    val, grad = _value_and_grad(lovasz_extension_triton, e, g, None, upstream)
    tv, tgrad = _value_and_grad(_torch_extension, e.double(), g.double(), None, upstream.double())
    torch.testing.assert_close(val.double(), tv, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), tgrad, rtol=2e-5, atol=1e-9)


def test_extension_ties_value_is_order_free(blocks):
    """Heavy ties: the value of a tied group is e·(J_end − J_start), independent of the tie order, and the
    group's gradient sums to the same; checked against the naive loop with a *different* tie order."""
    N = 1500
    gen = torch.Generator().manual_seed(9)
    e = (torch.randint(0, 3, (2, N), generator=gen).float() / 3).to(DEV)
    g = (torch.rand(2, N, generator=gen) < 0.5).to(DEV)
    val, grad = _value_and_grad(lovasz_extension_triton, e, g, None, torch.ones(2, device=DEV))
    en, gn = e.double().cpu().numpy(), g.double().cpu().numpy()
    for r in range(2):
        order = np.lexsort((np.arange(N)[::-1], -en[r]))  # descending error, ties reversed by index
        ref_v, ref_d = naive_row(en[r, order], gn[r, order])
        assert abs(val[r].item() - ref_v) < 1e-5
        ref_grad = np.zeros(N)
        ref_grad[order] = ref_d
        for level in np.unique(en[r]):
            grp = en[r] == level
            assert abs(grad[r].cpu().double().numpy()[grp].sum() - ref_grad[grp].sum()) < 1e-5


def test_deterministic_bitwise(blocks):
    e, g, _ = _rand_rows(3, 2500, seed=21)
    e, g = e.to(DEV), g.to(DEV)
    up = torch.tensor([0.5, 1.0, -2.0], device=DEV)
    a = _value_and_grad(lovasz_extension_triton, e, g, None, up)
    b = _value_and_grad(lovasz_extension_triton, e, g, None, up)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_rows_and_extension_agree():
    """lovasz_rows_triton's d, scattered back through the sort, is the extension's gradient."""
    e, g, _ = _rand_rows(3, 800, seed=4)
    e, g = e.to(DEV), g.to(DEV)
    val, grad = _value_and_grad(lovasz_extension_triton, e, g, None, torch.ones(3, device=DEV))
    se, perm = torch.sort(e, dim=1, descending=True)
    v2, w2 = lovasz_rows_triton(se, g.gather(1, perm))
    assert torch.equal(val, v2)
    assert torch.equal(grad, torch.zeros_like(grad).scatter(1, perm, w2))


def test_empty_rows():
    out = lovasz_extension_triton(torch.zeros(3, 0, device=DEV), torch.zeros(3, 0, device=DEV))
    assert out.shape == (3,) and torch.all(out == 0)
    v, w = lovasz_rows_triton(torch.zeros(0, 5, device=DEV), torch.zeros(0, 5, device=DEV))
    assert v.shape == (0,) and w.shape == (0, 5)


def test_bad_input():
    e = torch.rand(2, 10, device=DEV)
    g = torch.rand(2, 10, device=DEV) < 0.5
    with pytest.raises(TypeError, match="float32"):
        lovasz_extension_triton(e.double(), g)
    with pytest.raises(TypeError, match="bool, uint8 or floating"):
        lovasz_extension_triton(e, g.long())
    with pytest.raises(ValueError, match=r"\(R, N\)"):
        lovasz_extension_triton(e.reshape(20), g.reshape(20))
    with pytest.raises(ValueError, match="shape"):
        lovasz_rows_triton(e, g[:, :5])
    with pytest.raises(TypeError, match="bool tensor"):
        lovasz_extension_triton(e, g, valid=torch.ones(2, 10, device=DEV))
    with pytest.raises(ValueError, match="shape"):
        lovasz_extension_triton(e, g, valid=torch.ones(2, 9, dtype=torch.bool, device=DEV))
    with pytest.raises(TypeError, match="torch.Tensor"):
        lovasz_rows_triton([[0.1]], g)


def test_opcheck():
    e, g, _ = _rand_rows(2, 64, seed=2)
    e, g = e.to(DEV), g.to(DEV)
    valid = torch.rand(2, 64, device=DEV) < 0.7
    torch.library.opcheck(torch.ops.fastloss.triton_lovasz_extension.default, (e.requires_grad_(), g, valid))
    torch.library.opcheck(torch.ops.fastloss.triton_lovasz_extension.default, (e, g.float(), None))
    se = torch.sort(e.detach(), dim=1, descending=True).values
    torch.library.opcheck(torch.ops.fastloss.triton_lovasz_rows.default, (se, g.float()))


def test_torch_compile_fullgraph():
    """The custom op traces as one opaque node with its autograd formula: same value and gradient."""
    def f(x, g, v):
        return (lovasz_extension_triton(torch.sigmoid(x), g, v) * torch.tensor([1.0, -2.0, 0.5], device=DEV)).sum()

    gen = torch.Generator().manual_seed(8)
    x = torch.randn(3, 500, generator=gen).to(DEV).requires_grad_()
    g = (torch.rand(3, 500, generator=gen) < 0.4).to(DEV)
    v = (torch.rand(3, 500, generator=gen) < 0.9).to(DEV)
    out = torch.compile(f, fullgraph=True)(x, g, v)
    (gc,) = torch.autograd.grad(out, x)
    out_e = f(x, g, v)
    (ge,) = torch.autograd.grad(out_e, x)
    assert torch.equal(out, out_e)
    torch.testing.assert_close(gc, ge, rtol=1e-6, atol=1e-9)
