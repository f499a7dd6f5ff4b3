"""The oracles of fastloss/reference.py checked by hand and against torch/MONAI, then every loss class
checked against them in float64 (1D/2D/3D, labels and one-hot, ignore_index, absent class, reductions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastloss import reference as R

D64 = torch.float64


def _probs2(s1):
    """Two-class probabilities (B=1, C=2, N) from the class-1 probabilities."""
    s1 = torch.tensor(s1, dtype=D64)
    return torch.stack([1 - s1, s1]).unsqueeze(0)


# ---------------------------------------------------------------------------------------------------
# hand-computed examples
# ---------------------------------------------------------------------------------------------------


def test_dice_hand_example():
    s = _probs2([0.2, 0.6, 0.9, 0.1])
    g = R.one_hot(torch.tensor([[0, 1, 1, 0]]), 2)
    kw = dict(activation="none", smooth_nr=0.0, smooth_dr=0.0, reduction="none")
    # class 1: Σgs = 1.5, Σg = 2, Σs = 1.8; class 0: Σgs = 1.7, Σg = 2, Σs = 2.2
    got = R.dice(s, g, **kw)
    assert torch.allclose(got, torch.tensor([[1 - 3.4 / 4.2, 1 - 3 / 3.8]], dtype=D64))
    # Eq. 8: class 1 Σs² = 1.22, Σg² = 2; class 0 Σs² = 0.64 + 0.16 + 0.01 + 0.81 = 1.62
    got = R.dice(s, g, squared_pred=True, **kw)
    assert torch.allclose(got, torch.tensor([[1 - 3.4 / 3.62, 1 - 3 / 3.22]], dtype=D64))
    # jaccard: 1 − 2I / (2 (Σg + Σs − I))
    got = R.dice(s, g, jaccard=True, **kw)
    assert torch.allclose(got, torch.tensor([[1 - 3.4 / 5.0, 1 - 3 / 4.6]], dtype=D64))
    # background excluded, smooth terms 1 / 2, weight 3
    got = R.dice(s, g, activation="none", include_background=False, smooth_nr=1.0, smooth_dr=2.0, weight=[3.0])
    assert float(got) == pytest.approx(3 * (1 - 4 / 5.8))


def test_iou_tversky_hand_example():
    s = _probs2([0.2, 0.6, 0.9, 0.1])
    g = R.one_hot(torch.tensor([[0, 1, 1, 0]]), 2)
    # class 1: I = 1.5, U = Σ(g + s − gs) = 2 + 1.8 − 1.5 = 2.3
    got = R.iou(s, g, activation="none", include_background=False, smooth_nr=0, smooth_dr=0)
    assert float(got) == pytest.approx(1 - 1.5 / 2.3)
    # class 1: FP = Σ(1−g)s = 0.3, FN = Σ g(1−s) = 0.5
    got = R.tversky(s, g, alpha=0.3, beta=0.7, activation="none", include_background=False, smooth_nr=0, smooth_dr=0)
    assert float(got) == pytest.approx(1 - 1.5 / (1.5 + 0.09 + 0.35))
    got = R.focal_tversky(s, g, alpha=0.3, beta=0.7, gamma=2.0, activation="none", include_background=False,
                          smooth_nr=0, smooth_dr=0)
    assert float(got) == pytest.approx((1 - 1.5 / 1.94) ** 0.5)


def test_ss_hand_example():
    s = _probs2([0.2, 0.6, 0.9, 0.1])
    g = R.one_hot(torch.tensor([[0, 1, 1, 0]]), 2)
    # class 1 only: sens = Σ(g−s)²g = 0.16 + 0.01, /Σg = 2; spec = 0.04 + 0.01, /Σ(1−g) = 2
    got = R.ss(s, g, w=0.25, eps=0.0, activation="none", include_background=False)
    assert float(got) == pytest.approx(0.25 * 0.17 / 2 + 0.75 * 0.05 / 2)
    # both classes, sums over classes inside each fraction (the paper's form)
    # class 0 has g0 = 1 − g1, s0 = 1 − s1: its squared errors equal class 1's, roles swapped
    got = R.ss(s, g, w=0.25, eps=0.0, activation="none")
    assert float(got) == pytest.approx(0.25 * 0.22 / 4 + 0.75 * 0.22 / 4)


def test_gdice_hand_example_and_absent_class():
    s = torch.tensor([[[0.7, 0.2, 0.1], [0.2, 0.5, 0.8], [0.1, 0.3, 0.1]]], dtype=D64)  # (1, 3, 3)
    g = R.one_hot(torch.tensor([[0, 1, 1]]), 3)  # class 2 absent
    # w0 = 1, w1 = 1/4, w2 (absent) = max finite = 1 (MONAI)
    num = 2 * (1 * 0.7 + 0.25 * (0.5 + 0.8) + 1 * 0.0)
    den = 1 * (1 + 1.0) + 0.25 * (2 + 1.5) + 1 * (0 + 0.5)
    got = R.gdice(s, g, activation="none", smooth_nr=0, smooth_dr=0)
    assert float(got) == pytest.approx(1 - num / den)
    got = R.gdice(s, g, activation="none", smooth_nr=0, smooth_dr=0, absent="zero")
    assert float(got) == pytest.approx(1 - num / (den - 0.5))


def test_lovasz_three_voxels_by_hand():
    # class 1: g = [1, 0, 1], s = [0.8, 0.3, 0.4] -> m = [0.2, 0.3, 0.6]; order π = (2, 1, 0)
    # Δ({2}) = 1/2, Δ({2,1}) = 2/3, Δ({2,1,0}) = 1 -> d = (1/2, 1/6, 1/3)
    s = _probs2([0.8, 0.3, 0.4])
    lab = torch.tensor([[1, 0, 1]])
    got = R.lovasz(s, lab, activation="none", classes=[1])
    assert float(got) == pytest.approx(0.6 / 2 + 0.3 / 6 + 0.2 / 3)
    # class 0: g = [0, 1, 0], s0 = [0.2, 0.7, 0.6] -> m = [0.2, 0.3, 0.6]; π = (2, 1, 0)
    # Δ({2}) = 1/2, Δ({2,1}) = 2/2, Δ({2,1,0}) = 3/3 -> d = (1/2, 1/2, 0)
    got0 = R.lovasz(s, lab, activation="none", classes=[0])
    assert float(got0) == pytest.approx(0.6 / 2 + 0.3 / 2)
    both = R.lovasz(s, lab, activation="none")
    assert float(both) == pytest.approx((float(got) + float(got0)) / 2)


def _lovasz_cumsum(errors_sorted, fg_sorted):
    """Berman et al.'s closed form of the Lovász gradient (a second, independent formulation)."""
    gts = fg_sorted.sum()
    inter = gts - fg_sorted.cumsum(0)
    union = gts + (1 - fg_sorted).cumsum(0)
    jac = 1.0 - inter / union
    jac[1:] = jac[1:] - jac[:-1].clone()
    return torch.dot(errors_sorted, jac)


