"""GeneralizedDiceFocalLoss, MaskedDiceLoss and LogHausdorffDTLoss side by side with MONAI 1.6.1's classes
in float64 (values and gradients), through the torch backend and the Triton kernels (interpreter), plus
gradcheck and MONAI's argument errors."""

import warnings

import pytest
import torch

import fastloss
from fastloss import GeneralizedDiceFocalLoss, LogHausdorffDTLoss, MaskedDiceLoss

monai_losses = pytest.importorskip("monai.losses")


def _data(shape=(2, 3, 7, 6), seed=0, onehot=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype)
    y = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=g)
    if onehot:
        y = torch.nn.functional.one_hot(y[:, 0], shape[1]).movedim(-1, 1).to(dtype)
    return x, y


F32 = dict(rtol=1e-6, atol=1e-8)


def _compare(ours, theirs, x, y, *extra, rtol=1e-9, atol=1e-10):
    """Values and input gradients of ``ours`` and ``theirs`` (a MONAI loss) on the same float64 data."""
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(a, y, *extra)
        want = theirs(b, y, *extra)
    torch.testing.assert_close(got.double(), want.double(), rtol=rtol, atol=atol)
    (got.sum() * 2).backward()  # a loss scaled before backward
    (want.sum() * 2).backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol)


