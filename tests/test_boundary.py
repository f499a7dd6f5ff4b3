"""BoundaryLoss (Eq. 20) and HausdorffDTLoss (Eq. 21) against MONAI 1.6.1, and against naive scipy formulas
where fastloss goes beyond MONAI (1D, spacing, ignore_index, precomputed maps)."""

import inspect
import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from fastloss.losses.boundary import BoundaryLoss, HausdorffDTLoss, boundary_loss, hausdorff_dt_loss

monai_losses = pytest.importorskip("monai.losses")

TOL = dict(rtol=1e-6, atol=1e-6)


def _onehot(y, C):
    return torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).to(torch.float64)


def _kervadec_phi(g: np.ndarray, spacing=None) -> np.ndarray:
    """Kervadec's one_hot2dist for one mask, edt(~g)·~g − (edt(g) − 1)·g, with MONAI's rule: all zeros for
    an empty or a full mask (no boundary)."""
    g = g.astype(bool)
    if not g.any() or g.all():
        return np.zeros(g.shape)
    neg = ~g
    return distance_transform_edt(neg, sampling=spacing) * neg - (distance_transform_edt(g, sampling=spacing) - 1) * g


def naive_bd(x, y_onehot, include_background=True, act="softmax", spacing=None, reduction="mean", batch=False):
    """Eq. (20) written out with scipy: mean over voxels of φ·p per (image, class), batch mean, reduction."""
    p = {"softmax": lambda t: torch.softmax(t, 1), "sigmoid": torch.sigmoid, "none": lambda t: t}[act](x)
    B, C = x.shape[:2]
    chans = range(C) if include_background else range(1, C)
    rows = []
    for b in range(B):
        row = []
        for c in chans:
            phi = torch.from_numpy(_kervadec_phi(y_onehot[b, c].numpy() > 0.5, spacing))
            row.append((phi * p[b, c]).mean())
        rows.append(torch.stack(row))
    f = torch.stack(rows)
    if batch:
        f = f.mean(0)
    return {"mean": f.mean(), "sum": f.sum(), "none": f}[reduction]


def _scenes(ndim, B=2, C=3, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, C) + (n, n - 1, n - 2)[:ndim]
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, C, (B, 1) + shape[2:], generator=g)
    return x, y


def _bd_scene(ndim, seed, C=3):
    """Three images: every class present; one class covering the whole image (full mask, the other classes
    empty); class C-1 absent (empty mask) with a mixed rest."""
    x, y = _scenes(ndim, B=3, C=C, n=6, seed=seed)
    y = y.clone()
    y[1] = 1
    y[2] = y[2].clamp(max=C - 2)
    y[2].view(-1)[:2] = torch.tensor([0, C - 2])  # both remaining classes present
    return x, y


def _compare(ours_loss, monai_loss, x, y_ours, y_monai, ours_map=None):
    """Values (shape too) and input gradients of a weighted sum of the outputs agree within 1e-6."""
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    a = ours_loss(x1, y_ours) if ours_map is None else ours_loss(x1, y_ours, ours_map)
    b = monai_loss(x2, y_monai)
    assert a.shape == b.shape
    assert a.dtype == b.dtype
    torch.testing.assert_close(a, b, **TOL)
    w = torch.linspace(0.5, 1.5, a.numel(), dtype=a.dtype).reshape(a.shape)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)
    return a


def _act_kwargs(act):
    return {"softmax": dict(softmax=True), "sigmoid": dict(sigmoid=True), "tanh": dict(other_act=torch.tanh),
            "none": {}}[act]


# ------------------------------------------------------------------------------------- boundary vs MONAI
BD_GRID = list(itertools.product(
    [2, 3],                                   # spatial dims
    [True, False],                            # include_background
    ["softmax", "sigmoid", "tanh", "none"],  # activation
    ["labels", "onehot"],                     # to_onehot_y=True with labels, or a one-hot target
    [False, True],                            # batch
    ["mean", "sum", "none"],                  # reduction
))


