"""Topology- and boundary-aware losses after the paper: Skeleton Recall (Kirchhoff et al., ECCV 2024), its
nnU-Net compound with Dice + CE, and Boundary DoU (Sun et al., MICCAI 2023).

All three are formulas of the fused per-class statistics (:func:`fastloss.ops.stats.class_stats`):

- Skeleton Recall is ``Σ p·g`` and ``Σ g`` of the softmax against the *tubed skeleton* of the labels
  (:func:`fastloss.skeleton.tubed_skeleton`, computed by the compiled :func:`fastloss.skeletonize`), i.e. the
  ``pg`` and ``g`` columns of one statistics pass whose target is the skeleton label map (no one-hot tensor);
- Boundary DoU is ``Σ p²``, ``Σ g``, ``Σ p·g`` per class and the number of boundary voxels of each class in the
  target (a few integer ops on the labels).
"""

from __future__ import annotations

import contextlib
import numbers
from typing import Optional

import torch
from torch import nn

from .._validation import _is_compiling, attach_aux_labels, check_logits, labels_checked_once, prepare_target
from ..distance import edt
from ..ops.soft_skeleton import soft_skeleton
from ..ops.stats import StatsSpec, class_stats, shared_statistics
from ..skeleton import tube_indices, tubed_skeleton
from ._common import LossBase, check_bool, check_nonneg, functional_form, reduce_loss
from .compound import DiceCELoss

__all__ = [
    "SkeletonRecallLoss", "DiceCESkeletonRecallLoss", "BoundaryDoULoss", "CbDiceLoss",
    "skeleton_recall_loss", "dice_ce_skeleton_recall_loss", "boundary_dou_loss", "cb_dice_loss",
]


def _label_map(input: torch.Tensor, target: torch.Tensor, name: str = "target") -> torch.Tensor:
    """Integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)`` of ``input``'s batch and spatial shape -> ``(B, *spatial)``."""
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(target).__name__}")
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise TypeError(
            f"{name} must hold integer class labels (B, 1, *spatial) or (B, *spatial), got dtype {target.dtype}"
        )
    B, spatial = input.shape[0], tuple(input.shape[2:])
    if tuple(target.shape) == (B, 1) + spatial:
        target = target[:, 0]
    if tuple(target.shape) != (B,) + spatial:
        raise ValueError(
            f"{name} must be integer labels of shape {(B, 1) + spatial} or {(B,) + spatial} for an input of shape "
            f"{tuple(input.shape)}, got {tuple(target.shape)}"
        )
    if target.device != input.device:
        raise ValueError(f"{name} is on {target.device} but the input is on {input.device}")
    return target


