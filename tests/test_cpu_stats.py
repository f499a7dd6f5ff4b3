"""The compiled CPU kernels (csrc/stats_cpu*, fastloss.ops.cpu_stats) against the torch backend.

The torch backend (``class_stats_torch``) materialises per-voxel tensors and lets autograd differentiate
them; the compiled kernels must give the same sums and the same dL/dx for every column, activation, target
kind, mask, dtype and layout, bitwise the same for any thread count, and never read out of bounds.
"""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

import fastloss
from fastloss._validation import prepare_target
from fastloss.ops import cpu_stats
from fastloss.ops.stats import COLUMNS, StatsSpec, class_stats_torch

pytestmark = pytest.mark.skipif(not cpu_stats.available(), reason="fastloss._C has no CPU loss kernels")

MAP_COLUMNS = ("map_ce", "map_p", "map_sqerr")
FUSED = ("pg", "p", "pp", "g", "gg", "ce", "count")  # the columns formed in one pass (labels: g in registers)
ALL = tuple(COLUMNS)
COLUMN_SETS = {
    "dice": ("pg", "p", "g"),
    "dice_ce": ("pg", "p", "g", "ce"),
    "fused": FUSED,
    "fused_focal": FUSED + ("focal",),  # the fused softmax path takes the focal column when gamma = 2
    # ... and MONAI DiceFocal's sigmoid focal term of the logits beside the softmax columns
    "fused_sigmoid_focal": ("pg", "p", "g", "focal", "sigmoid_focal"),
    "all": ALL,
}
# float32 sums of ~1e3 terms against float64: relative 1e-5; half inputs are rounded once on load on both sides
TOL = {torch.float64: (1e-10, 1e-12), torch.float32: (2e-5, 1e-5), torch.float16: (2e-5, 1e-5), torch.bfloat16: (2e-5, 1e-5)}


def _inputs(B, C, spatial, activation, dtype, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    if activation == "none":
        x = torch.rand((B, C) + spatial, generator=g, dtype=torch.float64) * 0.9 + 0.05
    else:
        x = torch.randn((B, C) + spatial, generator=g, dtype=torch.float64) * scale
    return x.to(dtype)


def _target(kind, x, C, seed=1, ignore_index=None):
    g = torch.Generator().manual_seed(seed)
    B, spatial = x.shape[0], tuple(x.shape[2:])
    hi = 2 if C == 1 else C
    if kind.startswith("labels"):
        lab = torch.randint(0, hi, (B, 1) + spatial, generator=g)
        if ignore_index is not None:
            lab[:, :, ::3] = ignore_index
        dtype = {"labels": torch.int64, "labels_i32": torch.int32, "labels_u8": torch.uint8}[kind]
        return lab.to(dtype)
    if kind == "onehot":
        lab = torch.randint(0, C, (B,) + spatial, generator=g)
        return F.one_hot(lab, C).movedim(-1, 1).to(torch.float32 if x.dtype != torch.float64 else torch.float64)
    soft = torch.rand((B, C) + spatial, generator=g, dtype=torch.float64)
    return soft.to(torch.float32 if x.dtype != torch.float64 else torch.float64)


def _compare(x, tgt, spec, vmap=None, *, grad=True):
    """Compiled stats and dL/dx vs the torch backend on the same (rounded) input, in float64."""
    w = torch.randn(x.shape[0], x.shape[1], len(spec.columns), dtype=torch.float64, generator=torch.Generator().manual_seed(7))
    xa = x.detach().clone().requires_grad_(grad)
    got = cpu_stats.class_stats_cpu(xa, tgt, spec, vmap)
    x64 = x.detach().to(torch.float64).requires_grad_(grad)
    tgt64 = tgt
    want = class_stats_torch(x64, tgt64, spec, None if vmap is None else vmap.to(torch.float64))
    rtol, atol = TOL[x.dtype]
    scale = want.abs().amax(dim=(0, 1), keepdim=True).clamp_min(1.0)
    torch.testing.assert_close(got.to(torch.float64) / scale, want / scale, rtol=rtol, atol=atol)
    assert got.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    if grad:
        (ga,) = torch.autograd.grad((got.to(torch.float64) * w).sum(), xa)
        if want.requires_grad:
            (gb,) = torch.autograd.grad((want * w).sum(), x64)
        else:  # g, gg, count: no dependence on the input, so a zero gradient
            gb = torch.zeros_like(x64)
        assert ga.dtype == x.dtype and ga.shape == x.shape
        if xa.is_contiguous() or xa.is_contiguous(memory_format=torch.channels_last_3d):
            assert ga.stride() == xa.stride()  # dx written in the input's own layout, no copy
        gtol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 1e-2}[x.dtype]
        gs = gb.abs().max().clamp_min(1e-6)
        torch.testing.assert_close(ga.to(torch.float64) / gs, gb / gs, rtol=gtol, atol=gtol)
    return got


