"""Bad input, one test per case: each raises ValueError/TypeError whose message names what was expected
and what came, before any computation. Generic checks run over every loss class."""

from __future__ import annotations

import inspect

import pytest
import torch

from fastloss.losses import boundary as BD
from fastloss.losses import compound as CP
from fastloss.losses import distribution as DI
from fastloss.losses import lovasz as LV
from fastloss.losses import region as RG

ALL_CLASSES = [
    RG.DiceLoss, RG.IoULoss, RG.TverskyLoss, RG.FocalTverskyLoss, RG.AsymmetricSimilarityLoss,
    RG.GeneralizedDiceLoss, RG.PenaltyGeneralizedDiceLoss, RG.SensitivitySpecificityLoss,
    DI.CrossEntropyLoss, DI.WeightedCrossEntropyLoss, DI.TopKLoss, DI.FocalLoss, DI.DistancePenalizedCELoss,
    LV.LovaszSoftmaxLoss, BD.BoundaryLoss, BD.HausdorffDTLoss,
    CP.DiceCELoss, CP.DiceFocalLoss, CP.DiceTopKLoss, CP.ExpLogLoss, CP.DiceBoundaryLoss, CP.DiceHausdorffDTLoss,
]
IDS = [c.__name__ for c in ALL_CLASSES]


def _params(cls):
    return inspect.signature(cls.__init__).parameters


WITH_FLAGS = [c for c in ALL_CLASSES if "sigmoid" in _params(c) and "softmax" in _params(c)]
WITH_REDUCTION = [c for c in ALL_CLASSES if "reduction" in _params(c)]


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


@pytest.fixture(autouse=True)
def _backend(torch_backend):
    yield


# (B, C) logits without spatial dims are taken where MONAI's namesake takes them (its Dice, Tversky, Focal,
# DiceCE, DiceFocal; IoU is Dice with jaccard=True; CE as torch's); tests/test_monai_losses.py checks them
FLAT_OK = {RG.DiceLoss, RG.IoULoss, RG.TverskyLoss, DI.CrossEntropyLoss, DI.WeightedCrossEntropyLoss, DI.FocalLoss,
           CP.DiceCELoss, CP.DiceFocalLoss}


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_wrong_ndim(cls):
    # (B, C) logits: no spatial dim
    if cls not in FLAT_OK:
        with pytest.raises(ValueError, match=r"1 to 3 spatial dims.*got 2 dims"):
            cls()(_x(2, 3), torch.zeros(2, dtype=torch.long))
    # 4 spatial dims
    with pytest.raises(ValueError, match=r"1 to 3 spatial dims.*got 6 dims"):
        cls()(_x(1, 3, 2, 2, 2, 2), torch.zeros(1, 1, 2, 2, 2, 2, dtype=torch.long))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_input_target_shape_mismatch(cls):
    with pytest.raises(ValueError, match=r"to match input of shape \(2, 3, 4, 4\); got \(2, 1, 5, 4\)"):
        cls()(_x(2, 3, 4, 4), torch.zeros(2, 1, 5, 4, dtype=torch.long))
    # a one-hot target with the wrong number of channels
    with pytest.raises(ValueError, match=r"one-hot/soft of shape \(2, 3, 4, 4\).*got \(2, 2, 4, 4\)"):
        cls()(_x(2, 3, 4, 4), torch.zeros(2, 2, 4, 4))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_labels_not_below_num_classes(cls):
    lab = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    lab[0, 0, 1, 1] = 3
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\] for 3 channel\(s\); found \[3\]"):
        cls()(_x(2, 3, 4, 4), lab)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_negative_labels_that_are_not_ignore_index(cls):
    lab = torch.zeros(2, 1, 4, 4, dtype=torch.long)
    lab[1, 0, 2, 3] = -1
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\].*or equal ignore_index=255; found \[-1\]"):
        cls(ignore_index=255)(_x(2, 3, 4, 4), lab)
    with pytest.raises(ValueError, match=r"found \[-1\]"):
        cls()(_x(2, 3, 4, 4), lab)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_float_labels_where_labels_are_expected(cls):
    lab = torch.zeros(2, 1, 4, 4)  # one channel, float: labels, but not integer
    with pytest.raises(TypeError, match=r"holds labels .* float dtype torch.float32: expected integer labels"):
        cls()(_x(2, 3, 4, 4), lab)