def test_lovasz_matches_closed_form_and_extension_property():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 5, 4, generator=gen, dtype=D64)
    lab = torch.randint(0, 3, (2, 5, 4), generator=gen)
    lab[0, 0, 0] = 255
    s = torch.softmax(x, 1)
    keep = (lab != 255).reshape(-1)
    sv = s.movedim(1, -1).reshape(-1, 3)[keep]
    lv = lab.reshape(-1)[keep]
    vals = []
    for c in range(3):
        fg = (lv == c).to(D64)
        err = (fg - sv[:, c]).abs()
        e, idx = torch.sort(err, descending=True)
        vals.append(_lovasz_cumsum(e, fg[idx]))
    expect = torch.stack(vals).mean()
    got = R.lovasz(x, lab, ignore_index=255)
    assert float(got) == pytest.approx(float(expect), rel=1e-12)
    # the extension of a set function agrees with it on indicator vectors: m binary -> Δ(set of ones)
    fg = [True, False, True, True, False]
    for ones in ([0], [1, 4], [0, 1, 2, 3, 4], [2, 3]):
        m = torch.zeros(5, dtype=D64)
        m[ones] = 1.0
        # build s so that m is the error vector of class 1: s = 1 − m where fg, m elsewhere
        s1 = torch.where(torch.tensor(fg), 1 - m, m)
        got = R.lovasz(_probs2(s1.tolist()), torch.tensor([[int(f) for f in fg]]), activation="none", classes=[1])
        assert float(got) == pytest.approx(R.lovasz_set_function(ones, fg))


def test_pgdice_first_line_equals_simplified_form():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 6, 5, generator=gen, dtype=D64)
    g = R.one_hot(torch.randint(0, 3, (2, 6, 5), generator=gen), 3)
    for k in (0.0, 1.0, 2.5):
        for smooth in (0.0, 1e-5, 1.0):
            kw = dict(smooth_nr=smooth, smooth_dr=smooth, reduction="none")
            a = R.pgdice(x, g, k=k, **kw)
            b = R.pgdice_simplified(x, g, k=k, **kw)
            assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)
    # k = 0 is generalised Dice
    assert torch.allclose(R.pgdice(x, g, k=0.0), R.gdice(x, g), rtol=1e-13)
    # with unequal smooth terms the two lines differ by k (dr − nr) in the denominator
    a = R.pgdice(x, g, k=2.5, smooth_nr=0.0, smooth_dr=1.0, reduction="none")
    b = R.pgdice_simplified(x, g, k=2.5, smooth_nr=0.0, smooth_dr=1.0, reduction="none")
    assert not torch.allclose(a, b, rtol=1e-6)


def test_asym_is_tversky_special_case():
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 7, generator=gen, dtype=D64)
    g = R.one_hot(torch.randint(0, 3, (2, 7), generator=gen), 3)
    beta = 1.5
    a = R.asym(x, g, beta=beta, reduction="none")
    t = R.tversky(x, g, alpha=1 / (1 + beta**2), beta=beta**2 / (1 + beta**2), reduction="none")
    assert torch.allclose(a, t, rtol=1e-13)
    # beta = 1: Tversky with α = β = 1/2 is Dice (Eq. 9) with the same smooth terms
    d = R.dice(x, g, reduction="none", smooth_nr=0.0, smooth_dr=0.0)
    a1 = R.asym(x, g, beta=1.0, reduction="none", smooth_nr=0.0, smooth_dr=0.0)
    assert torch.allclose(a1, d, rtol=1e-13)


def test_distribution_identities():
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 4, 5, 3, generator=gen, dtype=D64)
    lab = torch.randint(0, 4, (2, 5, 3), generator=gen)
    g = R.one_hot(lab, 4)
    c = R.ce(x, g)
    assert float(R.topk(x, g, k=100)) == pytest.approx(float(c), rel=1e-13)
    assert float(R.focal(x, g, gamma=0.0)) == pytest.approx(float(c), rel=1e-13)
    assert float(R.dpce(x, g, torch.zeros(2, 5, 3))) == pytest.approx(float(c), rel=1e-13)
    assert float(R.topk_threshold(x, g, t=1.0)) == pytest.approx(float(c), rel=1e-13)
    # TopK 10 %: 30 voxels -> the 3 largest CE values
    vox = -torch.log_softmax(x, 1).gather(1, lab.unsqueeze(1)).reshape(-1)
    assert float(R.topk(x, g, k=10)) == pytest.approx(float(vox.sort(descending=True).values[:3].mean()))
    # threshold: only voxels with s_true < t
    t = 0.3
    sel = vox[torch.exp(-vox) < t]
    assert float(R.topk_threshold(x, g, t=t)) == pytest.approx(float(sel.mean()))
    # focal with γ = 2 by hand on the true-class probability
    p = torch.exp(-vox)
    assert float(R.focal(x, g, gamma=2.0)) == pytest.approx(float(((1 - p) ** 2 * vox).mean()))


def test_ce_against_torch():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 5, generator=gen, dtype=D64)
    lab = torch.randint(0, 3, (2, 4, 5), generator=gen)
    lab[1, 2] = -100
    w = torch.tensor([0.5, 2.0, 1.5], dtype=D64)
    mask = (lab != -100).to(D64)
    g = R.one_hot(lab, 3)
    for red in ("mean", "sum", "none"):
        ref = R.ce(x, g, weight=w, mask=mask, reduction=red)
        tor = F.cross_entropy(x, lab, weight=w, ignore_index=-100, reduction=red)
        assert torch.allclose(ref, tor, rtol=1e-12, atol=1e-14)
    # the paper's 1/N normalisation of Eq. (2)
    ref = R.ce(x, g, weight=w, mask=mask, normalize="voxels")
    assert float(ref) == pytest.approx(float(F.cross_entropy(x, lab, weight=w, ignore_index=-100, reduction="sum") / mask.sum()))


