"""The fused loss formula (fastloss/ops/triton_formula.py) under TRITON_INTERPRET=1 on CPU tensors, and its C++
twin (fastloss/ops/cpu_formula.py), reached from the losses through their adapters (fastloss/losses/_fused.py) on the compiled CPU backend: every test that takes ``spy`` runs for both.

1. Same statistics, two formulas: ``class_stats`` is replaced by random per-column ``(B, C)`` leaf tensors, so
   the loss modules' torch formula (the reference, ``FASTLOSS_BACKEND=torch``) and the fused kernel
   (``FASTLOSS_BACKEND=triton``) see identical statistics; values and ``dL/d(every column)`` must agree.
2. End to end: loss value and input gradient with the Triton backend (fused statistics + fused formula) against
   (a) the Triton statistics with the torch formula (tight) and (b) the torch backend (float32 rounding).
3. Launches: one forward + ``torch.autograd.grad`` step of ``get_loss("DiceCE")`` / ``get_loss("DiceFocal")``
   profiled; the ops that would launch a CUDA kernel are counted (``<= 8``; the torch formula needed ~60).
4. Determinism, the custom op under ``torch.library.opcheck`` and ``torch.compile(fullgraph=True)``, and the
   configurations that must keep the torch formula.
"""

import itertools
import os

import pytest
import torch

pytest.importorskip("triton")

from fastloss._validation import prepare_target  # noqa: E402
from fastloss.losses import compound, distribution, region  # noqa: E402
from fastloss.losses.compound import DiceCELoss, DiceFocalLoss  # noqa: E402
from fastloss.losses.distribution import CrossEntropyLoss, FocalLoss, WeightedCrossEntropyLoss  # noqa: E402
from fastloss.losses.region import DiceLoss, IoULoss, TverskyLoss  # noqa: E402
from fastloss.losses import _fused  # noqa: E402
from fastloss.ops import formula, formula_spec  # noqa: E402
from fastloss.registry import get_loss  # noqa: E402

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton kernels need a GPU or TRITON_INTERPRET=1",
)

COLS = ("pg", "p", "pp", "g", "gg", "ce", "focal", "count")
_FUSED = ("dice", "tversky", "cross_entropy", "focal", "dice_ce", "dice_focal")  # the adapters in losses/_fused.py


class _Calls(list):
    backend = "triton"  # FASTLOSS_BACKEND that runs the fused formula: "triton", or "auto" (its C++ twin)


@pytest.fixture(params=["triton", "cpu"])
def spy(monkeypatch, request):
    """Counts the fused formula calls (loss_formula), for the Triton kernel and for its C++ twin
    (``ops/cpu_formula.py``, the compiled CPU backend): ``spy.backend`` is the backend to set."""
    calls = _Calls()
    if request.param == "cpu":
        from fastloss.ops import cpu_formula, cpu_stats

        if not (cpu_formula.available() and cpu_stats.available()):
            pytest.skip("fastloss._C has no CPU formula")
        calls.backend = "auto"
    real = formula.loss_formula

    def wrapped(*args, **kwargs):
        calls.append(args[1])
        return real(*args, **kwargs)

    monkeypatch.setattr(formula, "loss_formula", wrapped)  # _fused calls formula.loss_formula
    return calls


# ----------------------------------------------------------------------------------------------------
# 1. same statistics, fused formula vs the modules' torch formula
# ----------------------------------------------------------------------------------------------------
class FakeStats:
    """A stand-in for ``class_stats``: every column is a random ``(B, C)`` leaf tensor (float32)."""

    def __init__(self, x, target, ignore_index, gen, empty=False):
        B, C = x.shape[:2]
        N = x[0, 0].numel()
        t = prepare_target(x, target, ignore_index=ignore_index)
        cnt = torch.full((B,), float(N)) if t.mask is None else t.mask.sum(dim=1).float()
        u = lambda: torch.rand((B, C), generator=gen)  # noqa: E731
        g = u() * N / 2
        g[0, C - 1] = 0.0  # an absent class in one image
        p = 1.0 + u() * N / 2
        cols = {
            "g": g, "gg": g.clone(), "p": p, "pp": p * (0.3 + 0.7 * u()), "pg": u() * torch.minimum(p, g),
            "ce": u() * 3 * N, "focal": u() * N, "count": cnt[:, None].expand(B, C).clone(),
        }
        if empty:  # nothing counted: the CE denominators are 0 (the losses return the numerator, not NaN)
            cols["g"].zero_()
            cols["count"].zero_()
        self.cols = {k: v.float().requires_grad_(True) for k, v in cols.items()}
        self.requests = []

    def __call__(self, input, target, spec, voxel_map=None):
        self.requests.append(spec.columns)
        return torch.stack([self.cols[c] for c in spec.columns], dim=-1)


