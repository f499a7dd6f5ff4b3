"""Compound losses: DiceCE/DiceFocal against MONAI 1.6.1; DiceTopK, ELL, DiceBD, DiceHD against naive formulas."""

import itertools
import warnings

import numpy as np
import pytest
import torch
from scipy.ndimage import distance_transform_edt

from fastloss.losses.compound import (
    DiceBoundaryLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceHausdorffDTLoss,
    DiceTopKLoss,
    ExpLogLoss,
    dice_ce_loss,
    dice_focal_loss,
    exp_log_loss,
)

from fastloss.losses.distribution import FocalLoss  # noqa: E402
from fastloss.losses.region import DiceLoss  # noqa: E402

monai_losses = pytest.importorskip("monai.losses")

TOL = dict(rtol=1e-6, atol=1e-6)


def _onehot(y, C):
    return torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).to(torch.float64)


def _data(shape=(2, 3, 5, 6), seed=0, absent=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=torch.float64, generator=g)
    y = torch.randint(0, max(shape[1], 2), (shape[0], 1) + shape[2:], generator=g)
    if absent is not None:
        y = torch.where(y == absent, torch.zeros_like(y), y)
    return x, y


def _compare(a_fn, b_fn, x, atol=1e-6):
    x1 = x.clone().requires_grad_()
    x2 = x.clone().requires_grad_()
    a, b = a_fn(x1), b_fn(x2)
    assert a.shape == b.shape
    torch.testing.assert_close(a, b, rtol=1e-6, atol=atol)
    w = torch.linspace(0.5, 1.5, a.numel(), dtype=a.dtype).reshape(a.shape)
    (a * w).sum().backward()
    (b * w).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-6, atol=atol)


# ------------------------------------------------------------------------------------------ vs MONAI
DICECE_GRID = list(itertools.product(
    [True, False],                       # include_background
    ["softmax", "sigmoid"],              # Dice activation
    [False, True],                       # batch
    ["mean", "sum"],                     # reduction
    [None, (0.5, 1.0, 2.0)],             # weight
    [0.0, 0.2],                          # label_smoothing
))


@pytest.mark.parametrize("include_background,act,batch,reduction,weight,ls", DICECE_GRID)
def test_dice_ce_matches_monai(include_background, act, batch, reduction, weight, ls):
    x, y = _data(seed=hash((include_background, act, batch, reduction, ls)) % 1000)
    kw = dict(include_background=include_background, batch=batch, reduction=reduction, label_smoothing=ls,
              lambda_dice=0.7, lambda_ce=1.3, **{act: True})
    if weight is not None:
        kw["weight"] = torch.tensor(weight, dtype=torch.float64)
    ours = DiceCELoss(to_onehot_y=True, **kw)
    theirs = monai_losses.DiceCELoss(to_onehot_y=True, **kw)
    _compare(lambda t: ours(t, y), lambda t: theirs(t, y), x)  # labels
    oh = _onehot(y, 3)
    ours = DiceCELoss(**kw)
    theirs = monai_losses.DiceCELoss(**kw)
    _compare(lambda t: ours(t, oh), lambda t: theirs(t, oh), x)  # one-hot


@pytest.mark.parametrize("weight", [None, (2.5,)])
def test_dice_ce_single_channel_and_3d(weight):
    x, y = _data((2, 1, 4, 5, 3), seed=3)
    y = y.clamp(0, 1)
    kw = dict(sigmoid=True)
    if weight is not None:
        kw["weight"] = torch.tensor(weight, dtype=torch.float64)
    ours, theirs = DiceCELoss(**kw), monai_losses.DiceCELoss(**kw)
    _compare(lambda t: ours(t, y), lambda t: theirs(t, y.double()), x)
    x, y = _data((2, 4, 4, 5, 3), seed=4)
    kw = dict(softmax=True, to_onehot_y=True, squared_pred=True, jaccard=True, smooth_nr=0.0)
    ours, theirs = DiceCELoss(**kw), monai_losses.DiceCELoss(**kw)
    _compare(lambda t: ours(t, y), lambda t: theirs(t, y), x)


def test_dice_ce_refuses_none_and_negative_lambdas():
    with pytest.raises(ValueError):
        DiceCELoss(reduction="none")
    with pytest.raises(ValueError):
        DiceCELoss(lambda_ce=-1.0)
    with pytest.raises(ValueError):
        DiceCELoss(label_smoothing=1.5)


