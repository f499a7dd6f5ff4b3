"""Distribution-based losses (Eqs. 1-6) against torch, MONAI and naive formulas written here, in float64."""

import itertools
import math
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from fastloss.losses.distribution import (
    CrossEntropyLoss,
    DistancePenalizedCELoss,
    FocalLoss,
    TopKLoss,
    WeightedCrossEntropyLoss,
    class_weights_from_labels,
    cross_entropy_loss,
    distance_penalized_ce_loss,
    focal_loss,
    topk_loss,
    weighted_cross_entropy_loss,
)
from fastloss.ops.topk import topk_ce_mean, topk_count
from _scaling import assert_upstream_gradient_scales, skip_unless_backend_runs

DT = torch.float64
SHAPES = [(2, 3, 7), (2, 3, 5, 6), (2, 3, 3, 4, 5)]


def _data(shape, seed, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=DT, generator=g) * scale
    y = torch.randint(0, shape[1], (shape[0],) + tuple(shape[2:]), generator=g)
    return x, y


def _onehot(y, C, dtype=DT):
    return F.one_hot(y, C).movedim(-1, 1).to(dtype)


def _grad(fn, x):
    x = x.detach().clone().requires_grad_()
    out = fn(x)
    w = torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)  # probe 'none' maps too
    (out * w).sum().backward()
    return out.detach(), x.grad


def _assert_same(fn_a, fn_b, x, tol=1e-10):
    va, ga = _grad(fn_a, x)
    vb, gb = _grad(fn_b, x)
    assert va.shape == vb.shape
    torch.testing.assert_close(va, vb, rtol=tol, atol=tol)
    torch.testing.assert_close(ga, gb, rtol=tol, atol=tol)


# --------------------------------------------------------------------------------------------------- CE
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, [0.25, 1.0, 3.0]])
@pytest.mark.parametrize("ignore", [None, 255, 1])
def test_ce_labels_vs_torch(shape, reduction, weight, ignore):
    x, y = _data(shape, 0)
    if ignore == 255:
        y[0].view(-1)[:3] = 255
    w = None if weight is None else torch.tensor(weight, dtype=DT)
    kw = {} if ignore is None else {"ignore_index": ignore}
    ours = CrossEntropyLoss(weight=weight, reduction=reduction, **kw)
    _assert_same(lambda t: ours(t, y.unsqueeze(1)), lambda t: F.cross_entropy(t, y, weight=w, reduction=reduction, **kw), x)
    # labels (B, *spatial) too
    torch.testing.assert_close(ours(x, y), F.cross_entropy(x, y, weight=w, reduction=reduction, **kw))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, [0.25, 1.0, 3.0]])
def test_ce_soft_and_onehot_targets_vs_torch_probabilities(reduction, weight):
    x, y = _data((2, 3, 4, 5), 1)
    w = None if weight is None else torch.tensor(weight, dtype=DT)
    soft = torch.softmax(torch.randn_like(x), dim=1)
    for tgt in (soft, _onehot(y, 3)):
        _assert_same(
            lambda t: CrossEntropyLoss(weight=weight, reduction=reduction)(t, tgt),
            lambda t: F.cross_entropy(t, tgt, weight=w, reduction=reduction),
            x,
        )


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("weight", [None, [0.5, 2.0, 1.0]])
def test_ce_sigmoid_vs_bce_with_logits(reduction, weight):
    x, y = _data((2, 3, 4, 5), 2)
    oh = _onehot(y, 3)
    w = None if weight is None else torch.tensor(weight, dtype=DT).view(1, 3, 1, 1)
    ref = lambda t: F.binary_cross_entropy_with_logits(t, oh, weight=w, reduction=reduction)  # noqa: E731
    _assert_same(lambda t: CrossEntropyLoss(sigmoid=True, weight=weight, reduction=reduction)(t, y.unsqueeze(1)), ref, x)
    _assert_same(lambda t: CrossEntropyLoss(sigmoid=True, weight=weight, reduction=reduction)(t, oh), ref, x)