def test_class_weight_helpers():
    lab = torch.tensor([[0, 0, 0, 1, 1, 2, 2, 2, 2, 0]])
    g = R.one_hot(lab, 4)
    w = R.reciprocal_frequency_weights(g)
    assert torch.allclose(w, torch.tensor([10 / 4, 10 / 2, 10 / 4, 0.0], dtype=D64))
    w = R.ell_class_weights(g)
    assert torch.allclose(w, torch.tensor([math.sqrt(10 / 4), math.sqrt(5), math.sqrt(10 / 4), 0.0], dtype=D64))


def test_distance_maps_by_hand():
    m = np.array([0, 0, 1, 1, 1, 0], dtype=bool)
    assert np.allclose(R.signed_distance(m), [2, 1, 0, -1, 0, 1])
    # Kervadec's shift is one (not one voxel size): with spacing 2, edt(g) = [., ., 2, 4, 2] -> −1, −3, −1
    assert np.allclose(R.signed_distance(m, spacing=[2.0]), [4, 2, -1, -3, -1, 2])
    assert np.allclose(R.signed_distance(np.zeros(4, bool)), 0)
    # full mask: surrounded by background just outside the image -> −(d_edge − 1)
    assert np.allclose(R.signed_distance(np.ones(4, bool)), [0, -1, -1, 0])
    assert np.allclose(R.caliva_penalty(m), [0, 0, 1, 0, 1, 0])
    m3 = np.array([1, 1, 1, 1, 1, 0, 0], bool)  # d = [5,4,3,2,1] on G: D = (5 − d)/4
    assert np.allclose(R.caliva_penalty(m3), [0, 0.25, 0.5, 0.75, 1, 0, 0])
    assert np.allclose(R.caliva_penalty(np.ones(3, bool)), 0)
    # edt(fg) = [0,0,1,2,1,0], edt(bg) = [2,1,0,0,0,1]
    assert np.allclose(R.hausdorff_field(m), [2, 1, 1, 2, 1, 1])
    assert np.allclose(R.hausdorff_field(np.ones(4)), 0)
    assert np.allclose(R.hausdorff_field(np.zeros(4)), 0)
    m2 = np.zeros((3, 4), bool)
    m2[1, 1] = True
    sd = R.signed_distance(m2)
    assert sd[1, 1] == 0 and sd[0, 0] == pytest.approx(math.sqrt(2)) and sd[1, 3] == pytest.approx(2.0)


def test_hausdorff_and_boundary_by_hand():
    s = _probs2([0.2, 0.6, 0.9, 0.1])
    g = R.one_hot(torch.tensor([[0, 1, 1, 0]]), 2)
    phi = torch.tensor([[[-0.0, 1, 1, 0], [1, 0, 0, 1]]], dtype=D64)  # arbitrary constant map
    got = R.boundary(s, g, phi, activation="none")  # background excluded by default
    assert float(got) == pytest.approx((0.2 + 0.1) / 4)
    got = R.boundary(s, g, phi, activation="none", voxel_mean=False, include_background=True)
    # class 0: s0 = [0.8, 0.4, 0.1, 0.9], φ0 = [0, 1, 1, 0] -> 0.5; class 1 -> 0.3
    assert float(got) == pytest.approx((0.5 + 0.3) / 2)
    dg = torch.tensor([[[1.0, 2, 3, 4], [4, 3, 2, 1]]], dtype=D64)
    ds = torch.ones_like(dg)
    got = R.hausdorff(s, g, dg, ds, activation="none", alpha=1.0)
    e = [0.04, 0.16, 0.01, 0.01]
    assert float(got) == pytest.approx(sum(ei * (d + 1) for ei, d in zip(e, [4, 3, 2, 1])) / 4)


# ---------------------------------------------------------------------------------------------------
# the MONAI-convention oracles agree with MONAI itself (so they can stand in for it below)
# ---------------------------------------------------------------------------------------------------

monai_losses = pytest.importorskip("monai.losses")


def _rand(shape, seed, C=3, ignore=None):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=D64)
    lab = torch.randint(0, C, (shape[0], 1) + tuple(shape[2:]), generator=gen)
    if ignore is not None:
        lab.view(-1)[:: 7] = ignore
    return x, lab


@pytest.mark.parametrize("kw", [
    dict(softmax=True), dict(sigmoid=True, include_background=False), dict(softmax=True, batch=True, squared_pred=True),
    dict(softmax=True, jaccard=True, smooth_nr=0.5, smooth_dr=2.0, weight=[1.0, 2.0, 0.5]),
])
def test_reference_dice_matches_monai(kw):
    x, lab = _rand((2, 3, 5, 4), 10)
    g = R.one_hot(lab, 3)
    ref_kw = dict(kw)
    act = "softmax" if ref_kw.pop("softmax", False) else ("sigmoid" if ref_kw.pop("sigmoid", False) else "none")
    for red in ("mean", "sum", "none"):
        m = monai_losses.DiceLoss(reduction=red, **kw)(x, g)
        r = R.dice(x, g, activation=act, reduction=red, **ref_kw)
        assert torch.allclose(m.reshape(-1), r.reshape(-1), rtol=1e-10)


def test_reference_ignore_index_matches_monai_dice_tversky():
    x, lab = _rand((2, 3, 6), 11, ignore=255)
    mask = R.ignore_mask(lab, 255, 3)
    g = R.one_hot(lab, 3, ignore_index=255)
    m = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, ignore_index=255)(x, lab)
    assert float(m) == pytest.approx(float(R.dice(x, g, mask=mask)), rel=1e-10)
    m = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, ignore_index=255, alpha=0.3, beta=0.7,
                                 include_background=False)(x, lab)
    r = R.tversky(x, g, mask=mask, alpha=0.3, beta=0.7, include_background=False)
    assert float(m) == pytest.approx(float(r), rel=1e-10)


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("w_type", ["square", "simple", "uniform"])
def test_reference_gdice_matches_monai(batch, w_type):
    x, lab = _rand((2, 4, 5, 3), 12, C=3)  # class 3 absent
    g = R.one_hot(lab, 4)
    m = monai_losses.GeneralizedDiceLoss(softmax=True, batch=batch, w_type=w_type, reduction="none")(x, g)
    r = R.gdice(x, g, batch=batch, w_type=w_type, reduction="none")
    assert torch.allclose(m.reshape(-1), r.reshape(-1), rtol=1e-10)