DICEFOCAL_GRID = list(itertools.product(
    [True, False],                        # include_background
    ["softmax", "sigmoid"],               # Dice activation
    [False, True],                        # batch
    ["mean", "sum", "none"],              # reduction
    [(2.0, None, None), (1.5, 0.25, None), (2.0, None, (0.5, 2.0))],  # gamma, alpha, weight (kept channels)
))


@pytest.mark.parametrize("include_background,act,batch,reduction,focal", DICEFOCAL_GRID)
def test_dice_focal_matches_monai(include_background, act, batch, reduction, focal):
    gamma, alpha, weight = focal
    C = 3
    if weight is not None:
        weight = weight if not include_background else weight + (1.0,)
    x, y = _data((2, C, 5, 4), seed=len(str(focal)) + batch)
    kw = dict(include_background=include_background, batch=batch, reduction=reduction, gamma=gamma,
              alpha=alpha, weight=weight, lambda_dice=1.2, lambda_focal=0.8, **{act: True})
    oh = _onehot(y, C)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours, theirs = DiceFocalLoss(**kw), monai_losses.DiceFocalLoss(**kw)
        _compare(lambda t: ours(t, oh), lambda t: theirs(t, oh), x)
        ours, theirs = DiceFocalLoss(to_onehot_y=True, **kw), monai_losses.DiceFocalLoss(to_onehot_y=True, **kw)
        _compare(lambda t: ours(t, y), lambda t: theirs(t, y), x)


def test_dice_focal_softmax_option_matches_monai_parts():
    x, y = _data((2, 3, 4, 4, 4), seed=9)
    oh = _onehot(y, 3)
    ours = DiceFocalLoss(softmax=True, include_background=False, batch=True, use_softmax=True)
    dice = monai_losses.DiceLoss(softmax=True, include_background=False, batch=True)
    focal = monai_losses.FocalLoss(include_background=False, use_softmax=True)
    _compare(lambda t: ours(t, oh), lambda t: dice(t, oh) + focal(t, oh), x)
    assert torch.isfinite(dice_focal_loss(x, y, softmax=True))


# ------------------------------------------------------------------------------------- naive formulas
def naive_dice(p, g, include_background=False, batch=True, smooth=1e-5):
    if not include_background:
        p, g = p[:, 1:], g[:, 1:]
    dims = [0] + list(range(2, p.ndim)) if batch else list(range(2, p.ndim))
    inter = (p * g).sum(dims)
    return (1 - (2 * inter + smooth) / (p.sum(dims) + g.sum(dims) + smooth)).mean()


def naive_topk(x, y, k=10.0):
    ce = -torch.log_softmax(x, 1).gather(1, y).flatten()
    n = int(ce.numel() * k / 100)
    return torch.sort(ce, descending=True).values[:n].mean()


@pytest.mark.parametrize("k", [10.0, 35.0])
def test_dice_topk_matches_naive(k):
    x, y = _data((2, 3, 6, 5, 4), seed=int(k))
    p, g = torch.softmax(x, 1), _onehot(y, 3)
    _compare(lambda t: DiceTopKLoss(k=k)(t, y),
             lambda t: naive_dice(torch.softmax(t, 1), g) + naive_topk(t, y, k), x)
    # nnU-Net's default: batch Dice without background, k = 10; lambdas weigh the parts
    _compare(lambda t: DiceTopKLoss(lambda_dice=0.5, lambda_topk=2.0, batch=False)(t, y),
             lambda t: 0.5 * naive_dice(torch.softmax(t, 1), g, batch=False) + 2.0 * naive_topk(t, y, 10.0), x)


def naive_ell(x, y, C, include_background=False, batch=True, eps=1e-5, weight=None):
    p, g = torch.softmax(x, 1), _onehot(y, C)
    pd, gd = (p, g) if include_background else (p[:, 1:], g[:, 1:])
    dims = [0] + list(range(2, p.ndim)) if batch else list(range(2, p.ndim))
    dice = (2 * (pd * gd).sum(dims) + eps) / (pd.sum(dims) + gd.sum(dims) + eps)
    l_dice = ((-torch.log(dice)) ** 0.3).mean()
    if weight is None:
        f = torch.stack([(y == c).sum().double() for c in range(C)])
        weight = torch.where(f > 0, torch.sqrt(f.sum() / f.clamp(min=1)), torch.zeros_like(f))
    lab = y[:, 0]
    logp = torch.log_softmax(x, 1).gather(1, y)[:, 0]
    l_ce = (weight[lab] * (-logp) ** 0.3).mean()
    return 0.8 * l_dice + 0.2 * l_ce