@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
@pytest.mark.parametrize("kind", ["labels", "labels_i32", "labels_u8", "onehot", "soft"])
@pytest.mark.parametrize("cols", sorted(COLUMN_SETS))
def test_columns_match_torch_backend(activation, kind, cols):
    C = 4
    x = _inputs(2, C, (5, 7, 23), activation, torch.float32)  # N = 805: one full tile and a partial one
    y = _target(kind, x, C)
    columns = COLUMN_SETS[cols]
    vmap = torch.randn(2, C, 5, 7, 23) if set(columns) & set(MAP_COLUMNS) else None
    spec = StatsSpec(activation, columns, gamma=2.0, alpha=0.25, ce_exponent=0.3)
    tgt = prepare_target(x, y, to_onehot_y=False)
    _compare(x, tgt, spec, vmap)


@pytest.mark.parametrize("column", ALL)
@pytest.mark.parametrize("activation", ["softmax", "sigmoid", "none"])
def test_each_column_alone_float64(column, activation):
    C = 3
    x = _inputs(2, C, (4, 5, 6), activation, torch.float64, seed=3)
    y = _target("labels", x, C, ignore_index=2)
    vmap = torch.randn(2, 1, 4, 5, 6, dtype=torch.float64) if column in MAP_COLUMNS else None
    tgt = prepare_target(x, y, ignore_index=2)
    for gamma, alpha in ((2.0, None), (1.5, 0.3), (0.0, 0.75)):
        _compare(x, tgt, StatsSpec(activation, (column,), gamma=gamma, alpha=alpha, ce_exponent=0.3), vmap)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_dtypes(dtype, activation):
    x = _inputs(2, 5, (9, 11, 13), activation, dtype, scale=2.0)
    y = _target("labels", x, 5)
    _compare(x, prepare_target(x, y), StatsSpec(activation, ("pg", "p", "pp", "g", "ce", "focal")))
    _compare(x, prepare_target(x, y), StatsSpec(activation, ("pg", "p", "g", "sigmoid_focal")))


@pytest.mark.parametrize("ignore_index", [0, 255, -1])
@pytest.mark.parametrize("cols", ["dice_ce", "all"])
def test_ignore_index_and_masks(ignore_index, cols):
    C = 4
    x = _inputs(2, C, (6, 7, 8), "softmax", torch.float32)
    lab = _target("labels", x, C)
    lab[:, :, 1::4] = ignore_index
    vmap = torch.randn(2, C, 6, 7, 8) if cols == "all" else None
    _compare(x, prepare_target(x, lab, ignore_index=ignore_index), StatsSpec("softmax", COLUMN_SETS[cols]), vmap)
    # soft target with a fractional mask (MONAI's one-hot ignore convention: a class index masks its voxels)
    soft = _target("soft", x, C)
    _compare(x, prepare_target(x, soft, ignore_index=1), StatsSpec("softmax", COLUMN_SETS[cols]), vmap)