@pytest.mark.parametrize("kw", [
    dict(), dict(use_softmax=True, gamma=1.5, alpha=0.25), dict(alpha=0.25, weight=[1.0, 2.0, 3.0]),
    dict(use_softmax=True, include_background=False, alpha=[0.2, 0.8]), dict(alpha=[0.1, 0.5, 0.9], gamma=0.0),
])
def test_reference_focal_matches_monai(kw):
    x, lab = _rand((2, 3, 4, 3), 13)
    g = R.one_hot(lab, 3)
    for red in ("mean", "sum", "none"):
        m = monai_losses.FocalLoss(reduction=red, **kw)(x, g)
        r = R.focal_monai(x, g, reduction=red, **kw)
        # MONAI's FocalLoss computes in float32
        assert torch.allclose(m.to(D64).reshape(-1), r.reshape(-1), rtol=1e-5, atol=1e-6)
    # ignore_index with labels
    x, lab = _rand((2, 3, 7), 14, ignore=-1)
    m = monai_losses.FocalLoss(to_onehot_y=True, ignore_index=-1, **kw)(x, lab)
    r = R.focal_monai(x, R.one_hot(lab, 3, ignore_index=-1), mask=R.ignore_mask(lab, -1, 3), **kw)
    assert float(m) == pytest.approx(float(r), rel=1e-5)


@pytest.mark.parametrize("batch", [False, True])
def test_reference_hausdorff_matches_monai(batch):
    x, lab = _rand((2, 3, 6, 5), 15)
    lab[1] = 0  # classes 1 and 2 absent in item 1: uniform masks skipped
    g = R.one_hot(lab, 3)
    p = torch.softmax(x, 1)
    dg, ds = R.distance_field_monai(g), R.distance_field_monai(p)
    for red in ("mean", "sum", "none"):
        m = monai_losses.HausdorffDTLoss(softmax=True, batch=batch, reduction=red)(x, g)
        r = R.hausdorff(x, g, dg, ds, batch=batch, reduction=red)
        assert torch.allclose(m.to(D64).reshape(-1), r.reshape(-1), rtol=1e-6)


def test_reference_compounds_match_monai():
    x, lab = _rand((2, 3, 5, 4), 16)
    g = R.one_hot(lab, 3)
    w = torch.tensor([1.0, 2.0, 0.5], dtype=D64)
    m = monai_losses.DiceCELoss(softmax=True, to_onehot_y=True, weight=w, lambda_ce=0.7)(x, lab)
    r = R.dice_ce(x, g, ce_weight=w, lambda_ce=0.7, weight=w)
    assert float(m) == pytest.approx(float(r), rel=1e-10)
    m = monai_losses.DiceFocalLoss(softmax=True, to_onehot_y=True, gamma=1.0, lambda_focal=0.5)(x, lab)
    r = R.dice_focal(x, g, gamma=1.0, lambda_focal=0.5)
    assert float(m) == pytest.approx(float(r), rel=1e-6)
    # one channel: sigmoid Dice + BCE with logits
    x1 = x[:, :1]
    g1 = (lab == 1).to(D64)
    m = monai_losses.DiceCELoss(sigmoid=True)(x1, g1)
    r = R.dice_ce(x1, g1, activation="sigmoid")
    assert float(m) == pytest.approx(float(r), rel=1e-10)


# ---------------------------------------------------------------------------------------------------
# every loss class against the oracles, float64, torch backend
# ---------------------------------------------------------------------------------------------------

from fastloss.losses import region as RG  # noqa: E402
from fastloss.losses import distribution as DI  # noqa: E402
from fastloss.losses import lovasz as LV  # noqa: E402
from fastloss.losses import boundary as BD  # noqa: E402

SHAPES = {1: (2, 3, 9), 2: (2, 3, 5, 4), 3: (2, 3, 4, 3, 3)}
# (spatial dims, target kind, ignore_index, a class absent from the batch)
CASES = [
    (1, "labels", False, False),
    (2, "onehot", False, False),
    (3, "labels", True, False),
    (2, "labels", False, True),
    (1, "onehot", True, True),
    (3, "onehot", False, True),
    (2, "labels", True, True),
]
CASE_IDS = [f"{d}d-{k}{'-ign' if i else ''}{'-absent' if a else ''}" for d, k, i, a in CASES]
IGN_LABEL = 255  # ignore_index for label targets
IGN_SENTINEL = -1  # ignore_index for one-hot targets: all-zero voxels are ignored (MONAI's sentinel)


class Case:
    """Logits, the target the class gets, and what the reference gets (dense g, mask, labels)."""

    def __init__(self, ndim, kind, ignore, absent, seed=0, C=3):
        gen = torch.Generator().manual_seed(1000 + seed + 17 * ndim)
        shape = SHAPES[ndim][:1] + (C,) + SHAPES[ndim][2:]
        self.x = (1.5 * torch.randn(shape, generator=gen, dtype=D64))
        B, sp = shape[0], shape[2:]
        lab = torch.randint(0, C - 1 if absent else C, (B,) + sp, generator=gen)
        if not absent:  # make sure every class is present
            for c in range(C):
                lab.view(-1)[c] = c
        ign = torch.zeros((B,) + sp, dtype=torch.bool)
        if ignore:
            ign.view(-1)[3::5] = True
        self.labels = torch.where(ign, torch.full_like(lab, IGN_LABEL), lab)
        self.mask = (~ign).to(D64) if ignore else None
        self.g = R.one_hot(self.labels, C, ignore_index=IGN_LABEL if ignore else None)
        if kind == "labels":
            self.target = self.labels.unsqueeze(1) if ndim % 2 else self.labels  # (B,1,*sp) and (B,*sp)
            self.ignore_index = IGN_LABEL if ignore else None
        else:
            self.target = self.g.clone()  # all-zero at ignored voxels
            self.ignore_index = IGN_SENTINEL if ignore else None
        self.ref_labels = self.labels  # for the Lovász oracle (ignored voxels = IGN_LABEL)
        self.ref_ignore = IGN_LABEL if ignore else None


def _value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)).sum().backward()
    return out.detach(), x.grad


