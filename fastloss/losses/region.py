"""Region-based losses (Ma et al. 2021, Section 2.2), each a formula of per-(batch, class) voxel sums.

Every loss here makes one call to :func:`fastloss.ops.stats.class_stats` (the fused statistics pass: Triton
on CUDA tensors, compiled C++ on CPU tensors, torch ops under ``FASTLOSS_BACKEND=torch``) and evaluates its
formula on the tiny ``(B, C, K)`` result: in one fused call where ``losses/_fused.py`` covers the
configuration (the Triton kernel or its C++ twin), otherwise with a handful of torch ops, which autograd
differentiates back through the statistics.

Notation: ``p`` the activated prediction, ``g`` the target, both multiplied by the ignore mask;
sums run over the voxels (and over the batch with ``batch=True``). With MONAI's naming,
``tp = Σ p·g``, ``fp = Σ p·(1 − g) = Σp − tp``, ``fn = Σ (1 − p)·g = Σg − tp``.

``soft_label=True`` and ``squared_pred=True`` use MONAI's norm formulation (Wang et al., 2023):
``tp = (‖p‖ + ‖g‖ − ‖p − g‖) / 2`` with L1 norms (``Σ|p|``, ``Σ|g|``, ``Σ|p − g|``) or squared L2 norms
(``Σp²``, ``Σg²``, ``Σ(p − g)²``, whence ``tp = Σp·g``, ``fp = Σp² − tp``, ``fn = Σg² − tp``), and
``fp = ‖p‖ − tp``, ``fn = ‖g‖ − tp``. For hard labels and probabilities the L1 form equals the plain one.

Gradients: autograd differentiates each formula with respect to the ``(B, C, K)`` sums (a few scalars per
class, e.g. for Dice ``∂L/∂Σpg = −2/den``, ``∂L/∂Σp = num/den²``), and the statistics op turns
``∂L/∂sums`` into ``∂L/∂logits`` (``Σ_k ∂L/∂S_k · ∂s_k/∂p`` through the softmax/sigmoid Jacobian), by autograd
on the torch backend and in the backward kernel on the Triton and compiled ones.
"""

from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..ops.stats import StatsSpec, class_stats, compute_dtype
from ._common import (
    LossBase,
    apply_class_weight,
    check_bool,
    check_nonneg,
    functional_form,
    pool_flat,
    reduce_loss,
    reduce_pooled,
)
from . import _fused

__all__ = [
    "DiceLoss",
    "IoULoss",
    "TverskyLoss",
    "GeneralizedDiceLoss",
    "FocalTverskyLoss",
    "AsymmetricSimilarityLoss",
    "PenaltyGeneralizedDiceLoss",
    "SensitivitySpecificityLoss",
    "dice_loss",
    "iou_loss",
    "tversky_loss",
    "generalized_dice_loss",
    "focal_tversky_loss",
    "asymmetric_similarity_loss",
    "penalty_generalized_dice_loss",
    "sensitivity_specificity_loss",
]

W_TYPES = ("square", "simple", "uniform")


def _check_w_type(w_type) -> str:
    w_type = getattr(w_type, "value", w_type)  # MONAI's Weight enum
    if w_type not in W_TYPES:
        raise ValueError(f"w_type must be one of {list(W_TYPES)}, got {w_type!r}")
    return w_type