@pytest.mark.parametrize("include_background,batch", [(False, True), (True, False)])
def test_ell_matches_naive(include_background, batch):
    x, y = _data((2, 3, 5, 4, 3), seed=5 + batch)
    _compare(lambda t: ExpLogLoss(include_background=include_background, batch=batch)(t, y),
             lambda t: naive_ell(t, y, 3, include_background, batch), x)
    w = torch.tensor([0.3, 1.0, 2.0], dtype=torch.float64)
    _compare(lambda t: exp_log_loss(t, _onehot(y, 3), weight=w, smooth_nr=1.0, smooth_dr=1.0),
             lambda t: naive_ell(t, y, 3, eps=1.0, weight=w), x)


def _phi(g):
    g = g.astype(bool)
    if not g.any():
        return np.zeros(g.shape)
    return distance_transform_edt(~g) * ~g - (distance_transform_edt(g) - 1) * g


def naive_bd(x, g):
    p = torch.softmax(x, 1)
    phi = torch.tensor(np.stack([[_phi(g[b, c].numpy() > 0.5) for c in range(g.shape[1])] for b in range(g.shape[0])]))
    return (phi[:, 1:] * p[:, 1:]).mean()


def test_dice_boundary_schedule_and_values():
    x, y = _data((2, 3, 6, 6), seed=8)
    g = _onehot(y, 3)
    loss = DiceBoundaryLoss()
    assert loss.alpha == 1.0
    _compare(lambda t: loss(t, y), lambda t: naive_dice(torch.softmax(t, 1), g), x)
    for _ in range(30):
        loss.step_epoch()
    assert loss.epoch == 30 and loss.alpha == pytest.approx(0.70, abs=1e-12)
    _compare(lambda t: loss(t, y), lambda t: 0.7 * naive_dice(torch.softmax(t, 1), g) + 0.3 * naive_bd(t, g), x)
    assert loss.set_epoch(99) == pytest.approx(0.01) and loss.set_epoch(500) == pytest.approx(0.01)
    # the schedule state travels with the state_dict
    other = DiceBoundaryLoss()
    other.load_state_dict(loss.state_dict())
    assert other.epoch == 500 and other.alpha == pytest.approx(0.01)
    with pytest.raises(ValueError):
        loss.set_epoch(-1)
    with pytest.raises(ValueError):
        DiceBoundaryLoss(alpha=1.5)
    fixed = DiceBoundaryLoss(alpha=0.25)
    assert torch.autograd.gradcheck(lambda t: fixed(t, y[:1]), (x[:1].clone().requires_grad_(),), fast_mode=True)


def naive_hd_field(mask):
    if not mask.any() or mask.all():
        return np.zeros(mask.shape)
    return distance_transform_edt(mask) + distance_transform_edt(~mask)


def naive_hd(x, g):
    p = torch.softmax(x, 1)
    vals = []
    for b in range(x.shape[0]):
        for c in range(1, x.shape[1]):
            w = naive_hd_field(g[b, c].numpy() > 0.5) ** 2 + naive_hd_field(p[b, c].detach().numpy() > 0.5) ** 2
            vals.append(((p[b, c] - g[b, c]) ** 2 * torch.from_numpy(w)).mean())
    return torch.stack(vals).mean()


def test_dice_hausdorff_adaptive_and_fixed_alpha():
    x, y = _data((2, 3, 5, 4, 3), seed=12)
    g = _onehot(y, 3)

    def ref(t, alpha=None):
        d = naive_dice(torch.softmax(t, 1), g)
        h = naive_hd(t, g)
        a = (h / d).detach() if alpha is None else alpha
        return a * d + h

    loss = DiceHausdorffDTLoss()
    _compare(lambda t: loss(t, y), ref, x)
    # value is 2·HD; the weight is recorded and carries no gradient
    assert loss.last_alpha is not None and not loss.last_alpha.requires_grad
    _compare(lambda t: DiceHausdorffDTLoss(alpha=0.5)(t, y), lambda t: ref(t, 0.5), x)
    xs, ys = x[:1, :, :4, :4, :3], y[:1, :, :4, :4, :3]
    assert torch.autograd.gradcheck(lambda t: DiceHausdorffDTLoss(alpha=0.5)(t, ys), (xs.clone().requires_grad_(),),
                                    fast_mode=True)


