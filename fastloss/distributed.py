"""Batch statistics that are exact under data-parallel training (DistributedDataParallel).

With ``batch=True`` a Dice-family loss is a formula of per-class sums over the *whole* batch. Under DDP each
rank sees only its own samples, so a rank's "batch" Dice is the Dice of its shard. The sums are tiny
(``(C, K)``), so they can be all-reduced before the formula:

.. math:: S = \\sum_r s_r, \\qquad L_r = f(S) \\text{ on every rank.}

Gradients: DDP averages the parameter gradients, ``g = (1/W) Σ_r ∂L_r/∂θ``, and each rank back-propagates
only through its own ``s_r``. The backward of the all-reduce is itself a sum-all-reduce of the incoming
gradients: every rank holds the same ``∂f/∂S``, so each gets ``W·∂f/∂S`` for its ``s_r`` and
``g = (1/W) Σ_r W·∂f/∂S·∂s_r/∂θ = ∂f/∂S·Σ_r ∂s_r/∂θ``: the gradient of one process on the concatenated
batch. (nnU-Net's ``AllGatherGrad`` followed by a sum is the same operation.)

What :func:`sync_batch_statistics` covers: every loss whose batch sums go through
``LossBase.reduce_stats``: :class:`~fastloss.DiceLoss`, ``IoULoss``, ``TverskyLoss``, ``FocalTverskyLoss``,
``AsymmetricSimilarityLoss``, ``GeneralizedDiceLoss`` (its class weights come from the all-reduced volumes),
``PenaltyGeneralizedDiceLoss``, ``MCCLoss`` (its ``tp``/``fp``/``fn``/``tn`` are formulas of the all-reduced
``Σpg``, ``Σp``, ``Σg`` and voxel count), ``SkeletonRecallLoss`` (its recall sums ``Σp·S`` and ``Σ S`` of the
tubed skeleton, each rank's skeleton made from its own samples: the skeleton is per sample), and the Dice part of ``DiceCELoss``, ``DiceFocalLoss``, ``DiceTopKLoss``,
``DiceBoundaryLoss``, ``DiceHausdorffDTLoss``, ``DiceCESkeletonRecallLoss`` (Dice and recall); and ``TopKLoss`` (``k`` %, also inside DiceTopK), see below.
The other per-voxel parts of the compound losses (CE, focal, boundary, Hausdorff) stay per rank, as in
nnU-Net: a rank's CE is the mean over its own voxels, and DDP's averaging of gradients makes that the mean
over the whole batch when every rank has the same number of counted voxels (the mean of the ranks' values is
then the single-process value too). ``SensitivitySpecificityLoss``, ``ExpLogLoss`` and ``HausdorffDTLoss``
with ``batch=True`` and the threshold TopK (``t``) reduce their sums themselves and are refused
(``ValueError``) rather than silently left per rank.

**TopK** under synchronisation selects the ``K = int(n·k/100)`` hardest voxels of the *whole* batch (``n``
counted voxels over all ranks), :func:`synced_topk`: every rank sends its own ``K`` largest CE values (all
others cannot be among the global ``K``), the ``K``-th largest of those is the global threshold ``τ``, and a
rank's term is ``(W/K)·Σ_{own voxels} ce·1{ce > τ}`` plus its share of the ties at ``τ``. The mean over
ranks of these terms is the single-process TopK of the concatenated batch, and so are the DDP-averaged
gradients. (nnU-Net's ``TopKLoss`` under DDP keeps the k % of each rank's shard instead.) The gather moves
``W·K`` values per step: 10 % of the batch's voxels for the paper's k.

The fused formula path is bypassed for a synchronised loss (the statistics path all-reduces).

This module stands above the losses it converts; the primitives the losses call while they run
(:func:`all_reduce_sum`, :func:`synced_topk`) live below them, in ``fastloss.ops.collectives``.
"""

from __future__ import annotations

from torch import nn

from .ops.collectives import all_reduce_sum, synced_topk  # re-exported: the primitives the losses call

