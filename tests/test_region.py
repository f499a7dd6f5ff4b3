"""Region-based losses (fastloss.losses.region) on the torch backend, in float64.

- DiceLoss, TverskyLoss, GeneralizedDiceLoss against MONAI 1.6.1 itself over broad argument grids in 1D/2D/3D:
  values, output shapes and input gradients within 1e-6.
- IoU, focal Tversky, asymmetric similarity, penalty GDice and sensitivity-specificity against naive formulas
  written here from Eqs. 7, 10, 16, 17, 18 of Ma et al. (2021), with explicit one-hot targets and class loops.
- Absent classes, gradcheck, bad input, warnings.
"""

from __future__ import annotations

import itertools
import random
import warnings

import pytest
import torch

monai_losses = pytest.importorskip("monai.losses")

from fastloss.losses import region as R  # noqa: E402
from fastloss.losses._common import reduce_loss, select_classes  # noqa: E402
from _scaling import assert_upstream_gradient_scales, skip_unless_backend_runs

F64 = torch.float64
SPATIAL = {1: (7,), 2: (5, 4), 3: (3, 4, 3)}
ATOL = 1e-6


@pytest.fixture(autouse=True)
def _torch_backend(torch_backend):
    yield


# --------------------------------------------------------------------------------------------- data helpers
def make_case(dim, C, kind, ignore, seed, B=2):
    """Logits and a (MONAI target, our target, to_onehot_y) triple.

    kind: 'labels' (B,1,*sp) int, 'labels_nochan' (B,*sp) int for us / (B,1,*sp) for MONAI, 'onehot' float,
    'onehot_int' long, 'soft' float (rows of a softmax), 'binary' (C == 1 float 0/1).
    Class C-1 is absent from batch item 0 (exercises GDice's infinite-weight rule).
    ignore: None, 'class' (index 1 or 0 for C==1), 'sentinel' (255 for labels, -1 for one-hot).
    """
    gen = torch.Generator().manual_seed(seed)
    sp = SPATIAL[dim]
    x = torch.randn((B, C) + sp, generator=gen, dtype=F64)
    hi = max(C, 2)
    lab = torch.randint(0, hi, (B, 1) + sp, generator=gen)
    if C > 1:
        lab[0][lab[0] == C - 1] = 0
    ignore_index = None
    if ignore == "class":
        ignore_index = 1 if C > 1 else 0
    elif ignore == "sentinel":
        ignore_index = 255 if kind.startswith("labels") or kind == "binary" else -1
    hole = torch.rand((B, 1) + sp, generator=gen) < 0.25  # voxels to make ignored/unlabelled
    if kind in ("labels", "labels_nochan"):
        if ignore == "sentinel":
            lab = torch.where(hole, torch.full_like(lab, 255), lab)
        y_ours = lab[:, 0] if kind == "labels_nochan" else lab
        return x, lab, y_ours, True, ignore_index
    if kind == "binary":
        assert C == 1
        y = lab.to(F64)
        return x, y, y.clone(), False, ignore_index
    if kind == "soft":
        y = torch.softmax(2 * torch.randn((B, C) + sp, generator=gen, dtype=F64), dim=1)
        return x, y, y.clone(), False, ignore_index
    y = torch.nn.functional.one_hot(lab[:, 0], C).movedim(-1, 1)
    if ignore == "sentinel":
        y = y * (~hole)  # unlabelled voxels: all-zero one-hot rows
    y = y.to(F64) if kind == "onehot" else y.long()
    return x, y, y.clone(), False, ignore_index