# --------------------------------------------------------------------------------- gradcheck / absent
def _all_losses():
    return {
        "DiceCE": DiceCELoss(softmax=True, include_background=False, label_smoothing=0.1),
        "DiceFocal": DiceFocalLoss(softmax=True, gamma=2.0),
        "DiceTopK": DiceTopKLoss(k=30.0),
        "ELL": ExpLogLoss(),
        "DiceBD": DiceBoundaryLoss(alpha=0.5),
        "DiceHD": DiceHausdorffDTLoss(alpha=1.0),
    }


@pytest.mark.parametrize("name", list(_all_losses()))
def test_gradcheck_and_absent_class(name):
    loss = _all_losses()[name]
    x, y = _data((1, 3, 3, 4), seed=21, absent=2)  # class 2 absent from the target
    xr = x.clone().requires_grad_()
    v = loss(xr, y)
    (2 * v).backward()
    assert v.ndim == 0 and torch.isfinite(v) and torch.isfinite(xr.grad).all()
    assert torch.autograd.gradcheck(lambda t: loss(t, y), (x.clone().requires_grad_(),))


def test_functional_forms_and_bad_input():
    x, y = _data(seed=30)
    torch.testing.assert_close(dice_ce_loss(x, y, softmax=True), DiceCELoss(softmax=True)(x, y))
    with pytest.raises(ValueError):
        DiceTopKLoss(k=0)
    with pytest.raises(ValueError):
        DiceTopKLoss(k=150)
    with pytest.raises(ValueError):
        ExpLogLoss(gamma_dice=-0.3)
    with pytest.raises(ValueError):
        ExpLogLoss(weight=[1.0, 2.0])(x, y)  # 3 classes, 2 weights
    with pytest.raises(ValueError):
        DiceHausdorffDTLoss(alpha=-1.0)
    with pytest.raises(ValueError):
        DiceFocalLoss()(x, y[:, :, :2])


# ----------------------------------------------------------------------------------- shared statistics


