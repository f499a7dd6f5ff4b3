"""The paper's losses with nnU-Net v2's conventions (this module does not import nnunetv2).

:func:`build_nnunet_loss` is what the trainers' ``_build_loss`` returns: the paper's configuration of a loss
(:func:`fastloss.get_loss`) with what nnU-Net decides per dataset and plan:

- batch Dice from the plans (``configuration_manager.batch_dice``) for every loss with a ``batch`` argument,
  except the Table 4 variants whose name fixes it (``SampleDice``, ``BatchSquareDice``, ...);
- background excluded (the paper's and nnU-Net's ``do_bg=False``), softmax outputs;
- the ignore label of the label manager as ``ignore_index``;
- region-based training (``label_manager.has_regions``): sigmoid outputs, every region kept (nnU-Net's
  ``do_bg=True``: regions have no background channel). With ``regions`` (the label manager's
  ``foreground_regions``, what fastloss's trainers pass) the targets are the integer labels and the losses read
  them through a label-to-regions table (``regions=``): nnU-Net's region conversion is not run, no one-hot
  region tensor is built, and the ignore label is an exact ``ignore_index``. Without ``regions``: nnU-Net's
  one-hot region targets, whose last channel marks the ignored voxels when there is an ignore label (nnU-Net's
  layout). ``DiceCE`` becomes nnU-Net's ``DC_and_BCE_loss`` (Dice on the sigmoid + BCE averaged over the
  counted voxels); the other region losses that take ``sigmoid`` work as they are;
- deep supervision (:class:`~fastloss.DeepSupervisionLoss` with the trainer's weights);
- DDP: batch statistics all-reduced over the ranks and TopK over the whole batch of all ranks
  (:func:`fastloss.distributed.sync_batch_statistics`).

Value convention: fastloss's Dice part is ``1 − Dice``, nnU-Net's ``−Dice``; the gradients are the same.
``nnunet_values=True`` subtracts the constant (the Dice part's weight) so that logged values equal those of
nnU-Net's own ``DC_and_CE_loss``/``DC_and_topk_loss``/``DC_and_BCE_loss``/``MemoryEfficientSoftDiceLoss``;
it is offered for the losses nnU-Net has (:data:`NNUNET_VALUE_LOSSES`).

The losses after the paper (:data:`fastloss.registry.BEYOND_PAPER`: Skeleton Recall, its Dice + CE compound, cbDice,
Boundary DoU and MONAI's other segmentation losses) are built as :func:`fastloss.registry.logits_loss` builds them
(the authors'/MONAI's settings), with nnU-Net's plan and label manager deciding what they decide for the paper's
losses: ``batch`` from the plan's ``batch_dice`` where the loss has it, the ignore label as ``ignore_index`` (a
ValueError for a loss without one), label datasets only (softmax over classes). The skeleton losses follow the
authors' ``nnUNetTrainerSkeletonRecall``: smoothing 1e-5, and the tubed skeleton made from the *full-resolution*
labels (their ``SkeletonTransform``, here :func:`fastloss.skeleton.tubed_skeleton` on the labels' device) and
downsampled with the labels to every deep-supervision scale (``nearest-exact``, nnU-Net's
``DownsampleSegForDSTransform``), not made again from the downsampled labels (:class:`SkeletonTargetLoss`).
Losses that need distance maps or one-hot targets (cbDice, Boundary DoU) make them at each scale from that scale's
labels, as the paper's boundary losses do.

One known difference remains with an ignore label: fastloss's TopK keeps k % of the *labelled* voxels (the
paper's definition); nnU-Net's ``TopKLoss`` keeps k % of all voxels of the patch, ignored ones included
(their CE is 0), so its TopK term is smaller when many voxels are ignored. Without an ignore label they agree.
"""

from __future__ import annotations

import inspect
import re
import unicodedata
import warnings
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .. import losses as L
from ..distributed import sync_batch_statistics
from ..losses._common import LossBase, check_bool, check_ignore_index
from ..losses.deep_supervision import DeepSupervisionLoss
from ..losses.deep_supervision import downsample_target
from ..registry import BEYOND_PAPER, PAPER_LOSSES, logits_loss
from ..registry import canonical_name as _registry_name
from ..skeleton import tubed_skeleton