def _patch_stats(monkeypatch, fake):
    for mod in (region, distribution, compound, _fused):
        if hasattr(mod, "class_stats"):
            monkeypatch.setattr(mod, "class_stats", fake)


def _value_and_dstats(loss, x, y, fake, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    out = loss(x, y)
    leaves = [fake.cols[c] for c in COLS]
    grads = torch.autograd.grad(out, leaves, allow_unused=True)
    return out.detach(), [torch.zeros_like(v) if g is None else g for v, g in zip(leaves, grads)]


def _same_formula(make, monkeypatch, spy, *, C=4, ignore_index=None, onehot=False, seed=0, empty=False, skip=()):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(2, C, 3, 4, 5, generator=gen)
    y = torch.randint(0, C, (2, 1, 3, 4, 5), generator=gen)
    if ignore_index is not None:
        y.view(-1)[::5] = ignore_index
    if onehot:
        y = torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).float()
    fake = FakeStats(x, y, ignore_index, gen, empty=empty)
    _patch_stats(monkeypatch, fake)
    loss = make()
    n0 = len(spy)
    ref, ref_g = _value_and_dstats(loss, x, y, fake, "torch", monkeypatch)
    assert len(spy) == n0, "the torch backend must keep the torch formula"
    got, got_g = _value_and_dstats(loss, x, y, fake, spy.backend, monkeypatch)
    assert len(spy) == n0 + 1, "the fused formula was not used"
    assert got.dtype == torch.float32 and got.shape == ()
    torch.testing.assert_close(got, ref, rtol=2e-6, atol=1e-7)
    for name, g, r in zip(COLS, got_g, ref_g):
        if name in skip:
            continue
        scale = float(r.abs().max()) or 1.0
        torch.testing.assert_close(g, r, rtol=4e-6, atol=1e-6 * scale, msg=lambda m: f"dL/d{name}: {m}")


def _dice_grid():
    for act, bg, batch, sq, jac, w, red in itertools.product(
        ("softmax", "sigmoid"), (True, False), (True, False), (False, True), (False, True),
        (None, "vec", 2.5), ("mean", "sum"),
    ):
        if (sq or jac) and w == 2.5:
            continue
        yield act, bg, batch, sq, jac, w, red


@pytest.mark.parametrize("act, bg, batch, sq, jac, w, red", list(_dice_grid()))
def test_dice_same_stats(act, bg, batch, sq, jac, w, red, monkeypatch, spy):
    C = 4
    weight = [0.5, 1.0, 2.0, 3.0][(0 if bg else 1):] if w == "vec" else w
    smooth = (1e-5, 1e-5) if not sq else (0.0, 1.0)

    def make():
        return DiceLoss(softmax=act == "softmax", sigmoid=act == "sigmoid", include_background=bg, batch=batch,
                        squared_pred=sq, jaccard=jac, weight=weight, reduction=red, smooth_nr=smooth[0],
                        smooth_dr=smooth[1])

    _same_formula(make, monkeypatch, spy, C=C)


@pytest.mark.parametrize("alpha, beta", [(0.3, 0.7), (0.5, 0.5), (1.0, 0.0), (0.0, 2.0)])
@pytest.mark.parametrize("act, bg, batch, red", [("softmax", False, True, "mean"), ("softmax", True, False, "sum"),
                                                 ("sigmoid", True, True, "sum"), ("sigmoid", False, False, "mean")])