def compare(ref_loss, our_loss, x, y_ref, y_ours, msg=""):
    xa = x.clone().requires_grad_(True)
    xb = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            a = ref_loss(xa, y_ref)
        except RuntimeError as e:  # MONAI's norm path rejects integer targets (vector_norm of a Long tensor)
            assert "vector_norm" in str(e), e
            return False
        b = our_loss(xb, y_ours)
    assert a.shape == b.shape, f"{msg}: shape {tuple(b.shape)} != MONAI {tuple(a.shape)}"
    assert b.dtype == F64
    assert torch.allclose(a, b, atol=ATOL, rtol=0), f"{msg}: {a} vs {b}"
    # A fixed random cotangent so 'none' results are checked entry by entry.
    cot = torch.rand(a.shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    (ga,) = torch.autograd.grad(a, xa, cot)
    (gb,) = torch.autograd.grad(b, xb, cot)
    assert torch.isfinite(gb).all(), msg
    assert torch.allclose(ga, gb, atol=ATOL, rtol=0), f"{msg}: grad max diff {(ga - gb).abs().max()}"
    return True


def sample_grid(axes: dict, n: int, seed: int):
    """n combinations from the product of axes (deterministic), always including each value once."""
    keys = list(axes)
    full = list(itertools.product(*axes.values()))
    rng = random.Random(seed)
    picked = rng.sample(full, min(n, len(full)))
    for k_i, k in enumerate(keys):  # make sure every value of every axis appears at least once
        for v in axes[k]:
            if not any(c[k_i] == v for c in picked):
                picked.append(next(c for c in full if c[k_i] == v))
    return [dict(zip(keys, c)) for c in picked]


ACTS = {
    "sigmoid": dict(sigmoid=True),
    "softmax": dict(softmax=True),
    "other": dict(other_act=torch.tanh),
    "none": dict(),
}


def _valid(cfg, C):
    kind = cfg["kind"]
    if C == 1 and kind not in ("binary", "labels"):
        return False
    if C > 1 and kind == "binary":
        return False
    if kind == "soft" and cfg.get("ignore") == "sentinel":
        return False  # a softmax target has no all-zero voxel: the sentinel masks nothing (covered elsewhere)
    return True


# ------------------------------------------------------------------------------------------- MONAI: Dice
DICE_AXES = dict(
    C=(1, 3),
    act=tuple(ACTS),
    include_background=(True, False),
    squared_pred=(False, True),
    jaccard=(False, True),
    batch=(False, True),
    weight=(None, "scalar", "list"),
    soft_label=(False, True),
    ignore=(None, "class", "sentinel"),
    kind=("labels", "labels_nochan", "onehot", "onehot_int", "soft", "binary"),
    reduction=("none", "mean", "sum"),
)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_dice_matches_monai(dim):
    cases = [c for c in sample_grid(DICE_AXES, 360, seed=dim) if _valid(c, c["C"])]
    compared = 0
    for i, c in enumerate(cases):
        C = c["C"]
        x, y_ref, y_ours, onehot_y, ii = make_case(dim, C, c["kind"], c["ignore"], seed=1000 * dim + i)
        n_cls = C - 1 if (not c["include_background"] and C > 1) else C
        weight = {None: None, "scalar": 0.7, "list": [0.5 + 0.25 * k for k in range(n_cls)]}[c["weight"]]
        kw = dict(
            include_background=c["include_background"],
            to_onehot_y=onehot_y,
            squared_pred=c["squared_pred"],
            jaccard=c["jaccard"],
            reduction=c["reduction"],
            batch=c["batch"],
            weight=weight,
            soft_label=c["soft_label"],
            ignore_index=ii,
            **ACTS[c["act"]],
        )
        compared += compare(monai_losses.DiceLoss(**kw), R.DiceLoss(**kw), x, y_ref, y_ours, msg=f"{c}")
    assert compared > 150


def test_dice_labels_without_to_onehot_y_and_functional():
    x, y_ref, y_ours, _, _ = make_case(2, 3, "labels", None, seed=3)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, include_background=False)
    compare(ref, R.DiceLoss(softmax=True, include_background=False), x, y_ref, y_ours)
    ours = R.dice_loss(x, y_ours, softmax=True, include_background=False)
    assert torch.allclose(ours, ref(x, y_ref), atol=ATOL, rtol=0)


def test_dice_default_smoothing_small_hand_example():
    # p = softmax gives (0.5, 0.5) everywhere; target class 0 on 2 of 4 voxels.
    x = torch.zeros(1, 2, 4, dtype=F64)
    y = torch.tensor([[[0, 0, 1, 1]]])
    loss = R.DiceLoss(softmax=True, smooth_nr=0, smooth_dr=0, reduction="none")(x, y)
    # each class: Σpg = 1, Σp = 2, Σg = 2 -> Dice = 2/4 -> loss 0.5
    assert torch.allclose(loss.flatten(), torch.tensor([0.5, 0.5], dtype=F64))


