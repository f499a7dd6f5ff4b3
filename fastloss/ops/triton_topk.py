"""TopK without a sort: the k-th largest of M float32 values by a radix (histogram) select on the bits,
and a fused per-voxel softmax cross entropy that reads the logits once.

``topk_sum_triton(values, k) -> (sum, threshold, count_greater)``
    The sum of the k largest values (exactly k of them, as ``torch.topk(values, k).values.sum()``), the
    k-th largest value ``threshold`` and ``count_greater`` = #{values > threshold}. Ties are exact: the
    selected set is every value > threshold plus ``k − count_greater`` of the values equal to it, so
    ``sum = Σ_{v > thr} v + (k − count_greater)·thr`` whichever tied ones are meant.
``topk_select_triton(values, k) -> (sum, threshold, count_greater, count_equal)``
    The same, plus ``count_equal`` = #{values == threshold} (from the last histogram, free).

Gradient convention (for the caller, ``fastloss/ops/topk.py``, which owns the autograd): the outputs
here are not differentiable (``values`` is detached). d sum/d v_i = 1 for v_i > threshold, and for the
tied voxels v_i == threshold the gradient ``(k − count_greater)/count_equal`` spread equally over all
of them (a valid subgradient that does not depend on an arbitrary tie-break; it equals torch.topk's
gradient whenever there is no tie at the threshold, which is the generic case for real-valued CE).

How the select works (all on the device, no host sync, 6 launches):
    key(v): the float32 bits made order-preserving as an unsigned integer (flip all bits of a
    negative float, set the sign bit of a non-negative one; −0.0 is first turned into +0.0, and a NaN
    of either sign first loses its sign bit, so every NaN sorts above +inf as in torch.topk). Three
    passes over the values (digits of 11, 11 and 10 bits, from the top): each program builds a histogram of the digit of the values whose higher digits match the
    prefix chosen so far (``tl.histogram``, in registers/shared memory), then adds it into a global
    int64 histogram with integer atomics (exact, so the result is deterministic). The next pass
    starts by reading the tiny histograms of the previous passes (8 KiB each) and choosing, with a
    suffix count, the bucket that holds the k-th largest: every program derives the same prefix, so no
    extra "select" launch is needed. After three passes the full 32-bit key of the k-th value is
    known, and so are count_greater (the sum of the counts above each chosen bucket) and count_equal.
    A fourth pass sums the values above the threshold into per-program float32 partials, and one
    small program reduces those in a fixed order and adds ``(k − count_greater)·threshold``.

``voxel_ce_triton(input, labels, ignore_index=None) -> (B, N) float32``
    −log softmax(input)[label] per voxel, 0 for ignored voxels (label == ignore_index, or outside
    [0, C)); NaN for a counted voxel with a NaN or +inf logit (as ``torch.log_softmax``), differentiable w.r.t. ``input`` (dL/dx_c = dL/dce·(p_c − [c = y]) for counted voxels).
    Online softmax over classes (no padding of C), one read of the logits forward, one read and one
    write backward.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting
from ._autograd import register_logits_autograd
from .triton_stats import _log1p

_NB = 2048  # histogram bins (11-bit digits)
_SHIFTS = (21, 10, 0)  # digit d_i = (key >> shift_i) & mask_i; widths 11, 11, 10


# ----------------------------------------------------------------------------------------------------
# radix select
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _keys(v):
    """Order-preserving 32-bit keys, as (signed key ks, unsigned-order bit pattern ku) int32 pairs."""
    v = v + 0.0  # −0.0 + 0.0 = +0.0: equal floats get equal keys
    s = v.to(tl.int32, bitcast=True)
    # A NaN of either sign sorts above +inf (torch.topk's order). Clearing the sign bit of a NaN makes
    # its bits 0x7F800001..0x7FFFFFFF, above +inf's 0x7F800000; left negative (x86's inf − inf gives
    # 0xFFC00000) it would map below −inf and never be selected.
    s = tl.where(v != v, s & 0x7FFFFFFF, s)
    ks = tl.where(s < 0, s ^ 0x7FFFFFFF, s)  # negative floats: flip the magnitude bits -> signed order
    ku = ks ^ -2147483648  # flip the sign bit -> unsigned order (digits read from this pattern)
    return ks, ku


@triton.jit
def _select_bucket(hist_row, k_rem, NB: tl.constexpr):
    """In the histogram of the still-candidate values, the digit holding the k_rem-th largest.

    above[d] = #{candidates with digit > d}; the chosen d satisfies above[d] < k_rem ≤ above[d] + h[d]
    (exactly one d does, since 1 ≤ k_rem ≤ Σh). Returns (d, above[d], h[d]).
    """
    idx = tl.arange(0, NB)
    h = tl.load(hist_row + idx)
    incl = tl.cumsum(h, axis=0)
    total = tl.sum(h, axis=0)
    above = total - incl
    hit = (above < k_rem) & (above + h >= k_rem)
    d = tl.sum(tl.where(hit, idx, 0), axis=0)
    ab = tl.sum(tl.where(hit, above, 0), axis=0)
    hd = tl.sum(tl.where(hit, h, 0), axis=0)
    return d, ab, hd


@triton.jit
def _prefix(hist_ptr, k, NPASS: tl.constexpr, NB: tl.constexpr):
    """Replay the bucket choices of the first NPASS passes: (prefix digits as one int, count_greater,
    k remaining inside the chosen bucket, count in the last chosen bucket)."""
    k_rem = k
    pre = 0
    cg = 0
    hd = 0
    for i in tl.static_range(NPASS):
        d, ab, hd = _select_bucket(hist_ptr + i * NB, k_rem, NB)
        d = d.to(tl.int64)
        # widths 11, 11, 10 (static): append the digit
        if i == 2:
            pre = pre * 1024 + d
        else:
            pre = pre * 2048 + d
        cg += ab
        k_rem -= ab
    return pre, cg, k_rem, hd


@triton.jit
def _radix_hist_kernel(v_ptr, hist_ptr, M, k, iters, PASS: tl.constexpr, NB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    nprog = tl.num_programs(0).to(tl.int64)
    if PASS > 0:
        pre, cg, k_rem, hd = _prefix(hist_ptr, k, PASS, NB)
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((NB,), dtype=tl.int32)
    for it in range(iters):
        start = (pid + it * nprog) * BLOCK  # grid-strided tiles
        lane = offs < M - start
        v = tl.load(v_ptr + start + offs, mask=lane, other=0.0)
        ks, ku = _keys(v)
        if PASS == 0:
            digit = (ku >> 21) & 2047
            sel = lane
        elif PASS == 1:
            digit = (ku >> 10) & 2047
            sel = lane & (((ku >> 21) & 2047) == pre)
        else:
            digit = ku & 1023
            sel = lane & (((ku >> 10) & 4194303) == pre)
        acc += tl.histogram(digit, NB, mask=sel)
    # integer atomics: exact, order-independent, so the histogram is deterministic
    tl.atomic_add(hist_ptr + PASS * NB + tl.arange(0, NB), acc.to(tl.int64))


@triton.jit
def _topk_sum_kernel(v_ptr, hist_ptr, part_ptr, info_ptr, M, k, iters, NB: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    nprog = tl.num_programs(0).to(tl.int64)
    pre, cg, k_rem, hd = _prefix(hist_ptr, k, 3, NB)
    # pre is the unsigned-order key ku of the k-th largest (32 bits); back to the signed key ks
    thr_ku = pre.to(tl.int32)  # wraps to the same 32-bit pattern
    thr_ks = thr_ku ^ -2147483648
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for it in range(iters):
        start = (pid + it * nprog) * BLOCK
        lane = offs < M - start
        v = tl.load(v_ptr + start + offs, mask=lane, other=0.0)
        ks, ku = _keys(v)
        acc += tl.where(lane & (ks > thr_ks), v, 0.0)
    tl.store(part_ptr + pid, tl.sum(acc, axis=0))
    if pid == 0:
        # threshold value: invert the key map (ks ≥ 0: the bits as they are; ks < 0: flip magnitude bits)
        s = tl.where(thr_ks < 0, thr_ks ^ 0x7FFFFFFF, thr_ks)
        tl.store(info_ptr, s.to(tl.int64))
        tl.store(info_ptr + 1, cg.to(tl.int64))
        tl.store(info_ptr + 2, hd.to(tl.int64))


@triton.jit
def _topk_finalize_kernel(part_ptr, info_ptr, sum_ptr, thr_ptr, cg_ptr, ce_ptr, P, k, BLOCK_P: tl.constexpr):
    offs = tl.arange(0, BLOCK_P)
    acc = tl.zeros((BLOCK_P,), dtype=tl.float32)
    for start in range(0, P, BLOCK_P):  # fixed order: deterministic
        acc += tl.load(part_ptr + start + offs, mask=offs < P - start, other=0.0)
    bits = tl.load(info_ptr).to(tl.int32)
    thr = bits.to(tl.float32, bitcast=True)
    cg = tl.load(info_ptr + 1)
    # the k − count_greater tied values equal thr exactly
    total = tl.sum(acc, axis=0) + (k - cg).to(tl.float32) * thr
    tl.store(sum_ptr, total)
    tl.store(thr_ptr, thr)
    tl.store(cg_ptr, cg)
    tl.store(ce_ptr, tl.load(info_ptr + 2))


# Interpreter knobs (its cost is per program): one big block by default; tests lower them to exercise
# many programs, partial blocks and the grid-stride loop.
_INTERPRET_MAX_BLOCK = 1 << 15
_INTERPRET_MAX_PROGRAMS = 1 << 30


def _select_launch_params(M: int):
    """(BLOCK, programs, tiles per program)."""
    if triton_interpreting():
        block = max(16, min(triton.next_power_of_2(M), _INTERPRET_MAX_BLOCK))
        max_progs = _INTERPRET_MAX_PROGRAMS
    else:
        block = 4096
        max_progs = 1024  # a few per SM; each program folds `iters` tiles into one histogram
    tiles = triton.cdiv(M, block)
    progs = min(tiles, max_progs)
    return block, progs, triton.cdiv(tiles, progs)


@torch.library.custom_op("fastloss::triton_topk_select", mutates_args=())
def _topk_select_op(values: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    M = values.numel()
    dev = values.device
    BLOCK, P, iters = _select_launch_params(M)
    hist = torch.zeros((3, _NB), dtype=torch.int64, device=dev)
    for pass_ in range(3):
        _radix_hist_kernel[(P,)](values, hist, M, k, iters, PASS=pass_, NB=_NB, BLOCK=BLOCK, num_warps=8)
    part = torch.empty((P,), dtype=torch.float32, device=dev)
    info = torch.empty((3,), dtype=torch.int64, device=dev)
    _topk_sum_kernel[(P,)](values, hist, part, info, M, k, iters, NB=_NB, BLOCK=BLOCK, num_warps=8)
    out_sum = torch.empty((), dtype=torch.float32, device=dev)
    out_thr = torch.empty((), dtype=torch.float32, device=dev)
    out_cg = torch.empty((), dtype=torch.int64, device=dev)
    out_ce = torch.empty((), dtype=torch.int64, device=dev)
    _topk_finalize_kernel[(1,)](part, info, out_sum, out_thr, out_cg, out_ce, P, k,
                                BLOCK_P=1024 if not triton_interpreting() else max(16, triton.next_power_of_2(P)))
    return out_sum, out_thr, out_cg, out_ce


@_topk_select_op.register_fake
def _(values, k):
    f = values.new_empty((), dtype=torch.float32)
    i = values.new_empty((), dtype=torch.int64)
    return f, f.clone(), i, i.clone()


def _check_topk_args(values, k):
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"values must be a torch.Tensor, got {type(values).__name__}")
    if values.dtype != torch.float32:
        raise TypeError(f"values must be float32, got dtype {values.dtype}")
    if values.ndim != 1 or values.numel() == 0:
        raise ValueError(f"values must be a non-empty 1D tensor (M,), got shape {tuple(values.shape)}")
    if isinstance(k, bool) or not isinstance(k, int):
        raise TypeError(f"k must be an int, got {type(k).__name__}")
    if not 1 <= k <= values.numel():
        raise ValueError(f"k must lie in [1, M] = [1, {values.numel()}], got {k}")


def topk_select_triton(values: torch.Tensor, k: int):
    """``(sum, threshold, count_greater, count_equal)`` of the k largest of ``values`` (see the module doc).

    ``values``: ``(M,)`` float32 on any device the kernels run on; ``k`` in ``[1, M]``. 0-d tensors on
    ``values.device``: ``sum`` and ``threshold`` float32, the counts int64. Not differentiable.
    """
    _check_topk_args(values, k)
    return _topk_select_op(values.detach().contiguous(), int(k))


def topk_sum_triton(values: torch.Tensor, k: int):
    """``(sum, threshold, count_greater)``: the sum of the k largest values (exactly k, ties exact as in
    ``torch.topk``), the k-th largest value, and the number of values strictly above it. See the
    module docstring for the gradient convention the caller applies."""
    s, thr, cg, _ = topk_select_triton(values, k)
    return s, thr, cg


# ----------------------------------------------------------------------------------------------------
# fused per-voxel softmax cross entropy
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _voxel_ce_fwd_kernel(x_ptr, lab_ptr, ce_ptr, N, ignore_index,
                         C: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    start = pid * BLOCK
    offs = tl.arange(0, BLOCK)
    lane = offs < N - start
    x_row = x_ptr + b * C * N + start
    lab = tl.load(lab_ptr + b * N + start + offs, mask=lane, other=-1).to(tl.int64)
    valid = (lab >= 0) & (lab < C)
    if HAS_IGNORE:
        valid = valid & (lab != ignore_index)
    # one pass: online max / sum of exp (one exp per class) and the logit of the label class
    # (sum of exp kept as 1 + r so that log1p(r) is accurate for confident voxels, see triton_stats)
    mx = tl.load(x_row + offs, mask=lane, other=0.0).to(tl.float32)
    r = tl.zeros_like(mx)
    xy = tl.where(lab == 0, mx, 0.0)
    for c in range(1, C):
        xc = tl.load(x_row + tl.cast(c, tl.int64) * N + offs, mask=lane, other=0.0).to(tl.float32)
        d = tl.exp(-tl.abs(xc - mx))
        r = tl.where(xc > mx, (1.0 + r) * d, r + d)
        mx = tl.maximum(mx, xc)
        xy = tl.where(lab == c, xc, xy)
    # ce = −log p_y = logsumexp(x) − x_y = (max − x_y) + log1p(r). A +inf logit leaves the softmax
    # undefined (inf/inf): NaN, as torch.log_softmax gives, not the +inf that max − x_y alone would give.
    ce = (mx - xy) + _log1p(r)
    ce = tl.where(mx == float("inf"), float("nan"), ce)
    ce = tl.where(valid, ce, 0.0)
    tl.store(ce_ptr + b * N + start + offs, ce, mask=lane)


@triton.jit
def _voxel_ce_bwd_kernel(x_ptr, lab_ptr, gce_ptr, dx_ptr, N, ignore_index,
                         C: tl.constexpr, HAS_IGNORE: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    start = pid * BLOCK
    offs = tl.arange(0, BLOCK)
    lane = offs < N - start
    x_row = x_ptr + b * C * N + start
    dx_row = dx_ptr + b * C * N + start
    lab = tl.load(lab_ptr + b * N + start + offs, mask=lane, other=-1).to(tl.int64)
    valid = (lab >= 0) & (lab < C)
    if HAS_IGNORE:
        valid = valid & (lab != ignore_index)
    gce = tl.load(gce_ptr + b * N + start + offs, mask=lane, other=0.0).to(tl.float32)
    gce = tl.where(valid, gce, 0.0)  # ignored voxels have ce ≡ 0: no gradient
    mx = tl.load(x_row + offs, mask=lane, other=0.0).to(tl.float32)
    r = tl.zeros_like(mx)
    for c in range(1, C):
        xc = tl.load(x_row + tl.cast(c, tl.int64) * N + offs, mask=lane, other=0.0).to(tl.float32)
        d = tl.exp(-tl.abs(xc - mx))
        r = tl.where(xc > mx, (1.0 + r) * d, r + d)
        mx = tl.maximum(mx, xc)
    inv = 1.0 / (1.0 + r)
    for c in range(C):
        cl = tl.cast(c, tl.int64)
        xc = tl.load(x_row + cl * N + offs, mask=lane, other=0.0).to(tl.float32)
        # ce = logsumexp(x) − x_y  ->  ∂ce/∂x_c = softmax(x)_c − [c = y]
        p = tl.exp(xc - mx) * inv
        dx = gce * (p - tl.where(lab == c, 1.0, 0.0))
        tl.store(dx_row + cl * N + offs, dx.to(dx_ptr.dtype.element_ty), mask=lane)


def _ce_block(n: int) -> int:
    if triton_interpreting():
        return max(16, min(triton.next_power_of_2(n), _INTERPRET_MAX_BLOCK))
    return 1024


@torch.library.custom_op("fastloss::triton_voxel_ce", mutates_args=())
def _voxel_ce_op(x: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int]) -> torch.Tensor:
    B, C, N = x.shape
    ce = torch.empty((B, N), dtype=torch.float32, device=x.device)
    BLOCK = _ce_block(N)
    _voxel_ce_fwd_kernel[(triton.cdiv(N, BLOCK), B)](
        x, labels, ce, N, 0 if ignore_index is None else int(ignore_index),
        C=C, HAS_IGNORE=ignore_index is not None, BLOCK=BLOCK, num_warps=4)
    return ce


@_voxel_ce_op.register_fake
def _(x, labels, ignore_index):
    return x.new_empty((x.shape[0], x.shape[2]), dtype=torch.float32)


@torch.library.custom_op("fastloss::triton_voxel_ce_backward", mutates_args=())
def _voxel_ce_bwd_op(grad: torch.Tensor, x: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int]) -> torch.Tensor:
    B, C, N = x.shape
    dx = torch.empty_like(x)
    BLOCK = _ce_block(N)
    _voxel_ce_bwd_kernel[(triton.cdiv(N, BLOCK), B)](
        x, labels, grad.contiguous(), dx, N, 0 if ignore_index is None else int(ignore_index),
        C=C, HAS_IGNORE=ignore_index is not None, BLOCK=BLOCK, num_warps=4)
    return dx


@_voxel_ce_bwd_op.register_fake
def _(grad, x, labels, ignore_index):
    return torch.empty_like(x)


register_logits_autograd(_voxel_ce_op, torch.ops.fastloss.triton_voxel_ce_backward)


def voxel_ce_triton(input: torch.Tensor, labels: torch.Tensor, ignore_index: Optional[int] = None) -> torch.Tensor:
    """Per-voxel softmax cross entropy ``(B, N)`` float32 from logits ``(B, C, *spatial)`` and integer
    labels ``(B, *spatial)`` or ``(B, 1, *spatial)``; 0 where the label is ``ignore_index`` or outside
    ``[0, C)``. Differentiable w.r.t. ``input`` (gradient in the input's dtype)."""
    if not isinstance(input, torch.Tensor) or input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"input must be float32/float16/bfloat16 logits, got "
                        f"{getattr(input, 'dtype', type(input).__name__)}")
    if input.ndim < 3:
        raise ValueError(f"input must have shape (B, C, *spatial), got {tuple(input.shape)}")
    if not isinstance(labels, torch.Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
        raise TypeError(f"labels must be an integer tensor, got {getattr(labels, 'dtype', type(labels).__name__)}")
    B, C = input.shape[:2]
    x = input.reshape(B, C, -1).contiguous()
    N = x.shape[2]
    if labels.numel() != B * N:
        raise ValueError(f"labels must have B·N = {B * N} elements to match input {tuple(input.shape)}, "
                         f"got shape {tuple(labels.shape)}")
    if labels.device != input.device:
        raise ValueError(f"labels are on {labels.device} but input is on {input.device}")
    return _voxel_ce_op(x, labels.reshape(B, N).contiguous(), ignore_index)