GDFL_CASES = [
    dict(softmax=True, to_onehot_y=True),
    dict(sigmoid=True, to_onehot_y=True, include_background=False, w_type="simple", gamma=1.5),
    dict(softmax=True, to_onehot_y=True, batch=True, w_type="uniform", weight=[0.2, 1.0, 3.0], lambda_focal=0.5),
    dict(sigmoid=True, reduction="sum", lambda_gdl=2.0),
    dict(other_act=torch.tanh, reduction="none", include_background=False),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kw", GDFL_CASES)
def test_generalized_dice_focal_matches_monai(kw, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    onehot = not kw.get("to_onehot_y", False)
    x, y = _data(seed=1, onehot=onehot)
    # MONAI's focal part computes in float32 whatever the input dtype: float32 agreement
    _compare(GeneralizedDiceFocalLoss(**kw), monai_losses.GeneralizedDiceFocalLoss(**kw), x, y, **F32)


MASKED_CASES = [
    dict(softmax=True, to_onehot_y=True),
    dict(sigmoid=True, include_background=False, squared_pred=True),
    dict(softmax=True, jaccard=True, batch=True, weight=[1.0, 2.0, 0.5]),
    dict(sigmoid=True, reduction="none"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kw", MASKED_CASES)
def test_masked_dice_matches_monai(kw, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    x, y = _data(seed=2, onehot=not kw.get("to_onehot_y", False))
    mask = (torch.rand((x.shape[0], 1) + x.shape[2:], generator=torch.Generator().manual_seed(3)) > 0.4).double()
    _compare(MaskedDiceLoss(**kw), monai_losses.MaskedDiceLoss(**kw), x, y, mask)
    _compare(MaskedDiceLoss(**kw), monai_losses.MaskedDiceLoss(**kw), x, y, mask[:1])  # one mask for the batch


def test_masked_dice_without_mask_is_dice_and_warns():
    x, y = _data(seed=4)
    with pytest.warns(UserWarning, match="No mask"):
        got = MaskedDiceLoss(softmax=True, to_onehot_y=True)(x, y)
    torch.testing.assert_close(got, fastloss.DiceLoss(softmax=True, to_onehot_y=True)(x, y))
    ones = torch.ones((2, 1) + x.shape[2:], dtype=x.dtype)
    torch.testing.assert_close(MaskedDiceLoss(softmax=True, to_onehot_y=True)(x, y, ones), got)


HD_CASES = [
    dict(softmax=True, to_onehot_y=True),
    dict(sigmoid=True, include_background=True, alpha=1.0),
    dict(softmax=True, to_onehot_y=True, batch=True, reduction="sum"),
    dict(softmax=True, to_onehot_y=True, reduction="none"),
]


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("kw", HD_CASES)
def test_log_hausdorff_matches_monai(kw, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    x, y = _data((2, 3, 9, 8), seed=5, onehot=not kw.get("to_onehot_y", False))
    # MONAI's distance fields are float32: float32 agreement
    _compare(LogHausdorffDTLoss(**kw), monai_losses.LogHausdorffDTLoss(**kw), x, y, **F32)


def test_log_hausdorff_is_log1p_of_hausdorff():
    x, y = _data((2, 3, 9, 8), seed=6)
    hd = fastloss.HausdorffDTLoss(softmax=True, reduction="none")(x, y)
    torch.testing.assert_close(LogHausdorffDTLoss(softmax=True, reduction="none")(x, y), torch.log(hd + 1))


@pytest.mark.parametrize(
    "loss, extra",
    [
        (GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True), ()),
        (GeneralizedDiceFocalLoss(sigmoid=True, batch=True), ()),
        (MaskedDiceLoss(softmax=True, to_onehot_y=True), "mask"),
        (LogHausdorffDTLoss(softmax=True), ()),
    ],
)
def test_gradcheck(loss, extra):
    x, y = _data((2, 3, 4, 5), seed=7)
    if loss.__class__ is GeneralizedDiceFocalLoss and not loss.generalized_dice.to_onehot_y:
        y = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).double()
    args = ()
    if extra == "mask":
        args = ((torch.arange(20).view(1, 1, 4, 5) % 3 != 0).double(),)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y, *args), (x,), eps=1e-6, atol=1e-5)


def test_bad_arguments_raise_monai_types():
    x, y = _data()
    with pytest.raises(ValueError, match="lambda_gdl"):
        GeneralizedDiceFocalLoss(lambda_gdl=-1.0)
    with pytest.raises(ValueError):
        MaskedDiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(TypeError):
        MaskedDiceLoss(other_act=3)
    with pytest.raises(ValueError, match="one channel"):
        MaskedDiceLoss(softmax=True, to_onehot_y=True)(x, y, torch.ones_like(x))
    with pytest.raises(ValueError, match="batch size"):
        MaskedDiceLoss(softmax=True, to_onehot_y=True)(x, y, torch.ones((3, 1) + x.shape[2:], dtype=x.dtype))
    with pytest.raises(ValueError):
        GeneralizedDiceFocalLoss(softmax=True)(x, y[:, :, :3])
    # MONAI raises the same types for these
    with pytest.raises(ValueError):
        monai_losses.GeneralizedDiceFocalLoss(lambda_gdl=-1.0)
    with pytest.raises(ValueError):
        monai_losses.MaskedDiceLoss(softmax=True, to_onehot_y=True)(x, y, torch.ones_like(x))


def test_functional_forms_and_exports():
    x, y = _data(seed=8)
    from fastloss.losses.boundary import log_hausdorff_dt_loss
    from fastloss.losses.monai_extra import generalized_dice_focal_loss, masked_dice_loss

    torch.testing.assert_close(
        generalized_dice_focal_loss(x, y, softmax=True, to_onehot_y=True),
        GeneralizedDiceFocalLoss(softmax=True, to_onehot_y=True)(x, y),
    )
    m = torch.ones((2, 1) + x.shape[2:], dtype=x.dtype)
    torch.testing.assert_close(masked_dice_loss(x, y, mask=m, softmax=True, to_onehot_y=True),
                               MaskedDiceLoss(softmax=True, to_onehot_y=True)(x, y, m))
    torch.testing.assert_close(log_hausdorff_dt_loss(x, y, softmax=True), LogHausdorffDTLoss(softmax=True)(x, y))
    for name in ("GeneralizedDiceFocalLoss", "MaskedDiceLoss", "LogHausdorffDTLoss"):
        assert name in fastloss.__all__ and name in fastloss.losses.__all__


@pytest.mark.parametrize(
    "name", ["DiceLoss", "DiceCELoss", "DiceFocalLoss", "GeneralizedDiceLoss", "TverskyLoss", "HausdorffDTLoss",
             "GeneralizedDiceFocalLoss", "MaskedDiceLoss"],
)
def test_shape_mismatch_is_both_assertion_and_value_error(name):
    """Whether MONAI asserts or raises ValueError on a target of the wrong shape, ours is caught by the
    same except clause (and by the other one)."""
    x = torch.randn(2, 3, 4, 4)
    for y in (torch.randint(0, 3, (2, 1, 5, 4)), torch.zeros(2, 2, 4, 4)):
        with pytest.raises((AssertionError, ValueError)) as theirs:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                getattr(monai_losses, name)(softmax=True)(x, y)
        for exc in (theirs.type, AssertionError, ValueError):
            with pytest.raises(exc, match="must be labels of shape"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    getattr(fastloss, name)(softmax=True)(x, y)


def test_masked_dice_traces_fullgraph_with_a_mask():
    """torch.compile(fullgraph=True) traces the masked path too (no warnings.warn while tracing)."""
    x, y = _data(seed=9)
    m = (torch.arange(42).view(1, 1, 7, 6) % 4 != 0).double()
    loss = MaskedDiceLoss(softmax=True, to_onehot_y=True)
    compiled = torch.compile(loss, fullgraph=True, backend="eager")
    torch.testing.assert_close(compiled(x, y, m), loss(x, y, m))


# ------------------------------------------------------------------ (B, C) inputs: no spatial dims, as MONAI
# MONAI's Dice and Tversky losses sum over ``range(2, ndim)``, an empty list for a (B, C) input, and
# torch.sum(x, dim=[]) sums over every dim: one pooled ratio over batch and classes (per class with batch=True);
# its FocalLoss "sum" takes the mean over that empty list, i.e. over everything. Values, shapes and gradients
# are compared with MONAI's on the same float64 data, on the torch backend and the Triton one (interpreter).
def _flat(B=6, C=3, seed=11, onehot=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, C, generator=g, dtype=torch.float64)
    y = torch.randint(0, C, (B, 1), generator=g)
    if onehot:
        y = torch.nn.functional.one_hot(y[:, 0], C).double()
    return x, y


FLAT_CASES = [
    ("DiceLoss", dict(softmax=True)),
    ("DiceLoss", dict(softmax=True, to_onehot_y=True)),
    ("DiceLoss", dict(sigmoid=True, reduction="none")),
    ("DiceLoss", dict(softmax=True, batch=True, reduction="none")),
    ("DiceLoss", dict(softmax=True, include_background=False, weight=[1.0, 3.0], reduction="none")),
    ("DiceLoss", dict(softmax=True, weight=[0.5, 1.0, 2.0])),
    ("DiceLoss", dict(softmax=True, weight=[0.5, 1.0, 2.0], reduction="sum")),
    ("DiceLoss", dict(sigmoid=True, batch=True, weight=[0.5, 1.0, 2.0], reduction="sum")),
    ("DiceLoss", dict(softmax=True, squared_pred=True, reduction="sum")),
    ("DiceLoss", dict(softmax=True, jaccard=True, include_background=False)),
    ("DiceLoss", dict(other_act=torch.tanh, soft_label=True, reduction="none")),
    ("DiceLoss", dict(softmax=True, to_onehot_y=True, ignore_index=1, reduction="sum")),
    ("TverskyLoss", dict(softmax=True, alpha=0.3, beta=0.7)),
    ("TverskyLoss", dict(sigmoid=True, reduction="none")),
    ("TverskyLoss", dict(softmax=True, batch=True, reduction="none", include_background=False)),
    ("TverskyLoss", dict(softmax=True, to_onehot_y=True, reduction="sum")),
    ("DiceCELoss", dict(softmax=True)),
    ("DiceCELoss", dict(softmax=True, to_onehot_y=True, reduction="sum", batch=True)),
    ("DiceCELoss", dict(sigmoid=True, include_background=False, lambda_ce=0.5)),
]
FLAT_CASES_F32 = [  # MONAI's focal term computes in float32 whatever the input dtype: float32 agreement
    ("FocalLoss", dict()),
    ("FocalLoss", dict(reduction="none")),
    ("FocalLoss", dict(reduction="sum")),
    ("FocalLoss", dict(use_softmax=True, to_onehot_y=True, reduction="sum")),
    ("FocalLoss", dict(use_softmax=True, include_background=False, alpha=0.25, weight=2.0)),
    ("FocalLoss", dict(alpha=[0.2, 0.5, 0.9], weight=[1.0, 2.0, 0.5], reduction="sum")),
    ("FocalLoss", dict(to_onehot_y=True, ignore_index=2, reduction="sum")),
    ("DiceFocalLoss", dict(softmax=True)),
    ("DiceFocalLoss", dict(softmax=True, reduction="none")),
    ("DiceFocalLoss", dict(sigmoid=True, batch=True, reduction="none", gamma=1.5)),
    ("DiceFocalLoss", dict(softmax=True, to_onehot_y=True, reduction="sum", weight=[0.5, 1.0, 2.0])),
]


# "auto" on CPU tensors is the compiled C++ statistics (float64 included); the Triton kernels take float32
# and below (float64 goes to torch), so test_flat_inputs_triton_kernels runs them in float32
@pytest.mark.parametrize("backend", ["torch", "auto"])
@pytest.mark.parametrize("name, kw", FLAT_CASES + FLAT_CASES_F32, ids=lambda v: v if isinstance(v, str) else None)
def test_flat_inputs_match_monai(name, kw, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    x, y = _flat(onehot=not kw.get("to_onehot_y", False))
    tol = F32 if (name, kw) in FLAT_CASES_F32 else {}
    ours, theirs = getattr(fastloss, name)(**kw), getattr(monai_losses, name)(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert ours(x, y).shape == theirs(x, y).shape  # reduction="none" shapes too: () / (C,) / (B, C)
    _compare(ours, theirs, x, y, **tol)


@pytest.mark.parametrize("name, kw", FLAT_CASES + FLAT_CASES_F32, ids=lambda v: v if isinstance(v, str) else None)
def test_flat_inputs_triton_kernels(name, kw, triton_backend, monkeypatch):
    """float32 through the Triton statistics kernel (interpreter), which must run, against MONAI in float32."""
    from fastloss.ops import triton_stats

    calls = []
    kernel = triton_stats.class_stats_triton

    def counted(*args, **kwargs):
        calls.append(1)
        return kernel(*args, **kwargs)

    monkeypatch.setattr(triton_stats, "class_stats_triton", counted)
    x, y = _flat(onehot=not kw.get("to_onehot_y", False))
    x, y = x.float(), (y.float() if y.is_floating_point() else y)
    _compare(getattr(fastloss, name)(**kw), getattr(monai_losses, name)(**kw), x, y, rtol=1e-5, atol=1e-6)
    elementwise = name == "FocalLoss" and (kw.get("reduction") == "none" or isinstance(kw.get("alpha"), list))
    if not elementwise:  # per-voxel focal maps (reduction="none", sigmoid alpha sequences) need no class sums
        assert calls, "the Triton statistics kernel did not run"


@pytest.mark.parametrize("kw", [dict(softmax=True), dict(sigmoid=True, reduction="none"),
                                dict(softmax=True, batch=True, reduction="none")])
def test_flat_masked_dice_matches_monai(kw):
    """MaskedDiceLoss is Dice of the masked input and target: (B, C) input with a (B, 1) mask, as MONAI."""
    x, y = _flat(seed=13)
    mask = (torch.rand(x.shape[0], 1, generator=torch.Generator().manual_seed(14)) > 0.3).double()
    _compare(MaskedDiceLoss(**kw), monai_losses.MaskedDiceLoss(**kw), x, y, mask)


def test_flat_pooling_is_monai_s_not_per_item():
    """The trap: MONAI's (B, C) Dice is one ratio pooled over batch and classes, not the mean of B·C ratios."""
    x, y = _flat()
    pooled = fastloss.DiceLoss(softmax=True)(x, y)
    per_item = fastloss.DiceLoss(softmax=True, reduction="none")(x.unsqueeze(-1), y.unsqueeze(-1)).mean()
    assert not torch.allclose(pooled, per_item)
    torch.testing.assert_close(pooled, monai_losses.DiceLoss(softmax=True)(x, y))


@pytest.mark.parametrize(
    "loss",
    [
        fastloss.DiceLoss(softmax=True, weight=[0.5, 1.0, 2.0]),
        fastloss.DiceLoss(sigmoid=True, batch=True, reduction="sum"),
        fastloss.DiceLoss(softmax=True, soft_label=True, squared_pred=True),
        fastloss.TverskyLoss(softmax=True, alpha=0.3, beta=0.7),
        fastloss.FocalLoss(reduction="sum", alpha=0.25),
        fastloss.FocalLoss(use_softmax=True, reduction="none"),
        fastloss.DiceCELoss(softmax=True),
        fastloss.DiceFocalLoss(softmax=True, reduction="none"),
    ],
    ids=lambda m: type(m).__name__,
)
def test_flat_gradcheck(loss):
    x, y = _flat(B=4, seed=12)
    x.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: loss(t, y).sum(), (x,), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["GeneralizedDiceLoss", "HausdorffDTLoss", "BoundaryLoss", "LogHausdorffDTLoss"])
def test_flat_inputs_refused_where_monai_refuses(name):
    x, y = _flat()
    with pytest.raises(Exception):  # MONAI: IndexError (GeneralizedDice) or ValueError (distance losses)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            getattr(monai_losses, name)(softmax=True)(x, y)
    with pytest.raises(ValueError, match="spatial dims"):
        getattr(fastloss, name)(softmax=True)(x, y)


# --------------------------------------------------------------------------------- MONAI's exception types
def test_focal_float_target_of_the_wrong_shape_is_monai_s_value_error():
    """MONAI's test_focal_loss.test_ill_shape: (1, 2, 3) logits with a (1, 3) float target -> ValueError.
    To us a one-channel float target is float labels without to_onehot_y: a TypeError as before, and now
    also MONAI's ValueError (and AssertionError, as its region losses raise)."""
    x, y = torch.ones((1, 2, 3)), torch.ones((1, 3))
    with pytest.raises(ValueError):
        monai_losses.FocalLoss(reduction="mean")(x, y)
    for exc in (ValueError, TypeError, AssertionError):
        with pytest.raises(exc, match="float dtype"):
            fastloss.FocalLoss(reduction="mean")(x, y)


@pytest.mark.parametrize("name", ["DiceLoss", "TverskyLoss", "DiceCELoss", "DiceFocalLoss"])
def test_float_labels_without_to_onehot_y_assert_as_monai(name):
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4)).float()
    with pytest.raises(AssertionError):
        getattr(monai_losses, name)(softmax=True)(x, y)
    with pytest.raises(AssertionError, match="float dtype"):
        getattr(fastloss, name)(softmax=True)(x, y)


def test_shape_mismatch_message_has_monai_s_words():
    """MONAI's BoundaryLoss test matches "shapes do not match" in the AssertionError."""
    x, y = torch.ones((1, 1, 2, 3)), torch.ones((1, 4, 5, 6))
    for loss in (monai_losses.BoundaryLoss(), fastloss.BoundaryLoss(), fastloss.DiceLoss()):
        with pytest.raises(AssertionError, match="shapes do not match"):
            loss(x, y)
