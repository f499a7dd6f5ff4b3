"""MCCLoss, GeneralizedWassersteinDiceLoss, AsymmetricUnifiedFocalLoss and NACLLoss side by side with MONAI
1.6.1's classes in float64 (values and input gradients, the loss scaled by 2 before backward), 2D and 3D,
integer labels and one-hot targets; the ops they use (soft confusion matrix, neighbourhood filter) against
plain torch / MONAI's filters; gradcheck; the compiled CPU statistics against the torch backend; bad input;
torch.compile(fullgraph=True)."""

import warnings

import numpy as np
import pytest
import torch

from _compiled import assert_compiled_step_matches_eager

import fastloss
from fastloss.losses.monai_more import (
    AsymmetricUnifiedFocalLoss,
    GeneralizedWassersteinDiceLoss,
    MCCLoss,
    NACLLoss,
    asymmetric_unified_focal_loss,
    generalized_wasserstein_dice_loss,
    mcc_loss,
    nacl_loss,
)
from fastloss.ops.neighbourhood import NeighbourhoodKernel, class_neighbourhood, neighbourhood_penalty
from fastloss.ops.soft_confusion import soft_confusion, soft_confusion_torch

monai_losses = pytest.importorskip("monai.losses")

SHAPES = [(2, 3, 7, 6), (2, 3, 5, 6, 4)]


def _data(shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    y = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    return x, y


def _onehot(y, C, dtype=torch.float64):
    return torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).to(dtype)


def _compare(ours, theirs, x, y_ours, y_theirs=None, rtol=1e-9, atol=1e-10, nonzero_grad=True):
    """Values and input gradients of ``ours`` and ``theirs`` (MONAI) on the same float64 data."""
    y_theirs = y_ours if y_theirs is None else y_theirs
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(a, y_ours)
        want = theirs(b, y_theirs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol)
    (got.sum() * 2).backward()
    (want.sum() * 2).backward()
    assert not nonzero_grad or a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol)


# -------------------------------------------------------------------------------------------------- MCC
MCC_CASES = [
    dict(softmax=True, to_onehot_y=True),
    dict(sigmoid=True, to_onehot_y=True, include_background=False),
    dict(softmax=True, to_onehot_y=True, batch=True, reduction="none"),
    dict(sigmoid=True, to_onehot_y=True, reduction="sum", smooth_nr=0.1, smooth_dr=1e-3),
    dict(other_act=torch.sigmoid, to_onehot_y=True, reduction="none", include_background=False, batch=True),
]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kw", MCC_CASES)
@pytest.mark.parametrize("onehot", [False, True])
def test_mcc_matches_monai(kw, shape, onehot):
    x, y = _data(shape, seed=1)
    yt = _onehot(y, shape[1]) if onehot else y
    theirs_kw = dict(kw, to_onehot_y=False) if onehot else kw
    ours = MCCLoss(**kw) if not onehot else MCCLoss(**theirs_kw)
    _compare(ours, monai_losses.MCCLoss(**theirs_kw), x, yt)


def test_mcc_raw_probabilities_flat_input_and_perfect_prediction():
    x, y = _data((3, 4, 5, 5), seed=2)
    p = torch.softmax(x, 1)
    oh = _onehot(y, 4)
    _compare(MCCLoss(reduction="none"), monai_losses.MCCLoss(reduction="none"), p, oh)
    # (B, C) input: MONAI sums over every dim (its reduce axis list is empty), or over the batch with batch=True
    for batch in (False, True):
        _compare(MCCLoss(batch=batch, reduction="none"), monai_losses.MCCLoss(batch=batch, reduction="none"),
                 p[:, :, 0, 0], oh[:, :, 0, 0])
    # a perfect prediction scores 0 (MONAI's fp = fn = 0 rule), and the loss is 0 too for that class
    perfect = MCCLoss(reduction="none")(oh.clone(), oh)
    assert torch.equal(perfect, torch.zeros_like(perfect))
    assert MCCLoss(reduction="none")(p, oh).min() > 0


def test_mcc_ignore_index_leaves_voxels_out():
    x, y = _data((2, 3, 6, 6), seed=3)
    y2 = y.clone()
    y2[..., :2, :] = 255
    keep = (y2 != 255)[:, 0]
    got = MCCLoss(softmax=True, ignore_index=255, reduction="none")(x, y2)
    # the same as MONAI on the kept voxels only (one row of 4·6 voxels per image)
    xs = x.permute(0, 2, 3, 1)[keep].reshape(2, 4 * 6, 3).permute(0, 2, 1).unsqueeze(-1)
    ys = y[:, 0][keep].reshape(2, 1, 4 * 6, 1)
    want = monai_losses.MCCLoss(softmax=True, to_onehot_y=True, reduction="none")(xs, ys)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


# ------------------------------------------------------------------------------------- Wasserstein Dice
def _dist(C, seed, kind):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(C, C, generator=g, dtype=torch.float64) * 3
    m = (m + m.T) / 2
    m.fill_diagonal_(0)
    if kind == "numpy32":
        return m.numpy().astype(np.float32)
    return m