__all__ = ["all_reduce_sum", "sync_batch_statistics", "synced_modules", "synced_topk"]


def _covered_and_refused():
    from .losses import ExpLogLoss, HausdorffDTLoss, SensitivitySpecificityLoss, TopKLoss
    from .losses._common import LossBase
    from .losses.monai_more import MCCLoss
    from .losses.region import OverlapLoss
    from .losses.topology import SkeletonRecallLoss

    return LossBase, TopKLoss, (OverlapLoss, MCCLoss, SkeletonRecallLoss), (SensitivitySpecificityLoss, ExpLogLoss, HausdorffDTLoss)


def _is_batch_part(m, base, topk) -> bool:
    return (isinstance(m, base) and m.batch) or isinstance(m, topk)


def synced_modules(loss: nn.Module) -> list:
    """The submodules of ``loss`` (itself included) whose batch statistics are all-reduced."""
    base, topk, _, _ = _covered_and_refused()
    return [m for m in loss.modules() if _is_batch_part(m, base, topk) and m._ddp_sync]


def sync_batch_statistics(loss: nn.Module, process_group=None, *, enabled: bool = True) -> nn.Module:
    """Make the ``batch=True`` statistics of ``loss`` (and of its parts) exact under DDP; returns ``loss``.

    Every Dice-family part with ``batch=True`` then all-reduces its per-class sums over ``process_group``
    before its formula, and every TopK part selects the k % hardest voxels of all ranks together (see the
    module docstring for what is covered). Parts with
    ``batch=False`` are per sample and need nothing. The process group is looked up when the loss runs, so
    this may be called before ``torch.distributed.init_process_group``.

    Args:
        loss: a fastloss loss, or any module containing fastloss losses (e.g. a
            :class:`~fastloss.DeepSupervisionLoss`).
        process_group: the group to reduce over; None for the default (``WORLD``) group.
        enabled: False undoes a previous call (the loss becomes per rank again).

    Returns:
        ``loss`` itself (modified in place).

    Raises:
        TypeError: ``loss`` is not an ``nn.Module``.
        ValueError: ``loss`` has no Dice-family part with ``batch=True`` and no TopK (nothing to synchronise),
            or a ``batch=True`` part whose sums this does not cover (``SensitivitySpecificityLoss``,
            ``ExpLogLoss``, ``HausdorffDTLoss``), or a threshold TopK (``t``).

    Example:
        >>> import fastloss
        >>> from fastloss.distributed import sync_batch_statistics
        >>> loss = sync_batch_statistics(fastloss.get_loss("DiceTopK"))  # batch Dice over all ranks
    """
    if not isinstance(loss, nn.Module):
        raise TypeError(f"sync_batch_statistics expects an nn.Module loss, got {type(loss).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    base, topk, covered, refused = _covered_and_refused()
    batch_parts = [m for m in loss.modules() if _is_batch_part(m, base, topk)]
    bad = [type(m).__name__ for m in batch_parts if isinstance(m, refused)
           or not isinstance(m, covered + (topk,)) or (isinstance(m, topk) and m.t is not None)]
    if enabled and bad:
        raise ValueError(
            f"sync_batch_statistics: the batch statistics of {', '.join(sorted(set(bad)))} are not all-reduced "
            "(covered: the Dice family built on DiceLoss/Tversky/GeneralizedDice statistics, and TopKLoss with "
            "k); use batch=False for that part (the threshold TopK has no such option)"
        )
    if enabled and not batch_parts:
        raise ValueError(
            f"sync_batch_statistics: {type(loss).__name__} has no Dice-family part with batch=True and no TopK, so "
            "there is nothing to all-reduce (per-sample and per-voxel losses are already exact under DDP's "
            "averaging)"
        )
    for m in loss.modules():
        # every module gets the flag: compound losses read it to skip their fused (non-reducing) formula path
        m._ddp_sync = enabled
        m._ddp_group = process_group if enabled else None
    return loss