class OverlapLoss(LossBase):
    """Shared part of the Dice/Tversky families: smoothing terms and the (tp, fp, fn) statistics."""

    def __init__(self, *, smooth_nr: float, smooth_dr: float, soft_label: bool = False, **kwargs) -> None:
        super().__init__(**kwargs)
        self.smooth_nr = check_nonneg(smooth_nr, "smooth_nr")
        self.smooth_dr = check_nonneg(smooth_dr, "smooth_dr")
        self.soft_label = check_bool(soft_label, "soft_label")

    def overlap_terms(self, input: torch.Tensor, target: torch.Tensor, *, squared: bool = False):
        """``(tp, fp, fn, gsum, spatial_ndim)``, each ``(B, C')`` (``(C',)`` with ``batch=True``).

        ``gsum = Σg`` (the masked target volume, used by the generalized Dice weights).
        """
        prep = self.prepare(input, target)
        norm1 = self.soft_label and not squared
        if squared:
            cols = ("pg", "pp", "gg", "g")
        elif norm1:
            cols = ("p", "g", "absdiff")
        else:
            cols = ("pg", "p", "g")
        stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, cols))
        if norm1:
            # L1 norms need Σ|p| and Σ|g|. After a sigmoid/softmax p >= 0, and label targets are >= 0, so the
            # plain sums serve; raw/other_act predictions and soft targets may be negative: sum |.| (one more
            # pass, only on this path). |p·m| = |p|·m for a mask m >= 0.
            extra = []
            if prep.activation == "none":
                pabs = class_stats(prep.input.abs(), prep.target, StatsSpec("none", ("p",)))
                extra.append(pabs)
            else:
                extra.append(stats[..., 0:1])  # Σp
            if prep.target.soft is not None:
                extra.append(prep.target.dense(compute_dtype(input)).abs().sum(dim=2).unsqueeze(-1))
            else:
                extra.append(stats[..., 1:2])  # Σg
            stats = torch.cat([stats] + extra, dim=-1)
        s = self.reduce_stats(stats)
        if squared:
            pg, pp, gg, g = s.unbind(-1)
            tp, fp, fn = pg, pp - pg, gg - pg
        elif norm1:
            _, g, absdiff, pabs, gabs = s.unbind(-1)
            tp = (pabs + gabs - absdiff) / 2
            fp, fn = pabs - tp, gabs - tp
        else:
            pg, p, g = s.unbind(-1)
            tp, fp, fn = pg, p - pg, g - pg
        return tp, fp, fn, g, prep.spatial_ndim

    def extra_repr(self) -> str:
        return super().extra_repr() + f", smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}"