@pytest.mark.parametrize("shape", SHAPES + [(2, 4, 9, 8)])
@pytest.mark.parametrize("mode", ["default", "GDL"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["numpy32", "tensor64"])
def test_wasserstein_dice_matches_monai(shape, mode, reduction, kind):
    x, y = _data(shape, seed=4)
    M = _dist(shape[1], 5, kind)
    kw = dict(weighting_mode=mode, reduction=reduction)
    theirs = monai_losses.GeneralizedWassersteinDiceLoss(M, **kw)
    _compare(GeneralizedWassersteinDiceLoss(M, **kw), theirs, x, y)
    # (B, *spatial) labels and a one-hot target (not accepted by MONAI) give MONAI's value for the labels
    _compare(GeneralizedWassersteinDiceLoss(M, **kw), theirs, x, y[:, 0], y)
    _compare(GeneralizedWassersteinDiceLoss(M, **kw), theirs, x, _onehot(y, shape[1]), y)


def test_wasserstein_dice_monai_example_smoothing_and_default_matrix():
    M = np.array([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]], dtype=np.float32)
    pred = torch.tensor([[1000, 0, 0], [0, 1000, 0], [0, 0, 1000]], dtype=torch.float32)
    grnd = torch.tensor([0, 1, 2], dtype=torch.int64)
    assert float(GeneralizedWassersteinDiceLoss(M)(pred, grnd)) == pytest.approx(0.0, abs=1e-6)
    x, y = _data((2, 3, 6, 5), seed=6)
    for kw in (dict(smooth_nr=0.3, smooth_dr=0.7), dict(weighting_mode="GDL", smooth_nr=0.0)):
        _compare(GeneralizedWassersteinDiceLoss(M, **kw), monai_losses.GeneralizedWassersteinDiceLoss(M, **kw), x, y)
    # dist_matrix=None: the 0/1 matrix 1 - I of the input's classes
    eye = (1 - torch.eye(3)).numpy()
    _compare(GeneralizedWassersteinDiceLoss(), monai_losses.GeneralizedWassersteinDiceLoss(eye), x, y)
    # a scaled matrix is divided by its maximum, as MONAI
    torch.testing.assert_close(GeneralizedWassersteinDiceLoss(M * 4)(x, y), GeneralizedWassersteinDiceLoss(M)(x, y))