def _check(cls_fn, ref_fn, x, rtol=1e-9, atol=1e-11):
    """Values and input gradients (of a weighted sum of the outputs) of class and oracle agree."""
    v, gx = _value_and_grad(cls_fn, x)
    rv, rg = _value_and_grad(ref_fn, x)
    assert v.dtype == D64
    assert v.numel() == rv.numel(), (tuple(v.shape), tuple(rv.shape))
    assert torch.isfinite(v).all() and torch.isfinite(gx).all()
    torch.testing.assert_close(v.reshape(-1), rv.reshape(-1).to(D64), rtol=rtol, atol=atol)
    torch.testing.assert_close(gx, rg, rtol=max(rtol, 1e-8), atol=max(atol, 1e-10))


def _weight(kw, C=3):
    """A per-class weight of the right length for the kept classes."""
    n = C if kw.get("include_background", True) else C - 1
    return [0.5 + 0.5 * i for i in range(n)]


# (name, class, class kwargs, reference function (x, case, reduction) -> tensor, reductions, rtol)
def _region(ref, **fixed):
    def f(x, cs, red, kw):
        return ref(x, cs.g, mask=cs.mask, reduction=red, **fixed, **kw)
    return f


REGION_SPECS = [
    ("dice", RG.DiceLoss, R.dice, dict(softmax=True), dict(activation="softmax")),
    ("dice-nobg-batch", RG.DiceLoss, R.dice, dict(softmax=True, include_background=False, batch=True),
     dict(activation="softmax", include_background=False, batch=True)),
    ("dice-squared-weight", RG.DiceLoss, R.dice, dict(softmax=True, squared_pred=True, weight="w"),
     dict(activation="softmax", squared_pred=True, weight="w")),
    ("dice-jaccard-sigmoid", RG.DiceLoss, R.dice, dict(sigmoid=True, jaccard=True, smooth_nr=0.3, smooth_dr=0.7),
     dict(activation="sigmoid", jaccard=True, smooth_nr=0.3, smooth_dr=0.7)),
    # IoULoss documents MONAI's jaccard form: 1 − (2I + nr)/(2U + dr); Eq. 10 itself is checked below
    ("iou", RG.IoULoss, R.dice, dict(softmax=True, include_background=False),
     dict(activation="softmax", include_background=False, jaccard=True)),
    ("tversky", RG.TverskyLoss, R.tversky, dict(softmax=True, alpha=0.3, beta=0.7),
     dict(activation="softmax", alpha=0.3, beta=0.7)),
    ("tversky-batch-nobg", RG.TverskyLoss, R.tversky, dict(softmax=True, batch=True, include_background=False),
     dict(activation="softmax", batch=True, include_background=False)),
    ("focal-tversky", RG.FocalTverskyLoss, R.focal_tversky, dict(softmax=True, weight="w"),
     dict(activation="softmax", alpha=0.3, beta=0.7, gamma=4.0 / 3.0, weight="w")),
    ("focal-tversky-g2-batch", RG.FocalTverskyLoss, R.focal_tversky,
     dict(softmax=True, gamma=2.0, batch=True, include_background=False),
     dict(activation="softmax", gamma=2.0, batch=True, include_background=False)),
    ("asym", RG.AsymmetricSimilarityLoss, R.asym, dict(softmax=True, weight="w"),
     dict(activation="softmax", beta=1.5, weight="w")),
    ("asym-sigmoid-batch", RG.AsymmetricSimilarityLoss, R.asym, dict(sigmoid=True, beta=2.0, batch=True),
     dict(activation="sigmoid", beta=2.0, batch=True)),
    ("gdice", RG.GeneralizedDiceLoss, R.gdice, dict(softmax=True), dict(activation="softmax")),
    ("gdice-batch-simple", RG.GeneralizedDiceLoss, R.gdice, dict(softmax=True, batch=True, w_type="simple"),
     dict(activation="softmax", batch=True, w_type="simple")),
    ("pgdice", RG.PenaltyGeneralizedDiceLoss, R.pgdice, dict(softmax=True), dict(activation="softmax", k=2.5)),
    ("pgdice-nobg-batch", RG.PenaltyGeneralizedDiceLoss, R.pgdice,
     dict(softmax=True, include_background=False, batch=True, k=1.0),
     dict(activation="softmax", include_background=False, batch=True, k=1.0)),
    ("ss", RG.SensitivitySpecificityLoss, R.ss, dict(softmax=True), dict(activation="softmax", w=0.05, eps=1e-5)),
    ("ss-batch-nobg", RG.SensitivitySpecificityLoss, R.ss,
     dict(softmax=True, batch=True, include_background=False, w=0.3, smooth_nr=0.1, smooth_dr=0.2),
     dict(activation="softmax", batch=True, include_background=False, w=0.3, smooth_nr=0.1, eps=0.2)),
]


def _fill_weight(kw):
    kw = dict(kw)
    if kw.get("weight") == "w":
        kw["weight"] = _weight(kw)
    return kw


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("spec", REGION_SPECS, ids=[s[0] for s in REGION_SPECS])
def test_region_losses_against_reference(torch_backend, spec, case):
    name, cls, ref, ckw, rkw = spec
    cs = Case(*case)
    ckw, rkw = _fill_weight(ckw), _fill_weight(rkw)
    # GeneralizedDiceLoss computes its class weights in float32 as MONAI does (documented)
    rtol = 1e-6 if cls is RG.GeneralizedDiceLoss else 1e-9
    for red in ("mean", "sum", "none"):
        loss = cls(reduction=red, ignore_index=cs.ignore_index, **ckw)
        _check(lambda x: loss(x, cs.target), lambda x: ref(x, cs.g, mask=cs.mask, reduction=red, **rkw), cs.x,
               rtol=rtol)


def test_iou_is_eq10_without_smoothing(torch_backend):
    cs = Case(2, "labels", True, False)
    loss = RG.IoULoss(softmax=True, smooth_nr=0.0, smooth_dr=0.0, ignore_index=cs.ignore_index, reduction="none")
    _check(lambda x: loss(x, cs.target),
           lambda x: R.iou(x, cs.g, mask=cs.mask, smooth_nr=0.0, smooth_dr=0.0, reduction="none"), cs.x)


