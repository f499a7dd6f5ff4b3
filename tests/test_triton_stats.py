"""The fused statistics kernels (fastloss/ops/triton_stats.py) under TRITON_INTERPRET=1 on CPU tensors,
against the torch backend evaluated in float64 (values and gradients through a random linear
functional of the (B, C, K) statistics)."""

import os

import pytest
import torch

pytest.importorskip("triton")

from fastloss._validation import Target, prepare_target  # noqa: E402
from fastloss.ops import triton_stats  # noqa: E402
from fastloss.ops.stats import StatsSpec, class_stats, class_stats_torch  # noqa: E402
from fastloss.ops.triton_stats import SUPPORTED_COLUMNS as COLUMNS  # noqa: E402  (every column)
from fastloss.ops.triton_stats import class_stats_triton, supports  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)

SPATIAL = (7, 11, 13)  # 1001 voxels: odd, leaves partial blocks
NO_MAP = tuple(c for c in COLUMNS if not c.startswith("map_"))


@pytest.fixture
def small_blocks(monkeypatch):
    """Force many programs (and a partial last block) under the interpreter."""
    monkeypatch.setattr(triton_stats, "_INTERPRET_MAX_BLOCK", 512)


def _logits(B, C, act, gen, dtype=torch.float32, spatial=SPATIAL):
    if act == "none":  # probabilities in (0, 1)
        x = torch.rand((B, C) + spatial, generator=gen, dtype=torch.float64) * 0.96 + 0.02
    else:
        x = torch.randn((B, C) + spatial, generator=gen, dtype=torch.float64) * 2.5
    return x.to(dtype)


def _labels(B, C, gen, spatial=SPATIAL, ignore=None):
    lab = torch.randint(0, max(C, 2), (B,) + spatial, generator=gen)
    if ignore is not None:
        lab.view(B, -1)[:, ::7] = ignore
    return lab


def _close(got, ref, torch32, rtol, atol):
    """|got − ref| ≤ atol + rtol·|ref| + 2·|torch32 − ref| elementwise: float64 reference, slack scaled to the
    torch backend's own float32 error at that element (e.g. −log p for p → 1 loses digits in float32)."""
    err = (got - ref).abs()
    bound = atol + rtol * ref.abs() + 2 * (torch32 - ref).abs()
    bad = err > bound
    assert not bad.any(), (
        f"{int(bad.sum())} of {bad.numel()} elements off; worst excess {float((err - bound).max()):.3g} "
        f"(err {float(err[bad].max()):.3g})"
    )


def _compare(x, target, spec, vmap=None, gen=None, rtol=2e-5, atol=2e-4, gatol=2e-5):
    """Triton (input dtype) vs torch backend in float64: values and dL/dx for L = Σ W·stats."""
    x = x.detach()

    def run(fn, xx, vm):
        xx = xx.clone().requires_grad_(True)
        out = fn(xx, target, spec, vm)
        if not out.requires_grad:  # only target columns: no gradient on either side
            return out, None
        (g,) = torch.autograd.grad((out * W.to(out.dtype)).sum(), xx)
        return out, g

    W = torch.randn((x.shape[0], x.shape[1], len(spec.columns)), generator=gen, dtype=torch.float64)
    out, g = run(class_stats_triton, x, vmap)
    assert out.dtype == torch.float32 and out.shape == x.shape[:2] + (len(spec.columns),)
    ref, g_ref = run(class_stats_torch, x.double(), None if vmap is None else vmap.double())
    t32, g32 = run(class_stats_torch, x.float(), None if vmap is None else vmap.float())
    _close(out.double(), ref.detach(), t32.double().detach(), rtol, atol)
    assert (g is None) == (g_ref is None)
    if g is not None:
        assert g.dtype == x.dtype and g.shape == x.shape
        _close(g.double(), g_ref, g32.double(), 1e-4, gatol)
    return out, g


