"""The loss *formula* and its derivative in one tiny Triton kernel: the host path of the fused losses.

The configuration (``make_config``) and the ``fused_*`` entry points here serve both compiled backends:
on the compiled CPU backend the same configuration runs in C++ (``ops/cpu_formula.py``).

On CUDA tensors the statistics are one fused kernel (+ one partial-sum reduction) forward and one kernel
backward (``ops/triton_stats.py``). What remains is the loss formula on the ``(B, C, K)`` statistics:
written in torch it is ~30 small ops forward and ~30 more in autograd's backward, each costing
10-20 µs of host time on the GPU machine, which made a 0.3 ms DiceCE step take ~1 ms of eager wall time.
Here one program evaluates the loss **and** ``dL/d(stats)`` in a single launch; the backward of the
formula is ``dstats · grad_output`` (one launch).

Covered (``fused_*`` return None otherwise, and the loss keeps its torch formula, the reference):

- Dice / IoU (``DiceLoss``, ``IoULoss``: ``jaccard``), Tversky (``TverskyLoss``): softmax or sigmoid,
  not ``soft_label``; ``include_background``, ``batch``, ``squared_pred``, ``smooth_nr``/``smooth_dr``,
  per-class ``weight`` (Dice), ``reduction`` mean/sum;
- ``CrossEntropyLoss`` (and ``WeightedCrossEntropyLoss``), softmax, labels or one-hot/soft targets,
  mean/sum, optional class weight (with labels: torch's weighted mean ``Σ w·CE / Σ_i w_{y_i}``);
- ``FocalLoss`` softmax or sigmoid with ``alpha`` None or a number, ``include_background=True``,
  class weight, mean (``mean_over`` elements or voxels) / sum, with or without ``ignore_index``;
- ``DiceCELoss`` (softmax Dice, C > 1, no label smoothing) and ``DiceFocalLoss`` (Dice activation =
  focal activation, focal part covered as above): one statistics pass and ONE formula launch for
  ``λ_dice·Dice + λ_ce·CE`` (``λ_focal·Focal``). This includes ``fastloss.get_loss("DiceCE")``,
  ``get_loss("DiceFocal")``, ``get_loss("Dice")``, ``get_loss("IoU")``, ``get_loss("Focal")``,
  ``get_loss("CE")`` and MONAI's ``DiceCELoss(softmax=True)`` / ``DiceFocalLoss(use_softmax=True)`` /
  ``DiceFocalLoss(sigmoid=True)`` configurations.
- Statistics of at most 16384 padded ``(batch, class)`` entries (one program holds them all).

Launch sequence on CUDA, one forward + ``torch.autograd.grad`` step of ``get_loss("DiceCE")`` /
``get_loss("DiceFocal")`` (int64 labels, contiguous float32 logits, ``FASTLOSS_CHECK_LABELS=0``):

1. ``_stats_fwd_kernel``            (triton_stats: per-program partial sums)
2. ``aten::sum`` over the partials  (triton_stats: fixed-order reduction to ``(B, C, K)``)
3. ``_formula_kernel``              (this module: loss and ``dL/dstats``)
4. ``aten::ones_like``              (autograd's ``grad_output = 1`` of the scalar loss)
5. ``aten::mul``                    (this module's backward: ``dstats · grad_output``)
6. ``_stats_bwd_kernel``            (triton_stats: ``dL/dlogits``)

Six launches, no host sync (with the default ``FASTLOSS_CHECK_LABELS=1`` the label range check costs
one sync before the kernels). With ``ignore_index`` ``prepare_target`` adds the float mask (``ne`` and
a copy: 2 launches). The torch formula path measured ~60 for the same step (63 DiceCE, 50 DiceFocal).
These counts come from torch.profiler on CPU tensors under ``TRITON_INTERPRET=1`` (one profiler range per
Triton launch; ``tests/test_triton_formula.py::test_launch_count``); no GPU has measured them yet.
A compound loss that is not covered keeps its torch path, where its parts (``DiceLoss``,
``CrossEntropyLoss``, ``FocalLoss``) may each still take the fused formula.

Kernel: a single program loads each needed column as a ``[BLOCK_B, BLOCK_C]`` tile (masked), sums over
the batch / classes with ``tl.sum`` (fixed order: bitwise reproducible, no atomics) and stores every
``dL/dstats[b, c, k]`` (0 for columns and classes the loss does not use). The formulas are written in the
same order of operations as the torch formulas they replace; the derivatives are derived in comments.

torch.compile: the op is the custom op ``fastloss::triton_loss_formula`` (fake implementation,
``register_autograd``); eager calls go through an equivalent ``torch.autograd.Function`` and skip the
custom-op dispatcher (its host overhead, and its first-call import of ``torch._dynamo``).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import triton
import triton.language as tl

from .._validation import _is_compiling
from ._autograd import eager_formula_function, register_formula_autograd
from ..backend import use_compiled_cpu, use_triton
from .stats import StatsSpec, class_stats

_REGION = {"none": 0, "dice": 1, "jaccard": 2, "tversky": 3, "gdice": 4}  # gdice: the C++ twin only
_GD_WEIGHT = {"uniform": 0, "simple": 1, "square": 2}
_DIST = {"none": 0, "ce": 1, "focal": 2}
_F32_EPS = float(torch.finfo(torch.float32).eps)  # FocalLoss's clamp of the voxel count
_MAX_TILE = 1 << 14  # padded (batch, class) entries one program holds


# ----------------------------------------------------------------------------------------------------
# kernel
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _formula_kernel(
    s_ptr, rw_ptr, dw_ptr, loss_ptr, ds_ptr,
    B, C, rw_stride, dw_stride,
    smooth_nr, smooth_dr, t_alpha, t_beta, lam_r, lam_d, r_numel, d_div, eps,
    K: tl.constexpr, REGION: tl.constexpr, C0: tl.constexpr, BATCH: tl.constexpr, R_MEAN: tl.constexpr,
    HAS_RW: tl.constexpr, I_TP: tl.constexpr, I_PS: tl.constexpr, I_GS: tl.constexpr,
    DIST: tl.constexpr, D_MEAN: tl.constexpr, HAS_DW: tl.constexpr, CE_WDEN: tl.constexpr,
    F_MASKED: tl.constexpr, I_CE: tl.constexpr, I_G: tl.constexpr, I_CNT: tl.constexpr, I_FOC: tl.constexpr,
    BLOCK_B: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """One program: loss = λ_r·region + λ_d·distribution, and dL/dstats for every (b, c, k)."""
    rb = tl.arange(0, BLOCK_B)[:, None]
    rc = tl.arange(0, BLOCK_C)[None, :]
    inb = (rb < B) & (rc < C)
    base = s_ptr + (rb * C + rc) * K
    zero = tl.zeros([BLOCK_B, BLOCK_C], dtype=tl.float32)
    loss = tl.sum(tl.sum(zero, axis=1), axis=0)
    d_tp = zero
    d_ps = zero
    d_gs = zero
    d_ce = zero
    d_g = zero
    d_cnt = zero
    d_foc = zero

    if REGION != 0:
        # tp = Σpg, P = Σp (Σp²), G = Σg (Σg²); fp = P − tp, fn = G − tp (classes c ≥ C0 only)
        sel = inb & (rc >= C0)
        tp = tl.load(base + I_TP, mask=sel, other=0.0)
        ps = tl.load(base + I_PS, mask=sel, other=0.0)
        gs = tl.load(base + I_GS, mask=sel, other=0.0)
        if BATCH:  # batch Dice: the sums over the batch, one value per class
            tp = tl.sum(tp, axis=0)[None, :]
            ps = tl.sum(ps, axis=0)[None, :]
            gs = tl.sum(gs, axis=0)[None, :]
            keep = (rc >= C0) & (rc < C)
        else:
            keep = sel
        fp = ps - tp
        fn = gs - tp
        # f = 1 − num/den. With r = num/den: ∂f/∂S = −(∂num/∂S)/den + (r/den)·(∂den/∂S), S ∈ {tp, P, G}:
        if REGION == 1:
            # Dice: num = 2tp + s_nr, den = 2(tp + (fp + fn)/2) + s_dr = P + G + s_dr
            #   ∂num/∂(tp, P, G) = (2, 0, 0), ∂den/∂(tp, P, G) = (0, 1, 1)
            num = 2.0 * tp + smooth_nr
            den = 2.0 * (tp + 0.5 * (fp + fn)) + smooth_dr
            a_tp = 2.0
            b_tp = 0.0
            b_ps = 1.0
            b_gs = 1.0
        elif REGION == 2:
            # Jaccard: num = 2tp + s_nr, den = 2(tp + fp + fn) + s_dr = 2(P + G − tp) + s_dr
            #   ∂num/∂(tp, P, G) = (2, 0, 0), ∂den/∂(tp, P, G) = (−2, 2, 2)
            num = 2.0 * tp + smooth_nr
            den = 2.0 * (tp + fp + fn) + smooth_dr
            a_tp = 2.0
            b_tp = -2.0
            b_ps = 2.0
            b_gs = 2.0
        else:
            # Tversky: num = tp + s_nr, den = tp + α·fp + β·fn + s_dr
            #   ∂num/∂(tp, P, G) = (1, 0, 0), ∂den/∂(tp, P, G) = (1 − α − β, α, β)
            num = tp + smooth_nr
            den = tp + t_alpha * fp + t_beta * fn + smooth_dr
            a_tp = 1.0
            b_tp = 1.0 - t_alpha - t_beta
            b_ps = t_alpha
            b_gs = t_beta
        den = tl.where(keep, den, 1.0)  # padded lanes: keep them finite
        inv = 1.0 / den
        r = num / den
        f = 1.0 - r
        w = tl.where(keep, 1.0, 0.0)
        if HAS_RW:  # per-class weight of the kept classes (index c − C0)
            w = tl.load(rw_ptr + (rc - C0) * rw_stride, mask=keep, other=0.0)
        f = tl.where(keep, f * w, 0.0)
        tot = tl.sum(tl.sum(f, axis=1), axis=0)
        # mean: L_r = Σf/n (n = B·C' or C' with batch), dL/df_bc = λ_r·w_c/n; sum: λ_r·w_c
        if R_MEAN:
            loss += lam_r * (tot / r_numel)
            gf = tl.where(keep, (lam_r / r_numel) * w, 0.0)
        else:
            loss += lam_r * tot
            gf = tl.where(keep, lam_r * w, 0.0)
        q = r * inv  # num/den²
        gtp = gf * (b_tp * q - a_tp * inv)
        gps = gf * (b_ps * q)
        ggs = gf * (b_gs * q)
        # batch: S_c = Σ_b S_bc, so dL/dS_bc = dL/dS_c for every b (the broadcast below)
        d_tp = zero + gtp
        d_ps = zero + gps
        d_gs = zero + ggs

    if DIST != 0:
        cls = rc < C
        wc = tl.where(cls, 1.0, 0.0)
        if HAS_DW:  # class weight (stride 0 repeats one value)
            wc = tl.load(dw_ptr + rc * dw_stride, mask=cls, other=0.0)
        if DIST == 1:
            # CE: num = Σ_c w_c Σ_b ce_bc; mean: num/den with den = Σ_b count_b (unweighted, or one-hot)
            # or den = Σ_c w_c Σ_b g_bc (labels + weight: torch's Σ_i w_{y_i}); den = 0 → den := 1.
            ce = tl.load(base + I_CE, mask=inb, other=0.0)
            num = tl.sum(tl.sum(wc * tl.sum(ce, axis=0)[None, :], axis=1), axis=0)
            if D_MEAN:
                if CE_WDEN:
                    g = tl.load(base + I_G, mask=inb, other=0.0)
                    den = tl.sum(tl.sum(wc * tl.sum(g, axis=0)[None, :], axis=1), axis=0)
                else:
                    cnt = tl.load(s_ptr + rb * C * K + I_CNT, mask=rb < B, other=0.0)  # class 0's count
                    den = tl.sum(tl.sum(cnt, axis=1), axis=0)
                pos = den > 0.0
                den_s = tl.where(pos, den, 1.0)
                val = num / den_s
                loss += lam_d * val
                # ∂(num/den)/∂num = 1/den, ∂/∂den = −num/den² (0 where den was replaced by 1)
                gnum = lam_d / den_s
                gden = tl.where(pos, -(lam_d * val) / den_s, 0.0)
                d_ce = tl.where(inb, gnum * wc, 0.0)
                if CE_WDEN:
                    d_g = tl.where(inb, gden * wc, 0.0)  # ∂den/∂g_bc = w_c
                else:
                    d_cnt = tl.where((rb < B) & (rc == 0), gden, 0.0)  # ∂den/∂count_b0 = 1
            else:
                loss += lam_d * num
                d_ce = tl.where(inb, lam_d * wc, 0.0)
        else:
            # Focal: sums_bc = focal_bc·w_c (α and the mask are inside the column). Masked: sum over b of
            # Σ_c sums_bc / max(cnt_b, ε), mean: Σ sums / max(Σ_b cnt_b, ε); unmasked: Σ sums / d_div
            # (N for sum; B·N or B·C·N for mean). Linear in focal_bc: d = λ_d·w_c/divisor. The voxel counts
            # have no path to the logits (the torch formula reads them from the mask): their gradient is 0.
            foc = tl.load(base + I_FOC, mask=inb, other=0.0)
            sums = foc * wc
            if F_MASKED:
                cnt = tl.load(s_ptr + rb * C * K + I_CNT, mask=rb < B, other=0.0)  # (BLOCK_B, 1)
                if D_MEAN:
                    tot_cnt = tl.maximum(tl.sum(tl.sum(cnt, axis=1), axis=0), eps)
                    loss += lam_d * (tl.sum(tl.sum(sums, axis=1), axis=0) / tot_cnt)
                    d_foc = tl.where(inb, (lam_d / tot_cnt) * wc, 0.0)
                else:
                    cb = tl.maximum(cnt, eps)
                    loss += lam_d * tl.sum(tl.sum(sums / cb, axis=1), axis=0)
                    d_foc = tl.where(inb, (lam_d / cb) * wc, 0.0)
            else:
                if D_MEAN:
                    loss += lam_d * (tl.sum(tl.sum(sums, axis=1), axis=0) / d_div)
                else:
                    loss += lam_d * tl.sum(tl.sum(sums / d_div, axis=1), axis=0)
                d_foc = tl.where(inb, (lam_d / d_div) * wc, 0.0)

    tl.store(loss_ptr, loss)
    out = ds_ptr + (rb * C + rc) * K
    for k in tl.static_range(K):  # every column, 0 where the loss does not use it
        t = zero
        if k == I_TP:
            t += d_tp
        if k == I_PS:
            t += d_ps
        if k == I_GS:
            t += d_gs
        if k == I_CE:
            t += d_ce
        if k == I_G:
            t += d_g
        if k == I_CNT:
            t += d_cnt
        if k == I_FOC:
            t += d_foc
        tl.store(out + k, t, mask=inb)


# ----------------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------------
_INT_FIELDS = ("region", "first_class", "batch", "region_mean", "i_tp", "i_ps", "i_gs",
               "dist", "dist_mean", "ce_weighted_den", "focal_masked", "i_ce", "i_g", "i_count", "i_focal",
               "gd_weight", "gd_relative", "gd_f32_weights")
_FLOAT_FIELDS = ("smooth_nr", "smooth_dr", "alpha", "beta", "lambda_region", "lambda_dist", "region_numel",
                 "dist_divisor", "eps")


def make_config(
    *,
    region: str = "none",
    first_class: int = 0,
    batch: bool = False,
    region_mean: bool = True,
    i_tp: int = -1,
    i_ps: int = -1,
    i_gs: int = -1,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    lambda_region: float = 1.0,
    region_numel: float = 1.0,
    dist: str = "none",
    dist_mean: bool = True,
    ce_weighted_den: bool = False,
    focal_masked: bool = False,
    i_ce: int = -1,
    i_g: int = -1,
    i_count: int = -1,
    i_focal: int = -1,
    lambda_dist: float = 1.0,
    dist_divisor: float = 1.0,
    eps: float = _F32_EPS,
    gd_weight: str = "square",
    gd_relative: bool = False,
    gd_f32_weights: bool = False,
) -> Tuple[List[int], List[float]]:
    """The formula as ``(int list, float list)``, the form the custom op takes.

    Region term (``region``: ``none``/``dice``/``jaccard``/``tversky``) on columns ``i_tp`` (Σpg), ``i_ps``
    (Σp or Σp²), ``i_gs`` (Σg or Σg²), classes ``c ≥ first_class``, summed over the batch first with
    ``batch``, mean over its ``region_numel`` values or sum, times ``lambda_region``. Distribution term
    (``dist``: ``none``/``ce``/``focal``) on ``i_ce`` (+ ``i_g`` for ``ce_weighted_den``, ``i_count``) or
    ``i_focal`` (+ ``i_count`` when ``focal_masked``), times ``lambda_dist``; ``dist_divisor`` is the unmasked
    focal divisor (N for sum, B·N or B·C·N for mean). ``region="gdice"`` (the generalized Dice, C++ twin only):
    class weights ``gd_weight`` (``uniform``/``simple``/``square``) from the target volumes, computed in float32
    with ``gd_f32_weights``, smoothing scaled by the weighted target volume with ``gd_relative``.
    """
    if region not in _REGION or dist not in _DIST:
        raise ValueError(f"region must be one of {list(_REGION)} and dist one of {list(_DIST)}, got {region!r}, {dist!r}")
    if gd_weight not in _GD_WEIGHT:
        raise ValueError(f"gd_weight must be one of {list(_GD_WEIGHT)}, got {gd_weight!r}")
    ints = [_REGION[region], int(first_class), int(batch), int(region_mean), i_tp, i_ps, i_gs,
            _DIST[dist], int(dist_mean), int(ce_weighted_den), int(focal_masked), i_ce, i_g, i_count, i_focal,
            _GD_WEIGHT[gd_weight], int(gd_relative), int(gd_f32_weights)]
    floats = [smooth_nr, smooth_dr, alpha, beta, lambda_region, lambda_dist, region_numel, dist_divisor, eps]
    return [int(v) for v in ints], [float(v) for v in floats]


def _tiles(B: int, C: int) -> Tuple[int, int]:
    return max(2, triton.next_power_of_2(B)), max(2, triton.next_power_of_2(C))


def fits(stats: torch.Tensor) -> bool:
    """True when one program can hold the ``(B, C)`` tiles of ``stats`` (float32, 3D)."""
    if stats.dtype != torch.float32 or stats.ndim != 3:
        return False
    bb, bc = _tiles(stats.shape[0], stats.shape[1])
    return bb * bc <= _MAX_TILE


# ----------------------------------------------------------------------------------------------------
# launcher, custom op, autograd
# ----------------------------------------------------------------------------------------------------
def _formula_impl(stats, region_weight, dist_weight, ints, floats):
    cfg = dict(zip(_INT_FIELDS, ints))
    fl = dict(zip(_FLOAT_FIELDS, floats))
    s = stats.contiguous()
    B, C, K = s.shape
    BB, BC = _tiles(B, C)
    loss = torch.empty((), dtype=torch.float32, device=s.device)
    dstats = torch.empty_like(s)
    rw = region_weight if region_weight is not None else s  # never read when HAS_RW is False
    dw = dist_weight if dist_weight is not None else s
    _formula_kernel[(1,)](
        s, rw, dw, loss, dstats,
        B, C, rw.stride(0) if region_weight is not None else 0, dw.stride(0) if dist_weight is not None else 0,
        fl["smooth_nr"], fl["smooth_dr"], fl["alpha"], fl["beta"], fl["lambda_region"], fl["lambda_dist"],
        fl["region_numel"], fl["dist_divisor"], fl["eps"],
        K=K, REGION=cfg["region"], C0=cfg["first_class"], BATCH=bool(cfg["batch"]), R_MEAN=bool(cfg["region_mean"]),
        HAS_RW=region_weight is not None, I_TP=cfg["i_tp"], I_PS=cfg["i_ps"], I_GS=cfg["i_gs"],
        DIST=cfg["dist"], D_MEAN=bool(cfg["dist_mean"]), HAS_DW=dist_weight is not None,
        CE_WDEN=bool(cfg["ce_weighted_den"]), F_MASKED=bool(cfg["focal_masked"]),
        I_CE=cfg["i_ce"], I_G=cfg["i_g"], I_CNT=cfg["i_count"], I_FOC=cfg["i_focal"],
        BLOCK_B=BB, BLOCK_C=BC, num_warps=4,
    )
    return loss, dstats


@torch.library.custom_op("fastloss::triton_loss_formula", mutates_args=())
def _formula_op(
    stats: torch.Tensor, region_weight: Optional[torch.Tensor], dist_weight: Optional[torch.Tensor],
    ints: List[int], floats: List[float],
) -> Tuple[torch.Tensor, torch.Tensor]:
    return _formula_impl(stats, region_weight, dist_weight, ints, floats)


@_formula_op.register_fake
def _(stats, region_weight, dist_weight, ints, floats):
    return stats.new_empty((), dtype=torch.float32), torch.empty_like(stats)


register_formula_autograd(_formula_op)
_Formula = eager_formula_function(_formula_impl)


def loss_formula(
    stats: torch.Tensor,
    config: Tuple[List[int], List[float]],
    region_weight: Optional[torch.Tensor] = None,
    dist_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The 0-d float32 loss of ``config`` (:func:`make_config`) on ``(B, C, K)`` float32 ``stats``, fused.

    Differentiable once with respect to ``stats`` (backward: one multiply of the saved ``dL/dstats``; no
    second derivative).
    ``region_weight``: ``(C − first_class,)`` float32 on ``stats``' device (stride 0 repeats a value) or
    None; ``dist_weight``: ``(C,)`` likewise. Call :func:`fits` first. CPU statistics off the Triton
    backend go to the C++ twin of the kernel (``ops/cpu_formula.py``).
    """
    ints, floats = config
    if stats.device.type == "cpu" and not use_triton(stats):
        from .cpu_formula import loss_formula_cpu

        return loss_formula_cpu(stats, ints, floats, region_weight, dist_weight)
    if ints[0] == _REGION["gdice"]:
        raise ValueError("the Triton formula has no generalized Dice term (the C++ twin has)")
    if _is_compiling():
        return torch.ops.fastloss.triton_loss_formula(stats, region_weight, dist_weight, ints, floats)[0]
    return _Formula.apply(stats, region_weight, dist_weight, ints, floats)