def test_pgdice_unequal_smoothing_first_line(torch_backend):  # see the report: doc says "equivalent"
    """Eq. 18's first line with smooth terms vs the class (which smooths GD, then applies GD/(1+k(1−GD)))."""
    cs = Case(2, "labels", False, False)
    kw = dict(smooth_nr=0.0, smooth_dr=0.5, k=2.5)
    loss = RG.PenaltyGeneralizedDiceLoss(softmax=True, reduction="none", **kw)
    ref_first = R.pgdice(cs.x, cs.g, reduction="none", **kw)
    ref_last = R.pgdice_simplified(cs.x, cs.g, reduction="none", **kw)
    got = loss(cs.x, cs.target).reshape(-1)
    # the class follows its docstring formula, the last line of Eq. 18 with a smoothed GD ...
    torch.testing.assert_close(got, ref_last.reshape(-1), rtol=1e-10, atol=1e-12)
    # ... which is not Eq. 18's first line once smooth_nr != smooth_dr (differs by k (dr − nr))
    assert not torch.allclose(got, ref_first.reshape(-1), rtol=1e-6)


# ----------------------------------------------------------------------------------- distribution


def _ce_ref(x, cs, red, weight=None):
    # labels: torch's weighted mean (Σ w_{y_i}); one-hot: the mean over counted voxels (torch semantics)
    normalize = "weight" if cs.target.shape[1:] != cs.x.shape[1:] else "voxels"
    return R.ce(x, cs.g, weight=weight, mask=cs.mask, reduction=red, normalize=normalize)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_ce_wce_against_reference(torch_backend, case):
    cs = Case(*case)
    w = [0.5, 1.0, 2.5]  # exactly representable: the class keeps a list weight in float32 (see report)
    for red in ("mean", "sum", "none"):
        loss = DI.CrossEntropyLoss(reduction=red, ignore_index=cs.ignore_index)
        _check(lambda x: loss(x, cs.target), lambda x: _ce_ref(x, cs, red), cs.x)
        loss = DI.CrossEntropyLoss(weight=w, reduction=red, ignore_index=cs.ignore_index)
        _check(lambda x: loss(x, cs.target), lambda x: _ce_ref(x, cs, red, w), cs.x)
        # WCE: reciprocal class frequencies of the batch, w_c = N/(C n_c) as documented (0 if absent)
        wf = R.reciprocal_frequency_weights(cs.g, cs.mask) / 3
        loss = DI.WeightedCrossEntropyLoss(reduction=red, ignore_index=cs.ignore_index)
        _check(lambda x: loss(x, cs.target), lambda x: _ce_ref(x, cs, red, wf), cs.x)


def test_class_weights_from_labels_against_reference():
    cs = Case(2, "labels", True, True)
    got = DI.class_weights_from_labels(cs.labels, 3, ignore_index=IGN_LABEL)
    torch.testing.assert_close(got, R.reciprocal_frequency_weights(cs.g, cs.mask) / 3)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_topk_against_reference(torch_backend, case):
    cs = Case(*case)
    n_valid = int(cs.mask.sum()) if cs.mask is not None else cs.labels.numel()
    for k in (10.0, 35.0, 100.0):
        K = max(1, int(n_valid * k / 100))
        loss = DI.TopKLoss(k=k, ignore_index=cs.ignore_index)
        _check(lambda x: loss(x, cs.target), lambda x: R.topk(x, cs.g, k=k, mask=cs.mask), cs.x)
        loss = DI.TopKLoss(k=k, ignore_index=cs.ignore_index, reduction="sum")
        _check(lambda x: loss(x, cs.target), lambda x: K * R.topk(x, cs.g, k=k, mask=cs.mask), cs.x)
        loss = DI.TopKLoss(k=k, ignore_index=cs.ignore_index, reduction="none")
        out = loss(cs.x, cs.target)
        assert out.shape == cs.labels.shape and int((out > 0).sum()) == K
    for t in (0.3, 0.7, 1.0):
        loss = DI.TopKLoss(t=t, ignore_index=cs.ignore_index)
        _check(lambda x: loss(x, cs.target), lambda x: R.topk_threshold(x, cs.g, t=t, mask=cs.mask), cs.x)


FOCAL_KW = [
    dict(),
    dict(use_softmax=True),
    dict(use_softmax=True, gamma=1.5, alpha=0.25, weight=[1.0, 2.0, 0.5]),
    dict(gamma=0.5, alpha=0.75, include_background=False),
    dict(use_softmax=True, include_background=False, alpha=[0.3, 0.7]),
]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("kw", FOCAL_KW, ids=[str(i) for i in range(len(FOCAL_KW))])
def test_focal_against_reference(torch_backend, kw, case):
    cs = Case(*case)
    for red in ("mean", "sum", "none"):
        loss = DI.FocalLoss(reduction=red, ignore_index=cs.ignore_index, **kw)
        _check(lambda x: loss(x, cs.target),
               lambda x: R.focal_monai(x, cs.g, mask=cs.mask, reduction=red, **kw), cs.x)
    if kw == dict(use_softmax=True) and cs.mask is None:
        # the paper's Eq. (5): −1/(B·N) Σ_b Σ_c Σ_i (1 − s)^γ g log s; MONAI's "sum" is Σ_{b,c} of the spatial
        # means, i.e. B times Eq. (5)
        loss = DI.FocalLoss(use_softmax=True, ignore_index=cs.ignore_index, reduction="sum")
        B = cs.x.shape[0]
        _check(lambda x: loss(x, cs.target) / B, lambda x: R.focal(x, cs.g, gamma=2.0), cs.x)


def _penalty(cs, spacing=None):
    B, C = cs.g.shape[:2]
    D = np.zeros(tuple(cs.g.shape))
    for b in range(B):
        for c in range(C):
            D[b, c] = R.caliva_penalty(cs.g[b, c].numpy() > 0.5, spacing)
    return torch.from_numpy(D)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_dpce_against_reference(torch_backend, case):
    cs = Case(*case)
    D = _penalty(cs)
    for red in ("mean", "sum", "none"):
        loss = DI.DistancePenalizedCELoss(reduction=red, ignore_index=cs.ignore_index)
        _check(lambda x: loss(x, cs.target), lambda x: R.dpce(x, cs.g, D, mask=cs.mask, reduction=red), cs.x,
               rtol=1e-6, atol=1e-9)  # the EDT returns float32 distances
    # with a given map (no EDT involved): exact
    loss = DI.DistancePenalizedCELoss(ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target, D), lambda x: R.dpce(x, cs.g, D, mask=cs.mask), cs.x)
    # anisotropic spacing
    sp = (2.0,) + (0.5,) * (cs.x.ndim - 3)
    Ds = _penalty(cs, sp)
    loss = DI.DistancePenalizedCELoss(ignore_index=cs.ignore_index, spacing=sp)
    _check(lambda x: loss(x, cs.target), lambda x: R.dpce(x, cs.g, Ds, mask=cs.mask), cs.x, rtol=1e-6, atol=1e-9)