__all__ = [
    "NNUNET_VALUE_LOSSES",
    "REGION_LOSSES",
    "NNUNetLoss",
    "RegionDiceBCELoss",
    "RegionLabelsDiceBCELoss",
    "SKELETON_LOSSES",
    "NNUNetSkeletonLoss",
    "SkeletonTargetLoss",
    "build_nnunet_loss",
    "canonical_name",
]

# Losses that nnU-Net itself has, with the weight of their Dice part (the constant between the conventions).
NNUNET_VALUE_LOSSES = {"Dice": 1.0, "Dice (Batch, no square)": 1.0, "DiceCE": 1.0, "DiceTopK": 1.0}
# Losses usable with region-based (sigmoid) training. Those marked True stay exact with an ignore label:
# their statistics are Σpg, Σp, Σg (and squares) only, which a masked voxel (p = 0, g = 0) leaves unchanged.
REGION_LOSSES = {
    "Dice": True, "Dice (Batch, no square)": True, "BatchSquareDice": True, "SampleDice (no square)": True,
    "SampleSquareDice": True, "DiceCE": True, "IoU": True, "Tversky": True, "FocalTversky": True,
    "Asym": True, "GDice": True, "pGDice": True, "SS": False,
}
# Losses after the paper whose target is the tubed skeleton of the labels (the Skeleton Recall authors' trainer).
SKELETON_LOSSES = ("SkeletonRecall", "DiceCESkeletonRecall")
# Table 4 names whose batch/sample choice is part of the name (nnU-Net's plan does not override it).
_FIXED_BATCH = {"Dice (Batch, no square)", "BatchSquareDice", "SampleDice (no square)", "SampleSquareDice"}
# A logit whose sigmoid is exactly 0 in float16/bfloat16/float32/float64 (exp(1e4) overflows all of them).
_MASKED_LOGIT = -1.0e4


def canonical_name(name: str) -> str:
    """The registry's canonical spelling of a loss name of :data:`~fastloss.registry.PAPER_LOSSES` or
    :data:`~fastloss.registry.BEYOND_PAPER` (case, accents, punctuation ignored; class names with or without
    ``Loss``, as :func:`fastloss.registry.canonical_name`).

    Raises:
        TypeError: ``name`` is not a string.
        ValueError: an unknown name; the message lists the known ones.
    """
    canon = _registry_name(name, beyond_paper=True)  # TypeError for a non-string
    if canon is None:
        raise ValueError(f"unknown loss name {name!r}; known names: {', '.join(PAPER_LOSSES)}; after the paper: "
                         f"{', '.join(BEYOND_PAPER)}")
    return canon


