"""The compiled Triton kernels on a CUDA GPU against the torch backend, for every paper loss.

Every test here is marked ``cuda`` and skipped without a GPU (tests/conftest.py). For each name of
``fastloss.paper_loss_names()``, logits ``(2, C, 17, 19, 23)`` (odd sizes: partial blocks everywhere) with
C in (2, 9), float32 and bfloat16: ``FASTLOSS_BACKEND=triton`` against ``FASTLOSS_BACKEND=torch`` on the
same CUDA tensors, loss values and input gradients; ``ignore_index``; bitwise-equal repeated runs; the
CUDA distance transform (behind BD, HD, pCE) against the CPU one; ``torch.compile(fullgraph=True)`` of a
model + loss with the Triton backend.

Tolerances. The reference is the torch backend in float64 on the same (bf16-rounded) logits. Both
backends compute in float32, so the kernels must be within float32 summation-order error of it, widened
elementwise by twice the torch backend's own error at the input's dtype (PyTorch's own error at that
precision: where float32 loses digits, the kernels may too). Gradients are written in the input dtype:
in bfloat16 an element may round to either neighbour of its float32 value, one bf16 ulp (2^-7) apart.

TopK (percent) selects the k largest per-voxel CE values. Where several voxels share (or nearly share,
within float32 rounding) the k-th value, which of them are selected is a convention (``torch.topk``
picks by position, the radix select shares the remaining weight equally among the tied voxels): the
gradient of those voxels is compared through its sum over the tie band, in which the selected weight
``k − #(CE > threshold)`` is the same for both; every other voxel is compared elementwise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fastloss.losses.compound import DiceBoundaryLoss, DiceTopKLoss
from fastloss.losses.distribution import TopKLoss
from fastloss.registry import PAPER_LOSSES, get_loss, paper_loss_names

pytestmark = pytest.mark.cuda

DEV = torch.device("cuda")
SPATIAL = (17, 19, 23)
NAMES = paper_loss_names()
DTYPES = [torch.float32, torch.bfloat16]
IGNORE = 255

# (value rtol, value atol, gradient rtol, gradient atol as a fraction of max |gradient|)
TOL = {
    torch.float32: (2e-5, 1e-6, 1e-4, 1e-5),
    torch.bfloat16: (2e-5, 1e-6, 2.0 ** -7 + 1e-4, 2.0 ** -8),
}


def _dtype_id(dt: torch.dtype) -> str:
    return str(dt).replace("torch.", "")


# ----------------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------------
def _inputs(C: int, dtype: torch.dtype, seed: int, ignore_index=None):
    """Logits (2, C, *SPATIAL) in ``dtype`` and labels (2, 1, *SPATIAL) on the GPU (generated on the CPU:
    the same numbers on every machine). With C = 9, class 7 is absent."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((2, C) + SPATIAL, generator=gen) * 2.0
    y = torch.randint(0, C, (2, 1) + SPATIAL, generator=gen)
    if C == 9:
        y[y == 7] = 6
    if ignore_index is not None:
        y.view(-1)[3::7] = ignore_index
    return x.to(DEV, dtype), y.to(DEV)


def _build(name: str, **overrides) -> nn.Module:
    loss = get_loss(name, **overrides).to(DEV)
    if isinstance(loss, DiceBoundaryLoss):
        loss.set_epoch(50)  # alpha = 0.5: both the Dice and the boundary part run
    return loss


def _run(name, x, y, backend, monkeypatch, **overrides):
    """(loss value, dL/dx) with FASTLOSS_BACKEND=backend; L = value.sum()."""
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    loss = _build(name, **overrides)
    xx = x.detach().clone().requires_grad_(True)
    out = loss(xx, y)
    (g,) = torch.autograd.grad(out.sum(), xx)
    torch.cuda.synchronize()
    assert g.dtype == x.dtype and g.shape == x.shape
    assert out.dtype == (torch.float64 if x.dtype == torch.float64 else torch.float32)
    return out.detach(), g