@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (2.0, 0.25), (1.5, None)])
@pytest.mark.parametrize("ignore_index", [None, 255])
def test_focal_on_the_fused_path(gamma, alpha, ignore_index):
    # gamma = 2 goes through the fused softmax path (closed-form backward), 1.5 through the generic one
    C = 5
    x = _inputs(2, C, (7, 9, 11), "softmax", torch.float32)
    lab = _target("labels", x, C)
    if ignore_index is not None:
        lab[:, :, ::3] = ignore_index
    tgt = prepare_target(x, lab, ignore_index=ignore_index)
    _compare(x, tgt, StatsSpec("softmax", ("pg", "p", "g", "focal"), gamma=gamma, alpha=alpha))
    _compare(x, tgt, StatsSpec("softmax", ("focal",), gamma=gamma, alpha=alpha))
    # MONAI DiceFocal's sigmoid focal part of the same logits, alone and beside the softmax columns
    _compare(x, tgt, StatsSpec("softmax", ("pg", "p", "g", "sigmoid_focal"), gamma=gamma, alpha=alpha))
    _compare(x, tgt, StatsSpec("softmax", ("sigmoid_focal", "focal", "ce"), gamma=gamma, alpha=alpha))
    # with a sigmoid activation the column is the focal column itself
    sig = StatsSpec("sigmoid", ("focal", "sigmoid_focal"), gamma=gamma, alpha=alpha)
    s = cpu_stats.class_stats_cpu(x, tgt, sig)
    assert torch.equal(s[..., 0], s[..., 1])


def test_every_voxel_ignored_gives_zero_sums_and_gradient():
    x = _inputs(1, 3, (4, 4, 4), "softmax", torch.float32).requires_grad_()
    lab = torch.full((1, 1, 4, 4, 4), 255)
    tgt = prepare_target(x, lab, ignore_index=255)
    s = cpu_stats.class_stats_cpu(x, tgt, StatsSpec("softmax", FUSED))
    assert torch.equal(s, torch.zeros_like(s))
    (g,) = torch.autograd.grad(s.sum(), x)
    assert torch.equal(g, torch.zeros_like(g))


@pytest.mark.parametrize("spatial", [(1,), (1, 1, 1), (511,), (512,), (513,), (3, 1, 341)])
@pytest.mark.parametrize("C,activation", [(1, "sigmoid"), (2, "sigmoid"), (2, "softmax"), (7, "softmax")])
def test_odd_sizes_and_few_classes(spatial, C, activation):
    x = _inputs(3, C, spatial, activation, torch.float32, seed=5)
    y = _target("labels", x, C)
    _compare(x, prepare_target(x, y), StatsSpec(activation, ("pg", "p", "g", "ce", "count")))
    _compare(x, prepare_target(x, y), StatsSpec(activation, ALL), torch.randn((3, 1) + spatial))


def test_absent_classes():
    x = _inputs(2, 5, (8, 8, 8), "softmax", torch.float32)
    y = torch.randint(0, 2, (2, 1, 8, 8, 8))  # classes 2-4 absent
    s = _compare(x, prepare_target(x, y), StatsSpec("softmax", ("pg", "p", "g", "ce")))
    assert torch.equal(s[:, 2:, 2], torch.zeros(2, 3))


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed"])
def test_strided_inputs_read_in_place(layout):
    C = 4
    base = _inputs(2, C, (10, 12, 14), "softmax", torch.float32)
    if layout == "channels_last":
        x = base.contiguous(memory_format=torch.channels_last_3d)
    elif layout == "sliced":
        x = base[:, :, :, :, ::2]
    else:
        x = base.transpose(2, 4)
    y = _target("labels", x, C)
    for cols in ("dice_ce", "fused_sigmoid_focal", "all"):
        vmap = torch.randn((2, C) + tuple(x.shape[2:])) if cols == "all" else None
        _compare(x, prepare_target(x, y), StatsSpec("softmax", COLUMN_SETS[cols]), vmap)


