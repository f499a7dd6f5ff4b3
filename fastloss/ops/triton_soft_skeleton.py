"""The soft skeleton of clDice on the GPU: MONAI's ``soft_skel`` iteration as Triton kernels, forward and a
recomputing backward. Semantics and the derivation of every gradient: ``ops/soft_skeleton.py``'s module doc; the
CPU twin is ``csrc/soft_skeleton_cpu.cpp``, whose values and gradients (bits, in float32 too) these kernels
reproduce, gradient sums in the same order.

Layout: the input is made contiguous, ``R = B·C`` planes of ``H × W × D`` values (``D = 1`` in 2D), and every
kernel tiles the flat ``R·H·W·D`` range in 1D blocks (``program_id`` cast to int64 first; each lane finds its
``(h, w, d)`` by division, and every neighbour read is a load masked by the neighbour's coordinates lying in the
plane, padded with 0 and never used: nothing reads outside the tensor, whatever the sizes). Float32 input
computes in float32, float64 in float64 (both the interpreter and compiled Triton have fp64 loads and
arithmetic). Launches are compiled with ``enable_fp_fusion=False``: ``δ − s·δ`` must round the product before
the difference, as torch and the C++ op do, not become an FMA.

Forward, per step ``k = 0 .. K`` (two launches):

- ``_erode_kernel``: ``e_k = erode(x_k)``, the min of the directional 3-windows (h, w and d in 3D), the
  windows clipped at the image edge (MONAI's +inf padding of the min);
- ``_step_kernel``: ``o = dilate(e_k)`` (the clipped 3×3(×3) max), ``δ = relu(x_k − o)``,
  ``s_k = s_{k−1} + relu(δ − s_{k−1}·δ)`` in place (``s_0 = δ``: MONAI's first ``relu(x − open(x))``);
  ``x_{k+1} = e_k`` is a buffer swap.

Backward, per step ``k = K .. 0`` (``x_k``, ``s_{k−1}`` recomputed from checkpoints, four launches):

- ``_erode_kernel``: ``e_k`` again, and per voxel the erosion's routing as a 2-byte code (the argmin offset
  along each axis and the states of ``torch.minimum``'s two splits: a tie halves, the larger operand gets
  nothing), for this step only;
- ``_local_kernel``: per voxel the dilation's argmax (a 1-byte code of the window offset, for this step only),
  ``r``, ``q``, ``∂L/∂δ·q`` and ``∂L/∂s_{k−1}`` (in place over ``∂L/∂s_k``);
- ``_dilate_t_kernel``: ``∂L/∂e_k = ∂L/∂x_{k+1} − dilate^T(∂L/∂δ·q)`` as a gather: voxel ``j`` sums, over the
  windows ``i`` of its 3×3(×3) neighbourhood in ascending flat order, ``−∂L/∂δ_i·q_i`` of those whose argmax
  code points at ``j``;
- ``_erode_t_kernel``: ``∂L/∂x_k = ∂L/∂δ·q + erode^T(∂L/∂e_k)``, a gather too: voxel ``j`` reads the routing
  codes of its 5 (7 in 3D) plus-neighbours ``i`` (itself included) and adds the share of ``∂L/∂e_i`` each routes
  to ``j`` (the splits applied as the C++ op applies them: the outer one, then the inner one, each share
  ``g·0.5`` or ``g`` or 0, so the same bits).

Both transposes are gathers (each output written by one lane), so there are no atomics and the sums are
added in the C++ op's order: for ``dilate^T``, ``∂L/∂x_{k+1}`` first, then the windows in ascending flat
order; for ``erode^T``, ``∂L/∂δ·q`` first, then the windows ``i`` in ascending flat order, and at ``i = j`` the
d share (3D), then h, then w (the C++ op's ``out[i3], out[i1], out[i2]``).

Tie rules (PyTorch's, as the C++ op): ``max_pool`` takes the first maximum of its window in (h, w, d) scan
order, a NaN replacing the best so far (so the last NaN); MONAI's min pool is ``−max_pool(−x)``, the first
minimum; ``torch.minimum`` halves the gradient between equal operands and gives none to the larger.

Non-finite input: the values are MONAI's (min, max and relu propagate NaN as torch's do, and step 0 is MONAI's
``relu(x − open(x))``, not the update with ``s = 0``), so no finiteness check (a host sync) is needed before the
launch. The gradient of non-finite input is not autograd's through MONAI's ops (neither is the C++ op's nor the
torch backend's: the masks ``r``, ``q`` select here where autograd multiplies by NaN); it is defined only for
finite input.

Memory: the forward saves only its input; its work is two images (``e`` and the next) plus the output.
The backward keeps checkpoints ``(x_k, s_{k−1})`` every ``c = ⌈√(K+1)⌉`` steps (the C++ op's stride; the
first is the input itself, not copied), i.e. ``2(⌈(K+1)/c⌉ − 1)`` images, and eight work images (two for the
recomputation, ``s``, ``e``, ``∂L/∂s``, ``∂L/∂δ·q``, ``∂L/∂e``, ``∂L/∂x``) and 3 bytes of codes per voxel, all freed
when it returns; the C++ op holds the same per plane, for the planes its threads process at once. Nothing is
kept per iteration.

Block sizes are untuned (no GPU time measured yet); under ``TRITON_INTERPRET=1`` a block covers up to
``_INTERPRET_MAX_BLOCK`` voxels, because the interpreter's cost is per program.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..backend import triton_interpreting

__all__ = ["soft_skeleton_triton", "supports"]

_GPU_BLOCK = 512
_GPU_WARPS = 4
_INTERPRET_MAX_BLOCK = 1 << 14
# sizes are not specialised on (== 1, % 16): one compiled kernel serves every shape of a dtype and dimension
_SIZES = ("total", "H", "W", "D")


# ----------------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _coords(offs, H, W, D):
    """``(h, w, d)`` of flat offsets into contiguous ``(R, H, W, D)`` planes."""
    d = offs % D
    t = offs // D
    w = t % W
    h = (t // W) % H
    return h, w, d


@triton.jit
def _nan_min(a, b):
    # torch.minimum's value: NaN propagates; equal operands give a (the same value)
    return tl.where((b < a) | (b != b), b, a)


@triton.jit
def _relu(v):
    # torch.relu: NaN propagates
    return tl.where((v > 0) | (v != v), v, 0.0)


@triton.jit
def _window_min(x_ptr, i, st, lo, hi, live):
    """MONAI's ``−max_pool(−x)`` over the window ``(i − st, i, i + st)`` clipped at the edge (``lo``/``hi``: the
    neighbour exists): the value and the argmin's offset −1/0/+1. max_pool of ``−x`` starts at the window's
    first element and moves on to a later one that is strictly greater (here: strictly smaller ``x``) or NaN."""
    xl = tl.load(x_ptr + (i - st), mask=live & lo, other=0.0)
    xc = tl.load(x_ptr + i, mask=live, other=0.0)
    xh = tl.load(x_ptr + (i + st), mask=live & hi, other=0.0)
    best = tl.where(lo, xl, xc)
    code = tl.where(lo, -1, 0)
    u = lo & ((xc < best) | (xc != xc))
    best = tl.where(u, xc, best)
    code = tl.where(u, 0, code)
    u = hi & ((xh < best) | (xh != xh))
    best = tl.where(u, xh, best)
    code = tl.where(u, 1, code)
    return best, code


@triton.jit
def _split_state(a, b):
    """torch.minimum's backward for operands ``a``, ``b`` as a state: 0 ``a < b`` (all to a), 1 a tie (halves),
    2 ``a > b`` (all to b), 3 unordered (a NaN: both get all, as ``where(a > b, 0, g)`` and ``where(a < b, 0, g)``)."""
    return tl.where(a == b, 1, tl.where(a < b, 0, tl.where(a > b, 2, 3)))


@triton.jit
def _erode_value(x_ptr, i, h, w, d, H, W, D, live, THREE_D: tl.constexpr):
    """MONAI's erosion at ``i``: ``min(min(p_h, p_w), p_d)`` of the directional window minima (2D: ``p_h, p_w``),
    and its routing as a code: bits 0-1, 2-3, 4-5 the argmin offsets + 1 along h, w, d; bits 6-7 the outer
    minimum's split state (``min(p_h, p_w)`` against ``p_d``; 0 in 2D: all to the first), bits 8-9 the inner
    one's (``p_h`` against ``p_w``)."""
    sW = D
    sH = W * D
    v1, c1 = _window_min(x_ptr, i, sH, h > 0, h + 1 < H, live)
    v2, c2 = _window_min(x_ptr, i, sW, w > 0, w + 1 < W, live)
    m = _nan_min(v1, v2)
    si = _split_state(v1, v2)
    code = (c1 + 1) | ((c2 + 1) << 2) | (si << 8)
    if THREE_D:
        v3, c3 = _window_min(x_ptr, i, 1, d > 0, d + 1 < D, live)
        code = code | ((c3 + 1) << 4) | (_split_state(m, v3) << 6)
        m = _nan_min(m, v3)
    return m, code


