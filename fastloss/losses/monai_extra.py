"""MONAI losses outside the paper's benchmark, with MONAI 1.6.1's names, signatures, defaults and results:
``GeneralizedDiceFocalLoss`` (generalized Dice + focal) and ``MaskedDiceLoss`` (Dice over a spatial mask).

Both are built from the paper losses of :mod:`fastloss.losses.region` and
:mod:`fastloss.losses.distribution`, so their sums come from the fused statistics
(:func:`fastloss.ops.stats.class_stats`); the generalized Dice and the focal term share one statistics
pass when they use the same activation. (``LogHausdorffDTLoss`` lives with the Hausdorff loss in
:mod:`fastloss.losses.boundary`.)
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import torch
from torch import nn

from .._validation import check_activation
from ..ops.stats import shared_statistics
from ._common import check_nonneg, functional_form
from .distribution import FocalLoss
from .region import DiceLoss, GeneralizedDiceLoss

__all__ = ["GeneralizedDiceFocalLoss", "MaskedDiceLoss", "generalized_dice_focal_loss", "masked_dice_loss"]

WeightLike = Optional[Union[Sequence[float], float, int, torch.Tensor]]


def _warn(message: str, stacklevel: int = 2) -> None:
    """MONAI's warnings, except while ``torch.compile`` traces (Dynamo cannot trace ``warnings.warn``)."""
    if not torch.compiler.is_compiling():
        warnings.warn(message, stacklevel=stacklevel + 1)


class GeneralizedDiceFocalLoss(nn.Module):
    r"""Generalized Dice + focal loss; MONAI 1.6.1 ``GeneralizedDiceFocalLoss``.

    .. math:: L = \lambda_{gdl} L_{GDice} + \lambda_{focal} L_{focal}

    with :class:`fastloss.GeneralizedDiceLoss` (``w_type``, ``smooth_nr``/``smooth_dr``, ``batch`` and the
    activation flags) and :class:`fastloss.FocalLoss` on the raw logits (MONAI's sigmoid focal loss:
    the activation flags do not reach it; ``gamma`` and ``weight`` do), both with ``include_background``,
    ``to_onehot_y`` and ``reduction``. With ``reduction="none"`` the two parts' shapes broadcast, as in MONAI.
    When the generalized Dice uses ``sigmoid=True`` both parts read one statistics pass.

    Args:
        include_background: keep channel 0 in both parts. Default True.
        to_onehot_y: one-hot encode label targets (integer labels are accepted either way).
        sigmoid, softmax, other_act: the activation of the generalized Dice part (MONAI's rules).
        w_type: ``"square"`` (default), ``"simple"`` or ``"uniform"`` class weights of the generalized Dice.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        smooth_nr, smooth_dr: the generalized Dice's smoothing terms (1e-5).
        batch: the generalized Dice sums over the batch before the ratio.
        gamma: the focal exponent (2.0).
        weight: per-channel weight of the focal part (a number, a sequence or a tensor), or None.
        lambda_gdl, lambda_focal: the parts' weights, ``>= 0``.

    Raises:
        TypeError: non-callable ``other_act``, non-number lambdas, bad tensor types.
        ValueError: negative lambdas, incompatible activations, an unknown ``w_type``/``reduction``,
            inputs and targets that do not match (the error is also an ``AssertionError`` where MONAI's is).

    Example:
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 8, 8))
        >>> GeneralizedDiceFocalLoss(to_onehot_y=True, softmax=True)(x, y).backward()
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        gamma: float = 2.0,
        weight: WeightLike = None,
        lambda_gdl: float = 1.0,
        lambda_focal: float = 1.0,
    ) -> None:
        super().__init__()
        self.generalized_dice = GeneralizedDiceLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            w_type=w_type,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
        )
        self.focal = FocalLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            gamma=gamma,
            weight=weight,
            reduction=reduction,
        )
        self.lambda_gdl = check_nonneg(lambda_gdl, "lambda_gdl")
        self.lambda_focal = check_nonneg(lambda_focal, "lambda_focal")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` logits ``(B, C, *spatial)``; ``target`` labels ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)``."""
        # One pass serves both parts when they ask for the same activation (a sigmoid Dice part and the
        # sigmoid focal part); otherwise each part computes its own columns (same values either way).
        with shared_statistics(("pg", "p", "g", "focal"), gamma=self.focal.gamma):
            gdl = self.generalized_dice(input, target)
            focal = self.focal(input, target)
        return self.lambda_gdl * gdl + self.lambda_focal * focal