def test_confident_voxels_keep_relative_precision():
    # p_y -> 1: −log p_y = log1p(r) must keep its relative precision (ce_pow reads it at exponent 0.3)
    C = 3
    x = torch.zeros(1, C, 64)
    y = torch.zeros(1, 1, 64, dtype=torch.long)
    x[:, 0] = torch.linspace(10, 30, 64)
    s = cpu_stats.class_stats_cpu(x, prepare_target(x, y), StatsSpec("softmax", ("ce", "ce_pow"), ce_exponent=0.3))
    x64 = x.double()
    nl = -torch.log_softmax(x64, dim=1)[:, 0]  # float64: exact enough here
    torch.testing.assert_close(s[0, 0, 0].double(), nl.sum(), rtol=1e-5, atol=0)
    torch.testing.assert_close(s[0, 0, 1].double(), (nl ** 0.3).sum(), rtol=1e-5, atol=0)
    # ... and the gradient: dL/dx_y = G·(p_y − 1) = −G·(1 − p_y) must keep its relative precision too (1 − p_y
    # down to 1e-13, which 1 − p in float32 rounds to 0), on the fused path (ce with the Dice columns, and with
    # the per-voxel CE of DiceTopK) and on the general one (ce_pow)
    # d(Σ −log p_y)/dx = p − onehot(y), its label entry −(1 − p_y) = −Σ_{c≠y} p_c formed without the
    # cancellation (torch's float64 backward, p_y − 1, loses 1e-3 of it at 1 − p_y ≈ 2e-13)
    w = torch.linspace(0.5, 1.5, 64, dtype=torch.float64)
    p64 = torch.softmax(x.double(), dim=1)
    want_ce = p64.clone()
    want_ce[:, 0] = -p64[:, 1:].sum(dim=1)
    for cols in (("ce",), ("pg", "p", "g", "ce"), ("ce", "ce_pow")):
        xa = x.clone().requires_grad_()
        st = cpu_stats.class_stats_cpu(xa, prepare_target(x, y), StatsSpec("softmax", cols, ce_exponent=0.3))
        (got,) = torch.autograd.grad(st[0, 0, cols.index("ce")], xa)
        torch.testing.assert_close(got.double(), want_ce, rtol=1e-5, atol=0, msg=f"columns {cols}")
    xa = x.clone().requires_grad_()
    st, ce = cpu_stats.class_stats_with_voxel_ce_cpu(xa, prepare_target(x, y), StatsSpec("softmax", ("pg", "p", "g")))
    (got,) = torch.autograd.grad((ce[0].double() * w).sum(), xa)
    torch.testing.assert_close(got.double(), want_ce * w, rtol=1e-5, atol=0)


@pytest.mark.parametrize("cols", ["dice_ce", "all"])
def test_bitwise_same_for_any_thread_count_and_run(cols):
    x = _inputs(2, 6, (20, 21, 22), "softmax", torch.float32).requires_grad_()
    y = _target("labels", x, 6)
    vmap = torch.randn(2, 6, 20, 21, 22) if cols == "all" else None
    spec = StatsSpec("softmax", COLUMN_SETS[cols])
    tgt = prepare_target(x, y)
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 3, 1):
            torch.set_num_threads(threads)
            s = cpu_stats.class_stats_cpu(x, tgt, spec, vmap)
            (g,) = torch.autograd.grad((s * torch.linspace(0.5, 1.5, s.numel()).view_as(s)).sum(), x)
            results.append((s, g))
    finally:
        torch.set_num_threads(before)
    for s, g in results[1:]:
        assert torch.equal(s, results[0][0]) and torch.equal(g, results[0][1])


def test_instruction_sets_agree(monkeypatch):
    x = _inputs(2, 5, (17, 18, 19), "softmax", torch.float32).requires_grad_()
    tgt = prepare_target(x, _target("labels", x, 5))
    spec = StatsSpec("softmax", ("pg", "p", "g", "ce", "focal"))
    out = {}
    for isa in ("base", "avx2", "avx512"):
        monkeypatch.setenv("FASTLOSS_CPU_ISA", isa)
        s = cpu_stats.class_stats_cpu(x, tgt, spec)
        (g,) = torch.autograd.grad(s.sum(), x)
        out[isa] = (s, g, cpu_stats.isa())
    base = out["base"]
    assert base[2] == "base"
    # dx is a difference of terms of the gradient's magnitude (p·(a − Σ p a)): its float32 rounding is
    # absolute at that magnitude, not relative to each element; an instruction set that computed it more
    # exactly would differ from the baseline by the baseline's own rounding. So the tolerance is scaled to
    # max |dx|: 1e-6 of it, with the float64 torch backend (an exact computation) held to the same bound.
    gscale = base[1].abs().max().item()
    x64 = x.detach().double().requires_grad_()
    (g64,) = torch.autograd.grad(class_stats_torch(x64, prepare_target(x64, _target("labels", x, 5)), spec).sum(), x64)
    for isa, (s, g, used) in list(out.items()) + [("float64 torch", (None, g64, None))]:
        if s is not None:
            torch.testing.assert_close(s, base[0], rtol=2e-6, atol=0)
        torch.testing.assert_close(g.double(), base[1].double(), rtol=1e-5, atol=1e-6 * gscale, msg=isa)
    monkeypatch.setenv("FASTLOSS_CPU_ISA", "sse9")
    with pytest.raises(ValueError, match="FASTLOSS_CPU_ISA"):
        cpu_stats.class_stats_cpu(x, tgt, spec)