def test_ce_eq1_and_functional_and_dtypes():
    x, y = _data((2, 3, 4, 4), 3)
    p = torch.softmax(x, 1)
    eq1 = -(_onehot(y, 3) * p.log()).sum() / y.numel()  # Eq. 1: -1/N Σ_c Σ_i g log s
    torch.testing.assert_close(cross_entropy_loss(x, y), eq1)
    assert CrossEntropyLoss()(x.half(), y).dtype == torch.float32
    assert CrossEntropyLoss()(x.float(), y).dtype == torch.float32
    torch.testing.assert_close(CrossEntropyLoss()(x.float(), y).double(), eq1, rtol=1e-5, atol=1e-6)


def test_ce_all_ignored_is_zero_not_nan():
    x = torch.randn(1, 3, 4, 4, dtype=DT, requires_grad=True)
    y = torch.full((1, 4, 4), 7)
    v = CrossEntropyLoss(ignore_index=7)(x, y)
    v.backward()
    assert v == 0 and torch.isfinite(x.grad).all()


# -------------------------------------------------------------------------------------------------- WCE
def test_class_weights_from_labels_formula():
    y = torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2, 255]])
    w = class_weights_from_labels(y, 4, ignore_index=255)
    n = np.array([6, 2, 1, 0], dtype=float)
    N = n.sum()
    expected = [N / (4 * n[0]), N / (4 * n[1]), N / (4 * n[2]), 0.0]
    np.testing.assert_allclose(w.numpy(), expected, rtol=1e-15)
    assert w.dtype == torch.float64
    # one-hot float target gives the same weights
    oh = _onehot(torch.tensor([[0, 0, 0, 0, 0, 0, 1, 1, 2]]), 4)
    np.testing.assert_allclose(class_weights_from_labels(oh, 4).numpy(), expected, rtol=1e-15)


def test_wce_default_is_eq2_with_batch_frequencies():
    x, y = _data((2, 3, 5, 5), 4)
    n = torch.bincount(y.reshape(-1), minlength=3).to(DT)
    N = n.sum()
    w = N / (3 * n)  # every class present
    p = torch.softmax(x, 1)
    eq2 = -(w.view(1, 3, 1, 1) * _onehot(y, 3) * p.log()).sum() / N  # Eq. 2 with its 1/N
    torch.testing.assert_close(WeightedCrossEntropyLoss()(x, y), eq2)
    torch.testing.assert_close(weighted_cross_entropy_loss(x, y, reduction="sum"), eq2 * N)
    # a given weight: same as torch
    torch.testing.assert_close(
        WeightedCrossEntropyLoss(weight=[1.0, 2.0, 0.5])(x, y),
        F.cross_entropy(x, y, weight=torch.tensor([1.0, 2.0, 0.5], dtype=DT)),
    )


def test_wce_absent_class_finite_and_ignored_not_counted():
    x = torch.randn(1, 3, 4, 4, dtype=DT, requires_grad=True)
    y = torch.zeros(1, 4, 4, dtype=torch.long)
    y[0, 0] = 1
    y[0, 1, :2] = 9
    v = WeightedCrossEntropyLoss(ignore_index=9)(x, y)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()
    n0, n1 = 10.0, 4.0
    w = torch.tensor([14 / (3 * n0), 14 / (3 * n1), 0.0], dtype=DT)
    torch.testing.assert_close(v, F.cross_entropy(x, y, weight=w, ignore_index=9))


# ------------------------------------------------------------------------------------------------- TopK
def _naive_topk(x, y, k, ignore=None, weight=None):
    ce = F.cross_entropy(x, y, reduction="none", weight=weight, ignore_index=-100 if ignore is None else ignore)
    ce = ce.reshape(-1)
    if ignore is not None:
        ce = ce[(y.reshape(-1) != ignore)]
    vals, _ = torch.sort(ce, descending=True)
    K = max(1, math.floor(ce.numel() * k / 100))
    return vals[:K].mean()


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("k", [10, 33.3, 50, 100, 0.01])
def test_topk_vs_naive_sort(shape, k):
    x, y = _data(shape, 5)
    _assert_same(lambda t: TopKLoss(k=k)(t, y), lambda t: _naive_topk(t, y, k), x)