# ----------------------------------------------------------------------------------------- MONAI: Tversky
TV_AXES = dict(
    C=(1, 3),
    act=tuple(ACTS),
    include_background=(True, False),
    ab=((0.5, 0.5), (0.3, 0.7), (1.0, 0.0), (0.9, 1.6)),
    batch=(False, True),
    soft_label=(False, True),
    ignore=(None, "class", "sentinel"),
    kind=("labels", "labels_nochan", "onehot", "soft", "binary"),
    reduction=("none", "mean", "sum"),
)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_tversky_matches_monai(dim):
    cases = [c for c in sample_grid(TV_AXES, 260, seed=10 + dim) if _valid(c, c["C"])]
    compared = 0
    for i, c in enumerate(cases):
        x, y_ref, y_ours, onehot_y, ii = make_case(dim, c["C"], c["kind"], c["ignore"], seed=2000 * dim + i)
        kw = dict(
            include_background=c["include_background"],
            to_onehot_y=onehot_y,
            alpha=c["ab"][0],
            beta=c["ab"][1],
            reduction=c["reduction"],
            batch=c["batch"],
            soft_label=c["soft_label"],
            ignore_index=ii,
            **ACTS[c["act"]],
        )
        compared += compare(monai_losses.TverskyLoss(**kw), R.TverskyLoss(**kw), x, y_ref, y_ours, msg=f"{c}")
    assert compared > 100


# ----------------------------------------------------------------------------------- MONAI: generalized Dice
GD_AXES = dict(
    C=(1, 3),
    act=tuple(ACTS),
    include_background=(True, False),
    w_type=("square", "simple", "uniform"),
    batch=(False, True),
    soft_label=(False, True),
    kind=("labels", "labels_nochan", "onehot", "onehot_int", "soft", "binary"),
    reduction=("none", "mean", "sum"),
)


@pytest.mark.parametrize("dim", [1, 2, 3])
def test_generalized_dice_matches_monai(dim):
    cases = [c for c in sample_grid(GD_AXES, 220, seed=20 + dim) if _valid(c, c["C"])]
    compared = 0
    for i, c in enumerate(cases):
        x, y_ref, y_ours, onehot_y, _ = make_case(dim, c["C"], c["kind"], None, seed=3000 * dim + i)
        kw = dict(
            include_background=c["include_background"],
            to_onehot_y=onehot_y,
            w_type=c["w_type"],
            reduction=c["reduction"],
            batch=c["batch"],
            soft_label=c["soft_label"],
            **ACTS[c["act"]],
        )
        compared += compare(
            monai_losses.GeneralizedDiceLoss(**kw), R.GeneralizedDiceLoss(**kw), x, y_ref, y_ours, msg=f"{c}"
        )
    assert compared > 90


@pytest.mark.parametrize("batch", [False, True])
@pytest.mark.parametrize("ignore", ["class", "sentinel"])
def test_generalized_dice_ignore_index_equals_monai_on_masked_inputs(batch, ignore):
    # MONAI's GeneralizedDiceLoss has no ignore_index: feed it the masked probabilities and masked one-hot
    # target, which is what ignore_index means (MONAI's DiceLoss/TverskyLoss rule).
    x, lab, _, _, ii = make_case(3, 3, "labels", ignore, seed=5)
    m = (lab != ii).to(F64)
    onehot = torch.nn.functional.one_hot(torch.where(lab[:, 0] == 255, 0, lab[:, 0]), 3).movedim(-1, 1).to(F64)
    ref = monai_losses.GeneralizedDiceLoss(other_act=lambda t: torch.softmax(t, 1) * m, batch=batch)
    ours = R.GeneralizedDiceLoss(softmax=True, batch=batch, ignore_index=ii)
    compare(ref, ours, x, onehot * m, lab)


# ------------------------------------------------------------------------------------ naive paper formulas
def naive_inputs(x, y, act, C, ignore_index=None):
    """Probabilities p, one-hot g and mask m, all (B, C, N), the naive way."""
    B = x.shape[0]
    p = {"softmax": torch.softmax(x, 1), "sigmoid": torch.sigmoid(x)}[act].reshape(B, C, -1)
    lab = y.reshape(B, -1)
    m = torch.ones(B, 1, lab.shape[1], dtype=F64)
    if ignore_index is not None:
        m = (lab != ignore_index).to(F64).unsqueeze(1)
    g = torch.zeros(B, C, lab.shape[1], dtype=F64)
    for c in range(C):
        g[:, c] = (lab == c).to(F64)
    return p * m, g * m, m


