"""The loss *formula* and its derivative in one tiny Triton kernel: kernel, launcher and registration.

The configuration it reads is ``ops/formula_spec.py`` (shared with the C++ twin, ``ops/cpu_formula.py``);
``ops/formula.py`` decides which backend serves a tensor; the losses' adapters are ``losses/_fused.py``.

On CUDA tensors the statistics are one fused kernel (+ one partial-sum reduction) forward and one kernel
backward (``ops/triton_stats.py``). What remains is the loss formula on the ``(B, C, K)`` statistics:
written in torch it is ~30 small ops forward and ~30 more in autograd's backward, each costing
10-20 µs of host time on the GPU machine, which made a 0.3 ms DiceCE step take ~1 ms of eager wall time.
Here one program evaluates the loss **and** ``dL/d(stats)`` in a single launch; the backward of the
formula is ``dstats · grad_output`` (one launch).

Covered (``losses/_fused.py``'s adapters return None otherwise, and the loss keeps its torch formula, the reference):

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
from .formula_spec import FLOAT_FIELDS, INT_FIELDS, tiles


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
# launcher, custom op, autograd
# ----------------------------------------------------------------------------------------------------
def _formula_impl(stats, region_weight, dist_weight, ints, floats):
    cfg = dict(zip(INT_FIELDS, ints))
    fl = dict(zip(FLOAT_FIELDS, floats))
    s = stats.contiguous()
    B, C, K = s.shape
    BB, BC = tiles(B, C)
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


def loss_formula_triton(
    stats: torch.Tensor,
    ints: List[int],
    floats: List[float],
    region_weight: Optional[torch.Tensor] = None,
    dist_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The 0-d float32 loss of the configuration ``(ints, floats)`` (``formula_spec.make_config``) on
    ``(B, C, K)`` float32 ``stats``, by the Triton kernel; differentiable once with respect to ``stats``.
    Called by :func:`fastloss.ops.formula.loss_formula`, which checks the backend and the configuration."""
    if _is_compiling():
        return torch.ops.fastloss.triton_loss_formula(stats, region_weight, dist_weight, ints, floats)[0]
    return _Formula.apply(stats, region_weight, dist_weight, ints, floats)
