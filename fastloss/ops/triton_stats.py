"""Fused Triton kernels for :func:`fastloss.ops.stats.class_stats`: the ``(B, C, K)`` per-class sums.

Specification: :func:`fastloss.ops.stats.class_stats_torch` (same columns, same masks, MONAI's focal
forms). This module computes the same numbers without materialising anything of size ``B·C·N``.

Design (what each choice is for on a GPU)
-----------------------------------------
- **One read of the logits forward.** Grid ``(P, B)``: program ``(j, b)`` owns voxels
  ``[j·BLOCK, (j+1)·BLOCK)`` of batch ``b`` (a 1D block of voxels, contiguous in memory, so loads
  coalesce and vectorise). It loops over the ``C`` classes *per voxel*: no class tile, so 9 classes cost
  9 loads per voxel, not 16 (no padding of ``C`` to a power of two). Softmax is online: pass 1 keeps a
  running max and a rescaled running sum with *one* ``exp`` per class
  (``d = exp(-|x - m|)``: either the new term or the rescale factor; the sum is kept as ``1 + r`` so
  that ``log p`` of a confident voxel is ``−log1p(r)``, accurate where torch's float32 log_softmax
  is not), pass 2 forms ``p``, ``log p`` and every requested column. Pass 2 re-reads the program's own
  tile (``BLOCK·C`` elements, a few tens of KiB) right after pass 1, so it is served by L1/L2, not HBM.
  Sigmoid and "none" need one pass.
- **Deterministic reduction, no atomics.** Each program reduces its tile in registers (``tl.sum``) and
  writes one float32 partial per (class, column) into ``(B, C, K, P)``; one ``torch.sum`` over the last
  axis (a fixed-order reduction) finishes it. Same input, same bits, run after run.
- **One read + one write backward.** The backward kernel takes ``dL/d(stats)`` (``B·C·K`` floats, read as
  scalars) and recomputes the activation per voxel (softmax: pass 1 max/sum, pass 2 the softmax-Jacobian
  contractions ``Σ_j p_j a_j`` and ``Σ_j d_j``, pass 3 writes ``dL/dx`` in the input dtype; passes 2-3
  re-read the tile from cache). Nothing is saved from the forward but references to its inputs.
  Compiled for sm_90 (checked offline with ``triton.compile``): no register spills; the DiceCE
  forward/backward use ~90/~128 registers at BLOCK=1024, 4 warps (block size and warps are untuned:
  no GPU time has been measured yet).
- **Few launches, no host sync.** Forward: the kernel + the partial-sum reduction (2 launches);
  backward: 1 launch; plus a ``.contiguous()`` copy only for non-contiguous inputs. No ``.item()``.
- **Integer labels are never expanded**: ``g_c = [label == c]`` is formed in registers. The ignore mask
  of the label path is derived in the kernel from the labels and ``ignore_index`` (the mask tensor of
  :class:`~fastloss._validation.Target` is then not read: 4 bytes/voxel saved); labels outside
  ``[0, C)`` (``[0, 1]`` for one channel) that are not ``ignore_index`` are treated as ignored voxels
  (mask 0), so nothing is read out of bounds. The soft-target path reads the mask tensor when present.
- **Large volumes**: ``program_id`` is cast to int64 before it meets a stride, so ``B·C·N`` may exceed
  2³¹; per-lane offsets stay int32 (cheap). Masked lanes load finite values (0, or 1 for probabilities
  whose log is taken): no ``inf - inf`` in lanes that are thrown away.
- **Precision**: float16/bfloat16/float32 logits are loaded and converted to float32 in registers; all
  arithmetic and accumulation is float32; ``dL/dx`` is written in the input dtype. float64 input is not
  handled here (:func:`supports` says False and the torch backend serves it).
- **Interpreter**: no libdevice (``log1p`` is written from ``tl.log``), no block pointers, one config;
  under ``TRITON_INTERPRET=1`` the block is large because the interpreter's cost is per program.
- **torch.compile**: the forward and backward are ``torch.library`` custom ops with fake
  implementations and a registered autograd formula, so ``torch.compile(fullgraph=True)`` traces
  through them as opaque nodes.

Gradients flow to the logits only. Targets (soft or labels), masks and voxel maps get no gradient;
:func:`supports` returns False when a soft target or voxel map requires grad, so the torch backend
serves that (rare) case with full autograd.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from .._validation import Target
from ..backend import triton_interpreting
from ._autograd import register_logits_autograd
from .stats_spec import COLUMNS, StatsSpec

_ACT = {"softmax": 0, "sigmoid": 1, "none": 2}
_TINY = float(torch.finfo(torch.float32).tiny)  # the clamp of ce_pow, as in the torch backend
_MAP_COLUMNS = ("map_ce", "map_p", "map_sqerr")
# The columns these kernels compute: every column of the torch backend (``sigmoid_focal``, MONAI's sigmoid
# focal term of the logits whatever the activation, lets MONAI's DiceFocal share one pass).
SUPPORTED_COLUMNS = tuple(COLUMNS)


# ----------------------------------------------------------------------------------------------------
# small math helpers (no libdevice: these must run under the interpreter too)
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _log1p(z):
    # log(1 + z) accurate for small z: log(u)·z/(u − 1) with u = 1 + z rounded (Goldberg's trick);
    # when u rounds to 1, log1p(z) = z to working precision.
    u = 1.0 + z
    um1 = u - 1.0
    safe = tl.where(um1 == 0.0, 1.0, um1)
    return tl.where(um1 == 0.0, z, tl.log(u) * (z / safe))


@triton.jit
def _logsigmoid(x):
    # log σ(x) = min(x, 0) − log1p(exp(−|x|)): no overflow for either sign
    return tl.minimum(x, 0.0) - _log1p(tl.exp(-tl.abs(x)))


@triton.jit
def _sigmoid(x):
    # σ(x) = 1/(1 + e^{−x}) for x ≥ 0, e^{x}/(1 + e^{x}) for x < 0: never exp of a large positive
    e = tl.exp(-tl.abs(x))
    return tl.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


@triton.jit
def _elementwise_activation(x, log_eps, ACT: tl.constexpr, NEED_LOG: tl.constexpr, HAS_LOG_EPS: tl.constexpr):
    """``p`` and ``log p`` of the per-element activations: sigmoid (ACT 1), or none (ACT 2: x is p; its
    log only when a column needs it, clamped at ``log_eps`` when given)."""
    if ACT == 1:
        p = _sigmoid(x)
        logp = _logsigmoid(x)
    else:
        p = x
        logp = tl.zeros_like(x)
        if NEED_LOG:
            if HAS_LOG_EPS:
                logp = tl.log(tl.maximum(x, log_eps))
            else:
                logp = tl.log(x)
    return p, logp


@triton.jit
def _pow_pos(base, e: tl.constexpr):
    # base^e for base ≥ 0 (torch's pow: 0^e = 0 for e > 0, 1 for e = 0)
    if e == 0.0:
        return tl.full(base.shape, 1.0, tl.float32)
    elif e == 1.0:
        return base
    elif e == 2.0:
        return base * base
    else:
        safe = tl.where(base > 0.0, base, 1.0)
        return tl.where(base > 0.0, tl.exp(e * tl.log(safe)), 0.0)


@triton.jit
def _sign(d):
    return tl.where(d > 0.0, 1.0, tl.where(d < 0.0, -1.0, 0.0))


# ----------------------------------------------------------------------------------------------------
# per-voxel loads shared by both kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _voxel_mask(lab_row, mask_row, offs, lane, ignore_index, table_ptr, L,
                C: tl.constexpr, TGT_LABELS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr,
                REGIONS: tl.constexpr):
    """m (float32) per voxel and the label (int32-safe; −1 where not a valid label). With ``REGIONS`` the
    second value is the label's row of the label-to-regions table instead (bit r: region r; 0 for a label
    outside the table), and every label >= 0 is a voxel."""
    m = lane.to(tl.float32)
    lab = tl.full(offs.shape, -1, tl.int64)
    if TGT_LABELS:
        lab = tl.load(lab_row + offs, mask=lane, other=-1).to(tl.int64)
        if REGIONS:
            valid = lane & (lab >= 0)
        else:
            valid = lane & (lab >= 0) & (lab < (2 if C == 1 else C))
        if HAS_IGNORE:
            valid = valid & (lab != ignore_index)
        m = valid.to(tl.float32)
        lab = tl.where(valid, lab, -1)
        if REGIONS:
            inside = valid & (lab < L)  # the table is read only inside its L entries
            lab = tl.load(table_ptr + tl.where(inside, lab, 0), mask=inside, other=0)
    if HAS_MASK:
        m = m * tl.load(mask_row + offs, mask=lane, other=0.0).to(tl.float32)
    return m, lab


@triton.jit
def _target(lab, soft_row, offs, lane, m, c, C: tl.constexpr, TGT_LABELS: tl.constexpr, REGIONS: tl.constexpr):
    """g_c = (raw target of class c)·m, the masked target of Target.dense."""
    if REGIONS:
        g = tl.where(((lab >> c) & 1) != 0, m, 0.0)  # lab holds the label's region bits (_voxel_mask)
    elif TGT_LABELS:
        g = tl.where(lab == c + (1 if C == 1 else 0), m, 0.0)  # one channel: the foreground label is 1
    else:
        g = tl.load(soft_row + offs, mask=lane, other=0.0).to(tl.float32) * m
    return g


@triton.jit
def _aux_class(aux_row, offs, lane, m, ignore_index, C: tl.constexpr, HAS_AUX: tl.constexpr,
               AUX_IGNORE: tl.constexpr):
    """The aux label's class per voxel (label − 1 for one channel), −1 where it counts nowhere: outside
    [0, C), equal to ignore_index, or where the voxel mask m is 0 (Target.aux_labels)."""
    aux = tl.full(offs.shape, -1, tl.int64)
    if HAS_AUX:
        lab = tl.load(aux_row + offs, mask=lane, other=-1).to(tl.int64)
        cls = lab - (1 if C == 1 else 0)
        ok = lane & (cls >= 0) & (cls < C) & (m != 0.0)
        if AUX_IGNORE:
            ok = ok & (lab != ignore_index)
        aux = tl.where(ok, cls, -1)
    return aux


@triton.jit
def _softmax_stats(x_row, offs, lane, N, C: tl.constexpr):
    """Online max and sum of exp over classes; one exp per class. Returns (max, 1/sum, log sum).

    The sum is kept as 1 + r, r = Σ over the non-maximal classes of e^{x − max}, so that
    log sum = log1p(r) stays accurate when one class dominates (p_y → 1, −log p_y → 0: the CE and
    ce_pow of confident voxels keep their relative precision; torch's float32 log_softmax loses it).
    """
    mx = tl.load(x_row + offs, mask=lane, other=0.0).to(tl.float32)
    r = tl.zeros_like(mx)
    for c in range(1, C):
        xc = tl.load(x_row + c * N + offs, mask=lane, other=0.0).to(tl.float32)
        d = tl.exp(-tl.abs(xc - mx))
        # new max: the old 1 + r is rescaled by e^{m_old − x} = d, so r' = (1 + r)·d; else r' = r + e^{x − m} = r + d
        r = tl.where(xc > mx, (1.0 + r) * d, r + d)
        mx = tl.maximum(mx, xc)
    return mx, 1.0 / (1.0 + r), _log1p(r), r


@triton.jit
def _sigmoid_focal_term(x, g, m, alpha, GAMMA: tl.constexpr, HAS_ALPHA: tl.constexpr):
    """MONAI's sigmoid focal term of logit x (before the mask factor): on xm = x·m,
    bce = xm − xm·g − log σ(xm), inv = log σ(−xm·(2g − 1)), term = exp(γ·inv)·bce [· α_t]."""
    xm = x * m
    bce = xm - xm * g - _logsigmoid(xm)
    inv = _logsigmoid(-xm * (2.0 * g - 1.0))
    term = tl.exp(GAMMA * inv) * bce
    if HAS_ALPHA:
        term = (g * alpha + (1.0 - g) * (1.0 - alpha)) * term
    return term


@triton.jit
def _sigmoid_focal_dx(x, g, m, alpha, GAMMA: tl.constexpr, HAS_ALPHA: tl.constexpr):
    """∂(term·m)/∂x of :func:`_sigmoid_focal_term`, with s = 2g − 1:
      ∂bce/∂xm = (1 − g) − σ(−xm) = σ(xm) − g,   ∂inv/∂xm = −s·σ(s·xm),   ∂xm/∂x = m
      ∂(term·m)/∂x = α_t·m·m·exp(γ·inv)·[γ·(−s·σ(s·xm))·bce + σ(xm) − g]"""
    xm = x * m
    s = 2.0 * g - 1.0
    bce = xm - xm * g - _logsigmoid(xm)
    inv = _logsigmoid(-xm * s)
    dterm = tl.exp(GAMMA * inv) * (GAMMA * (-s * _sigmoid(s * xm)) * bce + _sigmoid(xm) - g) * m * m
    if HAS_ALPHA:
        dterm = dterm * (g * alpha + (1.0 - g) * (1.0 - alpha))
    return dterm


# ----------------------------------------------------------------------------------------------------
# forward
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _stats_fwd_kernel(
    x_ptr, lab_ptr, soft_ptr, mask_ptr, map_ptr, table_ptr, aux_ptr, part_ptr,
    N, P, map_bs, map_cs, ignore_index, alpha, log_eps, L,
    C: tl.constexpr, K: tl.constexpr, ACT: tl.constexpr,
    TGT_LABELS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr, REGIONS: tl.constexpr,
    HAS_AUX: tl.constexpr, AUX_IGNORE: tl.constexpr, I_APG: tl.constexpr, I_AG: tl.constexpr,
    HAS_ALPHA: tl.constexpr, HAS_LOG_EPS: tl.constexpr, GAMMA: tl.constexpr, CE_EXP: tl.constexpr,
    I_PG: tl.constexpr, I_P: tl.constexpr, I_PP: tl.constexpr, I_G: tl.constexpr, I_GG: tl.constexpr,
    I_ABS: tl.constexpr, I_SQP: tl.constexpr, I_SQN: tl.constexpr, I_CE: tl.constexpr,
    I_FOCAL: tl.constexpr, I_CEPOW: tl.constexpr, I_MAPCE: tl.constexpr, I_MAPP: tl.constexpr,
    I_MAPSQ: tl.constexpr, I_COUNT: tl.constexpr, I_SFOC: tl.constexpr,
    NEED_LOG: tl.constexpr, TINY: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    start = pid * BLOCK
    offs = tl.arange(0, BLOCK)
    lane = offs < N - start
    x_row = x_ptr + b * C * N + start  # class c at + c·N
    m, lab = _voxel_mask(lab_ptr + b * N + start, mask_ptr + b * N + start, offs, lane, ignore_index, table_ptr,
                         L, C, TGT_LABELS, HAS_MASK, HAS_IGNORE, REGIONS)
    aux = _aux_class(aux_ptr + b * N + start, offs, lane, m, ignore_index, C, HAS_AUX, AUX_IGNORE)
    if ACT == 0:
        mx, inv_se, log_se, r = _softmax_stats(x_row, offs, lane, N, C)
    # "none": masked lanes hold p = 1 so that log p = 0 there
    other = 1.0 if ACT == 2 else 0.0
    part_b = part_ptr + b * C * K * P + pid
    for c in range(C):
        cl = tl.cast(c, tl.int64)
        x = tl.load(x_row + cl * N + offs, mask=lane, other=other).to(tl.float32)
        g = _target(lab, soft_ptr + (b * C + cl) * N + start, offs, lane, m, c, C, TGT_LABELS, REGIONS)
        w = tl.zeros_like(x)
        if I_MAPCE >= 0 or I_MAPP >= 0 or I_MAPSQ >= 0:
            w = tl.load(map_ptr + b * map_bs + cl * map_cs + start + offs, mask=lane, other=0.0).to(tl.float32)
        # activation: p, log p (and log(1 − p) for sigmoid)
        if ACT == 0:
            p = tl.exp(x - mx) * inv_se
            logp = x - mx - log_se
            logp = tl.where((g == 0) & (logp == float("-inf")), 0.0, logp)  # a -inf logit where g = 0: the limit 0
        else:
            p, logp = _elementwise_activation(x, log_eps, ACT, NEED_LOG, HAS_LOG_EPS)
        pm = p * m
        out = part_b + c * K * P
        if I_PG >= 0:
            tl.store(out + I_PG * P, tl.sum(pm * g, axis=0))
        if I_P >= 0:
            tl.store(out + I_P * P, tl.sum(pm, axis=0))
        if I_PP >= 0:
            tl.store(out + I_PP * P, tl.sum(pm * pm, axis=0))
        if I_G >= 0:
            tl.store(out + I_G * P, tl.sum(g, axis=0))
        if I_GG >= 0:
            tl.store(out + I_GG * P, tl.sum(g * g, axis=0))
        if I_ABS >= 0:
            tl.store(out + I_ABS * P, tl.sum(tl.abs(pm - g), axis=0))
        if I_SQP >= 0:
            tl.store(out + I_SQP * P, tl.sum((g - pm) * (g - pm) * g, axis=0))
        if I_SQN >= 0:
            tl.store(out + I_SQN * P, tl.sum((g - pm) * (g - pm) * (m - g), axis=0))
        if I_CE >= 0 or I_MAPCE >= 0:
            if ACT == 1:
                ce = -(g * logp + (m - g) * _logsigmoid(-x))
            else:
                ce = -g * logp
            if I_CE >= 0:
                tl.store(out + I_CE * P, tl.sum(ce, axis=0))
            if I_MAPCE >= 0:
                tl.store(out + I_MAPCE * P, tl.sum(ce * w, axis=0))
        if I_CEPOW >= 0:
            nl = tl.maximum(-logp, TINY)
            tl.store(out + I_CEPOW * P, tl.sum(g * _pow_pos(nl, CE_EXP), axis=0))
        if I_FOCAL >= 0:
            if ACT == 1:
                # MONAI sigmoid focal on the masked input xm = x·m
                term = _sigmoid_focal_term(x, g, m, alpha, GAMMA, HAS_ALPHA)
            else:
                # MONAI softmax focal: −(1 − p)^γ·log p·g·α_c with p = exp(log p)
                pf = tl.exp(logp)
                term = -_pow_pos(1.0 - pf, GAMMA) * logp * g
                if HAS_ALPHA:
                    term = term * tl.where(c == 0, 1.0 - alpha, alpha)
            tl.store(out + I_FOCAL * P, tl.sum(term * m, axis=0))
        if I_MAPP >= 0:
            tl.store(out + I_MAPP * P, tl.sum(pm * w, axis=0))
        if I_MAPSQ >= 0:
            tl.store(out + I_MAPSQ * P, tl.sum((pm - g) * (pm - g) * w, axis=0))
        if I_COUNT >= 0:
            tl.store(out + I_COUNT * P, tl.sum(m, axis=0))
        if I_SFOC >= 0:  # the sigmoid focal term of the logit itself, whatever the activation
            tl.store(out + I_SFOC * P, tl.sum(_sigmoid_focal_term(x, g, m, alpha, GAMMA, HAS_ALPHA) * m, axis=0))
        if I_APG >= 0 or I_AG >= 0:  # a = [aux = c]·m, summed as g: aux_pg = pm·a, aux_g = a
            ga = tl.where(aux == c, m, 0.0)
            if I_APG >= 0:
                tl.store(out + I_APG * P, tl.sum(pm * ga, axis=0))
            if I_AG >= 0:
                tl.store(out + I_AG * P, tl.sum(ga, axis=0))


# ----------------------------------------------------------------------------------------------------
# backward
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _grad_coefs(
    gs_row, x, p, logp, g, m, w, ga, c, alpha, log_eps,
    ACT: tl.constexpr, HAS_ALPHA: tl.constexpr, GAMMA: tl.constexpr, CE_EXP: tl.constexpr,
    I_PG: tl.constexpr, I_P: tl.constexpr, I_PP: tl.constexpr, I_ABS: tl.constexpr, I_SQP: tl.constexpr,
    I_SQN: tl.constexpr, I_CE: tl.constexpr, I_FOCAL: tl.constexpr, I_CEPOW: tl.constexpr,
    I_MAPCE: tl.constexpr, I_MAPP: tl.constexpr, I_MAPSQ: tl.constexpr, I_SFOC: tl.constexpr, I_APG: tl.constexpr,
    TINY: tl.constexpr,
):
    """Per-voxel gradient pieces for class c, with G_k = dL/dstat_k of this (b, c) (scalars).

    Returns (a, d, e):
      a = Σ_k G_k·∂term_k/∂p         (terms that depend on x through p)
      d = Σ_k G_k·∂term_k/∂(log p)   (softmax / none: terms that depend on x through log p)
      e = the direct dL/dx of the forms written in the logit x (sigmoid CE and focal; sigmoid_focal for
          any activation: it depends on x_c alone, so it bypasses the activation's chain rule)
    The caller applies the activation's chain rule to a and d.
    """
    pm = p * m
    a = tl.zeros_like(p)
    d = tl.zeros_like(p)
    e = tl.zeros_like(p)
    # --- terms in p (pm = p·m): ∂/∂p of each summand ---
    if I_PG >= 0:  # pm·g -> m·g
        a += tl.load(gs_row + I_PG) * (m * g)
    if I_P >= 0:  # pm -> m
        a += tl.load(gs_row + I_P) * m
    if I_PP >= 0:  # pm² -> 2·pm·m
        a += tl.load(gs_row + I_PP) * (2.0 * pm * m)
    if I_ABS >= 0:  # |pm − g| -> sign(pm − g)·m  (torch: sign(0) = 0)
        a += tl.load(gs_row + I_ABS) * (_sign(pm - g) * m)
    if I_SQP >= 0:  # (g − pm)²·g -> 2(pm − g)·m·g
        a += tl.load(gs_row + I_SQP) * (2.0 * (pm - g) * m * g)
    if I_SQN >= 0:  # (g − pm)²·(m − g) -> 2(pm − g)·m·(m − g)
        a += tl.load(gs_row + I_SQN) * (2.0 * (pm - g) * m * (m - g))
    if I_MAPP >= 0:  # pm·w -> m·w
        a += tl.load(gs_row + I_MAPP) * (m * w)
    if I_MAPSQ >= 0:  # (pm − g)²·w -> 2(pm − g)·m·w
        a += tl.load(gs_row + I_MAPSQ) * (2.0 * (pm - g) * m * w)
    if I_APG >= 0:  # pm·ga, ga = [aux = c]·m -> m·ga (pg with the aux class for the label); aux_g: no p
        a += tl.load(gs_row + I_APG) * (m * ga)
    # --- terms in log p ---
    if ACT == 1:
        # sigmoid, written directly in x (dp/dx = p(1 − p), d log σ(x)/dx = 1 − p, d log σ(−x)/dx = −p):
        if I_CE >= 0 or I_MAPCE >= 0:
            # ce = −[g·log σ(x) + (m − g)·log σ(−x)]  ->  −g(1 − p) + (m − g)p = m·p − g
            dce = m * p - g
            if I_CE >= 0:
                e += tl.load(gs_row + I_CE) * dce
            if I_MAPCE >= 0:  # w·ce -> w·(m·p − g)
                e += tl.load(gs_row + I_MAPCE) * (w * dce)
        if I_CEPOW >= 0:
            # g·nl^γ, nl = max(−log σ(x), tiny) -> g·γ·nl^(γ−1)·(−(1 − p)) where −log p ≥ tiny (clamp)
            nlr = -logp
            nl = tl.maximum(nlr, TINY)
            e += tl.load(gs_row + I_CEPOW) * tl.where(
                nlr >= TINY, -g * CE_EXP * _pow_pos(nl, CE_EXP - 1.0) * (1.0 - p), 0.0)
        if I_FOCAL >= 0:  # the sigmoid focal term of x (derivative in _sigmoid_focal_dx)
            e += tl.load(gs_row + I_FOCAL) * _sigmoid_focal_dx(x, g, m, alpha, GAMMA, HAS_ALPHA)
    else:
        if I_CE >= 0:  # −g·log p -> −g
            d -= tl.load(gs_row + I_CE) * g
        if I_MAPCE >= 0:  # −g·w·log p -> −g·w
            d -= tl.load(gs_row + I_MAPCE) * (g * w)
        if I_CEPOW >= 0:
            # g·nl^γ, nl = max(−log p, tiny) -> −g·γ·nl^(γ−1) where −log p ≥ tiny (clamp passes the gradient)
            nlr = -logp
            nl = tl.maximum(nlr, TINY)
            d += tl.load(gs_row + I_CEPOW) * tl.where(nlr >= TINY, -g * CE_EXP * _pow_pos(nl, CE_EXP - 1.0), 0.0)
        if I_FOCAL >= 0:
            # term = −(1 − q)^γ·ℓ·g·α_c·m with ℓ = log p, q = e^ℓ:
            # ∂term/∂ℓ = −g·α_c·m·[(1 − q)^γ − γ·q·ℓ·(1 − q)^(γ−1)]
            q = tl.exp(logp)
            if GAMMA == 0.0:
                bracket = tl.full(q.shape, 1.0, tl.float32)
            else:
                bracket = _pow_pos(1.0 - q, GAMMA) - GAMMA * q * logp * _pow_pos(1.0 - q, GAMMA - 1.0)
            dt = -g * m * bracket
            if HAS_ALPHA:
                dt = dt * tl.where(c == 0, 1.0 - alpha, alpha)
            d += tl.load(gs_row + I_FOCAL) * dt
    if I_SFOC >= 0:
        e += tl.load(gs_row + I_SFOC) * _sigmoid_focal_dx(x, g, m, alpha, GAMMA, HAS_ALPHA)
    return a, d, e


@triton.jit
def _stats_bwd_kernel(
    x_ptr, lab_ptr, soft_ptr, mask_ptr, map_ptr, table_ptr, aux_ptr, gs_ptr, dx_ptr,
    N, map_bs, map_cs, ignore_index, alpha, log_eps, L,
    C: tl.constexpr, K: tl.constexpr, ACT: tl.constexpr,
    TGT_LABELS: tl.constexpr, HAS_MASK: tl.constexpr, HAS_IGNORE: tl.constexpr, REGIONS: tl.constexpr,
    HAS_AUX: tl.constexpr, AUX_IGNORE: tl.constexpr, I_APG: tl.constexpr,
    HAS_ALPHA: tl.constexpr, HAS_LOG_EPS: tl.constexpr, GAMMA: tl.constexpr, CE_EXP: tl.constexpr,
    I_PG: tl.constexpr, I_P: tl.constexpr, I_PP: tl.constexpr, I_ABS: tl.constexpr, I_SQP: tl.constexpr,
    I_SQN: tl.constexpr, I_CE: tl.constexpr, I_FOCAL: tl.constexpr, I_CEPOW: tl.constexpr,
    I_MAPCE: tl.constexpr, I_MAPP: tl.constexpr, I_MAPSQ: tl.constexpr, I_SFOC: tl.constexpr,
    NEED_LOG: tl.constexpr, NEED_MAP: tl.constexpr, TINY: tl.constexpr, BLOCK: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)
    b = tl.program_id(1).to(tl.int64)
    start = pid * BLOCK
    offs = tl.arange(0, BLOCK)
    lane = offs < N - start
    x_row = x_ptr + b * C * N + start
    dx_row = dx_ptr + b * C * N + start
    m, lab = _voxel_mask(lab_ptr + b * N + start, mask_ptr + b * N + start, offs, lane, ignore_index, table_ptr,
                         L, C, TGT_LABELS, HAS_MASK, HAS_IGNORE, REGIONS)
    aux = _aux_class(aux_ptr + b * N + start, offs, lane, m, ignore_index, C, HAS_AUX, AUX_IGNORE)
    other = 1.0 if ACT == 2 else 0.0
    gs_b = gs_ptr + b * C * K
    if ACT == 0:
        # Softmax. With a_j = ∂L/∂p_j and d_j = ∂L/∂(log p_j) (per voxel):
        #   ∂p_j/∂x_c = p_j(δ_jc − p_c),  ∂log p_j/∂x_c = δ_jc − p_c
        #   dL/dx_c = Σ_j a_j p_j(δ_jc − p_c) + Σ_j d_j(δ_jc − p_c)
        #           = p_c(a_c − Sa) + d_c(1 − p_c) − p_c(Sd − d_c),   Sa = Σ_j p_j a_j,  Sd = Σ_j d_j
        # (e.g. CE alone: d_j = −G·g_j -> dL/dx_c = G(p_c·Σ_j g_j − g_c) = G(p_c − [c = y]) for m = 1.)
        # The log part is written with 1 − p_c and Sd − d_c rather than d_c − p_c·Sd: for a confident voxel
        # (p_y → 1) d_y can be huge (ce_pow: ∝ (−log p_y)^(γ−1)) and d_y − p_y·d_y would cancel; 1 − p_c is
        # r/(1 + r) for the maximal class (r from the online pass), exact to float32 rounding.
        mx, inv_se, log_se, r = _softmax_stats(x_row, offs, lane, N, C)
        Sa = tl.zeros_like(mx)
        Sd = tl.zeros_like(mx)
        for c in range(C):  # pass 2: Sa, Sd
            cl = tl.cast(c, tl.int64)
            x = tl.load(x_row + cl * N + offs, mask=lane, other=0.0).to(tl.float32)
            g = _target(lab, soft_ptr + (b * C + cl) * N + start, offs, lane, m, c, C, TGT_LABELS, REGIONS)
            w = tl.zeros_like(x)
            if NEED_MAP:
                w = tl.load(map_ptr + b * map_bs + cl * map_cs + start + offs, mask=lane, other=0.0).to(tl.float32)
            p = tl.exp(x - mx) * inv_se
            logp = x - mx - log_se
            logp = tl.where((g == 0) & (logp == float("-inf")), 0.0, logp)  # a -inf logit where g = 0: the limit 0
            ga = tl.where(aux == c, m, 0.0)
            a, d, e = _grad_coefs(gs_b + c * K, x, p, logp, g, m, w, ga, c, alpha, log_eps, ACT, HAS_ALPHA, GAMMA,
                                  CE_EXP, I_PG, I_P, I_PP, I_ABS, I_SQP, I_SQN, I_CE, I_FOCAL, I_CEPOW,
                                  I_MAPCE, I_MAPP, I_MAPSQ, I_SFOC, I_APG, TINY)
            Sa += p * a
            Sd += d
        for c in range(C):  # pass 3: write dL/dx_c
            cl = tl.cast(c, tl.int64)
            x = tl.load(x_row + cl * N + offs, mask=lane, other=0.0).to(tl.float32)
            g = _target(lab, soft_ptr + (b * C + cl) * N + start, offs, lane, m, c, C, TGT_LABELS, REGIONS)
            w = tl.zeros_like(x)
            if NEED_MAP:
                w = tl.load(map_ptr + b * map_bs + cl * map_cs + start + offs, mask=lane, other=0.0).to(tl.float32)
            p = tl.exp(x - mx) * inv_se
            logp = x - mx - log_se
            logp = tl.where((g == 0) & (logp == float("-inf")), 0.0, logp)  # a -inf logit where g = 0: the limit 0
            ga = tl.where(aux == c, m, 0.0)
            a, d, e = _grad_coefs(gs_b + c * K, x, p, logp, g, m, w, ga, c, alpha, log_eps, ACT, HAS_ALPHA, GAMMA,
                                  CE_EXP, I_PG, I_P, I_PP, I_ABS, I_SQP, I_SQN, I_CE, I_FOCAL, I_CEPOW,
                                  I_MAPCE, I_MAPP, I_MAPSQ, I_SFOC, I_APG, TINY)
            q = tl.where(x == mx, r * inv_se, 1.0 - p)  # 1 − p_c
            dx = p * (a - Sa) + d * q - p * (Sd - d)
            if I_SFOC >= 0:
                dx += e  # the sigmoid focal term's own dL/dx_c
            tl.store(dx_row + cl * N + offs, dx.to(dx_ptr.dtype.element_ty), mask=lane)
    else:
        for c in range(C):  # classes are independent: one pass
            cl = tl.cast(c, tl.int64)
            x = tl.load(x_row + cl * N + offs, mask=lane, other=other).to(tl.float32)
            g = _target(lab, soft_ptr + (b * C + cl) * N + start, offs, lane, m, c, C, TGT_LABELS, REGIONS)
            w = tl.zeros_like(x)
            if NEED_MAP:
                w = tl.load(map_ptr + b * map_bs + cl * map_cs + start + offs, mask=lane, other=0.0).to(tl.float32)
            p, logp = _elementwise_activation(x, log_eps, ACT, NEED_LOG, HAS_LOG_EPS)
            ga = tl.where(aux == c, m, 0.0)
            a, d, e = _grad_coefs(gs_b + c * K, x, p, logp, g, m, w, ga, c, alpha, log_eps, ACT, HAS_ALPHA, GAMMA,
                                  CE_EXP, I_PG, I_P, I_PP, I_ABS, I_SQP, I_SQN, I_CE, I_FOCAL, I_CEPOW,
                                  I_MAPCE, I_MAPP, I_MAPSQ, I_SFOC, I_APG, TINY)
            if ACT == 1:
                # sigmoid: dp/dx = p(1 − p); e is already dL/dx
                dx = a * p * (1.0 - p) + e
            else:
                # none: p = x, d log(x)/dx = 1/x (with log_eps: d log(max(x, eps))/dx = [x ≥ eps]/x,
                # torch's clamp passes the gradient where x ≥ eps)
                if NEED_LOG:
                    if HAS_LOG_EPS:
                        dlog = tl.where(x >= log_eps, 1.0 / tl.where(x >= log_eps, x, 1.0), 0.0)
                    else:
                        dlog = 1.0 / x
                    dx = a + d * dlog
                else:
                    dx = a
                if I_SFOC >= 0:
                    dx += e  # the sigmoid focal term's own dL/dx_c
            tl.store(dx_row + cl * N + offs, dx.to(dx_ptr.dtype.element_ty), mask=lane)


# ----------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------
# Largest block under the interpreter (its cost is per program, so big blocks are cheap); tests lower it
# to exercise many programs and partial last blocks.
_INTERPRET_MAX_BLOCK = 1 << 15


def _block(n: int) -> int:
    if triton_interpreting():
        return max(16, min(triton.next_power_of_2(n), _INTERPRET_MAX_BLOCK))
    # 1024 voxels per program, 4 warps: 8 voxels per thread (16-byte loads for bf16, two for fp32)
    return 1024


def _config(columns: tuple, activation: str, gamma: float, alpha, ce_exponent: float, log_eps: float):
    idx = {name: (columns.index(name) if name in columns else -1) for name in COLUMNS}
    need_log = activation != "sigmoid" and any(idx[n] >= 0 for n in ("ce", "focal", "ce_pow", "map_ce"))
    return dict(
        ACT=_ACT[activation], HAS_ALPHA=alpha is not None, HAS_LOG_EPS=log_eps > 0,
        GAMMA=float(gamma), CE_EXP=float(ce_exponent),
        I_PG=idx["pg"], I_P=idx["p"], I_PP=idx["pp"], I_ABS=idx["absdiff"], I_SQP=idx["sqerr_pos"],
        I_SQN=idx["sqerr_neg"], I_CE=idx["ce"], I_FOCAL=idx["focal"], I_CEPOW=idx["ce_pow"],
        I_MAPCE=idx["map_ce"], I_MAPP=idx["map_p"], I_MAPSQ=idx["map_sqerr"], I_SFOC=idx["sigmoid_focal"],
        I_APG=idx["aux_pg"], NEED_LOG=need_log, TINY=_TINY,
    ), idx


def _common_args(x, labels, soft, mask, vmap, ignore_index, regions=None, aux=None):
    B, C, N = x.shape
    dummy = x  # never read: the matching constexpr flag is False
    has_ignore = labels is not None and ignore_index is not None
    # an ignore_index outside int64 equals no label (the kernels compare int64): no aux label is ignored then
    aux_ignore = aux is not None and ignore_index is not None and -(2**63) <= ignore_index < 2**63
    # label path with ignore_index: the mask is derived from the labels in the kernel
    has_mask = mask is not None and not has_ignore
    map_cs = 0 if vmap is None or vmap.shape[1] == 1 else N  # a one-channel map is shared by all classes
    map_bs = 0 if vmap is None else vmap.shape[1] * N
    return dict(
        lab=labels if labels is not None else dummy,
        soft=soft if soft is not None else dummy,
        mask=mask if has_mask else dummy,
        vmap=vmap if vmap is not None else dummy,
        table=regions if regions is not None else dummy,
        aux=aux if aux is not None else dummy,
        L=0 if regions is None else regions.numel(),
        map_cs=map_cs,
        map_bs=map_bs,
        ignore=int(ignore_index) if has_ignore or aux_ignore else 0,
        flags=dict(TGT_LABELS=labels is not None, HAS_MASK=has_mask, HAS_IGNORE=has_ignore,
                   REGIONS=labels is not None and regions is not None, HAS_AUX=aux is not None,
                   AUX_IGNORE=aux_ignore),
    )


def _forward_impl(x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent, log_eps,
                  ignore_index, aux=None):
    cols = tuple(columns.split(","))
    B, C, N = x.shape
    K = len(cols)
    BLOCK = _block(N)
    P = triton.cdiv(N, BLOCK)
    cfg, idx = _config(cols, activation, gamma, alpha, ce_exponent, log_eps)
    a = _common_args(x, labels, soft, mask, vmap, ignore_index, regions, aux)
    part = torch.empty((B, C, K, P), dtype=torch.float32, device=x.device)
    _stats_fwd_kernel[(P, B)](
        x, a["lab"], a["soft"], a["mask"], a["vmap"], a["table"], a["aux"], part,
        N, P, a["map_bs"], a["map_cs"], a["ignore"], float(alpha) if alpha is not None else 0.0, float(log_eps),
        a["L"],
        C=C, K=K, I_G=idx["g"], I_GG=idx["gg"], I_COUNT=idx["count"], I_AG=idx["aux_g"], BLOCK=BLOCK,
        **a["flags"], **cfg, num_warps=4,
    )
    return part.sum(dim=3)  # fixed-order reduction of the per-program partials: deterministic


def _backward_impl(grad, x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent,
                   log_eps, ignore_index, aux=None):
    cols = tuple(columns.split(","))
    B, C, N = x.shape
    K = len(cols)
    BLOCK = _block(N)
    P = triton.cdiv(N, BLOCK)
    cfg, idx = _config(cols, activation, gamma, alpha, ce_exponent, log_eps)
    a = _common_args(x, labels, soft, mask, vmap, ignore_index, regions, aux)
    gs = grad.to(torch.float32).contiguous()
    dx = torch.empty_like(x)
    _stats_bwd_kernel[(P, B)](
        x, a["lab"], a["soft"], a["mask"], a["vmap"], a["table"], a["aux"], gs, dx,
        N, a["map_bs"], a["map_cs"], a["ignore"], float(alpha) if alpha is not None else 0.0, float(log_eps),
        a["L"],
        C=C, K=K, NEED_MAP=vmap is not None and any(idx[n] >= 0 for n in _MAP_COLUMNS), BLOCK=BLOCK,
        **a["flags"], **cfg, num_warps=4,
    )
    return dx


# ----------------------------------------------------------------------------------------------------
# torch.library registration: custom ops + fake kernels + autograd
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("fastloss::triton_class_stats", mutates_args=())
def _class_stats_op(
    x: torch.Tensor, labels: Optional[torch.Tensor], soft: Optional[torch.Tensor], mask: Optional[torch.Tensor],
    vmap: Optional[torch.Tensor], regions: Optional[torch.Tensor], activation: str, columns: str, gamma: float,
    alpha: Optional[float], ce_exponent: float, log_eps: float, ignore_index: Optional[int],
    aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return _forward_impl(x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent,
                         log_eps, ignore_index, aux)


@_class_stats_op.register_fake
def _(x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent, log_eps, ignore_index,
      aux=None):
    return x.new_empty((x.shape[0], x.shape[1], len(columns.split(","))), dtype=torch.float32)


@torch.library.custom_op("fastloss::triton_class_stats_backward", mutates_args=())
def _class_stats_bwd_op(
    grad: torch.Tensor, x: torch.Tensor, labels: Optional[torch.Tensor], soft: Optional[torch.Tensor],
    mask: Optional[torch.Tensor], vmap: Optional[torch.Tensor], regions: Optional[torch.Tensor], activation: str,
    columns: str, gamma: float, alpha: Optional[float], ce_exponent: float, log_eps: float,
    ignore_index: Optional[int], aux: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    return _backward_impl(grad, x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha,
                          ce_exponent, log_eps, ignore_index, aux)


@_class_stats_bwd_op.register_fake
def _(grad, x, labels, soft, mask, vmap, regions, activation, columns, gamma, alpha, ce_exponent, log_eps,
      ignore_index, aux=None):
    return torch.empty_like(x)


# no gradient for targets, masks and voxel maps (supports() sends those cases to the torch backend)
register_logits_autograd(_class_stats_op, torch.ops.fastloss.triton_class_stats_backward)


# ----------------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------------
def _flat_map(voxel_map, B, N):
    return None if voxel_map is None else voxel_map.reshape(B, -1, N)


def supports(input: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None) -> bool:
    """True when :func:`class_stats_triton` handles this call; False sends it to the torch backend.

    Not handled: float64 (or other non-half/float32) input, an activation other than
    softmax/sigmoid/none, a target whose class count differs from the input's, tensors on different
    devices, a map column without a map (or a map of the wrong size), soft targets, masks or maps that
    require grad (the kernels give no gradient to those).
    """
    if not isinstance(input, torch.Tensor) or input.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        return False
    if input.ndim < 2 or input.numel() == 0 or spec.activation not in _ACT or not spec.columns:
        return False
    if not set(spec.columns) <= set(SUPPORTED_COLUMNS):
        return False
    B, C = input.shape[:2]
    N = input.numel() // (B * C)
    if target.num_classes != C:
        return False
    tensors = [t for t in (target.labels, target.soft, target.mask, voxel_map, target.regions) if t is not None]
    if any(t.device != input.device for t in tensors):
        return False
    if target.raw_labels is not None:
        if target.labels.dtype.is_floating_point or target.labels.dtype == torch.bool or target.labels.numel() != B * N:
            return False
    elif target.soft is None or target.soft.numel() != B * C * N:
        return False
    if target.mask is not None and target.mask.numel() != B * N:
        return False
    aux = target.aux_labels
    if aux is not None and (aux.dtype.is_floating_point or aux.dtype.is_complex or aux.numel() != B * N
                            or aux.device != input.device):
        return False
    if any(t.requires_grad for t in (target.soft, target.mask, voxel_map) if t is not None):
        return False
    if any(c in _MAP_COLUMNS for c in spec.columns):
        if voxel_map is None or voxel_map.numel() not in (B * N, B * C * N):
            return False
    return True


def class_stats_triton(
    input: torch.Tensor, target: Target, spec: StatsSpec, voxel_map: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """``(B, C, K)`` float32 sums of ``spec.columns`` (the semantics of ``class_stats_torch``), fused.

    Differentiable with respect to ``input`` (one backward kernel); call :func:`supports` first.
    """
    B, C = input.shape[:2]
    x = input.reshape(B, C, -1)
    N = x.shape[2]
    x = x.contiguous()
    labels = soft = mask = None
    if target.raw_labels is not None:
        labels = target.labels.reshape(B, N).contiguous()
    else:
        soft = target.soft.reshape(B, C, N).contiguous()
    if target.mask is not None:
        mask = target.mask.reshape(B, N).contiguous()
    vmap = _flat_map(voxel_map, B, N)
    if vmap is not None:
        vmap = vmap.contiguous()
    alpha = None if spec.alpha is None else float(spec.alpha)
    regions = target.regions.contiguous() if target.regions is not None and labels is not None else None
    args = (x, labels, soft, mask, vmap, regions, spec.activation, ",".join(spec.columns), float(spec.gamma), alpha,
            float(spec.ce_exponent), float(spec.log_eps), target.ignore_index)
    if target.aux_labels is None:
        return _class_stats_op(*args)
    return _class_stats_op(*args, target.aux_long.reshape(B, N).contiguous())