def test_soft_confusion_against_torch_and_gradcheck():
    g = torch.Generator().manual_seed(7)
    x = torch.randn(2, 4, 37, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 37), generator=g)
    s = soft_confusion(x, y)
    want = torch.einsum("bln,bcn->blc", _onehot(y.unsqueeze(1), 4), torch.softmax(x, 1))
    torch.testing.assert_close(s, want, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(soft_confusion_torch(x, y), want, rtol=1e-12, atol=1e-12)
    assert torch.autograd.gradcheck(lambda a: soft_confusion(a, y), (x.clone().requires_grad_(),))
    assert torch.autograd.gradcheck(lambda a: soft_confusion(a, y, labels_in_range=True), (x.clone().requires_grad_(),))
    # labels outside [0, C) (possible with the label check off) count nowhere and get no gradient
    y_out = y.clone()
    y_out[:, :5] = 7
    keep = (y_out < 4).unsqueeze(1).double()
    want_out = torch.einsum("bln,bcn->blc", _onehot(y_out.clamp_max(3).unsqueeze(1), 4) * keep, torch.softmax(x, 1))
    torch.testing.assert_close(soft_confusion(x, y_out), want_out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(soft_confusion_torch(x, y_out), want_out, rtol=1e-12, atol=1e-12)
    # float32: float32 sums, the same values as the float64 ones to float32 precision
    s32 = soft_confusion(x.float(), y.int())
    assert s32.dtype == torch.float32
    torch.testing.assert_close(s32.double(), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------- unified focal
def _probs(shape, seed, C=None):
    x, _ = _data(shape, seed)
    return torch.softmax(x, 1)


UF_CASES = [
    dict(to_onehot_y=True),
    dict(to_onehot_y=True, gamma=0.3, delta=0.6, weight=0.2),
    dict(to_onehot_y=True, ignore_index=1),
    dict(to_onehot_y=True, ignore_index=255),
    dict(to_onehot_y=True, reduction="none"),
]


@pytest.mark.parametrize("shape", [(2, 2, 7, 6), (2, 2, 5, 6, 4)])
@pytest.mark.parametrize("kw", UF_CASES)
def test_unified_focal_matches_monai_binary(shape, kw):
    p = _probs(shape, 8)
    _, y = _data(shape, 9)
    if kw.get("ignore_index") == 255:
        y[..., :2] = 255
    _compare(AsymmetricUnifiedFocalLoss(**kw), monai_losses.AsymmetricUnifiedFocalLoss(**kw), p, y)
    if kw.get("ignore_index") != 255:
        oh = _onehot(y.clamp_max(1), 2)
        kw1 = dict(kw, to_onehot_y=False)
        _compare(AsymmetricUnifiedFocalLoss(**kw1), monai_losses.AsymmetricUnifiedFocalLoss(**kw1), p, oh)
    # MONAI's binary form is the multi-class form with the foreground as the rare class
    if "ignore_index" not in kw:
        _compare(AsymmetricUnifiedFocalLoss(rare_classes=[1], **kw), monai_losses.AsymmetricUnifiedFocalLoss(**kw), p, y)


@pytest.mark.parametrize("kw", [dict(), dict(ignore_index=2), dict(ignore_index=0, gamma=0.3, delta=0.6)])
@pytest.mark.parametrize("dtype", [torch.int64, torch.uint8])
def test_unified_focal_binary_form_reads_channels_0_and_1_of_many(kw, dtype):
    # MONAI's binary form on a C-channel input reads channels 0 and 1 only; labels >= 2 are in neither channel,
    # and the other channels get a zero gradient (fastloss reads the labels through a region table, not C channels)
    shape = (2, 4, 6, 5, 3)
    p = _probs(shape, 21)
    _, y = _data(shape, 22)
    ours = AsymmetricUnifiedFocalLoss(num_classes=4, to_onehot_y=True, **kw)
    _compare(ours, monai_losses.AsymmetricUnifiedFocalLoss(num_classes=4, to_onehot_y=True, **kw), p, y.to(dtype), y)
    if "ignore_index" not in kw or kw["ignore_index"] < 4:
        _compare(AsymmetricUnifiedFocalLoss(num_classes=4, **kw), monai_losses.AsymmetricUnifiedFocalLoss(num_classes=4, **kw),
                 p, _onehot(y, 4))
    a = p.clone().requires_grad_(True)
    ours(a, y).backward()
    assert a.grad[:, 2:].abs().max() == 0 and a.grad[:, :2].abs().max() > 0
    # float32 probabilities (the compiled kernels) agree with the float64 value
    torch.testing.assert_close(ours(p.float(), y).double(), ours(p, y), rtol=1e-5, atol=1e-6)


def test_unified_focal_single_channel_and_saturated_probabilities():
    g = torch.Generator().manual_seed(10)
    p = torch.rand(2, 1, 6, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 1, 6, 7), generator=g).double()
    _compare(AsymmetricUnifiedFocalLoss(), monai_losses.AsymmetricUnifiedFocalLoss(), p, y)
    _compare(AsymmetricUnifiedFocalLoss(ignore_index=0), monai_losses.AsymmetricUnifiedFocalLoss(ignore_index=0), p, y)
    # probabilities of exactly 0 and 1 are clamped to [1e-7, 1 - 1e-7] (no inf), as MONAI
    q = torch.stack([1 - (y[:, 0] > 0).double(), (y[:, 0] > 0).double()], 1)
    q[:, :, 0, 0] = q[:, :, 0, 0].flip(1)
    _compare(AsymmetricUnifiedFocalLoss(to_onehot_y=True), monai_losses.AsymmetricUnifiedFocalLoss(to_onehot_y=True),
             q, y.long(), nonzero_grad=False)  # every probability clamped: no gradient, in MONAI too


def _unified_reference(p, y, rare, gamma=0.5, delta=0.7, weight=0.5, eps=1e-7):
    """Yeung et al.'s C-class asymmetric unified focal loss, written out per class with MONAI's means."""
    B, C = p.shape[:2]
    p = p.clamp(eps, 1 - eps).reshape(B, C, -1)
    g = _onehot(y, C).reshape(B, C, -1)
    focal, tversky = [], []
    for c in range(C):
        ce = -g[:, c] * torch.log(p[:, c])
        tp = (g[:, c] * p[:, c]).sum(-1)
        fn = (g[:, c] * (1 - p[:, c])).sum(-1)
        fp = ((1 - g[:, c]) * p[:, c]).sum(-1)
        ti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
        if c in rare:
            focal.append(delta * ce)
            tversky.append((1 - ti) ** (1 - gamma))
        else:
            focal.append((1 - delta) * (1 - p[:, c]) ** gamma * ce)
            tversky.append(1 - ti)
    f = torch.stack(focal, 1).mean()
    t = torch.stack(tversky, 1).mean()
    return weight * f + (1 - weight) * t


@pytest.mark.parametrize("shape", [(2, 4, 7, 6), (2, 3, 5, 6, 4)])
@pytest.mark.parametrize("rare", [[1], [1, 2], [0, 2]])
def test_unified_focal_multiclass_against_reference(shape, rare):
    p = _probs(shape, 11).requires_grad_()
    _, y = _data(shape, 12)
    C = shape[1]
    got = AsymmetricUnifiedFocalLoss(num_classes=C, rare_classes=rare, gamma=0.4)(p, y)
    want = _unified_reference(p, y, rare, gamma=0.4)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    ga, = torch.autograd.grad(got, p)
    gb, = torch.autograd.grad(want, p)
    torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-12)
    # one-hot target: the same
    torch.testing.assert_close(AsymmetricUnifiedFocalLoss(num_classes=C, rare_classes=rare, gamma=0.4)(p, _onehot(y, C)),
                               want, rtol=1e-10, atol=1e-12)
    # the rare classes matter: another choice gives another value
    other = AsymmetricUnifiedFocalLoss(num_classes=C, rare_classes=[0], gamma=0.4)(p, y)
    assert abs(float(other.detach()) - float(want.detach())) > 1e-4


# --------------------------------------------------------------------------------------------------- NACL
NACL_CASES = [
    dict(),
    dict(distance_type="l2", alpha=0.5),
    dict(kernel_ops="gaussian"),
    dict(kernel_ops="gaussian", sigma=0.6, distance_type="l2"),
    dict(kernel_size=4),
    dict(kernel_size=5, alpha=1.0),
]


@pytest.mark.parametrize("shape", SHAPES + [(2, 4, 9, 11)])
@pytest.mark.parametrize("kw", NACL_CASES)
def test_nacl_matches_monai(shape, kw):
    x, y = _data(shape, seed=13)
    C, dim = shape[1], len(shape) - 2
    # MONAI filters a float32 one-hot: its neighbourhood carries float32 rounding (<= 6e-8 per element)
    tol = dict(rtol=1e-7, atol=1e-8)
    _compare(NACLLoss(C, dim, **kw), monai_losses.NACLLoss(C, dim, **kw), x, y[:, 0], **tol)
    _compare(NACLLoss(**kw), monai_losses.NACLLoss(C, dim, **kw), x, y, y[:, 0], **tol)  # (B, 1, ...) labels
    _compare(NACLLoss(C, dim, **kw), monai_losses.NACLLoss(C, dim, **kw), x, _onehot(y, C), y[:, 0], **tol)


def test_neighbourhood_filter_matches_monai_filters():
    from monai.networks.layers import GaussianFilter, MeanFilter

    for dim in (2, 3):
        _, y = _data((2, 3) + (7,) * dim, seed=14)
        oh = _onehot(y, 3).contiguous()
        for k in (1, 2, 3, 4, 5):
            mf = MeanFilter(dim, k)
            mf.filter = mf.filter / (k ** dim)
            torch.testing.assert_close(class_neighbourhood(y[:, 0], 3, NeighbourhoodKernel("mean", k), torch.float64),
                                       mf(oh), rtol=0, atol=1e-15)
        for sigma in (0.5, 1.0, 1.7):
            torch.testing.assert_close(
                class_neighbourhood(y[:, 0], 3, NeighbourhoodKernel("gaussian", 3, sigma), torch.float64),
                GaussianFilter(dim, sigma)(oh), rtol=0, atol=1e-14)


def test_nacl_penalty_gradcheck_and_values():
    x, y = _data((2, 3, 5, 4, 3), seed=15)
    for distance in ("l1", "l2"):
        for kernel in (NeighbourhoodKernel("mean", 3), NeighbourhoodKernel("gaussian", 3, 0.8)):
            xr = x.clone().requires_grad_()
            assert torch.autograd.gradcheck(lambda a: neighbourhood_penalty(a, y[:, 0], kernel, distance), (xr,))
            u = class_neighbourhood(y[:, 0], 3, kernel, torch.float32).double()
            want = (u - x).abs().sum() if distance == "l1" else ((u - x) ** 2).sum()
            torch.testing.assert_close(neighbourhood_penalty(x, y[:, 0], kernel, distance), want)


# -------------------------------------------------------------------------------------------- gradcheck
@pytest.mark.parametrize(
    "make",
    [
        lambda: MCCLoss(softmax=True, batch=True),
        lambda: MCCLoss(sigmoid=True, include_background=False, reduction="sum"),
        lambda: GeneralizedWassersteinDiceLoss(_dist(3, 1, "tensor64")),
        lambda: GeneralizedWassersteinDiceLoss(_dist(3, 1, "tensor64"), weighting_mode="GDL", reduction="sum"),
        lambda: NACLLoss(3, 3),
        lambda: NACLLoss(3, 3, kernel_ops="gaussian", distance_type="l2"),
    ],
)
def test_gradcheck_logits(make):
    x, y = _data((2, 3, 4, 3, 3), seed=16)
    loss = make()
    assert torch.autograd.gradcheck(lambda a: loss(a, y) * 2, (x.clone().requires_grad_(),))


def test_gradcheck_unified_focal():
    p = _probs((2, 3, 4, 3, 3), 17).requires_grad_()
    _, y = _data((2, 3, 4, 3, 3), 18)
    assert torch.autograd.gradcheck(lambda a: AsymmetricUnifiedFocalLoss(num_classes=3, rare_classes=[2])(a, y), (p,))
    p2 = p[:, :2].detach() / p[:, :2].detach().sum(1, keepdim=True)
    assert torch.autograd.gradcheck(lambda a: AsymmetricUnifiedFocalLoss(to_onehot_y=True)(a, y.clamp_max(1)),
                                    (p2.requires_grad_(),))


# ------------------------------------------------------------------------ compiled kernels vs torch backend
@pytest.mark.parametrize(
    "make,probs",
    [
        (lambda: MCCLoss(softmax=True), False),
        (lambda: MCCLoss(sigmoid=True, batch=True, include_background=False), False),
        (lambda: AsymmetricUnifiedFocalLoss(num_classes=3, rare_classes=[1, 2]), True),
        (lambda: NACLLoss(), False),
    ],
)
@pytest.mark.parametrize("backend", ["auto", "triton"])
def test_kernels_match_torch_backend(make, probs, backend, monkeypatch):
    x, y = _data((2, 3, 9, 8, 7), seed=19, dtype=torch.float32)
    if probs:
        x = torch.softmax(x, 1)
    grads = {}
    vals = {}
    for b in ("torch", backend):
        monkeypatch.setenv("FASTLOSS_BACKEND", b)
        a = x.clone().requires_grad_()
        v = make()(a, y)
        v.backward()
        vals[b], grads[b] = v.detach(), a.grad
    torch.testing.assert_close(vals[backend], vals["torch"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[backend], grads["torch"], rtol=1e-4, atol=1e-7)


# ---------------------------------------------------------------------------------------------- bad input
def test_bad_arguments():
    with pytest.raises(ValueError, match="Incompatible|incompatible"):
        MCCLoss(sigmoid=True, softmax=True)
    with pytest.raises(TypeError, match="callable"):
        MCCLoss(other_act=3)
    with pytest.raises(ValueError, match="reduction"):
        MCCLoss(reduction="avg")
    with pytest.raises(ValueError, match="C x C, got 2 x 3"):
        GeneralizedWassersteinDiceLoss(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="weighting_mode"):
        GeneralizedWassersteinDiceLoss(np.ones((2, 2)), weighting_mode="gdl")
    with pytest.raises(ValueError, match="positive entry"):
        GeneralizedWassersteinDiceLoss(np.zeros((2, 2)))
    with pytest.raises(TypeError, match="numpy array or a torch.Tensor"):
        GeneralizedWassersteinDiceLoss([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="rare_classes"):
        AsymmetricUnifiedFocalLoss(rare_classes=[2])
    with pytest.raises(ValueError, match="reduction"):
        AsymmetricUnifiedFocalLoss(reduction="avg")
    with pytest.raises(ValueError, match="Kernel ops"):
        NACLLoss(3, 2, kernel_ops="median")
    with pytest.raises(ValueError, match="dim=4"):
        NACLLoss(3, 4)
    with pytest.raises(ValueError, match="Distance type"):
        NACLLoss(3, 2, distance_type="l3")


def test_bad_inputs():
    x, y = _data((2, 3, 6, 5), seed=20)
    with pytest.raises(ValueError, match="shape"):
        MCCLoss()(x, y[:, :, :5])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        MCCLoss()(x, y + 3)
    with pytest.raises(ValueError, match="dist_matrix is 2 x 2 but the input has C=3"):
        GeneralizedWassersteinDiceLoss(np.ones((2, 2)))(x, y)
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        GeneralizedWassersteinDiceLoss()(x, y + 1)
    with pytest.raises(ValueError, match="integral|non-integral"):
        GeneralizedWassersteinDiceLoss()(x, y.double() + 0.5)
    with pytest.raises(ValueError, match="input shape must be 4 or 5"):
        AsymmetricUnifiedFocalLoss()(x[:, :2, :, 0], y[:, :, :, 0])
    p = torch.softmax(x[:, :2], 1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 1\]"):
        AsymmetricUnifiedFocalLoss(to_onehot_y=True)(p, y)  # label 2 with num_classes=2
    with pytest.raises(ValueError, match="Invalid class index"):
        AsymmetricUnifiedFocalLoss()(p[:, :1], (y * 2).double())
    with pytest.raises(ValueError, match="different shape"):
        AsymmetricUnifiedFocalLoss(to_onehot_y=True)(torch.softmax(x, 1), y.clamp_max(1))  # C=3, num_classes=2
    with pytest.raises(ValueError, match="num_classes == C"):
        AsymmetricUnifiedFocalLoss(num_classes=2, rare_classes=[1])(torch.softmax(x, 1), _onehot(y.clamp_max(1), 3))
    with pytest.raises(ValueError, match="classes=4"):
        NACLLoss(4, 2)(x, y[:, 0])
    with pytest.raises(ValueError, match="dim=3"):
        NACLLoss(3, 3)(x, y[:, 0])
    with pytest.raises(ValueError, match=r"must lie in \[0, 2\]"):
        NACLLoss(3, 2)(x, y[:, 0] + 1)
    with pytest.raises(TypeError):
        NACLLoss(3, 2)(x.long(), y[:, 0])


def test_functional_forms_and_exports():
    x, y = _data((2, 3, 6, 5), seed=21)
    torch.testing.assert_close(mcc_loss(x, y, softmax=True), MCCLoss(softmax=True)(x, y))
    torch.testing.assert_close(generalized_wasserstein_dice_loss(x, y), GeneralizedWassersteinDiceLoss()(x, y))
    p = torch.softmax(x[:, :2], 1)
    torch.testing.assert_close(asymmetric_unified_focal_loss(p, y.clamp_max(1), to_onehot_y=True),
                               AsymmetricUnifiedFocalLoss(to_onehot_y=True)(p, y.clamp_max(1)))
    torch.testing.assert_close(nacl_loss(x, y, alpha=0.3), NACLLoss(alpha=0.3)(x, y))
    for name in ("MCCLoss", "GeneralizedWassersteinDiceLoss", "AsymmetricUnifiedFocalLoss", "NACLLoss"):
        assert getattr(fastloss, name) is getattr(fastloss.losses, name)


# ------------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize(
    "make,probs",
    [
        (lambda: MCCLoss(softmax=True, batch=True), False),
        (lambda: GeneralizedWassersteinDiceLoss(_dist(3, 2, "numpy32"), weighting_mode="GDL"), False),
        (lambda: AsymmetricUnifiedFocalLoss(num_classes=3, rare_classes=[1]), True),
        (lambda: NACLLoss(3, 3), False),
    ],
)
@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_compile_fullgraph(make, probs, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    assert_compiled_step_matches_eager(make(), probs=probs)


def test_get_loss_names():
    from fastloss.losses.cldice import SoftclDiceLoss, SoftDiceclDiceLoss

    x, y = _data((2, 3, 6, 5, 4), seed=22, dtype=torch.float32)
    for name, cls in [("clDice", SoftclDiceLoss), ("DiceclDice", SoftDiceclDiceLoss), ("GWDice", GeneralizedWassersteinDiceLoss),
                      ("MCC", MCCLoss), ("NACL", NACLLoss), ("UnifiedFocal", AsymmetricUnifiedFocalLoss),
                      ("MCCLoss", MCCLoss), ("soft cl dice loss", SoftclDiceLoss)]:
        loss = fastloss.get_loss(name)
        assert type(loss) is cls
    # the softmax where MONAI's default would read logits as probabilities: the values of the configured classes
    torch.testing.assert_close(fastloss.get_loss("MCC")(x, y), MCCLoss(softmax=True)(x, y))
    torch.testing.assert_close(fastloss.get_loss("clDice", iter_=2)(x, y), SoftclDiceLoss(softmax=True, iter_=2)(x, y))
    uf = fastloss.get_loss("UnifiedFocal", num_classes=3, rare_classes=[1, 2])
    assert uf.rare_classes == (1, 2) and torch.isfinite(uf(torch.softmax(x, 1), y))


def test_wasserstein_dice_dtype_follows_monai():
    """MONAI's arithmetic: float32 softmax, then promoted with the distance matrix (a float64 numpy matrix gives a
    float64 loss), so a float32 network trained with np.array distances sees MONAI's values (its upstream
    test_convergence counts loss decreases at that precision)."""
    x, y = _data((2, 3, 6, 5, 4), seed=23, dtype=torch.float32)
    M64 = _dist(3, 3, "tensor64").numpy()
    for M in (M64, M64.astype(np.float32)):
        for t in (y, _onehot(y, 3, torch.float32)):
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            got = GeneralizedWassersteinDiceLoss(M, weighting_mode="GDL")(a, t)
            want = monai_losses.GeneralizedWassersteinDiceLoss(M, weighting_mode="GDL")(b, y)
            assert got.dtype == want.dtype
            # float32 probabilities from another exp (the compiled kernel's) differ by ulps: float32 tolerance
            tol = dict(rtol=1e-6, atol=1e-7)
            torch.testing.assert_close(got, want, **tol)
            got.backward()
            want.backward()
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-8)


def test_compiled_nacl_penalty_equals_torch_backend_and_threads(monkeypatch):
    from fastloss.ops import cpu_neighbourhood

    if not cpu_neighbourhood.available():
        pytest.skip("fastloss._C lacks the NACL penalty")
    kernels = [NeighbourhoodKernel("mean", 3), NeighbourhoodKernel("mean", 4), NeighbourhoodKernel("gaussian", 3, 0.7)]
    for shape in [(2, 3, 7, 6, 5), (2, 4, 9, 8)]:
        for dtype in (torch.float64, torch.float32):
            x, y = _data(shape, seed=24, dtype=dtype)
            for kernel in kernels:
                for distance in ("l1", "l2"):
                    out = {}
                    for backend in ("torch", "auto"):
                        monkeypatch.setenv("FASTLOSS_BACKEND", backend)
                        a = x.clone().requires_grad_()
                        v = neighbourhood_penalty(a, y[:, 0], kernel, distance)
                        (v * 3).backward()
                        out[backend] = (v.detach(), a.grad)
                    assert cpu_neighbourhood.supports(x, y[:, 0])
                    tol = dict(rtol=1e-12, atol=0) if dtype == torch.float64 else dict(rtol=1e-5, atol=0)
                    torch.testing.assert_close(out["auto"][0], out["torch"][0], **tol)
                    assert torch.equal(out["auto"][1], out["torch"][1])  # the same u bits: the same signs / 2(x - u)
    # bitwise the same for any thread count; opcheck of the custom op
    x, y = _data((2, 5, 9, 8, 7), seed=25, dtype=torch.float32)
    n = torch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            res.append(cpu_neighbourhood._penalty_op(x, y[:, 0], [1.0, 1.0, 1.0], 1, 1 / 27, 1, True))
    finally:
        torch.set_num_threads(n)
    for s, d in res[1:]:
        assert torch.equal(s, res[0][0]) and torch.equal(d, res[0][1])
    torch.library.opcheck(cpu_neighbourhood._penalty_op,
                          (x.double().requires_grad_(), y[:, 0], [0.2, 0.5, 0.3], 1, 1.0, 2, True))


def test_compiled_soft_confusion_equals_torch_and_threads():
    from fastloss.ops import cpu_soft_confusion

    if not cpu_soft_confusion.available():
        pytest.skip("fastloss._C lacks the soft confusion matrix")
    g = torch.Generator().manual_seed(26)
    for dtype, tol in ((torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-4))):
        x = torch.randn(2, 5, 4099, generator=g, dtype=dtype)  # two tiles and a partial one
        y = torch.randint(0, 5, (2, 4099), generator=g)
        y[:, ::11] = 9  # out of range: counts nowhere, no gradient
        a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
        sa = cpu_soft_confusion.soft_confusion_cpu(a, y, dtype)
        sb = soft_confusion_torch(b, y)
        torch.testing.assert_close(sa, sb, **tol)
        w = torch.randn(sa.shape, generator=g, dtype=dtype)
        (sa * w).sum().backward()
        (sb * w).sum().backward()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=1e-7)
    x = torch.randn(2, 4, 9000, generator=g)
    y = torch.randint(0, 4, (2, 9000), generator=g)
    n = torch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            res.append((cpu_soft_confusion._forward_op(x, y), cpu_soft_confusion._backward_op(x, y, torch.ones(2, 4, 4))))
    finally:
        torch.set_num_threads(n)
    for s, d in res[1:]:
        assert torch.equal(s, res[0][0]) and torch.equal(d, res[0][1])
    xd = torch.randn(2, 3, 17, generator=g, dtype=torch.float64, requires_grad=True)
    yd = torch.randint(0, 3, (2, 17), generator=g)
    torch.library.opcheck(cpu_soft_confusion._forward_op, (xd, yd))
    assert torch.autograd.gradcheck(lambda t: cpu_soft_confusion.soft_confusion_cpu(t, yd, torch.float64), (xd,))