def test_tversky_same_stats(alpha, beta, act, bg, batch, red, monkeypatch, spy):
    def make():
        return TverskyLoss(softmax=act == "softmax", sigmoid=act == "sigmoid", include_background=bg, batch=batch,
                           alpha=alpha, beta=beta, reduction=red, smooth_nr=1e-3, smooth_dr=1e-2)

    _same_formula(make, monkeypatch, spy)


@pytest.mark.parametrize("weight", [None, [0.2, 1.0, 3.0, 0.7], 1.5])
@pytest.mark.parametrize("ignore_index, onehot", [(None, False), (1, False), (None, True), (2, True)])
@pytest.mark.parametrize("red", ["mean", "sum"])
def test_ce_same_stats(weight, ignore_index, onehot, red, monkeypatch, spy):
    _same_formula(lambda: CrossEntropyLoss(weight=weight, ignore_index=ignore_index, reduction=red),
                  monkeypatch, spy, ignore_index=ignore_index, onehot=onehot)


@pytest.mark.parametrize("weight", [None, [0.2, 1.0, 3.0, 0.7]])
def test_ce_nothing_counted_same_stats(weight, monkeypatch, spy):
    _same_formula(lambda: CrossEntropyLoss(weight=weight), monkeypatch, spy, empty=True)


@pytest.mark.parametrize("act", ["softmax", "sigmoid"])
@pytest.mark.parametrize("alpha, weight", [(None, None), (0.25, [0.2, 1.0, 3.0, 0.7]), (None, 2.0)])
@pytest.mark.parametrize("ignore_index", [None, 2])
@pytest.mark.parametrize("red, mean_over", [("mean", "elements"), ("mean", "voxels"), ("sum", "elements")])
def test_focal_same_stats(act, alpha, weight, ignore_index, red, mean_over, monkeypatch, spy):
    def make():
        return FocalLoss(use_softmax=act == "softmax", alpha=alpha, weight=weight, ignore_index=ignore_index,
                         reduction=red, mean_over=mean_over, gamma=2.0)

    _same_formula(make, monkeypatch, spy, ignore_index=ignore_index)


@pytest.mark.parametrize(
    "kw",
    [
        dict(softmax=True),
        dict(softmax=True, include_background=False, batch=True),  # the paper's configuration
        dict(softmax=True, include_background=False, weight=[0.5, 1.0, 2.0, 3.0], reduction="sum"),
        dict(softmax=True, weight=[0.5, 1.0, 2.0, 3.0], squared_pred=True, lambda_dice=0.3, lambda_ce=1.7),
        dict(softmax=True, jaccard=True, batch=True, weight=2.0, ignore_index=3),
        dict(softmax=True, include_background=False, ignore_index=1, smooth_nr=0.0, smooth_dr=1e-6),
    ],
)
@pytest.mark.parametrize("onehot", [False, True])
def test_dice_ce_same_stats(kw, onehot, monkeypatch, spy):
    _same_formula(lambda: DiceCELoss(**kw), monkeypatch, spy, ignore_index=kw.get("ignore_index"), onehot=onehot)


@pytest.mark.parametrize(
    "kw",
    [
        dict(softmax=True, use_softmax=True),
        dict(softmax=True, use_softmax=True, include_background=False, batch=True, focal_include_background=True,
             focal_mean_over="voxels"),  # the paper's configuration
        dict(softmax=True, use_softmax=True, alpha=0.3, weight=[0.5, 1.0, 2.0, 3.0], reduction="sum",
             lambda_dice=0.4, lambda_focal=2.0),
        dict(sigmoid=True, alpha=0.25, ignore_index=2, squared_pred=True),
        dict(sigmoid=True, jaccard=True, batch=True, reduction="sum", ignore_index=0, weight=1.5),
    ],
)
def test_dice_focal_same_stats(kw, monkeypatch, spy):
    _same_formula(lambda: DiceFocalLoss(**kw), monkeypatch, spy, ignore_index=kw.get("ignore_index"))


@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal", "Dice", "IoU", "CE", "Focal", "Tversky"])
def test_paper_losses_same_stats(name, monkeypatch, spy):
    _same_formula(lambda: get_loss(name), monkeypatch, spy)