def test_out_of_range_labels_are_ignored_voxels(monkeypatch):
    # with the label check off, labels outside [0, C) must be read as ignored voxels, never as indices
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    C = 3
    x = _inputs(1, C, (6, 6, 6), "softmax", torch.float32)
    lab = _target("labels", x, C)
    lab[0, 0, 0] = 10**6
    lab[0, 0, 1] = -(10**6)
    lab[0, 0, 2, 0, 0] = 2**40  # beyond int32
    lab[0, 0, 3, :, 1] = C  # one past the last class (an off-by-one reads it as a voxel)
    lab[0, 0, 4, 2] = -1
    for cols in ("dice_ce", "fused_sigmoid_focal", "all"):
        vmap = torch.randn(1, C, 6, 6, 6) if cols == "all" else None
        _compare(x, prepare_target(x, lab), StatsSpec("softmax", COLUMN_SETS[cols]), vmap)


@pytest.mark.parametrize("C", [1, 2, 3])
@pytest.mark.parametrize("layout", ["contiguous", "strided", "transposed"])
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_labels_one_past_the_classes_are_ignored_voxels(monkeypatch, C, layout, dtype):
    # with the label check off, the first label past the classes (C; 2 for one channel, whose labels are 0/1)
    # is an ignored voxel in every read of the labels: unit stride (its own vectorised loop) and strided
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    hi = 2 if C == 1 else C
    activation = "sigmoid" if C == 1 else "softmax"
    x = _inputs(2, C, (7, 9, 11), activation, torch.float32, seed=4)
    g = torch.Generator().manual_seed(5)
    lab = torch.randint(0, hi + 1, (2, 1, 7, 9, 22 if layout == "strided" else 11), generator=g).to(dtype)
    if layout == "strided":
        lab = lab[..., ::2]  # stride 2 along the voxels
    elif layout == "transposed":  # batch-last memory: (N, B) transposed, voxel stride 2, batch stride 1
        lab = lab.reshape(2, -1).t().contiguous().t().reshape(2, 1, 7, 9, 11)
    assert (lab == hi).sum() > 100 and (layout == "contiguous") == lab.is_contiguous()
    for cols in ("dice_ce", "fused", "all"):
        vmap = torch.randn((2, C, 7, 9, 11)) if cols == "all" else None
        _compare(x, prepare_target(x, lab), StatsSpec(activation, COLUMN_SETS[cols]), vmap)