# ----------------------------------------------------------------------------------------------------
# dispatch from the losses: each returns None when the configuration is not covered (before any
# validation, so that the torch path then validates and warns exactly once)
# ----------------------------------------------------------------------------------------------------
_FUSED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _input_ok(input) -> bool:
    if not isinstance(input, torch.Tensor) or input.dtype not in _FUSED_DTYPES or input.ndim not in (3, 4, 5):
        return False
    if input.numel() == 0 or not (use_triton(input) or _cpu_formula_serves(input)):
        return False
    bb, bc = _tiles(input.shape[0], input.shape[1])
    return bb * bc <= _MAX_TILE


def _cpu_formula_serves(input: torch.Tensor) -> bool:
    """CPU tensors on the compiled backend: the statistics from ``ops/cpu_stats.py``, the formula from
    ``ops/cpu_formula.py`` (the C++ twin of this module's kernel)."""
    if not use_compiled_cpu(input):
        return False
    from . import cpu_formula

    return cpu_formula.available()


def _weight(weight: Optional[torch.Tensor], n: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """``weight`` (scalar or ``(n,)``, checked by ``expand_class_weight``) as float32 on ``like``'s device."""
    from ..losses._common import expand_class_weight

    if weight is None:
        return None
    return expand_class_weight(weight, n).to(device=like.device, dtype=torch.float32)


def _region_covered(loss, input) -> bool:
    """Dice-family module ``loss`` (LossBase flags) on ``input``: softmax/sigmoid, mean/sum, no soft_label."""
    if not _input_ok(input) or getattr(loss, "soft_label", False) or loss.reduction not in ("mean", "sum"):
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


def fused_dice(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.region.DiceLoss` / ``IoULoss`` through the fused formula, or None."""
    if not _region_covered(loss, input):
        return None
    prep = loss.prepare(input, target)
    B, C = input.shape[:2]
    kind = "jaccard" if loss.jaccard else "dice"
    cols, kw, w = _region_config(loss, B, C, kind=kind, squared=loss.squared_pred, like=input)
    stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, cols))
    return loss_formula(stats, make_config(**kw), w, None)


def fused_tversky(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.region.TverskyLoss` through the fused formula, or None."""
    if not _region_covered(loss, input):
        return None
    prep = loss.prepare(input, target)
    B, C = input.shape[:2]
    cols, kw, w = _region_config(loss, B, C, kind="tversky", squared=False, like=input)
    stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, cols))
    return loss_formula(stats, make_config(**kw), w, None)


def fused_generalized_dice(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.region.GeneralizedDiceLoss` through the C++ formula (CPU tensors on the
    compiled backend; the Triton kernel has no generalized Dice term), or None. Its weights come from the
    target volumes, whose gradient the formula leaves 0: a target that requires grad keeps the torch path."""
    if not _region_covered(loss, input) or use_triton(input):
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
    return loss_formula(stats, make_config(**kw), None, None)


def _ce_config(labels: bool, weighted: bool, mean: bool, lambda_dist: float, i_ce: int, i_g: int, i_count: int):
    return dict(dist="ce", dist_mean=mean, ce_weighted_den=weighted and labels, i_ce=i_ce, i_g=i_g,
                i_count=i_count, lambda_dist=lambda_dist)


def fused_cross_entropy(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.distribution.CrossEntropyLoss` (softmax, mean/sum), or None."""
    from ..losses._common import prepare_inputs

    if not _input_ok(input) or loss.sigmoid or loss.reduction not in ("mean", "sum"):
        return None
    prep = prepare_inputs(input, target, activation="none", to_onehot_y=loss.to_onehot_y,
                          ignore_index=loss.ignore_index)
    C = input.shape[1]
    w = _weight(loss._weight_for(prep.target, input), C, input)
    stats = class_stats(input, prep.target, StatsSpec("softmax", ("ce", "g", "count")))
    cfg = _ce_config(prep.target.raw_labels is not None, w is not None, loss.reduction == "mean", 1.0, 0, 1, 2)
    return loss_formula(stats, make_config(**cfg), None, w)


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


def fused_focal(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
    """:class:`~fastloss.losses.distribution.FocalLoss` (see the module docstring), or None."""
    from ..losses._common import prepare_inputs

    if not _input_ok(input) or not _focal_covered(loss):
        return None
    prep = prepare_inputs(input, target, activation="none", to_onehot_y=loss.to_onehot_y,
                          ignore_index=loss.ignore_index)
    kw, cw = _focal_config(loss, prep, input, 0, 1, 1.0)
    act = "softmax" if loss.use_softmax else "sigmoid"
    cols = ("focal", "count") if kw["focal_masked"] else ("focal",)
    spec = StatsSpec(act, cols, gamma=loss.gamma, alpha=None if loss.alpha is None else float(loss.alpha))
    stats = class_stats(input, prep.target, spec)
    return loss_formula(stats, make_config(**kw), None, cw)


def fused_dice_ce(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
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
    return loss_formula(stats, make_config(**rkw, **ckw), rw, cw)


def fused_dice_focal(loss, input: torch.Tensor, target: torch.Tensor) -> Optional[torch.Tensor]:
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
    return loss_formula(stats, make_config(**rkw, **fkw), rw, cw)