LOVASZ_KW = [dict(), dict(per_image=True), dict(classes="all"), dict(classes=[1, 2], per_image=True)]


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("kw", LOVASZ_KW, ids=["default", "per_image", "all", "list-per_image"])
def test_lovasz_against_reference(torch_backend, kw, case):
    cs = Case(*case)
    loss = LV.LovaszSoftmaxLoss(ignore_index=cs.ignore_index, **kw)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.lovasz(x, cs.ref_labels, ignore_index=cs.ref_ignore, **kw), cs.x)
    if not kw.get("per_image"):
        # "sum": the sum of the included per-class losses
        loss = LV.LovaszSoftmaxLoss(ignore_index=cs.ignore_index, reduction="sum", **kw)
        cls = kw.get("classes", "present")
        C = cs.x.shape[1]
        keep = cs.labels[cs.labels != IGN_LABEL]
        chosen = [c for c in range(C) if (cls == "all" or bool((keep == c).any()))] if isinstance(cls, str) else cls

        def ref_sum(x):
            return sum(R.lovasz(x, cs.ref_labels, ignore_index=cs.ref_ignore, classes=[c]) for c in chosen)
        _check(lambda x: loss(x, cs.target), ref_sum, cs.x)


# ----------------------------------------------------------------------------------- boundary


def _phi(cs, spacing=None, include_background=False):
    B, C = cs.g.shape[:2]
    phi = np.zeros(tuple(cs.g.shape))
    for b in range(B):
        for c in range(0 if include_background else 1, C):
            phi[b, c] = R.signed_distance(cs.g[b, c].numpy() > 0.5, spacing)
    return torch.from_numpy(phi)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_boundary_against_reference(torch_backend, case):
    cs = Case(*case)
    for inc in (False, True):
        phi = _phi(cs, include_background=inc)
        for red in ("mean", "sum", "none"):
            loss = BD.BoundaryLoss(include_background=inc, softmax=True, reduction=red, ignore_index=cs.ignore_index,
                                   allow_1d=True)
            _check(lambda x: loss(x, cs.target),
                   lambda x: R.boundary(x, cs.g, phi, mask=cs.mask, include_background=inc, reduction=red), cs.x,
                   rtol=1e-6, atol=1e-9)
    sp = (1.5,) + (0.75,) * (cs.x.ndim - 3)
    phi = _phi(cs, sp)
    loss = BD.BoundaryLoss(include_background=False, softmax=True, spacing=sp, ignore_index=cs.ignore_index,
                           allow_1d=True)
    _check(lambda x: loss(x, cs.target), lambda x: R.boundary(x, cs.g, phi, mask=cs.mask), cs.x, rtol=1e-6, atol=1e-9)
    # a given map: no EDT, exact
    loss = BD.BoundaryLoss(include_background=False, softmax=True, ignore_index=cs.ignore_index, allow_1d=True)
    _check(lambda x: loss(x, cs.target, phi), lambda x: R.boundary(x, cs.g, phi, mask=cs.mask), cs.x)


def _hd_maps(x, cs, act="softmax"):
    p = R.activate(x.detach(), act)
    if cs.mask is not None:
        p = p * cs.mask.unsqueeze(1)
    return R.distance_field_monai(cs.g), R.distance_field_monai(p)


@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
def test_hausdorff_against_reference(torch_backend, case):
    cs = Case(*case)
    dg, ds = _hd_maps(cs.x, cs)
    for kw in (dict(), dict(batch=True, include_background=True), dict(alpha=1.0)):
        for red in ("mean", "sum", "none"):
            loss = BD.HausdorffDTLoss(softmax=True, reduction=red, ignore_index=cs.ignore_index, **kw)
            _check(lambda x: loss(x, cs.target),
                   lambda x: R.hausdorff(x, cs.g, dg, ds, mask=cs.mask, reduction=red, **kw), cs.x, rtol=1e-6,
                   atol=1e-9)


# ----------------------------------------------------------------------------------- compound

from fastloss.losses import compound as CP  # noqa: E402

COMPOUND_CASES = [CASES[0], CASES[1], CASES[2], CASES[4], CASES[6]]
COMPOUND_IDS = [CASE_IDS[i] for i in (0, 1, 2, 4, 6)]


def _is_onehot(cs):
    return cs.target.shape[1:] == cs.x.shape[1:]


@pytest.mark.parametrize("case", COMPOUND_CASES, ids=COMPOUND_IDS)
def test_dice_ce_against_reference(torch_backend, case):
    cs = Case(*case)
    norm = "voxels" if _is_onehot(cs) else "weight"
    w = [0.5, 1.0, 2.0]
    for kw, rkw in [
        (dict(softmax=True), dict(activation="softmax")),
        (dict(softmax=True, include_background=False, batch=True, weight=w, lambda_ce=0.5),
         dict(activation="softmax", include_background=False, batch=True, weight=w[1:], ce_weight=w, lambda_ce=0.5)),
    ]:
        for red in ("mean", "sum"):
            loss = CP.DiceCELoss(reduction=red, ignore_index=cs.ignore_index, **kw)
            _check(lambda x: loss(x, cs.target),
                   lambda x: R.dice_ce(x, cs.g, mask=cs.mask, reduction=red, ce_normalize=norm, **rkw), cs.x)


@pytest.mark.parametrize("case", COMPOUND_CASES, ids=COMPOUND_IDS)
def test_dice_focal_against_reference(torch_backend, case):
    cs = Case(*case)
    for kw, rkw in [
        (dict(softmax=True, gamma=1.5), dict(activation="softmax", gamma=1.5)),
        (dict(sigmoid=True, include_background=False, alpha=0.25, weight=[2.0, 0.5], lambda_focal=0.3),
         dict(activation="sigmoid", include_background=False, alpha=0.25, weight=[2.0, 0.5], lambda_focal=0.3)),
        (dict(softmax=True, use_softmax=True, batch=True), dict(activation="softmax", use_softmax_focal=True, batch=True)),
    ]:
        for red in ("mean", "sum"):
            loss = CP.DiceFocalLoss(reduction=red, ignore_index=cs.ignore_index, **kw)
            _check(lambda x: loss(x, cs.target),
                   lambda x: R.dice_focal(x, cs.g, mask=cs.mask, reduction=red, **rkw), cs.x)


