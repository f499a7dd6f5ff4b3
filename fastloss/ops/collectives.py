"""The data-parallel primitives the losses call while they run (``torch.distributed``): a differentiable
sum-all-reduce of statistics, and the TopK selection over the voxels of all ranks.

Derivations and what they cover: ``fastloss.distributed``, which stands above the losses and converts them
(:func:`fastloss.distributed.sync_batch_statistics`) and re-exports these names.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["all_reduce_sum", "synced_topk"]


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


def synced_topk(ce: torch.Tensor, mask: Optional[torch.Tensor], k: float, reduction: str, group=None):
    """This rank's term of the TopK loss over the whole batch of all ranks (see the module docstring).

    Args:
        ce: per-voxel cross entropy of this rank's shard, any shape (0 at ignored voxels).
        mask: same number of elements, > 0 at counted voxels, or None (all counted).
        k: the percentage of counted voxels kept, in (0, 100].
        reduction: ``"mean"``: ``(W/K)·Σ`` of this rank's selected values (the mean over ranks is the
            single-process TopK mean); ``"sum"``: ``W·Σ`` likewise; ``"none"``: ``ce`` times this rank's
            selection weights (1 selected, 0 not, a fraction at ties), shaped like ``ce``.
        group: the process group (None: the default group).
    """
    from .topk import topk_count

    dist = _dist()
    if not dist.is_initialized():
        all_reduce_sum(ce, group)  # raises the not-initialised error
    W = dist.get_world_size(group)
    v = ce.detach()
    valid = torch.ones_like(v, dtype=torch.bool) if mask is None else (mask.reshape(v.shape) > 0)
    flat = v[valid]
    n = torch.tensor([flat.numel()], dtype=torch.int64, device=v.device)
    dist.all_reduce(n, group=group)
    K = topk_count(int(n.item()), k)  # nnU-Net's count over the whole batch
    if K == 0:
        return ce.sum() * 0.0 if reduction != "none" else ce * 0.0
    # Only a rank's own K largest values can be among the global K largest: gather those (padded with -inf,
    # below every CE >= 0) and take the K-th largest of the union as the threshold τ.
    own = torch.topk(flat, min(K, flat.numel())).values if flat.numel() else flat
    pad = torch.full((K,), float("-inf"), dtype=v.dtype, device=v.device)
    pad[: own.numel()] = own
    gathered = [torch.empty_like(pad) for _ in range(W)]
    dist.all_gather(gathered, pad, group=group)
    tau = torch.topk(torch.cat(gathered), K).values[-1]
    above = valid & (v > tau)
    tie = valid & (v == tau)
    counts = torch.stack([above.sum(), tie.sum()]).to(torch.float64)
    dist.all_reduce(counts, group=group)
    # K − #above voxels at τ are kept, split evenly over the tied ones of all ranks (any split gives the same
    # value; an even one keeps the ranks symmetric).
    tie_weight = (K - counts[0]) / counts[1]
    weights = above.to(ce.dtype) + tie.to(ce.dtype) * tie_weight.to(ce.dtype)
    if reduction == "none":
        return ce * weights
    total = (ce * weights).sum() * W
    return total if reduction == "sum" else total / K
