"""Fidelity to the paper (Ma et al. 2021): every PAPER_LOSSES entry's parameters against the paper's text,
every entry against fastloss.reference on one input, and the decisions of issue 15 (GDice/pGDice over all
classes with patch-size-free smoothing, FocalTversky as Eq. (16), class weights from a training set)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

import fastloss
from fastloss import reference as R
from fastloss.class_weights import class_counts, class_weights
from fastloss.losses import region as RG
from fastloss.registry import PAPER_LOSSES, get_loss

D64 = torch.float64

# ---------------------------------------------------------------------------------------------------
# 1. parameters, written from the paper (Sec. 2, 3.2, Tables 2-4; footnote 12 for the Dice setting)
# ---------------------------------------------------------------------------------------------------

# nnU-Net's default Dice (footnote 12): batch Dice without square, background excluded, softmax; 1e-5.
REGION = dict(activation="softmax", include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
DICE = dict(REGION, squared_pred=False, jaccard=False)

PAPER_PARAMS = {
    # Sec. 2.2.8: β = 1.5, i.e. Tversky weights 1/(1+β²) on FP and β²/(1+β²) on FN
    "Asym": dict(REGION, f_beta=1.5, alpha=1 / (1 + 2.25), beta=2.25 / (1 + 2.25)),
    "CE": dict(sigmoid=False, reduction="mean"),  # Eq. (1)
    "Dice": DICE,  # Eq. (9)
    "DiceBD": {"alpha": 1.0, **{f"dice.{k}": v for k, v in DICE.items()},
               "boundary.include_background": False, "boundary.activation": "softmax"},
    "DiceCE": dict(lambda_dice=1.0, lambda_ce=1.0, **{f"dice.{k}": v for k, v in DICE.items()}),  # Eq. (22)
    # Eq. (24): Dice (Eq. 9) + Focal (Eq. 5, γ = 2, softmax, all classes, mean over voxels)
    "DiceFocal": dict(lambda_dice=1.0, lambda_focal=1.0, **{f"dice.{k}": v for k, v in DICE.items()},
                      **{"focal.gamma": 2.0, "focal.use_softmax": True, "focal.include_background": True,
                         "focal.alpha": None, "focal.mean_over": "voxels"}),
    # Sec. 3.2: Karimi's α (the ratio of the terms, alpha=None), HD with the squared distances of Eq. (21)
    "DiceHD": {"alpha": None, **{f"dice.{k}": v for k, v in DICE.items()}, "hausdorff.alpha": 2.0,
               "hausdorff.include_background": False},
    "DiceTopK": {"lambda_dice": 1.0, "lambda_topk": 1.0, "topk.k": 10.0, "topk.t": None,
                 **{f"dice.{k}": v for k, v in DICE.items()}},  # Eq. (25), TopK 10 %
    "ELL": dict(REGION, w_dice=0.8, w_ce=0.2, gamma_dice=0.3, gamma_ce=0.3),  # Eq. (23), Wong et al.
    "Focal": dict(gamma=2.0, use_softmax=True, include_background=True, alpha=None, mean_over="voxels"),  # (5)
    # Eq. (16): the class-averaged Tversky loss to the power 1/γ = 0.75; Tversky α = 0.3 (FP), β = 0.7 (FN)
    "FocalTversky": dict(REGION, alpha=0.3, beta=0.7, gamma=4 / 3, per_class_power=False),
    # Eq. (15): Σ over all C classes (background included), w_c = 1/(Σg)², no effective smoothing
    "GDice": dict(REGION, include_background=True, w_type="square", smooth_relative=True),
    "IoU": dict(REGION, jaccard=True, squared_pred=False),  # Eq. (10)
    "Lovász": dict(classes="present", per_image=False),  # Eqs. (11)-(13)
    "pCE": dict(reduction="mean", spacing=None),  # Eq. (6)
    "pGDice": dict(REGION, include_background=True, w_type="square", smooth_relative=True, k=2.5),  # Eq. (18)
    "SS": dict(REGION, w=0.1, smooth_nr=0.0, smooth_dr=1e-5),  # Eq. (7), w = 0.1 as the paper's code
    "TopK": dict(k=10.0, t=None),  # Eq. (4), "k = 10 % is our default setting"
    "Tversky": dict(REGION, alpha=0.3, beta=0.7),  # Eq. (14)
    "WCE": dict(sigmoid=False, reduction="mean"),  # Eq. (2); weights: see test_wce_paper_weights
    "BD": dict(activation="softmax", include_background=False),  # Eq. (20)
    "HD": dict(activation="softmax", include_background=False, alpha=2.0),  # Eq. (21): d_G² + d_S²
    # Table 4 (Sec. 4.3): batch/sample Dice, with and without the squared denominator (Eqs. 8, 9)
    "Dice (Batch, no square)": DICE,
    "BatchSquareDice": dict(DICE, squared_pred=True),
    "SampleDice (no square)": dict(DICE, batch=False),
    "SampleSquareDice": dict(DICE, batch=False, squared_pred=True),
}
# Table 3 (Sec. 4.2): k ∈ {10, 30, 50, 70, 90} %, t ∈ {0.1, 0.3, 0.5, 0.7, 0.9}
for _k in (10, 30, 50, 70, 90):
    PAPER_PARAMS[f"TopK-{_k}%"] = dict(k=float(_k), t=None)
for _t in (0.1, 0.3, 0.5, 0.7, 0.9):
    PAPER_PARAMS[f"TopK-Threshold ({_t})"] = dict(k=None, t=_t)


def test_every_entry_has_its_paper_parameters_listed():
    assert set(PAPER_PARAMS) == set(PAPER_LOSSES)


def _attr(module, path):
    for part in path.split("."):
        module = getattr(module, part)
    return module


@pytest.mark.parametrize("name", list(PAPER_PARAMS))
def test_entry_parameters_match_the_paper(name):
    loss = get_loss(name)
    for path, want in PAPER_PARAMS[name].items():
        got = _attr(loss, path)
        if isinstance(want, float):
            assert got == pytest.approx(want, rel=1e-12), (name, path, got, want)
        else:
            assert got == want, (name, path, got, want)


def test_dicebd_schedule_parameters():
    # Sec. 3.2: α = 1 initially, decreased by 0.01 after each epoch until it reaches 0.01
    _, kw = PAPER_LOSSES["DiceBD"]
    assert (kw["alpha"], kw["alpha_step"], kw["alpha_min"]) == (1.0, 0.01, 0.01)


# ---------------------------------------------------------------------------------------------------
# 2. every entry against the reference oracles (value and gradient, float64, torch backend)
# ---------------------------------------------------------------------------------------------------

C = 3


def _input(seed=0, shape=(2, C, 7, 6)):
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(shape, generator=gen, dtype=D64)
    lab = torch.randint(0, shape[1], (shape[0],) + shape[2:], generator=gen)
    lab.view(-1)[: shape[1]] = torch.arange(shape[1])  # every class present
    return x, lab


def _phi(g):
    out = np.zeros(tuple(g.shape))
    for b in range(g.shape[0]):
        for c in range(1, g.shape[1]):
            out[b, c] = R.signed_distance(g[b, c].numpy() > 0.5)
    return torch.from_numpy(out)


def _penalty(g):
    out = np.zeros(tuple(g.shape))
    for b in range(g.shape[0]):
        for c in range(g.shape[1]):
            out[b, c] = R.caliva_penalty(g[b, c].numpy() > 0.5)
    return torch.from_numpy(out)


def _hd_maps(x, g):
    return R.distance_field_monai(g), R.distance_field_monai(R.activate(x.detach()))


REF_DICE = dict(activation="softmax", include_background=False, batch=True)  # smoothing 1e-5 by default


def _reference(name, x, g, lab):
    """The paper's formula for entry ``name``, from fastloss.reference with the paper's values."""
    if name in ("Dice", "Dice (Batch, no square)"):
        return R.dice(x, g, **REF_DICE)
    if name == "BatchSquareDice":
        return R.dice(x, g, squared_pred=True, **REF_DICE)
    if name == "SampleDice (no square)":
        return R.dice(x, g, **dict(REF_DICE, batch=False))
    if name == "SampleSquareDice":
        return R.dice(x, g, squared_pred=True, **dict(REF_DICE, batch=False))
    if name == "IoU":
        return R.dice(x, g, jaccard=True, **REF_DICE)
    if name == "Asym":
        return R.asym(x, g, beta=1.5, **REF_DICE)
    if name == "Tversky":
        return R.tversky(x, g, alpha=0.3, beta=0.7, **REF_DICE)
    if name == "FocalTversky":
        return R.focal_tversky(x, g, alpha=0.3, beta=0.7, gamma=4 / 3, per_class_power=False, **REF_DICE)
    if name == "GDice":
        return R.gdice(x, g, batch=True, include_background=True, smooth_relative=True)
    if name == "pGDice":
        return R.pgdice(x, g, k=2.5, batch=True, include_background=True, smooth_relative=True)
    if name == "SS":
        return R.ss(x, g, w=0.1, eps=1e-5, include_background=False, batch=True)
    if name == "CE":
        return R.ce(x, g)
    if name == "WCE":  # batch reciprocal frequencies (the paper's are the training set's: see below)
        return R.wce(x, g, R.reciprocal_frequency_weights(g))
    if name == "Focal":
        return R.focal(x, g, gamma=2.0)
    if name == "TopK" or name.startswith("TopK-") and name.endswith("%"):
        k = 10.0 if name == "TopK" else float(name[5:-1])
        return R.topk(x, g, k=k)
    if name.startswith("TopK-Threshold"):
        return R.topk_threshold(x, g, t=float(name.split("(")[1].rstrip(")")))
    if name == "Lovász":
        return R.lovasz(x, lab)
    if name == "pCE":
        return R.dpce(x, g, _penalty(g))
    if name == "BD":
        return R.boundary(x, g, _phi(g))
    if name == "HD":
        return R.hausdorff(x, g, *_hd_maps(x, g))
    if name == "DiceCE":
        return R.dice(x, g, **REF_DICE) + R.ce(x, g)
    if name == "DiceFocal":
        return R.dice(x, g, **REF_DICE) + R.focal(x, g, gamma=2.0)
    if name == "DiceTopK":
        return R.dice(x, g, **REF_DICE) + R.topk(x, g, k=10.0)
    if name == "ELL":
        return R.ell(x, g, class_weight=R.ell_class_weights(g), eps=1e-5, **REF_DICE)
    if name == "DiceBD":  # at epoch 30: α = 1 − 30·0.01
        return R.dice_boundary(x, g, _phi(g), alpha=0.7, dice_kw=REF_DICE)
    if name == "DiceHD":
        return R.dice_hausdorff(x, g, *_hd_maps(x, g), dice_kw=REF_DICE)
    raise KeyError(name)


def _value_and_grad(fn, x):
    x = x.detach().clone().requires_grad_(True)
    out = fn(x)
    out.backward()
    return out.detach(), x.grad


@pytest.mark.parametrize("name", list(PAPER_LOSSES))
def test_entry_against_reference(torch_backend, name):
    x, lab = _input(seed=len(name))
    g = R.one_hot(lab, C)
    loss = get_loss(name)
    if name == "DiceBD":
        loss.set_epoch(30)
    v, gx = _value_and_grad(lambda t: loss(t, lab), x)
    rv, rg = _value_and_grad(lambda t: _reference(name, t, g, lab), x)
    tol = 1e-6 if name in ("BD", "HD", "DiceBD", "DiceHD") else 1e-9  # the distance maps are float32
    torch.testing.assert_close(v, rv, rtol=tol, atol=1e-11)
    torch.testing.assert_close(gx, rg, rtol=max(tol, 1e-8), atol=1e-10)


# ---------------------------------------------------------------------------------------------------
# 3. GDice / pGDice: all classes, smoothing that cannot dominate
# ---------------------------------------------------------------------------------------------------


def _tiled(reps, seed=3, C=2, base=8):
    """One (1, C, base³) pattern of logits and labels, tiled ``reps`` times along each axis."""
    x, lab = _input(seed, (1, C, base, base, base))
    return x.repeat(1, 1, reps, reps, reps), lab.repeat(1, reps, reps, reps)


def test_paper_gdice_does_not_depend_on_the_patch_size(torch_backend):
    vals = [float(get_loss(n)(*_tiled(r))) for n in ("GDice",) for r in (2, 4, 8)]  # 16³, 32³, 64³
    assert max(vals) - min(vals) < 1e-9 * abs(vals[0]), vals
    pg = [float(get_loss("pGDice")(*_tiled(r))) for r in (2, 4)]
    assert abs(pg[0] - pg[1]) < 1e-9 * abs(pg[0]), pg
    # MONAI's signature keeps MONAI's absolute smoothing, which swamps sums ~1/Σg: its value drifts
    monai = [float(RG.GeneralizedDiceLoss(softmax=True, batch=True)(*_tiled(r))) for r in (2, 4, 8)]
    assert monai[0] - monai[2] > 0.05, monai


def test_paper_gdice_matches_the_papers_code_form(torch_backend):
    """The paper's trainer (SegLoss GDiceLossV2): batch, every class, w_c = 1/max((Σg)², 1e-5), no smoothing;
    written out here in plain torch. With every class present the 1e-5 clamp never acts."""
    x, lab = _tiled(4, seed=5, C=3)
    p = torch.softmax(x, 1)
    g = torch.nn.functional.one_hot(lab, 3).movedim(-1, 1).to(D64)
    dims = (0, 2, 3, 4)
    w = 1.0 / (g.sum(dims) ** 2).clamp_min(1e-5)
    want = 1 - 2 * (w * (p * g).sum(dims)).sum() / (w * (p + g).sum(dims)).sum()
    got = get_loss("GDice")(x, lab)
    assert float(got) == pytest.approx(float(want), rel=1e-5)
    # pGDice: Eq. (18)'s last line on the same GD
    gd = 1 - want
    assert float(get_loss("pGDice")(x, lab)) == pytest.approx(float(1 - gd / (1 + 2.5 * (1 - gd))), rel=1e-5)


def test_paper_gdice_on_a_binary_task_is_not_dice(torch_backend):
    x, lab = _input(seed=7, shape=(2, 2, 9, 8))
    gd, dice = float(get_loss("GDice")(x, lab)), float(get_loss("Dice")(x, lab))
    assert abs(gd - dice) > 1e-2, (gd, dice)
    # hand check of Eq. (15) with both classes: weights 1/(Σg)², no smoothing (the relative 1e-5 is below 2e-5)
    p = torch.softmax(x, 1)
    g = torch.nn.functional.one_hot(lab, 2).movedim(-1, 1).to(D64)
    n = [float(g[:, c].sum()) for c in range(2)]
    num = sum(2 * float((p[:, c] * g[:, c]).sum()) / n[c] ** 2 for c in range(2))
    den = sum(float((p[:, c] + g[:, c]).sum()) / n[c] ** 2 for c in range(2))
    assert gd == pytest.approx(1 - num / den, rel=2e-5)


def test_relative_smoothing_hand_example():
    # probabilities (no activation), one image, classes 0/1 over 4 voxels, labels [0, 1, 1, 0]
    s = torch.tensor([[[0.8, 0.4, 0.1, 0.9], [0.2, 0.6, 0.9, 0.1]]], dtype=D64)
    lab = torch.tensor([[0, 1, 1, 0]])
    # Σg = 2 for both: w = 1/4; Σpg: class 0 1.7, class 1 1.5; Σp + Σg: 4.2, 3.8; W = Σ w Σg = 1
    num, den = 2 * (1.7 + 1.5) / 4, (4.2 + 3.8) / 4
    loss = RG.GeneralizedDiceLoss(smooth_nr=0.5, smooth_dr=0.25, smooth_relative=True)
    assert float(loss(s, lab)) == pytest.approx(1 - (num + 0.5 * 1.0) / (den + 0.25 * 1.0), rel=1e-12)
    # the same pattern twice as large: Σg = 4, w = 1/16, W = 1/2; every term halves, the value stays
    assert float(loss(s.repeat(1, 1, 2), lab.repeat(1, 2))) == pytest.approx(float(loss(s, lab)), rel=1e-12)
    # MONAI's (absolute) smoothing does not halve with the sums
    monai = RG.GeneralizedDiceLoss(smooth_nr=0.5, smooth_dr=0.25)
    assert float(monai(s, lab)) == pytest.approx(1 - (num + 0.5) / (den + 0.25), rel=1e-12)
    assert float(monai(s.repeat(1, 1, 2), lab.repeat(1, 2))) == pytest.approx(
        1 - (num / 2 + 0.5) / (den / 2 + 0.25), rel=1e-12)
    # every voxel ignored: every weight 0, W = 0 -> the absolute smoothing, 1 − s_nr/s_dr (finite)
    ign = RG.GeneralizedDiceLoss(smooth_nr=0.5, smooth_dr=0.25, smooth_relative=True, ignore_index=255)
    assert float(ign(s, torch.full_like(lab, 255))) == pytest.approx(1 - 0.5 / 0.25)
    with pytest.raises(TypeError, match="smooth_relative"):
        RG.GeneralizedDiceLoss(smooth_relative="yes")


# ---------------------------------------------------------------------------------------------------
# 4. FocalTversky: Eq. (16) and the per-class option
# ---------------------------------------------------------------------------------------------------


def test_focal_tversky_eq16_hand_example():
    # probabilities of 3 classes over 4 voxels (no activation), labels [0, 1, 2, 1]
    s = torch.tensor([[[0.6, 0.2, 0.2, 0.1], [0.2, 0.7, 0.2, 0.6], [0.2, 0.1, 0.6, 0.3]]], dtype=D64)
    lab = torch.tensor([[0, 1, 2, 1]])
    # class 1: tp = 0.7 + 0.6, fp = 0.2 + 0.2, fn = 0.3 + 0.4; class 2: tp = 0.6, fp = 0.6, fn = 0.4
    t1 = 1 - 1.3 / (1.3 + 0.3 * 0.4 + 0.7 * 0.7)
    t2 = 1 - 0.6 / (0.6 + 0.3 * 0.6 + 0.7 * 0.4)
    kw = dict(include_background=False, batch=True, smooth_nr=0.0, smooth_dr=0.0)
    eq16 = RG.FocalTverskyLoss(per_class_power=False, **kw)(s, lab)
    per_class = RG.FocalTverskyLoss(**kw)(s, lab)
    assert float(eq16) == pytest.approx(((t1 + t2) / 2) ** 0.75, rel=1e-12)
    assert float(per_class) == pytest.approx((t1 ** 0.75 + t2 ** 0.75) / 2, rel=1e-12)
    assert abs(float(eq16) - float(per_class)) > 1e-3
    # one foreground class: the two readings agree
    s2 = torch.stack([1 - s[:, 1], s[:, 1]], 1)
    lab2 = (lab == 1).long()
    torch.testing.assert_close(RG.FocalTverskyLoss(per_class_power=False, **kw)(s2, lab2),
                               RG.FocalTverskyLoss(**kw)(s2, lab2))
    with pytest.raises(TypeError, match="per_class_power"):
        RG.FocalTverskyLoss(per_class_power=None)


@pytest.mark.parametrize("batch", [True, False])
@pytest.mark.parametrize("per_class_power", [True, False])
def test_focal_tversky_both_readings_against_reference(torch_backend, batch, per_class_power):
    x, lab = _input(seed=11)
    g = R.one_hot(lab, C)
    kw = dict(include_background=False, batch=batch, per_class_power=per_class_power)
    for red, weight in (("mean", None), ("none", [2.0, 0.5]), ("sum", [2.0, 0.5])):
        loss = RG.FocalTverskyLoss(softmax=True, reduction=red, weight=weight, **kw)
        v, gx = _value_and_grad(lambda t: loss(t, lab).sum(), x)
        rv, rg = _value_and_grad(lambda t: R.focal_tversky(t, g, reduction=red, weight=weight, **kw).sum(), x)
        torch.testing.assert_close(v, rv, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gx, rg, rtol=1e-8, atol=1e-10)
        if red == "none":
            assert loss(x, lab).shape == ((C - 1,) if batch else (2, C - 1)) if per_class_power else (
                (1,) if batch else (2, 1))


@pytest.mark.parametrize("name", ["FocalTversky", "GDice", "pGDice"])
def test_paper_entries_on_the_triton_path(triton_backend, name):
    """The statistics come from the Triton kernels (interpreted); the formula is the same torch code."""
    x, lab = _input(seed=13, shape=(2, C, 5, 4))
    g = R.one_hot(lab, C)
    loss = get_loss(name)
    v, gx = _value_and_grad(lambda t: loss(t.float(), lab), x)
    rv, rg = _value_and_grad(lambda t: _reference(name, t, g, lab), x)
    torch.testing.assert_close(v.double(), rv, rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(gx, rg, rtol=2e-4, atol=2e-6)


# ---------------------------------------------------------------------------------------------------
# 5. class weights from a training set (WCE Eq. 2, ELL Eq. 23)
# ---------------------------------------------------------------------------------------------------


def test_class_weights_hand_values():
    vols = [torch.tensor([0, 0, 0, 1]), np.array([[0, 2], [255, 1]], dtype=np.uint8)]
    # counts over both volumes, 255 ignored: n = [4, 2, 1], N = 7
    torch.testing.assert_close(class_counts(vols, 3, ignore_index=255), torch.tensor([4.0, 2.0, 1.0], dtype=D64))
    w = class_weights(vols, 3, ignore_index=255)
    torch.testing.assert_close(w, torch.tensor([7 / 4, 7 / 2, 7.0], dtype=D64))
    e = class_weights(iter(vols), 3, scheme="ell", ignore_index=255)  # any iterable, e.g. a generator
    torch.testing.assert_close(e, torch.tensor([math.sqrt(7 / 4), math.sqrt(7 / 2), math.sqrt(7)], dtype=D64))
    # a counts vector (list, tensor or array); frequencies work as well as counts
    torch.testing.assert_close(class_weights([90, 10]), torch.tensor([100 / 90, 10.0], dtype=D64))
    torch.testing.assert_close(class_weights(np.array([0.9, 0.1])), torch.tensor([1 / 0.9, 10.0], dtype=D64))
    torch.testing.assert_close(class_weights(torch.tensor([4, 2, 1]), 3, scheme="ell"), e)
    # floats holding whole numbers (as NIfTI readers return them) count as labels
    torch.testing.assert_close(class_counts([np.array([0.0, 1.0, 1.0])], 2), torch.tensor([1.0, 2.0], dtype=D64))


def test_class_weights_agree_with_the_reference_frequencies():
    gen = torch.Generator().manual_seed(0)
    vols = [torch.randint(0, 4, (5, 6, 7), generator=gen) for _ in range(3)]
    g = R.one_hot(torch.stack(vols), 4)
    torch.testing.assert_close(class_weights(vols, 4), R.reciprocal_frequency_weights(g))
    torch.testing.assert_close(class_weights(vols, 4, scheme="ell"), R.ell_class_weights(g))


def test_absent_class_gets_zero_and_a_warning():
    with pytest.warns(UserWarning, match=r"\[2\]"):
        w = class_weights([torch.tensor([0, 1, 1])], 3)
    torch.testing.assert_close(w, torch.tensor([3.0, 1.5, 0.0], dtype=D64))


@pytest.mark.parametrize("args,kwargs,exc,match", [
    (([torch.tensor([0, 3])], 3), {}, ValueError, r"label 3, outside \[0, 3\).*ignore_index"),
    (([torch.tensor([0, 3])], 3), dict(ignore_index=255), ValueError, "label 3"),
    (([np.array([0.0, 0.5])], 2), {}, ValueError, "integer labels"),
    (([torch.tensor([0, 1])],), {}, ValueError, "num_classes is required"),
    ((torch.zeros(2, 3),), {}, ValueError, "1-D"),
    (([5, -1],), {}, ValueError, ">= 0"),
    (([5, 1], 3), {}, ValueError, "2 entries"),
    (([5],), {}, ValueError, "at least 2"),
    (([0, 0],), {}, ValueError, "no counted voxel"),
    (([5, 1],), dict(scheme="median"), ValueError, "scheme"),
    (([5, 1],), dict(scheme=1), TypeError, "scheme"),
    (([5, 1],), dict(ignore_index=0), ValueError, "label volumes"),
    (([], 2), {}, ValueError, "empty"),
    ((["abc"], 2), {}, TypeError, "volume 0"),
    (([torch.tensor([0, 1])], 2.0), {}, TypeError, "num_classes"),
    ((5, 2), {}, TypeError, "iterable"),
])
def test_class_weights_bad_input(args, kwargs, exc, match):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(exc, match=match):
            class_weights(*args, **kwargs)


def test_wce_paper_weights(torch_backend):
    """get_loss("WCE", weight=class_weights(training labels)) is Eq. (2) with the training set's 1/f_c."""
    train = [torch.randint(0, C, (6, 7), generator=torch.Generator().manual_seed(s)) for s in range(4)]
    w = fastloss.class_weights(train, C)
    x, lab = _input(seed=2)
    g = R.one_hot(lab, C)
    got = get_loss("WCE", weight=w)(x, lab)
    torch.testing.assert_close(got, R.wce(x, g, w), rtol=1e-10, atol=1e-12)
    e = fastloss.class_weights(train, C, scheme="ell")
    got = get_loss("ELL", weight=e)(x, lab)
    torch.testing.assert_close(got, R.ell(x, g, class_weight=e, eps=1e-5, **REF_DICE), rtol=1e-10, atol=1e-12)