def naive_sums(t, batch):
    """Sum over voxels (and batch): (B, C, N) -> (B, C) or (C,)."""
    s = t.sum(-1)
    return s.sum(0) if batch else s


def naive_iou(p, g, m, batch, snr, sdr):
    # Eq. 10 with smoothing: 1 − (2Σgs + s_nr) / (2Σ(g + s − gs) + s_dr)
    return 1 - (2 * naive_sums(g * p, batch) + snr) / (2 * naive_sums(g + p - g * p, batch) + sdr)


def naive_tversky_ratio(p, g, m, batch, a, b, snr, sdr):
    tp = naive_sums(g * p, batch)
    fp = naive_sums((m - g) * p, batch)  # Σ (1 − g) s over counted voxels
    fn = naive_sums(g * (m - p), batch)  # Σ g (1 − s)
    return (tp + snr) / (tp + a * fp + b * fn + sdr)


def naive_focal_tversky(p, g, m, batch, a, b, gamma, snr, sdr):
    return (1 - naive_tversky_ratio(p, g, m, batch, a, b, snr, sdr)) ** (1 / gamma)


def naive_asym(p, g, m, batch, beta, snr, sdr):
    # Eq. 17: FN weighted β²/(1+β²), FP weighted 1/(1+β²)
    tp = naive_sums(g * p, batch)
    fn = naive_sums(g * (m - p), batch)
    fp = naive_sums((m - g) * p, batch)
    return 1 - (tp + snr) / (tp + beta**2 / (1 + beta**2) * fn + 1 / (1 + beta**2) * fp + sdr)


def naive_pgd(p, g, m, batch, k):
    # Eq. 18, first line, no smoothing: 2Σw·gs / (Σw(g + s) + kΣw(1 − g)s + kΣw·g(1 − s)), w = 1/(Σg)²;
    # an absent class takes the largest weight of the present ones (MONAI's GDice rule).
    gs = naive_sums(g, batch)
    w = 1 / gs**2
    inf = torch.isinf(w)
    w0 = torch.where(inf, 0.0, w)
    wmax = w0.max() if batch else w0.max(-1, keepdim=True).values
    w = torch.where(inf, wmax, w0)
    d = -1
    num = 2 * (w * naive_sums(g * p, batch)).sum(d)
    den = (
        (w * naive_sums(g + p, batch)).sum(d)
        + k * (w * naive_sums((m - g) * p, batch)).sum(d)
        + k * (w * naive_sums(g * (m - p), batch)).sum(d)
    )
    return 1 - num / den


def naive_ss(p, g, m, batch, w, snr, eps):
    # Eq. 7, sums over classes and voxels inside each ratio
    sens = naive_sums((g - p) ** 2 * g, batch).sum(-1)
    spec = naive_sums((g - p) ** 2 * (m - g), batch).sum(-1)
    gsum = naive_sums(g, batch).sum(-1)
    neg = naive_sums(m - g, batch).sum(-1)
    return w * (sens + snr) / (gsum + eps) + (1 - w) * (spec + snr) / (neg + eps)


def _drop_bg(t, include_background):
    return t if include_background else t[:, 1:]


PAPER_GRID = list(
    itertools.product(
        [1, 2, 3],  # dim
        ["softmax", "sigmoid"],
        [True, False],  # include_background
        [False, True],  # batch
        [None, 255, 1],  # ignore_index
    )
)