@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal", "DiceBD", "DiceHD"])
def test_compound_makes_one_statistics_pass(name, monkeypatch, torch_backend):
    """Dice + (CE | focal | BD | HD) in the paper's configuration read the logits once: one statistics
    pass, and the same value and gradient as with the parts computed separately."""
    import fastloss.ops.stats as S
    from fastloss.registry import get_loss

    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 6, 5, 4, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g)
    loss = get_loss(name)
    if name == "DiceBD":
        loss.set_epoch(30)  # alpha = 0.7: both parts active

    calls = []
    real = S._compute
    monkeypatch.setattr(S, "_compute", lambda *a: calls.append(a[2].columns) or real(*a))
    v = loss(x, y)
    (gx,) = torch.autograd.grad(v, x)
    assert len(calls) == 1, calls

    # the same loss with sharing switched off: each part computes its own statistics
    monkeypatch.setattr(S, "_SHARED", S.contextvars.ContextVar("off", default=None))
    monkeypatch.setattr(S, "shared_statistics", lambda *a, **k: __import__("contextlib").nullcontext())
    import fastloss.losses.compound as CP

    monkeypatch.setattr(CP, "shared_statistics", lambda *a, **k: __import__("contextlib").nullcontext())
    calls.clear()
    v2 = loss(x, y)
    (gx2,) = torch.autograd.grad(v2, x)
    assert len(calls) == 2
    torch.testing.assert_close(v, v2, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gx2, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("gamma, alpha", [(2.0, None), (2.0, 0.25), (1.5, None)])
@pytest.mark.parametrize("ignore_index", [None, 2])
def test_monai_dice_focal_on_the_compiled_cpu_path_is_one_pass(include_background, gamma, alpha, ignore_index,
                                                               monkeypatch):
    """MONAI's DiceFocal configuration (softmax Dice, *sigmoid* focal over the one-hot labels) in float32
    on the compiled CPU kernels: one statistics pass serves both parts (the focal part reads the pass's
    ``sigmoid_focal`` column), with MONAI's value and gradient (MONAI in float64 as the reference)."""
    import fastloss.ops.stats as S
    from fastloss.ops import cpu_stats

    if not cpu_stats.available():
        pytest.skip("fastloss._C has no CPU loss kernels")
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 4, 9, 7, 5, generator=g) * 3  # N = 315: one full tile and a partial one
    y = torch.randint(0, 4, (2, 1, 9, 7, 5), generator=g)
    kw = dict(to_onehot_y=True, softmax=True, include_background=include_background, gamma=gamma, alpha=alpha,
              batch=True)
    ours = DiceFocalLoss(ignore_index=ignore_index, **kw)
    calls = []
    real = S._compute
    monkeypatch.setattr(S, "_compute", lambda *a: calls.append(a[2].columns) or real(*a))
    xa = x.clone().requires_grad_()
    v = ours(xa, y)
    (ga,) = torch.autograd.grad(v, xa)
    assert len(calls) == 1 and "sigmoid_focal" in calls[0], calls
    xb = x.to(torch.float64).requires_grad_()
    if ignore_index is not None:
        # MONAI has no ignore_index: the reference is fastloss's float64 torch backend, the two parts
        # computed separately (checked against MONAI's masked losses elsewhere)
        monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
        want = ours.dice(xb, y) + ours.focal(xb, y)
    else:
        want = monai_losses.DiceFocalLoss(**kw)(xb, y)
    (gb,) = torch.autograd.grad(want, xb)
    torch.testing.assert_close(v.double(), want.detach(), rtol=2e-5, atol=1e-6)
    torch.testing.assert_close(ga.double(), gb, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("include_background", [False, True])
@pytest.mark.parametrize("compound", ["DiceFocal", "GeneralizedDiceFocal", "GeneralizedDiceFocal_sigmoid"])
def test_monai_focal_compounds_equal_their_parts_to_the_bit(include_background, compound, monkeypatch):
    """MONAI's own DiceFocal and GeneralizedDiceFocal tests assert compound == region part + λ·focal part at
    float32's resolution. The focal term is formed by one compiled routine whether FocalLoss runs alone (the
    sigmoid path), inside DiceFocal's softmax pass (its sigmoid_focal column) or inside GeneralizedDiceFocal's
    shared sigmoid pass, so the two sides agree to the bit (one ulp apart in a quarter of inputs when each
    path had its own loop)."""
    import fastloss

    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    for seed in range(30):
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 3, 8, 9, generator=g)
        y = torch.randint(0, 3, (2, 1, 8, 9), generator=g)
        if compound == "DiceFocal":
            kw = dict(include_background=include_background, softmax=True, to_onehot_y=True)
            whole = DiceFocalLoss(lambda_focal=1.5, **kw)(x, y)
            region = DiceLoss(**kw)(x, y)
        else:
            act = {"sigmoid": True} if compound.endswith("sigmoid") else {}
            kw = dict(include_background=include_background, to_onehot_y=True)
            whole = fastloss.GeneralizedDiceFocalLoss(lambda_focal=1.5, weight=2.0, **kw, **act)(x, y)
            region = fastloss.GeneralizedDiceLoss(**kw, **act)(x, y)
        weight = 2.0 if compound != "DiceFocal" else None
        focal = FocalLoss(include_background=include_background, to_onehot_y=True, weight=weight)(x, y)
        parts = region + 1.5 * focal
        assert torch.equal(whole, parts), (seed, whole.item(), parts.item())


def test_shared_statistics_never_changes_a_result_with_other_parameters(torch_backend):
    """A request whose parameters differ from the shared pass's (here the focal gamma) is computed on
    its own, not served from the shared pass."""
    from fastloss._validation import prepare_target
    from fastloss.ops.stats import StatsSpec, class_stats, shared_statistics

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 7, 5, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (2, 1, 7, 5), generator=g)
    t = prepare_target(x, y)
    alone = class_stats(x, t, StatsSpec("softmax", ("focal",), gamma=3.0))
    with shared_statistics(("pg", "focal"), gamma=2.0):
        class_stats(x, t, StatsSpec("softmax", ("pg",)))
        shared = class_stats(x, t, StatsSpec("softmax", ("focal",), gamma=3.0))
    torch.testing.assert_close(shared, alone, rtol=0, atol=0)


# ------------------------------------------------------------------------ DiceBD schedule, DiceHD, ELL edges
def _train_calls(loss, n, x=None, y=None):
    if x is None:
        x, y = _data((1, 3, 4, 4), seed=40)
    for _ in range(n):
        loss(x.clone().requires_grad_(), y).backward()