def _close(got, ref, rtol, atol, what, own=None):
    """|got − ref| <= atol + rtol·|ref| (+ 2·|own − ref| + max|own − ref|) elementwise. ``ref`` is the float64
    torch backend; ``own`` the torch backend at the input's dtype, whose own error widens the bound where
    float32 loses digits (e.g. (−log p)^γ near p = 1 in ELL, J_i − J_(i−1) in the torch Lovász, and the
    order of near-equal Lovász errors, which a float32 sort may swap): twice its error at that element,
    plus its worst error anywhere (an element where the torch backend happens to be exact is no stricter)."""
    got, ref = got.double(), ref.double()
    assert got.shape == ref.shape, f"{what}: shape {tuple(got.shape)} != {tuple(ref.shape)}"
    assert torch.isfinite(ref).all(), f"{what}: the reference is not finite"
    err = (got - ref).abs()
    bound = atol + rtol * ref.abs()
    if own is not None:
        own_err = (own.double() - ref).abs()
        bound = bound + 2 * own_err + own_err.max()
    bad = ~(err <= bound)  # NaN in got is bad too
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {bad.numel()} elements off, worst error {float(err[bad].max()):.3g} "
        f"(bound there {float(bound[bad].max()):.3g}, max |ref| {float(ref.abs().max()):.3g})"
    )


def _is_topk_percent(name: str) -> bool:
    cls, kw = PAPER_LOSSES[name]
    return issubclass(cls, (TopKLoss, DiceTopKLoss)) and kw.get("t") is None


def _topk_band(name: str, x, y, ignore_index=None) -> torch.Tensor:
    """(2, *SPATIAL) bool: voxels whose CE is within float32 rounding of the k-th largest CE (the tie band)."""
    k = PAPER_LOSSES[name][1].get("k", 10.0)
    lab = y[:, 0]
    valid = torch.ones_like(lab, dtype=torch.bool) if ignore_index is None else lab != ignore_index
    ce = F.cross_entropy(x.double(), torch.where(valid, lab, 0), reduction="none") * valid
    n_valid = int(valid.sum())
    K = max(1, int(n_valid * k / 100))  # nnU-Net's count
    kth = torch.topk(ce.reshape(-1), K).values[-1]
    return (ce - kth).abs() <= 1e-5 * kth + 1e-6


def _compare(name, x, y, monkeypatch, ignore_index=None):
    """Triton against the torch backend: both at the input's dtype, and the torch backend in float64 on
    the same (rounded) logits as the reference."""
    kw = {} if ignore_index is None else {"ignore_index": ignore_index}
    v_rtol, v_atol, g_rtol, g_atol = TOL[x.dtype]
    ref_v, ref_g = _run(name, x.double(), y, "torch", monkeypatch, **kw)
    own_v, own_g = _run(name, x, y, "torch", monkeypatch, **kw)
    v, g = _run(name, x, y, "triton", monkeypatch, **kw)
    assert v.dtype == own_v.dtype == torch.float32
    _close(v, ref_v, v_rtol, v_atol, f"{name} value", own_v)
    atol = g_atol * float(ref_g.abs().max())
    if _is_topk_percent(name):
        band = _topk_band(name, x, y, ignore_index)  # (B, *sp)
        outside = (~band).unsqueeze(1).expand_as(g)
        _close(g[outside], ref_g[outside], g_rtol, atol, f"{name} gradient outside the TopK tie band", own_g[outside])
        # inside the band: the label-class gradient summed over the band, (p_y − 1)·(selected weight)/k
        # with p_y equal up to rounding across the band, is the same for every tie convention
        lab = y if ignore_index is None else torch.where(y == ignore_index, 0, y)
        band_sum = [t.gather(1, lab).squeeze(1)[band].double().sum() for t in (g, own_g, ref_g)]
        _close(band_sum[0], band_sum[2], 1e-3 + g_rtol, atol * 4,
               f"{name} gradient summed over the TopK tie band ({int(band.sum())} voxels)", band_sum[1])
    else:
        _close(g, ref_g, g_rtol, atol, f"{name} gradient", own_g)
    if ignore_index is not None:
        # wherever the torch backend gives an ignored voxel no gradient, the kernels give none either
        zero = (y == ignore_index).expand_as(g) & (own_g == 0)
        assert (g[zero] == 0).all(), f"{name}: gradient at ignored voxels"
    return v, g


# ----------------------------------------------------------------------------------------------------
# Triton vs torch backend, every paper loss
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("C", [2, 9])
@pytest.mark.parametrize("name", NAMES)
def test_triton_matches_torch(name, C, dtype, monkeypatch):
    x, y = _inputs(C, dtype, seed=C)
    _compare(name, x, y, monkeypatch)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_triton_matches_torch_ignore_index(name, dtype, monkeypatch):
    x, y = _inputs(9, dtype, seed=11, ignore_index=IGNORE)
    _compare(name, x, y, monkeypatch, ignore_index=IGNORE)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("name", NAMES)
