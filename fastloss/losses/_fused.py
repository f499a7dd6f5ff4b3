"""The fused fast path of the Dice/CE/focal-family losses: each adapter turns a loss module's settings into a
fused-formula configuration (``ops/formula_spec.py``), runs the statistics pass and the one formula call
(``ops/formula.py``: the Triton kernel on CUDA tensors, its C++ twin on CPU tensors), and returns the loss,
or None when the configuration is not covered or no compiled backend serves the input. The loss then runs its
torch formula (the reference).

Each loss calls its adapter directly (``_fused.dice(self, input, target)`` in ``DiceLoss.forward``), so a
reader and ``torch.compile(fullgraph=True)`` both see the fast path. The adapters return None before any
validation, so that the torch path validates and warns exactly once.

Covered: Dice / IoU (``jaccard``), Tversky (softmax or sigmoid, not ``soft_label``; ``include_background``,
``batch``, ``squared_pred``, smoothing, per-class ``weight``, ``reduction`` mean/sum); the generalized Dice (the
C++ twin only); ``CrossEntropyLoss`` / ``WeightedCrossEntropyLoss`` (softmax, labels or one-hot/soft targets,
optional class weight); ``FocalLoss`` (softmax or sigmoid, ``alpha`` None or a number,
``include_background=True``); ``DiceCELoss`` (softmax Dice, C > 1, no label smoothing) and ``DiceFocalLoss``
(one activation for both parts): one statistics pass and one formula call for the compound. Statistics of at
most ``formula_spec.MAX_TILE`` padded ``(batch, class)`` entries.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ops import formula
from ..ops.formula_spec import fits, make_config
from ..ops.stats import StatsSpec, class_stats
from ._common import expand_class_weight, prepare_inputs

__all__ = ["dice", "tversky", "generalized_dice", "cross_entropy", "focal", "dice_ce", "dice_focal"]

_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _serves(loss, input) -> Optional[str]:
    """The formula backend (``"triton"``/``"compiled"``) for ``loss`` on ``input``, or None: a float32/16 or
    bfloat16 input with 1 to 3 spatial dims (a ``(B, C)`` input takes MONAI's pooled formulas on the
    statistics path) that fits one formula program, a loss not under ``sync_batch_statistics`` (the statistics
    path all-reduces the sums; the fused one would not), and a compiled backend that serves the input."""
    if not isinstance(input, torch.Tensor) or input.dtype not in _FUSED_DTYPES or input.ndim not in (3, 4, 5):
        return None
    if input.numel() == 0 or getattr(loss, "_ddp_sync", False) or not fits(input.shape[0], input.shape[1]):
        return None
    return formula.formula_backend(input)


def _weight(weight: Optional[torch.Tensor], n: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """``weight`` (scalar or ``(n,)``, checked by ``expand_class_weight``) as float32 on ``like``'s device."""
    if weight is None:
        return None
    return expand_class_weight(weight, n).to(device=like.device, dtype=torch.float32)


def _region_covered(loss, input) -> bool:
    """Dice-family module ``loss`` (LossBase flags) on ``input``: softmax/sigmoid, mean/sum, no soft_label."""
    if _serves(loss, input) is None or getattr(loss, "soft_label", False) or loss.reduction not in ("mean", "sum"):
        return False
    if loss.activation not in ("softmax", "sigmoid"):
        return False
    C = input.shape[1]
    # one channel: softmax is skipped and include_background=False ignored, each with a warning (torch path)
    return C > 1 or (loss.activation == "sigmoid" and loss.include_background)