# ----------------------------------------------------------------------------------------------------
# 2. end to end: Triton backend (fused) vs Triton statistics + torch formula vs torch backend
# ----------------------------------------------------------------------------------------------------
def _inputs(B, C, spatial, gen, ignore_index=None, absent=None, onehot=False):
    x = torch.randn((B, C) + spatial, generator=gen) * 2.0
    y = torch.randint(0, C, (B, 1) + spatial, generator=gen)
    if absent is not None:
        y[y == absent] = (absent + 1) % C
    if ignore_index is not None:
        y.view(-1)[::7] = ignore_index
    if onehot:
        y = torch.nn.functional.one_hot(y[:, 0], C).movedim(-1, 1).float()
    return x, y


def _run(loss, x, y):
    xx = x.clone().requires_grad_(True)
    out = loss(xx, y)
    (g,) = torch.autograd.grad(out, xx)
    return out.detach(), g


def _close(got, ref, rtol, atol_rel):
    scale = float(ref.abs().max()) or 1.0
    torch.testing.assert_close(got, ref, rtol=rtol, atol=atol_rel * scale)


E2E = [
    # (name, factory, C, spatial, ignore_index written into the labels, absent class, one-hot)
    ("Dice softmax", lambda: DiceLoss(softmax=True), 3, (5, 6, 7), None, None, False),
    ("Dice paper", lambda: get_loss("Dice"), 9, (7, 5, 3), None, 4, False),
    ("IoU sigmoid sq", lambda: IoULoss(sigmoid=True, squared_pred=True, reduction="sum", ignore_index=1), 2, (9, 11),
     1, None, False),
    ("Dice weighted", lambda: DiceLoss(softmax=True, include_background=False, weight=[1.0, 3.0], ignore_index=0),
     3, (13, 6), 0, None, True),
    ("Tversky", lambda: TverskyLoss(softmax=True, alpha=0.3, beta=0.7, batch=True, ignore_index=2), 3, (5, 7, 3), 2,
     1, False),
    ("CE", lambda: CrossEntropyLoss(), 9, (5, 6, 7), None, 3, False),
    ("CE weighted", lambda: CrossEntropyLoss(weight=[0.3, 2.0, 1.0], ignore_index=2, reduction="sum"), 3, (23,),
     2, None, False),
    ("CE weighted mean", lambda: CrossEntropyLoss(weight=[0.3, 2.0, 1.0], ignore_index=255), 3, (7, 6), 255, 0,
     False),
    ("WCE", lambda: WeightedCrossEntropyLoss(), 3, (6, 7, 5), None, 1, False),
    ("Focal paper", lambda: get_loss("Focal"), 9, (5, 6, 7), None, None, False),
    ("Focal sigmoid", lambda: FocalLoss(alpha=0.25, ignore_index=1, weight=[1.0, 2.0, 0.5]), 3, (11, 9), 1, None,
     False),
    ("DiceCE paper", lambda: get_loss("DiceCE"), 9, (5, 6, 7), None, 5, False),
    ("DiceCE C2 ignore", lambda: get_loss("DiceCE", ignore_index=1), 2, (7, 9, 5), 1, None, False),
    ("DiceCE MONAI", lambda: DiceCELoss(softmax=True, to_onehot_y=True, weight=[0.5, 1.0, 2.0], lambda_ce=0.7), 3,
     (6, 5, 7), None, 2, False),
    ("DiceCE one-hot", lambda: DiceCELoss(softmax=True, squared_pred=True, ignore_index=0), 3, (9, 7), 0, None, True),
    ("DiceFocal paper", lambda: get_loss("DiceFocal"), 9, (5, 6, 7), None, 2, False),
    ("DiceFocal ignore", lambda: get_loss("DiceFocal", ignore_index=2), 3, (7, 5, 6), 2, None, False),
    ("DiceFocal sigmoid", lambda: DiceFocalLoss(sigmoid=True, alpha=0.25, reduction="sum"), 2, (9, 11, 3), None,
     None, False),
    # compound torch paths whose parts take the fused formula one by one
    ("DiceCE smoothing", lambda: DiceCELoss(softmax=True, label_smoothing=0.1, ignore_index=1), 3, (5, 7, 6), 1,
     None, False),
    ("DiceFocal MONAI", lambda: DiceFocalLoss(softmax=True, to_onehot_y=True), 3, (6, 5, 7), None, 0, False),
]