def test_dice_boundary_alpha_starting_below_alpha_min_stays():
    """α = max(alpha − e·step, min(alpha_min, alpha)): α never rises to alpha_min."""
    zero = DiceBoundaryLoss(alpha=0.0)
    assert zero.set_epoch(5) == 0.0 and zero.alpha == 0.0
    low = DiceBoundaryLoss(alpha=0.005, alpha_min=0.01)
    assert low.set_epoch(0) == 0.005 and low.set_epoch(3) == 0.005
    # between alpha_min and 1: down by alpha_step, then the floor
    mid = DiceBoundaryLoss(alpha=0.05, alpha_step=0.02, alpha_min=0.01)
    assert [mid.set_epoch(e) for e in range(4)] == pytest.approx([0.05, 0.03, 0.01, 0.01], abs=1e-12)
    # α = 0 is the boundary loss alone
    x, y = _data((2, 3, 6, 6), seed=8)
    g = _onehot(y, 3)
    _compare(lambda t: zero(t, y), lambda t: naive_bd(t, g), x)


def test_dice_boundary_steps_per_epoch_advances_itself():
    loss = DiceBoundaryLoss(steps_per_epoch=3)
    x, y = _data((1, 3, 4, 4), seed=41)
    g = _onehot(y, 3)
    # calls 0-2 use α(0) = 1 (plain Dice), calls 3-5 α(1) = 0.99, ...
    _compare(lambda t: loss(t, y), lambda t: naive_dice(torch.softmax(t, 1), g), x)
    assert loss.steps == 1 and loss.epoch == 0
    _train_calls(loss, 2, x, y)
    assert loss.epoch == 1 and loss.steps == 0 and loss.alpha == pytest.approx(0.99, abs=1e-12)
    _compare(lambda t: loss(t, y), lambda t: 0.99 * naive_dice(torch.softmax(t, 1), g) + 0.01 * naive_bd(t, g), x)
    _train_calls(loss, 5, x, y)
    assert loss.epoch == 3 and loss.alpha == pytest.approx(0.97, abs=1e-12)
    # evaluation calls are not training steps
    with torch.no_grad():
        loss(x, y)
    loss.eval()
    loss(x.clone().requires_grad_(), y)
    loss.train()
    assert loss.epoch == 3 and loss.steps == 0
    # the in-epoch count travels with the state_dict; set_epoch starts a new epoch
    _train_calls(loss, 2, x, y)
    other = DiceBoundaryLoss(steps_per_epoch=3)
    other.load_state_dict(loss.state_dict())
    assert (other.epoch, other.steps) == (3, 2)
    _train_calls(other, 1, x, y)
    assert other.epoch == 4 and other.alpha == pytest.approx(0.96, abs=1e-12)
    assert other.set_epoch(10) == pytest.approx(0.90, abs=1e-12) and other.steps == 0
    # step_epoch on top of the automatic schedule would count epochs twice
    with pytest.raises(RuntimeError, match=r"step_epoch\(\) with steps_per_epoch=3.*advance it twice"):
        other.step_epoch()
    # a state_dict saved before the step count existed still loads
    old = DiceBoundaryLoss()
    sd = old.state_dict()
    sd["_extra_state"] = {"epoch": 7, "alpha": 0.93}
    old.load_state_dict(sd)
    assert (old.epoch, old.alpha, old.steps) == (7, 0.93, 0)