def test_half_conversions_are_exact():
    # every float16 / bfloat16 bit pattern to float32 and back, as torch converts them
    bits = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16)
    for kind, dt in ((0, torch.float16), (2, torch.bfloat16)):
        out = torch.empty(bits.numel(), dtype=torch.float32)
        fastloss._C.half_roundtrip_cpu(bits.data_ptr(), out.data_ptr(), bits.numel(), kind)
        want = bits.view(dt).to(torch.float32)
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(out), nan)
        assert torch.equal(out[~nan].view(torch.int32), want[~nan].view(torch.int32))
    g = torch.Generator().manual_seed(0)
    f = torch.cat([
        torch.randn(200000, generator=g) * torch.logspace(-9, 6, 200000),
        torch.tensor([0.0, -0.0, 65504.0, 65519.99, 65520.0, 1e6, float("inf"), -float("inf"), 2.0**-24, 2.0**-25,
                      3 * 2.0**-26, 2.0**-14 - 2.0**-25, 1.0 + 2.0**-11, 1.0 + 3 * 2.0**-11]),
        (torch.arange(0, 1 << 16, dtype=torch.int32) << 13).view(torch.float32),  # every half step and between
    ])
    for kind, dt in ((1, torch.float16), (3, torch.bfloat16)):
        out = torch.empty(f.numel(), dtype=torch.int16)
        fastloss._C.half_roundtrip_cpu(f.data_ptr(), out.data_ptr(), f.numel(), kind)
        want = f.to(dt)
        nan = torch.isnan(want)
        assert torch.equal(torch.isnan(out.view(dt)), nan)
        assert torch.equal(out[~nan], want.view(torch.int16)[~nan])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_voxel_ce_matches_cross_entropy(dtype):
    x = _inputs(2, 5, (9, 10, 11), "softmax", dtype).requires_grad_()
    lab = torch.randint(0, 5, (2, 9, 10, 11))
    lab[:, ::4] = 255
    ce = cpu_stats.voxel_ce_cpu(x, lab, 255)
    want = F.cross_entropy(x.double(), lab, ignore_index=255, reduction="none").reshape(2, -1)
    torch.testing.assert_close(ce.double(), want, rtol=1e-6 if dtype == torch.float32 else 1e-12, atol=1e-7)
    w = torch.rand_like(want)
    (ga,) = torch.autograd.grad((ce.double() * w).sum(), x)
    x64 = x.detach().double().requires_grad_()
    (gb,) = torch.autograd.grad((F.cross_entropy(x64, lab, ignore_index=255, reduction="none").reshape(2, -1) * w).sum(), x64)
    torch.testing.assert_close(ga.double(), gb, rtol=1e-5, atol=1e-7)