@pytest.mark.parametrize("ndim,include_background,act,target,batch,reduction", BD_GRID)
def test_boundary_matches_monai(ndim, include_background, act, target, batch, reduction):
    x, y = _bd_scene(ndim, seed=ndim * 5 + batch)
    if act == "none":
        x = torch.rand_like(x)  # read as probabilities by both
    kw = dict(include_background=include_background, batch=batch, reduction=reduction, **_act_kwargs(act))
    if target == "labels":
        kw["to_onehot_y"] = True
        yt = y if ndim == 3 else y[:, 0]  # (B, 1, *sp) and (B, *sp): MONAI takes both with to_onehot_y
    else:
        yt = _onehot(y, 3)
    a = _compare(BoundaryLoss(**kw), monai_losses.BoundaryLoss(**kw), x, yt, yt)
    if reduction == "none":
        kept = 3 if include_background else 2
        assert a.shape == ((kept,) if batch else (3, kept))


def test_boundary_full_and_empty_masks_give_zero():
    # image 1 is all class 1: class 1 full, classes 0 and 2 empty; every value of that image is 0
    x, y = _bd_scene(2, seed=1)
    f = BoundaryLoss(softmax=True, reduction="none")(x, y)
    assert torch.equal(f[1], torch.zeros(3, dtype=f.dtype))
    assert (f[0] != 0).all()
    phi = BoundaryLoss().compute_distance_map(_onehot(y, 3))
    assert torch.equal(phi[1], torch.zeros_like(phi[1]))
    assert phi[2, 2].abs().max() == 0 and phi[2, 1].abs().max() > 0  # empty class 2, mixed class 1


@pytest.mark.parametrize("ndim", [2, 3])
def test_compute_distance_map_equals_monai(ndim):
    x, y = _bd_scene(ndim, seed=9)
    oh = _onehot(y, 3)
    ours = BoundaryLoss().compute_distance_map(oh)
    ref = monai_losses.BoundaryLoss().compute_distance_map(oh)
    assert ours.dtype == ref.dtype == torch.float32 and ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
    # soft targets are thresholded at 0.5 by both
    soft = 0.8 * oh + 0.1
    torch.testing.assert_close(BoundaryLoss().compute_distance_map(soft), ref, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match=r"1 to 3 spatial dims, got 6 dims"):
        BoundaryLoss().compute_distance_map(torch.zeros(1, 2, 3, 3, 3, 3))


def test_boundary_soft_target_and_labels_without_to_onehot_y():
    x, y = _bd_scene(3, seed=4)
    oh = _onehot(y, 3)
    soft = 0.7 * oh + 0.1  # MONAI thresholds the target at 0.5 for the map, and uses nothing else of it
    kw = dict(softmax=True, include_background=False)
    _compare(BoundaryLoss(**kw), monai_losses.BoundaryLoss(**kw), x, soft, soft)
    # integer labels are accepted without to_onehot_y (MONAI would need to_onehot_y=True)
    _compare(BoundaryLoss(**kw), monai_losses.BoundaryLoss(to_onehot_y=True, **kw), x, y, y)


def test_boundary_float32_input():
    x, y = _bd_scene(3, seed=6)
    x = x.float()
    kw = dict(softmax=True, to_onehot_y=True, reduction="none")
    a = BoundaryLoss(**kw)(x, y)
    b = monai_losses.BoundaryLoss(**kw)(x, y)
    assert a.dtype == b.dtype == torch.float32
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kw", [dict(softmax=True), dict(to_onehot_y=True, sigmoid=True),
                                dict(include_background=False, sigmoid=True)], ids=["softmax", "onehot", "bg"])
def test_boundary_single_channel_warnings_and_values(kw):
    x, y = _scenes(2, B=2, C=1, n=6, seed=2)
    y = y.clone()
    y[0].view(-1)[:3] = 1
    y = y.double()  # a binary (B, 1, *sp) target
    with pytest.warns(UserWarning, match="single channel prediction") as ours_w:
        a = BoundaryLoss(**kw)(x, y)
    with pytest.warns(UserWarning, match="single channel prediction") as monai_w:
        b = monai_losses.BoundaryLoss(**kw)(x, y)
    assert [str(w.message) for w in ours_w] == [str(w.message) for w in monai_w]
    torch.testing.assert_close(a, b, **TOL)