def _rows_reference(x, y, M):
    """W[b, l] = Σ_c M[l, c]·S[b, l, c] and the label counts from the plain autograd soft confusion matrix."""
    S = soft_confusion_torch(x, y)
    C = x.shape[1]
    ok = (y >= 0) & (y < C)
    counts = torch.nn.functional.one_hot(torch.where(ok, y, 0), C).mul(ok.unsqueeze(-1)).sum(1).to(S.dtype)
    return (S * M.to(S.dtype)).sum(2), counts


@pytest.mark.parametrize("C", [3, 5, 16, 17])
def test_compiled_distance_rows_equal_torch(C, monkeypatch):
    """The compiled Wasserstein rows op (one pass, O(C) per voxel: the derivative kept from the forward, scaled in
    place in the backward) against the soft confusion matrix contracted with M in torch: values, counts and input
    gradients, float64 and float32, a partial tile, labels outside [0, C) (the label check off: no class, no
    gradient), C up to the 16-entry register lookup and past it."""
    from fastloss.ops import cpu_soft_confusion
    from fastloss.ops.soft_confusion import distance_row_sums

    if not cpu_soft_confusion.rows_available():
        pytest.skip("fastloss._C lacks the soft confusion rows")
    g = torch.Generator().manual_seed(31 + C)
    M = _dist(C, 32, "tensor64")
    for dtype, tol in ((torch.float64, dict(rtol=1e-12, atol=1e-12)), (torch.float32, dict(rtol=1e-5, atol=1e-4))):
        x = torch.randn(2, C, 2 * 1024 + 37, generator=g, dtype=dtype) * 3
        y = torch.randint(0, C, (2, x.shape[2]), generator=g)
        y[:, ::13] = C + 4
        y[:, 5::17] = -1
        a, b = x.clone().requires_grad_(), x.double().requires_grad_()  # the reference in float64
        W, n = distance_row_sums(a, y, M.to(dtype), dtype)
        Wr, nr = _rows_reference(b, y, M)
        assert W.dtype == dtype and n.dtype == dtype and not n.requires_grad
        torch.testing.assert_close(W.double(), Wr, **tol)
        assert torch.equal(n.double(), nr)
        w = torch.randn(W.shape, generator=g, dtype=torch.float64)
        (W.double() * w).sum().backward()
        (Wr * w).sum().backward()
        torch.testing.assert_close(a.grad.double(), b.grad, **tol)
        assert a.grad[:, :, ::13].abs().max() == 0  # labels outside [0, C): no gradient
        # without a gradient the forward keeps no derivative and gives the same sums
        with torch.no_grad():
            W0, _ = distance_row_sums(x, y, M.to(dtype), dtype)
        assert torch.equal(W0, W.detach())
    xd = torch.randn(2, C, 19, generator=g, dtype=torch.float64, requires_grad=True)
    yd = torch.randint(0, C, (2, 19), generator=g)
    # one backward per graph (the kept derivative becomes the gradient): gradcheck a scalar of W
    wd = torch.randn(2, C, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: (distance_row_sums(t, yd, M)[0] * wd).sum(), (xd,))
    # the op as torch.compile runs it (no derivative kept: the backward computes it); eager keeps it (checked above)
    torch.library.opcheck(cpu_soft_confusion._rows_op, (xd, yd, M, False))


