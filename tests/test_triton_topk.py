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


# ----------------------------------------------------------------------------------------------------
# NaN and ±inf: torch.topk's order (a NaN of either sign above +inf)
# ----------------------------------------------------------------------------------------------------
def _nan_from_bits(bits: int) -> torch.Tensor:
    return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32)[0]


NEG_NAN = torch.tensor(float("nan")).neg()  # sign bit set
X86_NAN = _nan_from_bits(0xFFC00000)  # what x86 produces for inf − inf
NEG_NAN_MAX_PAYLOAD = _nan_from_bits(0xFFFFFFFF)
POS_NAN_MIN_PAYLOAD = _nan_from_bits(0x7F800001)


def test_nan_fixtures_have_the_intended_sign_bits():
    for nan, negative in ((NEG_NAN, True), (X86_NAN, True), (NEG_NAN_MAX_PAYLOAD, True),
                          (POS_NAN_MIN_PAYLOAD, False), (torch.tensor(float("nan")), False)):
        assert torch.isnan(nan)
        assert (nan.reshape(1).view(torch.int32).item() < 0) == negative
    inf = torch.tensor(float("inf"))
    assert (inf - inf).reshape(1).view(torch.int32).item() < 0  # the bug's trigger, on this CPU


def _nan_rank_check(v, k, s, thr, cg):
    """k-th largest and count_greater in torch.topk's order, NaN counted above everything else."""
    top = torch.topk(v, k).values  # sorted, NaN first
    torch.testing.assert_close(s, top.sum(), equal_nan=True)  # sum: NaN as soon as one NaN is kept
    kth = top[-1]
    if torch.isnan(kth):
        assert torch.isnan(thr)
    else:
        assert thr.item() == kth.item()
        assert cg.item() == int((torch.isnan(v) | (v > kth)).sum())


@pytest.mark.parametrize("nan", [NEG_NAN, X86_NAN, NEG_NAN_MAX_PAYLOAD, POS_NAN_MIN_PAYLOAD,
                                 torch.tensor(float("nan"))], ids=["neg", "x86", "negmax", "posmin", "pos"])
def test_nan_of_either_sign_sorts_above_inf(nan):
    # the case: [1, 2, 3, 0.5, −nan] with k = 1 must give NaN, not 3.0
    v = torch.stack([torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), torch.tensor(0.5), nan])
    s, thr, cg, _ = topk_select_triton(v, 1)
    assert torch.isnan(s) and torch.isnan(thr) and cg.item() == 0
    for k in range(1, 6):
        _nan_rank_check(v, k, *topk_select_triton(v, k)[:3])
    # with ±inf around: +inf is the largest non-NaN, −inf the smallest
    inf = float("inf")
    w = torch.stack([torch.tensor(inf), torch.tensor(1.0), nan, torch.tensor(-inf), torch.tensor(-2.0)])
    for k in range(1, 6):
        s, thr, cg, _ = topk_select_triton(w, k)
        _nan_rank_check(w, k, s, thr, cg)
        assert torch.isnan(s)  # the NaN is always among the k largest
    s, thr, cg, ce = topk_select_triton(w, 2)
    assert thr.item() == inf and cg.item() == 1 and ce.item() == 1


def test_nan_far_from_the_top_in_many_programs(many_programs):
    """Two NaNs of opposite signs in different tiles of a long vector: both above every finite value."""
    gen = torch.Generator().manual_seed(11)
    v = torch.rand(3001, generator=gen) * 5
    v[17] = NEG_NAN
    v[2900] = float("nan")
    for k in (1, 2, 3, 300):
        s, thr, cg, _ = topk_select_triton(v, k)
        _nan_rank_check(v, k, s, thr, cg)
    finite = v[~torch.isnan(v)]
    s, thr, cg, _ = topk_select_triton(v, 3)
    assert thr.item() == finite.max().item() and cg.item() == 2


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_topk_sum_dispatch_agrees_on_nan_and_inf(backend, monkeypatch):
    """fastloss.ops.topk.topk_sum (what TopKLoss calls) on both paths: NaN of either sign is selected."""
    from fastloss.ops.topk import topk_sum

    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    v = torch.tensor([1.0, 2.0, 3.0, 0.5, 0.0])
    v[4] = X86_NAN
    assert torch.isnan(topk_sum(v, 1))
    inf = float("inf")
    w = torch.tensor([1.0, inf, 3.0, -inf])
    assert topk_sum(w, 1).item() == inf and topk_sum(w, 3).item() == inf
    assert torch.isnan(topk_sum(w, 4))  # inf + (−inf)
    finite = torch.tensor([4.0, -1.0, 2.5])
    assert topk_sum(finite, 2).item() == 6.5


def test_voxel_ce_non_finite_logits_match_torch():
    """Per voxel, as F.cross_entropy: NaN (either sign) or +inf anywhere -> NaN; −inf on the label ->
    +inf; −inf on another class -> the finite limit p_c = 0."""
    gen = torch.Generator().manual_seed(12)
    x = torch.randn(1, 3, 8, generator=gen)
    lab = torch.tensor([[0, 1, 2, 0, 1, 2, 0, 1]])
    inf = float("inf")
    x[0, 1, 0] = NEG_NAN  # voxel 0: −NaN on another class
    x[0, 1, 1] = float("nan")  # voxel 1: NaN on the label
    x[0, 0, 2] = inf  # voxel 2: +inf on another class (torch: NaN, not the limit +inf)
    x[0, 0, 3] = inf  # voxel 3: +inf on the label
    x[0, 1, 4] = -inf  # voxel 4: −inf on the label -> +inf
    x[0, 0, 5] = -inf  # voxel 5: −inf on another class -> finite
    ce = voxel_ce_triton(x, lab)[0]
    ref = F.cross_entropy(x.double(), lab, reduction="none")[0]
    assert torch.isnan(ce[:4]).all() and torch.isnan(ref[:4]).all()
    assert ce[4].item() == inf and ref[4].item() == inf
    torch.testing.assert_close(ce[5:].double(), ref[5:], rtol=1e-5, atol=1e-6)
    # ignored voxels stay 0 whatever their logits
    ce_ign = voxel_ce_triton(x, torch.full_like(lab, 255), ignore_index=255)
    assert torch.equal(ce_ign, torch.zeros_like(ce_ign))