def test_boundary_signature_is_monais():
    ours = list(inspect.signature(BoundaryLoss.__init__).parameters.values())[1:]
    ref = list(inspect.signature(monai_losses.BoundaryLoss.__init__).parameters.values())[1:]
    assert [p.name for p in ours[:len(ref)]] == [p.name for p in ref]
    for p, q in zip(ours, ref):
        assert p.kind == q.kind
        assert p.default == getattr(q.default, "value", q.default), p.name  # reduction: LossReduction.MEAN
    extra = ours[len(ref):]
    assert [(p.name, p.kind, p.default) for p in extra] == [
        ("spacing", inspect.Parameter.KEYWORD_ONLY, None), ("ignore_index", inspect.Parameter.KEYWORD_ONLY, None),
        ("allow_1d", inspect.Parameter.KEYWORD_ONLY, False)]
    assert list(inspect.signature(BoundaryLoss.forward).parameters) == ["self", "input", "target", "distance_map"]


def test_registry_bd_is_monai_softmax_without_background():
    from fastloss.registry import get_loss

    x, y = _bd_scene(3, seed=12)
    _compare(get_loss("BD"), monai_losses.BoundaryLoss(softmax=True, include_background=False, to_onehot_y=True),
             x, y, y)


# ------------------------------------------------------------------------------ fastloss extensions
@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("batch", [False, True])
def test_boundary_matches_naive(ndim, batch):
    # 1D is a fastloss extension (MONAI refuses it); 2D/3D are the scipy oracle as a second opinion
    x, y = _scenes(ndim, seed=ndim)
    y[1] = 2  # a full mask
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ours = BoundaryLoss(softmax=True, include_background=False, batch=batch, allow_1d=ndim == 1)(x1, y)
    ref = naive_bd(x2, _onehot(y, 3), include_background=False, batch=batch)
    torch.testing.assert_close(ours, ref, **TOL)
    (ours * 2).backward()
    (ref * 2).backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)


def test_boundary_refuses_1d_as_monai_unless_allowed():
    """MONAI's BoundaryLoss raises ValueError for 1D inputs (its test_dimension_validation): so does the
    MONAI-named class by default; allow_1d=True, get_loss("BD") and DiceBD take them."""
    from fastloss.losses.compound import DiceBoundaryLoss
    from fastloss.registry import get_loss

    x, y = _scenes(1, seed=4)
    with pytest.raises(ValueError, match="2D or 3D"):
        BoundaryLoss(softmax=True)(x, y)
    with pytest.raises(ValueError):
        monai_losses.BoundaryLoss(softmax=True)(x, torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).float())
    want = BoundaryLoss(softmax=True, include_background=False, allow_1d=True)(x, y)
    torch.testing.assert_close(get_loss("BD")(x, y), want)
    assert torch.isfinite(DiceBoundaryLoss(alpha=0.5)(x, y))
    with pytest.raises(TypeError):
        BoundaryLoss(allow_1d="yes")


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_boundary_reductions_sigmoid_spacing(reduction):
    x, y = _scenes(3, seed=5)
    sp = (1.5, 1.0, 0.7)
    ours = BoundaryLoss(sigmoid=True, include_background=False, reduction=reduction, spacing=sp)(x, _onehot(y, 3))
    ref = naive_bd(x, _onehot(y, 3), include_background=False, act="sigmoid", spacing=sp, reduction=reduction)
    if reduction == "none":
        assert ours.shape == (2, 2)
    torch.testing.assert_close(ours, ref, **TOL)


