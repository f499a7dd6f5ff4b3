"""TopK selection over per-voxel cross entropy (the percentage variant of the TopK loss, Eq. 4).

nnU-Net semantics: the per-voxel CE of the whole batch is flattened, the ``k_count`` largest values are
kept and averaged. Exactly ``k_count`` values are selected, ties included (``torch.topk`` breaks ties by
position), so the result is ``sum(selected) / k_count`` whatever the ties.

Backends
--------
- torch (CPU tensors, ``FASTLOSS_BACKEND=torch``, and the fallback): ``torch.topk`` on the flat values.
  Its autograd sends the upstream gradient to the selected positions and zero elsewhere, which is the
  derivative of ``sum_{i in K} v_i`` for a fixed selection ``K`` (the selection itself is piecewise
  constant in ``v``).
- Triton (when :func:`fastloss.backend.use_triton` says so, the values are float32 and
  ``fastloss.ops.triton_topk`` imports): a radix select on the float bits, no sort. This module calls ::

      topk_select_triton(values: Tensor, k: int) -> (sum, threshold, count_greater, count_equal)

  with ``values`` a contiguous 1D float32 tensor and ``1 <= k <= values.numel()`` a Python int; the four
  results are 0-d tensors (the sum of the k largest, the k-th largest value, #{v > threshold},
  #{v == threshold}), not differentiable. The autograd lives here (:class:`_TopkSumFn`): the gradient
  of the sum is 1 for ``v_i > threshold`` and ``(k − count_greater) / count_equal`` for each
  ``v_i == threshold`` (the tied voxels share the remaining weight equally; a valid subgradient that
  equals ``torch.topk``'s whenever there is no tie at the threshold). The Triton helper owns that file;
  if it is absent or fails to import, the torch path runs.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validation import Target, _is_compiling

__all__ = ["topk_count", "topk_sum", "topk_ce_mean", "topk_select_mask", "topk_traced", "voxel_ce_kernel"]


def topk_count(n_valid: int, k: float) -> int:
    """Number of voxels the TopK loss keeps: ``max(1, int(n_valid * k / 100))`` (nnU-Net's formula).

    ``k`` is a percentage in (0, 100]; ``n_valid`` the number of counted (non-ignored) voxels. Returns 0
    only when ``n_valid == 0`` (nothing to select).
    """
    if not (0 < k <= 100):
        raise ValueError(f"k must be a percentage in (0, 100], got {k!r}")
    n_valid = int(n_valid)
    if n_valid <= 0:
        return 0
    return min(n_valid, max(1, int(n_valid * k / 100)))


def voxel_ce_kernel(input: torch.Tensor, target: Target) -> Optional[torch.Tensor]:
    """The ``(B, N)`` per-voxel softmax CE ``−log p_y`` of logits ``input`` and integer labels ``target`` (0 at
    ignored voxels) from a fused kernel, or None where none serves (the caller computes it in torch).

    In order: the CE that the active ``shared_statistics(voxel_ce=True)`` pass computed (DiceTopK: the Dice part's
    pass read the logits already), the compiled CPU kernel (``ops.cpu_stats.voxel_ce_cpu``), the Triton kernel
    (``ops.triton_topk.voxel_ce_triton``, float32/16 and bfloat16), as :func:`fastloss.backend.loss_kernels` says.
    """
    from ..backend import use_compiled_cpu, use_triton
    from .stats import shared_voxel_ce

    if target.raw_labels is None or target.regions is not None:
        return None
    shared = shared_voxel_ce(input, target)
    if shared is not None:
        return shared
    if use_compiled_cpu(input):
        from .cpu_stats import voxel_ce_cpu, voxel_ce_supported

        if voxel_ce_supported(input, target.raw_labels):
            return voxel_ce_cpu(input, target.raw_labels, target.ignore_index)
    elif use_triton(input) and input.dtype != torch.float64:
        from .triton_topk import voxel_ce_triton

        return voxel_ce_triton(input, target.labels, target.ignore_index)
    return None


def _triton_topk_select():
    try:
        from .triton_topk import topk_select_triton  # type: ignore[attr-defined]
    except Exception:  # the Triton helper's module is absent or unusable here: use torch
        return None
    return topk_select_triton


class _TopkSumFn(torch.autograd.Function):
    """Sum of the k largest of a 1D float32 tensor through the Triton select, with its (sub)gradient."""

    @staticmethod
    def forward(ctx, values, k, select):
        s, thr, cg, ce = select(values.detach(), k)
        ctx.save_for_backward(values, thr, cg, ce)
        ctx.k = k
        return s

    @staticmethod
    def backward(ctx, grad):
        values, thr, cg, ce = ctx.saved_tensors
        # d(Σ_{i∈K} v_i)/dv_i: 1 above the threshold; the k − count_greater tied slots are shared equally
        # by the count_equal values at the threshold; 0 below.
        share = (ctx.k - cg).to(values.dtype) / ce.clamp_min(1).to(values.dtype)
        on_cpu = values.device.type == "cpu" and values.dtype == torch.float32 and values.is_contiguous()
        if on_cpu and not _is_compiling():
            from .cpu_stats import topk_weights_cpu

            if topk_weights_cpu is not None:  # the same expression in one compiled pass
                return topk_weights_cpu(values, thr, share, grad), None, None
        w = torch.where(values > thr, torch.ones_like(values), torch.where(values == thr, share, torch.zeros_like(values)))
        return grad * w, None, None


def topk_sum_torch(values: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Torch backend: ``(sum of the k largest, k-th largest)`` of a 1D tensor."""
    top = torch.topk(values, k, largest=True, sorted=False).values
    return top.sum(), top.detach().min()


def topk_sum(values: torch.Tensor, k: int) -> torch.Tensor:
    """Sum of the ``k`` largest entries of ``values`` (any shape, flattened), differentiable.

    Dispatches to the Triton select when the backend says so and the module imports, to the compiled CPU
    select (``ops.cpu_stats.topk_select_cpu``) for float32 CPU tensors with the default backend; else
    ``torch.topk``.
    """
    if not isinstance(k, int) or isinstance(k, bool):
        raise TypeError(f"k must be a Python int, got {type(k).__name__}")
    flat = values.reshape(-1)
    if not (1 <= k <= flat.numel()):
        raise ValueError(f"k must lie in [1, {flat.numel()}] for {flat.numel()} values, got {k}")
    from ..backend import use_compiled_cpu, use_triton

    if flat.dtype == torch.float32 and use_triton(flat):
        select = _triton_topk_select()
        if select is not None:
            return _TopkSumFn.apply(flat.contiguous(), k, select)
    if flat.dtype == torch.float32 and use_compiled_cpu(flat) and not _is_compiling():  # compile: torch.topk
        from .cpu_stats import topk_select_cpu

        return _TopkSumFn.apply(flat.contiguous(), k, topk_select_cpu)  # compiled radix select, same ties
    return topk_sum_torch(flat, k)[0]


def topk_ce_mean(ce_per_voxel: torch.Tensor, k_count: int) -> torch.Tensor:
    """Mean of the ``k_count`` largest per-voxel CE values over the whole batch (nnU-Net TopK).

    ``ce_per_voxel`` holds non-negative CE values (ignored voxels set to 0). ``k_count == 0`` (no counted
    voxel) gives a zero that still depends on ``ce_per_voxel`` (so ``backward`` runs, gradient 0).
    """
    if k_count == 0:
        return ce_per_voxel.sum() * 0.0
    # d mean / d v_i = 1/k for the k selected voxels, 0 elsewhere: the sum's gradient divided by k.
    return topk_sum(ce_per_voxel, k_count) / k_count


def topk_select_mask(values: torch.Tensor, k: int) -> torch.Tensor:
    """A 0/1 tensor shaped like ``values`` marking the ``k`` positions ``torch.topk`` selects (no grad)."""
    flat = values.detach().reshape(-1)
    sel = torch.zeros_like(flat)
    if k > 0:
        idx = torch.topk(flat, k, largest=True, sorted=False).indices
        sel.index_fill_(0, idx, 1.0)
    return sel.view_as(values)


def topk_traced(values: torch.Tensor, n_valid: torch.Tensor, k: float, reduction: str) -> torch.Tensor:
    """TopK with a data-dependent count, for ``torch.compile``: no host value anywhere.

    ``K = min(n, max(1, floor(n · k / 100)))`` (0 when ``n = 0``), ``n`` = ``n_valid`` a 0-d tensor, as
    :func:`topk_count` computes it on the host. The values are sorted in decreasing order and the first
    ``K`` kept: the same sum as ``torch.topk``, and the same gradient (1 on the kept voxels) except
    which of several tied voxels at the threshold receive it. ``reduction``: ``"mean"`` (sum / K),
    ``"sum"``, or ``"none"`` (the values at the kept positions, 0 elsewhere, shaped like ``values``).
    """
    flat = values.reshape(-1)
    n = n_valid.to(torch.float64)
    kk = torch.minimum(n, torch.clamp(torch.floor(n * k / 100.0), min=1.0))  # 0 when n == 0
    order = torch.sort(flat.detach(), descending=True).indices
    keep_sorted = (torch.arange(flat.numel(), device=flat.device) < kk).to(flat.dtype)
    if reduction == "none":
        keep = torch.zeros_like(flat).scatter(0, order, keep_sorted)
        return (flat * keep).reshape(values.shape)
    total = (flat.gather(0, order) * keep_sorted).sum()
    if reduction == "sum":
        return total
    return total / kk.clamp_min(1.0).to(flat.dtype)