@pytest.mark.parametrize("checked", [False, True])
def test_distance_rows_torch_backend_equals_reference(checked, monkeypatch):
    """The torch ops (GPUs, other dtypes) of distance_row_sums: one class at a time, no scatter of floats; against the
    soft confusion contraction, with labels outside [0, C) when the label check is off; gradcheck."""
    from fastloss.ops.soft_confusion import distance_row_sums

    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    g = torch.Generator().manual_seed(37)
    M = _dist(4, 38, "tensor64")
    x = torch.randn(2, 4, 301, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (2, 301), generator=g)
    if not checked:
        y[:, ::7] = 9
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    W, n = distance_row_sums(a, y, M, labels_in_range=checked)
    Wr, nr = _rows_reference(b, y, M)
    torch.testing.assert_close(W, Wr, rtol=1e-12, atol=1e-12)
    assert torch.equal(n, nr)
    w = torch.randn(2, 4, generator=g, dtype=torch.float64)
    (W * w).sum().backward()
    (Wr * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-12)
    y40 = y[:, :40].contiguous()
    assert torch.autograd.gradcheck(lambda t: distance_row_sums(t, y40, M, labels_in_range=checked)[0],
                                    (x[:, :, :40].clone().requires_grad_(),))
    # float16 logits, float32 sums
    W16, _ = distance_row_sums(x.half(), y, M.float(), torch.float32, labels_in_range=checked)
    assert W16.dtype == torch.float32
    torch.testing.assert_close(W16.double(), Wr.detach(), rtol=2e-3, atol=1e-2)


