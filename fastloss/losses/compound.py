"""Compound losses (Ma et al. 2021, Sec. 2.4, and the Dice + boundary/Hausdorff schedules of Sec. 3.2).

Each is built from the region / distribution / boundary classes (whose statistics run through
``fastloss.ops.stats.class_stats``, so the fused kernels serve every part):

- :class:`DiceCELoss` and :class:`DiceFocalLoss`: MONAI 1.6.1's classes (signature, defaults, results);
- :class:`DiceTopKLoss` (Eq. 25, nnU-Net's ``DC_and_topk_loss``);
- :class:`ExpLogLoss` (Eq. 23, Wong et al. 2018), one pass of statistics for both terms;
- :class:`DiceBoundaryLoss` (α·Dice + (1−α)·BD, Kervadec's schedule) and :class:`DiceHausdorffDTLoss`
  (α·Dice + HD, Karimi's weighting).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from .._validation import _is_compiling, check_reduction
from ..backend import use_compiled_cpu, use_triton
from ..ops.stats import StatsSpec, class_stats, compute_dtype, shared_statistics
from ._common import (
    LossBase,
    check_bool,
    check_ignore_index,
    check_nonneg,
    expand_class_weight,
    functional_form,
    prepare_inputs,
    select_classes,
    sum_batch,
)
from . import _fused
from .boundary import BoundaryLoss, HausdorffDTLoss
from .distribution import CrossEntropyLoss, FocalLoss, TopKLoss
from .region import DiceLoss

__all__ = [
    "DiceCELoss",
    "DiceFocalLoss",
    "DiceTopKLoss",
    "ExpLogLoss",
    "DiceBoundaryLoss",
    "DiceHausdorffDTLoss",
    "dice_ce_loss",
    "dice_focal_loss",
    "dice_topk_loss",
    "exp_log_loss",
    "dice_boundary_loss",
    "dice_hausdorff_dt_loss",
]

WeightLike = Optional[Union[Sequence[float], float, int, torch.Tensor]]


def _default_softmax(softmax: Optional[bool], sigmoid: bool, other_act) -> bool:
    """``softmax=None`` means: softmax unless ``sigmoid`` or ``other_act`` is given (the paper's default)."""
    if softmax is None:
        return not sigmoid and other_act is None
    return softmax


def _safe_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` with 0 where ``den == 0`` (nothing counted there), finite gradient."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


# ------------------------------------------------------------------------------------------------- DiceCE
class DiceCELoss(nn.Module):
    r"""Dice + cross entropy (Eq. 22), MONAI 1.6.1's ``DiceCELoss``: same arguments, defaults and results.

    .. math:: L = \lambda_{dice} L_{Dice} + \lambda_{ce} L_{CE}

    ``L_Dice`` is :class:`~fastloss.losses.region.DiceLoss` with the Dice arguments (its ``weight`` is
    ``weight[1:]`` without the background, as MONAI). ``L_CE`` is computed on the logits over *all* channels
    whatever ``include_background``/``sigmoid``/``softmax`` say: softmax cross entropy
    (:class:`~fastloss.losses.distribution.CrossEntropyLoss`, torch's semantics: with labels and a
    ``weight``, ``mean`` divides by ``Σ_i w_{y_i}``; with one-hot targets by the voxel count) with
    ``label_smoothing`` as ``torch.nn.CrossEntropyLoss``, and for one channel the binary cross entropy with
    logits with ``pos_weight=weight`` (``torch.nn.BCEWithLogitsLoss``).

    Beyond MONAI: integer labels are accepted whatever ``to_onehot_y`` says, ``(B, *spatial)`` labels too,
    and ``ignore_index`` (appended last; MONAI's DiceCELoss has none) masks voxels in both parts (Dice:
    MONAI's masking; CE: ignored voxels leave the sums and the mean's denominator).

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard, smooth_nr,
        smooth_dr, batch: the Dice part's arguments (:class:`~fastloss.losses.region.DiceLoss`).
        reduction: ``"mean"`` (default) or ``"sum"``, for both parts (``"none"`` is refused, as MONAI).
        weight: per-class weights: the CE ``weight`` (``pos_weight`` for one channel) and the Dice weight.
        lambda_dice: weight of the Dice part, ``>= 0``.
        lambda_ce: weight of the CE part, ``>= 0``.
        label_smoothing: in [0, 1], as ``torch.nn.CrossEntropyLoss`` (multi-class CE only, as MONAI).
        ignore_index: label (or one-hot class / sentinel, MONAI's rule) whose voxels are ignored.
        regions: region-based training (not in MONAI): a sequence of label sets, one per channel, with
            ``sigmoid=True``; the target is integer labels (never expanded) and the CE part is the binary CE
            of every region channel, mean over every (voxel, region) element: nnU-Net's Dice + BCE.

    Raises:
        TypeError: bad flag types, non-callable ``other_act``, float labels without ``to_onehot_y``.
        ValueError: several activations, ``reduction`` not mean/sum, negative lambdas, ``label_smoothing``
            outside [0, 1], bad weights, and the input/target errors of the parts.

    Example:
        >>> import torch
        >>> from fastloss.losses.compound import DiceCELoss
        >>> x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> DiceCELoss(to_onehot_y=True, softmax=True)(x, y).backward()
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
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        label_smoothing: float = 0.0,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__()
        reduction = check_reduction(reduction, ("mean", "sum"))
        include_background = check_bool(include_background, "include_background")
        dice_weight = None
        if weight is not None:
            weight = torch.as_tensor(weight).detach().clone()
            if not weight.is_floating_point():
                weight = weight.to(torch.get_default_dtype())
            dice_weight = weight
            if weight.ndim == 1 and not include_background:
                dice_weight = weight[1:] if weight.numel() > 1 else None
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            squared_pred=squared_pred,
            jaccard=jaccard,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=dice_weight,
            ignore_index=ignore_index,
            regions=regions,
        )
        self.regions = self.dice.regions
        if self.regions is not None and label_smoothing != 0.0:
            raise ValueError(f"label_smoothing applies to the softmax CE; with regions= the CE part is the binary "
                             f"CE of each region, got label_smoothing={label_smoothing}")
        # with regions: nnU-Net's Dice + BCE, the binary CE of every region channel (MONAI has no regions)
        self.cross_entropy = CrossEntropyLoss(
            weight=weight, ignore_index=ignore_index, reduction=reduction, to_onehot_y=to_onehot_y,
            sigmoid=self.regions is not None, regions=self.regions,
        )
        self.register_buffer("class_weight", weight)
        self.lambda_dice = check_nonneg(lambda_dice, "lambda_dice")
        self.lambda_ce = check_nonneg(lambda_ce, "lambda_ce")
        self.label_smoothing = check_nonneg(label_smoothing, "label_smoothing", upper=1.0)
        self.reduction = reduction
        self.to_onehot_y = self.dice.to_onehot_y
        self.ignore_index = check_ignore_index(ignore_index)

    def bce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """One channel: ``BCEWithLogitsLoss(pos_weight=weight, reduction)`` on the counted voxels."""
        prep = prepare_inputs(
            input, target, activation="none", to_onehot_y=self.to_onehot_y, ignore_index=self.ignore_index,
            allow_flat=True,  # (B, 1) logits, as MONAI's DiceCELoss
        )
        dt = compute_dtype(input)
        x = input.reshape(input.shape[0], 1, -1).to(dt)
        g = prep.target.dense(dt)
        pw = None
        if self.class_weight is not None:
            pw = expand_class_weight(self.class_weight, 1).to(device=x.device, dtype=dt)
        # torch's BCE with logits: -[pw·g·log σ(x) + (1 − g)·log(1 − σ(x))], differentiated by autograd.
        loss = F.binary_cross_entropy_with_logits(x, g, pos_weight=pw, reduction="none")
        if prep.target.mask is None:
            return loss.mean() if self.reduction == "mean" else loss.sum()
        m = prep.target.mask.to(dt).unsqueeze(1)
        total = (loss * m).sum()
        return total if self.reduction == "sum" else _safe_ratio(total, m.sum())

    def ce(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Softmax cross entropy over all channels, with torch's ``label_smoothing``."""
        ce = self.cross_entropy(input, target)
        ls = self.label_smoothing
        if ls == 0.0:
            return ce
        # torch: loss = (1 − ε)·CE + ε/C · Σ_c w_c (−log p_c) per voxel, over the same denominator as CE
        # (Σ_i w_{y_i} for weighted labels, the counted voxels otherwise); autograd differentiates it.
        prep = prepare_inputs(
            input, target, activation="none", to_onehot_y=self.to_onehot_y, ignore_index=self.ignore_index,
            allow_flat=True,  # (B, C) logits, as MONAI's DiceCELoss
        )
        dt = compute_dtype(input)
        B, C = input.shape[:2]
        logp = torch.log_softmax(input.reshape(B, C, -1).to(dt), dim=1)
        m = None if prep.target.mask is None else prep.target.mask.to(dt)
        w = None
        if self.class_weight is not None:
            w = expand_class_weight(self.class_weight, C).to(device=logp.device, dtype=dt)
        nlp = -logp if w is None else -logp * w.view(1, C, 1)
        per_voxel = nlp.sum(dim=1)  # (B, N)
        if m is not None:
            per_voxel = per_voxel * m
        smooth = per_voxel.sum()
        if self.reduction == "mean":
            if w is not None and prep.target.raw_labels is not None:
                lab = prep.target.labels
                valid = (lab >= 0) & (lab < C)
                wy = w[torch.where(valid, lab, torch.zeros_like(lab))] * valid.to(dt)
                den = (wy * m).sum() if m is not None else wy.sum()
            else:
                den = m.sum() if m is not None else torch.tensor(float(per_voxel.numel()), dtype=dt)
            smooth = _safe_ratio(smooth, den)
        return (1.0 - ls) * ce + (ls / C) * smooth

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fused = _fused.dice_ce(self, input, target)  # one statistics pass, one formula launch
        if fused is not None:
            return fused
        # One statistics pass serves both parts when they share the activation (softmax Dice).
        with shared_statistics(("pg", "p", "g", "ce", "count")):
            dice_loss = self.dice(input, target)
            if self.regions is not None:
                ce_loss = self.cross_entropy(input, target)  # binary CE per region
            else:
                ce_loss = self.ce(input, target) if input.shape[1] != 1 else self.bce(input, target)
        return self.lambda_dice * dice_loss + self.lambda_ce * ce_loss


# ---------------------------------------------------------------------------------------------- DiceFocal
class DiceFocalLoss(nn.Module):
    r"""Dice + focal loss (Eq. 24), MONAI 1.6.1's ``DiceFocalLoss``: same arguments, defaults and results.

    .. math:: L = \lambda_{dice} L_{Dice} + \lambda_{focal} L_{Focal}

    ``L_Dice``: :class:`~fastloss.losses.region.DiceLoss` (Dice arguments, ``weight``); ``L_Focal``:
    :class:`~fastloss.losses.distribution.FocalLoss` on the logits with ``include_background``, ``gamma``,
    ``alpha``, ``weight`` and ``reduction``. As in MONAI 1.6.1 the focal part is the *sigmoid* focal loss
    whatever ``softmax`` says; ``use_softmax=True`` (an addition, after MONAI's arguments) selects the
    softmax focal loss of Eq. (5) instead. With ``reduction="none"`` the Dice ``(B, C', 1, ...)`` and the
    focal ``(B, C', *spatial)`` maps are added with broadcasting, as MONAI.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, jaccard, smooth_nr,
        smooth_dr, batch: as :class:`~fastloss.losses.region.DiceLoss`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (both parts).
        gamma: focal exponent, ``>= 0``.
        weight: per-class weights for both parts (one per kept channel).
        lambda_dice, lambda_focal: weights of the parts, ``>= 0``.
        alpha: focal α in [0, 1] (MONAI's meaning), or None.
        use_softmax: softmax focal loss instead of MONAI's sigmoid one. Default False (MONAI).
        ignore_index: label (or one-hot class / sentinel) whose voxels are ignored in both parts.
        focal_include_background: ``include_background`` of the focal part alone (None: the same as the
            Dice part, MONAI). The paper's DiceFocal uses Dice without background and Eq. (5) over all classes.
        focal_mean_over: the focal part's ``mean_over`` (``"elements"``, MONAI, or ``"voxels"``, Eq. 5).
        regions: region-based training (not in MONAI): a sequence of label sets, one per channel, with
            ``sigmoid=True`` (and the sigmoid focal term); the target is integer labels, never expanded.

    Raises:
        TypeError, ValueError: as the parts; negative lambdas.

    Example:
        >>> import torch
        >>> from fastloss.losses.compound import DiceFocalLoss
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 8, 8))
        >>> DiceFocalLoss(to_onehot_y=True, softmax=True)(x, y).backward()
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
        gamma: float = 2.0,
        weight: WeightLike = None,
        lambda_dice: float = 1.0,
        lambda_focal: float = 1.0,
        alpha: Optional[float] = None,
        use_softmax: bool = False,
        ignore_index: Optional[int] = None,
        focal_include_background: Optional[bool] = None,
        focal_mean_over: str = "elements",
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            squared_pred=squared_pred,
            jaccard=jaccard,
            reduction=reduction,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            weight=weight,
            ignore_index=ignore_index,
            regions=regions,
        )
        self.regions = self.dice.regions
        self.focal = FocalLoss(
            include_background=include_background if focal_include_background is None else focal_include_background,
            to_onehot_y=to_onehot_y,
            gamma=gamma,
            alpha=alpha,
            weight=weight,
            reduction=reduction,
            use_softmax=use_softmax,
            ignore_index=ignore_index,
            mean_over=focal_mean_over,
            regions=self.regions,
        )
        self.lambda_dice = check_nonneg(lambda_dice, "lambda_dice")
        self.lambda_focal = check_nonneg(lambda_focal, "lambda_focal")
        self.to_onehot_y = self.dice.to_onehot_y

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fused = _fused.dice_focal(self, input, target)  # one statistics pass, one formula launch
        if fused is not None:
            return fused
        # One statistics pass serves both parts when the focal term reads the same softmax as the Dice term
        # (softmax focal over every channel), and on the compiled kernels (C++ and Triton) also for MONAI's own
        # configuration, a softmax Dice with a sigmoid focal part: its column ``sigmoid_focal`` is the
        # sigmoid focal term of the same logits, which the focal part then takes (with or without channel 0:
        # the term is per element). Otherwise (a softmax focal without channel 0, whose softmax is another
        # one) asking the Dice pass for a focal column would only slow it down.
        focal = self.focal
        alpha = focal.alpha if focal._alpha_is_number else None
        columns = ()
        if self.dice.activation == "softmax":
            if focal.use_softmax and focal.include_background:
                columns = ("pg", "p", "g", "focal")
            elif (
                not focal.use_softmax  # a per-class alpha asks for other sums (FocalLoss.forward)
                and (focal._alpha_is_number or focal.alpha is None)
                and focal.reduction != "none"
                and (use_compiled_cpu(input) or use_triton(input))
            ):
                columns = ("pg", "p", "g", "sigmoid_focal")
                if focal.ignore_index is not None:  # the focal formula divides by the counted voxels
                    columns += ("count",)
        with shared_statistics(columns, gamma=focal.gamma, alpha=alpha):
            dice_loss = self.dice(input, target)
            focal_loss = self.focal(input, target)
        return self.lambda_dice * dice_loss + self.lambda_focal * focal_loss


# ----------------------------------------------------------------------------------------------- DiceTopK
class DiceTopKLoss(nn.Module):
    r"""Dice + TopK (Eq. 25), as nnU-Net's ``DC_and_topk_loss`` used in the paper.

    .. math:: L = \lambda_{dice} L_{Dice} + \lambda_{topk} L_{TopK}

    Defaults are the paper's configuration: ``L_Dice`` the batch Dice (``batch=True``) without the
    background, on the softmax, smoothing ``1e-5`` (:class:`~fastloss.losses.region.DiceLoss`; nnU-Net's
    ``SoftDiceLoss`` returns ``−Dice`` where this returns ``1 − Dice``: same gradient); ``L_TopK`` the mean
    cross entropy of the ``k = 10`` % hardest voxels of the batch
    (:class:`~fastloss.losses.distribution.TopKLoss`; ``t`` selects the threshold variant, Eq. 3).
    Returns a scalar.

    Args:
        include_background: keep class 0 in the Dice part. Default False.
        to_onehot_y: MONAI compatibility (float labels need it).
        sigmoid, other_act: activation of the Dice part; ``softmax`` None (default) means softmax unless
            one of those is given. The TopK part always uses the softmax cross entropy.
        squared_pred, jaccard, smooth_nr, smooth_dr, batch: the Dice part's arguments (batch Dice default).
        k: percentage of voxels kept by TopK, in (0, 100]. Default 10.
        t: probability threshold in (0, 1] instead of ``k`` (Table 3's ``TopK-Threshold``).
        weight: per-class CE weight of the TopK part, or None.
        lambda_dice, lambda_topk: weights of the parts, ``>= 0``.
        ignore_index: label (or one-hot class / sentinel) ignored in both parts.

    Raises:
        TypeError, ValueError: as the parts (``k`` outside (0, 100], ``t`` outside (0, 1], both given, ...).

    Example:
        >>> import torch
        >>> from fastloss.losses.compound import DiceTopKLoss
        >>> x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> DiceTopKLoss()(x, torch.randint(0, 3, (2, 1, 8, 8, 8))).backward()
    """

    def __init__(
        self,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: Optional[bool] = None,
        other_act: Optional[Callable] = None,
        squared_pred: bool = False,
        jaccard: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = True,
        k: Optional[float] = None,
        t: Optional[float] = None,
        weight: WeightLike = None,
        lambda_dice: float = 1.0,
        lambda_topk: float = 1.0,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.dice = DiceLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=_default_softmax(softmax, sigmoid, other_act),
            other_act=other_act,
            squared_pred=squared_pred,
            jaccard=jaccard,
            smooth_nr=smooth_nr,
            smooth_dr=smooth_dr,
            batch=batch,
            ignore_index=ignore_index,
        )
        self.topk = TopKLoss(k=k, t=t, weight=weight, ignore_index=ignore_index, to_onehot_y=to_onehot_y)
        self.lambda_dice = check_nonneg(lambda_dice, "lambda_dice")
        self.lambda_topk = check_nonneg(lambda_topk, "lambda_topk")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # the parts share the label check and, on the compiled CPU path, one pass that yields the Dice sums
        # and the per-voxel CE the TopK part selects from (one backward kernel for both)
        with shared_statistics(voxel_ce=True):
            return self.lambda_dice * self.dice(input, target) + self.lambda_topk * self.topk(input, target)


# ------------------------------------------------------------------------------------------------- ExpLog
class ExpLogLoss(LossBase):
    r"""Exponential logarithmic loss (Eq. 23; Wong et al., MICCAI 2018).

    .. math::
        L = w_{dice}\, \mathrm{E}_c\big[(-\ln \mathrm{Dice}_c)^{\gamma_{dice}}\big]
          + w_{ce}\, \mathrm{E}_i\big[w_{l_i} (-\ln s_i^{l_i})^{\gamma_{ce}}\big],
        \qquad \mathrm{Dice}_c = \frac{2 \sum_i g_i^c s_i^c + \epsilon_{nr}}{\sum_i (g_i^c + s_i^c) + \epsilon_{dr}}

    - The Dice term averages over the kept classes (and over images unless ``batch``): per-class Dice
      as in Wong et al. Defaults follow the paper's setting (batch Dice without background, ε = 1e-5;
      Wong et al. used ε = 1 and all labels: ``smooth_nr=smooth_dr=1, include_background=True,
      batch=False``).
    - The CE term averages over the counted voxels of the batch, all classes, ``l_i`` the label of voxel
      ``i`` (soft targets: ``Σ_c g_i^c w_c (−ln s_i^c)^γ``). Wong et al.'s label weights
      ``w_l = ((Σ_k f_k) / f_l)^{0.5}``, ``f_k`` the number of voxels of label ``k``, are taken from the
      batch's (counted) target by default, without gradient (a label absent from the batch gets weight 0:
      no voxel uses it); pass ``weight`` for fixed weights (e.g. from the training set's frequencies).
    - ``w_dice = 0.8``, ``w_ce = 0.2``, ``γ_dice = γ_ce = 0.3`` (Wong et al.).

    Both terms are formulas of one pass of per-class sums (``class_stats`` columns ``pg``, ``p``, ``g``,
    ``ce_pow``, ``count``). ``(−ln x)^γ`` with ``γ < 1`` has an infinite slope at ``x = 1``: its base is
    clamped at the smallest normal float, where the gradient is then 0. With ``sigmoid`` the CE term is
    ``g (−ln σ(x))^γ`` (positive-class term). Returns a scalar.

    Args:
        include_background: keep class 0 in the Dice term. Default False.
        to_onehot_y: MONAI compatibility (float labels need it).
        sigmoid, other_act: activation; ``softmax`` None (default) means softmax unless one of those is given.
        batch: Dice per class over the whole batch (default True) or per image.
        smooth_nr, smooth_dr: the ε of ``Dice_c``. Default 1e-5.
        w_dice, w_ce: weights of the two terms (>= 0). Defaults 0.8, 0.2.
        gamma_dice, gamma_ce: exponents (>= 0). Defaults 0.3.
        weight: fixed per-class CE weights (C values), or None for Wong's batch-frequency weights.
        ignore_index: label (or one-hot class / sentinel) whose voxels are ignored.

    Raises:
        TypeError, ValueError: bad flags, negative weights or exponents, several activations, a ``weight``
            of the wrong length, input/target errors.

    Example:
        >>> import torch
        >>> from fastloss.losses.compound import ExpLogLoss
        >>> x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> ExpLogLoss()(x, torch.randint(0, 3, (2, 1, 8, 8, 8))).backward()
    """

    def __init__(
        self,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: Optional[bool] = None,
        other_act: Optional[Callable] = None,
        batch: bool = True,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        w_dice: float = 0.8,
        w_ce: float = 0.2,
        gamma_dice: float = 0.3,
        gamma_ce: float = 0.3,
        weight: WeightLike = None,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=_default_softmax(softmax, sigmoid, other_act),
            other_act=other_act,
            reduction="mean",
            batch=batch,
            weight=weight,
            ignore_index=ignore_index,
        )
        self.smooth_nr = check_nonneg(smooth_nr, "smooth_nr")
        self.smooth_dr = check_nonneg(smooth_dr, "smooth_dr")
        self.w_dice = check_nonneg(w_dice, "w_dice")
        self.w_ce = check_nonneg(w_ce, "w_ce")
        self.gamma_dice = check_nonneg(gamma_dice, "gamma_dice")
        self.gamma_ce = check_nonneg(gamma_ce, "gamma_ce")

    @staticmethod
    def frequency_weights(gsum: torch.Tensor) -> torch.Tensor:
        """Wong et al.'s ``w_c = sqrt(Σ_k f_k / f_c)`` from class volumes ``f`` ``(C,)``; 0 for ``f_c = 0``."""
        total = gsum.sum()
        return torch.where(gsum > 0, (total / torch.where(gsum > 0, gsum, torch.ones_like(gsum))).sqrt(),
                           torch.zeros_like(gsum))

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = self.prepare(input, target)
        C = input.shape[1]
        if self.class_weight is not None:
            expand_class_weight(self.class_weight, C)  # length check before the pass over the voxels
        spec = StatsSpec(prep.activation, ("pg", "p", "g", "ce_pow", "count"), ce_exponent=self.gamma_ce)
        stats = class_stats(prep.input, prep.target, spec)  # (B, C, 5)
        tiny = torch.finfo(stats.dtype).tiny

        # Dice term: Dice_c = (2Σpg + ε_nr)/(Σp + Σg + ε_dr); (−ln Dice_c)^γ, clamped away from 0 so the
        # derivative γ(−ln D)^{γ−1}·(−1/D)·∂D stays finite (0 where clamped: a perfect class).
        s = sum_batch(select_classes(stats, self.include_background), self.batch)
        pg, p, g = s[..., 0], s[..., 1], s[..., 2]
        dice = (2.0 * pg + self.smooth_nr) / (p + g + self.smooth_dr)
        l_dice = (-torch.log(dice)).clamp_min(tiny).pow(self.gamma_dice).mean()

        # CE term: Σ_c w_c Σ_{b,i} g (−ln s)^γ / (counted voxels); w from the batch's class volumes.
        cep = stats[..., 3].sum(dim=0)  # (C,)
        if self.class_weight is not None:
            w = expand_class_weight(self.class_weight, C).to(device=cep.device, dtype=cep.dtype)
        else:
            w = self.frequency_weights(stats[..., 2].detach().sum(dim=0))
        count = stats[:, 0, 4].sum()
        l_ce = _safe_ratio((w * cep).sum(), count)
        return self.w_dice * l_dice + self.w_ce * l_ce

    def extra_repr(self) -> str:
        return (
            super().extra_repr()
            + f", w_dice={self.w_dice}, w_ce={self.w_ce}, gamma_dice={self.gamma_dice}, gamma_ce={self.gamma_ce}"
        )


# ------------------------------------------------------------------------------------------------- DiceBD
def _dice_part(include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred, smooth_nr, smooth_dr,
               batch, ignore_index) -> DiceLoss:
    dice = DiceLoss(
        include_background=include_background,
        to_onehot_y=to_onehot_y,
        sigmoid=sigmoid,
        softmax=softmax,
        other_act=other_act,
        squared_pred=squared_pred,
        smooth_nr=smooth_nr,
        smooth_dr=smooth_dr,
        batch=batch,
        ignore_index=ignore_index,
    )
    # the distance-map partner needs spatial dims: refuse (B, C) inputs even while the Dice part runs alone
    dice._accepts_flat = False
    return dice


def _check_steps(value, name: str, zero_ok: bool = False) -> Optional[int]:
    """None, or an int >= 1 (>= 0 with ``zero_ok``)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int or None, got {type(value).__name__} {value!r}")
    if value < (0 if zero_ok else 1):
        raise ValueError(f"{name} must be {'>= 0' if zero_ok else '>= 1'} (or None), got {value}")
    return value


class DiceBoundaryLoss(nn.Module):
    r"""Dice + boundary loss with Kervadec et al.'s schedule (Ma et al. 2021, Sec. 3.2).

    .. math:: L = \alpha\, L_{Dice} + (1 - \alpha)\, L_{BD}

    ``α`` starts at ``alpha`` (1) and decreases by ``alpha_step`` (0.01) per epoch down to ``alpha_min``
    (0.01): after epoch ``e``, ``α = max(alpha − e·alpha_step, min(alpha_min, alpha))`` (α never rises:
    started at or below ``alpha_min`` it stays at ``alpha``). **At α = 1 the loss is plain Dice**, so the
    schedule must learn where training is. Two ways, pick one:

    - ``steps_per_epoch=n``: the loss counts its own training calls (forward in training mode with
      gradients enabled; ``loss.eval()`` or ``torch.no_grad()`` calls are not counted) and moves to the
      next epoch after every ``n`` of them. Nothing else to call; :meth:`step_epoch` is then refused
      (it would advance the schedule twice).
    - the default: call :meth:`step_epoch` once after each epoch. So that a forgotten call does not go
      unnoticed, a ``UserWarning`` is issued (once) when ``warn_after_steps`` (1000) training calls pass
      without the schedule moving while α is above its floor; pass ``warn_after_steps=None`` if your
      epochs are longer and you do call it.

    :meth:`set_epoch` sets the epoch directly (e.g. when resuming) in both modes. The schedule state
    (``epoch``, ``alpha``, training calls in the current epoch) travels in the ``state_dict``. Calls made
    while ``torch.compile`` traces the loss cannot be counted: compiled, drive the schedule with
    :meth:`set_epoch`/:meth:`step_epoch` (``steps_per_epoch`` then raises). While ``α = 1`` the boundary
    term (and its distance transform) is skipped, and the Dice term while ``α = 0``.

    ``L_Dice``: :class:`~fastloss.losses.region.DiceLoss` (paper: batch Dice without background, softmax,
    ε = 1e-5); ``L_BD``: :class:`~fastloss.losses.boundary.BoundaryLoss` with the same activation and
    classes. Returns a scalar.

    Args:
        alpha: initial Dice weight α in [0, 1]. Default 1.
        alpha_step: decrease of α per epoch, ``>= 0``. Default 0.01.
        alpha_min: floor of α in [0, 1]. Default 0.01.
        include_background, to_onehot_y, sigmoid, softmax, other_act, ignore_index: both parts
            (``softmax`` None means softmax unless ``sigmoid``/``other_act`` is given).
        squared_pred, smooth_nr, smooth_dr, batch: the Dice part (batch Dice by default).
        spacing: voxel spacing for the boundary map.
        steps_per_epoch: training calls per epoch (an int >= 1): the schedule advances by itself. None
            (default): call :meth:`step_epoch` after each epoch.
        warn_after_steps: without ``steps_per_epoch``, warn once after this many training calls without
            the schedule moving (default 1000); None or 0 never warns.

    Forward args:
        input, target: as the parts; ``distance_map``: optional precomputed φ_G for the boundary part.

    Raises:
        TypeError, ValueError: as the parts; α values outside [0, 1]; a negative ``alpha_step``;
            ``steps_per_epoch``/``warn_after_steps`` not a positive int (or None).
        RuntimeError: :meth:`step_epoch` with ``steps_per_epoch`` set; ``steps_per_epoch`` under
            ``torch.compile``.

    Example:
        >>> import torch
        >>> from fastloss.losses.compound import DiceBoundaryLoss
        >>> loss = DiceBoundaryLoss()  # the training loop drives the schedule
        >>> for epoch in range(3):
        ...     x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        ...     loss(x, torch.randint(0, 3, (2, 1, 8, 8, 8))).backward()
        ...     alpha = loss.step_epoch()  # after each epoch
        >>> round(alpha, 2)
        0.97
        >>> auto = DiceBoundaryLoss(steps_per_epoch=2)  # or the loss counts its own steps
        >>> for step in range(6):
        ...     x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        ...     auto(x, torch.randint(0, 3, (2, 1, 8, 8, 8))).backward()
        >>> auto.epoch, round(auto.alpha, 2)
        (3, 0.97)
    """

    def __init__(
        self,
        alpha: float = 1.0,
        alpha_step: float = 0.01,
        alpha_min: float = 0.01,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: Optional[bool] = None,
        other_act: Optional[Callable] = None,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = True,
        spacing=None,
        ignore_index: Optional[int] = None,
        steps_per_epoch: Optional[int] = None,
        warn_after_steps: Optional[int] = 1000,
    ) -> None:
        super().__init__()
        self.steps_per_epoch = _check_steps(steps_per_epoch, "steps_per_epoch")
        self.warn_after_steps = _check_steps(warn_after_steps, "warn_after_steps", zero_ok=True) or None
        self.steps = 0  # counted training calls since the epoch last changed
        self._warned = False
        self.alpha_start = check_nonneg(alpha, "alpha", upper=1.0)
        self.alpha_step = check_nonneg(alpha_step, "alpha_step")
        self.alpha_min = check_nonneg(alpha_min, "alpha_min", upper=1.0)
        softmax = _default_softmax(softmax, sigmoid, other_act)
        self.dice = _dice_part(include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred,
                               smooth_nr, smooth_dr, batch, ignore_index)
        self.boundary = BoundaryLoss(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            spacing=spacing,
            ignore_index=ignore_index,
            allow_1d=True,
        )
        self.epoch = 0
        self.alpha = self.alpha_start

    def _floor(self) -> float:
        # α never rises: a start below alpha_min is its own floor
        return min(self.alpha_min, self.alpha_start)

    def _schedule(self, epoch: int) -> float:
        # Computed from the epoch (not by repeated subtraction) so that no rounding drift accumulates.
        return max(round(self.alpha_start - epoch * self.alpha_step, 12), self._floor())

    def set_epoch(self, epoch: int) -> float:
        """Set α for (the end of) epoch ``epoch`` >= 0: ``max(alpha − epoch·alpha_step, min(alpha_min,
        alpha))``; returns it. Starts a new epoch for the step count (works with ``steps_per_epoch`` too)."""
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 0:
            raise ValueError(f"epoch must be an int >= 0, got {epoch!r}")
        self.epoch = epoch
        self.alpha = self._schedule(epoch)
        self.steps = 0
        return self.alpha

    def step_epoch(self) -> float:
        """Advance the schedule by one epoch (call once after each epoch); returns the new α.

        Raises:
            RuntimeError: with ``steps_per_epoch`` set, where the loss advances the schedule itself.
        """
        if self.steps_per_epoch is not None:
            raise RuntimeError(
                f"step_epoch() with steps_per_epoch={self.steps_per_epoch}: the loss already advances its "
                "schedule every steps_per_epoch training calls, and calling step_epoch() too would advance "
                "it twice; remove the call, or build the loss without steps_per_epoch (set_epoch still works)"
            )
        return self.set_epoch(self.epoch + 1)

    def _count_training_call(self) -> None:
        """Count one training call: advance the epoch (``steps_per_epoch``) or warn once if it never moves."""
        if not (self.training and torch.is_grad_enabled()):
            return
        self.steps += 1
        if self.steps_per_epoch is not None:
            if self.steps >= self.steps_per_epoch:
                self.set_epoch(self.epoch + 1)
            return
        if (self.warn_after_steps is not None and not self._warned and self.steps >= self.warn_after_steps
                and self.alpha_step > 0 and self.alpha > self._floor()):
            self._warned = True
            warnings.warn(
                f"DiceBoundaryLoss: {self.steps} training calls since its schedule last moved (epoch "
                f"{self.epoch}, alpha={self.alpha:g}{': plain Dice' if self.alpha >= 1 else ''}). Call "
                "loss.step_epoch() after each epoch, or build it with steps_per_epoch=<batches per epoch> so "
                "that it counts them itself; pass warn_after_steps=None if your epochs are longer than "
                f"{self.warn_after_steps} steps.",
                UserWarning,
                stacklevel=3,
            )

    def get_extra_state(self):
        return {"epoch": self.epoch, "alpha": self.alpha, "steps": self.steps}

    def set_extra_state(self, state) -> None:
        self.epoch = int(state["epoch"])
        self.alpha = float(state["alpha"])
        self.steps = int(state.get("steps", 0))  # absent from state_dicts saved before the step count

    def forward(self, input: torch.Tensor, target: torch.Tensor, distance_map: Optional[torch.Tensor] = None):
        if _is_compiling():
            if self.steps_per_epoch is not None:
                raise RuntimeError(
                    "DiceBoundaryLoss(steps_per_epoch=...) counts eager calls, which torch.compile cannot "
                    "replay; compiled, build it without steps_per_epoch and call set_epoch()/step_epoch()"
                )
            return self._loss(float(self.alpha), input, target, distance_map)
        # α for this call; once it has succeeded the call is counted (which may move the next call's α)
        loss = self._loss(float(self.alpha), input, target, distance_map)
        self._count_training_call()
        return loss

    def _loss(self, a: float, input, target, distance_map):
        if a >= 1.0:
            return self.dice(input, target)
        if a <= 0.0:
            return self.boundary(input, target, distance_map)
        # One statistics pass for both parts: the boundary part asks first, with its map.
        with shared_statistics(("pg", "p", "g", "map_p", "count")):
            bd = self.boundary(input, target, distance_map)
            return a * self.dice(input, target) + (1.0 - a) * bd

    def extra_repr(self) -> str:
        return (f"alpha={self.alpha}, epoch={self.epoch}, alpha_step={self.alpha_step}, alpha_min={self.alpha_min}, "
                f"steps_per_epoch={self.steps_per_epoch}")


# ------------------------------------------------------------------------------------------------- DiceHD
class DiceHausdorffDTLoss(nn.Module):
    r"""Dice + Hausdorff-distance loss with Karimi and Salcudean's weighting (Ma et al. 2021, Sec. 3.2).

    .. math:: L = \alpha\, L_{Dice} + L_{HD}, \qquad
              \alpha = \mathrm{sg}\!\left[\frac{L_{HD}}{L_{Dice}}\right]

    With ``alpha=None`` (default) α is the ratio of the HD term to the Dice term, each the mean over its
    classes (and images) in the current batch, evaluated without gradient (``sg``: detached), so both terms
    carry the same magnitude (the value is ``2·L_HD``) while the gradient is
    ``(L_HD/L_Dice)·∇L_Dice + ∇L_HD``. Karimi and Salcudean recompute the ratio after every epoch from
    epoch means; here it is recomputed per batch (no state), so unlike :class:`DiceBoundaryLoss` there is
    no schedule for the training loop to drive and nothing to call between epochs: the HD term counts
    from the first step. When the Dice term is 0 (a perfect prediction, or not finite) α = 1. A number
    ``alpha`` fixes α instead. The last α is kept in ``last_alpha`` (a detached tensor).

    ``L_Dice``: :class:`~fastloss.losses.region.DiceLoss` (paper: batch Dice without background, softmax,
    ε = 1e-5); ``L_HD``: :class:`~fastloss.losses.boundary.HausdorffDTLoss` (MONAI's, exponent
    ``distance_alpha`` = 2) with the same activation and classes. Returns a scalar.

    Args:
        alpha: None for Karimi's adaptive α, or a fixed α >= 0.
        include_background, to_onehot_y, sigmoid, softmax, other_act, ignore_index: both parts
            (``softmax`` None means softmax unless ``sigmoid``/``other_act`` is given).
        squared_pred, smooth_nr, smooth_dr, batch: the Dice part (batch Dice by default).
        distance_alpha: exponent of the distance fields in the HD part. Default 2.
        spacing: voxel spacing for the distance fields.

    Raises:
        TypeError, ValueError: as the parts; a negative or non-finite ``alpha``.

    Example:
        >>> import torch
        >>> from fastloss.losses.compound import DiceHausdorffDTLoss
        >>> x = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> DiceHausdorffDTLoss()(x, torch.randint(0, 3, (2, 1, 8, 8, 8))).backward()
    """

    def __init__(
        self,
        alpha: Optional[float] = None,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: Optional[bool] = None,
        other_act: Optional[Callable] = None,
        squared_pred: bool = False,
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
        batch: bool = True,
        distance_alpha: float = 2.0,
        spacing=None,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__()
        self.alpha = None if alpha is None else check_nonneg(alpha, "alpha")
        softmax = _default_softmax(softmax, sigmoid, other_act)
        self.dice = _dice_part(include_background, to_onehot_y, sigmoid, softmax, other_act, squared_pred,
                               smooth_nr, smooth_dr, batch, ignore_index)
        self.hausdorff = HausdorffDTLoss(
            alpha=distance_alpha,
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            ignore_index=ignore_index,
            spacing=spacing,
        )
        self.last_alpha: Optional[torch.Tensor] = None

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # One statistics pass for both parts: the Hausdorff part asks first, with its map.
        with shared_statistics(("pg", "p", "g", "map_sqerr", "count")):
            h = self.hausdorff(input, target)
            d = self.dice(input, target)
        if self.alpha is None:
            with torch.no_grad():
                ok = (d > 0) & torch.isfinite(d) & torch.isfinite(h)
                a = torch.where(ok, h / torch.where(ok, d, torch.ones_like(d)), torch.ones_like(d))
        else:
            a = torch.tensor(self.alpha, dtype=d.dtype, device=d.device)
        self.last_alpha = a.detach()
        return a * d + h

    def extra_repr(self) -> str:
        return f"alpha={'adaptive' if self.alpha is None else self.alpha}"


# ------------------------------------------------------------------------------------------ functional
dice_ce_loss = functional_form(DiceCELoss, "dice_ce_loss")
dice_focal_loss = functional_form(DiceFocalLoss, "dice_focal_loss")
dice_topk_loss = functional_form(DiceTopKLoss, "dice_topk_loss")
exp_log_loss = functional_form(ExpLogLoss, "exp_log_loss")
dice_boundary_loss = functional_form(DiceBoundaryLoss, "dice_boundary_loss", forward_kwargs=("distance_map",))
dice_hausdorff_dt_loss = functional_form(DiceHausdorffDTLoss, "dice_hausdorff_dt_loss")