@pytest.mark.parametrize("act", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("C", [1, 2, 3, 9, 14])
def test_all_columns_labels_sentinel_ignore(act, C):
    gen = torch.Generator().manual_seed(C * 10 + len(act))
    B = 2
    x = _logits(B, C, act, gen)
    lab = _labels(B, C, gen, ignore=255)
    target = prepare_target(x, lab, ignore_index=255)
    vmap = torch.randn((B, C) + SPATIAL, generator=gen)
    spec = StatsSpec(act, COLUMNS, gamma=2.0, alpha=0.25 if C % 2 else None, ce_exponent=0.3)
    out, _ = _compare(x, target, spec, vmap, gen)
    # ignored voxels are not counted
    n_counted = (lab != 255).sum(dim=(1, 2, 3)).double()
    assert torch.equal(out[:, :, COLUMNS.index("count")].double(), n_counted[:, None].expand(B, C))


@pytest.mark.parametrize("act", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("C", [2, 9])
def test_soft_target_with_class_index_ignore(act, C, small_blocks):
    gen = torch.Generator().manual_seed(100 + C)
    B = 2
    x = _logits(B, C, act, gen)
    soft = torch.softmax(torch.randn((B, C) + SPATIAL, generator=gen) * 3, dim=1)
    # MONAI's one-hot ignore convention with a class index: mask = 1 − soft[:, ignore]
    target = prepare_target(x, soft, ignore_index=1)
    assert target.soft is not None and target.mask is not None
    vmap = torch.rand((B, 1) + SPATIAL, generator=gen) * 4  # one map shared by all classes
    spec = StatsSpec(act, COLUMNS, gamma=1.5, alpha=0.3, ce_exponent=0.5)
    _compare(x, target, spec, vmap, gen)


def test_labels_class_index_ignore_and_gamma0():
    gen = torch.Generator().manual_seed(7)
    x = _logits(2, 3, "softmax", gen)
    lab = _labels(2, 3, gen)
    target = prepare_target(x, lab, ignore_index=0)  # class 0's voxels are ignored
    out, _ = _compare(x, target, StatsSpec("softmax", NO_MAP, gamma=0.0, alpha=0.4), None, gen)
    assert torch.all(out[:, 0, NO_MAP.index("g")] == 0)


def test_none_activation_log_eps():
    gen = torch.Generator().manual_seed(8)
    x = _logits(2, 3, "none", gen)
    x.view(-1)[::5] = 1e-4  # below eps: log is clamped and the gradient of log vanishes there
    lab = _labels(2, 3, gen)
    target = prepare_target(x, lab)
    _compare(x, target, StatsSpec("none", ("ce", "focal", "ce_pow", "pg", "p"), log_eps=1e-3), None, gen,
             gatol=1e-4)


def test_out_of_range_labels_are_ignored(monkeypatch):
    """Labels outside [0, C) that are not ignore_index count as ignored voxels (never read out of bounds)."""
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    gen = torch.Generator().manual_seed(9)
    B, C = 2, 3
    x = _logits(B, C, "softmax", gen)
    lab = _labels(B, C, gen, ignore=-100)
    flat = lab.view(B, -1)
    flat[:, 1::11] = 3
    flat[:, 2::13] = -7
    flat[:, 3::17] = 1 << 40
    target = prepare_target(x, lab, ignore_index=-100)
    # reference: the same voxels explicitly masked out
    valid = ((flat >= 0) & (flat < C)).to(torch.float64)
    ref_target = Target(flat, None, valid, C, SPATIAL, None)
    spec = StatsSpec("softmax", NO_MAP)
    out = class_stats_triton(x, target, spec)
    ref = class_stats_torch(x.double(), ref_target, spec)
    torch.testing.assert_close(out.double(), ref, rtol=2e-5, atol=2e-4)
    assert torch.equal(out[:, 0, NO_MAP.index("count")].double(), valid.sum(1))


def test_absent_class_and_one_hot_target():
    gen = torch.Generator().manual_seed(10)
    B, C = 2, 4
    x = _logits(B, C, "softmax", gen)
    lab = _labels(B, C, gen)
    lab[lab == 2] = 1  # class 2 absent from the batch
    onehot = torch.nn.functional.one_hot(lab, C).movedim(-1, 1)  # integer one-hot target
    for target in (prepare_target(x, lab), prepare_target(x, onehot)):
        out, _ = _compare(x, target, StatsSpec("softmax", NO_MAP), None, gen)
        assert out[:, 2, NO_MAP.index("g")].eq(0).all() and torch.isfinite(out).all()
        assert out[:, 2, NO_MAP.index("p")].gt(0).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
def test_half_inputs_error_within_torch_own(dtype, act):
    """Half logits: the kernels' error against the float32 result is at most a small multiple of the torch
    backend's own error on the same half input (both see the same rounded logits)."""
    gen = torch.Generator().manual_seed(11)
    B, C = 2, 9
    x32 = _logits(B, C, act, gen)
    xh = x32.to(dtype)
    lab = _labels(B, C, gen, ignore=255)
    target = prepare_target(x32, lab, ignore_index=255)
    spec = StatsSpec(act, NO_MAP, alpha=0.25)
    W = torch.randn((B, C, len(NO_MAP)), generator=gen)

    def run(fn, x):
        x = x.detach().clone().requires_grad_(True)
        out = fn(x, target, spec)
        (g,) = torch.autograd.grad((out * W).sum(), x)
        return out.double(), g.double()

    ref_v, ref_g = run(class_stats_torch, x32)
    th_v, th_g = run(class_stats_torch, xh)
    tr_v, tr_g = run(class_stats_triton, xh)
    assert tr_g.dtype == torch.float64  # (converted) -- the kernel wrote the gradient in `dtype`
    err_torch_v = (th_v - ref_v).abs().max()
    err_torch_g = (th_g - ref_g).abs().max()
    assert err_torch_v > 0 and err_torch_g > 0  # half precision really costs something
    assert (tr_v - ref_v).abs().max() <= 2 * err_torch_v + 1e-3
    assert (tr_g - ref_g).abs().max() <= 2 * err_torch_g
    # and the kernel equals torch on the same half input up to float32 rounding + one output ulp
    torch.testing.assert_close(tr_v, th_v, rtol=1e-5, atol=1e-3)
    ulp = 2.0 ** -10 if dtype == torch.float16 else 2.0 ** -7
    assert ((tr_g - th_g).abs() <= ulp * th_g.abs() + 1e-6).all()


def test_bitwise_reproducible(small_blocks):
    gen = torch.Generator().manual_seed(12)
    B, C = 2, 9
    x = _logits(B, C, "softmax", gen)
    lab = _labels(B, C, gen, ignore=255)
    target = prepare_target(x, lab, ignore_index=255)
    spec = StatsSpec("softmax", NO_MAP)
    W = torch.randn((B, C, len(NO_MAP)), generator=gen)
    runs = []
    for _ in range(2):
        xt = x.clone().requires_grad_(True)
        out = class_stats_triton(xt, target, spec)
        (g,) = torch.autograd.grad((out * W).sum(), xt)
        runs.append((out, g))
    assert torch.equal(runs[0][0], runs[1][0]) and torch.equal(runs[0][1], runs[1][1])
    # many programs give the same answer as one (up to float32 summation order)
    triton_stats._INTERPRET_MAX_BLOCK = 1 << 15
    one = class_stats_triton(x, target, spec)
    torch.testing.assert_close(one, runs[0][0], rtol=1e-5, atol=1e-4)


def test_non_contiguous_input_and_2d(small_blocks):
    gen = torch.Generator().manual_seed(13)
    base = torch.randn(2, 19, 23, 3, generator=gen)
    x = base.permute(0, 3, 1, 2)  # (2, 3, 19, 23), channels-last strides
    assert not x.is_contiguous()
    lab = torch.randint(0, 3, (2, 19, 23), generator=gen)
    _compare(x, prepare_target(x, lab), StatsSpec("softmax", ("pg", "p", "pp", "g", "ce")), None, gen)


def test_dispatch_and_supports(triton_backend):
    gen = torch.Generator().manual_seed(14)
    x = _logits(1, 3, "softmax", gen, spatial=(5, 6))
    lab = torch.randint(0, 3, (1, 5, 6), generator=gen)
    t = prepare_target(x, lab)
    spec = StatsSpec("softmax", ("pg", "p", "g", "ce"))
    assert supports(x, t, spec)
    assert torch.equal(class_stats(x, t, spec), class_stats_triton(x, t, spec))
    # float64 is the torch backend's
    assert not supports(x.double(), t, spec)
    torch.testing.assert_close(class_stats(x.double(), t, spec), class_stats_torch(x.double(), t, spec))
    # map columns without a map, soft targets that need a gradient: not handled here
    assert not supports(x, t, StatsSpec("softmax", ("map_p",)))
    soft = torch.rand(1, 3, 5, 6, requires_grad=True)
    assert not supports(x, prepare_target(x, soft), spec)


def test_opcheck():
    gen = torch.Generator().manual_seed(15)
    x = torch.randn(2, 3, 40, generator=gen, requires_grad=True)
    lab = torch.randint(0, 3, (2, 40), generator=gen)
    args = (x, lab, None, None, None, None, "softmax", "pg,p,pp,ce,focal", 2.0, None, 0.3, 0.0, None)
    torch.library.opcheck(torch.ops.fastloss.triton_class_stats.default, args)


@pytest.mark.parametrize("ignore_index", [None, 2])
@pytest.mark.parametrize("include_background", [False, True])
def test_monai_dice_focal_is_one_triton_pass(include_background, ignore_index, monkeypatch):
    """MONAI's DiceFocal (softmax Dice, *sigmoid* focal over the one-hot labels) on the Triton backend: one
    statistics pass serves both parts (the focal part reads the pass's ``sigmoid_focal`` column); value and
    gradient as the torch backend's, which computes the parts separately."""
    import fastloss.ops.stats as S
    from fastloss.losses.compound import DiceFocalLoss

    gen = torch.Generator().manual_seed(21)
    x = _logits(2, 4, "softmax", gen)
    y = _labels(2, 4, gen).unsqueeze(1)
    loss = DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=include_background, gamma=2.0,
                         alpha=0.25, ignore_index=ignore_index)
    calls = []
    real = S._compute
    monkeypatch.setattr(S, "_compute", lambda *a: calls.append(a[2].columns) or real(*a))
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    xa = x.clone().requires_grad_()
    v = loss(xa, y)
    (ga,) = torch.autograd.grad(v, xa)
    assert len(calls) == 1 and "sigmoid_focal" in calls[0], calls
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    xb = x.double().requires_grad_()
    want = loss(xb, y)
    (gb,) = torch.autograd.grad(want, xb)
    torch.testing.assert_close(v.double(), want.detach(), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(ga.double(), gb, rtol=1e-4, atol=1e-7)
