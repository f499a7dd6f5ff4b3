"""torch.autograd.gradcheck in float64 for every loss (each paper configuration of the registry and every
class in its default configuration), and exact gradient scaling when the loss is multiplied by 2."""

from __future__ import annotations

import inspect

import pytest
import torch

from fastloss.losses import boundary as BD
from fastloss.losses import compound as CP
from fastloss.losses import distribution as DI
from fastloss.losses import lovasz as LV
from fastloss.losses import region as RG
from fastloss.registry import PAPER_LOSSES, get_loss
from _scaling import assert_upstream_gradient_scales, skip_unless_backend_runs

D64 = torch.float64
SHAPE = (2, 3, 4, 5)
SMALL = (1, 3, 2, 3)  # full (non-fast) gradcheck: every input element perturbed


def _data(seed=0, onehot=False, shape=SHAPE):
    gen = torch.Generator().manual_seed(seed)
    x = 1.5 * torch.randn(shape, generator=gen, dtype=D64)
    lab = torch.randint(0, shape[1], (shape[0], 1) + shape[2:], generator=gen)
    lab.view(-1)[: shape[1]] = torch.arange(shape[1])  # every class present
    if onehot:
        return x, torch.nn.functional.one_hot(lab[:, 0], shape[1]).movedim(-1, 1).to(D64)
    return x, lab


def _scalar(loss, target):
    def f(x):
        out = loss(x, target)
        # a fixed, non-uniform combination of the outputs so that reduction="none" is checked too
        return (out * torch.linspace(0.5, 1.5, out.numel(), dtype=out.dtype).reshape(out.shape)).sum()
    return f


def _paper_loss(name, x=None, target=None):
    loss = get_loss(name)
    if isinstance(loss, CP.DiceBoundaryLoss):
        loss.set_epoch(40)  # α = 0.6: both terms active (at epoch 0 α = 1 and BD is skipped)
    if isinstance(loss, CP.DiceHausdorffDTLoss) and x is not None:
        # Karimi's α = sg[HD/Dice] is detached by design, so the gradient is not that of the value: check
        # the loss with α frozen at the value the adaptive rule picks for this batch
        loss(x, target)
        loss = get_loss(name, alpha=float(loss.last_alpha))
    return loss


@pytest.mark.parametrize("name", list(PAPER_LOSSES))
def test_gradcheck_paper_losses(torch_backend, name):
    x, lab = _data()
    loss = _paper_loss(name, x, lab)
    # fast mode: the Jacobian against a random direction (all voxels at once); full mode below on SMALL
    assert torch.autograd.gradcheck(_scalar(loss, lab), (x.requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5,
                                    fast_mode=True)


# every class in its default configuration (MONAI-named ones apply no activation by default: the input is
# then read as probabilities), plus reduction="none" where the class has it, with one-hot targets
DEFAULT_CLASSES = [
    RG.DiceLoss, RG.IoULoss, RG.TverskyLoss, RG.FocalTverskyLoss, RG.AsymmetricSimilarityLoss,
    RG.GeneralizedDiceLoss, RG.PenaltyGeneralizedDiceLoss, RG.SensitivitySpecificityLoss,
    DI.CrossEntropyLoss, DI.WeightedCrossEntropyLoss, DI.TopKLoss, DI.FocalLoss, DI.DistancePenalizedCELoss,
    LV.LovaszSoftmaxLoss, BD.BoundaryLoss, BD.HausdorffDTLoss,
    CP.DiceCELoss, CP.DiceFocalLoss, CP.DiceTopKLoss, CP.ExpLogLoss, CP.DiceBoundaryLoss, CP.DiceHausdorffDTLoss,
]


def _probs_input(cls, x):
    """Classes whose default applies no activation get probabilities-like inputs in (0, 1)."""
    return torch.sigmoid(x) if cls in (RG.FocalTverskyLoss, RG.AsymmetricSimilarityLoss, RG.IoULoss,
                                        RG.SensitivitySpecificityLoss, RG.DiceLoss, RG.TverskyLoss,
                                        RG.GeneralizedDiceLoss, RG.PenaltyGeneralizedDiceLoss,
                                        BD.BoundaryLoss, BD.HausdorffDTLoss) else x


@pytest.mark.parametrize("cls", DEFAULT_CLASSES, ids=lambda c: c.__name__)
def test_gradcheck_default_classes(torch_backend, cls):
    x, oh = _data(1, onehot=True, shape=SMALL)
    x = _probs_input(cls, x).detach()
    kw = {}
    if "reduction" in inspect.signature(cls.__init__).parameters and cls not in (CP.DiceCELoss, CP.DiceFocalLoss):
        kw["reduction"] = "none"
    loss = cls(**kw)
    if isinstance(loss, CP.DiceBoundaryLoss):
        loss.set_epoch(40)
    if isinstance(loss, CP.DiceHausdorffDTLoss):  # freeze the detached adaptive α (see _paper_loss)
        loss(x, oh)
        loss = cls(alpha=float(loss.last_alpha))
    assert torch.autograd.gradcheck(_scalar(loss, oh), (x.requires_grad_(True),), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", list(PAPER_LOSSES))
def test_loss_times_two_doubles_gradient_exactly(torch_backend, name):
    x, lab = _data(2)
    loss = _paper_loss(name)
    x1 = x.clone().requires_grad_(True)
    loss(x1, lab).backward()
    x2 = x.clone().requires_grad_(True)
    (2 * loss(x2, lab)).backward()
    assert torch.isfinite(x1.grad).all() and x1.grad.abs().sum() > 0
    assert torch.equal(x2.grad, 2 * x1.grad)


# The check above runs on the torch backend, where autograd guarantees it. The custom backwards (the
# Triton kernels' dL/d(stats) -> dL/dx, the TopK select's and Lovász's) run only on the other paths:
# `triton` (under the interpreter here) and `auto` (the compiled CPU kernels once they serve CPU
# tensors). There, in float32: 2·L gives exactly twice the gradient (a factor 2 is exact in floating
# point), and a non-power-of-two upstream factor 0.37 gives 0.37 times the float64 torch gradient.
_TRITON_REPEATS = {"TopK-10%", "TopK-30%", "TopK-70%", "TopK-90%", "TopK-Threshold (0.1)", "TopK-Threshold (0.3)",
                   "TopK-Threshold (0.7)", "TopK-Threshold (0.9)", "Dice (Batch, no square)",
                   "SampleDice (no square)"}
_CUSTOM_CASES = [(b, n) for b in ("triton", "auto") for n in PAPER_LOSSES
                 if not (b == "triton" and n in _TRITON_REPEATS)]


@pytest.mark.parametrize("backend, name", _CUSTOM_CASES)
def test_loss_times_two_on_the_custom_backwards(backend, name, monkeypatch):
    skip_unless_backend_runs(backend)
    x, lab = _data(2)
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    loss = _paper_loss(name, x, lab)  # DiceHD: α frozen, so the float64 reference has the same α
    assert_upstream_gradient_scales(loss, x, lab, backend, monkeypatch)