def test_topk_default_k10_weight_and_ignore():
    x, y = _data((2, 3, 6, 6), 6)
    y[0, :2] = 255
    _assert_same(lambda t: TopKLoss(ignore_index=255)(t, y), lambda t: _naive_topk(t, y, 10, ignore=255), x)
    w = torch.tensor([0.5, 1.0, 2.0], dtype=DT)
    _assert_same(lambda t: topk_loss(t, y, k=20, weight=w, ignore_index=255), lambda t: _naive_topk(t, y, 20, 255, w), x)
    assert TopKLoss().k == 10


def test_topk_ties_select_exactly_k():
    x = torch.zeros(2, 3, 5, 7, dtype=DT, requires_grad=True)  # every CE equals log 3
    y = torch.randint(0, 3, (2, 5, 7))
    N = y.numel()
    K = int(N * 10 / 100)
    v = TopKLoss(k=10)(x, y)
    torch.testing.assert_close(v, torch.tensor(math.log(3), dtype=DT))
    v.backward()
    assert int((x.grad.abs().sum(1) > 0).sum()) == K  # gradient on exactly K voxels
    m = TopKLoss(k=10, reduction="none")(x.detach(), y)
    assert int((m > 0).sum()) == K and m.shape == (2, 5, 7)
    torch.testing.assert_close(TopKLoss(k=10, reduction="sum")(x.detach(), y), torch.tensor(K * math.log(3), dtype=DT))


def test_topk_count_and_op():
    assert topk_count(1000, 10) == 100
    assert topk_count(5, 10) == 1  # at least one voxel
    assert topk_count(7, 100) == 7
    assert topk_count(0, 10) == 0
    v = torch.tensor([0.1, 3.0, 2.0, 3.0, 0.5], dtype=DT, requires_grad=True)
    out = topk_ce_mean(v, 3)
    torch.testing.assert_close(out, torch.tensor((3 + 3 + 2) / 3, dtype=DT))
    out.backward()
    torch.testing.assert_close(v.grad, torch.tensor([0, 1, 1, 1, 0], dtype=DT) / 3)


def _naive_threshold(x, y, t):
    p = torch.softmax(x, 1)
    py = p.gather(1, y.unsqueeze(1)).squeeze(1).reshape(-1)
    num, den = x.sum() * 0.0, 0
    for v in py:  # Eq. 3, voxel by voxel
        if float(v.detach()) < t:
            num = num - torch.log(v)
            den += 1
    return num / den if den else num