@pytest.mark.parametrize("case", E2E, ids=[c[0] for c in E2E])
def test_end_to_end(case, monkeypatch, spy):
    name, make, C, spatial, ignore_index, absent, onehot = case
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    x, y = _inputs(2, C, spatial, gen, ignore_index, absent, onehot)
    loss = make()
    monkeypatch.setenv("FASTLOSS_BACKEND", spy.backend)
    got, g = _run(loss, x, y)
    n = len(spy)
    assert n == (2 if name in ("DiceCE smoothing", "DiceFocal MONAI") else 1), "the fused formula was not used"
    # (a) the same Triton statistics through the torch formula: only the formula differs
    for fn in _FUSED:
        monkeypatch.setattr(_fused, fn, lambda *a: None)
    ref_a, g_a = _run(loss, x, y)
    assert len(spy) == n
    _close(got, ref_a, 2e-6, 1e-7)
    _close(g, g_a, 1e-5, 2e-6)
    # (b) the torch backend
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref_b, g_b = _run(loss, x, y)
    _close(got, ref_b, 2e-5, 1e-6)
    _close(g, g_b, 1e-4, 2e-5)


def test_half_input(monkeypatch, spy):
    gen = torch.Generator().manual_seed(3)
    x, y = _inputs(2, 3, (6, 7, 5), gen)
    loss = get_loss("DiceCE")
    monkeypatch.setenv("FASTLOSS_BACKEND", spy.backend)
    got, g = _run(loss, x.to(torch.bfloat16), y)
    assert len(spy) == 1 and got.dtype == torch.float32 and g.dtype == torch.bfloat16
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref, _ = _run(loss, x.to(torch.bfloat16).float(), y)
    _close(got, ref, 1e-5, 1e-6)