class RegionDiceBCELoss(nn.Module):
    """nnU-Net's ``DC_and_BCE_loss`` on fastloss statistics: ``DiceLoss(sigmoid=True)`` over every region plus
    ``BCEWithLogits`` averaged over the counted voxels and all regions (``Σ mask·bce / max(Σ mask, 1e-8)``,
    the mask broadcast over regions as in nnU-Net).

    ``forward(input, target, mask=None)``: ``target`` the ``(B, R, *spatial)`` region one-hot (no ignore
    channel), ``mask`` ``(B, 1, *spatial)`` bool/float with 1 at counted voxels, or None.
    """

    def __init__(self, batch: bool, smooth: float = 1e-5, weight_dice: float = 1.0, weight_ce: float = 1.0) -> None:
        super().__init__()
        self.dice = L.DiceLoss(sigmoid=True, include_background=True, batch=batch, smooth_nr=smooth,
                               smooth_dr=smooth)
        self.weight_dice = float(weight_dice)
        self.weight_ce = float(weight_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        t = target.to(input.dtype)
        if mask is None:
            dice = self.dice(input, t)
            bce = F.binary_cross_entropy_with_logits(input, t)
        else:
            m = mask.to(input.dtype)
            dice = self.dice(_masked_logits(input, mask), t * m)
            # nnU-Net: (bce * mask).sum() / clip(mask.sum(), 1e-8) with the (B, 1, ...) mask broadcast over the
            # R regions in the numerator but counted once per voxel in the denominator; kept as is for parity.
            bce = (F.binary_cross_entropy_with_logits(input, t, reduction="none") * m).sum() / m.sum().clamp_min(1e-8)
        return self.weight_dice * dice + self.weight_ce * bce


class RegionLabelsDiceBCELoss(nn.Module):
    """nnU-Net's ``DC_and_BCE_loss`` from integer labels and the regions (no one-hot region target): the sigmoid
    Dice of every region and the binary CE of every region channel, one statistics pass for both, equal to
    :class:`RegionDiceBCELoss` on nnU-Net's converted target.

    nnU-Net's BCE is ``BCEWithLogits`` (mean over every (voxel, region) element) without an ignore label, and
    ``Σ mask·bce / max(Σ mask, 1e-8)`` (the sum over regions divided by the counted voxels) with one: so
    the summed binary CE is divided by ``R·N`` or by the counted voxels.
    """

    def __init__(self, regions: Sequence, batch: bool, ignore_index: Optional[int] = None, smooth: float = 1e-5,
                 weight_dice: float = 1.0, weight_ce: float = 1.0) -> None:
        super().__init__()
        self.dice = L.DiceLoss(sigmoid=True, include_background=True, batch=batch, smooth_nr=smooth,
                               smooth_dr=smooth, regions=regions, ignore_index=ignore_index)
        self.bce = L.CrossEntropyLoss(sigmoid=True, regions=regions, ignore_index=ignore_index, reduction="sum")
        self.ignore_index = ignore_index
        self.weight_dice = float(weight_dice)
        self.weight_ce = float(weight_ce)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        from ..ops.stats import shared_statistics

        with shared_statistics(("pg", "p", "g", "ce", "count")):  # both parts from one pass over the logits
            dice = self.dice(input, target)
            bce_sum = self.bce(input, target)
        if self.ignore_index is None:
            bce = bce_sum / float(target[:, :1].numel() * input.shape[1])
        else:
            counted = (target != self.ignore_index).sum().to(bce_sum.dtype)
            bce = bce_sum / counted.clamp_min(1e-8)
        return self.weight_dice * dice + self.weight_ce * bce


def _masked_logits(input: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits with the ignored voxels set to a value whose sigmoid is exactly 0: a masked voxel then adds 0 to
    Σp and Σpg, and ``torch.where`` sends no gradient to it (nnU-Net multiplies by the mask: the same)."""
    return torch.where(mask.bool(), input, torch.full((), _MASKED_LOGIT, dtype=input.dtype, device=input.device))


class NNUNetLoss(nn.Module):
    """Adapts a fastloss loss to the targets nnU-Net's trainer hands over, at one scale.

    Label training: ``target`` ``(B, 1, *spatial)`` (nnU-Net keeps it as a float or int16 tensor) is passed
    as integer labels. Region training: ``target`` ``(B, R[+1], *spatial)`` one-hot; with an ignore label the
    last channel marks ignored voxels (nnU-Net's layout) and is turned into a mask. ``offset`` is subtracted
    from the value (nnU-Net's value convention, see the module docstring).
    """

    def __init__(self, loss: nn.Module, *, regions: bool = False, region_ignore: bool = False, offset: float = 0.0):
        super().__init__()
        self.loss = loss
        self.regions = check_bool(regions, "regions")
        self.region_ignore = check_bool(region_ignore, "region_ignore")
        self.offset = float(offset)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a tensor, got {type(target).__name__}")
        if not self.regions:
            if target.is_floating_point():
                target = target.round().long()  # nnU-Net's segmentations arrive as float labels
            value = self.loss(input, target)
        else:
            mask = None
            if self.region_ignore:
                mask = ~target[:, -1:].bool()
                target = target[:, :-1]
            if isinstance(self.loss, RegionDiceBCELoss):
                value = self.loss(input, target, mask)
            elif mask is None:
                value = self.loss(input, target.to(input.dtype))
            else:
                value = self.loss(_masked_logits(input, mask), target.to(input.dtype) * mask.to(input.dtype))
        return value - self.offset if self.offset else value

    def extra_repr(self) -> str:
        return f"regions={self.regions}, region_ignore={self.region_ignore}, offset={self.offset}"


def _as_labels(target: torch.Tensor) -> torch.Tensor:
    """nnU-Net's segmentations (float or int16 ``(B, 1, *spatial)``) as int64 labels."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"target must be a tensor, got {type(target).__name__}")
    return target.round().long() if target.is_floating_point() else target.long()


class NNUNetSkeletonLoss(nn.Module):
    """A skeleton loss (``loss(input, labels, skeleton=...)``: :class:`fastloss.SkeletonRecallLoss`,
    :class:`fastloss.DiceCESkeletonRecallLoss`) at one scale, its target the labels and their tubed skeleton
    stacked as the two channels of one ``(B, 2, *spatial)`` tensor (what :class:`SkeletonTargetLoss` hands down,
    so that :class:`~fastloss.DeepSupervisionLoss` downsamples both alike)."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if not isinstance(target, torch.Tensor) or target.ndim < 2 or target.shape[1] != 2:
            raise ValueError("NNUNetSkeletonLoss expects the (B, 2, *spatial) stack of labels and skeleton that "
                             "SkeletonTargetLoss makes, got "
                             + (f"shape {tuple(target.shape)}" if isinstance(target, torch.Tensor) else type(target).__name__))
        return self.loss(input, target[:, :1], skeleton=target[:, 1:])


class SkeletonTargetLoss(nn.Module):
    """The authors' skeleton target for nnU-Net's outputs: the tubed skeleton of the full-resolution labels
    (:func:`fastloss.skeleton.tubed_skeleton`: their ``SkeletonTransform(do_tube=True)``), downsampled with the
    labels to every deep-supervision scale (``nearest-exact``, :func:`fastloss.losses.deep_supervision.downsample_target`,
    nnU-Net's ``DownsampleSegForDSTransform``), then ``inner`` (a :class:`NNUNetSkeletonLoss`, or a
    :class:`~fastloss.DeepSupervisionLoss` of one) on the stacked ``(B, 2, *spatial)`` labels and skeleton.

    ``forward(output, target)``: ``target`` the full-resolution labels ``(B, 1, *spatial)`` (fastloss's trainers:
    targets made on the device), or nnU-Net's list of one target per output (its loader's, full resolution first:
    the skeleton is made from ``target[0]`` and downsampled to each other target's size, as the authors' loader
    downsamples its skeleton with the segmentation).
    """

    def __init__(self, inner: nn.Module, tube_dilations: int = 2) -> None:
        super().__init__()
        self.inner = inner
        self.tube_dilations = int(tube_dilations)

    def skeleton(self, labels: torch.Tensor) -> torch.Tensor:
        """The tubed skeleton of ``(B, 1, *spatial)`` integer labels (same shape, class ids)."""
        sd = labels.ndim - 2
        if sd not in (2, 3):
            raise ValueError(f"the skeleton target needs 2 or 3 spatial dims, got labels of shape {tuple(labels.shape)}")
        with torch.no_grad():
            return tubed_skeleton(labels[:, 0], sd, dilations=self.tube_dilations).unsqueeze(1)

    def forward(self, output, target) -> torch.Tensor:
        if isinstance(target, (list, tuple)):
            if not target:
                raise ValueError("target must be a non-empty list of nnU-Net's per-output targets")
            labels = [_as_labels(t) for t in target]
            if labels[0].ndim < 3 or labels[0].shape[1] != 1:
                raise ValueError(f"the skeleton losses take label targets (B, 1, *spatial), got {tuple(target[0].shape)}")
            skel = self.skeleton(labels[0])
            stacked = [torch.cat([t, downsample_target(skel, t.shape[2:])], dim=1) for t in labels]
        elif isinstance(target, torch.Tensor):
            labels = _as_labels(target)
            ref = output[0] if isinstance(output, (list, tuple)) and output else output
            if isinstance(ref, torch.Tensor) and labels.ndim == ref.ndim - 1:
                labels = labels.unsqueeze(1)  # (B, *spatial) -> (B, 1, *spatial)
            if labels.ndim < 3 or labels.shape[1] != 1:
                raise ValueError(f"the skeleton losses take label targets (B, 1, *spatial), got {tuple(target.shape)}")
            stacked = torch.cat([labels, self.skeleton(labels)], dim=1)
        else:
            raise TypeError(f"target must be a tensor or a list of tensors, got {type(target).__name__}")
        return self.inner(output, stacked)

    def extra_repr(self) -> str:
        return f"tube_dilations={self.tube_dilations}"


def _beyond_paper_loss(canon: str, *, batch_dice: bool, ignore_label: Optional[int], num_classes: Optional[int],
                       overrides: dict) -> nn.Module:
    """Loss ``canon`` of :data:`~fastloss.registry.BEYOND_PAPER` with what nnU-Net's plan and label manager say."""
    cls, _ = BEYOND_PAPER[canon]
    params = inspect.signature(cls).parameters
    kwargs = {}
    if "batch" in params:
        kwargs["batch"] = batch_dice
    if canon == "SkeletonRecall":
        kwargs["smooth"] = 1e-5  # the authors' trainer (their SoftSkeletonRecallLoss's default is 1)
    if ignore_label is not None:
        if "ignore_index" not in params:
            able = [n for n, (c, _) in BEYOND_PAPER.items() if "ignore_index" in inspect.signature(c).parameters]
            raise ValueError(f"loss {canon!r} has no ignore_index, so it cannot train on a dataset with an ignore "
                             f"label ({ignore_label}); the losses after the paper that can: {', '.join(able)}")
        kwargs["ignore_index"] = ignore_label
    return logits_loss(canon, num_classes, **{**kwargs, **overrides})


def build_nnunet_loss(
    name: str,
    *,
    batch_dice: bool = True,
    ignore_label: Optional[int] = None,
    has_regions: bool = False,
    deep_supervision_weights: Optional[Sequence[float]] = None,
    ddp: bool = False,
    process_group=None,
    nnunet_values: bool = False,
    regions: Optional[Sequence] = None,
    num_classes: Optional[int] = None,
    **overrides,
) -> nn.Module:
    """The paper's loss ``name`` (or a loss after the paper) with nnU-Net v2's conventions (see the module docstring).

    Args:
        name: a paper loss name (:func:`fastloss.paper_loss_names`; spelling as :func:`fastloss.get_loss`) or one
            of :data:`fastloss.registry.BEYOND_PAPER` (label datasets only).
        batch_dice: nnU-Net's plan's ``batch_dice`` (sets ``batch`` of every loss that has it, except the
            Table 4 variants whose name fixes it).
        ignore_label: the label manager's ignore label, or None.
        has_regions: region-based training (sigmoid outputs, one-hot region targets).
        deep_supervision_weights: one weight per network output (full resolution first), or None without
            deep supervision.
        ddp: all-reduce the batch statistics over ``process_group`` (None: the default group) when the loss
            has any (losses without batch statistics need nothing).
        nnunet_values: subtract the Dice part's constant so values equal nnU-Net's (``−Dice`` convention).
        regions: with ``has_regions``, the label manager's ``foreground_regions``: the targets are then the
            integer labels (nnU-Net's region conversion switched off), read through a label-to-regions table.
        num_classes: the network's output channels (the label manager's ``num_segmentation_heads``); needed by
            ``UnifiedFocal`` only (its multi-class form, :func:`fastloss.registry.logits_loss`).
        **overrides: constructor arguments for the loss, as :func:`fastloss.get_loss`.

    Returns:
        An ``nn.Module`` taking ``(output, target)`` as nnU-Net's trainer calls its loss (lists of outputs and
        targets with deep supervision).

    Raises:
        TypeError: a non-string name, a non-bool flag, a non-int ignore label.
        ValueError: an unknown name (lists the known ones); a loss that cannot do region-based training (lists
            those that can) or cannot mask an ignore label there (or, after the paper, at all); ``nnunet_values``
            for a loss nnU-Net does not have.

    Example:
        >>> from fastloss.nnunet.losses import build_nnunet_loss
        >>> loss = build_nnunet_loss("DiceTopK", batch_dice=True, deep_supervision_weights=[4/7, 2/7, 1/7, 0])
    """
    canon = canonical_name(name)
    batch_dice = check_bool(batch_dice, "batch_dice")
    has_regions = check_bool(has_regions, "has_regions")
    ddp = check_bool(ddp, "ddp")
    nnunet_values = check_bool(nnunet_values, "nnunet_values")
    ignore_label = check_ignore_index(ignore_label)
    offset = 0.0
    if nnunet_values:
        if canon not in NNUNET_VALUE_LOSSES:
            raise ValueError(
                f"nnunet_values: nnU-Net has no loss {canon!r} whose values to match; it has "
                f"{', '.join(NNUNET_VALUE_LOSSES)}"
            )
        offset = NNUNET_VALUE_LOSSES[canon] * float(overrides.get("lambda_dice", 1.0))

    if canon in BEYOND_PAPER:
        if has_regions:
            raise ValueError(
                f"loss {canon!r} takes a softmax over classes and cannot train on nnU-Net's regions (sigmoid "
                f"outputs); region-based training supports {', '.join(REGION_LOSSES)}"
            )
        loss = _beyond_paper_loss(canon, batch_dice=batch_dice, ignore_label=ignore_label, num_classes=num_classes,
                                  overrides=overrides)
        if canon in SKELETON_LOSSES:
            tube = int(overrides.get("tube_dilations", 2))
            loss = NNUNetSkeletonLoss(loss)
            if deep_supervision_weights is not None:
                loss = DeepSupervisionLoss(loss, deep_supervision_weights)
            loss = SkeletonTargetLoss(loss, tube_dilations=tube)
        else:
            loss = NNUNetLoss(loss)
            if deep_supervision_weights is not None:
                loss = DeepSupervisionLoss(loss, deep_supervision_weights)
        return _sync_ddp(loss, canon, ddp, process_group)

    cls, config = PAPER_LOSSES[canon]
    params = inspect.signature(cls).parameters
    kwargs = dict(config)
    if "batch" in params and canon not in _FIXED_BATCH:
        kwargs["batch"] = batch_dice
    region_ignore = False
    if has_regions and regions is not None:
        if canon not in REGION_LOSSES:
            raise ValueError(
                f"loss {canon!r} takes a softmax over classes and cannot train on nnU-Net's regions (sigmoid "
                f"outputs); region-based training supports {', '.join(REGION_LOSSES)}"
            )
        # integer labels and the regions: the ignore label is an exact ignore_index for every region loss
        if canon == "DiceCE":
            loss = RegionLabelsDiceBCELoss(regions, batch=kwargs["batch"], ignore_index=ignore_label,
                                           smooth=kwargs.get("smooth_nr", 1e-5),
                                           weight_dice=overrides.pop("lambda_dice", 1.0),
                                           weight_ce=overrides.pop("lambda_ce", 1.0))
            if overrides:
                raise TypeError(f"region DiceCE takes no arguments {sorted(overrides)}")
        else:
            kwargs.update(softmax=False, sigmoid=True, include_background=True, regions=regions,
                          ignore_index=ignore_label)
            loss = cls(**{**kwargs, **overrides})
        has_regions = False  # NNUNetLoss passes the labels on as labels
    elif has_regions:
        if canon not in REGION_LOSSES:
            raise ValueError(
                f"loss {canon!r} takes a softmax over classes and cannot train on nnU-Net's regions (sigmoid "
                f"outputs); region-based training supports {', '.join(REGION_LOSSES)}"
            )
        region_ignore = ignore_label is not None
        if region_ignore and not REGION_LOSSES[canon]:
            raise ValueError(f"loss {canon!r} cannot mask nnU-Net's ignore label in region-based training")
        if canon == "DiceCE":
            loss = RegionDiceBCELoss(batch=kwargs["batch"], smooth=kwargs.get("smooth_nr", 1e-5),
                                     weight_dice=overrides.pop("lambda_dice", 1.0),
                                     weight_ce=overrides.pop("lambda_ce", 1.0))
            if overrides:
                raise TypeError(f"region DiceCE takes no arguments {sorted(overrides)}")
        else:
            kwargs.update(softmax=False, sigmoid=True, include_background=True)
            loss = cls(**{**kwargs, **overrides})
    else:
        if ignore_label is not None:
            kwargs["ignore_index"] = ignore_label
        loss = cls(**{**kwargs, **overrides})
    loss = NNUNetLoss(loss, regions=has_regions, region_ignore=region_ignore, offset=offset)
    if deep_supervision_weights is not None:
        loss = DeepSupervisionLoss(loss, deep_supervision_weights)
    return _sync_ddp(loss, canon, ddp, process_group)


def _sync_ddp(loss: nn.Module, canon: str, ddp: bool, process_group) -> nn.Module:
    """All-reduce the batch statistics under DDP where the loss has any (a warning where they cannot be)."""
    if ddp and any((isinstance(m, LossBase) and m.batch) or isinstance(m, L.TopKLoss) for m in loss.modules()):
        try:
            sync_batch_statistics(loss, process_group)
        except ValueError as e:  # e.g. SS/ELL with batch=True: train, but say that their sums stay per rank
            warnings.warn(f"{canon}: batch statistics stay per rank under DDP ({e})", stacklevel=3)
    return loss


def trainer_suffix(name: str) -> str:
    """A Python identifier for loss ``name``: accents folded, other characters to ``_`` (``TopK-10%`` ->
    ``TopK_10pct``, ``Lovász`` -> ``Lovasz``, ``TopK-Threshold (0.1)`` -> ``TopK_Threshold_0_1``)."""
    s = unicodedata.normalize("NFKD", canonical_name(name))
    s = "".join(ch for ch in s if not unicodedata.combining(ch)).replace("%", "pct")
    return re.sub(r"_+", "_", re.sub(r"[^0-9A-Za-z]", "_", s)).strip("_")