@pytest.mark.parametrize("t", [0.3, 0.7, 1.0])
def test_topk_threshold_vs_naive(t):
    x, y = _data((2, 3, 4, 5), 7)
    _assert_same(lambda a: TopKLoss(t=t)(a, y), lambda a: _naive_threshold(a, y, t), x)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_topk_threshold_on_the_compiled_voxel_ce_matches_torch(reduction, ignore_index, monkeypatch):
    """float32 logits on the compiled CPU backend: the threshold TopK reads the compiled per-voxel CE (one
    kernel call forward and backward); value and gradient equal the torch backend's."""
    from fastloss.ops import cpu_stats

    if not cpu_stats.available():
        pytest.skip("fastloss._C has no CPU kernels")
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 5, 6, 7, generator=gen) * 2
    y = torch.randint(0, 4, (2, 1, 5, 6, 7), generator=gen)
    loss = TopKLoss(t=0.4, reduction=reduction, ignore_index=ignore_index)
    calls = []
    real = cpu_stats.voxel_ce_cpu
    monkeypatch.setattr(cpu_stats, "voxel_ce_cpu", lambda *a: calls.append(1) or real(*a))
    out = {}
    for backend in ("auto", "torch"):
        monkeypatch.setenv("FASTLOSS_BACKEND", backend)
        xb = x.clone().requires_grad_()
        v = loss(xb, y)
        (g,) = torch.autograd.grad(v.sum(), xb)
        out[backend] = (v.detach(), g)
    assert calls == [1], "the compiled per-voxel CE did not serve the threshold TopK"
    torch.testing.assert_close(out["auto"][0], out["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["auto"][1], out["torch"][1], rtol=1e-5, atol=1e-7)
    assert out["auto"][1].abs().sum() > 0


def test_topk_threshold_none_selected_is_zero_with_finite_grad():
    y = torch.randint(0, 3, (1, 4, 4))
    x = (_onehot(y, 3) * 50).requires_grad_()
    v = TopKLoss(t=0.1)(x, y)
    v.backward()
    assert v == 0 and torch.isfinite(x.grad).all() and x.grad.abs().max() == 0


def test_topk_all_ignored():
    x = torch.randn(1, 3, 4, 4, dtype=DT, requires_grad=True)
    v = TopKLoss(ignore_index=5)(x, torch.full((1, 4, 4), 5))
    v.backward()
    assert v == 0 and torch.isfinite(x.grad).all()


# ------------------------------------------------------------------------------------------------ Focal
@pytest.fixture
def monai_float64(monkeypatch):
    """MONAI's FocalLoss casts to float32 (``input.float()``); keep float64 so the reference is float64 too."""
    orig = torch.Tensor.float

    def keep64(self, *a, **k):
        return self if self.dtype == torch.float64 else orig(self, *a, **k)

    monkeypatch.setattr(torch.Tensor, "float", keep64)
    from monai.losses import FocalLoss as MonaiFocal

    return MonaiFocal


# alphas and weights exactly representable in float32 (MONAI stores them as float32 tensors). Every
# combination of activation, background, alpha, weight and reduction; the (ignore_index, target kind)
# pairs are cycled through so each of the six appears 18 times.
_CORE = list(
    itertools.product(
        [False, True],  # use_softmax
        [True, False],  # include_background
        [None, 0.25, "seq"],  # alpha
        [None, 2.0, "seq"],  # weight
        ["mean", "sum", "none"],
    )
)
_SIDE = list(itertools.product([None, 1, 255], [True, False]))  # ignore_index, to_onehot_y (labels) or one-hot
FOCAL_GRID = [core + _SIDE[i % len(_SIDE)] + (i,) for i, core in enumerate(_CORE)]


@pytest.mark.parametrize("sm, ib, alpha, weight, reduction, ignore, onehot_y, seed", FOCAL_GRID)
def test_focal_vs_monai_grid(monai_float64, sm, ib, alpha, weight, reduction, ignore, onehot_y, seed):
    C = 3
    kept = C if ib else C - 1
    if alpha == "seq":
        alpha = [0.25, 0.5, 0.75][-kept:]
    if weight == "seq":
        weight = [0.5, 1.0, 2.0][-kept:]
    x, y = _data((2, C, 4, 5), seed)
    if ignore == 255:
        y[0, 0, :3] = 255
    if onehot_y:
        target = y.unsqueeze(1)
    else:
        if ignore == 255:
            target = _onehot(torch.where(y == 255, 0, y), C)
            target[0, :, 0, :3] = 0  # all-zero voxels: the sentinel masks them
        else:
            target = _onehot(y, C)
    kw = dict(include_background=ib, to_onehot_y=onehot_y, gamma=2.0, alpha=alpha, weight=weight,
              reduction=reduction, use_softmax=sm, ignore_index=ignore)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _assert_same(lambda t: FocalLoss(**kw)(t, target), lambda t: monai_float64(**kw)(t, target), x, tol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("sm", [False, True])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 2.0])
def test_focal_vs_monai_dims_gamma(monai_float64, shape, sm, gamma):
    x, y = _data(shape, 11)
    target = y.unsqueeze(1)
    kw = dict(to_onehot_y=True, gamma=gamma, use_softmax=sm)
    _assert_same(lambda t: focal_loss(t, target, **kw), lambda t: monai_float64(**kw)(t, target), x, tol=1e-9)


def test_focal_soft_target_sigmoid_seq_alpha_vs_monai(monai_float64):
    x, y = _data((2, 3, 4, 4), 12)
    soft = _onehot(y, 3)
    soft[0, :, 0, 0] = torch.tensor([0.2, 0.3, 0.5], dtype=DT)  # a non-binary voxel: the elementwise path
    kw = dict(alpha=[0.25, 0.5, 0.75], reduction="sum")
    _assert_same(lambda t: FocalLoss(**kw)(t, soft), lambda t: monai_float64(**kw)(t, soft), x, tol=1e-9)


def test_focal_single_channel_and_warnings(monai_float64):
    x = torch.randn(2, 1, 4, 4, dtype=DT)
    y = torch.randint(0, 2, (2, 1, 4, 4))
    kw = dict(include_background=False, to_onehot_y=True)
    with pytest.warns(UserWarning, match="single channel"):
        ours = FocalLoss(**kw)(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = monai_float64(**kw)(x, y.to(DT))
    torch.testing.assert_close(ours, ref)
    with pytest.warns(UserWarning, match="scalar `alpha` ignored"):
        FocalLoss(include_background=False, use_softmax=True, alpha=0.25)(torch.randn(1, 3, 4, dtype=DT),
                                                                         torch.zeros(1, 1, 4, dtype=torch.long))


def test_focal_eq5_softmax_gamma():
    x, y = _data((2, 3, 5), 13)
    p = torch.softmax(x, 1)
    g = _onehot(y, 3)
    eq5 = -((1 - p) ** 2 * g * p.log()).sum() / (2 * 5)  # Eq. 5 with N = B·voxels
    # MONAI's mean divides by B·C·N elements: scale by C
    torch.testing.assert_close(FocalLoss(use_softmax=True)(x, g) * 3, eq5)


# ------------------------------------------------------------------------------------------------- pCE
@pytest.fixture
def edt_available(monkeypatch):
    """Use fastloss.edt when the extension is built; otherwise a scipy stand-in (tests only)."""
    import importlib

    E = importlib.import_module("fastloss.distance")

    try:
        E.edt(torch.ones(1, 3, dtype=torch.bool), spatial_dims=1)
    except Exception:
        def scipy_edt(mask, spacing=None, *, spatial_dims=None, squared=False, threads=None):
            m = torch.as_tensor(mask).bool()
            sd = spatial_dims or min(m.ndim, 3)
            lead = m.shape[: m.ndim - sd]
            flat = m.reshape((-1,) + tuple(m.shape[m.ndim - sd:])).cpu().numpy()
            out = np.stack([distance_transform_edt(a, sampling=spacing) if (~a).any() else np.full(a.shape, np.inf)
                            for a in flat]).astype(np.float32)
            return torch.from_numpy(out).reshape(lead + tuple(m.shape[m.ndim - sd:]))

        monkeypatch.setattr(E, "edt", scipy_edt)


def _segloss_penalty(mask, sampling=None):
    """Inverted, normalised EDT of one mask, as SegLoss's compute_edts_forPenalizedLoss (generalised to spacing)."""
    if not mask.any():
        return np.zeros(mask.shape)
    if mask.all():
        return np.zeros(mask.shape)
    d = distance_transform_edt(mask, sampling=sampling)
    M, m = d[mask].max(), d[mask].min()
    if M == m:
        return mask.astype(float)
    return (M - d) * mask / (M - m)


def _naive_pce(x, y, sampling=None, ignore=None):
    B, C = x.shape[:2]
    logp = torch.log_softmax(x, 1)
    yn = y.numpy()
    total, count = x.sum() * 0.0, 0
    for b in range(B):
        D = {c: _segloss_penalty(yn[b] == c, sampling) for c in range(C)}
        for idx in np.ndindex(*yn.shape[1:]):
            c = int(yn[b][idx])
            if ignore is not None and c == ignore:
                continue
            total = total - (1 + D[c][idx]) * logp[(b, c) + idx]
            count += 1
    return total / count


def test_penalty_matches_segloss_binary():
    # SegLoss's function literally (binary: fg and bg maps summed); ours gives the same voxel weights.
    y = torch.zeros(1, 9, 9, dtype=torch.long)
    y[0, 2:7, 3:8] = 1
    pos = y[0].numpy().astype(bool)
    neg = ~pos
    pe = distance_transform_edt(pos)
    pe = (pe.max() - pe) * pos
    ne = distance_transform_edt(neg)
    ne = (ne.max() - ne) * neg
    seg = pe / pe.max() + ne / ne.max()
    from fastloss._validation import prepare_target
    from fastloss.losses.distribution import penalty_map_from_labels

    x = torch.zeros(1, 2, 9, 9, dtype=DT)
    D = penalty_map_from_labels(prepare_target(x, y), None).reshape(1, 2, 9, 9)
    ours = (D * _onehot(y, 2)).sum(1)[0].numpy()
    np.testing.assert_allclose(ours, seg, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("shape", [(2, 3, 11), (2, 3, 7, 8), (1, 3, 5, 6, 4)])
def test_pce_vs_naive_scipy(edt_available, shape):
    x, _ = _data(shape, 14)
    B, C = shape[:2]
    g = torch.Generator().manual_seed(15)
    y = torch.zeros((B,) + shape[2:], dtype=torch.long)
    # blocky labels so there are interiors
    sl = tuple(slice(1, max(2, s - 2)) for s in shape[2:])
    y[(slice(None),) + sl] = 1
    y[(slice(None),) + tuple(slice(0, max(1, s // 3)) for s in shape[2:])] = 2
    y[0].view(-1)[torch.randint(0, y[0].numel(), (3,), generator=g)] = 1
    # fastloss.edt returns float32 distances: agreement to float32 precision
    _assert_same(lambda t: DistancePenalizedCELoss()(t, y), lambda t: _naive_pce(t, y), x, tol=1e-6)
    torch.testing.assert_close(DistancePenalizedCELoss()(x, _onehot(y, C)), DistancePenalizedCELoss()(x, y))


def test_pce_spacing_ignore_and_reductions(edt_available):
    x, _ = _data((2, 3, 8, 9), 16)
    y = torch.zeros(2, 8, 9, dtype=torch.long)
    y[:, 2:7, 1:6] = 1
    y[:, 3:5, 6:9] = 2
    y[1, 0, :4] = 7
    ours = DistancePenalizedCELoss(spacing=(1.0, 2.5), ignore_index=7)
    _assert_same(lambda t: ours(t, y), lambda t: _naive_pce(t, y, (1.0, 2.5), ignore=7), x, tol=1e-6)
    m = DistancePenalizedCELoss(reduction="none", ignore_index=7)(x, y)
    assert m.shape == (2, 8, 9) and (m[1, 0, :4] == 0).all()
    torch.testing.assert_close(DistancePenalizedCELoss(reduction="sum", ignore_index=7)(x, y), m.sum())
    torch.testing.assert_close(distance_penalized_ce_loss(x, y, ignore_index=7), m.sum() / (y != 7).sum())


def test_pce_precomputed_distance_map():
    x, y = _data((2, 3, 5, 5), 17)
    D = torch.rand(2, 3, 5, 5, dtype=DT)
    logp = torch.log_softmax(x, 1)
    ref = -((1 + D) * _onehot(y, 3) * logp).sum() / y.numel()
    torch.testing.assert_close(DistancePenalizedCELoss()(x, y, distance_map=D), ref)
    Dv = torch.rand(2, 5, 5, dtype=DT)
    ref_v = -((1 + Dv) * logp.gather(1, y.unsqueeze(1)).squeeze(1)).mean()
    torch.testing.assert_close(DistancePenalizedCELoss()(x, y, Dv), ref_v)
    torch.testing.assert_close(DistancePenalizedCELoss()(x, y, Dv.unsqueeze(1)), ref_v)
    with pytest.raises(ValueError, match="distance_map"):
        DistancePenalizedCELoss()(x, y, torch.rand(2, 3, 5, 4, dtype=DT))
    with pytest.raises(TypeError, match="distance_map"):
        DistancePenalizedCELoss()(x, y, torch.ones(2, 5, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        DistancePenalizedCELoss()(x, y, torch.full((2, 5, 5), float("inf"), dtype=DT))


def test_pce_absent_and_full_class_finite(edt_available):
    x = torch.randn(1, 3, 6, 6, dtype=DT, requires_grad=True)
    y = torch.zeros(1, 6, 6, dtype=torch.long)  # class 0 fills the image, classes 1, 2 absent
    v = DistancePenalizedCELoss()(x, y)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(x.grad).all()
    torch.testing.assert_close(v, F.cross_entropy(x.detach(), y))  # D = 0: no boundary


# ------------------------------------------------------------------------------------------- gradcheck
GRAD_MAKERS = [
    lambda: CrossEntropyLoss(weight=[0.5, 1.0, 2.0], ignore_index=2),
    lambda: CrossEntropyLoss(sigmoid=True),
    lambda: WeightedCrossEntropyLoss(),
    lambda: TopKLoss(k=30),
    lambda: TopKLoss(t=0.5),
    lambda: FocalLoss(use_softmax=True, alpha=[0.25, 0.5, 0.75], to_onehot_y=True),
    lambda: FocalLoss(alpha=0.25, ignore_index=1, to_onehot_y=True, reduction="sum"),
    lambda: DistancePenalizedCELoss(),
]
GRAD_IDS = ["CE-weight-ignore", "BCE", "WCE", "TopK30", "TopK-t0.5", "Focal-softmax", "Focal-sigmoid-sum", "pCE"]


@pytest.mark.parametrize("make", GRAD_MAKERS, ids=GRAD_IDS)
def test_gradcheck(edt_available, make):
    x, y = _data((2, 3, 2, 3), 18, scale=1.0)
    y[0, 0, 0] = 1
    loss = make()
    xx = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: loss(t, y.unsqueeze(1)), (xx,))


@pytest.mark.parametrize("make", GRAD_MAKERS, ids=GRAD_IDS)
@pytest.mark.parametrize("backend", ["triton", "auto"])
def test_loss_times_two_on_the_custom_backwards(edt_available, make, backend, monkeypatch):
    """On the paths with custom backwards (triton under the interpreter; auto's compiled CPU kernels once
    they land), float32: 2·L doubles the gradient exactly and 0.37·L gives 0.37 times the float64 torch
    gradient. (On the torch backend autograd guarantees both, so the check is run where it can fail.)"""
    skip_unless_backend_runs(backend)
    x, y = _data((2, 3, 4, 5), 19, scale=1.5)
    y[0, 0, 0] = 1
    assert_upstream_gradient_scales(make(), x, y.unsqueeze(1), backend, monkeypatch)


# ------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "make, exc, match",
    [
        (lambda: TopKLoss(k=0), ValueError, "k"),
        (lambda: TopKLoss(k=100.5), ValueError, "k"),
        (lambda: TopKLoss(k=-5), ValueError, "k"),
        (lambda: TopKLoss(t=0.0), ValueError, "t"),
        (lambda: TopKLoss(t=1.5), ValueError, "t"),
        (lambda: TopKLoss(k=10, t=0.5), ValueError, "not both"),
        (lambda: TopKLoss(k="10"), TypeError, "k"),
        (lambda: CrossEntropyLoss(reduction="avg"), ValueError, "reduction"),
        (lambda: CrossEntropyLoss(weight=[1.0, -1.0]), ValueError, "weight"),
        (lambda: CrossEntropyLoss(ignore_index=1.5), TypeError, "ignore_index"),
        (lambda: FocalLoss(gamma=-1), ValueError, "gamma"),
        (lambda: FocalLoss(alpha=1.5), ValueError, "alpha"),
        (lambda: FocalLoss(alpha=[0.5, 2.0]), ValueError, "alpha"),
        (lambda: FocalLoss(weight=[-1.0, 1.0]), ValueError, "weight"),
        (lambda: DistancePenalizedCELoss(spacing=(1.0, 0.0)), ValueError, "spacing"),
    ],
)
def test_bad_constructor_args(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


@pytest.mark.parametrize("cls", [CrossEntropyLoss, WeightedCrossEntropyLoss, TopKLoss, FocalLoss, DistancePenalizedCELoss])
def test_bad_forward_inputs(cls, edt_available):
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(TypeError, match="float"):
        cls()(x, torch.zeros(1, 1, 4, 4))  # float labels without to_onehot_y
    with pytest.raises(ValueError, match="labels"):
        cls()(x, torch.full((1, 1, 4, 4), 3))  # label >= C
    with pytest.raises(ValueError, match="labels"):
        cls()(x, torch.full((1, 1, 4, 4), -1))  # negative label
    with pytest.raises(ValueError, match="shape"):
        cls()(x, torch.zeros(1, 1, 4, 5, dtype=torch.long))
    if cls in (TopKLoss, DistancePenalizedCELoss):  # CE and Focal take (B, C) logits (MONAI's Focal, torch's CE)
        with pytest.raises(ValueError, match="dims"):
            cls()(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="dims"):
        cls()(torch.randn(1, 3, 2, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        cls()(torch.randn(0, 3, 4), torch.zeros(0, 1, 4, dtype=torch.long))


def test_bad_weight_length_and_class_weight_helper_errors():
    x = torch.randn(1, 3, 4)
    y = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="one value per class"):
        CrossEntropyLoss(weight=[1.0, 2.0])(x, y)
    with pytest.raises(ValueError, match="alpha"):
        FocalLoss(alpha=[0.5, 0.5], to_onehot_y=True)(x, y.unsqueeze(1))
    with pytest.raises(ValueError, match="class_weight"):
        FocalLoss(weight=[0.5, 0.5], to_onehot_y=True)(x, y.unsqueeze(1))
    with pytest.raises(ValueError, match="labels"):
        class_weights_from_labels(torch.tensor([0, 3]), 3)
    with pytest.raises(ValueError, match="num_classes"):
        class_weights_from_labels(torch.tensor([0, 1]), 1)
    with pytest.raises(TypeError):
        class_weights_from_labels([0, 1], 2)
    with pytest.raises(ValueError, match="2 channels"):
        TopKLoss()(torch.randn(1, 1, 4), torch.zeros(1, 1, 4, dtype=torch.long))


# ---------------------------------------------------------------------------------- Triton vs torch
@pytest.mark.parametrize(
    "make",
    [
        lambda: CrossEntropyLoss(weight=[1.0, 2.0, 0.5]),
        lambda: FocalLoss(to_onehot_y=True, alpha=[0.25, 0.5, 0.75], ignore_index=1),
        lambda: TopKLoss(k=10),
        lambda: TopKLoss(k=30, ignore_index=1, reduction="sum"),
    ],
)
def test_triton_backend_matches_torch(make, monkeypatch):
    pytest.importorskip("triton")
    x, y = _data((2, 3, 6, 7), 19)
    x = x.float()
    y = y.unsqueeze(1)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    vt, gt = _grad(lambda t: make()(t, y), x)
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    vk, gk = _grad(lambda t: make()(t, y), x)
    torch.testing.assert_close(vk, vt, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gk, gt, rtol=1e-5, atol=1e-7)


def test_triton_topk_ties_share_gradient(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    x = torch.zeros(2, 3, 5, 7, requires_grad=True)  # all CE tie at log 3
    y = torch.randint(0, 3, (2, 5, 7))
    v = TopKLoss(k=10)(x, y)
    v.backward()
    torch.testing.assert_close(v, torch.tensor(math.log(3)))
    # every tied voxel gets K/N of the gradient weight: total |dL/dce| over voxels = 1
    p = torch.full((3,), 1 / 3)
    per_voxel = (x.grad.abs().sum(1) / (2 * (1 - p[0]))).sum()
    torch.testing.assert_close(per_voxel, torch.tensor(1.0), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("k", [0.5, 10.0, 37.0, 100.0])
def test_topk_traced_matches_host_count(reduction, k):
    """The compile-time TopK (tensor K, sort-based) equals the eager one (host K, torch.topk), values
    and gradients; distinct values, so the selected set is unique."""
    from fastloss.ops.topk import topk_count, topk_traced

    g = torch.Generator().manual_seed(5)
    ce = torch.rand(3, 41, dtype=torch.float64, generator=g).requires_grad_(True)
    valid = torch.rand(3, 41, generator=g) > 0.3
    ce_m = ce * valid
    n = int(valid.sum())
    K = topk_count(n, k)
    flat = ce_m.reshape(-1)
    top = torch.topk(flat, K).indices
    keep = torch.zeros_like(flat).index_fill(0, top, 1.0)
    want = {"sum": (flat * keep).sum(), "mean": (flat * keep).sum() / K, "none": (flat * keep).reshape(3, 41)}[reduction]
    got = topk_traced(ce_m, valid.sum(), k, reduction)
    torch.testing.assert_close(got, want)
    w = torch.randn_like(got)
    (g1,) = torch.autograd.grad((got * w).sum(), ce, retain_graph=True)
    (g2,) = torch.autograd.grad((want * w).sum(), ce)
    torch.testing.assert_close(g1, g2)


def test_topk_traced_no_valid_voxel_is_zero():
    from fastloss.ops.topk import topk_traced

    ce = torch.rand(2, 5, requires_grad=True)
    out = topk_traced(ce * 0, torch.tensor(0), 10.0, "mean")
    assert out.item() == 0.0
    (g,) = torch.autograd.grad(out, ce)
    assert torch.equal(g, torch.zeros_like(g))