# ------------------------------------------------------------------------------------------------ Dice / IoU
class DiceLoss(OverlapLoss):
    r"""Soft Dice loss (Eqs. 8 and 9), with MONAI 1.6's signature, defaults and results.

    Per batch item ``b`` (all items together with ``batch=True``) and class ``c``:

    .. math::
        L_{b,c} = 1 - \frac{2\,tp + s_{nr}}{2\,tp + fp + fn + s_{dr}}
        = 1 - \frac{2\sum p g + s_{nr}}{\sum p + \sum g + s_{dr}}

    (Eq. 9; ``squared_pred=True`` gives Eq. 8's ``Σp² + Σg²``; ``jaccard=True`` gives the soft IoU
    ``1 − (2tp + s_nr)/(2(tp + fp + fn) + s_dr)``), times ``weight[c]``, then ``reduction`` over ``(B, C)``.

    Args:
        include_background: if False, class 0 is excluded (after the activation).
        to_onehot_y: MONAI compatibility: integer labels ``(B, 1, *sp)``/``(B, *sp)`` are accepted whatever
            its value; float label maps need it.
        sigmoid: apply a sigmoid to the input.
        softmax: apply a softmax over the classes (ignored with a warning for one channel, as MONAI).
        other_act: any other activation, a callable applied to the input.
        squared_pred: squared terms in the denominator (Eq. 8).
        jaccard: compute the soft Jaccard (IoU) loss instead.
        reduction: ``"none"`` (shape ``(B, C, 1, ...)``), ``"mean"`` or ``"sum"``.
        smooth_nr: added to the numerator.
        smooth_dr: added to the denominator.
        batch: sum the statistics over the batch before dividing (batch Dice).
        weight: per-class weights (a number or one value per class left after ``include_background``).
        soft_label: the L1-norm formulation, exact for soft targets.
        ignore_index: labels equal to it are excluded; for one-hot targets a class index masks that class's
            voxels and any other value masks all-zero voxels (MONAI's rule).
        regions: region-based training (nnU-Net's BraTS-style regions; not in MONAI): a sequence of label
            sets, one per channel (``[[1, 2, 3], [2, 3], [3]]``), with ``sigmoid=True``. The target is then
            integer labels and channel ``r``'s target is 1 where the label is in ``regions[r]``, read through a
            label-to-regions table: no one-hot region tensor is built. Every loss of this module takes it.

    Raises:
        TypeError: ``other_act`` not callable; non-float input; float labels without ``to_onehot_y``.
        ValueError: several activations; bad ``reduction``; negative smoothing or weights; input and target
            shapes that do not match; labels outside ``[0, C)`` other than ``ignore_index``; a ``weight``
            of the wrong length.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import DiceLoss
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> loss = DiceLoss(to_onehot_y=True, softmax=True)(logits, labels)
        >>> loss.backward()
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
        weight: Optional[Sequence[float] | float | int | torch.Tensor] = None,
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            batch=batch,
            weight=weight,
            ignore_index=ignore_index,
            regions=regions,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            soft_label=soft_label,
        )
        self.squared_pred = check_bool(squared_pred, "squared_pred")
        self.jaccard = check_bool(jaccard, "jaccard")

    _accepts_flat = True  # (B, C) inputs, as MONAI's DiceLoss: see forward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fused = _fused.dice(self, input, target)
        if fused is not None:
            return fused
        tp, fp, fn, _, nsp = self.overlap_terms(input, target, squared=self.squared_pred)
        pooled = nsp == 0 and not self.batch
        if pooled:
            # (B, C) input without batch=True: MONAI's sums over no spatial dim pool batch and classes
            ncls = tp.shape[-1]
            tp, fp, fn = pool_flat(tp, fp, fn, batch=False)
        # Dice: 2tp + fp + fn = Σp + Σg (or Σp² + Σg²); Jaccard: 2(tp + fp + fn) = 2·|union|.
        union = tp + fp + fn if self.jaccard else tp + 0.5 * (fp + fn)
        f = 1.0 - (2.0 * tp + self.smooth_nr) / (2.0 * union + self.smooth_dr)
        if pooled:
            return reduce_pooled(f.expand(ncls), self.class_weight, self.reduction)
        f = apply_class_weight(f, self.class_weight)
        return reduce_loss(f, self.reduction, nsp, broadcast=True)


class IoULoss(DiceLoss):
    r"""Soft IoU (Jaccard) loss, Eq. 10 (Rahman and Wang, 2016).

    .. math::
        L_{b,c} = 1 - \frac{2\sum p g + s_{nr}}{2\sum (g + p - g p) + s_{dr}}

    i.e. Eq. 10, ``Σpg / Σ(g + p − gp)``, with the smoothing terms halved; this is exactly
    ``DiceLoss(jaccard=True)`` (and MONAI's), with the same arguments but ``jaccard``.
    ``Σ(g + p − gp) = tp + fp + fn``, the soft union.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, reduction, smooth_nr,
        smooth_dr, batch, weight, soft_label, ignore_index: as :class:`DiceLoss`.

    Raises:
        TypeError, ValueError: as :class:`DiceLoss`.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import IoULoss
        >>> loss = IoULoss(softmax=True)(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        squared_pred: bool = False,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Optional[Sequence[float] | float | int | torch.Tensor] = None,
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            squared_pred=squared_pred,
            jaccard=True,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=weight,
            soft_label=soft_label,
            ignore_index=ignore_index,
            regions=regions,
        )


# ---------------------------------------------------------------------------------------------- Tversky family
def _tversky_index(tp, fp, fn, alpha: float, beta: float, smooth_nr: float, smooth_dr: float):
    # T = (tp + s_nr) / (tp + α·fp + β·fn + s_dr)
    return (tp + smooth_nr) / (tp + alpha * fp + beta * fn + smooth_dr)


class _TverskyFamily(OverlapLoss):
    """Tversky-index losses: ``alpha`` on false positives, ``beta`` on false negatives, optional class weight."""

    def __init__(self, *, alpha: float, beta: float, **kwargs) -> None:
        super().__init__(**kwargs)
        self.alpha = check_nonneg(alpha, "alpha")
        self.beta = check_nonneg(beta, "beta")

    def per_class(self, input: torch.Tensor, target: torch.Tensor):
        """The ``(B, C')`` Tversky losses before weighting and reduction, and the number of spatial dims."""
        tp, fp, fn, _, nsp = self.overlap_terms(input, target)
        return 1.0 - _tversky_index(tp, fp, fn, self.alpha, self.beta, self.smooth_nr, self.smooth_dr), nsp

    def extra_repr(self) -> str:
        return super().extra_repr() + f", alpha={self.alpha}, beta={self.beta}"


class TverskyLoss(_TverskyFamily):
    r"""Tversky loss (Eq. 14, Salehi et al. 2017) with MONAI 1.6's signature, defaults and results.

    .. math::
        L_{b,c} = 1 - \frac{tp + s_{nr}}{tp + \alpha\,fp + \beta\,fn + s_{dr}},\quad
        fp = \sum p(1-g),\ fn = \sum (1-p) g

    ``alpha`` weighs false positives, ``beta`` false negatives (the paper uses α = 0.3, β = 0.7, which
    ``fastloss.get_loss("Tversky")`` sets). ``reduction="none"`` returns the ``(B, C)`` values (``(C,)`` with
    ``batch=True``) like MONAI's TverskyLoss (no trailing spatial dims).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act: as :class:`DiceLoss`.
        alpha: weight of the false positives (>= 0).
        beta: weight of the false negatives (>= 0).
        reduction, smooth_nr, smooth_dr, batch, soft_label, ignore_index: as :class:`DiceLoss`.

    Raises:
        TypeError, ValueError: as :class:`DiceLoss`; negative or non-finite ``alpha``/``beta``.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import TverskyLoss
        >>> loss = TverskyLoss(softmax=True, alpha=0.3, beta=0.7)(torch.randn(2, 4, 16, 16), torch.randint(0, 4, (2, 1, 16, 16)))
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        alpha: float = 0.5,
        beta: float = 0.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            alpha=alpha,
            beta=beta,
            reduction=reduction,
            batch=batch,
            ignore_index=ignore_index,
            regions=regions,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            soft_label=soft_label,
        )

    _accepts_flat = True  # (B, C) inputs, as MONAI's TverskyLoss: see forward

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fused = _fused.tversky(self, input, target)
        if fused is not None:
            return fused
        tp, fp, fn, _, nsp = self.overlap_terms(input, target)
        if nsp == 0 and not self.batch:
            # (B, C) input without batch=True: MONAI pools batch and classes into one Tversky index (pool_flat)
            tp, fp, fn = pool_flat(tp, fp, fn, batch=False)
        f = 1.0 - _tversky_index(tp, fp, fn, self.alpha, self.beta, self.smooth_nr, self.smooth_dr)
        return reduce_loss(f, self.reduction, nsp, broadcast=False)


class FocalTverskyLoss(_TverskyFamily):
    r"""Focal Tversky loss, Eq. 16 (Abraham and Khan, 2019).

    Two readings of the multi-class loss, chosen by ``per_class_power``:

    .. math::
        \text{per class (default):}\quad L_{b,c} = T_{b,c}^{1/\gamma};\qquad
        \text{Eq. 16 (}\texttt{per\_class\_power=False}\text{):}\quad
        L_b = \Big(\frac{1}{C'} \sum_c T_{b,c}\Big)^{1/\gamma},\qquad
        T_{b,c} = 1 - \frac{tp + s_{nr}}{tp + \alpha\,fp + \beta\,fn + s_{dr}}

    - ``per_class_power=True`` (default): each class's Tversky loss is raised to ``1/γ``, times ``weight[c]``,
      then ``reduction`` over ``(B, C)`` (Abraham and Khan's multi-class code sums ``(1 − TI_c)^{1/γ}`` over
      classes). ``reduction="none"`` returns ``(B, C)`` like :class:`TverskyLoss`.
    - ``per_class_power=False``: Eq. (16) as printed, ``L_FTL = (L_Tversky)^{1/γ}`` with ``L_Tversky`` the
      class-averaged Tversky loss (``weight[c]`` multiplies ``T_{b,c}`` inside the mean), one value per batch
      item (per batch with ``batch=True``), then ``reduction``; ``"none"`` returns ``(B, 1)`` (``(1,)`` with
      ``batch=True``). This is the paper's configuration (``fastloss.get_loss("FocalTversky")``, with
      ``batch=True``: the paper's code raises the batch Tversky loss averaged over the foreground classes).
      The two readings agree for one class and differ for several: the mean of powers is not the power of
      the mean.

    Defaults follow Abraham and Khan: ``γ = 4/3`` and the Tversky weights ``0.7`` on false negatives,
    ``0.3`` on false positives (our ``alpha`` weighs FP and ``beta`` FN, as :class:`TverskyLoss`). The base is
    clamped at 0 (with ``s_nr > s_dr`` it can dip just below) and its derivative there is taken as 0: at a
    perfect prediction ``1/γ < 1`` would give ``d(x^{1/γ})/dx = ∞``.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr, smooth_dr, batch,
        soft_label, ignore_index: as :class:`DiceLoss`.
        alpha: weight of the false positives (>= 0), default 0.3.
        beta: weight of the false negatives (>= 0), default 0.7.
        gamma: focal parameter (> 0; the paper's range is [1, 3]), default 4/3.
        weight: per-class weights, as :class:`DiceLoss`.
        per_class_power: True (default) raises each class's Tversky loss to ``1/γ``; False raises the
            class-averaged Tversky loss, Eq. (16).

    Raises:
        TypeError, ValueError: as :class:`TverskyLoss`; ``gamma <= 0``; ``per_class_power`` not a bool.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import FocalTverskyLoss
        >>> x, y = torch.randn(2, 3, 8, 8, 8), torch.randint(0, 3, (2, 8, 8, 8))
        >>> per_class = FocalTverskyLoss(softmax=True)(x, y)
        >>> eq16 = FocalTverskyLoss(softmax=True, batch=True, per_class_power=False)(x, y)
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        alpha: float = 0.3,
        beta: float = 0.7,
        gamma: float = 4.0 / 3.0,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Optional[Sequence[float] | float | int | torch.Tensor] = None,
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        per_class_power: bool = True,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            alpha=alpha,
            beta=beta,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            soft_label=soft_label,
            ignore_index=ignore_index,
            regions=regions,
            weight=weight,
        )
        self.gamma = check_nonneg(gamma, "gamma", positive=True)
        self.per_class_power = check_bool(per_class_power, "per_class_power")

    def _focal_power(self, f: torch.Tensor) -> torch.Tensor:
        # d(x^{1/γ})/dx = x^{1/γ−1}/γ; clamp_min passes no gradient where x <= 0 (the minimum). ~(f <= 0)
        # rather than f > 0: a NaN class loss stays NaN (the NaN decision of the README), not 0.
        pos = ~(f <= 0)
        f = torch.where(pos, f.clamp_min(torch.finfo(f.dtype).tiny), torch.ones_like(f)) ** (1.0 / self.gamma)
        return torch.where(pos, f, torch.zeros_like(f))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f, nsp = self.per_class(input, target)
        if self.per_class_power:
            f = apply_class_weight(self._focal_power(f), self.class_weight)
        else:
            # Eq. (16): the power of the (weighted) class mean, one value per group: (B, 1) or (1,).
            f = self._focal_power(apply_class_weight(f, self.class_weight).mean(dim=-1, keepdim=True))
        return reduce_loss(f, self.reduction, nsp, broadcast=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", gamma={self.gamma}, per_class_power={self.per_class_power}"


class AsymmetricSimilarityLoss(_TverskyFamily):
    r"""Asymmetric similarity loss, Eq. 17 (Hashemi et al., 2019): one minus the F-β score.

    .. math::
        L_{b,c} = 1 - \frac{tp + s_{nr}}{tp + \frac{\beta^2}{1+\beta^2} fn + \frac{1}{1+\beta^2} fp + s_{dr}}

    i.e. a Tversky loss with ``α = 1/(1 + β²)`` on false positives and ``β²/(1 + β²)`` on false negatives
    (the paper's Eq. 17 prints the ratio; the loss is one minus it). Per batch item and class, times
    ``weight[c]``, then ``reduction`` (``"none"`` returns ``(B, C)``). β = 1.5 as recommended by Hashemi et al.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr, smooth_dr, batch,
        weight, soft_label, ignore_index: as :class:`DiceLoss`.
        beta: the F-β parameter (>= 0), default 1.5; ``beta > 1`` weighs false negatives more.

    Raises:
        TypeError, ValueError: as :class:`DiceLoss`; negative or non-finite ``beta``.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import AsymmetricSimilarityLoss
        >>> loss = AsymmetricSimilarityLoss(softmax=True)(torch.randn(2, 2, 32, 32), torch.randint(0, 2, (2, 32, 32)))
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        beta: float = 1.5,
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        weight: Optional[Sequence[float] | float | int | torch.Tensor] = None,
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        b = check_nonneg(beta, "beta")
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            alpha=1.0 / (1.0 + b * b),
            beta=b * b / (1.0 + b * b),
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            soft_label=soft_label,
            ignore_index=ignore_index,
            regions=regions,
            weight=weight,
        )
        self.f_beta = b

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        f, nsp = self.per_class(input, target)
        f = apply_class_weight(f, self.class_weight)
        return reduce_loss(f, self.reduction, nsp, broadcast=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", f_beta={self.f_beta}"


# ------------------------------------------------------------------------------------- generalized Dice family
def _class_weights(gsum: torch.Tensor, w_type: str, batch: bool) -> torch.Tensor:
    """Sudre et al.'s class weights from the target volumes ``gsum`` (``(B, C)`` or ``(C,)``).

    ``square``: 1/(Σg)², ``simple``: 1/Σg, ``uniform``: 1. An absent class (Σg = 0, weight ∞) gets the largest
    finite weight of its batch item (of the batch with ``batch=True``), MONAI's rule; if every class is absent
    all weights are 0 and the loss is ``1 − s_nr/s_dr``.
    """
    if w_type == "simple":
        w = torch.reciprocal(gsum)
    elif w_type == "square":
        w = torch.reciprocal(gsum * gsum)
    else:
        return torch.ones_like(gsum)
    infs = torch.isinf(w)
    w = torch.where(infs, torch.zeros_like(w), w)
    wmax = w.max() if batch else w.max(dim=1, keepdim=True).values
    return torch.where(infs, wmax.expand_as(w), w)


def _generalized_dice_score(tp, fp, fn, gsum, w_type, batch, smooth_nr, smooth_dr, weight_dtype=None,
                            smooth_relative=False):
    """GD = (2 Σ_c w_c tp_c + s_nr·W) / (Σ_c w_c (2tp_c + fp_c + fn_c) + s_dr·W), ``(B, 1)`` or ``(1,)``.

    ``W = 1`` (MONAI), or with ``smooth_relative`` the weighted target volume ``W = Σ_c w_c Σg_c`` (1 where it
    is 0, i.e. every class absent). Scaling every voxel sum by ``t`` (the same pattern tiled ``t`` times)
    scales ``w_c = 1/(Σg_c)²`` by ``1/t²``, so each weighted sum and ``W`` by ``1/t``: the ratio, smoothing
    included, does not change (for ``simple``/``uniform`` weights the sums and ``W`` scale alike too).
    """
    g = gsum if weight_dtype is None else gsum.to(weight_dtype)
    w = _class_weights(g, w_type, batch).to(tp.dtype)
    dim = 0 if batch else 1
    numer = 2.0 * (tp * w).sum(dim, keepdim=True)
    denom = ((2.0 * tp + fp + fn) * w).sum(dim, keepdim=True)
    if smooth_relative:
        scale = (gsum.to(tp.dtype) * w).sum(dim, keepdim=True)
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        return (numer + smooth_nr * scale) / (denom + smooth_dr * scale)
    return (numer + smooth_nr) / (denom + smooth_dr)


class GeneralizedDiceLoss(OverlapLoss):
    r"""Generalized Dice loss, Eq. 15 (Sudre et al., 2017), with MONAI 1.6's signature, defaults and results.

    .. math::
        L_b = 1 - \frac{2\sum_c w_c\, tp_c + s_{nr}}{\sum_c w_c (2 tp_c + fp_c + fn_c) + s_{dr}},
        \quad w_c = 1/(\textstyle\sum_i g_{i}^c)^2

    per batch item (classes summed inside; all items together with ``batch=True``). ``w_type="simple"`` uses
    ``1/Σg``, ``"uniform"`` 1. An absent class gets the largest weight of the others (MONAI's rule, see
    ``_class_weights``); like MONAI the weights are computed in float32. ``reduction="none"`` gives
    ``(B, 1, 1, ...)`` (``(1, 1, ...)`` with ``batch=True``).

    Smoothing: with MONAI's signature (``smooth_relative=False``) ``s_nr``/``s_dr`` are added to the weighted
    sums as they are. Those sums are ~``1/Σg``, themselves ~1e-5 at realistic patch sizes, so the default
    1e-5 dominates them and the loss drifts with the patch size (kept for MONAI parity). With
    ``smooth_relative=True`` both are multiplied by the weighted target volume ``W = Σ_c w_c Σ_i g_i^c``
    (which scales like the weighted sums), so they stay a relative 1e-5 and the loss does not depend on the
    patch size: ``(2Σ_c w_c tp_c + s_nr W) / (Σ_c w_c (2tp_c + fp_c + fn_c) + s_dr W)``; the weights are
    then computed in the compute dtype. That is the paper's configuration (``fastloss.get_loss("GDice")``:
    all classes, batch, relative smoothing), whose Eq. (15) has no smoothing at all.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, smooth_nr, smooth_dr, batch,
        soft_label: as :class:`DiceLoss`.
        w_type: ``"square"``, ``"simple"`` or ``"uniform"``.
        ignore_index: as :class:`DiceLoss` (an addition to MONAI's signature, after its arguments).
        smooth_relative: scale the smoothing by the weighted target volume (see above); default False
            (MONAI's behaviour).

    Raises:
        TypeError, ValueError: as :class:`DiceLoss`; an unknown ``w_type``; ``smooth_relative`` not a bool.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import GeneralizedDiceLoss
        >>> loss = GeneralizedDiceLoss(softmax=True)(torch.randn(2, 4, 8, 8, 8), torch.randint(0, 4, (2, 1, 8, 8, 8)))
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
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        smooth_relative: bool = False,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            batch=batch,
            ignore_index=ignore_index,
            regions=regions,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            soft_label=soft_label,
        )
        self.w_type = _check_w_type(w_type)
        self.smooth_relative = check_bool(smooth_relative, "smooth_relative")

    # MONAI computes the weights from `ground_o.float()`; float64 inputs thus get float32-rounded weights.
    _weight_dtype = torch.float32

    def score(self, input: torch.Tensor, target: torch.Tensor):
        """The generalized Dice score (``(B, 1)`` or ``(1,)``) and the number of spatial dims."""
        tp, fp, fn, gsum, nsp = self.overlap_terms(input, target)
        # float32 weights only where MONAI's results are matched (not with the relative smoothing)
        wdt = None if self.smooth_relative else self._weight_dtype
        gd = _generalized_dice_score(
            tp, fp, fn, gsum, self.w_type, self.batch, self.smooth_nr, self.smooth_dr, wdt, self.smooth_relative
        )
        return gd, nsp

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fused = _fused.generalized_dice(self, input, target)  # CPU: one C++ call
        if fused is not None:
            return fused
        gd, nsp = self.score(input, target)
        return reduce_loss(1.0 - gd, self.reduction, nsp, broadcast=True)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w_type={self.w_type!r}, smooth_relative={self.smooth_relative}"


class PenaltyGeneralizedDiceLoss(GeneralizedDiceLoss):
    r"""Penalty (generalized Dice) loss, Eq. 18 (Su et al., 2019).

    .. math::
        L_b = 1 - \frac{GD_b}{1 + k\,(1 - GD_b)}

    with ``GD_b`` the smoothed generalized Dice score of :class:`GeneralizedDiceLoss` (``w_c = 1/(Σg)²`` by
    default, absent classes handled as there, weights in the compute dtype). Equivalent to adding
    ``k·Σ_c w_c (fp_c + fn_c)`` to the denominator of GD. ``k = 0`` is the generalized Dice loss; ``k = 2.5``
    (Su et al.'s best) is the default. ``reduction="none"`` gives ``(B, 1, 1, ...)``.

    The paper's configuration (``fastloss.get_loss("pGDice")``) is that of ``get_loss("GDice")`` (all classes,
    batch, ``smooth_relative=True``) with ``k = 2.5``.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, w_type, reduction, smooth_nr, smooth_dr,
        batch, soft_label, ignore_index, smooth_relative: as :class:`GeneralizedDiceLoss`.
        k: the non-negative penalty coefficient.

    Raises:
        TypeError, ValueError: as :class:`GeneralizedDiceLoss`; a negative or non-finite ``k``.

    Example:
        >>> import torch
        >>> from fastloss.losses.region import PenaltyGeneralizedDiceLoss
        >>> loss = PenaltyGeneralizedDiceLoss(softmax=True)(torch.randn(2, 3, 16, 16), torch.randint(0, 3, (2, 16, 16)))
    """

    _weight_dtype = None

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        k: float = 2.5,
        w_type: str = "square",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        soft_label: bool = False,
        ignore_index: Optional[int] = None,
        smooth_relative: bool = False,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
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
            soft_label=soft_label,
            ignore_index=ignore_index,
            regions=regions,
            smooth_relative=smooth_relative,
        )
        self.k = check_nonneg(k, "k")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gd, nsp = self.score(input, target)
        pgd = gd / (1.0 + self.k * (1.0 - gd))
        return reduce_loss(1.0 - pgd, self.reduction, nsp, broadcast=True)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", k={self.k}"


# ---------------------------------------------------------------------------------- sensitivity-specificity
class SensitivitySpecificityLoss(LossBase):
    r"""Sensitivity-specificity loss, Eq. 7 (Brosch et al., 2015).

    .. math::
        L_b = w\,\frac{\sum_c\sum_i (g - p)^2 g + s_{nr}}{\sum_c\sum_i g + s_{dr}}
            + (1 - w)\,\frac{\sum_c\sum_i (g - p)^2 (1 - g) + s_{nr}}{\sum_c\sum_i (1 - g) + s_{dr}}

    summed over the classes kept by ``include_background`` and the voxels of each batch item (of the whole
    batch with ``batch=True``); ignored voxels count in neither sum. ``s_dr`` is Eq. 7's ε; ``s_nr``
    (default 0) keeps a sample with no foreground at zero sensitivity error. ``w`` weighs the sensitivity
    term: Brosch et al. report that values of this "sensitivity ratio" in 0.01-0.10 behave alike; 0.05 is the
    NiftyNet default that implementations of the paper follow. ``reduction="none"`` gives ``(B, 1, 1, ...)``.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch, ignore_index: as
            :class:`DiceLoss`.
        w: weight of the sensitivity term, in [0, 1] (the specificity term gets ``1 − w``).
        smooth_nr: added to both numerators (>= 0).
        smooth_dr: Eq. 7's ε, added to both denominators (>= 0).

    Raises:
        TypeError, ValueError: as :class:`DiceLoss`; ``w`` outside [0, 1].

    Example:
        >>> import torch
        >>> from fastloss.losses.region import SensitivitySpecificityLoss
        >>> loss = SensitivitySpecificityLoss(softmax=True)(torch.randn(2, 2, 16, 16), torch.randint(0, 2, (2, 16, 16)))
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        w: float = 0.05,
        reduction: str = "mean",
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            batch=batch,
            ignore_index=ignore_index,
            regions=regions,
        )
        self.w = check_nonneg(w, "w", upper=1.0)
        self.smooth_nr = check_nonneg(smooth_nr, "smooth_nr")
        self.smooth_dr = check_nonneg(smooth_dr, "smooth_dr")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        s, prep = self.class_stats(input, target, ("sqerr_pos", "sqerr_neg", "g", "count"))
        # Sum over the classes (dim -2 of (B, C', 4) or (C', 4)), keeping a class dim of size 1.
        s = s.sum(dim=-2, keepdim=True)
        sens, spec, g, count = s.unbind(-1)
        # Σ_c Σ_i (1 − g) over counted voxels = Σ_c (count − Σ_i g).
        f = self.w * (sens + self.smooth_nr) / (g + self.smooth_dr) + (1.0 - self.w) * (spec + self.smooth_nr) / (
            count - g + self.smooth_dr
        )
        if self.batch:
            f = f.reshape(1)
        return reduce_loss(f, self.reduction, prep.spatial_ndim, broadcast=True)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", w={self.w}, smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}"


# ----------------------------------------------------------------------------------------- functional forms
dice_loss = functional_form(DiceLoss, "dice_loss")
iou_loss = functional_form(IoULoss, "iou_loss")
tversky_loss = functional_form(TverskyLoss, "tversky_loss")
generalized_dice_loss = functional_form(GeneralizedDiceLoss, "generalized_dice_loss")
focal_tversky_loss = functional_form(FocalTverskyLoss, "focal_tversky_loss")
asymmetric_similarity_loss = functional_form(AsymmetricSimilarityLoss, "asymmetric_similarity_loss")
penalty_generalized_dice_loss = functional_form(PenaltyGeneralizedDiceLoss, "penalty_generalized_dice_loss")
sensitivity_specificity_loss = functional_form(SensitivitySpecificityLoss, "sensitivity_specificity_loss")