def test_compiled_distance_rows_bits_do_not_depend_on_threads_or_isa(monkeypatch):
    from fastloss.ops import cpu_soft_confusion

    if not cpu_soft_confusion.rows_available():
        pytest.skip("fastloss._C lacks the soft confusion rows")
    g = torch.Generator().manual_seed(33)
    x = torch.randn(2, 9, 9000, generator=g)
    y = torch.randint(0, 9, (2, 9000), generator=g)
    M = _dist(9, 34, "tensor64")
    A = torch.randn(2, 9, generator=g, dtype=torch.float64)

    def run():
        out, q = cpu_soft_confusion._rows_op(x, y, M, True)
        cpu_soft_confusion._rows_scale_op(q, y, A)
        return out, q

    n = torch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            res.append(run())
        for isa in ("base", "avx2", "avx512"):  # the rows op has no lanes in its sums: the same bits
            monkeypatch.setenv("FASTLOSS_CPU_ISA", isa)
            res.append(run())
    finally:
        torch.set_num_threads(n)
    for out, q in res[1:]:
        assert torch.equal(out, res[0][0]) and torch.equal(q, res[0][1])


def test_wasserstein_dice_second_backward_recomputes():
    """The compiled op's first backward scales the derivative kept from the forward in place into the gradient; a
    second backward through the same graph (retain_graph) computes the derivative again from the logits: the same
    gradient, not the scaled one."""
    from fastloss.ops import cpu_soft_confusion

    if not cpu_soft_confusion.rows_available():
        pytest.skip("fastloss._C lacks the soft confusion rows")
    x, y = _data((2, 3, 6, 5), seed=35, dtype=torch.float32)
    x.requires_grad_()
    loss = GeneralizedWassersteinDiceLoss(_dist(3, 36, "numpy32"))(x, y)
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3, x)
    assert g1.abs().max() > 0
    torch.testing.assert_close(g2, 3 * g1, rtol=1e-5, atol=1e-8)
    xr = x.detach().double().requires_grad_()
    GeneralizedWassersteinDiceLoss(_dist(3, 36, "numpy32").astype(np.float64))(xr, y).backward()
    torch.testing.assert_close(g1.double(), xr.grad, rtol=1e-4, atol=1e-7)