def test_topk_select_matches_torch_topk():
    g = torch.Generator().manual_seed(0)
    cases = [
        torch.rand(100003, generator=g),
        torch.randint(0, 7, (5000,), generator=g).float(),  # heavy ties at the threshold
        torch.randn(4097, generator=g),  # negative values
        torch.tensor([1.0, 2.0, 3.0, 0.5, float("nan")]),
        torch.tensor([1.0, -0.0, 0.0, float("inf"), -float("inf")]),
    ]
    cases[3][4] = -cases[3][4].abs()  # a NaN with its sign bit set must still sort above +inf
    for v in cases:
        for k in sorted({1, 2, max(1, v.numel() // 10), v.numel() // 2 or 1, v.numel()}):
            s, thr, cg, ce = cpu_stats.topk_select_cpu(v, k)
            top = torch.topk(v.double(), k).values
            if torch.isnan(top).any():
                assert torch.isnan(s) and (torch.isnan(thr) or top.isnan().sum() < k)
                continue
            torch.testing.assert_close(s.double(), top.sum(), rtol=1e-6, atol=1e-6, equal_nan=True)
            assert thr.item() == top[-1].item()
            assert cg.item() == int((v > thr).sum()) and ce.item() == int((v == thr).sum())


def test_custom_ops_pass_opcheck():
    x = _inputs(2, 3, (4, 5, 6), "softmax", torch.float32).reshape(2, 3, -1).requires_grad_()
    lab = torch.randint(0, 3, (2, 120))
    args = (x, lab, None, None, None, None, "softmax", "pg,p,g,ce", 2.0, None, 0.3, 0.0, None)
    torch.library.opcheck(torch.ops.fastloss.cpu_class_stats.default, args)
    torch.library.opcheck(torch.ops.fastloss.cpu_voxel_ce.default, (x, lab, None))


@pytest.mark.parametrize("name", sorted(fastloss.PAPER_LOSSES))
def test_gradcheck_every_paper_loss_through_compiled_kernels(name, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    g = torch.Generator().manual_seed(11)
    x = (torch.randn(2, 3, 4, 4, 3, generator=g, dtype=torch.float64) * 2).requires_grad_()
    y = torch.randint(0, 3, (2, 1, 4, 4, 3), generator=g)
    loss = fastloss.get_loss(name)
    if isinstance(loss, fastloss.DiceBoundaryLoss):
        loss.set_epoch(40)  # both terms active
    if isinstance(loss, fastloss.DiceHausdorffDTLoss):
        # α = sg[HD/Dice] is detached by design: check the loss with α frozen at the value it picks here
        loss(x, y)
        loss = fastloss.get_loss(name, alpha=float(loss.last_alpha))
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,), eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


@pytest.mark.parametrize("name", ["Dice", "DiceCE", "DiceFocal", "DiceTopK", "TopK", "GDice", "Tversky", "Focal", "CE"])
def test_paper_losses_equal_torch_backend(name, monkeypatch):
    x = torch.randn(2, 5, 11, 12, 13, dtype=torch.float32, generator=torch.Generator().manual_seed(2)).requires_grad_()
    y = torch.randint(0, 5, (2, 1, 11, 12, 13))
    out = {}
    for be in ("auto", "torch"):
        monkeypatch.setenv("FASTLOSS_BACKEND", be)
        v = fastloss.get_loss(name)(x, y)
        (gr,) = torch.autograd.grad(2.0 * v, x)
        out[be] = (v, gr)
    torch.testing.assert_close(out["auto"][0], out["torch"][0], rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(out["auto"][1], out["torch"][1], rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("ignore_index", [None, 255])
def test_fused_voxel_ce_matches_separate_paths(ignore_index):
    # the stats + per-voxel CE op (DiceTopK's single pass) against class_stats_torch and F.cross_entropy,
    # and its one backward kernel against autograd through both
    C = 5
    x = _inputs(2, C, (7, 9, 11), "softmax", torch.float32).requires_grad_()
    lab = torch.randint(0, C, (2, 1, 7, 9, 11), generator=torch.Generator().manual_seed(4))
    if ignore_index is not None:
        lab[:, :, ::3] = ignore_index
    tgt = prepare_target(x, lab, ignore_index=ignore_index)
    spec = StatsSpec("softmax", ("pg", "p", "g", "ce", "count"))
    assert cpu_stats.fused_voxel_ce_supported(x, tgt, spec)
    stats, ce = cpu_stats.class_stats_with_voxel_ce_cpu(x, tgt, spec)
    x64 = x.detach().double().requires_grad_()
    want = class_stats_torch(x64, prepare_target(x64, lab, ignore_index=ignore_index), spec)
    ce_want = F.cross_entropy(x64, lab[:, 0].clamp(max=C - 1) if ignore_index is None else lab[:, 0],
                              ignore_index=-100 if ignore_index is None else ignore_index, reduction="none").reshape(2, -1)
    torch.testing.assert_close(stats.double(), want, rtol=2e-5, atol=1e-4)
    torch.testing.assert_close(ce.double(), ce_want, rtol=1e-5, atol=1e-6)
    w1 = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    w2 = torch.rand(ce_want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    (ga,) = torch.autograd.grad((stats.double() * w1).sum() + (ce.double() * w2).sum(), x)
    (gb,) = torch.autograd.grad((want * w1).sum() + (ce_want * w2).sum(), x64, retain_graph=True)
    torch.testing.assert_close(ga.double(), gb, rtol=1e-4, atol=1e-6)
    # only the CE used: the stats' gradient is zero, the CE's alone flows
    (gc,) = torch.autograd.grad((cpu_stats.class_stats_with_voxel_ce_cpu(x, tgt, spec)[1].double() * w2).sum(), x)
    (gd,) = torch.autograd.grad((ce_want * w2).sum(), x64)
    torch.testing.assert_close(gc.double(), gd, rtol=1e-4, atol=1e-6)


def test_dice_topk_reads_the_logits_once(monkeypatch):
    calls = []
    real = cpu_stats._voxel_ce_op

    def spy(*args):
        calls.append("voxel_ce")
        return real(*args)

    monkeypatch.setattr(cpu_stats, "_voxel_ce_op", spy)
    x = _inputs(2, 4, (6, 7, 8), "softmax", torch.float32).requires_grad_()
    y = torch.randint(0, 4, (2, 1, 6, 7, 8))
    v = fastloss.get_loss("DiceTopK")(x, y)
    (g,) = torch.autograd.grad(v, x)
    assert calls == []  # the TopK part took the CE of the Dice part's pass
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    v2 = fastloss.get_loss("DiceTopK")(x, y)
    (g2,) = torch.autograd.grad(v2, x)
    torch.testing.assert_close(v, v2, rtol=2e-6, atol=1e-7)
    torch.testing.assert_close(g, g2, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal", "DiceTopK", "Tversky"])
def test_compiled_kernels_trace_under_torch_compile(name):
    x = _inputs(2, 4, (6, 7, 8), "softmax", torch.float32).requires_grad_()
    y = torch.randint(0, 4, (2, 1, 6, 7, 8))
    loss = fastloss.get_loss(name)
    eager = loss(x, y)
    (ge,) = torch.autograd.grad(eager, x)
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    got = compiled(x, y)
    (gc,) = torch.autograd.grad(got, x)
    torch.testing.assert_close(got, eager, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gc, ge, rtol=1e-4, atol=1e-9)


def test_topk_weights_match_the_torch_expression_bitwise():
    """The compiled TopK subgradient equals ops/topk.py's torch expression bit for bit (ties at the
    threshold share k - count_greater slots; -0.0 equals 0.0; NaN compares false)."""
    g = torch.Generator().manual_seed(3)
    v = (torch.randint(0, 50, (200_003,), generator=g).float() / 7)  # many ties
    v[:5] = torch.tensor([float("nan"), -0.0, 0.0, float("inf"), -float("inf")])
    thr = torch.tensor(v[1000].item())
    share = torch.tensor(0.37)
    grad = torch.tensor(-1.25)
    got = cpu_stats.topk_weights_cpu(v, thr, share, grad)
    w = torch.where(v > thr, torch.ones_like(v), torch.where(v == thr, share, torch.zeros_like(v)))
    assert torch.equal(got, grad * w)
    zero = cpu_stats.topk_weights_cpu(v, torch.tensor(0.0), share, grad)
    assert zero[1].item() == zero[2].item() == (grad * share).item() and zero[0].item() == 0.0


@pytest.mark.parametrize("name", ["DiceCE", "DiceTopK", "DiceFocal", "Dice", "CE", "Focal", "Tversky", "GDice"])
@pytest.mark.parametrize("dtype,ignore_index", [
    (torch.uint8, None), (torch.uint8, 255), (torch.uint8, -100), (torch.int8, -1), (torch.int16, -100),
    (torch.int32, None), (torch.bool, None),
])
def test_narrow_labels_are_read_in_place_with_int64s_bits(monkeypatch, name, dtype, ignore_index):
    """uint8/int8/int16/int32/bool labels reach the kernels as they are (never widened to int64: the
    Target's int64 view is never asked for) and give the loss and gradient of the same labels as int64.
    uint8 with ignore_index=-100: no uint8 can hold it, so nothing is ignored (comparing would wrap it
    to 156)."""
    C = 2 if dtype == torch.bool else 4
    x = _inputs(2, C, (5, 6, 7), "softmax", torch.float32)
    lab = torch.randint(0, C, (2, 1, 5, 6, 7), generator=torch.Generator().manual_seed(5))
    if ignore_index is not None:
        lab[:, :, ::3] = ignore_index
    if dtype == torch.uint8 and ignore_index == -100:
        lab[:, :, ::3] = 156 % C  # in range: -100 cannot be stored in uint8
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    if name == "CE":
        kw = {"ignore_index": -100 if ignore_index is None else ignore_index}
    loss = fastloss.get_loss(name, **kw)

    def run(labels):
        xa = x.detach().clone().requires_grad_()
        v = loss(xa, labels)
        v.backward()
        return v.detach(), xa.grad

    want_v, want_g = run(lab)  # int64
    from fastloss._validation import Target

    monkeypatch.setattr(Target, "labels", property(lambda self: pytest.fail("labels widened to int64")))
    got_v, got_g = run(lab.to(dtype))
    assert torch.equal(got_v, want_v) and torch.equal(got_g, want_g)