def _region_config(loss, B: int, C: int, *, kind: str, squared: bool, like: torch.Tensor, offset: int = 0,
                   lambda_region: float = 1.0):
    """Columns, config kwargs and weight of the region part of ``loss`` (DiceLoss / TverskyLoss)."""
    c0 = 0 if loss.include_background else 1
    Cp = C - c0
    cols = ("pg", "pp", "gg") if squared else ("pg", "p", "g")
    weight = None
    if loss.class_weight is not None and Cp > 1:  # MONAI skips the weight when one class remains
        weight = _weight(loss.class_weight, Cp, like)
    kw = dict(
        region=kind, first_class=c0, batch=loss.batch, region_mean=loss.reduction == "mean",
        i_tp=offset, i_ps=offset + 1, i_gs=offset + 2, smooth_nr=loss.smooth_nr, smooth_dr=loss.smooth_dr,
        lambda_region=lambda_region, region_numel=Cp if loss.batch else B * Cp,
    )
    if kind == "tversky":
        kw.update(alpha=loss.alpha, beta=loss.beta)
    return cols, kw, weight


def dice(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.region.DiceLoss` / ``IoULoss`` through the fused formula, or None."""
    if not _region_covered(loss, input):
        return None
    prep = loss.prepare(input, target)
    B, C = input.shape[:2]
    kind = "jaccard" if loss.jaccard else "dice"
    cols, kw, w = _region_config(loss, B, C, kind=kind, squared=loss.squared_pred, like=input)
    stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, cols))
    return formula.loss_formula(stats, make_config(**kw), w, None)


def tversky(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.region.TverskyLoss` through the fused formula, or None."""
    if not _region_covered(loss, input):
        return None
    prep = loss.prepare(input, target)
    B, C = input.shape[:2]
    cols, kw, w = _region_config(loss, B, C, kind="tversky", squared=False, like=input)
    stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, cols))
    return formula.loss_formula(stats, make_config(**kw), w, None)


def generalized_dice(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.region.GeneralizedDiceLoss` through the C++ formula (CPU tensors on the
    compiled backend; the Triton kernel has no generalized Dice term), or None. Its weights come from the
    target volumes, whose gradient the formula leaves 0: a target that requires grad keeps the torch path."""
    if not _region_covered(loss, input) or _serves(loss, input) != "compiled":
        return None
    if isinstance(target, torch.Tensor) and target.requires_grad:
        return None
    prep = loss.prepare(input, target)
    B, C = input.shape[:2]
    kw = dict(
        region="gdice", first_class=0 if loss.include_background else 1, batch=loss.batch,
        region_mean=loss.reduction == "mean", i_tp=0, i_ps=1, i_gs=2, smooth_nr=loss.smooth_nr,
        smooth_dr=loss.smooth_dr, region_numel=1 if loss.batch else B, gd_weight=loss.w_type,
        gd_relative=loss.smooth_relative,
        gd_f32_weights=not loss.smooth_relative and loss._weight_dtype == torch.float32,
    )
    stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, ("pg", "p", "g")))
    return formula.loss_formula(stats, make_config(**kw), None, None)


def _ce_config(labels: bool, weighted: bool, mean: bool, lambda_dist: float, i_ce: int, i_g: int, i_count: int):
    return dict(dist="ce", dist_mean=mean, ce_weighted_den=weighted and labels, i_ce=i_ce, i_g=i_g,
                i_count=i_count, lambda_dist=lambda_dist)