def test_bitwise_deterministic(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    x, y = _inputs(2, 9, (5, 6, 7), gen, ignore_index=3)
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    loss = get_loss("DiceFocal", ignore_index=3)
    a, ga = _run(loss, x, y)
    b, gb = _run(loss, x, y)
    assert torch.equal(a, b) and torch.equal(ga, gb)


def test_errors_as_torch_path(monkeypatch):
    """Wrong weights raise the torch path's ValueError on the fused path too."""
    gen = torch.Generator().manual_seed(5)
    x, y = _inputs(1, 3, (4, 5), gen)
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    with pytest.raises(ValueError, match="weight must have one value per class"):
        DiceLoss(softmax=True, weight=[1.0, 2.0])(x, y)
    with pytest.raises(ValueError, match="one value per class"):
        CrossEntropyLoss(weight=[1.0, 2.0])(x, y)
    with pytest.raises(ValueError, match="class_weight"):
        FocalLoss(use_softmax=True, weight=[1.0, 2.0])(x, y)
    with pytest.raises(ValueError, match="labels must lie in"):
        get_loss("DiceCE")(x, y + 5)


def test_not_covered_keeps_torch_formula(monkeypatch, spy):
    gen = torch.Generator().manual_seed(6)
    x, y = _inputs(2, 3, (4, 5, 3), gen)
    monkeypatch.setenv("FASTLOSS_BACKEND", spy.backend)
    losses = [
        DiceLoss(softmax=True, soft_label=True),
        DiceLoss(other_act=torch.tanh),
        DiceLoss(softmax=True, reduction="none"),
        CrossEntropyLoss(sigmoid=True),
        CrossEntropyLoss(reduction="none"),
        FocalLoss(use_softmax=True, alpha=[0.2, 0.3, 0.5]),
        FocalLoss(use_softmax=True, include_background=False),
    ]
    for loss in losses:
        loss(x, y)
    get_loss("DiceCE")(x.double(), y)  # float64: the torch backend and formula
    assert spy == []
    # compound losses on their torch path: their parts (DiceLoss, CrossEntropyLoss) may take the fused formula
    # on their own, but no launch evaluates the compound sum
    for loss in (
        DiceCELoss(softmax=True, label_smoothing=0.1),
        DiceCELoss(sigmoid=True),
        DiceFocalLoss(softmax=True),  # sigmoid focal (MONAI) with a softmax Dice: two activations
    ):
        spy.clear()
        loss(x, y)
        assert spy and not [ints for ints, _ in spy if ints[0] != 0 and ints[7] != 0]  # region and dist


# ----------------------------------------------------------------------------------------------------
# 3. launches per forward + backward step
# ----------------------------------------------------------------------------------------------------
# Ops that launch no CUDA kernel (views, metadata, allocations, no-op conversions): transparent when counting.
_NO_LAUNCH = {
    "view", "reshape", "expand", "expand_as", "view_as", "select", "slice", "unsqueeze", "squeeze", "permute", "t",
    "transpose", "as_strided", "alias", "detach", "empty", "empty_like", "new_empty", "empty_strided", "set_",
    "lift_fresh", "to", "_to_copy", "_unsafe_view", "_reshape_alias", "unbind", "split", "narrow", "contiguous",
    "movedim", "resolve_conj", "resolve_neg", "result_type",
}
_SYNC = {"aten::item", "aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::equal"}


def _launches(events):
    """Kernel launches a CUDA run would make: outermost non-view aten ops and Triton kernels. Ops in
    ``_NO_LAUNCH`` are looked through (a ``to`` or ``reshape`` that copies shows its ``copy_``/``clone``)."""
    out = []

    def walk(ev):
        name = ev.name
        if name.startswith("triton::"):
            out.append(name)
            return
        if name.startswith("aten::"):
            if name[6:] not in _NO_LAUNCH:
                out.append(name)
                return
        for ch in ev.cpu_children:
            walk(ch)

    for ev in events:
        if ev.cpu_parent is None:
            walk(ev)
    return out


@pytest.mark.parametrize("name", ["DiceCE", "DiceFocal"])
def test_launch_count(name, monkeypatch):
    from torch.profiler import ProfilerActivity, profile, record_function
    from triton.runtime.interpreter import InterpretedFunction

    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("counts Triton launches through the interpreter")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    monkeypatch.setenv("FASTLOSS_CHECK_LABELS", "0")
    run = InterpretedFunction.run

    def marked(self, *args, **kwargs):  # one profiler range per Triton launch (the interpreter's copies inside)
        with record_function("triton::" + self.__name__):
            return run(self, *args, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", marked)
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(2, 9, 16, 16, 16, generator=gen).requires_grad_(True)
    y = torch.randint(0, 9, (2, 1, 16, 16, 16), generator=gen)
    loss = get_loss(name)
    torch.autograd.grad(loss(x, y), x)  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        (g,) = torch.autograd.grad(loss(x, y), x)
    events = prof.events()
    launches = _launches(events)
    assert len(launches) <= 8, launches
    assert launches.count("triton::_formula_kernel") == 1, launches
    assert not [e.name for e in events if e.name in _SYNC], "host sync in the step"
    # the fused formula replaced the ~30 + ~30 small ops of the torch formula (63 / 50 launches measured)
    for fn in _FUSED:
        monkeypatch.setattr(_fused, fn, lambda *a: None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        torch.autograd.grad(loss(x, y), x)
    assert len(_launches(prof.events())) >= len(launches) + 30


# ----------------------------------------------------------------------------------------------------
# 4. the custom op: opcheck and torch.compile
# ----------------------------------------------------------------------------------------------------
def test_opcheck():
    gen = torch.Generator().manual_seed(8)
    stats = (torch.rand(2, 4, 5, generator=gen) * 10 + 1).requires_grad_(True)
    cfg = formula_spec.make_config(region="dice", first_class=1, i_tp=0, i_ps=1, i_gs=2, smooth_nr=1e-5,
                                     smooth_dr=1e-5, region_numel=6, dist="ce", i_ce=3, i_g=2, i_count=4)
    w = torch.tensor([1.0, 2.0, 0.5])
    cw = torch.tensor([0.3, 1.0, 2.0, 0.7])
    torch.library.opcheck(torch.ops.fastloss.triton_loss_formula.default, (stats, w, cw, *cfg))
    cfg2 = formula_spec.make_config(dist="focal", i_focal=0, i_count=4, focal_masked=True, dist_mean=False)
    torch.library.opcheck(torch.ops.fastloss.triton_loss_formula.default, (stats, None, None, *cfg2))


def _compile_dice_ce(monkeypatch, backend_env):
    """get_loss("DiceCE") under torch.compile(fullgraph=True) on FASTLOSS_BACKEND=backend_env: the traced
    call targets, and value and gradient against eager."""
    monkeypatch.setenv("FASTLOSS_BACKEND", backend_env)
    torch._dynamo.reset()
    targets = []

    def backend(gm, example_inputs):
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        from torch._dynamo.backends.registry import lookup_backend

        return lookup_backend("aot_eager")(gm, example_inputs)

    gen = torch.Generator().manual_seed(9)
    x, y = _inputs(2, 3, (5, 6, 4), gen)
    loss = get_loss("DiceCE")
    compiled = torch.compile(lambda a, b: loss(a, b), fullgraph=True, backend=backend)
    got, g = _run(compiled, x, y)
    ref, g_ref = _run(loss, x, y)
    _close(got, ref, 1e-6, 1e-7)
    _close(g, g_ref, 1e-6, 1e-7)
    torch._dynamo.reset()
    return targets


def test_torch_compile_fullgraph(monkeypatch):
    targets = _compile_dice_ce(monkeypatch, "triton")
    assert any(t.startswith("fastloss.triton_loss_formula") for t in targets), targets

def _cpu_formula():
    from fastloss.ops import cpu_formula

    if not cpu_formula.available():
        pytest.skip("fastloss._C has no CPU formula")
    return cpu_formula


def test_opcheck_cpu():
    _cpu_formula()
    gen = torch.Generator().manual_seed(8)
    stats = (torch.rand(2, 4, 5, generator=gen) * 10 + 1).requires_grad_(True)
    cfg = formula_spec.make_config(region="tversky", first_class=1, i_tp=0, i_ps=1, i_gs=2, smooth_nr=1e-5,
                                     smooth_dr=1e-5, region_numel=6, alpha=0.3, beta=0.7, dist="ce", i_ce=3, i_g=2,
                                     i_count=4, ce_weighted_den=True)
    w = torch.tensor([1.0, 2.0, 0.5])
    cw = torch.tensor([0.3, 1.0, 2.0, 0.7])
    torch.library.opcheck(torch.ops.fastloss.cpu_loss_formula.default, (stats, w, cw, *cfg))
    cfg2 = formula_spec.make_config(dist="focal", i_focal=0, i_count=4, focal_masked=True, dist_mean=False)
    torch.library.opcheck(torch.ops.fastloss.cpu_loss_formula.default, (stats, None, cw[:1].expand(4), *cfg2))


def test_cpu_formula_refuses_a_malformed_configuration():
    cpu_formula = _cpu_formula()
    stats = torch.rand(2, 3, 3)
    ints, floats = formula_spec.make_config(region="dice", i_tp=0, i_ps=1, i_gs=3)  # K = 3: no column 3
    with pytest.raises(ValueError, match=r"column i_gs = 3 outside \[0, 3\)"):
        cpu_formula.loss_formula_cpu(stats, ints, floats)
    with pytest.raises(ValueError, match="expected 18 ints and 9 floats"):
        cpu_formula.loss_formula_cpu(stats, ints[:-1], floats)
    ints, floats = formula_spec.make_config(dist="ce", i_ce=0, i_count=-1)
    with pytest.raises(ValueError, match="column i_count = -1"):
        cpu_formula.loss_formula_cpu(stats, ints, floats)


def test_torch_compile_fullgraph_cpu(monkeypatch):
    """On the compiled CPU backend torch.compile traces the statistics and the formula as custom ops."""
    _cpu_formula()
    targets = _compile_dice_ce(monkeypatch, "auto")
    assert any(t.startswith("fastloss.cpu_loss_formula") for t in targets), targets
    assert any(t.startswith("fastloss.cpu_class_stats") for t in targets), targets



# ----------------------------------------------------------------------------------------------------
# the generalized Dice: the C++ formula only (the Triton kernel has no such term)
# ----------------------------------------------------------------------------------------------------
_GD_GRID = list(itertools.product(("square", "simple", "uniform"), (False, True), (True, False), (False, True),
                                  ("mean", "sum")))


@pytest.mark.parametrize("w_type, batch, bg, relative, red", _GD_GRID)
def test_generalized_dice_same_stats(w_type, batch, bg, relative, red, monkeypatch, spy):
    """Same statistics through the torch formula and the C++ one (one class absent in one image: its weight
    is the row's largest). The weights come from the target volumes, which have no path to the logits, so
    the C++ formula leaves dL/dg at 0 (the torch formula differentiates the weights): g is not compared."""
    if spy.backend == "triton":
        pytest.skip("the Triton formula has no generalized Dice term")
    from fastloss.losses.region import GeneralizedDiceLoss

    _same_formula(lambda: GeneralizedDiceLoss(softmax=True, w_type=w_type, batch=batch, include_background=bg,
                                              smooth_relative=relative, reduction=red),
                  monkeypatch, spy, skip=("g", "gg"))


@pytest.mark.parametrize("w_type, batch, bg, relative, red", _GD_GRID[::3])
@pytest.mark.parametrize("act, ignore_index", [("softmax", None), ("sigmoid", None), ("softmax", 2)])
def test_generalized_dice_end_to_end_cpu(w_type, batch, bg, relative, red, act, ignore_index, monkeypatch, spy):
    """The loss and dL/dx on the compiled CPU path (statistics kernel + C++ formula) against the float64 torch
    backend, with a class absent from one image."""
    if spy.backend == "triton":
        pytest.skip("the Triton formula has no generalized Dice term")
    from fastloss.losses.region import GeneralizedDiceLoss

    gen = torch.Generator().manual_seed(17)
    x = torch.randn(2, 4, 5, 6, 7, generator=gen) * 2
    y = torch.randint(0, 4, (2, 1, 5, 6, 7), generator=gen)
    y[0][y[0] == 3] = 1  # class 3 absent from image 0
    if ignore_index is not None:
        y.view(-1)[::5] = ignore_index
    loss = GeneralizedDiceLoss(softmax=act == "softmax", sigmoid=act == "sigmoid", w_type=w_type, batch=batch,
                               include_background=bg, smooth_relative=relative, reduction=red,
                               ignore_index=ignore_index)
    monkeypatch.setenv("FASTLOSS_BACKEND", spy.backend)
    got, g = _run(loss, x, y)
    assert len(spy) == 1, "the fused formula was not used"
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    ref, g_ref = _run(loss, x.double(), y)
    _close(got.double(), ref, 1e-5, 1e-7)
    _close(g.double(), g_ref, 1e-4, 1e-6)


def test_generalized_dice_target_with_grad_keeps_the_torch_formula(monkeypatch, spy):
    """The C++ formula gives the target volumes no gradient, so a soft target that requires grad keeps the
    torch path, and gets its gradient."""
    if spy.backend == "triton":
        pytest.skip("the Triton formula has no generalized Dice term")
    from fastloss.losses.region import GeneralizedDiceLoss

    gen = torch.Generator().manual_seed(18)
    x = torch.randn(2, 3, 4, 5, 6, generator=gen)
    t = torch.softmax(torch.randn(2, 3, 4, 5, 6, generator=gen), dim=1).requires_grad_()
    monkeypatch.setenv("FASTLOSS_BACKEND", spy.backend)
    v = GeneralizedDiceLoss(softmax=True)(x, t)
    (gt,) = torch.autograd.grad(v, t)
    assert len(spy) == 0 and gt.abs().sum() > 0


def test_triton_formula_refuses_the_generalized_dice(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    ints, floats = formula_spec.make_config(region="gdice", i_tp=0, i_ps=1, i_gs=2)
    with pytest.raises(ValueError, match="no generalized Dice"):
        formula.loss_formula(torch.rand(2, 3, 3), (ints, floats))
    with pytest.raises(ValueError, match="gd_weight must be one of"):
        formula_spec.make_config(region="gdice", gd_weight="cubic")