class MaskedDiceLoss(DiceLoss):
    r"""Dice loss over the voxels of a spatial mask; MONAI 1.6.1 ``MaskedDiceLoss``.

    MONAI's order of operations: the activation (``sigmoid``/``softmax``/``other_act``) is applied to the
    input first, then the input and the target are both multiplied by ``mask`` (``(B, 1, *spatial)`` or
    ``(1, 1, *spatial)``, broadcast over channels), then :class:`fastloss.DiceLoss` runs without an
    activation, its sums coming from the fused statistics. Note MONAI's consequence for label targets:
    masked voxels get label 0, so they count as background in ``target`` (and as nothing in ``input``).
    ``mask=None`` warns and computes the plain Dice loss, as MONAI.

    Args:
        as :class:`fastloss.DiceLoss` (MONAI's ``DiceLoss`` arguments, same defaults).

    Forward args:
        input: ``(B, C, *spatial)``. target: labels ``(B, 1, *spatial)`` or one-hot ``(B, C, *spatial)``.
        mask: optional ``(B, 1, *spatial)`` or ``(1, 1, *spatial)``, 1 where voxels count.

    Raises:
        TypeError / ValueError: as :class:`fastloss.DiceLoss`; a mask with more than one channel or a
        batch size other than 1 or ``B`` (ValueError, as MONAI).

    Example:
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 8, 8))
        >>> m = torch.zeros(2, 1, 8, 8); m[..., 2:6, 2:6] = 1
        >>> MaskedDiceLoss(to_onehot_y=True, softmax=True)(x, y, mask=m).backward()
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: WeightLike = None,
        soft_label: bool = False,
    ) -> None:
        check_activation(sigmoid, softmax, other_act)  # MONAI's errors for incompatible flags
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            squared_pred=squared_pred,
            jaccard=jaccard,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=weight,
            soft_label=soft_label,
        )
        self.pre_sigmoid = bool(sigmoid)
        self.pre_softmax = bool(softmax)
        self.pre_other_act = other_act

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """See the class docstring. Returns the Dice loss of the masked input and target."""
        if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError(
                f"input and target must be torch.Tensors, got {type(input).__name__} and {type(target).__name__}"
            )
        if self.pre_sigmoid:
            input = torch.sigmoid(input)
        if self.pre_softmax:
            if input.ndim >= 2 and input.shape[1] == 1:
                _warn("single channel prediction, `softmax=True` ignored.", stacklevel=2)
            else:
                input = torch.softmax(input, 1)
        if self.pre_other_act is not None:
            input = self.pre_other_act(input)
        if mask is None:
            _warn("No mask value specified for the MaskedLoss.", stacklevel=2)
            return super().forward(input, target)
        if not isinstance(mask, torch.Tensor):
            raise TypeError(f"mask must be a torch.Tensor of shape (B, 1, *spatial), got {type(mask).__name__}")
        if input.dim() != mask.dim():
            _warn(f"Dim of input ({input.shape}) is different from mask ({mask.shape}).", stacklevel=2)
        if input.shape[0] != mask.shape[0] and mask.shape[0] != 1:
            raise ValueError(f"mask must have batch size 1 or {input.shape[0]} (the input's), got shape {tuple(mask.shape)}")
        if target.dim() > 1:
            if mask.shape[1] != 1:
                raise ValueError(f"mask must have one channel, shape (B, 1, *spatial), got shape {tuple(mask.shape)}")
            if input.shape[2:] != mask.shape[2:]:
                _warn(f"Spatial size of input ({input.shape}) is different from mask ({mask.shape}).", stacklevel=2)
        return super().forward(input * mask, target * mask)


generalized_dice_focal_loss = functional_form(GeneralizedDiceFocalLoss, "generalized_dice_focal_loss")
masked_dice_loss = functional_form(MaskedDiceLoss, "masked_dice_loss", forward_kwargs=("mask",))