def test_bitwise_repeatable(name, dtype, monkeypatch):
    x, y = _inputs(9, dtype, seed=21)
    v1, g1 = _run(name, x, y, "triton", monkeypatch)
    v2, g2 = _run(name, x, y, "triton", monkeypatch)
    assert torch.equal(v1, v2), f"{name}: values differ between two runs"
    assert torch.equal(g1, g2), f"{name}: gradients differ between two runs"


@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal", "Dice", "TopK", "DiceHD", "Lovász"])
def test_auto_backend_uses_the_kernels_on_cuda(name, monkeypatch):
    """FASTLOSS_BACKEND=auto (the default) on CUDA tensors is the Triton path: bitwise the same results."""
    x, y = _inputs(9, torch.float32, seed=31)
    v_t, g_t = _run(name, x, y, "triton", monkeypatch)
    v_a, g_a = _run(name, x, y, "auto", monkeypatch)
    assert torch.equal(v_t, v_a) and torch.equal(g_t, g_a)


@pytest.mark.parametrize("dtype", DTYPES, ids=_dtype_id)
@pytest.mark.parametrize("ignore_index", [None, IGNORE])
def test_monai_dice_focal_is_one_pass_on_cuda(dtype, ignore_index, monkeypatch):
    """MONAI's DiceFocal arguments (softmax Dice, sigmoid focal without the background) on CUDA: one Triton
    statistics pass (its ``sigmoid_focal`` column), and the value and gradient of the float64 torch
    backend, which computes the two parts separately."""
    import fastloss.ops.stats as S
    from fastloss.losses.compound import DiceFocalLoss

    x, y = _inputs(9, dtype, seed=41, ignore_index=ignore_index)
    loss = DiceFocalLoss(to_onehot_y=True, softmax=True, include_background=False, ignore_index=ignore_index)
    calls = []
    real = S._compute
    monkeypatch.setattr(S, "_compute", lambda *a: calls.append(a[2].columns) or real(*a))
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    xa = x.detach().clone().requires_grad_(True)
    (g,) = torch.autograd.grad(v := loss(xa, y), xa)
    assert len(calls) == 1 and "sigmoid_focal" in calls[0], calls
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    xb = x.detach().double().requires_grad_(True)
    (gb,) = torch.autograd.grad(want := loss(xb, y), xb)
    v_rtol, v_atol, g_rtol, g_atol = TOL[dtype]
    _close(v, want.detach(), v_rtol, v_atol, "DiceFocal (MONAI) value")
    _close(g, gb, g_rtol, g_atol * float(gb.abs().max()), "DiceFocal (MONAI) gradient")


@pytest.mark.parametrize("name", NAMES)
def test_statistics_never_fall_back_to_torch(name, monkeypatch):
    """On CUDA float32 logits with integer labels, no loss sends its statistics to the torch backend."""
    from fastloss.ops import stats

    def refuse(*args, **kwargs):
        raise AssertionError("class_stats_torch called on the Triton backend")

    monkeypatch.setattr(stats, "class_stats_torch", refuse)
    x, y = _inputs(9, torch.float32, seed=41)
    v, g = _run(name, x, y, "triton", monkeypatch)
    assert torch.isfinite(v).all() and torch.isfinite(g).all()