@pytest.mark.parametrize("dim,act,include_background,batch,ignore_index", PAPER_GRID)
def test_paper_losses_match_naive_formulas(dim, act, include_background, batch, ignore_index):
    C = 3
    gen = torch.Generator().manual_seed(dim * 7 + batch)
    sp = SPATIAL[dim]
    x = torch.randn((2, C) + sp, generator=gen, dtype=F64)
    y = torch.randint(0, C, (2, 1) + sp, generator=gen)
    if ignore_index != 1:  # (with class 1 ignored too, item 0 would have no class left without background)
        y[0][y[0] == 2] = 0  # class 2 absent from item 0
    if ignore_index == 255:
        y[:, :, 0] = 255
    p, g, m = naive_inputs(x, y, act, C, ignore_index)
    p, g = _drop_bg(p, include_background), _drop_bg(g, include_background)
    common = dict(include_background=include_background, batch=batch, ignore_index=ignore_index, **{act: True})

    def check(loss, expect):
        got = loss(x, y)
        assert torch.allclose(got, expect, atol=1e-10, rtol=1e-10), f"{type(loss).__name__}: {got} vs {expect}"

    snr, sdr = 1e-5, 2e-5
    check(R.IoULoss(smooth_nr=snr, smooth_dr=sdr, **common), naive_iou(p, g, m, batch, snr, sdr).mean())
    check(
        R.FocalTverskyLoss(alpha=0.3, beta=0.7, gamma=1.5, smooth_nr=snr, smooth_dr=sdr, **common),
        naive_focal_tversky(p, g, m, batch, 0.3, 0.7, 1.5, snr, sdr).mean(),
    )
    check(
        R.AsymmetricSimilarityLoss(beta=1.5, smooth_nr=snr, smooth_dr=sdr, reduction="sum", **common),
        naive_asym(p, g, m, batch, 1.5, snr, sdr).sum(),
    )
    check(
        R.PenaltyGeneralizedDiceLoss(k=2.5, smooth_nr=0, smooth_dr=0, **common),
        naive_pgd(p, g, m, batch, 2.5).mean(),
    )
    check(
        R.SensitivitySpecificityLoss(w=0.05, smooth_nr=0, smooth_dr=1e-5, **common),
        naive_ss(p, g, m, batch, 0.05, 0.0, 1e-5).mean(),
    )


def test_iou_is_eq10_without_smoothing_and_dice_jaccard():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 6, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 4, (2, 6, 5), generator=gen)
    p, g, m = naive_inputs(x, y, "softmax", 4)
    eq10 = 1 - (g * p).sum(-1) / (g + p - g * p).sum(-1)
    got = R.IoULoss(softmax=True, smooth_nr=0, smooth_dr=0, reduction="none")(x, y)
    assert got.shape == (2, 4, 1, 1)
    assert torch.allclose(got[..., 0, 0], eq10, atol=1e-12)
    ref = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True)
    assert torch.allclose(R.iou_loss(x, y, softmax=True), ref(x, y[:, None]), atol=1e-12)


@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_paper_loss_reductions_and_weights(reduction):
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (2, 1, 5, 5), generator=gen)
    p, g, m = naive_inputs(x, y, "softmax", 3)
    wt = torch.tensor([0.2, 1.0, 3.0], dtype=F64)
    red = {"none": lambda t: t, "mean": torch.mean, "sum": torch.sum}[reduction]
    ft = R.FocalTverskyLoss(softmax=True, weight=wt, reduction=reduction)(x, y)
    assert torch.allclose(ft, red(wt * naive_focal_tversky(p, g, m, False, 0.3, 0.7, 4 / 3, 1e-5, 1e-5)), atol=1e-10)
    asym = R.AsymmetricSimilarityLoss(softmax=True, weight=wt, reduction=reduction)(x, y)
    assert torch.allclose(asym, red(wt * naive_asym(p, g, m, False, 1.5, 1e-5, 1e-5)), atol=1e-10)
    pgd = R.PenaltyGeneralizedDiceLoss(softmax=True, reduction=reduction, smooth_nr=0, smooth_dr=0)(x, y)
    ss = R.SensitivitySpecificityLoss(softmax=True, reduction=reduction)(x, y)
    if reduction == "none":
        assert pgd.shape == (2, 1, 1, 1) and ss.shape == (2, 1, 1, 1)
        assert ft.shape == (2, 3) and asym.shape == (2, 3)
    assert torch.allclose(pgd.flatten(), red(naive_pgd(p, g, m, False, 2.5)).flatten(), atol=1e-10)
    assert torch.allclose(ss.flatten(), red(naive_ss(p, g, m, False, 0.05, 0, 1e-5)).flatten(), atol=1e-10)


def test_penalty_gdice_k0_is_gdice_and_penalty_increases_loss():
    gen = torch.Generator().manual_seed(8)
    x = torch.randn(2, 3, 4, 4, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (2, 1, 4, 4, 4), generator=gen)
    gd = R.GeneralizedDiceLoss(softmax=True, to_onehot_y=True)(x, y)
    p0 = R.PenaltyGeneralizedDiceLoss(softmax=True, k=0)(x, y)
    assert torch.allclose(gd, p0, atol=1e-6)  # GDice weights are float32 as MONAI; pGDice's are float64
    assert R.penalty_generalized_dice_loss(x, y, softmax=True, k=2.5) > p0


