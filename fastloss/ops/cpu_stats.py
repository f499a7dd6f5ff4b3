"""Compiled CPU kernels for :func:`fastloss.ops.stats.class_stats` and the per-voxel cross entropy.

The C++ twin of ``ops/triton_stats.py`` (``csrc/stats_cpu_kernels.inc``): the same columns, masks,
activations and MONAI focal forms as the torch backend, computed without materialising anything of size
``B·C·N`` (the gradient aside).

- **Forward**: tiles of 512 voxels; per tile the logits of every class are read once (any float dtype,
  any strides: channels-last is read in place), the activation is formed in registers/L1 (softmax with
  one ``exp`` per class and one ``log1p`` per voxel, accurate for confident voxels as the Triton
  kernel), and every requested column is summed into 16 explicit lanes. Per-tile partial sums (double)
  are added in tile order. Integer labels (uint8/int8/int16/int32/int64) are read as they are, never
  expanded; out-of-range labels and ``ignore_index`` are ignored voxels.
- **Backward**: ``dL/d(stats)`` (``B·C·K`` numbers) to ``dL/dx`` in the input dtype and layout,
  recomputing the activation per tile; nothing is saved from the forward but its inputs.
- **Precision**: float16/bfloat16/float32 inputs compute and accumulate in float32; float64 in double
  (so ``gradcheck`` exercises the compiled op itself).
- **Deterministic**: tiles are fixed whatever the thread count (``torch.get_num_threads()``), and the
  kernels are built without FMA contraction, so 1, 2 or 16 threads and the AVX2/AVX-512/baseline builds
  give the same bits.
- **torch.compile**: custom ops with fake kernels and a registered autograd formula; eager calls take
  autograd Functions over the same implementations (no dispatcher: ~100 µs less per call).

Gradients flow to the logits only; :func:`supports` sends soft targets, masks or maps that require grad
to the torch backend.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .._validation import Target, _is_compiling
from ._autograd import eager_logits_function, register_logits_autograd
from .cpu_buffers import new_output_like
from .stats_spec import COLUMNS, StatsSpec

from .. import _ext

_C = _ext.C  # the compiled extension or None (fastloss._ext is its one import)

_ACT = {"softmax": 0, "sigmoid": 1, "none": 2}
_DTYPE = {
    torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3, torch.uint8: 4, torch.bool: 4,
    torch.int8: 5, torch.int16: 6, torch.int32: 7, torch.int64: 8,
}
_FLOAT_INPUTS = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_MAP_COLUMNS = ("map_ce", "map_p", "map_sqerr")


def available() -> bool:
    """Whether ``fastloss._C`` carries the CPU loss kernels."""
    return _ext.has("class_stats_cpu_forward")


def isa() -> str:
    """The instruction set the kernels run with here (``avx512``, ``avx2`` or ``base``)."""
    return _C.cpu_isa() if available() else "unavailable"


def _view(t: Optional[torch.Tensor]):
    """``(data_ptr, dtype code, stride_b, stride_c, stride_n)`` of a ``(B, C, N)`` or ``(B, N)`` tensor."""
    if t is None:
        return None
    if t.ndim == 2:
        return (t.data_ptr(), _DTYPE[t.dtype], t.stride(0), 0, t.stride(1))
    sc = 0 if t.shape[1] == 1 else t.stride(1)  # a one-channel map is shared by every class
    return (t.data_ptr(), _DTYPE[t.dtype], t.stride(0), sc, t.stride(2))


# The kernels read region targets (Target.regions, a label-to-regions table): ops/stats.py asks this.
READS_REGIONS = True


def _regions(table: Optional[torch.Tensor]) -> tuple:
    """``(view, length)`` of a contiguous int64 label-to-regions table for the kernels, or ``(None, 0)``."""
    if table is None:
        return None, 0
    return (table.data_ptr(), _DTYPE[torch.int64], 0, 0, 1), table.numel()


def _columns(columns: str) -> list:
    cols = columns.split(",")
    return [cols.index(name) if name in cols else -1 for name in COLUMNS]


def _threads() -> int:
    return max(1, torch.get_num_threads())


_INT64 = (-(2**63), 2**63 - 1)


def _ignore(ignore_index: Optional[int]) -> Optional[int]:
    """``ignore_index`` as the kernels (and the custom ops' int64 schema) take it: one outside int64
    (``2**63``) equals no label of any integer dtype, so it ignores nothing: None, as the torch backend's
    comparison finds."""
    if ignore_index is None or not (_INT64[0] <= int(ignore_index) <= _INT64[1]):
        return None
    return int(ignore_index)


# ----------------------------------------------------------------------------------------------------
# custom ops
# ----------------------------------------------------------------------------------------------------
def _class_stats_impl(
    x: torch.Tensor, labels: Optional[torch.Tensor], soft: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    vmap: Optional[torch.Tensor], regions: Optional[torch.Tensor], activation: str, columns: str, gamma: float,
    alpha: Optional[float], ce_exponent: float, log_eps: float, ignore_index: Optional[int],
    aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    B, C, N = x.shape
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    cols = _columns(columns)
    out = torch.empty((B, C, len(columns.split(","))), dtype=out_dtype)
    _C.class_stats_cpu_forward(
        _view(x), _view(labels), _view(soft), _view(mask), _view(vmap), B, C, N, _ACT[activation], cols,
        float(gamma), alpha, float(ce_exponent), float(log_eps), ignore_index, out.data_ptr(), _threads(), 0,
        *_regions(regions), _view(aux),
    )
    return out


_class_stats_op = torch.library.custom_op("fastloss::cpu_class_stats", mutates_args=(), device_types="cpu")(
    _class_stats_impl)


@_class_stats_op.register_fake
def _(x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent, log_eps, ignore_index,
      aux=None):
    out_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    return x.new_empty((x.shape[0], x.shape[1], len(columns.split(","))), dtype=out_dtype)


def _class_stats_bwd_impl(
    grad: torch.Tensor, x: torch.Tensor, labels: Optional[torch.Tensor], soft: Optional[torch.Tensor],
    mask: Optional[torch.Tensor], vmap: Optional[torch.Tensor], regions: Optional[torch.Tensor], activation: str,
    columns: str, gamma: float, alpha: Optional[float], ce_exponent: float, log_eps: float,
    ignore_index: Optional[int], aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    B, C, N = x.shape
    compute = torch.float64 if x.dtype == torch.float64 else torch.float32
    gs = grad.to(compute).contiguous()
    dx = new_output_like(x)  # same layout as x (channels-last stays channels-last)
    _C.class_stats_cpu_backward(
        _view(x), _view(labels), _view(soft), _view(mask), _view(vmap), B, C, N, _ACT[activation], _columns(columns),
        float(gamma), alpha, float(ce_exponent), float(log_eps), ignore_index, gs.data_ptr(), _view(dx), _threads(),
        0, *_regions(regions), _view(aux),
    )
    return dx


_class_stats_bwd_op = torch.library.custom_op(
    "fastloss::cpu_class_stats_backward", mutates_args=(), device_types="cpu")(_class_stats_bwd_impl)


@_class_stats_bwd_op.register_fake
def _(grad, x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent, log_eps,
      ignore_index, aux=None):
    return torch.empty_like(x)


# no gradient for targets, masks and voxel maps (supports() sends those cases to the torch backend)
register_logits_autograd(_class_stats_op, torch.ops.fastloss.cpu_class_stats_backward)
_ClassStatsFunction = eager_logits_function(_class_stats_impl, _class_stats_bwd_impl)


# The statistics and the per-voxel CE −log p_y from one pass (DiceTopK: the Dice sums and the CE the TopK
# part selects from), and one backward kernel for both: the CE's upstream gradient w joins the class's
# dL/d(Σ ce) in the same per-voxel term (d_c = −(G_ce + w)·g_c). Fused path only: softmax, integer labels,
# the columns pg, p, pp, g, gg, ce, count, float32/float16/bfloat16 logits.
def _class_stats_vce_impl(
    x: torch.Tensor, labels: torch.Tensor, columns: str, ignore_index: Optional[int]
) -> Tuple[torch.Tensor, torch.Tensor]:
    B, C, N = x.shape
    out = torch.empty((B, C, len(columns.split(","))), dtype=torch.float32)
    ce = torch.empty((B, N), dtype=torch.float32)
    _C.class_stats_cpu_forward(
        _view(x), _view(labels), None, None, None, B, C, N, _ACT["softmax"], _columns(columns), 2.0, None, 0.3, 0.0,
        ignore_index, out.data_ptr(), _threads(), ce.data_ptr(),
    )
    return out, ce


_class_stats_vce_op = torch.library.custom_op("fastloss::cpu_class_stats_vce", mutates_args=(), device_types="cpu")(
    _class_stats_vce_impl)


@_class_stats_vce_op.register_fake
def _(x, labels, columns, ignore_index):
    B, C, N = x.shape
    return (x.new_empty((B, C, len(columns.split(","))), dtype=torch.float32),
            x.new_empty((B, N), dtype=torch.float32))


def _class_stats_vce_bwd_impl(
    grad: torch.Tensor, grad_ce: Optional[torch.Tensor], x: torch.Tensor, labels: torch.Tensor, columns: str,
    ignore_index: Optional[int],
) -> torch.Tensor:
    B, C, N = x.shape
    gs = grad.to(torch.float32).contiguous()
    gce = None if grad_ce is None else grad_ce.to(torch.float32).contiguous()
    dx = new_output_like(x)
    _C.class_stats_cpu_backward(
        _view(x), _view(labels), None, None, None, B, C, N, _ACT["softmax"], _columns(columns), 2.0, None, 0.3, 0.0,
        ignore_index, gs.data_ptr(), _view(dx), _threads(), 0 if gce is None else gce.data_ptr(),
    )
    return dx


_class_stats_vce_bwd_op = torch.library.custom_op(
    "fastloss::cpu_class_stats_vce_backward", mutates_args=(), device_types="cpu")(_class_stats_vce_bwd_impl)


@_class_stats_vce_bwd_op.register_fake
def _(grad, grad_ce, x, labels, columns, ignore_index):
    return torch.empty_like(x)


def _vce_setup(ctx, inputs, output):
    x, labels, columns, ignore_index = inputs
    ctx.save_for_backward(x, labels)
    ctx.config = (columns, ignore_index)


def _vce_backward(ctx, grad, grad_ce):
    x, labels = ctx.saved_tensors
    dx = None
    if ctx.needs_input_grad[0]:
        if grad is None:
            grad = torch.zeros((x.shape[0], x.shape[1], len(ctx.config[0].split(","))), dtype=torch.float32)
        dx = torch.ops.fastloss.cpu_class_stats_vce_backward(grad, grad_ce, x, labels, *ctx.config)
    return dx, None, None, None


_class_stats_vce_op.register_autograd(_vce_backward, setup_context=_vce_setup)


class _ClassStatsVCEFunction(torch.autograd.Function):
    """Eager twin of ``fastloss::cpu_class_stats_vce`` (see ``_autograd.eager_logits_function``)."""

    @staticmethod
    def forward(ctx, x, labels, columns, ignore_index):
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None: no zeros to read
        ctx.save_for_backward(x, labels)
        ctx.config = (columns, ignore_index)
        return _class_stats_vce_impl(x, labels, columns, ignore_index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad, grad_ce):
        x, labels = ctx.saved_tensors
        dx = None
        if ctx.needs_input_grad[0] and (grad is not None or grad_ce is not None):
            if grad is None:
                grad = torch.zeros((x.shape[0], x.shape[1], len(ctx.config[0].split(","))), dtype=torch.float32)
            dx = _class_stats_vce_bwd_impl(grad, grad_ce, x, labels, *ctx.config)
        return dx, None, None, None


def _voxel_ce_impl(x: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int]) -> torch.Tensor:
    B, C, N = x.shape
    ce = torch.empty((B, N), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)
    _C.voxel_ce_cpu_forward(_view(x), _view(labels), B, C, N, ignore_index, ce.data_ptr(), _threads())
    return ce


_voxel_ce_op = torch.library.custom_op("fastloss::cpu_voxel_ce", mutates_args=(), device_types="cpu")(_voxel_ce_impl)


@_voxel_ce_op.register_fake
def _(x, labels, ignore_index):
    return x.new_empty((x.shape[0], x.shape[2]), dtype=torch.float64 if x.dtype == torch.float64 else torch.float32)


def _voxel_ce_bwd_impl(grad: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int]) -> torch.Tensor:
    B, C, N = x.shape
    gce = grad.to(torch.float64 if x.dtype == torch.float64 else torch.float32).contiguous()
    dx = new_output_like(x)
    _C.voxel_ce_cpu_backward(_view(x), _view(labels), B, C, N, ignore_index, gce.data_ptr(), _view(dx), _threads())
    return dx


_voxel_ce_bwd_op = torch.library.custom_op("fastloss::cpu_voxel_ce_backward", mutates_args=(), device_types="cpu")(
    _voxel_ce_bwd_impl)


@_voxel_ce_bwd_op.register_fake
def _(grad, x, labels, ignore_index):
    return torch.empty_like(x)


register_logits_autograd(_voxel_ce_op, torch.ops.fastloss.cpu_voxel_ce_backward)
_VoxelCEFunction = eager_logits_function(_voxel_ce_impl, _voxel_ce_bwd_impl)


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
def _on_cpu(*tensors) -> bool:
    return all(t.device.type == "cpu" for t in tensors if t is not None)


def supports(input: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None) -> bool:
    """True when :func:`class_stats_cpu` handles this call; False sends it to the torch backend.

    Not handled: tensors off the CPU, empty inputs, a target whose class count differs from the input's,
    soft targets / masks / maps that require grad (the kernels give those no gradient), a map column
    without a map of ``B·N`` or ``B·C·N`` values, and a missing extension.
    """
    if not available() or not isinstance(input, torch.Tensor) or input.dtype not in _FLOAT_INPUTS:
        return False
    if input.ndim < 2 or input.numel() == 0 or spec.activation not in _ACT or not spec.columns:
        return False
    B, C = input.shape[:2]
    N = input.numel() // (B * C)
    if target.num_classes != C or not _on_cpu(input, target.raw_labels, target.soft, target.mask, voxel_map):
        return False
    if target.raw_labels is not None:
        lab = target.raw_labels
        if lab.dtype not in _DTYPE or lab.dtype.is_floating_point or lab.numel() != B * N:
            return False
        r = target.regions
        if r is not None and (C > 31 or r.dtype != torch.int64 or r.ndim != 1 or not r.is_contiguous()
                              or r.device.type != "cpu" or r.numel() < 1):
            return False
    elif target.soft is None or target.soft.numel() != B * C * N or target.soft.dtype not in _DTYPE:
        return False
    if target.mask is not None and (target.mask.numel() != B * N or target.mask.dtype not in _DTYPE):
        return False
    aux = target.aux_labels
    if aux is not None and (aux.dtype not in _DTYPE or aux.dtype.is_floating_point or aux.numel() != B * N
                            or aux.ndim != 2 or aux.device.type != "cpu"):
        return False
    if any(t.requires_grad for t in (target.soft, target.mask, voxel_map) if t is not None):
        return False
    if any(c in _MAP_COLUMNS for c in spec.columns):
        if voxel_map is None or voxel_map.numel() not in (B * N, B * C * N) or voxel_map.dtype not in _DTYPE:
            return False
    return True


def _flat(t: Optional[torch.Tensor], *shape) -> Optional[torch.Tensor]:
    return None if t is None else t.reshape(*shape)


def class_stats_cpu(
    input: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(B, C, K)`` sums of ``spec.columns`` (the semantics of ``class_stats_torch``), compiled.

    float32 for float16/bfloat16/float32 input, float64 for float64 input; differentiable with respect
    to ``input``. Call :func:`supports` first.
    """
    B, C = input.shape[:2]
    x = input.reshape(B, C, -1)  # a view for contiguous and channels-last inputs
    N = x.shape[2]
    labels = _flat(target.raw_labels, B, N)  # any integer dtype, read in place
    soft = _flat(target.soft, B, C, N) if target.raw_labels is None else None
    # with labels and ignore_index the kernels derive the mask from the labels (the Target's float
    # mask is exactly labels != ignore_index): not read
    mask = None
    if target.mask is not None and not (labels is not None and target.ignore_index is not None):
        mask = target.mask.reshape(B, N)
    vmap = None if voxel_map is None else voxel_map.reshape(B, -1, N)
    if mask is not None and mask.dtype == torch.bool:
        mask = mask.to(torch.uint8)
    if soft is not None and soft.dtype == torch.bool:
        soft = soft.to(torch.uint8)
    ignore = _ignore(target.ignore_index) if labels is not None else None
    alpha = None if spec.alpha is None else float(spec.alpha)
    regions = target.regions if labels is not None else None
    # the aux labels (B, N) in their own dtype and strides; their ignore label is the target's, soft targets too
    # (the kernels read ignore_index only where they load labels: a soft target's mask stays the float mask)
    aux = target.aux_labels
    if aux is not None:
        ignore = _ignore(target.ignore_index)
    op = _class_stats_op if _is_compiling() else _ClassStatsFunction.apply
    if aux is None:  # the op's schema without aux (what torch.compile traced before aux existed)
        return op(
            x, labels, soft, mask, vmap, regions, spec.activation, ",".join(spec.columns), float(spec.gamma), alpha,
            float(spec.ce_exponent), float(spec.log_eps), ignore,
        )
    return op(
        x, labels, soft, mask, vmap, regions, spec.activation, ",".join(spec.columns), float(spec.gamma), alpha,
        float(spec.ce_exponent), float(spec.log_eps), ignore, aux,
    )


_FUSED_COLUMNS = frozenset(("pg", "p", "pp", "g", "gg", "ce", "count"))


def fused_voxel_ce_supported(input: torch.Tensor, target: Target, spec: StatsSpec) -> bool:
    """Whether :func:`class_stats_with_voxel_ce_cpu` serves this call (the kernels' fused path)."""
    return (
        supports(input, target, spec)
        and input.dtype != torch.float64
        and spec.activation == "softmax"
        and target.raw_labels is not None
        and input.shape[1] >= 2
        and (target.mask is None or target.ignore_index is not None)
        and set(spec.columns) <= _FUSED_COLUMNS
    )


def class_stats_with_voxel_ce_cpu(input: torch.Tensor, target: Target, spec: StatsSpec):
    """``(stats, ce)``: the ``(B, C, K)`` sums of ``spec.columns`` and the ``(B, N)`` per-voxel softmax CE
    ``−log p_y`` (0 at ignored voxels) from one pass over the logits, both differentiable with respect to
    ``input`` through one backward kernel. Call :func:`fused_voxel_ce_supported` first."""
    B, C = input.shape[:2]
    x = input.reshape(B, C, -1)
    labels = target.raw_labels.reshape(B, x.shape[2])
    op = _class_stats_vce_op if _is_compiling() else _ClassStatsVCEFunction.apply
    return op(x, labels, ",".join(spec.columns), _ignore(target.ignore_index))


def voxel_ce_cpu(input: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """``(B, N)`` per-voxel softmax cross entropy ``−log p_y`` (0 at ignored or out-of-range labels),
    compiled, differentiable with respect to ``input``: ``dce/dx_c = p_c − [c = y]``."""
    B, C = input.shape[:2]
    x = input.reshape(B, C, -1)
    op = _voxel_ce_op if _is_compiling() else _VoxelCEFunction.apply
    return op(x, labels.reshape(B, x.shape[2]), _ignore(ignore_index))


def voxel_ce_supported(input: torch.Tensor, labels: Optional[torch.Tensor]) -> bool:
    """Whether :func:`voxel_ce_cpu` serves these tensors (CPU, a float input with C ≥ 2, integer labels)."""
    if not available() or labels is None or input.dtype not in _FLOAT_INPUTS or input.ndim < 2 or input.numel() == 0:
        return False
    if input.shape[1] < 2 or labels.dtype not in _DTYPE or labels.dtype.is_floating_point:
        return False
    B, C = input.shape[:2]
    return _on_cpu(input, labels) and labels.numel() * C == input.numel() and not labels.requires_grad


def topk_select_cpu(values: torch.Tensor, k: int):
    """``(sum, threshold, count_greater, count_equal)`` of the k largest of a contiguous 1D float32 CPU
    tensor, as ``ops.triton_topk.topk_select_triton`` returns them (0-d tensors, not differentiable):
    radix select on the float bits, NaN above +inf as ``torch.topk``; exact ties."""
    if values.dtype != torch.float32 or values.ndim != 1 or not values.is_contiguous() or values.device.type != "cpu":
        raise ValueError(f"expected a contiguous 1D float32 CPU tensor, got {values.dtype} {tuple(values.shape)}")
    if not (1 <= k <= values.numel()):
        raise ValueError(f"k must lie in [1, {values.numel()}], got {k}")
    s, thr, cg, ce = _C.topk_select_cpu(values.data_ptr(), values.numel(), int(k), _threads())
    return (
        torch.tensor(s, dtype=torch.float32), torch.tensor(thr, dtype=torch.float32),
        torch.tensor(cg, dtype=torch.int64), torch.tensor(ce, dtype=torch.int64),
    )


def _topk_weights(values: torch.Tensor, thr: torch.Tensor, share: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``grad·(1 if v > thr, share if v == thr, else 0)`` for contiguous float32 CPU ``values``: the TopK
    sum's (sub)gradient (``ops/topk.py``), the torch expression's float32 arithmetic in one compiled pass."""
    w = torch.empty_like(values)
    _C.topk_weights_cpu(
        values.data_ptr(), values.numel(), float(thr), float(share), float(grad), w.data_ptr(), _threads()
    )
    return w


topk_weights_cpu = _topk_weights if _ext.has("topk_weights_cpu") else None