class SkeletonRecallLoss(LossBase):
    r"""Skeleton Recall loss (Kirchhoff et al., "Skeleton Recall Loss for Connectivity Conserving and Resource
    Efficient Segmentation of Thin Tubular Structures", ECCV 2024), as the authors' ``SoftSkeletonRecallLoss``.

    .. math:: L = 1 - \frac{1}{|B'||C'|} \sum_{b, c} \frac{\sum_v p_{b,c,v} S_{b,c,v} + s}{\sum_v S_{b,c,v} + s}

    ``p`` the softmax (without the background channel), ``S`` the one-hot *tubed skeleton* of the labels:
    the skeleton of the foreground (all classes together, :func:`fastloss.skeletonize`, scikit-image's answer
    voxel for voxel) dilated twice by the cross, each tube voxel carrying the label of the voxel it lies on
    (the authors' ``SkeletonTransform``). Their loss returns ``-recall``; this one ``1 - recall`` (the same
    gradient). Per sample, classes averaged; ``batch=True`` sums over the batch first.

    The skeleton is computed here from the labels on their device, or passed in as ``skeleton=`` (the labels'
    shape, class ids) when the dataloader made it. CPU labels get scikit-image's skeleton (compiled C++, threads
    over the batch). CUDA labels get the GPU's parallel thinning (``fastloss.skeletonize``'s ``method="parallel"``):
    in 2D the same skeleton, in 3D one with the guarantees that function documents (inside the mask, thin, the
    mask's components and Euler number) but not scikit-image's voxels, so there the targets differ from the
    authors' (pass ``skeleton=fastloss.skeleton.tubed_skeleton(labels, 3, method="exact")`` for theirs).

    Args:
        softmax: apply the softmax (default True, as the authors); False: the input is probabilities.
        smooth: the smoothing of numerator and denominator (1.0, the class default of the authors' loss;
            their nnU-Net trainer passes 1e-5).
        batch: sum the statistics over the batch (nnU-Net's ``batch_dice``).
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"`` over the per-(batch, class) values.
        ignore_index: voxels with this label count nowhere (the authors' ``loss_mask``). The skeleton is taken
            of ``labels > 0``, which includes a positive ``ignore_index``'s voxels, as in the authors' pipeline.
        tube_dilations: cross dilations of the skeleton (2, the authors' tube; 0 for the bare skeleton).
        include_background: must be False (the authors refuse the background too).

    Raises:
        ValueError: ``include_background=True``, fewer than 2 channels, 1 spatial dim without ``skeleton=``,
            shapes that do not match, negative ``smooth``/``tube_dilations``.
        TypeError: float labels or skeleton, bad argument types.

    Example:
        >>> x = torch.randn(2, 3, 32, 32, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 32, 32))
        >>> SkeletonRecallLoss()(x, y).backward()
    """

    def __init__(
        self,
        softmax: bool = True,
        smooth: float = 1.0,
        batch: bool = False,
        reduction: str = "mean",
        ignore_index: Optional[int] = None,
        tube_dilations: int = 2,
        include_background: bool = False,
    ) -> None:
        if check_bool(include_background, "include_background"):
            raise ValueError("SkeletonRecallLoss does not work with the background (include_background must be False)")
        super().__init__(include_background=False, softmax=softmax, reduction=reduction, batch=batch,
                         ignore_index=ignore_index)
        self.smooth = check_nonneg(smooth, "smooth")
        if isinstance(tube_dilations, bool) or not isinstance(tube_dilations, numbers.Integral) or tube_dilations < 0:
            raise ValueError(f"tube_dilations must be an int >= 0, got {tube_dilations!r}")
        self.tube_dilations = int(tube_dilations)

    def skeleton_target(self, labels: torch.Tensor) -> torch.Tensor:
        """The tubed skeleton of ``(B, *spatial)`` labels (``(B, *spatial)``, class ids)."""
        sd = labels.ndim - 1
        if sd not in (2, 3):
            raise ValueError(f"the skeleton needs 2 or 3 spatial dims, got {sd}; pass skeleton= for other inputs")
        return tubed_skeleton(labels, sd, dilations=self.tube_dilations)

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, skeleton: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """``input`` logits ``(B, C, *spatial)``, ``target`` integer labels ``(B, 1, *spatial)`` or
        ``(B, *spatial)``; ``skeleton``: the tubed skeleton (class ids, the labels' shape), or None to compute it."""
        check_logits(input)
        if input.shape[1] < 2:
            raise ValueError(f"SkeletonRecallLoss needs at least 2 channels (softmax, no background), got C={input.shape[1]}")
        labels = _label_map(input, target)
        sparse = input.device.type == "cpu" and not _is_compiling()
        if sparse and skeleton is None:  # the tube's voxels straight from the skeleton, no label volume
            sd = labels.ndim - 1
            if sd not in (2, 3):
                raise ValueError(f"the skeleton needs 2 or 3 spatial dims, got {sd}; pass skeleton= for other inputs")
            idx = tube_indices(labels, sd, dilations=self.tube_dilations)
            cls = labels.reshape(-1)[idx]
            stats = self.reduce_stats(self._sparse_sums(input, idx, cls))
            recall = (stats[..., 0] + self.smooth) / (stats[..., 1] + self.smooth).clamp_min(1e-8)
            return reduce_loss(1.0 - recall, self.reduction, input.ndim - 2)
        skel = self.skeleton_target(labels) if skeleton is None else _label_map(input, skeleton, "skeleton")
        if self.ignore_index is not None:  # the ignored voxels keep the ignore label: the pass masks them
            skel = torch.where(labels == self.ignore_index, labels.to(skel.dtype), skel)
        if sparse:
            flat = skel.reshape(-1)
            idx = (flat > 0).nonzero().squeeze(1)
            stats = self.reduce_stats(self._sparse_sums(input, idx, flat[idx]))
        else:  # one statistics pass whose target is the skeleton (no host sync)
            stats, _ = self.class_stats(input, skel.unsqueeze(1), ("pg", "g"))
        recall = (stats[..., 0] + self.smooth) / (stats[..., 1] + self.smooth).clamp_min(1e-8)
        return reduce_loss(1.0 - recall, self.reduction, input.ndim - 2)

    def _sparse_sums(self, input: torch.Tensor, idx: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
        """``(B, C, 2)``: ``Σ p·S`` and ``Σ S`` per class from the tube voxels alone (``idx``: flat indices into
        the ``(B, *spatial)`` volume, ``cls``: their skeleton labels; 0 and ``ignore_index`` count nowhere). Both
        sums vanish off the tube and the softmax at a voxel reads that voxel's logits only, so gathering the few
        tube voxels' logits (a few per cent of the volume) gives the statistics pass's sums and their gradient
        (autograd scatters it back into a zero gradient). CPU only: the voxel count is a host value (on the GPU
        the statistics pass serves, with no sync)."""
        B, C = input.shape[:2]
        x = input.reshape(B, C, -1)
        N = x.shape[2]
        keep = cls != 0
        if self.ignore_index is not None:
            keep = keep & (cls != self.ignore_index)
        idx, cls = idx[keep], cls[keep].long()
        if cls.numel() and (int(cls.max()) >= C or int(cls.min()) < 0):
            bad = int(cls.max()) if int(cls.max()) >= C else int(cls.min())
            raise ValueError(f"skeleton labels must be class indices in [0, {C}) (or ignore_index), got {bad}")
        b, v = idx // N, idx % N
        dt = torch.float64 if input.dtype == torch.float64 else torch.float32
        xs = x[b, :, v].to(dt)  # (M, C): the logits of the tube voxels
        p = torch.softmax(xs, dim=1) if self.activation == "softmax" else xs
        py = p.gather(1, cls.unsqueeze(1)).squeeze(1)
        key = b * C + cls
        inter = torch.zeros(B * C, dtype=dt).index_add(0, key, py)
        count = torch.bincount(key, minlength=B * C).to(dt)
        return torch.stack([inter, count], dim=1).view(B, C, 2)

    def extra_repr(self) -> str:
        return f"smooth={self.smooth}, batch={self.batch}, tube_dilations={self.tube_dilations}, ignore_index={self.ignore_index}"


class DiceCESkeletonRecallLoss(nn.Module):
    r"""Dice + CE + Skeleton Recall, the loss of the authors' ``nnUNetTrainerSkeletonRecall``
    (``DC_SkelREC_and_CE_loss``: nnU-Net's soft Dice without background, cross entropy and the skeleton recall,
    all of weight 1, smoothing 1e-5).

    .. math:: L = \lambda_{dice} L_{Dice} + \lambda_{ce} L_{CE} + \lambda_{srec} L_{SkelRec}

    :class:`fastloss.DiceCELoss` (softmax, no background, ``smooth_nr = smooth_dr = smooth``) plus
    :class:`SkeletonRecallLoss`, from **one** statistics pass: the skeleton rides on the labels' target as its
    second label map (``Target.aux_labels``), so the pass sums Dice's and CE's columns and the recall's
    ``aux_pg = Σ p·S``, ``aux_g = Σ S`` while it reads the logits once; autograd adds the parts' ``dL/d(stats)``
    and one backward kernel writes the one input gradient. The authors' Dice and recall terms are ``-dice`` and
    ``-recall``; these are ``1 - dice`` and ``1 - recall``, so the value is theirs + ``lambda_dice + lambda_srec``
    and the gradient theirs.

    Args:
        batch: nnU-Net's ``batch_dice`` for the Dice and recall parts.
        smooth: the Dice and recall smoothing (1e-5, as the trainer).
        lambda_dice, lambda_ce, lambda_srec: the parts' weights (1, 1, 1).
        ignore_index: excluded from all three parts (the authors' ``ignore_label``).
        tube_dilations: as :class:`SkeletonRecallLoss`.

    Example:
        >>> x = torch.randn(2, 3, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16, 16))
        >>> DiceCESkeletonRecallLoss()(x, y).backward()
    """

    def __init__(
        self,
        batch: bool = False,
        smooth: float = 1e-5,
        lambda_dice: float = 1.0,
        lambda_ce: float = 1.0,
        lambda_srec: float = 1.0,
        ignore_index: Optional[int] = None,
        tube_dilations: int = 2,
    ) -> None:
        super().__init__()
        self.dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=smooth,
                                  smooth_dr=smooth, batch=batch, lambda_dice=lambda_dice, lambda_ce=lambda_ce,
                                  ignore_index=ignore_index)
        self.skeleton_recall = SkeletonRecallLoss(smooth=smooth, batch=batch, ignore_index=ignore_index,
                                                  tube_dilations=tube_dilations)
        self.lambda_srec = check_nonneg(lambda_srec, "lambda_srec")

    # One pass for all three parts (True), or the parts on their own (False: DiceCE's pass plus, on CPU tensors,
    # the recall from the tube voxels' gathered logits, elsewhere a second pass). Measured on the 2-core CPU
    # (benchmarks/bench_auxpass.py: 2x3x96^3 organ-like labels, 2 threads, forward+backward, load 1.0): DiceCE alone
    # 10.5 ms, the parts 22.6 ms (the sparse recall's gradient is a second full-size tensor added to DiceCE's), one
    # pass 13.5 ms (the aux columns: +1.4 ms forward, +1.0 ms backward in the fused kernels, most of it reading the
    # int64 skeleton); skeleton computed inside: 37.2 ms vs 27.6 ms. One pass is faster on the CPU too, so it
    # serves every device (on the GPU the parts would read the logits twice).
    _one_pass = True

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, skeleton: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        """As :class:`SkeletonRecallLoss` (``skeleton=`` the tubed skeleton, or None to compute it)."""
        srec_loss = self.skeleton_recall
        if not self._one_pass:
            srec = srec_loss(input, target, skeleton)
            return self.dice_ce(input, target) + self.lambda_srec * srec
        check_logits(input)
        if input.shape[1] < 2:
            raise ValueError(f"SkeletonRecallLoss needs at least 2 channels (softmax, no background), got C={input.shape[1]}")
        labels = _label_map(input, target)
        skel = srec_loss.skeleton_target(labels) if skeleton is None else _label_map(input, skeleton, "skeleton")
        # the labels' range is checked once for the three parts (one host sync); no check (and no ContextVar,
        # which dynamo cannot set) while torch.compile traces
        with contextlib.nullcontext() if _is_compiling() else labels_checked_once():
            # the labels' target with the skeleton as its aux labels (checked here: [0, C) or ignore_index, before
            # any kernel); ignored voxels of the labels count in no recall sum (the pass's mask), as in the parts
            tgt = prepare_target(input, labels, ignore_index=srec_loss.ignore_index)
            if skeleton is None:  # the tubed skeleton carries the labels' own (checked) values: no second check
                tgt = tgt.with_aux(skel.reshape(skel.shape[0], -1))
            else:
                tgt = attach_aux_labels(input, tgt, skel, name="skeleton")
            with shared_statistics(("pg", "p", "g", "ce", "count", "aux_pg", "aux_g"), aux_labels=tgt.aux_labels):
                dice_ce = self.dice_ce(input, target)  # the pass: Dice/CE + aux columns; the fused formula on its slice
                spec = StatsSpec(srec_loss.activation, ("aux_pg", "aux_g"))
                stats = srec_loss.reduce_stats(class_stats(input, tgt, spec))  # the same pass's aux columns
        recall = (stats[..., 0] + srec_loss.smooth) / (stats[..., 1] + srec_loss.smooth).clamp_min(1e-8)
        return dice_ce + self.lambda_srec * reduce_loss(1.0 - recall, srec_loss.reduction, input.ndim - 2)