def test_asym_beta1_is_dice_and_focal_tversky_gamma1_is_tversky():
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 6, 6, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (2, 1, 6, 6), generator=gen)
    # β = 1: α = β = 1/2, and (tp + s)/(tp + (fp + fn)/2 + s) is the Dice score with smoothing 2s
    asym = R.asymmetric_similarity_loss(x, y, softmax=True, beta=1.0, smooth_nr=1e-5, smooth_dr=1e-5)
    dice = R.dice_loss(x, y, softmax=True, smooth_nr=2e-5, smooth_dr=2e-5)
    assert torch.allclose(asym, dice, atol=1e-12)
    ft = R.focal_tversky_loss(x, y, softmax=True, gamma=1.0, alpha=0.4, beta=0.6)
    tv = R.tversky_loss(x, y, softmax=True, alpha=0.4, beta=0.6)
    assert torch.allclose(ft, tv, atol=1e-12)


# ------------------------------------------------------------------------------- absent classes, gradcheck
ALL_LOSSES = [
    (R.DiceLoss, {}),
    (R.DiceLoss, dict(squared_pred=True, jaccard=True, soft_label=True)),
    (R.IoULoss, {}),
    (R.TverskyLoss, dict(alpha=0.3, beta=0.7)),
    (R.GeneralizedDiceLoss, {}),
    (R.GeneralizedDiceLoss, dict(w_type="simple", soft_label=True)),
    (R.FocalTverskyLoss, {}),
    (R.AsymmetricSimilarityLoss, {}),
    (R.PenaltyGeneralizedDiceLoss, {}),
    (R.SensitivitySpecificityLoss, {}),
]
IDS = [f"{c.__name__}-{'-'.join(k)}" for c, k in ALL_LOSSES]


@pytest.mark.parametrize("cls,kw", ALL_LOSSES, ids=IDS)
@pytest.mark.parametrize("batch", [False, True])
def test_absent_class_finite(cls, kw, batch):
    x = torch.randn(2, 3, 4, 4, dtype=F64, requires_grad=True)
    y = torch.randint(0, 2, (2, 4, 4))  # class 2 absent everywhere
    y[1] = 0  # item 1: background only
    for include_background in (True, False):
        loss = cls(softmax=True, batch=batch, include_background=include_background, **kw)(x, y)
        (gx,) = torch.autograd.grad(loss, x)
        assert torch.isfinite(loss) and torch.isfinite(gx).all()
    # perfect prediction of an empty foreground: finite, and the minimum for the Dice family
    xp = torch.tensor([[[30.0] * 4, [-30.0] * 4, [-30.0] * 4]], dtype=F64, requires_grad=True)
    yp = torch.zeros(1, 4, dtype=torch.long)
    loss = cls(softmax=True, batch=batch, **kw)(xp, yp)
    (gx,) = torch.autograd.grad(loss, xp)
    assert torch.isfinite(loss) and torch.isfinite(gx).all()
    assert loss < 1e-4


@pytest.mark.parametrize("cls,kw", ALL_LOSSES, ids=IDS)
def test_gradcheck(cls, kw):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 3, 2, generator=gen, dtype=F64, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 3, 2), generator=gen)
    y[0, 0, 0, 0] = 255
    loss = cls(softmax=True, ignore_index=255, **kw)
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x,))
    sig = cls(sigmoid=True, batch=True, include_background=False, ignore_index=255, **kw)
    assert torch.autograd.gradcheck(lambda t: sig(t, y), (x,))
    # the loss times 2 before backward doubles the gradient
    x1 = x.detach().clone().requires_grad_(True)
    loss(x1, y).backward()
    x2 = x.detach().clone().requires_grad_(True)
    (2 * loss(x2, y)).backward()
    assert torch.allclose(x2.grad, 2 * x1.grad, atol=1e-14)


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_low_precision_inputs_give_float32(backend, monkeypatch):
    """Half logits are read as they are and accumulated in float32: the result equals the float64 loss
    of the same rounded logits to float32's error (not merely the float32 input's loss to 2e-2). The
    ``other_act`` activation receives the float32-cast logits."""
    skip_unless_backend_runs(backend)
    gen = torch.Generator().manual_seed(13)
    x = torch.randn(2, 3, 4, 4, generator=gen) * 2
    y = torch.randint(0, 3, (2, 4, 4), generator=gen)
    for dt in (torch.float16, torch.bfloat16):
        xr = x.to(dt)
        ref = R.DiceLoss(softmax=True)(xr.double(), y)
        monkeypatch.setenv("FASTLOSS_BACKEND", backend)
        out = R.DiceLoss(softmax=True)(xr, y)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-7)
        seen = []

        def act(t):
            seen.append(t.dtype)
            return torch.softmax(t, 1)

        out = R.DiceLoss(other_act=act)(xr, y)
        monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
        ref = R.DiceLoss()(torch.softmax(xr.float(), 1).double(), y)
        assert out.dtype == torch.float32 and seen == [torch.float32]
        torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-7)


