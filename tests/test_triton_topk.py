"""Radix-select TopK and the fused per-voxel CE (fastloss/ops/triton_topk.py) under TRITON_INTERPRET=1,
against torch.topk and F.cross_entropy in float64."""

import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from fastloss.ops import triton_topk  # noqa: E402
from fastloss.ops.triton_topk import topk_select_triton, topk_sum_triton, voxel_ce_triton  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)


@pytest.fixture
def many_programs(monkeypatch):
    """Small tiles and few programs: many partial histograms, a grid-stride loop, a partial last tile."""
    monkeypatch.setattr(triton_topk, "_INTERPRET_MAX_BLOCK", 512)
    monkeypatch.setattr(triton_topk, "_INTERPRET_MAX_PROGRAMS", 3)


def _check(v, k):
    s, thr, cg, ce = topk_select_triton(v, k)
    top = torch.topk(v.double(), k).values
    kth = top[-1]
    assert thr.dtype == torch.float32 and cg.dtype == torch.int64
    assert thr.item() == kth.item()  # the exact k-th largest value
    assert cg.item() == int((v.double() > kth).sum())
    assert ce.item() == int((v.double() == kth).sum())
    # exactly k values: Σ_{v > thr} v + (k − count_greater)·thr, float32 accumulation
    torch.testing.assert_close(s.double(), top.sum(), rtol=2e-6, atol=1e-5)
    # the 3-tuple API agrees
    s3, thr3, cg3 = topk_sum_triton(v, k)
    assert torch.equal(s3, s) and torch.equal(thr3, thr) and torch.equal(cg3, cg)


@pytest.mark.parametrize("k", [1, 2, 517, 4999, 5003])
def test_random_values(k):
    gen = torch.Generator().manual_seed(k)
    v = torch.rand(5003, generator=gen) * 7  # CE-like: non-negative
    _check(v, k)


@pytest.mark.parametrize("k", [1, 300, 301, 1000, 2999, 3001])
def test_heavy_ties(k, many_programs):
    gen = torch.Generator().manual_seed(1)
    v = torch.randint(0, 5, (3001,), generator=gen).float() * 0.25  # five distinct values
    _check(v, k)


def test_values_differing_in_low_bits_only(many_programs):
    """Keys equal in the first two digits: the third pass must separate them."""
    base = torch.tensor(1.5).view(torch.int32)
    v = (base + torch.arange(1000, dtype=torch.int32) % 600).view(torch.float32)
    for k in (1, 2, 333, 999, 1000):
        _check(v, k)


def test_negative_zero_inf_and_signs():
    v = torch.tensor([0.0, -0.0, -1.5, 3.0, float("inf"), -float("inf"), 2.0, -0.0, 0.0, 1e-38, -1e-38, 3.0])
    for k in range(1, v.numel() + 1):
        s, thr, cg, ce = topk_select_triton(v, k)
        top = torch.topk(v, k).values
        assert thr.item() == top[-1].item()
        assert cg.item() == int((v > top[-1]).sum()) and ce.item() == int((v == top[-1]).sum())
        # with +inf selected and the threshold −inf, both sums are inf + (−inf) = nan
        torch.testing.assert_close(s, top.sum(), rtol=1e-6, atol=1e-6, equal_nan=True)


def test_deterministic(many_programs):
    gen = torch.Generator().manual_seed(3)
    v = torch.rand(4000, generator=gen)
    a = topk_select_triton(v, 400)
    b = topk_select_triton(v, 400)
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_bad_arguments():
    v = torch.rand(10)
    with pytest.raises(ValueError, match=r"\[1, 10\]"):
        topk_sum_triton(v, 0)
    with pytest.raises(ValueError, match="got 11"):
        topk_sum_triton(v, 11)
    with pytest.raises(TypeError, match="float32"):
        topk_sum_triton(v.double(), 3)
    with pytest.raises(ValueError, match="1D"):
        topk_sum_triton(v.view(2, 5), 3)
    with pytest.raises(TypeError, match="int"):
        topk_sum_triton(v, 2.5)


def test_percent_topk_matches_nnunet_style():
    """The TopK-10 % CE: exactly ⌊10·M/100⌋ voxels, as torch.topk over the flattened per-voxel CE."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 11, 13, generator=gen)
    lab = torch.randint(0, 9, (2, 11, 13), generator=gen)
    ce = voxel_ce_triton(x, lab).reshape(-1)
    ref_ce = F.cross_entropy(x.double(), lab, reduction="none").reshape(-1)
    k = int(10 * ref_ce.numel() / 100)
    s, thr, cg = topk_sum_triton(ce, k)
    torch.testing.assert_close(s.double() / k, torch.topk(ref_ce, k).values.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("C", [1, 2, 9])
def test_voxel_ce_values_and_grad(C, many_programs):
    gen = torch.Generator().manual_seed(C)
    x = torch.randn(2, C, 9, 13, generator=gen) * 3
    lab = torch.randint(0, C, (2, 9, 13), generator=gen)
    lab.view(2, -1)[:, ::5] = 255  # ignored
    lab.view(2, -1)[:, 1::7] = C + 4  # out of range: also 0
    valid = (lab >= 0) & (lab < C)
    x64 = x.double().requires_grad_(True)
    ref = F.cross_entropy(x64, torch.where(valid, lab, 0), reduction="none") * valid
    xt = x.clone().requires_grad_(True)
    ce = voxel_ce_triton(xt, lab, ignore_index=255)
    assert ce.shape == (2, 9 * 13) and ce.dtype == torch.float32
    torch.testing.assert_close(ce.double(), ref.reshape(2, -1).detach(), rtol=1e-5, atol=1e-6)
    assert torch.all(ce[~valid.reshape(2, -1)] == 0)
    w = torch.randn(2, 9 * 13, generator=gen, dtype=torch.float64)
    (g_ref,) = torch.autograd.grad((ref.reshape(2, -1) * w).sum(), x64)
    (g,) = torch.autograd.grad((ce * w.float()).sum(), xt)
    torch.testing.assert_close(g.double(), g_ref, rtol=1e-5, atol=1e-6)


def test_voxel_ce_bfloat16_and_errors():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(1, 3, 50, generator=gen)
    lab = torch.randint(0, 3, (1, 50), generator=gen)
    xb = x.bfloat16().requires_grad_(True)
    ce = voxel_ce_triton(xb, lab)
    ref = F.cross_entropy(xb.detach().double(), lab, reduction="none")  # same rounded logits
    torch.testing.assert_close(ce.double(), ref, rtol=1e-5, atol=1e-5)
    ce.sum().backward()
    assert xb.grad.dtype == torch.bfloat16
    with pytest.raises(TypeError, match="integer"):
        voxel_ce_triton(x, lab.float())
    with pytest.raises(ValueError, match="B·N"):
        voxel_ce_triton(x, lab[:, :10])
    with pytest.raises(TypeError, match="float32/float16/bfloat16"):
        voxel_ce_triton(x.double(), lab)


def test_opcheck_voxel_ce():
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(2, 3, 20, generator=gen, requires_grad=True)
    lab = torch.randint(0, 3, (2, 20), generator=gen)
    torch.library.opcheck(torch.ops.fastloss.triton_voxel_ce.default, (x, lab, None))
    torch.library.opcheck(torch.ops.fastloss.triton_topk_select.default, (torch.rand(100, generator=gen), 7))