@triton.jit
def _shift(ok, i, ok_lo, ok_hi, st, k: tl.constexpr):
    """One axis of a neighbour offset: ``(ok, i)`` moved by ``k`` (−1/0/+1) along the axis of stride ``st``, ``ok``
    narrowed by whether that neighbour exists (``ok_lo``/``ok_hi``)."""
    ok2 = ok
    i2 = i
    if k == -1:
        ok2 = ok & ok_lo
        i2 = i - st
    if k == 1:
        ok2 = ok & ok_hi
        i2 = i + st
    return ok2, i2


@triton.jit
def _split_share(g, state, FIRST: tl.constexpr):
    """The share of ``g`` that torch.minimum's backward gives its first (``FIRST``) or second operand in ``state``
    (:func:`_split_state`): all, half on a tie (``g·0.5``: exact, the C++ op's ``g / 2``), or nothing where it
    was the larger."""
    if FIRST:
        share = tl.where(state == 1, g * 0.5, tl.where(state == 2, 0.0, g))
    else:
        share = tl.where(state == 1, g * 0.5, tl.where(state == 0, 0.0, g))
    return share


@triton.jit
def _erode_share(ge_ptr, rc_ptr, i, ok, AXIS: tl.constexpr, ARG: tl.constexpr):
    """The part of ``∂L/∂e_i`` that MONAI's erosion at window centre ``i`` routes along ``AXIS`` (0 h, 1 w, 2 d) to
    the argmin offset ``ARG`` (−1/0/+1), or 0 when that axis's argmin is elsewhere (or ``ok`` is False). With
    ``e = min(min(p_h, p_w), p_d)`` the outer minimum splits ``∂L/∂e`` between ``min(p_h, p_w)`` and ``p_d``, the
    inner one splits the first part between ``p_h`` and ``p_w`` (the C++ op's ``min_split`` calls, in order)."""
    rc = tl.load(rc_ptr + i, mask=ok, other=0).to(tl.int32)
    gr = tl.load(ge_ptr + i, mask=ok, other=0.0)
    hit = ok & (((rc >> (2 * AXIS)) & 3) == ARG + 1)
    outer = (rc >> 6) & 3
    if AXIS == 2:
        share = _split_share(gr, outer, False)
    else:
        g12 = _split_share(gr, outer, True)
        share = _split_share(g12, (rc >> 8) & 3, AXIS == 0)
    return tl.where(hit, share, 0.0), hit


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit(do_not_specialize=_SIZES)
def _erode_kernel(x_ptr, e_ptr, rc_ptr, total, H, W, D, THREE_D: tl.constexpr, ROUTES: tl.constexpr,
                  BLOCK: tl.constexpr):
    """``e = erode(x)`` over the flat range; with ``ROUTES`` (the backward) also the routing code (int16)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = offs < total
    h, w, d = _coords(offs, H, W, D)
    e, code = _erode_value(x_ptr, offs, h, w, d, H, W, D, live, THREE_D)
    tl.store(e_ptr + offs, e, mask=live)
    if ROUTES:
        tl.store(rc_ptr + offs, code.to(tl.int16), mask=live)


@triton.jit
def _dilate_argmax(e_ptr, offs, h, w, d, H, W, D, live, ND: tl.constexpr):
    """The clipped 3×3(×3) max of ``e`` at ``offs`` and its argmax as a code ``9(dh+1) + 3(dw+1) + (dd+1)``:
    max_pool's rule, scanning the window in (h, w, d) order from its first element and moving to a later one
    that is strictly greater or NaN. ``ND`` is the window's extent along d (3, or 1 in 2D)."""
    sW = D
    sH = W * D
    h0 = tl.where(h > 0, -1, 0)
    w0 = tl.where(w > 0, -1, 0)
    d0 = tl.where(d > 0, -1, 0)  # 0 in 2D (D = 1)
    code = (h0 + 1) * 9 + (w0 + 1) * 3 + (d0 + 1)
    best = tl.load(e_ptr + (offs + h0 * sH + w0 * sW + d0), mask=live, other=0.0)  # the first element
    hl = h > 0
    hh = h + 1 < H
    wl = w > 0
    wh = w + 1 < W
    dl = d > 0
    dh_ = d + 1 < D
    for a in tl.static_range(3):
        ok_a, i_a = _shift(live, offs, hl, hh, sH, a - 1)
        for b in tl.static_range(3):
            ok_b, i_b = _shift(ok_a, i_a, wl, wh, sW, b - 1)
            for c in tl.static_range(ND):
                ok, i = _shift(ok_b, i_b, dl, dh_, 1, c - (ND // 2))
                v = tl.load(e_ptr + i, mask=ok, other=0.0)
                u = ok & ((v > best) | (v != v))
                best = tl.where(u, v, best)
                code = tl.where(u, a * 9 + b * 3 + (c - (ND // 2) + 1), code)
    best = tl.where(live, best, 0.0)
    return best, code


@triton.jit(do_not_specialize=_SIZES)
def _step_kernel(x_ptr, e_ptr, s_ptr, total, H, W, D, FIRST: tl.constexpr, ND: tl.constexpr, BLOCK: tl.constexpr):
    """``s ← s + relu(δ − s·δ)`` with ``δ = relu(x − dilate(e))``, in place (``FIRST``: ``s = δ``, the step with
    ``s_{−1} = 0``, MONAI's ``relu(img − open(img))``). Each rounding as torch's separate ops."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = offs < total
    h, w, d = _coords(offs, H, W, D)
    o, code = _dilate_argmax(e_ptr, offs, h, w, d, H, W, D, live, ND)
    x = tl.load(x_ptr + offs, mask=live, other=0.0)
    delta = _relu(x - o)
    if FIRST:
        s_new = delta
    else:
        s = tl.load(s_ptr + offs, mask=live, other=0.0)
        sd = s * delta
        z = delta - sd
        s_new = s + _relu(z)
    tl.store(s_ptr + offs, s_new, mask=live)


@triton.jit(do_not_specialize=_SIZES)
def _local_kernel(x_ptr, e_ptr, s_ptr, gs_ptr, gdq_ptr, code_ptr, total, H, W, D,
                  FIRST: tl.constexpr, ND: tl.constexpr, BLOCK: tl.constexpr):
    """Backward, the per-voxel part of step ``k``: with ``d0 = x_k − dilate(e_k)``, ``δ = relu(d0)``,
    ``z = δ − s_{k−1}·δ``, ``r = [z > 0]``, ``q = [d0 > 0]``:
    ``∂L/∂δ = G_s·r·(1 − s_{k−1})`` (from ``s_k = s_{k−1} + relu(z)``, ``∂z/∂δ = 1 − s_{k−1}``),
    ``∂L/∂s_{k−1} = G_s·(1 − r·δ)`` (``∂s_k/∂s_{k−1} = 1 + r·(−δ)``), written over ``G_s``;
    ``∂L/∂δ·q`` (``∂δ/∂d0 = q``) to ``gdq``, and the dilation's argmax code to ``code``.
    ``FIRST`` (k = 0): ``s_{−1} = 0``, and ``∂L/∂s_{−1}`` is not needed."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = offs < total
    h, w, d = _coords(offs, H, W, D)
    o, code = _dilate_argmax(e_ptr, offs, h, w, d, H, W, D, live, ND)
    x = tl.load(x_ptr + offs, mask=live, other=0.0)
    gs = tl.load(gs_ptr + offs, mask=live, other=0.0)
    d0 = x - o
    delta = _relu(d0)
    if FIRST:
        s = tl.zeros_like(delta)
    else:
        s = tl.load(s_ptr + offs, mask=live, other=0.0)
    sd = s * delta
    z = delta - sd
    r = z > 0
    q = d0 > 0
    gdelta = tl.where(r, gs * (1.0 - s), 0.0)
    if not FIRST:
        rd = tl.where(r, delta, 0.0)
        tl.store(gs_ptr + offs, gs * (1.0 - rd), mask=live)
    tl.store(gdq_ptr + offs, tl.where(q, gdelta, 0.0), mask=live)
    tl.store(code_ptr + offs, code.to(tl.int8), mask=live)


@triton.jit(do_not_specialize=_SIZES)
def _dilate_t_kernel(gdq_ptr, code_ptr, gx_ptr, ge_ptr, total, H, W, D,
                     HAS_GX: tl.constexpr, ND: tl.constexpr, BLOCK: tl.constexpr):
    """``∂L/∂e = ∂L/∂x_{k+1} − dilate^T(∂L/∂δ·q)``: ``o_i = e_{arg(i)}``, so ``∂o_i/∂e_j = [arg(i) = j]`` and voxel
    ``j`` gathers ``−gdq_i`` from the windows ``i`` of its neighbourhood whose argmax code is the offset ``j − i``,
    in ascending ``i`` (the C++ op's scatter order). ``HAS_GX`` False at ``k = K`` (``x_{K+1}`` is not used)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = offs < total
    h, w, d = _coords(offs, H, W, D)
    sW = D
    sH = W * D
    if HAS_GX:
        acc = tl.load(gx_ptr + offs, mask=live, other=0.0)
    else:
        acc = tl.zeros([BLOCK], dtype=ge_ptr.dtype.element_ty)
    hl = h > 0
    hh = h + 1 < H
    wl = w > 0
    wh = w + 1 < W
    dl = d > 0
    dh_ = d + 1 < D
    for a in tl.static_range(3):
        ok_a, i_a = _shift(live, offs, hl, hh, sH, a - 1)
        for b in tl.static_range(3):
            ok_b, i_b = _shift(ok_a, i_a, wl, wh, sW, b - 1)
            for c in tl.static_range(ND):
                ok, i = _shift(ok_b, i_b, dl, dh_, 1, c - (ND // 2))
                ci = tl.load(code_ptr + i, mask=ok, other=0).to(tl.int32)
                # arg(i) = i + (j − i): the code of the offset −(a − 1, b − 1, c − ND//2)
                hit = ok & (ci == (2 - a) * 9 + (2 - b) * 3 + (1 - (c - (ND // 2))))
                g = tl.load(gdq_ptr + i, mask=hit, other=0.0)
                acc = tl.where(hit, acc - g, acc)  # += −gdq_i
    tl.store(ge_ptr + offs, acc, mask=live)


@triton.jit(do_not_specialize=_SIZES)
def _erode_t_kernel(ge_ptr, rc_ptr, gdq_ptr, gx_ptr, total, H, W, D, THREE_D: tl.constexpr, BLOCK: tl.constexpr):
    """``∂L/∂x_k = ∂L/∂δ·q + erode^T(∂L/∂e_k)``: voxel ``j`` gathers, from each plus-neighbour ``i`` (and itself),
    the share of ``∂L/∂e_i`` routed along the axis joining them whose argmin is ``j`` (the routing codes of the
    erode launch); order as the C++ op's scatter (``i`` ascending: −h, −w, −d, self (d, h, w), +d, +w, +h)."""
    pid = tl.program_id(0).to(tl.int64)
    offs = pid * BLOCK + tl.arange(0, BLOCK).to(tl.int64)
    live = offs < total
    h, w, d = _coords(offs, H, W, D)
    sW = D
    sH = W * D
    acc = tl.load(gdq_ptr + offs, mask=live, other=0.0)
    g, hit = _erode_share(ge_ptr, rc_ptr, offs - sH, live & (h > 0), 0, 1)  # i = j − sH: its h-argmin is +1
    acc = tl.where(hit, acc + g, acc)
    g, hit = _erode_share(ge_ptr, rc_ptr, offs - sW, live & (w > 0), 1, 1)
    acc = tl.where(hit, acc + g, acc)
    if THREE_D:
        g, hit = _erode_share(ge_ptr, rc_ptr, offs - 1, live & (d > 0), 2, 1)
        acc = tl.where(hit, acc + g, acc)
        g, hit = _erode_share(ge_ptr, rc_ptr, offs, live, 2, 0)  # i = j: the d share first, then h, then w
        acc = tl.where(hit, acc + g, acc)
    g, hit = _erode_share(ge_ptr, rc_ptr, offs, live, 0, 0)
    acc = tl.where(hit, acc + g, acc)
    g, hit = _erode_share(ge_ptr, rc_ptr, offs, live, 1, 0)
    acc = tl.where(hit, acc + g, acc)
    if THREE_D:
        g, hit = _erode_share(ge_ptr, rc_ptr, offs + 1, live & (d + 1 < D), 2, -1)  # i = j + 1: its d-argmin is −1
        acc = tl.where(hit, acc + g, acc)
    g, hit = _erode_share(ge_ptr, rc_ptr, offs + sW, live & (w + 1 < W), 1, -1)
    acc = tl.where(hit, acc + g, acc)
    g, hit = _erode_share(ge_ptr, rc_ptr, offs + sH, live & (h + 1 < H), 0, -1)
    acc = tl.where(hit, acc + g, acc)
    tl.store(gx_ptr + offs, acc, mask=live)


# ----------------------------------------------------------------------------------------------------
# launcher
# ----------------------------------------------------------------------------------------------------
class _Launch:
    """Geometry and launch parameters of one contiguous ``(B, C, H, W[, D])`` tensor."""

    def __init__(self, x: torch.Tensor):
        B, C, H, W = x.shape[:4]
        self.D = x.shape[4] if x.ndim == 5 else 1
        self.H, self.W = H, W
        self.three_d = x.ndim == 5
        self.nd = 3 if self.three_d else 1
        self.total = x.numel()
        if triton_interpreting():
            self.block = max(16, min(triton.next_power_of_2(self.total), _INTERPRET_MAX_BLOCK))
        else:
            self.block = _GPU_BLOCK
        self.grid = (triton.cdiv(self.total, self.block),)
        self.opts = dict(BLOCK=self.block, num_warps=_GPU_WARPS, enable_fp_fusion=False)

    def erode(self, x, e, routes=None):
        _erode_kernel[self.grid](x, e, e if routes is None else routes, self.total, self.H, self.W, self.D,
                                 THREE_D=self.three_d, ROUTES=routes is not None, **self.opts)

    def step(self, x, e, s, first):
        _step_kernel[self.grid](x, e, s, self.total, self.H, self.W, self.D, FIRST=first, ND=self.nd, **self.opts)

    def local(self, x, e, s, gs, gdq, code, first):
        _local_kernel[self.grid](x, e, x if s is None else s, gs, gdq, code, self.total, self.H, self.W, self.D,
                                 FIRST=first, ND=self.nd, **self.opts)

    def dilate_t(self, gdq, code, gx, ge):
        _dilate_t_kernel[self.grid](gdq, code, gdq if gx is None else gx, ge, self.total, self.H, self.W, self.D,
                                    HAS_GX=gx is not None, ND=self.nd, **self.opts)

    def erode_t(self, ge, routes, gdq, gx):
        _erode_t_kernel[self.grid](ge, routes, gdq, gx, self.total, self.H, self.W, self.D, THREE_D=self.three_d,
                                   **self.opts)


def _advance(L: _Launch, x, s, k0: int, k1: int, bufs, s_work):
    """Steps ``k0 .. k1−1`` from ``(x_{k0}, s_{k0−1})`` (``s = None``: ``k0 = 0``): ``(x_{k1}, s_{k1−1})``. ``x`` and
    ``s`` are only read; the results live in ``bufs`` (two images) and ``s_work``."""
    if k1 > k0 and s is not None and s is not s_work:
        s_work.copy_(s)
        s = s_work
    for _ in range(k0, k1):
        e = bufs[1] if x is bufs[0] else bufs[0]
        L.erode(x, e)
        L.step(x, e, s_work, s is None)
        s = s_work
        x = e
    return x, s


def _forward(x: torch.Tensor, iters: int) -> torch.Tensor:
    L = _Launch(x)
    out = torch.empty_like(x)
    bufs = (torch.empty_like(x), torch.empty_like(x))
    _advance(L, x, None, 0, iters + 1, bufs, out)
    return out


def _backward(x: torch.Tensor, grad: torch.Tensor, iters: int) -> torch.Tensor:
    L = _Launch(x)
    steps = iters + 1
    c = math.isqrt(steps - 1) + 1 if steps > 1 else 1  # ceil(sqrt(steps)), the C++ op's checkpoint stride
    nck = (steps - 1) // c + 1
    bufs = (torch.empty_like(x), torch.empty_like(x))
    s_work = torch.empty_like(x)
    # forward sweep: (x_k, s_{k−1}) at k = 0 (the input, s = 0), c, 2c, ...
    ck = [(x, None)]
    xk, sk = x, None
    for j in range(1, nck):
        xk, sk = _advance(L, xk, sk, (j - 1) * c, j * c, bufs, s_work)
        ck.append((xk.clone(), sk.clone()))
    gs = grad.clone()  # ∂L/∂s_k, overwritten with ∂L/∂s_{k−1} by each step
    e = torch.empty_like(x)
    gdq = torch.empty_like(x)
    ge = torch.empty_like(x)
    gx = torch.empty_like(x)
    code = torch.empty(x.shape, dtype=torch.int8, device=x.device)  # the dilation's argmax
    routes = torch.empty(x.shape, dtype=torch.int16, device=x.device)  # the erosion's argmins and splits
    for k in range(steps - 1, -1, -1):
        j = k // c
        xk, sk = _advance(L, ck[j][0], ck[j][1], j * c, k, bufs, s_work)  # x_k, s_{k−1}
        L.erode(xk, e, routes)
        L.local(xk, e, sk, gs, gdq, code, k == 0)
        L.dilate_t(gdq, code, gx if k < steps - 1 else None, ge)  # ge = ∂L/∂e_k
        L.erode_t(ge, routes, gdq, gx)  # gx = ∂L/∂x_k
    return gx


# ----------------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------------
def _check(x: torch.Tensor, name: str) -> None:
    if x.dtype not in (torch.float32, torch.float64) or x.ndim not in (4, 5) or x.numel() == 0:
        raise ValueError(f"fastloss::{name}: expected a non-empty float32/float64 (B, C, H, W[, D]) tensor, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}")
    if x.device.type == "cpu" and not triton_interpreting():
        raise ValueError(f"fastloss::{name}: a CPU tensor runs the Triton kernels only under TRITON_INTERPRET=1 "
                         f"(set before fastloss is imported); got a CPU tensor without it")
    if x.device.type not in ("cpu", "cuda"):
        raise ValueError(f"fastloss::{name}: expected a CUDA tensor (or a CPU one under TRITON_INTERPRET=1), "
                         f"got one on {x.device}")


def _on_device(x: torch.Tensor):
    return torch.cuda.device(x.device) if x.device.type == "cuda" else _NoGuard()


class _NoGuard:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


@torch.library.custom_op("fastloss::triton_soft_skeleton", mutates_args=())
def _forward_op(x: torch.Tensor, iters: int) -> torch.Tensor:
    _check(x, "triton_soft_skeleton")
    if iters < 0:
        raise ValueError(f"fastloss::triton_soft_skeleton: iters must be >= 0, got {iters}")
    xc = x.contiguous()
    with _on_device(xc):
        return _forward(xc, iters)


@_forward_op.register_fake
def _(x, iters):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastloss::triton_soft_skeleton_backward", mutates_args=())
def _backward_op(x: torch.Tensor, grad: torch.Tensor, iters: int) -> torch.Tensor:
    _check(x, "triton_soft_skeleton_backward")
    if tuple(grad.shape) != tuple(x.shape):
        raise ValueError(f"fastloss::triton_soft_skeleton_backward: grad must have the input's shape "
                         f"{tuple(x.shape)}, got {tuple(grad.shape)}")
    if iters < 0:
        raise ValueError(f"fastloss::triton_soft_skeleton_backward: iters must be >= 0, got {iters}")
    xc = x.contiguous()
    gc = grad.to(device=xc.device, dtype=xc.dtype).contiguous()
    with _on_device(xc):
        return _backward(xc, gc, iters)


@_backward_op.register_fake
def _(x, grad, iters):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    x, iters = inputs
    ctx.save_for_backward(x)
    ctx.iters = iters


def _backward_formula(ctx, grad):
    (x,) = ctx.saved_tensors
    return _backward_op(x, grad, ctx.iters), None


_forward_op.register_autograd(_backward_formula, setup_context=_setup)


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
def supports(x: torch.Tensor) -> bool:
    """Float32/float64 ``(B, C, H, W[, D])`` tensors that are not empty, on a CUDA device or (under
    ``TRITON_INTERPRET=1``) the CPU. Non-finite values are fine (torch's NaN propagation)."""
    return (
        isinstance(x, torch.Tensor) and x.dtype in (torch.float32, torch.float64) and x.ndim in (4, 5)
        and x.numel() > 0 and (x.device.type == "cuda" or (x.device.type == "cpu" and triton_interpreting()))
    )


def soft_skeleton_triton(x: torch.Tensor, iters: int) -> torch.Tensor:
    """MONAI's ``soft_skel(x, iters)`` by the Triton kernels; differentiable in ``x``. Call :func:`supports`
    first."""
    return _forward_op(x, iters)