# ----------------------------------------------------------------------------------------------------
# distance maps: the CUDA EDT against the CPU EDT, and the map losses end to end
# ----------------------------------------------------------------------------------------------------
def test_cuda_edt_matches_cpu_on_loss_shapes():
    from fastloss.distance import cuda_available, distance_field, edt, signed_distance

    if not cuda_available():
        pytest.skip("fastloss._C was built without CUDA")
    gen = torch.Generator().manual_seed(51)
    lab = torch.randint(0, 9, (2,) + SPATIAL, generator=gen)
    lab[lab == 7] = 6
    onehot = F.one_hot(lab, 9).movedim(-1, 1).contiguous()  # (2, 9, 17, 19, 23), class 7 absent
    onehot[1, 3] = 1  # an all-foreground volume
    spacing = (1.0, 0.7, 1.9)
    for squared in (False, True):
        cpu = edt(onehot, spacing, squared=squared)
        gpu = edt(onehot.to(DEV), spacing, squared=squared)
        assert gpu.is_cuda and gpu.dtype == torch.float32
        gpu = gpu.cpu()
        assert torch.equal(torch.isinf(gpu), torch.isinf(cpu)) and torch.isinf(cpu[1, 3]).all()
        fin = torch.isfinite(cpu)
        torch.testing.assert_close(gpu[fin], cpu[fin], rtol=1e-6, atol=1e-6)
    # unit spacing, squared: integers, exactly
    assert torch.equal(edt(onehot.to(DEV), squared=True).cpu(), edt(onehot, squared=True))
    for fn in (lambda m: signed_distance(m, spacing), distance_field):
        cpu = fn(onehot)
        gpu = fn(onehot.to(DEV))
        assert gpu.is_cuda
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", ["BD", "HD", "pCE", "DiceBD", "DiceHD"])
def test_map_losses_on_cuda_match_cpu(name, monkeypatch):
    """The loss on CUDA (CUDA EDT, Triton kernels) against the loss on the CPU (CPU EDT, torch backend)."""
    x, y = _inputs(9, torch.float32, seed=61)
    v, g = _run(name, x, y, "triton", monkeypatch)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    cpu = []
    for dt in (torch.float64, torch.float32):  # the float64 reference, and the float32 torch backend's own error
        loss = get_loss(name)
        if isinstance(loss, DiceBoundaryLoss):
            loss.set_epoch(50)
        xc = x.detach().cpu().to(dt).requires_grad_(True)
        out = loss(xc, y.cpu())
        (gc,) = torch.autograd.grad(out.sum(), xc)
        cpu.append((out.detach(), gc))
    (ref_v, ref_g), (own_v, own_g) = cpu
    _close(v.cpu(), ref_v, 2e-5, 1e-6, f"{name} value", own_v)
    _close(g.cpu(), ref_g, 1e-4, 1e-5 * float(ref_g.abs().max()), f"{name} gradient", own_g)


# ----------------------------------------------------------------------------------------------------
# torch.compile(fullgraph=True) with the Triton backend
# ----------------------------------------------------------------------------------------------------
class ModelAndLoss(nn.Module):
    def __init__(self, loss: nn.Module, channels: int):
        super().__init__()
        self.net = nn.Conv3d(2, channels, 3, padding=1)
        self.loss = loss

    def forward(self, x, y):
        return self.loss(self.net(x), y)


@pytest.mark.parametrize("name", ["DiceCE", "DiceTopK", "DiceHD"])
def test_compile_fullgraph_with_triton_backend(name, monkeypatch):
    from torch._dynamo.backends.registry import lookup_backend

    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    torch._dynamo.reset()
    graphs = []
    inductor = lookup_backend("inductor")

    def recording(gm, example_inputs):
        graphs.append(gm)
        return inductor(gm, example_inputs)

    torch.manual_seed(0)
    model = ModelAndLoss(_build(name), 9).to(DEV)
    compiled = torch.compile(model, fullgraph=True, backend=recording)
    for seed in (71, 72):  # the second input pair reuses the graph
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn((2, 2) + SPATIAL, generator=gen).to(DEV)
        y = torch.randint(0, 9, (2, 1) + SPATIAL, generator=gen).to(DEV)
        results = []
        for fn in (model, compiled):
            model.zero_grad(set_to_none=True)
            xx = x.clone().requires_grad_(True)
            out = fn(xx, y)
            out.sum().backward()
            results.append((out.detach(), xx.grad, model.net.weight.grad.clone()))
        (v_ref, gx_ref, gw_ref), (v, gx, gw) = results
        _close(v, v_ref, 1e-5, 1e-6, f"{name} compiled value")
        _close(gx, gx_ref, 1e-4, 1e-5 * float(gx_ref.abs().max()), f"{name} compiled dL/dx")
        _close(gw, gw_ref, 1e-4, 1e-5 * float(gw_ref.abs().max()), f"{name} compiled dL/dW")
    assert len(graphs) == 1
    targets = {str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert any(t.startswith("fastloss.triton_") for t in targets), sorted(t for t in targets if "fastloss" in t)
    if name == "DiceHD":
        assert "fastloss.edt" in targets
    torch._dynamo.reset()