def boundary_counts(labels: torch.Tensor, num_classes: int, spatial_dims: int,
                    ignore_index: Optional[int] = None) -> torch.Tensor:
    """``(B, num_classes)`` numbers of boundary voxels of each class: voxels of the class with a face neighbour
    of another label or on the image edge (Sun et al.'s count: the cross-kernel convolution of the class mask,
    times the mask, below its maximum 2·spatial_dims + 1). Ignored voxels count in no class (as a neighbour they
    are another label)."""
    B = labels.shape[0]
    inner = torch.ones_like(labels, dtype=torch.bool)
    for d in range(labels.ndim - spatial_dims, labels.ndim):
        n = labels.shape[d]
        if n == 1:
            inner.zero_()
            break
        same = labels.narrow(d, 1, n - 1) == labels.narrow(d, 0, n - 1)
        inner.narrow(d, 1, n - 1).logical_and_(same)
        inner.narrow(d, 0, n - 1).logical_and_(same)
        inner.select(d, 0).zero_()
        inner.select(d, n - 1).zero_()
    lab = labels.reshape(B, -1).long()
    edge = ~inner.reshape(B, -1) & (lab >= 0) & (lab < num_classes)
    if ignore_index is not None:
        edge &= lab != ignore_index
    idx = torch.where(edge, lab, torch.zeros_like(lab))
    return torch.zeros(B, num_classes, dtype=torch.float64, device=labels.device).scatter_add_(
        1, idx, edge.to(torch.float64))