_REGION_BACKENDS = ["triton", "auto"]


@pytest.mark.parametrize("cls,kw", ALL_LOSSES, ids=IDS)
@pytest.mark.parametrize("backend", _REGION_BACKENDS)
def test_loss_times_two_on_the_custom_backwards(cls, kw, backend, monkeypatch):
    """test_gradcheck's scaling check runs on the torch backend, where autograd guarantees it. Here the
    custom backwards (triton under the interpreter, auto's compiled CPU kernels once they land), in
    float32: 2·L doubles the gradient exactly, 0.37·L gives 0.37 times the float64 torch gradient."""
    skip_unless_backend_runs(backend)
    gen = torch.Generator().manual_seed(14)
    x = torch.randn(2, 3, 3, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (2, 1, 3, 4), generator=gen)
    y[0, 0, 0, 0] = 255
    for act in (dict(softmax=True), dict(sigmoid=True, batch=True, include_background=False)):
        assert_upstream_gradient_scales(cls(ignore_index=255, **act, **kw), x, y, backend, monkeypatch)


# ------------------------------------------------------------------------------------------ common helpers
def test_common_reduce_and_select():
    f = torch.arange(6.0).reshape(2, 3)
    assert reduce_loss(f, "none", 3).shape == (2, 3, 1, 1, 1)
    assert reduce_loss(f, "none", 3, broadcast=False).shape == (2, 3)
    assert reduce_loss(f, "sum", 3) == 15 and reduce_loss(f, "mean", 3) == 2.5
    s = torch.arange(12.0).reshape(2, 3, 2)
    assert torch.equal(select_classes(s, False), s[:, 1:])
    with pytest.warns(UserWarning, match="include_background=False"):
        assert select_classes(s[:, :1], False).shape == (2, 1, 2)


# ------------------------------------------------------------------------------------------------ warnings
def test_single_channel_warnings_like_monai():
    x = torch.randn(2, 1, 4, 4, dtype=F64)
    y = torch.randint(0, 2, (2, 1, 4, 4)).to(F64)
    with pytest.warns(UserWarning, match=r"`softmax=True` ignored"):
        R.DiceLoss(softmax=True)(x, y)
    with pytest.warns(UserWarning, match=r"`to_onehot_y=True` ignored"):
        R.TverskyLoss(sigmoid=True, to_onehot_y=True)(x, y)
    with pytest.warns(UserWarning, match=r"`include_background=False` ignored"):
        R.GeneralizedDiceLoss(sigmoid=True, include_background=False)(x, y)


# ----------------------------------------------------------------------------------------------- bad input
X = torch.randn(2, 3, 4, 4)
Y = torch.randint(0, 3, (2, 1, 4, 4))