def test_boundary_precomputed_map_and_no_grad_through_it():
    x, y = _scenes(2, seed=3)
    loss = BoundaryLoss(softmax=True, include_background=False)
    phi = torch.stack([torch.stack([torch.from_numpy(_kervadec_phi(_onehot(y, 3)[b, c].numpy() > 0.5))
                                    for c in range(3)]) for b in range(2)])
    phi.requires_grad_()
    torch.testing.assert_close(loss(x, y, phi), loss(x, y), **TOL)
    torch.testing.assert_close(loss.distance_map(x, y)[:, 1:], phi[:, 1:].detach(), rtol=0, atol=1e-6)
    # background-free map (B, C-1, ...) is accepted too; the background channel is ignored either way
    torch.testing.assert_close(loss(x, y, phi[:, 1:]), loss(x, y), **TOL)
    torch.testing.assert_close(loss(x, y, 5 + phi), loss(x, y, phi) + 5 * torch.softmax(x, 1)[:, 1:].mean(), **TOL)
    xr = x.clone().requires_grad_()
    loss(xr, y, phi).backward()
    assert phi.grad is None
    with pytest.raises(ValueError, match="distance_map must have shape"):
        loss(x, y, phi[:, :1])
    with pytest.raises(TypeError):
        loss(x, y, phi.long())
    # with the background kept only the full map is accepted
    with pytest.raises(ValueError, match=r"distance_map must have shape \(2, 3, 7, 6\), got \(2, 2, 7, 6\)"):
        BoundaryLoss(softmax=True)(x, y, phi[:, 1:])


@pytest.mark.parametrize("batch", [False, True])
def test_boundary_ignore_index_masks_voxels(batch):
    x, y = _scenes(2, seed=4)
    y = y.clone()
    y[:, :, :2] = 255
    y[1, :, 4:] = 255  # image 1 has fewer counted voxels than image 0
    ours = BoundaryLoss(softmax=True, include_background=False, ignore_index=255, batch=batch,
                        reduction="none")(x, y)
    # naive: map from the target with ignored voxels as background, mean over counted voxels (pooled over
    # the batch with batch=True)
    m = (y[:, 0] != 255)
    g = _onehot(torch.where(y == 255, torch.zeros_like(y), y), 3) * m.unsqueeze(1)
    p = torch.softmax(x, 1)
    num = torch.zeros(2, 2, dtype=torch.float64)
    for b in range(2):
        for c in (1, 2):
            phi = torch.from_numpy(_kervadec_phi(g[b, c].numpy() > 0.5))
            num[b, c - 1] = (phi * p[b, c])[m[b]].sum()
    den = m.flatten(1).sum(1).double()
    ref = num.sum(0) / den.sum() if batch else num / den[:, None]
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, **TOL)


def test_boundary_absent_class_finite_and_gradcheck():
    x, y = _scenes(2, B=2, C=3, n=4, seed=7)
    y = y.clamp(max=1)  # class 2 absent
    y[1] = 1  # and a full mask
    xr = x.clone().requires_grad_()
    v = BoundaryLoss(softmax=True)(xr, y)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(xr.grad).all()
    loss = BoundaryLoss(softmax=True, include_background=False)
    phi = loss.distance_map(x, y)  # computed once
    assert torch.autograd.gradcheck(lambda t: loss(t, y, phi), (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: boundary_loss(t, y, sigmoid=True, batch=True, reduction="none"),
                                    (x.clone().requires_grad_(),))


def test_boundary_bad_arguments():
    with pytest.raises(ValueError):
        BoundaryLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError):
        BoundaryLoss(softmax=True, other_act=torch.tanh)
    with pytest.raises(ValueError):
        BoundaryLoss(reduction="avg")
    with pytest.raises(ValueError):
        BoundaryLoss(spacing=(1.0, -1.0))
    with pytest.raises(TypeError):
        BoundaryLoss(other_act=3)
    with pytest.raises(TypeError):
        BoundaryLoss(batch="yes")
    with pytest.raises(TypeError):
        BoundaryLoss(True, False, False, False, None, "mean", False, None)  # additions are keyword only
    assert BoundaryLoss(sigmoid=True).activation == "sigmoid"
    assert BoundaryLoss().activation == "none"  # MONAI's default: no activation
    x, y = _scenes(2)
    with pytest.raises(ValueError):
        BoundaryLoss()(x, y[:, :, :3])