class BoundaryDoULoss(LossBase):
    r"""Boundary Difference over Union loss (Sun et al., "Boundary Difference Over Union Loss For Medical Image
    Segmentation", MICCAI 2023), 2D and 3D, multi-class.

    Per class ``c`` (sums over the batch and the voxels; per sample with ``batch=False``):

    .. math::
        L_c = \frac{\sum p^2 + \sum g - 2 \sum pg + s}{\sum p^2 + \sum g - (1 + \alpha_c) \sum pg + s},\quad
        \alpha_c = \min\Big(2 \big(1 - \frac{C_c + s}{S_c + s}\big) - 1,\ 0.8\Big)

    ``C_c`` the number of boundary voxels of class ``c`` in the target (a voxel of the class with a face neighbour
    outside it or beyond the image edge), ``S_c`` its number of voxels, ``s = 1e-5``; ``L`` the mean of ``L_c``
    over the classes (the background included, as the authors). Their code loops over classes and batch, 2D only;
    here one statistics pass (``Σ p²``, ``Σ g``, ``Σ pg``) and one integer pass over the labels.

    Args:
        softmax: apply the softmax (default True, as the authors).
        include_background: keep class 0 (default True, as the authors).
        batch: sum over the batch before the formula (default True: the authors' sums run over the batch).
        alpha_max: the cap of alpha (0.8, the paper's recommendation); None for no cap.
        smooth: ``s`` (1e-5).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` over the per-class (per-(batch, class)) values.
        ignore_index: voxels with this label count nowhere.

    Raises:
        ValueError / TypeError: bad input (as the other losses), integer labels required.
    """

    def __init__(
        self,
        softmax: bool = True,
        include_background: bool = True,
        batch: bool = True,
        alpha_max: Optional[float] = 0.8,
        smooth: float = 1e-5,
        reduction: str = "mean",
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(include_background=include_background, softmax=softmax, reduction=reduction, batch=batch,
                         ignore_index=ignore_index)
        self.alpha_max = None if alpha_max is None else float(alpha_max)
        self.smooth = check_nonneg(smooth, "smooth")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` logits ``(B, C, *spatial)``; ``target`` integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)``."""
        check_logits(input)
        labels = _label_map(input, target)
        stats, prep = self.class_stats(input, labels.unsqueeze(1), ("pp", "g", "pg"))
        C = input.shape[1]
        counts = boundary_counts(labels, C, input.ndim - 2, self.ignore_index).to(stats.dtype)
        edge = self.reduce_stats(counts.unsqueeze(-1))[..., 0]  # C_c
        size = stats[..., 1]  # S_c: the class's counted voxels (Σ g)
        s = self.smooth
        alpha = 2.0 * (1.0 - (edge + s) / (size + s)) - 1.0
        if self.alpha_max is not None:
            alpha = alpha.clamp_max(self.alpha_max)
        pp, g, pg = stats[..., 0], stats[..., 1], stats[..., 2]
        f = (pp + g - 2.0 * pg + s) / (pp + g - (1.0 + alpha) * pg + s)
        return reduce_loss(f, self.reduction, prep.spatial_ndim)

    def extra_repr(self) -> str:
        return f"batch={self.batch}, alpha_max={self.alpha_max}, include_background={self.include_background}"


def _cb_weights(mask: torch.Tensor, skel: torch.Tensor, value: torch.Tensor, skel_value: torch.Tensor, dim: int):
    """Shi et al.'s ``get_weights``: from a binary mask and skeleton ``(B, *spatial)`` (float 0/1) the distance map
    of the mask normalised by the largest skeleton radius of its sample (at least 1, distances clipped to it), the
    normalised skeleton radii and the inverse radius weights of the skeleton voxels (``1/r`` in 2D, ``1/r²`` in 3D,
    smoothed by 1e-7); returned times ``value`` (the mask or the probabilities) and ``skel_value`` (the skeleton or
    the soft skeleton). All on the device, no host sync (the per-sample maximum is an ``amax``)."""
    eps = 1e-7
    B = mask.shape[0]
    d = edt(mask.to(torch.uint8), spatial_dims=dim)  # float32, as the authors' (MONAI's EDT, .float())
    mask, skel = mask.to(d.dtype), skel.to(d.dtype)
    # a sample with no background: the EDT is inf there (scipy's answer is undefined); its radii are clipped below
    d = torch.where(mask > 0, d, torch.zeros((), dtype=d.dtype, device=d.device))
    radius = torch.where(skel > 0, d, torch.zeros((), dtype=d.dtype, device=d.device))
    r_max = radius.reshape(B, -1).amax(dim=1).clamp_min(1.0).reshape((B,) + (1,) * dim)
    r_max = torch.where(torch.isfinite(r_max), r_max, torch.ones_like(r_max))
    dist_norm = torch.minimum(d, r_max) / r_max
    radius_norm = torch.minimum(radius, r_max) / r_max
    inv = (1 + eps) / ((radius_norm if dim == 2 else radius_norm**2) + eps)
    inv = torch.where(skel > 0, inv, torch.zeros((), dtype=inv.dtype, device=inv.device))
    dt = value.dtype
    return dist_norm.to(dt) * value, radius_norm.to(dt) * value, inv.to(dt) * skel_value


def _cb_combine(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """``a·c`` where ``a != 0`` and ``b == 0``, else ``b·c`` (the authors' ``combine_tensors``)."""
    return torch.where((a != 0) & (b == 0), a * c, b * c)


class CbDiceLoss(nn.Module):
    r"""Centerline boundary Dice loss (Shi et al., "Centerline Boundary Dice Loss for Vascular Segmentation",
    MICCAI 2024), the authors' ``SoftcbDiceLoss`` with their morphological (clDice) soft skeleton.

    The foreground probability ``p`` is the softmax of (background logit, largest foreground logit); the target
    ``y`` the labels' foreground. Soft skeletons ``S_p``, ``S_y`` (:func:`fastloss.ops.soft_skeleton.soft_skeleton`,
    MONAI's/clDice's iteration, ``iter_`` steps), the EDT of ``y`` and of ``p > 0.5`` (:func:`fastloss.edt`, per
    sample), radii normalised per sample by the largest skeleton radius; then the radius-weighted topology
    precision and sensitivity and their harmonic mean:

    .. math:: L = 1 - rac{2\,T_{prec} T_{sens}}{T_{prec} + T_{sens}}

    (theirs ``-2 T_prec T_sens / (...)``: the same gradient). Sums over the whole batch, as the authors'. No host
    sync; batched; 2D and 3D.

    Args:
        iter_: soft-skeleton iterations (10, the authors' default).
        smooth: the smoothing of both ratios (1.0).

    Raises:
        ValueError / TypeError: fewer than 2 channels, non-integer labels, shapes that do not match.
    """

    def __init__(self, iter_: int = 10, smooth: float = 1.0) -> None:
        super().__init__()
        if isinstance(iter_, bool) or not isinstance(iter_, numbers.Integral) or iter_ < 0:
            raise ValueError(f"iter_ must be an int >= 0, got {iter_!r}")
        self.iter_ = int(iter_)
        self.smooth = check_nonneg(smooth, "smooth")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` logits ``(B, C, *spatial)`` (2 or 3 spatial dims); ``target`` integer labels ``(B, 1, *spatial)``
        or ``(B, *spatial)``."""
        check_logits(input)
        if input.shape[1] < 2:
            raise ValueError(f"CbDiceLoss needs at least 2 channels (background and foreground), got C={input.shape[1]}")
        dim = input.ndim - 2
        if dim not in (2, 3):
            raise ValueError(f"CbDiceLoss needs 2 or 3 spatial dims, got {dim}")
        labels = _label_map(input, target)
        dt = torch.float64 if input.dtype == torch.float64 else torch.float32
        x = input.to(dt)
        two = torch.stack([x[:, 0], x[:, 1:].amax(dim=1)], dim=1)
        p = torch.softmax(two, dim=1)[:, 1]
        y = (labels > 0).to(dt)
        skel_p = soft_skeleton(p.unsqueeze(1), self.iter_).squeeze(1)
        with torch.no_grad():
            skel_y = soft_skeleton(y.unsqueeze(1), self.iter_).squeeze(1)
        q_vl, q_slvl, q_sl = _cb_weights(y, (skel_y == 1).to(dt), y, skel_y, dim)
        q_vp, q_spvp, q_sp = _cb_weights((p > 0.5).to(dt), (skel_p > 0.5).to(dt), p, skel_p, dim)
        s = self.smooth
        tprec = ((q_sp * q_vl).sum() + s) / (_cb_combine(q_spvp, q_slvl, q_sp).sum() + s)
        tsens = ((q_sl * q_vp).sum() + s) / (_cb_combine(q_slvl, q_spvp, q_sl).sum() + s)
        return 1.0 - 2.0 * (tprec * tsens) / (tprec + tsens)

    def extra_repr(self) -> str:
        return f"iter_={self.iter_}, smooth={self.smooth}"


skeleton_recall_loss = functional_form(SkeletonRecallLoss, "skeleton_recall_loss", ("skeleton",))
dice_ce_skeleton_recall_loss = functional_form(DiceCESkeletonRecallLoss, "dice_ce_skeleton_recall_loss", ("skeleton",))
boundary_dou_loss = functional_form(BoundaryDoULoss, "boundary_dou_loss")
cb_dice_loss = functional_form(CbDiceLoss, "cb_dice_loss")
