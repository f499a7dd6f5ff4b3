"""clDice (Shit et al., CVPR 2021) with MONAI 1.6.1's names, arguments, defaults and results:
``SoftclDiceLoss`` and ``SoftDiceclDiceLoss``.

The soft skeletons of the prediction and of the target come from :func:`fastloss.ops.soft_skeleton.soft_skeleton`
(compiled on CPU tensors; its backward recomputes the iteration instead of keeping MONAI's per-iteration
pooling tensors and indices), and the four sums of the formula from the statistics pass
(:func:`fastloss.ops.stats.class_stats`, columns ``Σ a·b`` and ``Σ a``/``Σ b`` of skeleton and map).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import nn

from .._validation import FloatLabelsError, ShapeMismatchError, Target
from ..ops.soft_skeleton import check_iterations, soft_skeleton
from ..ops.stats import StatsSpec, activate, class_stats, compute_dtype
from ._common import LossBase, functional_form
from .region import DiceLoss

__all__ = ["SoftclDiceLoss", "SoftDiceclDiceLoss", "soft_cl_dice_loss", "soft_dice_cl_dice_loss"]


class SoftclDiceLoss(LossBase):
    r"""Soft clDice loss; MONAI 1.6.1 ``SoftclDiceLoss``.

    With ``p`` the activated prediction, ``g`` the (one-hot) target and ``S(·)`` MONAI's soft skeleton with
    ``iter_`` iterations, summed over classes and voxels of each batch item:

    .. math::
        T_{prec} = \frac{\sum S(p)\,g + s_{nr}}{\sum S(p) + s_{dr}},\quad
        T_{sens} = \frac{\sum S(g)\,p + s_{nr}}{\sum S(g) + s_{dr}},\quad
        L = 1 - \frac{2\,T_{prec} T_{sens}}{T_{prec} + T_{sens} + s}

    ``reduction="none"`` gives ``(B,)``. ``include_background=False`` drops channel 0 after the activation.

    Args:
        iter_: skeleton iterations (3), a non-negative int.
        smooth_nr, smooth_dr: numerator / denominator smoothing of the two ratios (1.0 each).
        smooth: added to the harmonic mean's denominator (1e-4), ``> 0``.
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction: as MONAI. Integer labels
            ``(B, 1, *spatial)`` / ``(B, *spatial)`` are accepted whatever ``to_onehot_y`` says.

    Raises:
        TypeError: ``iter_`` not an int, ``other_act`` not callable, non-float input.
        ValueError: a negative ``iter_``, ``smooth <= 0``, several activations, an unknown ``reduction``, an
            input without 2 or 3 spatial dims, a target of the wrong shape (also an ``AssertionError``, as MONAI's).

    Example:
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16))
        >>> SoftclDiceLoss(softmax=True, to_onehot_y=True)(x, y).backward()
    """

    def __init__(
        self,
        iter_: int = 3,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        smooth: float = 1e-4,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, other_act=other_act, reduction=reduction)
        self.iter = check_iterations(iter_)
        if isinstance(smooth, bool) or not isinstance(smooth, (int, float)):
            raise TypeError(f"smooth must be a real number, got {type(smooth).__name__}")
        if not smooth > 0:
            raise ValueError(f"smooth must be a positive value but got {smooth}.")
        self.smooth = float(smooth)
        self.smooth_nr = float(smooth_nr)
        self.smooth_dr = float(smooth_dr)

    def per_item(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ``(B,)`` clDice losses before the reduction."""
        if isinstance(input, torch.Tensor) and input.ndim not in (4, 5):
            raise ValueError(f"input must have shape (B, C, H, W) or (B, C, H, W, D) (the soft skeleton is 2D or 3D), "
                             f"got shape {tuple(input.shape)}")
        try:
            prep = self.prepare(input, target)
        except ShapeMismatchError as err:
            if isinstance(err, FloatLabelsError):
                raise
            # MONAI's words first ("ground truth has different shape"), then ours
            raise ShapeMismatchError(
                f"ground truth has different shape ({tuple(target.shape)}) from input ({tuple(input.shape)}): {err}"
            ) from None
        dt = compute_dtype(input)
        x = prep.input
        p = activate(x.to(dt), prep.activation)
        B, C = p.shape[:2]
        spatial = tuple(p.shape[2:])
        g = prep.target.dense(dt).reshape((B, C) + spatial)
        if not self.include_background and C > 1:
            p, g = p[:, 1:], g[:, 1:]
        elif not self.include_background and not torch.compiler.is_compiling():
            import warnings

            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
        Cs = p.shape[1]
        skel_pred = soft_skeleton(p, self.iter)
        skel_true = soft_skeleton(g, self.iter)
        flat = (B, Cs, -1)
        # Σ S(p)·g and Σ S(p): the skeleton as the prediction, the target as the target
        s1 = class_stats(skel_pred.reshape(flat), Target(None, g.reshape(flat), None, Cs, spatial),
                         StatsSpec("none", ("pg", "p")))
        # Σ S(g)·p and Σ S(g): the prediction against the target's skeleton
        s2 = class_stats(p.reshape(flat), Target(None, skel_true.reshape(flat), None, Cs, spatial),
                         StatsSpec("none", ("pg", "g")))
        s1, s2 = s1.sum(dim=1), s2.sum(dim=1)  # over classes: per batch item
        tprec = (s1[:, 0] + self.smooth_nr) / (s1[:, 1] + self.smooth_dr)
        tsens = (s2[:, 0] + self.smooth_nr) / (s2[:, 1] + self.smooth_dr)
        return 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens + self.smooth)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` ``(B, C, H, W[, D])``; ``target`` labels or one-hot. See the class doc."""
        f = self.per_item(input, target)
        if self.reduction == "mean":
            return f.mean()
        if self.reduction == "sum":
            return f.sum()
        return f

    def extra_repr(self) -> str:
        return super().extra_repr() + f", iter_={self.iter}, smooth={self.smooth}"


class SoftDiceclDiceLoss(nn.Module):
    r"""Dice + soft clDice; MONAI 1.6.1 ``SoftDiceclDiceLoss``: ``(1 − alpha)·Dice + alpha·clDice``, with
    :class:`fastloss.DiceLoss` (``smooth_nr``/``smooth_dr`` shared, MONAI's defaults of 1.0) and
    :class:`SoftclDiceLoss`. With ``reduction="none"`` the two parts' shapes (``(B, C, 1, ...)`` and ``(B,)``)
    broadcast as in MONAI.

    Args:
        iter_, smooth_nr, smooth_dr, smooth, include_background, to_onehot_y, sigmoid, softmax, other_act,
            reduction: as :class:`SoftclDiceLoss`.
        alpha: the clDice weight in ``[0, 1]`` (0.5).

    Raises:
        ValueError: ``alpha`` outside ``[0, 1]``; input and target with different numbers of dims, or a target
            whose channel count is neither 1 nor the input's (MONAI's messages); and :class:`SoftclDiceLoss`'s.

    Example:
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16))
        >>> SoftDiceclDiceLoss(softmax=True, to_onehot_y=True)(x, y).backward()
    """

    def __init__(
        self,
        iter_: int = 3,
        alpha: float = 0.5,
        smooth_nr: float = 1.0,
        smooth_dr: float = 1.0,
        smooth: float = 1e-4,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
    ) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1] but got {alpha}.")
        common = dict(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                      softmax=softmax, other_act=other_act, reduction=reduction, smooth_nr=smooth_nr,
                      smooth_dr=smooth_dr)
        self.dice = DiceLoss(**common)
        self.cldice = SoftclDiceLoss(iter_=iter_, smooth=smooth, **common)
        self.alpha = float(alpha)
        self.to_onehot_y = bool(to_onehot_y)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """See the class doc."""
        if not isinstance(input, torch.Tensor) or not isinstance(target, torch.Tensor):
            raise TypeError(f"input and target must be torch.Tensors, got {type(input).__name__} and {type(target).__name__}")
        if input.dim() != target.dim():
            raise ValueError(
                "the number of dimensions for input and target should be the same, "
                f"got shape {input.shape} and {target.shape}."
            )
        if target.shape[1] != 1 and target.shape[1] != input.shape[1]:
            raise ValueError(
                "number of channels for target is neither 1 nor the same as input, "
                f"got shape {input.shape} and {target.shape}."
            )
        dice = self.dice(input, target)
        cldice = self.cldice(input, target)
        return (1.0 - self.alpha) * dice + self.alpha * cldice


soft_cl_dice_loss = functional_form(SoftclDiceLoss, "soft_cl_dice_loss")
soft_dice_cl_dice_loss = functional_form(SoftDiceclDiceLoss, "soft_dice_cl_dice_loss")
