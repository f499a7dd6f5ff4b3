"""BoundaryLoss (Eq. 20) against a naive scipy-based formula, HausdorffDTLoss against MONAI 1.6.1."""

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
    """Kervadec's one_hot2dist for one mask: edt(~g)·~g − (edt(g) − 1)·g, 0 for an empty mask."""
    g = g.astype(bool)
    if not g.any():
        return np.zeros(g.shape)
    neg = ~g
    return distance_transform_edt(neg, sampling=spacing) * neg - (distance_transform_edt(g, sampling=spacing) - 1) * g


def naive_bd(x, y_onehot, include_background=False, act="softmax", spacing=None, reduction="mean"):
    p = torch.softmax(x, 1) if act == "softmax" else torch.sigmoid(x)
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
    return {"mean": f.mean(), "sum": f.sum(), "none": f}[reduction]


def _scenes(ndim, B=2, C=3, n=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape = (B, C) + (n, n - 1, n - 2)[:ndim]
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, C, (B, 1) + shape[2:], generator=g)
    return x, y


@pytest.mark.parametrize("ndim", [1, 2, 3])
@pytest.mark.parametrize("include_background", [False, True])
def test_boundary_matches_naive(ndim, include_background):
    x, y = _scenes(ndim, seed=ndim)
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    ours = BoundaryLoss(include_background=include_background)(x1, y)
    ref = naive_bd(x2, _onehot(y, 3), include_background)
    torch.testing.assert_close(ours, ref, **TOL)
    (ours * 2).backward()
    (ref * 2).backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)


@pytest.mark.parametrize("reduction", ["none", "sum"])
def test_boundary_reductions_sigmoid_spacing(reduction):
    x, y = _scenes(3, seed=5)
    sp = (1.5, 1.0, 0.7)
    ours = BoundaryLoss(sigmoid=True, reduction=reduction, spacing=sp)(x, _onehot(y, 3))
    ref = naive_bd(x, _onehot(y, 3), act="sigmoid", spacing=sp, reduction=reduction)
    if reduction == "none":
        assert ours.shape == (2, 2, 1, 1, 1)
        ours = ours.reshape(2, 2)
    torch.testing.assert_close(ours, ref, **TOL)


def test_boundary_precomputed_map_and_no_grad_through_it():
    x, y = _scenes(2, seed=3)
    loss = BoundaryLoss()
    phi = torch.stack([torch.stack([torch.from_numpy(_kervadec_phi(_onehot(y, 3)[b, c].numpy() > 0.5))
                                    for c in range(3)]) for b in range(2)])
    phi.requires_grad_()
    torch.testing.assert_close(loss(x, y, phi), loss(x, y), **TOL)
    # background-free map (B, C-1, ...) is accepted too; the background channel is ignored either way
    torch.testing.assert_close(loss(x, y, phi[:, 1:]), loss(x, y), **TOL)
    xr = x.clone().requires_grad_()
    loss(xr, y, phi).backward()
    assert phi.grad is None
    with pytest.raises(ValueError, match="distance_map must have shape"):
        loss(x, y, phi[:, :1])
    with pytest.raises(TypeError):
        loss(x, y, phi.long())


def test_boundary_ignore_index_masks_voxels():
    x, y = _scenes(2, seed=4)
    y = y.clone()
    y[:, :, :2] = 255
    ours = BoundaryLoss(ignore_index=255)(x, y)
    # naive: map from the target with ignored voxels as background, mean over counted voxels
    m = (y[:, 0] != 255)
    g = _onehot(torch.where(y == 255, torch.zeros_like(y), y), 3) * m.unsqueeze(1)
    p = torch.softmax(x, 1)
    vals = []
    for b in range(2):
        for c in (1, 2):
            phi = torch.from_numpy(_kervadec_phi(g[b, c].numpy() > 0.5))
            vals.append((phi * p[b, c])[m[b]].sum() / m[b].sum())
    torch.testing.assert_close(ours, torch.stack(vals).mean(), **TOL)


def test_boundary_absent_class_finite_and_gradcheck():
    x, y = _scenes(2, B=1, C=3, n=4, seed=7)
    y = y.clamp(max=1)  # class 2 absent
    xr = x.clone().requires_grad_()
    v = BoundaryLoss()(xr, y)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(xr.grad).all()
    loss = BoundaryLoss()
    phi = loss.distance_map(x, y)  # (B, C, N), computed once
    assert torch.autograd.gradcheck(lambda t: loss(t, y, phi), (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda t: boundary_loss(t, y, include_background=True),
                                    (x.clone().requires_grad_(),))


def test_boundary_bad_arguments():
    with pytest.raises(ValueError):
        BoundaryLoss(sigmoid=True, softmax=True)
    with pytest.raises(ValueError):
        BoundaryLoss(reduction="avg")
    with pytest.raises(ValueError):
        BoundaryLoss(spacing=(1.0, -1.0))
    with pytest.raises(TypeError):
        BoundaryLoss(other_act=3)
    assert BoundaryLoss(sigmoid=True).activation == "sigmoid"
    assert BoundaryLoss().activation == "softmax"


# ---------------------------------------------------------------------------------------- Hausdorff
HD_GRID = list(itertools.product(
    [2, 3],                                   # spatial dims
    [False, True],                            # include_background
    ["softmax", "sigmoid", "none"],          # activation
    [False, True],                            # batch
    ["mean", "sum", "none"],                  # reduction
))


def _act_kwargs(act):
    return {"softmax": dict(softmax=True), "sigmoid": dict(sigmoid=True), "none": {}}[act]


def _compare(ours_loss, monai_loss, x, y_ours, y_monai):
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    a = ours_loss(x1, y_ours)
    b = monai_loss(x2, y_monai)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, **TOL)
    w = torch.linspace(0.5, 1.5, a.numel(), dtype=a.dtype).reshape(a.shape)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, **TOL)


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