# ---------------------------------------------------------------------------------------- Hausdorff
HD_GRID = list(itertools.product(
    [2, 3],                                   # spatial dims
    [False, True],                            # include_background
    ["softmax", "sigmoid", "none"],          # activation
    [False, True],                            # batch
    ["mean", "sum", "none"],                  # reduction
))


@pytest.mark.parametrize("ndim,include_background,act,batch,reduction", HD_GRID)
def test_hausdorff_matches_monai(ndim, include_background, act, batch, reduction):
    x, y = _scenes(ndim, n=6, seed=ndim * 7 + batch)
    if act == "none":
        x = torch.rand_like(x)  # probabilities, thresholded at 0.5 by both
    kw = dict(include_background=include_background, batch=batch, reduction=reduction, **_act_kwargs(act))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _compare(HausdorffDTLoss(**kw), monai_losses.HausdorffDTLoss(**kw), x, _onehot(y, 3), _onehot(y, 3))


@pytest.mark.parametrize("alpha", [1.0, 1.5, 3.0])
def test_hausdorff_alpha_labels_and_other_act(alpha):
    x, y = _scenes(3, n=6, seed=11)
    kw = dict(alpha=alpha, softmax=True, to_onehot_y=True)
    _compare(HausdorffDTLoss(**kw), monai_losses.HausdorffDTLoss(**kw), x, y, y)
    kw = dict(alpha=alpha, other_act=torch.tanh, include_background=True)
    _compare(HausdorffDTLoss(**kw), monai_losses.HausdorffDTLoss(**kw), x, _onehot(y, 3), _onehot(y, 3))


def test_hausdorff_single_channel_warnings_and_values():
    x, y = _scenes(2, C=1, n=6, seed=2)
    y = y.clamp(0, 1)
    x = x + 0.3
    kw = dict(softmax=True, to_onehot_y=True)  # both ignored (with MONAI's warnings) for one channel
    with pytest.warns(UserWarning, match="single channel prediction"):
        ours = HausdorffDTLoss(**kw)
        a = ours(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        b = monai_losses.HausdorffDTLoss(**kw)(x, y.double())
    torch.testing.assert_close(a, b, **TOL)


def test_hausdorff_1d_ignore_index_and_gradcheck():
    # 1D (MONAI refuses it): against scipy fields written out here.
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 11, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (2, 1, 11), generator=g)
    y[:, :, :2] = -1
    p = torch.softmax(x, 1)
    m = (y[:, 0] != -1).double()
    oh = _onehot(y.clamp(min=0), 3) * m.unsqueeze(1)
    pm = p * m.unsqueeze(1)

    def field(mask):
        if not mask.any() or mask.all():
            return np.zeros(mask.shape)
        return distance_transform_edt(mask) + distance_transform_edt(~mask)

    vals = []
    for b in range(2):
        for c in (1, 2):
            w = torch.from_numpy(field(oh[b, c].numpy() > 0.5) ** 2 + field(pm[b, c].detach().numpy() > 0.5) ** 2)
            vals.append(((pm[b, c] - oh[b, c]) ** 2 * w).sum() / m[b].sum())
    ours = HausdorffDTLoss(softmax=True, ignore_index=-1)(x, y)
    torch.testing.assert_close(ours, torch.stack(vals).mean(), **TOL)
    xs = torch.randn(1, 3, 5, 4, dtype=torch.float64, generator=g)
    ys = torch.randint(0, 2, (1, 1, 5, 4), generator=g)  # class 2 absent
    v = hausdorff_dt_loss(xs, ys, softmax=True)
    assert torch.isfinite(v)
    assert torch.autograd.gradcheck(lambda t: HausdorffDTLoss(softmax=True)(t, ys), (xs.clone().requires_grad_(),),
                                    fast_mode=True)


def test_hausdorff_bad_arguments():
    with pytest.raises(ValueError):
        HausdorffDTLoss(alpha=-1.0)
    with pytest.raises(TypeError):
        HausdorffDTLoss(alpha="2")
    with pytest.raises(ValueError):
        HausdorffDTLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError):
        HausdorffDTLoss(reduction="max")
    x, y = _scenes(2)
    with pytest.raises(ValueError):
        HausdorffDTLoss()(x, y[:, :, :3])