def test_nacl_loss_value_op_gradient_from_the_forward():
    """cpu_nacl_loss_value: the forward's dx (the filters and the softmax once per step) is bitwise the backward op's
    dx for the same weights, whatever the thread count; the loss's backward scales it by the incoming gradient; a
    second backward through the graph computes it again; without a gradient nothing is written; opcheck as
    torch.compile runs it (no dx kept)."""
    from fastloss.ops import cpu_neighbourhood

    if not cpu_neighbourhood.loss_available():
        pytest.skip("fastloss._C lacks the fused NACL loss")
    x, y = _data((2, 5, 9, 8, 7), seed=39, dtype=torch.float32)
    y[:, :, :1] = 11  # out of range (as with the label check off): no CE term, u = 0
    args = ([1.0, 1.0, 1.0], 1, 1 / 27, 1)
    wp, wc = 0.1 / x.numel(), 1.0 / (2 * 9 * 8 * 7)
    n = torch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            value, dx = cpu_neighbourhood._value_op(x, y[:, 0], *args, wp, wc, True)
            res.append((value, dx))
    finally:
        torch.set_num_threads(n)
    want = cpu_neighbourhood._loss_backward_op(x, y[:, 0], *args, torch.full((10,), wp, dtype=torch.float64),
                                               torch.full((2,), wc, dtype=torch.float64))
    for value, dx in res:
        assert torch.equal(value, res[0][0]) and torch.equal(dx, want)
    pen, ce = cpu_neighbourhood._loss_op(x, y[:, 0], *args)
    torch.testing.assert_close(res[0][0], ce.sum() * wc + pen.sum() * wp, rtol=1e-15, atol=0)
    with torch.no_grad():
        v0, d0 = cpu_neighbourhood._value_op(x, y[:, 0], *args, wp, wc, False)
    assert d0.numel() == 0 and torch.equal(v0, res[0][0])
    a = x.clone().requires_grad_()
    loss = cpu_neighbourhood.nacl_loss_value_cpu(a, y[:, 0], *args[:3], "l1", wp, wc)
    (g1,) = torch.autograd.grad(loss * 2.5, a, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, a)  # the kept dx was taken by the first: computed again
    torch.testing.assert_close(g1, 2.5 * want, rtol=1e-6, atol=0)
    torch.testing.assert_close(g2, want, rtol=1e-6, atol=1e-12)
    xd, yd = _data((2, 3, 5, 4, 3), seed=40)
    assert torch.autograd.gradcheck(
        lambda t: cpu_neighbourhood.nacl_loss_value_cpu(t, yd[:, 0], [1.0, 1.0, 1.0], 1, 1 / 27, "l2", 0.3, 0.01),
        (xd.clone().requires_grad_(),))
    torch.library.opcheck(cpu_neighbourhood._value_op, (xd.clone().requires_grad_(), yd[:, 0], *args, wp, wc, False))