def cross_entropy(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.distribution.CrossEntropyLoss` (softmax, mean/sum), or None."""
    if _serves(loss, input) is None or loss.sigmoid or loss.reduction not in ("mean", "sum"):
        return None
    prep = prepare_inputs(input, target, activation="none", to_onehot_y=loss.to_onehot_y,
                          ignore_index=loss.ignore_index, regions=loss.regions)
    C = input.shape[1]
    w = _weight(loss._weight_for(prep.target, input), C, input)
    stats = class_stats(input, prep.target, StatsSpec("softmax", ("ce", "g", "count")))
    cfg = _ce_config(prep.target.raw_labels is not None, w is not None, loss.reduction == "mean", 1.0, 0, 1, 2)
    return formula.loss_formula(stats, make_config(**cfg), None, w)


def _focal_covered(focal) -> bool:
    """FocalLoss module: include_background, alpha None or a number, mean/sum."""
    if not focal.include_background or focal.reduction not in ("mean", "sum"):
        return False
    return focal.alpha is None or focal._alpha_is_number


def _focal_config(focal, prep, input, i_focal: int, i_count: int, lambda_dist: float):
    """Config kwargs and the ``(C,)`` class weight of the focal part (FocalLoss's reductions)."""
    tgt = prep.target
    B, C = input.shape[:2]
    N = tgt.raw_labels.shape[1] if tgt.raw_labels is not None else tgt.soft.shape[2]
    cw = focal._class_weight(C, input)  # MONAI's checks; (C,) or (1,)
    if cw is not None:
        cw = cw.to(torch.float32).expand(C)
    mean = focal.reduction == "mean"
    if mean:
        divisor = B * N if focal.mean_over == "voxels" else B * C * N
    else:
        divisor = N
    kw = dict(dist="focal", dist_mean=mean, focal_masked=tgt.mask is not None, i_focal=i_focal,
              i_count=i_count, lambda_dist=lambda_dist, dist_divisor=divisor)
    return kw, cw


def focal(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.distribution.FocalLoss` (see the module docstring), or None."""
    if _serves(loss, input) is None or not _focal_covered(loss):
        return None
    prep = prepare_inputs(input, target, activation="none", to_onehot_y=loss.to_onehot_y,
                          ignore_index=loss.ignore_index, regions=loss.regions)
    kw, cw = _focal_config(loss, prep, input, 0, 1, 1.0)
    act = "softmax" if loss.use_softmax else "sigmoid"
    cols = ("focal", "count") if kw["focal_masked"] else ("focal",)
    spec = StatsSpec(act, cols, gamma=loss.gamma, alpha=None if loss.alpha is None else float(loss.alpha))
    stats = class_stats(input, prep.target, spec)
    return formula.loss_formula(stats, make_config(**kw), None, cw)


def dice_ce(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.compound.DiceCELoss`: one statistics pass, one formula launch; or None."""
    dice = loss.dice
    if not _region_covered(dice, input) or dice.activation != "softmax" or loss.label_smoothing != 0.0:
        return None
    if input.shape[1] == 1 or loss.reduction not in ("mean", "sum"):
        return None
    prep = dice.prepare(input, target)
    B, C = input.shape[:2]
    kind = "jaccard" if dice.jaccard else "dice"
    rcols, rkw, rw = _region_config(dice, B, C, kind=kind, squared=dice.squared_pred, like=input,
                                    lambda_region=loss.lambda_dice)
    cw = _weight(loss.cross_entropy._weight_for(prep.target, input), C, input)
    # columns: region (pg, p|pp, g|gg), then ce, count, and g when the region part does not have it
    cols = rcols + ("ce", "count") + (("g",) if dice.squared_pred else ())
    i_g = cols.index("g")
    ckw = _ce_config(prep.target.raw_labels is not None, cw is not None, loss.reduction == "mean", loss.lambda_ce,
                     3, i_g, 4)
    stats = class_stats(prep.input, prep.target, StatsSpec("softmax", cols))
    return formula.loss_formula(stats, make_config(**rkw, **ckw), rw, cw)


def dice_focal(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.compound.DiceFocalLoss` with a softmax (or sigmoid) shared by both parts."""
    dice, focal = loss.dice, loss.focal
    act = "softmax" if focal.use_softmax else "sigmoid"
    if not _region_covered(dice, input) or dice.activation != act or not _focal_covered(focal):
        return None
    prep = dice.prepare(input, target)
    B, C = input.shape[:2]
    kind = "jaccard" if dice.jaccard else "dice"
    rcols, rkw, rw = _region_config(dice, B, C, kind=kind, squared=dice.squared_pred, like=input,
                                    lambda_region=loss.lambda_dice)
    fkw, cw = _focal_config(focal, prep, input, 3, 4, loss.lambda_focal)
    cols = rcols + (("focal", "count") if fkw["focal_masked"] else ("focal",))
    alpha = None if focal.alpha is None else float(focal.alpha)
    stats = class_stats(prep.input, prep.target, StatsSpec(act, cols, gamma=focal.gamma, alpha=alpha))
    return formula.loss_formula(stats, make_config(**rkw, **fkw), rw, cw)