@pytest.mark.parametrize("case", COMPOUND_CASES, ids=COMPOUND_IDS)
def test_dice_topk_and_ell_against_reference(torch_backend, case):
    cs = Case(*case)
    paper_dice = dict(activation="softmax", include_background=False, batch=True)
    loss = CP.DiceTopKLoss(ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target), lambda x: R.dice_topk(x, cs.g, k=10.0, mask=cs.mask, **paper_dice), cs.x)
    loss = CP.DiceTopKLoss(k=40.0, batch=False, include_background=True, lambda_topk=0.5,
                           ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.dice_topk(x, cs.g, k=40.0, lambda_topk=0.5, mask=cs.mask, activation="softmax"), cs.x)
    # ELL: Wong et al.'s batch-frequency label weights, ε = 1e-5 (defaults), batch Dice without background
    wl = R.ell_class_weights(cs.g, cs.mask)
    loss = CP.ExpLogLoss(ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.ell(x, cs.g, class_weight=wl, eps=1e-5, mask=cs.mask, **paper_dice), cs.x)
    # Wong et al.'s own setting: ε = 1, all labels, per-image Dice, fixed weights
    loss = CP.ExpLogLoss(smooth_nr=1.0, smooth_dr=1.0, include_background=True, batch=False, weight=[1.0, 2.0, 3.0],
                         gamma_dice=0.5, gamma_ce=0.7, ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.ell(x, cs.g, class_weight=[1.0, 2.0, 3.0], eps=1.0, gamma_dice=0.5, gamma_ce=0.7, mask=cs.mask),
           cs.x)


@pytest.mark.parametrize("case", COMPOUND_CASES, ids=COMPOUND_IDS)
def test_dice_boundary_and_dice_hd_against_reference(torch_backend, case):
    cs = Case(*case)
    dkw = dict(activation="softmax", include_background=False, batch=True)
    phi = _phi(cs)
    loss = CP.DiceBoundaryLoss(ignore_index=cs.ignore_index)
    assert loss.set_epoch(30) == pytest.approx(0.7)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.dice_boundary(x, cs.g, phi, alpha=0.7, mask=cs.mask, dice_kw=dkw), cs.x, rtol=1e-6, atol=1e-9)
    assert loss.set_epoch(500) == pytest.approx(0.01)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.dice_boundary(x, cs.g, phi, alpha=0.01, mask=cs.mask, dice_kw=dkw), cs.x, rtol=1e-6, atol=1e-9)
    dg, ds = _hd_maps(cs.x, cs)
    loss = CP.DiceHausdorffDTLoss(ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.dice_hausdorff(x, cs.g, dg, ds, mask=cs.mask, dice_kw=dkw), cs.x, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("ignore", [False, True])
def test_registry_dice_focal_is_eq24(torch_backend, ignore):
    """get_loss('DiceFocal') against Eq. (24) = Eq. (9) (batch Dice, no background) + Eq. (5) (softmax over
    all classes, summed over classes, averaged over counted voxels)."""
    from fastloss.registry import get_loss

    cs = Case(2, "labels", ignore, False)
    loss = get_loss("DiceFocal", ignore_index=cs.ignore_index)
    _check(lambda x: loss(x, cs.target),
           lambda x: R.dice(x, cs.g, include_background=False, batch=True, mask=cs.mask)
           + R.focal(x, cs.g, gamma=2.0, mask=cs.mask), cs.x)


def test_registry_focal_is_eq5(torch_backend):
    from fastloss.registry import get_loss

    cs = Case(3, "labels", False, False)
    loss = get_loss("Focal")
    _check(lambda x: loss(x, cs.target), lambda x: R.focal(x, cs.g, gamma=2.0), cs.x)


def test_reference_paper_forms_hand_example():
    """The oracles' paper forms by hand: GDice with relative smoothing, FocalTversky as Eq. (16)."""
    s = _probs2([0.2, 0.6, 0.9, 0.1])
    g = R.one_hot(torch.tensor([[0, 1, 1, 0]]), 2)
    # both classes Σg = 2, w = 1/4, W = Σ w Σg = 1; Σgs: 1.7 (class 0), 1.5; Σ(g + s): 4.2, 3.8
    num, den = 2 * 3.2 / 4, 8.0 / 4
    got = R.gdice(s, g, activation="none", smooth_nr=0.5, smooth_dr=0.25, smooth_relative=True)
    assert float(got) == pytest.approx(1 - (num + 0.5) / (den + 0.25))
    # doubled volume: w = 1/16, W = 1/2, so every term halves and the value stays
    got2 = R.gdice(s.repeat(1, 1, 2), g.repeat(1, 1, 2), activation="none", smooth_nr=0.5, smooth_dr=0.25,
                   smooth_relative=True)
    assert float(got2) == pytest.approx(float(got))
    got = R.pgdice(s, g, k=2.5, activation="none", smooth_nr=0.5, smooth_dr=0.5, smooth_relative=True)
    # s0 = 1 − s1: fp0 = Σ(1−g0)s0 = 0.4 + 0.1, fn0 = Σ g0(1−s0) = 0.2 + 0.1; fp1 = 0.2 + 0.1, fn1 = 0.4 + 0.1
    fp_fn = (0.5 + 0.3) / 4 + (0.3 + 0.5) / 4
    assert float(got) == pytest.approx(1 - (num + 0.5) / (den + 2.5 * fp_fn + 0.5))
    # Eq. (16) on classes 0 and 1: Tversky losses t0, t1 (α = 0.3 on FP, β = 0.7 on FN), then the mean's power
    t0 = 1 - 1.7 / (1.7 + 0.3 * 0.5 + 0.7 * 0.3)
    t1 = 1 - 1.5 / (1.5 + 0.3 * 0.3 + 0.7 * 0.5)
    kw = dict(alpha=0.3, beta=0.7, gamma=2.0, activation="none", smooth_nr=0, smooth_dr=0)
    assert float(R.focal_tversky(s, g, per_class_power=False, **kw)) == pytest.approx(((t0 + t1) / 2) ** 0.5)
    assert float(R.focal_tversky(s, g, **kw)) == pytest.approx((t0 ** 0.5 + t1 ** 0.5) / 2)
    got = R.focal_tversky(s, g, per_class_power=False, weight=[3.0, 1.0], **kw)
    assert float(got) == pytest.approx(((3 * t0 + t1) / 2) ** 0.5)
