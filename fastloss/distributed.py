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
``PenaltyGeneralizedDiceLoss``, and the Dice part of ``DiceCELoss``, ``DiceFocalLoss``, ``DiceTopKLoss``,
``DiceBoundaryLoss``, ``DiceHausdorffDTLoss``. The per-voxel parts of the compound losses (CE, focal, TopK,
boundary, Hausdorff) stay per rank, as in nnU-Net: a rank's CE is the mean over its own voxels and DDP's
averaging of gradients makes that the mean over the whole batch when every rank has the same number of
counted voxels. **TopK** selects the k % hardest voxels *of each rank's shard* (as nnU-Net's ``TopKLoss``
under DDP); the union of the ranks' selections is not the k % hardest of the whole batch, so DiceTopK's TopK
term equals the mean over ranks of the per-shard TopK, not the single-process TopK of the concatenated
batch. ``SensitivitySpecificityLoss``, ``ExpLogLoss`` and ``HausdorffDTLoss`` with ``batch=True`` reduce
their sums themselves and are refused (``ValueError``) rather than silently left per rank.

The fused Triton formula path is bypassed for a synchronised loss (the statistics path all-reduces).
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["all_reduce_sum", "sync_batch_statistics", "synced_modules"]


def _dist():
    import torch.distributed as dist

    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this PyTorch build")
    return dist


class _AllReduceSum(torch.autograd.Function):
    """``Σ_r x_r`` over a process group, differentiable: the backward sums the incoming gradients over the
    group too (``∂(Σ_r x_r)/∂x_q = 1`` for every output copy, and every rank holds one copy)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        out = x.detach().clone().contiguous()
        _dist().all_reduce(out, op=_dist().ReduceOp.SUM, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        g = grad.detach().clone().contiguous()
        _dist().all_reduce(g, op=_dist().ReduceOp.SUM, group=ctx.group)
        return g, None


def all_reduce_sum(x: torch.Tensor, group=None) -> torch.Tensor:
    """The sum of ``x`` over the ranks of ``group`` (None: the default group), with autograd.

    Returns ``x`` unchanged when the group has one rank.

    Raises:
        RuntimeError: torch.distributed is not initialised.
    """
    dist = _dist()
    if not dist.is_initialized():
        raise RuntimeError(
            "sync_batch_statistics: torch.distributed is not initialised; call "
            "torch.distributed.init_process_group before the loss runs (or build the loss without it)"
        )
    if dist.get_world_size(group) == 1:
        return x
    return _AllReduceSum.apply(x, group)


def _covered_and_refused():
    from .losses import ExpLogLoss, HausdorffDTLoss, SensitivitySpecificityLoss
    from .losses._common import LossBase
    from .losses.region import _OverlapLoss

    return LossBase, (_OverlapLoss,), (SensitivitySpecificityLoss, ExpLogLoss, HausdorffDTLoss)


def synced_modules(loss: nn.Module) -> list:
    """The submodules of ``loss`` (itself included) whose batch statistics are all-reduced."""
    base, _, _ = _covered_and_refused()
    return [m for m in loss.modules() if isinstance(m, base) and m._ddp_sync and m.batch]


def sync_batch_statistics(loss: nn.Module, process_group=None, *, enabled: bool = True) -> nn.Module:
    """Make the ``batch=True`` statistics of ``loss`` (and of its parts) exact under DDP; returns ``loss``.

    Every Dice-family part with ``batch=True`` then all-reduces its per-class sums over ``process_group``
    before its formula (see the module docstring for what is covered and what TopK does). Parts with
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
        ValueError: ``loss`` has no Dice-family part with ``batch=True`` (nothing to synchronise), or it has a
            ``batch=True`` part whose sums this does not cover (``SensitivitySpecificityLoss``,
            ``ExpLogLoss``, ``HausdorffDTLoss``).

    Example:
        >>> import fastloss
        >>> from fastloss.distributed import sync_batch_statistics
        >>> loss = sync_batch_statistics(fastloss.get_loss("DiceTopK"))  # batch Dice over all ranks
    """
    if not isinstance(loss, nn.Module):
        raise TypeError(f"sync_batch_statistics expects an nn.Module loss, got {type(loss).__name__}")
    if not isinstance(enabled, bool):
        raise TypeError(f"enabled must be a bool, got {type(enabled).__name__}")
    base, covered, refused = _covered_and_refused()
    batch_parts = [m for m in loss.modules() if isinstance(m, base) and m.batch]
    bad = [type(m).__name__ for m in batch_parts if isinstance(m, refused) or not isinstance(m, covered)]
    if enabled and bad:
        raise ValueError(
            f"sync_batch_statistics: the batch statistics of {', '.join(sorted(set(bad)))} are not all-reduced "
            "(covered: the Dice family built on DiceLoss/Tversky/GeneralizedDice statistics); use batch=False "
            "for that part"
        )
    if enabled and not batch_parts:
        raise ValueError(
            f"sync_batch_statistics: {type(loss).__name__} has no Dice-family part with batch=True, so there is "
            "nothing to all-reduce (per-sample and per-voxel losses are already exact under DDP's averaging)"
        )
    for m in loss.modules():
        # every module gets the flag: compound losses read it to skip their fused (non-reducing) formula path
        m._ddp_sync = enabled
        m._ddp_group = process_group if enabled else None
    return loss