def test_fused_nacl_loss_equals_torch_backend_and_threads(monkeypatch):
    """NACLLoss on CPU tensors with integer labels runs one compiled op (CE + penalty, ops/cpu_neighbourhood.py's
    cpu_nacl_loss): its value and gradient equal the torch backend's (the statistics' CE + the penalty Function),
    out-of-range labels (label check off) count in no class on both, and its bits do not depend on the threads."""
    from fastloss.ops import cpu_neighbourhood
    from fastloss.ops.neighbourhood import nacl_terms

    if not cpu_neighbourhood.loss_available():
        pytest.skip("fastloss._C lacks the fused NACL loss")
    cases = [dict(), dict(kernel_size=4, distance_type="l2"), dict(kernel_ops="gaussian", sigma=0.7, alpha=0.5)]
    for shape in [(2, 3, 7, 6, 5), (2, 4, 9, 8)]:
        for dtype in (torch.float64, torch.float32):
            x, y = _data(shape, seed=27, dtype=dtype)
            assert nacl_terms(x, y[:, 0], NeighbourhoodKernel()) is not None  # the fused kernel serves here
            for kw in cases:
                out = {}
                for backend in ("torch", "auto"):
                    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
                    a = x.clone().requires_grad_()
                    v = NACLLoss(**kw)(a, y[:, 0])
                    (v * 3).backward()
                    out[backend] = (v.detach(), a.grad)
                tol = dict(rtol=1e-12, atol=1e-14) if dtype == torch.float64 else dict(rtol=2e-6, atol=1e-7)
                torch.testing.assert_close(out["auto"][0], out["torch"][0], **tol)
                torch.testing.assert_close(out["auto"][1], out["torch"][1], **tol)
    monkeypatch.delenv("FASTLOSS_BACKEND")
    # labels outside [0, C) with the check off: no CE term and u = 0 in every class, on both backends
    x, y = _data((2, 3, 6, 5, 4), seed=28)
    y[:, :, :2] = 7
    res = {}
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    for backend in ("torch", "auto"):
        monkeypatch.setenv("FASTLOSS_BACKEND", backend)
        a = x.clone().requires_grad_()
        v = NACLLoss(3, 3)(a, y[:, 0])
        v.backward()
        res[backend] = (v.detach(), a.grad)
    monkeypatch.delenv("FASTLOSS_CHECK_LABELS")
    torch.testing.assert_close(res["auto"][0], res["torch"][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(res["auto"][1], res["torch"][1], rtol=1e-12, atol=1e-14)
    monkeypatch.delenv("FASTLOSS_BACKEND")
    # bitwise the same for any thread count, forward and backward; opcheck of both custom ops
    x, y = _data((2, 5, 9, 8, 7), seed=29, dtype=torch.float32)
    gp, gc = torch.linspace(-1, 1, 10, dtype=torch.float64), torch.tensor([0.3, -2.0], dtype=torch.float64)
    n = torch.get_num_threads()
    res = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            pen, ce = cpu_neighbourhood._loss_op(x, y[:, 0], [1.0, 1.0, 1.0], 1, 1 / 27, 1)
            res.append((pen, ce, cpu_neighbourhood._loss_backward_op(x, y[:, 0], [1.0, 1.0, 1.0], 1, 1 / 27, 1, gp, gc)))
    finally:
        torch.set_num_threads(n)
    for r in res[1:]:
        assert all(torch.equal(a, b) for a, b in zip(r, res[0]))
    xd = x.double().requires_grad_()
    torch.library.opcheck(cpu_neighbourhood._loss_op, (xd, y[:, 0], [0.2, 0.5, 0.3], 1, 1.0, 2))
    assert torch.autograd.gradcheck(
        lambda t: sum(cpu_neighbourhood.nacl_loss_cpu(t, y[:1, 0, :3, :3, :3], [0.2, 0.5, 0.3], 1, 1.0, "l2")),
        (torch.randn(1, 5, 3, 3, 3, dtype=torch.float64, requires_grad=True),))