@pytest.mark.parametrize("cls", sorted({c for c, _ in ALL_LOSSES}, key=lambda c: c.__name__))
class TestBadInput:
    def test_two_activations(self, cls):
        with pytest.raises(ValueError, match="sigmoid"):
            cls(sigmoid=True, softmax=True)

    def test_other_act_not_callable(self, cls):
        with pytest.raises(TypeError, match="callable"):
            cls(other_act="tanh")

    def test_other_act_with_softmax(self, cls):
        with pytest.raises(ValueError, match="other_act"):
            cls(other_act=torch.tanh, softmax=True)

    def test_bad_reduction(self, cls):
        with pytest.raises(ValueError, match="reduction"):
            cls(reduction="avg")

    def test_negative_smoothing(self, cls):
        with pytest.raises(ValueError, match="smooth_dr"):
            cls(smooth_dr=-1.0)

    def test_ignore_index_type(self, cls):
        with pytest.raises(TypeError, match="ignore_index"):
            cls(ignore_index=1.5)

    def test_wrong_ndim(self, cls):
        if cls not in (R.DiceLoss, R.IoULoss, R.TverskyLoss):  # these take (B, C) as MONAI (test_monai_losses)
            with pytest.raises(ValueError, match="spatial"):
                cls(softmax=True)(torch.randn(2, 3), torch.randint(0, 3, (2, 1)))
        with pytest.raises(ValueError, match="spatial"):
            cls(softmax=True)(torch.randn(1, 2, 2, 2, 2, 2), torch.randint(0, 2, (1, 1, 2, 2, 2, 2)))

    def test_shape_mismatch(self, cls):
        with pytest.raises(ValueError, match="shape"):
            cls(softmax=True)(X, torch.randint(0, 3, (2, 1, 4, 5)))
        with pytest.raises(ValueError, match="shape"):
            cls(softmax=True)(X, torch.rand(2, 2, 4, 4))

    def test_labels_out_of_range(self, cls):
        with pytest.raises(ValueError, match=r"\[0, 2\]"):
            cls(softmax=True)(X, torch.full((2, 1, 4, 4), 3))
        with pytest.raises(ValueError, match=r"\[0, 2\]"):
            cls(softmax=True)(X, torch.full((2, 1, 4, 4), -1))
        with pytest.raises(ValueError, match="ignore_index=7"):
            cls(softmax=True, ignore_index=7)(X, torch.full((2, 1, 4, 4), 5))

    def test_float_labels_need_to_onehot_y(self, cls):
        with pytest.raises(TypeError, match="to_onehot_y"):
            cls(softmax=True)(X, Y.float())
        cls(softmax=True, to_onehot_y=True)(X, Y.float())  # accepted, as MONAI

    def test_empty_and_non_float(self, cls):
        with pytest.raises(ValueError, match="empty"):
            cls(softmax=True)(torch.randn(2, 3, 0, 4), torch.randint(0, 3, (2, 1, 0, 4)))
        with pytest.raises(TypeError, match="dtype"):
            cls(softmax=True)(torch.randint(0, 3, (2, 3, 4, 4)), Y)
        with pytest.raises(TypeError, match="Tensor"):
            cls(softmax=True)(X.numpy(), Y)

    def test_other_act_changing_shape(self, cls):
        with pytest.raises(ValueError, match="other_act"):
            cls(other_act=lambda t: t[:, :2])(X, Y)


def test_loss_specific_bad_arguments():
    with pytest.raises(ValueError, match="weight"):
        R.DiceLoss(weight=[1.0, -1.0, 1.0])
    with pytest.raises(ValueError, match="one value per class"):
        R.DiceLoss(softmax=True, weight=[1.0, 2.0])(X, Y)
    with pytest.raises(ValueError, match="one value per class"):
        R.DiceLoss(softmax=True, weight=[1.0, 2.0, 3.0], include_background=False)(X, Y)
    with pytest.raises(ValueError, match="alpha"):
        R.TverskyLoss(alpha=-0.1)
    with pytest.raises(TypeError, match="beta"):
        R.TverskyLoss(beta="big")
    with pytest.raises(ValueError, match="gamma"):
        R.FocalTverskyLoss(gamma=0.0)
    with pytest.raises(ValueError, match="beta"):
        R.AsymmetricSimilarityLoss(beta=float("nan"))
    with pytest.raises(ValueError, match="k"):
        R.PenaltyGeneralizedDiceLoss(k=-2.5)
    with pytest.raises(ValueError, match="w_type"):
        R.GeneralizedDiceLoss(w_type="log")
    with pytest.raises(ValueError, match="w must be <= 1"):
        R.SensitivitySpecificityLoss(w=1.5)
    with pytest.raises(TypeError, match="batch"):
        R.DiceLoss(batch="yes")
    with pytest.raises(ValueError, match="to_onehot_y"):
        R.DiceLoss(to_onehot_y=True)(X, torch.nn.functional.one_hot(Y[:, 0], 3).movedim(-1, 1))