@pytest.mark.parametrize("cls", WITH_FLAGS, ids=[c.__name__ for c in WITH_FLAGS])
def test_sigmoid_and_softmax_both_set(cls):
    with pytest.raises(ValueError, match=r"sigmoid=True and softmax=True are incompatible"):
        cls(sigmoid=True, softmax=True)


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_empty_tensors(cls):
    with pytest.raises(ValueError, match=r"must not be empty, got shape \(2, 3, 0, 4\)"):
        cls()(_x(2, 3, 0, 4), torch.zeros(2, 1, 0, 4, dtype=torch.long))


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_non_tensor_input(cls):
    with pytest.raises(TypeError, match=r"must be a torch.Tensor.*got list"):
        cls()([[0.1, 0.2]], torch.zeros(1, 1, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"target must be a torch.Tensor, got ndarray"):
        cls()(_x(1, 3, 4), torch.zeros(1, 1, 4, dtype=torch.long).numpy())


@pytest.mark.parametrize("cls", ALL_CLASSES, ids=IDS)
def test_integer_logits(cls):
    with pytest.raises(TypeError, match=r"float16, bfloat16, float32 or float64 logits, got dtype torch.int64"):
        cls()(torch.zeros(2, 3, 4, 4, dtype=torch.long), torch.zeros(2, 1, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("cls", WITH_REDUCTION, ids=[c.__name__ for c in WITH_REDUCTION])
def test_bad_reduction_string(cls):
    with pytest.raises(ValueError, match=r"reduction must be one of .*got 'average'"):
        cls(reduction="average")


@pytest.mark.parametrize("spacing, match", [
    ((1.0, 1.0), r"one value per spatial dim \(3\), got 2"),
    ((1.0, 1.0, 1.0, 1.0), r"one value per spatial dim \(3\), got 4"),
    ((1.0, 0.0, 1.0), r"positive and finite, got \(1.0, 0.0, 1.0\)"),
    ((1.0, -2.0, 1.0), r"positive and finite, got \(1.0, -2.0, 1.0\)"),
    (0.0, r"positive and finite, got \(0.0, 0.0, 0.0\)"),
], ids=["too-short", "too-long", "zero", "negative", "scalar-zero"])
def test_edt_bad_spacing(spacing, match):
    from fastloss.distance import edt

    with pytest.raises(ValueError, match=match):
        edt(torch.zeros(4, 5, 6, dtype=torch.bool), spacing)


@pytest.mark.parametrize("cls", [BD.BoundaryLoss, BD.HausdorffDTLoss, DI.DistancePenalizedCELoss],
                         ids=lambda c: c.__name__)
def test_loss_bad_spacing(cls):
    # spacing of the wrong length for the input's spatial dims is caught at the latest in forward
    with pytest.raises(ValueError, match=r"spacing must have one value per spatial dim \(2\), got 3"):
        cls(spacing=(1.0, 1.0, 1.0))(_x(2, 3, 4, 4), torch.randint(0, 3, (2, 1, 4, 4)))
    with pytest.raises(ValueError, match=r"positive and finite"):
        cls(spacing=(1.0, -1.0))


def test_unknown_loss_name():
    from fastloss.registry import get_loss

    with pytest.raises(ValueError, match=r"unknown loss name 'Dicee'; known names: .*DiceCE"):
        get_loss("Dicee")
    with pytest.raises(TypeError, match=r"name must be a string, got int"):
        get_loss(3)


@pytest.mark.parametrize("k", [0, -5, 100.5, 150])
def test_topk_k_outside_0_100(k):
    # a negative k is refused by the generic non-negativity check ("k must be >= 0, got -5.0")
    match = r"k must be .*got -5" if k < 0 else r"k must be a percentage in \(0, 100\], got " + str(k)
    with pytest.raises(ValueError, match=match):
        DI.TopKLoss(k=k)
    with pytest.raises(ValueError, match=match):
        CP.DiceTopKLoss(k=k)


def test_topk_k_accepts_the_bounds():
    """k = 100 keeps every voxel (the plain CE mean); a tiny k keeps max(1, ⌊N·k/100⌋) = 1 voxel, the
    hardest one (nnU-Net's count)."""
    gen = torch.Generator().manual_seed(9)
    x = torch.randn(2, 3, 5, 5, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (2, 1, 5, 5), generator=gen)
    ce = torch.nn.functional.cross_entropy(x, y[:, 0], reduction="none")
    torch.testing.assert_close(DI.TopKLoss(k=100)(x, y), ce.mean(), rtol=1e-12, atol=0)
    torch.testing.assert_close(DI.TopKLoss(k=1e-3)(x, y), ce.max(), rtol=1e-12, atol=0)


WITH_ONEHOT_Y = [c for c in ALL_CLASSES if "to_onehot_y" in _params(c)]


@pytest.mark.parametrize("cls", WITH_ONEHOT_Y, ids=[c.__name__ for c in WITH_ONEHOT_Y])
def test_non_integral_float_labels_with_to_onehot_y(cls):
    """Float labels are accepted with to_onehot_y=True only when integral: y + 0.5 must not be truncated."""
    gen = torch.Generator().manual_seed(10)
    x = _x(2, 3, 4, 4)
    lab = torch.randint(0, 2, (2, 1, 4, 4), generator=gen)
    with pytest.raises(ValueError, match=r"non-integral float labels; expected class indices"):
        cls(to_onehot_y=True)(x, lab.float() + 0.5)
    one = lab.float()
    one[0, 0, 1, 2] = 1.25  # a single bad value is enough
    with pytest.raises(ValueError, match=r"non-integral float labels"):
        cls(to_onehot_y=True)(x, one)
    # integral floats are the same labels as the integers
    torch.testing.assert_close(cls(to_onehot_y=True)(x, lab.float()), cls(to_onehot_y=True)(x, lab), rtol=0, atol=0)


@pytest.mark.parametrize("name", ["TopKLoss", "LovaszSoftmaxLoss", "DistancePenalizedCELoss"])
def test_softmax_losses_reject_one_channel_before_the_target(name):
    """Losses that take a softmax over classes need C >= 2; the message names the loss and the C that
    came, and it comes before the target is inspected (this target has an out-of-range label too)."""
    import fastloss

    x = torch.randn(2, 1, 5, 5)
    y = torch.full((2, 1, 5, 5), 7)
    with pytest.raises(ValueError, match=rf"{name} needs at least 2 channels.*got C=1"):
        getattr(fastloss, name)()(x, y)