def test_dice_boundary_warns_once_without_step_epoch():
    loss = DiceBoundaryLoss(warn_after_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _train_calls(loss, 3)
    with pytest.warns(UserWarning, match=r"4 training calls since its schedule last moved \(epoch 0, alpha=1: "
                                         r"plain Dice\)\. Call loss\.step_epoch\(\)"):
        _train_calls(loss, 1)
    with warnings.catch_warnings():  # once only
        warnings.simplefilter("error")
        _train_calls(loss, 5)
    # a loop that calls step_epoch often enough never sees it
    stepped = DiceBoundaryLoss(warn_after_steps=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            _train_calls(stepped, 3)
            stepped.step_epoch()
        # nor a schedule that cannot move (fixed α, or already at its floor), nor warn_after_steps=None
        for quiet in (DiceBoundaryLoss(alpha=0.5, alpha_step=0.0, warn_after_steps=2),
                      DiceBoundaryLoss(alpha=0.01, warn_after_steps=2),
                      DiceBoundaryLoss(warn_after_steps=None)):
            _train_calls(quiet, 3)
    # the default threshold is 1000 calls, the one documented
    assert DiceBoundaryLoss().warn_after_steps == 1000


@pytest.mark.parametrize("kw, exc, match", [
    (dict(steps_per_epoch=0), ValueError, r"steps_per_epoch must be >= 1 \(or None\), got 0"),
    (dict(steps_per_epoch=2.5), TypeError, r"steps_per_epoch must be an int or None, got float 2.5"),
    (dict(steps_per_epoch=True), TypeError, r"steps_per_epoch must be an int or None, got bool"),
    (dict(warn_after_steps=-1), ValueError, r"warn_after_steps must be >= 0 \(or None\), got -1"),
])
def test_dice_boundary_schedule_bad_arguments(kw, exc, match):
    with pytest.raises(exc, match=match):
        DiceBoundaryLoss(**kw)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_dice_hd_perfect_prediction_alpha_is_one(backend, monkeypatch):
    """A Dice term of exactly 0 (perfect prediction) gives α = 1, not HD/0 = inf (and a NaN loss)."""
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    y = torch.randint(0, 3, (2, 1, 6, 7), generator=torch.Generator().manual_seed(0))
    x = (_onehot(y, 3).float() * 40 - 20).requires_grad_()
    loss = DiceHausdorffDTLoss()
    v = loss(x, y)
    from fastloss.losses.boundary import HausdorffDTLoss
    from fastloss.losses.region import DiceLoss

    assert DiceLoss(softmax=True, include_background=False, batch=True)(x, y).item() == 0.0
    h = HausdorffDTLoss(softmax=True, include_background=False)(x, y)
    assert loss.last_alpha.item() == 1.0
    assert v.item() == h.item() and torch.isfinite(v)  # 1·0 + HD
    v.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
def test_exp_log_loss_probability_exactly_one(backend, monkeypatch):
    """Logits one_hot·80 − 40: p_label = 1/(1 + 2e^-80), 1 in float32. (−ln x)^0.3 has an infinite slope
    at x = 1: the bases are clamped at the smallest normal float, so the loss is tiny and its gradient 0,
    finite. Expected value: 0.8·tiny^0.3 (every Dice_c = 1) + 0.2·Σ_c w_c n_c q / N with
    w_c = (N/n_c)^0.5 and q the per-voxel (−ln p)^0.3: tiny^0.3 where p rounds to 1, (2e^-80)^0.3 where
    −ln p = ln(1 + 2e^-80) is kept (both are correct float32 answers)."""
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    y = torch.randint(0, 3, (2, 1, 6, 7), generator=torch.Generator().manual_seed(0))
    x = (_onehot(y, 3).float() * 80 - 40).requires_grad_()
    v = ExpLogLoss()(x, y)
    v.backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() < 1e-10
    n = torch.bincount(y.flatten(), minlength=3).double()
    s = (n / n.sum()).sqrt().sum().item()  # Σ_c w_c n_c / N = Σ_c (n_c/N)^0.5
    tiny = torch.finfo(torch.float32).tiny ** 0.3
    exact = (2 * np.exp(-80.0)) ** 0.3
    candidates = [0.8 * tiny + 0.2 * q * s for q in (tiny, exact)]
    if backend == "torch":
        candidates = candidates[:1]  # log_softmax rounds p to 1
    assert any(abs(v.item() - c) <= 1e-4 * c for c in candidates), (v.item(), candidates)


def test_dice_boundary_steps_per_epoch_refused_under_compile(torch_backend):
    """torch.compile cannot replay a Python step count: steps_per_epoch is refused with a message naming
    the way out, and a compiled default loss leaves the count (and the warning) alone."""
    x, y = _data((1, 3, 4, 4), seed=42)
    x = x.float()
    with pytest.raises(RuntimeError, match=r"torch.compile cannot replay.*set_epoch\(\)/step_epoch\(\)"):
        torch.compile(DiceBoundaryLoss(steps_per_epoch=3), backend="eager")(x, y)
    plain = DiceBoundaryLoss(warn_after_steps=1)
    compiled = torch.compile(plain, fullgraph=True, backend="eager")
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        for _ in range(2):
            compiled(x.clone().requires_grad_(), y).backward()
    assert plain.steps == 0 and plain.epoch == 0
