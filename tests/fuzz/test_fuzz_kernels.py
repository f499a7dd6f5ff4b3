"""Fuzz: the compiled TopK select and weights, the Lovász rows and the per-voxel CE against torch
(``torch.topk``, the torch-sort Lovász of ``ops/lovasz.py``, ``F.cross_entropy``) on random sizes (one value,
ties, NaN, ±inf, ±0, a single bucket of the radix select), thread counts and layouts. See ``_fuzz.py``."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("hypothesis")
from hypothesis import given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from _fuzz import TORCH_LAYOUTS, fuzz_settings, torch_layout  # noqa: E402
from fastloss.ops import cpu_stats  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_stats.available(), reason="fastloss._C has no CPU loss kernels")


@st.composite
def value_vectors(draw):
    m = draw(st.sampled_from([1, 2, 3, 7, 100, 4097, 20000, 70000]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    kind = draw(st.sampled_from(["normal", "ties", "one_bucket", "special", "positive"]))
    if kind == "normal":
        v = torch.randn(m, generator=g) * draw(st.sampled_from([1e-30, 1.0, 1e30]))
    elif kind == "ties":
        v = torch.randint(-3, 4, (m,), generator=g).float() * 0.5
    elif kind == "one_bucket":
        v = 1.0 + torch.rand(m, generator=g) * 0.2
    elif kind == "positive":
        v = torch.rand(m, generator=g)
    else:
        pool = torch.tensor([0.0, -0.0, 1.0, -1.0, float("inf"), -float("inf"), 3.4e38, -3.4e38, 1e-45, 5.0])
        v = pool[torch.randint(0, pool.numel(), (m,), generator=g)]
        if draw(st.booleans()):
            v[torch.randint(0, m, (max(1, m // 50),), generator=g)] = float("nan")
    k = draw(st.integers(1, m))
    return v.contiguous(), k


@fuzz_settings(150)
@given(value_vectors(), st.sampled_from([1, 2, 3]))
def test_topk_select_matches_torch_topk(case, threads):
    v, k = case
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        s, thr, cg, ce = cpu_stats.topk_select_cpu(v, k)
    finally:
        torch.set_num_threads(before)
    top = torch.topk(v.double(), k).values  # NaN above +inf, as the kernel orders them
    if torch.isnan(top).any():
        assert torch.isnan(s)
        return
    with torch.no_grad():
        want = top.sum()
    if torch.isfinite(want):
        torch.testing.assert_close(s.double(), want.float().double(), rtol=1e-6, atol=1e-30)
    else:
        assert s.item() == want.item() or (torch.isnan(s) and torch.isnan(want))
    kth = top[-1].item()
    assert thr.item() == kth or (kth == 0.0 and thr.item() == 0.0)  # -0.0 and 0.0 are one key
    assert cg.item() == int((v > thr).sum()) and ce.item() == int((v == thr).sum())
    if cpu_stats.topk_weights_cpu is not None and ce.item() > 0:
        share = torch.tensor((k - cg.item()) / ce.item(), dtype=torch.float32)
        grad = torch.tensor(0.5)
        w = cpu_stats.topk_weights_cpu(v, thr, share, grad)
        want_w = grad * torch.where(v > thr, torch.ones(()), torch.where(v == thr, share, torch.zeros(())))
        assert torch.equal(w, want_w)


@fuzz_settings(80)
@given(st.integers(1, 6), st.sampled_from([1, 2, 5, 64, 1000, 5000]), st.sampled_from([torch.float32, torch.float64]),
       st.booleans(), st.sampled_from(TORCH_LAYOUTS), st.integers(0, 2**31 - 1), st.data())
def test_lovasz_rows_match_the_torch_sort(R, P, dtype, with_valid, layout, seed, data):
    from fastloss.ops import cpu_lovasz
    from fastloss.ops.lovasz import lovasz_extension

    g = torch.Generator().manual_seed(seed)
    errors = torch.rand(R, P, generator=g, dtype=torch.float64).to(dtype)
    if data.draw(st.booleans()):
        errors = (errors * 4).round() / 4  # ties
    fg = (torch.rand(R, P, generator=g) > data.draw(st.sampled_from([0.0, 0.5, 1.0]))).to(dtype)
    valid = (torch.rand(R, P, generator=g) > 0.3) if with_valid else None
    e_ref, e_view = torch_layout(errors, layout, data.draw)
    e_view = e_view.detach().requires_grad_()
    got = cpu_lovasz.lovasz_extension_cpu(e_view, fg, valid)
    old = os.environ.get("FASTLOSS_BACKEND")
    os.environ["FASTLOSS_BACKEND"] = "torch"
    try:
        e64 = e_ref.double().contiguous().requires_grad_()
        want = lovasz_extension(e64, fg.double(), valid)
    finally:
        if old is None:
            os.environ.pop("FASTLOSS_BACKEND")
        else:
            os.environ["FASTLOSS_BACKEND"] = old
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
    (ga,) = torch.autograd.grad(got.sum(), e_view)
    assert ga.shape == (R, P) and torch.isfinite(ga).all()
    if valid is not None:
        assert (ga[~valid] == 0).all()


@fuzz_settings(80)
@given(st.integers(1, 3), st.integers(2, 6), st.lists(st.integers(1, 9), min_size=1, max_size=3),
       st.sampled_from([torch.float32, torch.float64, torch.float16, torch.bfloat16]), st.sampled_from(TORCH_LAYOUTS),
       st.sampled_from([None, 255, 0]), st.integers(0, 2**31 - 1), st.data())
def test_voxel_ce_matches_cross_entropy(B, C, spatial, dtype, layout, ignore, seed, data):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn([B, C] + spatial, generator=g, dtype=torch.float64) * 5).to(dtype)
    lab = torch.randint(0, C, [B] + spatial, generator=g)
    if ignore is not None:
        lab[torch.rand(lab.shape, generator=g) < 0.3] = ignore
    x_ref, x_view = torch_layout(x, layout, data.draw)
    lab_ref, lab_view = torch_layout(lab.to(data.draw(st.sampled_from([torch.int64, torch.int32, torch.uint8]))),
                                     data.draw(st.sampled_from(["contiguous", "stepped", "padded"])), data.draw)
    if not cpu_stats.voxel_ce_supported(x_view, lab_view):
        return
    xa = x_view.detach().requires_grad_()
    ce = cpu_stats.voxel_ce_cpu(xa, lab_view, ignore)
    x64 = x_ref.double().contiguous().requires_grad_()
    want = F.cross_entropy(x64, lab_ref.long(), ignore_index=-1000 if ignore is None else ignore,
                           reduction="none").reshape(B, -1)
    tol = 1e-10 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(ce.double(), want, rtol=tol, atol=tol)
    w = torch.rand(want.shape, dtype=torch.float64, generator=g)
    (ga,) = torch.autograd.grad((ce.double() * w).sum(), xa)
    (gb,) = torch.autograd.grad((want * w).sum(), x64)
    # dx is stored in the input's dtype: its rounding (float16: 2^-11, bfloat16: 2^-8) relative to max |dx|
    gtol = {torch.float64: 1e-9, torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    gs = gb.abs().max().clamp_min(1e-6)
    torch.testing.assert_close(ga.double() / gs, gb / gs, rtol=gtol, atol=gtol)
