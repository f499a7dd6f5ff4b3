"""Distribution-based losses (Ma et al. 2021, Section 2.1): CE, WCE, TopK, Focal, distance-penalised CE.

All take logits ``(B, C, *spatial)`` and integer labels ``(B, 1, *spatial)``/``(B, *spatial)`` or one-hot /
soft targets ``(B, C, *spatial)``. ``mean``/``sum`` reductions are formulas of the per-(batch, class) sums of
:func:`fastloss.ops.stats.class_stats` (columns ``ce``, ``g``, ``count``, ``focal``, ``map_ce``), so the fused
kernels serve them; ``reduction="none"`` returns per-voxel maps computed elementwise. TopK selects voxels
(:mod:`fastloss.ops.topk`), so it works on a per-voxel CE vector instead.
"""

from __future__ import annotations

import math
import warnings
from typing import Optional, Sequence, Union

import torch
from torch import nn

from .._validation import (
    Target,
    _check_label_range,
    _is_compiling,
    check_class_weight,
    check_reduction,
    label_checks_enabled,
)
from ..ops.stats import StatsSpec, class_stats, compute_dtype, voxel_terms
from ..ops.topk import topk_ce_mean, topk_count, topk_select_mask, topk_sum, topk_traced, voxel_ce_kernel
from ._common import (
    check_bool,
    check_ignore_index,
    check_region_activation,
    check_nonneg,
    expand_class_weight,
    flatten_spatial,
    functional_form,
    prepare_inputs,
)
from . import _fused

__all__ = [
    "CrossEntropyLoss",
    "WeightedCrossEntropyLoss",
    "TopKLoss",
    "FocalLoss",
    "DistancePenalizedCELoss",
    "class_weights_from_labels",
    "penalty_map_from_labels",
    "cross_entropy_loss",
    "weighted_cross_entropy_loss",
    "topk_loss",
    "focal_loss",
    "distance_penalized_ce_loss",
]

WeightLike = Optional[Union[Sequence[float], float, int, torch.Tensor]]
_F32_EPS = torch.finfo(torch.float32).eps


# ------------------------------------------------------------------------------------------------ helpers
def _weight_buffer(weight: WeightLike) -> Optional[torch.Tensor]:
    """Validate a per-class weight (number, sequence or 1D tensor, finite, ``>= 0``) and copy it."""
    if weight is None:
        return None
    check_class_weight(weight)
    w = torch.as_tensor(weight).detach().clone()
    if not w.is_floating_point():
        w = w.to(torch.get_default_dtype())
    return w


def _class_weight_vector(weight: Optional[torch.Tensor], C: int, like: torch.Tensor) -> Optional[torch.Tensor]:
    """``weight`` as a ``(C,)`` tensor in ``like``'s dtype/device (a scalar is repeated), or None."""
    if weight is None:
        return None
    return expand_class_weight(weight, C).to(device=like.device, dtype=like.dtype)


def _safe_div(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den``, and 0 where ``den == 0`` (there ``num`` is 0 too: nothing counted). Finite gradient."""
    return num / torch.where(den > 0, den, torch.ones_like(den))


def _voxel_ce(x: torch.Tensor, target: Target, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Per-voxel softmax CE ``(B, N)`` from logits ``x`` ``(B, C, N)``: ``w_y·(−log p_y)`` for labels,
    ``−Σ_c w_c g_c log p_c`` for one-hot/soft targets; 0 at ignored voxels."""
    dt = compute_dtype(x)
    logp = torch.log_softmax(x.to(dt), dim=1)
    C = x.shape[1]
    w = _class_weight_vector(weight, C, logp)
    if target.raw_labels is not None:
        lab = target.labels
        in_range = (lab >= 0) & (lab < C)
        safe = torch.where(in_range, lab, torch.zeros_like(lab))
        ce = -logp.gather(1, safe.unsqueeze(1)).squeeze(1)
        if w is not None:
            ce = ce * w[safe]
        ce = ce * in_range.to(dt)
        if target.mask is not None:
            ce = ce * target.mask.to(dt)
    else:
        g = target.dense(dt)  # already multiplied by the mask
        wl = logp if w is None else logp * w.view(1, C, 1)
        ce = -(g * wl).sum(dim=1)
    return ce


def _voxel_ce_any(input: torch.Tensor, target: Target, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """:func:`_voxel_ce`, served by a fused kernel for unweighted integer labels where one serves the input
    (:func:`fastloss.ops.topk.voxel_ce_kernel`: one read of the logits, no ``(B, C, N)`` temporaries)."""
    if target.raw_labels is not None and weight is None:
        ce = voxel_ce_kernel(input, target)
        if ce is not None:
            return ce
    return _voxel_ce(flatten_spatial(input), target, weight)


def _count_per_batch(stats: torch.Tensor, col: int) -> torch.Tensor:
    """The ``count`` column is the same in every class: take class 0, ``(B,)``."""
    return stats[:, 0, col]


# -------------------------------------------------------------------------------------------- cross entropy
class CrossEntropyLoss(nn.Module):
    r"""Cross entropy on logits (Eq. 1), ``torch.nn.CrossEntropyLoss`` semantics.

    .. math:: L_{CE} = -\frac{1}{\sum_i w_{y_i}} \sum_i w_{y_i} \log s_i^{y_i}, \qquad s = \mathrm{softmax}(x)

    (Eq. 1 when ``weight`` is None: the denominator is the number of counted voxels ``N``.)

    - Integer labels: as ``torch.nn.functional.cross_entropy`` with class indices; ``mean`` divides by
      ``Σ_i w_{y_i}`` over the counted voxels (torch's weighted mean).
    - One-hot / soft targets ``(B, C, *spatial)``: as torch with class probabilities, per voxel
      ``−Σ_c w_c g_c log s_c``; ``mean`` divides by the number of counted voxels (not by the weights,
      exactly as torch; so with a ``weight`` the mean of a one-hot target differs from that of the same
      labels, as in torch and in MONAI's ``DiceCELoss``).
    - ``sigmoid=True``: binary cross entropy with logits per channel (``BCEWithLogitsLoss``), the target
      one-hot (labels are expanded; with one channel, labels 0/1); ``weight`` rescales each channel
      (torch's ``weight`` broadcast over channels); ``mean`` divides by ``C ×`` the counted voxels.

    ``ignore_index`` defaults to None here (torch uses −100), so no label is ever silently dropped; set it
    to mask a label (or, for one-hot targets, MONAI's convention: a class index masks that class's
    voxels, any other value masks all-zero voxels). When nothing is counted (every voxel ignored, or
    every counted voxel of a class with weight 0) ``mean`` returns 0 instead of torch's NaN.

    Args:
        weight: per-class weights (number, sequence or 1D tensor of ``C`` values ``>= 0``), or None.
        ignore_index: label to ignore, or None (default).
        reduction: ``"mean"`` (default), ``"sum"``, or ``"none"``: the per-voxel loss ``(B, *spatial)``
            (``(B, C, *spatial)`` with ``sigmoid=True``), 0 at ignored voxels.
        sigmoid: binary CE per channel instead of the softmax CE.
        to_onehot_y: MONAI compatibility; integer labels are accepted either way, float labels need it.
        regions: with ``sigmoid=True``, a sequence of label sets, one per channel (region-based training;
            :class:`~fastloss.losses._common.LossBase`): the target is integer labels, never expanded.

    Raises:
        TypeError: non-bool flags, non-int ``ignore_index``, float labels without ``to_onehot_y``.
        ValueError: bad ``reduction``, negative / non-finite / non-1D ``weight``; in ``forward`` a weight
            of the wrong length, labels outside ``[0, C)`` that are not ``ignore_index``, shape mismatch,
            wrong ndim, empty input.

    Example:
        >>> import torch
        >>> from fastloss.losses.distribution import CrossEntropyLoss
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> CrossEntropyLoss(weight=[0.2, 1.0, 2.0])(logits, labels).backward()
    """

    def __init__(
        self,
        weight: WeightLike = None,
        ignore_index: Optional[int] = None,
        reduction: str = "mean",
        sigmoid: bool = False,
        to_onehot_y: bool = False,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__()
        self.register_buffer("class_weight", _weight_buffer(weight))
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        self.sigmoid = check_bool(sigmoid, "sigmoid")
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")
        self.regions = check_region_activation(regions, "sigmoid" if self.sigmoid else "softmax")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        fused = _fused.cross_entropy(self, input, target)
        if fused is not None:
            return fused
        prep = prepare_inputs(
            input,
            target,
            activation="none",
            to_onehot_y=self.to_onehot_y,
            ignore_index=self.ignore_index,
            allow_flat=True,  # (B, C) logits with (B,) labels or (B, C) probabilities, as torch's CE
            regions=self.regions,
        )
        weight = self._weight_for(prep.target, input)
        return _cross_entropy(input, prep.target, weight, self.reduction, self.sigmoid)

    def _weight_for(self, target: Target, input: torch.Tensor) -> Optional[torch.Tensor]:
        if self.class_weight is not None:
            expand_class_weight(self.class_weight, input.shape[1])  # length check before any compute
        return self.class_weight


def _cross_entropy(
    input: torch.Tensor, target: Target, weight: Optional[torch.Tensor], reduction: str, sigmoid: bool
) -> torch.Tensor:
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    if not spatial:
        input = input.unsqueeze(-1)  # (B, C): one voxel per item
    dt = compute_dtype(input)
    if reduction == "none":
        x = flatten_spatial(input)
        if sigmoid:
            ce = voxel_terms(x, target, StatsSpec("sigmoid", ("ce",)))["ce"]  # (B, C, N), masked
            w = _class_weight_vector(weight, C, ce)
            if w is not None:
                ce = ce * w.view(1, C, 1)
            return ce.reshape((B, C) + spatial)
        return _voxel_ce(x, target, weight).reshape((B,) + spatial)

    # mean/sum: formulas of the per-(batch, class) sums; ce_c = Σ_i −g_ic log p_ic, g_c = Σ_i g_ic.
    cols = ("ce", "g", "count")
    stats = class_stats(input, target, StatsSpec("sigmoid" if sigmoid else "softmax", cols))
    ce_c = stats[..., 0].sum(dim=0)  # (C,)
    w = _class_weight_vector(weight, C, ce_c)
    num = ce_c.sum() if w is None else (w * ce_c).sum()
    if reduction == "sum":
        return num
    count = _count_per_batch(stats, 2).sum()
    if sigmoid:
        den = count * C  # BCEWithLogits: mean over every (voxel, channel) element
    elif w is not None and target.raw_labels is not None:
        den = (w * stats[..., 1].sum(dim=0)).sum()  # torch's weighted mean: Σ_i w_{y_i}
    else:
        den = count
    return _safe_div(num, den)


cross_entropy_loss = functional_form(CrossEntropyLoss, "cross_entropy_loss")


# ----------------------------------------------------------------------------------- weighted cross entropy
def _class_counts(target: Target) -> torch.Tensor:
    """Counted voxels per class ``n_c`` ``(C,)`` (float64) of a normalised target."""
    C = target.num_classes
    if target.raw_labels is not None:
        lab = target.labels
        ok = (lab >= 0) & (lab < C)
        if target.mask is not None:
            ok &= target.mask > 0
        binned = torch.where(ok, lab, torch.full_like(lab, C))  # out-of-range / ignored -> extra bin C
        return torch.bincount(binned.reshape(-1), minlength=C + 1)[:C].to(torch.float64)
    return target.dense(torch.float64).sum(dim=(0, 2))


def _weights_from_counts(counts: torch.Tensor) -> torch.Tensor:
    """``w_c = N / (C · n_c)`` with ``N = Σ_c n_c``; 0 for an absent class (``n_c = 0``)."""
    C = counts.numel()
    total = counts.sum()
    return torch.where(counts > 0, total / (C * counts.clamp_min(1e-300)), torch.zeros_like(counts))


def class_weights_from_labels(
    labels: torch.Tensor, num_classes: int, ignore_index: Optional[int] = None
) -> torch.Tensor:
    r"""Reciprocal class-frequency weights of a batch (the WCE weights of Eq. 2).

    .. math:: w_c = \frac{N}{C\, n_c} \;(n_c > 0), \qquad w_c = 0 \;(n_c = 0)

    with ``n_c`` the number of counted voxels of class ``c`` and ``N = Σ_c n_c``. This is the reciprocal
    frequency ``1/f_c`` (``f_c = n_c/N``) divided by ``C`` ("balanced" weights: every present class gets
    the same total weight ``w_c n_c = N/C``). With every class present, ``Σ_i w_{y_i} = N``, so torch's
    weighted mean (divide by ``Σ_i w_{y_i}``) equals the paper's ``1/N`` normalisation of Eq. 2 exactly.
    An absent class gets weight 0 rather than ``inf``: it has no voxel, so its weight multiplies nothing
    and only has to be finite.

    Args:
        labels: integer labels ``(B, 1, *spatial)`` / ``(B, *spatial)`` (any integer or bool tensor is
            read as labels), or a floating one-hot / soft target ``(B, num_classes, *spatial)``.
        num_classes: ``C >= 2``.
        ignore_index: label whose voxels are not counted (for one-hot targets: a class index excludes the
            voxels of that class; any other value is a no-op since all-zero voxels count for nothing).

    Returns:
        A float64 tensor ``(num_classes,)`` on ``labels``' device, without gradient.

    Raises:
        TypeError: ``labels`` not a tensor; ``num_classes``/``ignore_index`` not ints.
        ValueError: ``num_classes < 2``; labels outside ``[0, C)`` that are not ``ignore_index``; a
            floating target without ``num_classes`` channels on dim 1; an empty tensor.

    Example:
        >>> import torch
        >>> from fastloss.losses.distribution import class_weights_from_labels
        >>> class_weights_from_labels(torch.tensor([[0, 0, 0, 1]]), 2)
        tensor([0.6667, 2.0000], dtype=torch.float64)
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int):
        raise TypeError(f"num_classes must be an int, got {type(num_classes).__name__}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    ignore_index = check_ignore_index(ignore_index)
    if labels.numel() == 0:
        raise ValueError(f"labels must not be empty, got shape {tuple(labels.shape)}")
    with torch.no_grad():
        if labels.is_floating_point():
            if labels.ndim < 2 or labels.shape[1] != num_classes:
                raise ValueError(
                    f"a floating target must be one-hot/soft with {num_classes} channels on dim 1, "
                    f"got shape {tuple(labels.shape)}"
                )
            g = labels.detach().to(torch.float64).reshape(labels.shape[0], num_classes, -1)
            if ignore_index is not None and 0 <= ignore_index < num_classes:
                g = g * (1.0 - g[:, ignore_index : ignore_index + 1])
            counts = g.sum(dim=(0, 2))
        else:
            lab = labels.detach().long().reshape(-1)
            if label_checks_enabled():
                _check_label_range(lab, num_classes, ignore_index, "labels")
            t = Target(lab.view(1, -1), None, None if ignore_index is None else (lab != ignore_index).view(1, -1),
                       num_classes, (lab.numel(),), ignore_index)
            counts = _class_counts(t)
        return _weights_from_counts(counts)


class WeightedCrossEntropyLoss(CrossEntropyLoss):
    r"""Weighted cross entropy (Eq. 2).

    .. math:: L_{WCE} = -\frac{1}{\sum_i w_{y_i}} \sum_i w_{y_i} \log s_i^{y_i}

    With ``weight=None`` (default) the weights are the reciprocal class frequencies of the current batch,
    :func:`class_weights_from_labels` (``w_c = N/(C n_c)``, 0 for absent classes; computed without
    gradient on every call). With every class present ``Σ_i w_{y_i} = N`` and this is Eq. 2 with its
    ``1/N`` exactly. Otherwise ``weight`` is used as given (then identical to
    :class:`CrossEntropyLoss` with that weight). Reductions, targets and ``ignore_index`` as
    :class:`CrossEntropyLoss` (softmax only). The paper's weights are the training set's reciprocal
    frequencies: ``WeightedCrossEntropyLoss(weight=fastloss.class_weights(train_labels, C))``.

    Args:
        weight: per-class weights, or None for batch reciprocal frequencies.
        ignore_index: label to ignore (not counted in the frequencies either), or None.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-voxel map ``(B, *spatial)``).
        to_onehot_y: MONAI compatibility (float labels need it).

    Raises:
        TypeError, ValueError: as :class:`CrossEntropyLoss`; with ``weight=None``, fewer than 2 channels.

    Example:
        >>> import torch
        >>> from fastloss.losses.distribution import WeightedCrossEntropyLoss
        >>> logits = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 16, 16))
        >>> WeightedCrossEntropyLoss()(logits, labels).backward()
    """

    def __init__(
        self,
        weight: WeightLike = None,
        ignore_index: Optional[int] = None,
        reduction: str = "mean",
        to_onehot_y: bool = False,
    ) -> None:
        super().__init__(weight=weight, ignore_index=ignore_index, reduction=reduction, sigmoid=False,
                         to_onehot_y=to_onehot_y)

    def _weight_for(self, target: Target, input: torch.Tensor) -> Optional[torch.Tensor]:
        if self.class_weight is not None:
            return super()._weight_for(target, input)
        if input.shape[1] < 2:
            raise ValueError(f"WeightedCrossEntropyLoss with batch frequencies needs C >= 2 channels, got {input.shape[1]}")
        with torch.no_grad():
            return _weights_from_counts(_class_counts(target))


weighted_cross_entropy_loss = functional_form(WeightedCrossEntropyLoss, "weighted_cross_entropy_loss")


# ------------------------------------------------------------------------------------------------- TopK
class TopKLoss(nn.Module):
    r"""TopK loss: cross entropy of the hardest voxels only (Eqs. 3 and 4).

    Percentage variant (``k``, default 10; Eq. 4, nnU-Net's ``TopKLoss``): the per-voxel CE
    ``ℓ_i = w_{y_i}·(−log s_i^{y_i})`` of the whole batch is flattened and the ``K = max(1, ⌊N·k/100⌋)``
    largest values are averaged (``int(N * k / 100)`` as nnU-Net computes it):

    .. math:: L_{TopK} = \frac{1}{K} \sum_{i \in \mathcal{K}} \ell_i

    Exactly ``K`` voxels are kept even when CE values tie. ``N`` counts the non-ignored voxels of the
    batch; ignored voxels have ``ℓ_i = 0`` and are never needed to fill ``K`` (``K <= N`` and ``ℓ >= 0``,
    so the selected sum is that over the counted voxels alone). Like nnU-Net the mean is over the ``K``
    selected voxels (Eq. 4's ``1/N`` read as the size of the selected set).

    Threshold variant (``t``; Eq. 3, Wu et al.): the mean CE over voxels whose probability of their own
    class is below ``t``:

    .. math:: L_{TopK-thr} = \frac{\sum_{i,c} 1\{s_i^c < t\}\, g_i^c\, (-\log s_i^c)}{\sum_{i,c} 1\{s_i^c < t\}\, g_i^c}

    (for soft targets ``g`` weights each term); 0 when no voxel qualifies, with a zero (finite) gradient.

    For one-hot / soft targets ``ℓ_i = −Σ_c w_c g_i^c log s_i^c``.

    Args:
        k: percentage in (0, 100] of the voxels kept. Default 10 when ``t`` is None.
        t: probability threshold in (0, 1]; exclusive with ``k``.
        weight: per-class weights applied to the per-voxel CE before selection (as nnU-Net's CE weight).
        ignore_index: label to ignore, or None.
        reduction: ``"mean"`` (default; the formulas above) or ``"sum"`` (the numerator), or ``"none"``:
            the per-voxel map ``(B, *spatial)`` of the selected voxels' CE, 0 elsewhere (its sum / ``K``
            is the mean).
        to_onehot_y: MONAI compatibility (float labels need it).

    Raises:
        TypeError: non-number ``k``/``t``, non-int ``ignore_index``, float labels.
        ValueError: ``k`` outside (0, 100], ``t`` outside (0, 1], both ``k`` and ``t`` given, bad
            ``reduction`` or ``weight``; in ``forward`` fewer than 2 channels and the target errors of
            :func:`fastloss._validation.prepare_target`.

    Example:
        >>> import torch
        >>> from fastloss.losses.distribution import TopKLoss
        >>> logits = torch.randn(2, 3, 8, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8, 8))
        >>> TopKLoss(k=10)(logits, labels).backward()
    """

    def __init__(
        self,
        k: Optional[float] = None,
        t: Optional[float] = None,
        weight: WeightLike = None,
        ignore_index: Optional[int] = None,
        reduction: str = "mean",
        to_onehot_y: bool = False,
    ) -> None:
        super().__init__()
        if k is not None and t is not None:
            raise ValueError(f"give either k (percentage) or t (threshold), not both; got k={k!r}, t={t!r}")
        if t is None:
            k = 10.0 if k is None else check_nonneg(k, "k")
            if not (0 < k <= 100):
                raise ValueError(f"k must be a percentage in (0, 100], got {k!r}")
        else:
            t = check_nonneg(t, "t")
            if not (0 < t <= 1):
                raise ValueError(f"t must be a probability threshold in (0, 1], got {t!r}")
        self.k = k
        self.t = t
        self.register_buffer("class_weight", _weight_buffer(weight))
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")

    def extra_repr(self) -> str:
        # the repr shows what selects the voxels: TopKLoss(k=10.0, ...) or TopKLoss(t=0.3, ...)
        sel = f"k={self.k}" if self.t is None else f"t={self.t}"
        parts = [sel, f"reduction={self.reduction!r}"]
        if self.ignore_index is not None:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.class_weight is not None:
            parts.append(f"weight={self.class_weight.tolist()}")
        return ", ".join(parts)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        prep = prepare_inputs(
            input, target, activation="none", to_onehot_y=self.to_onehot_y, ignore_index=self.ignore_index,
            multiclass="TopKLoss",
        )
        B, C = input.shape[:2]
        if self.class_weight is not None:
            expand_class_weight(self.class_weight, C)
        x = flatten_spatial(input)
        tgt = prep.target
        if self.t is not None:
            return self._threshold(x, tgt, input)
        ce = _voxel_ce_any(input, tgt, self.class_weight)  # (B, N), 0 at ignored voxels
        if getattr(self, "_ddp_sync", False):  # fastloss.distributed.sync_batch_statistics: k % of all ranks
            from ..ops.collectives import synced_topk

            out = synced_topk(ce, tgt.mask, self.k, self.reduction, self._ddp_group)
            return out.reshape((B,) + tuple(input.shape[2:])) if self.reduction == "none" else out
        if tgt.mask is None:
            n_valid = ce.numel()
        elif _is_compiling():
            # no host value while torch.compile traces: K stays a tensor (sort-based selection)
            out = topk_traced(ce, (tgt.mask > 0).sum(), self.k, self.reduction)
            return out.reshape((B,) + tuple(input.shape[2:])) if self.reduction == "none" else out
        else:
            n_valid = int((tgt.mask > 0).sum().item())  # K must be a Python int: one host sync
        K = topk_count(n_valid, self.k)
        if self.reduction == "none":
            sel = topk_select_mask(ce, K)
            return (ce * sel).reshape((B,) + tuple(input.shape[2:]))
        if self.reduction == "sum":
            return topk_sum(ce, K) if K > 0 else ce.sum() * 0.0
        return topk_ce_mean(ce, K)

    def _threshold(self, x: torch.Tensor, tgt: Target, input: torch.Tensor) -> torch.Tensor:
        if self.class_weight is None:
            fused = self._threshold_fused(tgt, input)
            if fused is not None:
                return fused
        dt = compute_dtype(x)
        logp = torch.log_softmax(x.to(dt), dim=1)
        g = tgt.dense(dt)  # masked
        # The indicator has no gradient (piecewise constant); ∂/∂logp of the numerator is −g·1{s<t}.
        sel = (logp.detach() < torch.log(torch.tensor(self.t, dtype=dt))).to(dt) * g
        w = _class_weight_vector(self.class_weight, x.shape[1], logp)
        wsel = sel if w is None else sel * w.view(1, -1, 1)
        unsel_inf = (wsel == 0) & (logp == float("-inf"))  # an unselected -inf logit: the limit 0, not 0·(−inf)
        per_voxel = -(wsel * torch.where(unsel_inf, torch.zeros((), dtype=logp.dtype, device=logp.device), logp))
        if self.reduction == "none":
            return per_voxel.sum(dim=1).reshape((x.shape[0],) + tuple(input.shape[2:]))
        num = per_voxel.sum()
        if self.reduction == "sum":
            return num
        return _safe_div(num, sel.sum())

    def _threshold_fused(self, tgt: Target, input: torch.Tensor) -> Optional[torch.Tensor]:
        """The threshold TopK on the per-voxel CE of a fused kernel (integer labels, no class weight), or None.

        ``p_y < t`` is ``ce = −log p_y > −log t``; the kept voxels' CE is summed (and divided by their number
        for ``mean``). The indicator is piecewise constant, so the gradient is the kernel CE's on the kept
        voxels: ``∂/∂x (Σ_i sel_i·ce_i) = Σ_i sel_i·∂ce_i/∂x``.
        """
        ce = voxel_ce_kernel(input, tgt)  # (B, N), 0 at ignored voxels
        if ce is None:
            return None
        sel = ce.detach() > -math.log(self.t)
        if tgt.mask is not None:
            sel = sel & (tgt.mask.reshape(sel.shape) > 0)
        sel = sel.to(ce.dtype)
        per_voxel = ce * sel
        if self.reduction == "none":
            return per_voxel.reshape((input.shape[0],) + tuple(input.shape[2:]))
        num = per_voxel.sum()
        if self.reduction == "sum":
            return num
        return _safe_div(num, sel.sum())


topk_loss = functional_form(TopKLoss, "topk_loss")


# ------------------------------------------------------------------------------------------------- Focal
class FocalLoss(nn.Module):
    r"""Focal loss (Eq. 5), with MONAI 1.6.1's ``FocalLoss`` signature, defaults and results.

    Softmax form (``use_softmax=True``): per voxel and class ``−α_c (1 − s_c)^γ g_c log s_c`` with ``s``
    the softmax (over the kept channels: MONAI drops channel 0 *before* the softmax when
    ``include_background=False``). Sigmoid form (default): per channel the binary focal term
    ``BCE(x, g) · (1 − p_t)^γ · α_t``. With ``gamma=0``, no ``alpha`` and the softmax this is Eq. 1.

    ``alpha`` (as MONAI): a number gives, with the softmax, ``1 − α`` to channel 0 and ``α`` to the others
    (ignored, with MONAI's warning, when ``include_background=False``), with the sigmoid
    ``α g + (1 − α)(1 − g)``; a sequence (one value per kept channel) multiplies class ``c`` by ``α_c``
    with the softmax, and only the voxels with ``g == 1`` with the sigmoid. ``weight`` then rescales each
    channel (a number, all channels).

    Reductions (as MONAI): ``"mean"`` is the mean over every element of the ``(B, C', *spatial)`` loss, or,
    with ``ignore_index``, its sum divided by the number of counted voxels (not times ``C'``: MONAI's
    convention); ``"sum"`` is the sum over batch and classes of the spatial mean (over counted voxels with
    ``ignore_index``); ``"none"`` returns the ``(B, C', *spatial)`` map. MONAI computes in float32 even
    for float64 input; this class keeps float64 (results agree to float32 precision).

    Args:
        include_background: if False, channel 0 is excluded (before the activation, as MONAI).
        to_onehot_y: MONAI compatibility: labels are one-hot encoded (accepted either way here).
        gamma: focusing exponent ``>= 0``. Default 2.
        alpha: None, a number in [0, 1], or a sequence of values in [0, 1], one per kept channel.
        weight: per-channel weight (number or sequence, ``>= 0``), or None.
        reduction: ``"mean"`` (default), ``"sum"`` or ``"none"``.
        use_softmax: softmax focal loss instead of the sigmoid one.
        ignore_index: label (or one-hot class index / sentinel) whose voxels are excluded.
        mean_over: what ``"mean"`` divides by: ``"elements"`` (MONAI, above) or ``"voxels"``, the number
            of counted voxels, which is Eq. (5)'s ``1/N`` (the paper's and SegLoss's normalisation: the
            per-class terms are summed per voxel, then averaged over voxels). An addition to MONAI's API.
        regions: with the sigmoid (``use_softmax=False``), a sequence of label sets, one per channel
            (region-based training, :class:`~fastloss.losses._common.LossBase`). An addition to MONAI's API.

    Raises:
        TypeError: non-bool flags, non-number ``gamma``/``alpha``, non-int ``ignore_index``.
        ValueError: ``gamma < 0``, ``alpha`` outside [0, 1], negative ``weight``, bad ``reduction``; in
            ``forward``: ``alpha``/``weight`` length not the number of kept channels, a per-class weight
            with one channel, and the input/target errors of :func:`fastloss._validation.prepare_target`.

    Example:
        >>> import torch
        >>> from fastloss.losses.distribution import FocalLoss
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8))
        >>> FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0)(logits, labels).backward()
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        gamma: float = 2.0,
        alpha: Optional[Union[float, Sequence[float]]] = None,
        weight: WeightLike = None,
        reduction: str = "mean",
        use_softmax: bool = False,
        ignore_index: Optional[int] = None,
        mean_over: str = "elements",
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__()
        self.include_background = check_bool(include_background, "include_background")
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")
        self.gamma = check_nonneg(gamma, "gamma")
        if mean_over not in ("elements", "voxels"):
            raise ValueError(f"mean_over must be 'elements' (MONAI) or 'voxels' (Eq. 5), got {mean_over!r}")
        self.mean_over = mean_over
        self._alpha_is_number = False
        if alpha is None:
            self.alpha: Optional[Union[float, torch.Tensor]] = None
        elif isinstance(alpha, (int, float)) and not isinstance(alpha, bool):
            self.alpha = check_nonneg(alpha, "alpha", upper=1.0)
            self._alpha_is_number = True
        else:
            try:
                a = torch.as_tensor(alpha, dtype=torch.float64).detach().clone()
            except (TypeError, ValueError, RuntimeError):
                raise TypeError(f"alpha must be None, a number or a sequence of numbers, got {type(alpha).__name__}")
            if a.ndim > 1 or a.numel() == 0:
                raise ValueError(f"alpha must be a number or a non-empty 1D sequence, got shape {tuple(a.shape)}")
            if not torch.isfinite(a).all() or (a < 0).any() or (a > 1).any():
                raise ValueError(f"alpha values must lie in [0, 1], got {a.tolist()}")
            self.alpha = a  # a 0-d tensor behaves as MONAI's tensor alpha (never ignored)
        self.register_buffer("class_weight", _weight_buffer(weight))
        self.reduction = check_reduction(reduction)
        self.use_softmax = check_bool(use_softmax, "use_softmax")
        self.ignore_index = check_ignore_index(ignore_index)
        self.regions = check_region_activation(regions, "softmax" if self.use_softmax else "sigmoid",
                                               self.include_background)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(B, C, *spatial)``; ``target``: labels or one-hot/soft ``(B, C, *spatial)``."""
        fused = _fused.focal(self, input, target)
        if fused is not None:
            return fused
        prep = prepare_inputs(
            input,
            target,
            activation="none",
            to_onehot_y=self.to_onehot_y,
            ignore_index=self.ignore_index,
            allow_flat=True,  # (B, C) as MONAI: one voxel per item, "sum" as MONAI's below
            regions=self.regions,
        )
        tgt = prep.target
        B, C = input.shape[:2]
        spatial = tuple(input.shape[2:])
        N = tgt.raw_labels.shape[1] if tgt.raw_labels is not None else tgt.soft.shape[2]
        dt = compute_dtype(input)
        x = flatten_spatial(input)
        drop_background = not self.include_background and C > 1
        if not self.include_background and C == 1:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=2)
        Ck = C - 1 if drop_background else C

        # alpha: scalar goes into the statistics spec; a sequence is a per-class factor (softmax) or a
        # factor on the positive voxels (sigmoid).
        alpha_scalar: Optional[float] = None
        alpha_vec: Optional[torch.Tensor] = None
        if self.alpha is not None:
            if self._alpha_is_number and self.use_softmax and not self.include_background:
                warnings.warn("`include_background=False`, scalar `alpha` ignored when using softmax.", stacklevel=2)
            elif isinstance(self.alpha, torch.Tensor) and self.alpha.ndim == 1:
                if self.alpha.shape[0] != Ck:
                    raise ValueError(
                        f"The length of alpha ({self.alpha.shape[0]}) must match the number of classes ({Ck})."
                    )
                alpha_vec = self.alpha.to(device=x.device, dtype=dt)
            else:
                alpha_scalar = float(self.alpha)
        cw = self._class_weight(Ck, x)
        act = "softmax" if self.use_softmax else "sigmoid"
        spec = StatsSpec(act, ("focal",), gamma=self.gamma, alpha=alpha_scalar)

        elementwise = self.reduction == "none" or (
            alpha_vec is not None and not self.use_softmax and tgt.soft is not None
        )
        # Without the background, MONAI slices input and target before the activation. The sigmoid term
        # is per element, so with labels the sums of every channel are taken and channel 0 dropped from
        # them instead: no one-hot target, and the same logits and labels as a Dice part (DiceFocal's
        # shared pass). The softmax of the kept channels is another softmax: sliced as MONAI.
        first = 0
        if drop_background:
            if elementwise or self.use_softmax or tgt.raw_labels is None:
                x = x[:, 1:]
                tgt = Target(None, tgt.dense(dt)[:, 1:], tgt.mask, C - 1, spatial, tgt.ignore_index)
            else:
                first = 1
        if elementwise:
            f = voxel_terms(x, tgt, spec)["focal"]  # (B, Ck, N), masked
            if alpha_vec is not None:
                if self.use_softmax:
                    f = f * alpha_vec.view(1, Ck, 1)
                else:
                    g = tgt.dense(dt)
                    f = f * torch.where(g == 1, alpha_vec.view(1, Ck, 1), torch.ones_like(g))
            if cw is not None:
                f = f * cw.view(1, -1, 1)
            if self.reduction == "none":
                return f.reshape((B, Ck) + spatial)
            sums = f.sum(dim=2)  # (B, Ck)
        else:
            if alpha_vec is not None and not self.use_softmax:
                # labels: g ∈ {0, 1}, so Σ [g=1]·α_c·f + [g≠1]·f = α_c·S(α=1) + S(α=0), the sigmoid
                # scalar-alpha factor α g + (1−α)(1−g) giving g·f at α=1 and (1−g)·f at α=0.
                pos = class_stats(x, tgt, StatsSpec(act, ("focal",), gamma=self.gamma, alpha=1.0))[:, first:, 0]
                neg = class_stats(x, tgt, StatsSpec(act, ("focal",), gamma=self.gamma, alpha=0.0))[:, first:, 0]
                sums = alpha_vec.view(1, Ck) * pos + neg
            else:
                sums = class_stats(x, tgt, spec)[:, first:, 0]  # (B, Ck)
                if alpha_vec is not None:
                    sums = sums * alpha_vec.view(1, Ck)
            if cw is not None:
                sums = sums * cw.view(1, -1)

        masked = tgt.mask is not None
        if self.reduction == "sum" and not spatial:
            # (B, C) input: MONAI's "sum" first averages over the spatial dims, an empty list, which
            # torch.mean(x, dim=[]) reads as every dim: the mean over all elements (over the counted ones,
            # each item's classes together, with ignore_index), then a sum of that scalar
            if masked:
                return sums.sum() / tgt.mask.to(dt).sum().clamp_min(_F32_EPS)
            return sums.sum() / (B * Ck)
        if self.reduction == "sum":
            if masked:
                cnt = tgt.mask.to(dt).sum(dim=1, keepdim=True).clamp_min(_F32_EPS)  # (B, 1)
                return (sums / cnt).sum()
            return (sums / N).sum()
        # mean
        if masked:
            return sums.sum() / tgt.mask.to(dt).sum().clamp_min(_F32_EPS)
        return sums.sum() / (B * N if self.mean_over == "voxels" else B * Ck * N)

    def _class_weight(self, Ck: int, like: torch.Tensor) -> Optional[torch.Tensor]:
        """MONAI's ``class_weight`` checks (after ``include_background``), as a ``(Ck,)`` or ``(1,)`` tensor."""
        w = self.class_weight
        if w is None:
            return None
        dt = compute_dtype(like)
        if w.ndim > 0:
            if Ck == 1:
                raise ValueError("Per-class class_weight is not supported for single-channel outputs.")
            if w.numel() != Ck:
                raise ValueError(
                    f"The number of class_weight ({w.numel()}) must match the number of output channels ({Ck})."
                )
            return w.to(device=like.device, dtype=dt)
        return w.reshape(1).to(device=like.device, dtype=dt)


focal_loss = functional_form(FocalLoss, "focal_loss")


# ------------------------------------------------------------------------------- distance-penalised CE
def penalty_map_from_labels(target: Target, spacing=None) -> torch.Tensor:
    r"""Caliva et al.'s penalty ``D`` ``(B, C, N)`` of a normalised target (no gradient).

    For image ``b`` and class ``c`` with mask ``G = {g^c > 0.5}`` (non-ignored voxels only), ``d`` the
    Euclidean distance transform of ``G`` (:func:`fastloss.edt`: distance from each voxel of ``G``
    to the nearest voxel outside it), ``M = max_G d`` and ``m = min_G d`` (1 with unit spacing):

    .. math:: D^c_i = \frac{M - d_i}{M - m} \;(i \in G), \qquad 0 \;(i \notin G)

    the inverted, normalised distance of SegLoss's ``compute_edts_forPenalizedLoss`` (Ma's reference code,
    applied there to the foreground and the background of a binary mask; here to every class): 1 on the
    boundary of the object, 0 at its deepest voxels. Special cases: ``M = m`` (every voxel of ``G`` on its
    boundary) gives ``D = 1`` on ``G``; a class covering the whole image (no boundary, ``d = inf``) gives
    ``D = 0``; an absent class gives 0.
    """
    from ..distance import edt  # lazy: the compiled extension may be missing at import time

    B, C = target.soft.shape[:2] if target.soft is not None else (target.raw_labels.shape[0], target.num_classes)
    spatial = tuple(target.spatial_shape)
    with torch.no_grad():
        if target.raw_labels is not None:
            lab = target.labels
            onehot = torch.stack([(lab == c) for c in range(C)], dim=1)  # (B, C, N) bool
            if target.mask is not None:
                onehot &= (target.mask > 0).unsqueeze(1)
        else:
            onehot = target.dense(torch.float32) > 0.5
        masks = onehot.reshape((B * C,) + spatial)
        d = edt(masks, spacing, spatial_dims=len(spatial))
        d = torch.as_tensor(d).to(device=onehot.device, dtype=torch.float64).reshape(B, C, -1)
        inside = onehot.reshape(B, C, -1)
        M = torch.where(inside, d, torch.full_like(d, -float("inf"))).amax(dim=2, keepdim=True)
        m = torch.where(inside, d, torch.full_like(d, float("inf"))).amin(dim=2, keepdim=True)
        span = M - m
        finite = torch.isfinite(M) & torch.isfinite(m)
        D = torch.where(span > 0, (M - d) / torch.where(span > 0, span, torch.ones_like(span)), torch.ones_like(d))
        D = torch.where(inside & finite, D, torch.zeros_like(D))
    return D


class DistancePenalizedCELoss(nn.Module):
    r"""Distance-map penalised cross entropy (DPCE / pCE, Eq. 6; Caliva et al. 2019).

    .. math:: L_{DPCE} = -\frac{1}{N} \sum_{c} \sum_i (1 + D_i^c)\, g_i^c \log s_i^c

    with ``s`` the softmax, ``N`` the counted voxels, and ``D^c`` the penalty of class ``c``: the inverted,
    normalised distance transform of the class's ground-truth mask, 1 on the object's boundary and 0 at
    its deepest voxel (exact definition in :func:`penalty_map_from_labels`; computed with
    :func:`fastloss.edt`, honouring ``spacing``). A voxel's CE is thus weighted by 1 (deep inside its
    class) up to 2 (on the boundary). The map is computed in ``forward`` without gradient unless
    ``distance_map`` is given.

    Args:
        ignore_index: label to ignore (not counted, and not part of any class mask), or None.
        reduction: ``"mean"`` (default, Eq. 6), ``"sum"``, or ``"none"``: the per-voxel map ``(B, *spatial)``.
        spacing: voxel spacing for the distance transform (number or one per spatial dim), or None.
        to_onehot_y: MONAI compatibility (float labels need it).

    Forward args:
        input: logits ``(B, C, *spatial)``, ``C >= 2``.
        target: labels or one-hot/soft.
        distance_map: optional precomputed penalty ``D`` (not ``1 + D``): ``(B, C, *spatial)`` per class,
            or ``(B, 1, *spatial)`` / ``(B, *spatial)`` per voxel; finite; no gradient flows through it.

    Raises:
        TypeError: bad flag types; ``distance_map`` not a floating tensor.
        ValueError: bad ``reduction``/``spacing``; in ``forward``: fewer than 2 channels, a
            ``distance_map`` of the wrong shape or with non-finite values, and the target errors.

    Example:
        >>> import torch
        >>> from fastloss.losses.distribution import DistancePenalizedCELoss
        >>> logits = torch.randn(2, 2, 16, 16, requires_grad=True)
        >>> labels = torch.zeros(2, 1, 16, 16, dtype=torch.long); labels[:, :, 4:12, 4:12] = 1
        >>> DistancePenalizedCELoss()(logits, labels).backward()
    """

    def __init__(
        self,
        ignore_index: Optional[int] = None,
        reduction: str = "mean",
        spacing=None,
        to_onehot_y: bool = False,
    ) -> None:
        super().__init__()
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        if spacing is not None:
            from .._validation import check_spacing

            n = 1 if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) else None
            if n is None:
                try:
                    n = len(spacing)
                except TypeError:
                    raise TypeError(f"spacing must be a number or a sequence of numbers, got {type(spacing).__name__}")
            check_spacing(spacing, n)
        self.spacing = spacing
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")

    def forward(
        self, input: torch.Tensor, target: torch.Tensor, distance_map: Optional[torch.Tensor] = None
    ) -> torch.Tensor:
        prep = prepare_inputs(
            input, target, activation="none", to_onehot_y=self.to_onehot_y, ignore_index=self.ignore_index,
            multiclass="DistancePenalizedCELoss",
        )
        B, C = input.shape[:2]
        spatial = tuple(input.shape[2:])
        dt = compute_dtype(input)
        if distance_map is None:
            spacing = self.spacing
            if spacing is not None:
                from .._validation import check_spacing

                spacing = check_spacing(spacing, len(spatial))
            D = penalty_map_from_labels(prep.target, spacing).to(dt)
        else:
            D = self._check_map(distance_map, input).to(dt)
        w = 1.0 + D  # (B, C or 1, N)
        if w.shape[1] == 1:
            w = w.expand(B, C, w.shape[2])
        if self.reduction == "none":
            terms = voxel_terms(flatten_spatial(input), prep.target, StatsSpec("softmax", ("map_ce",)), w)
            return terms["map_ce"].sum(dim=1).reshape((B,) + spatial)
        stats = class_stats(input, prep.target, StatsSpec("softmax", ("map_ce", "count")), w)
        num = stats[..., 0].sum()
        if self.reduction == "sum":
            return num
        return _safe_div(num, _count_per_batch(stats, 1).sum())

    @staticmethod
    def _check_map(distance_map: torch.Tensor, input: torch.Tensor) -> torch.Tensor:
        if not isinstance(distance_map, torch.Tensor) or not distance_map.is_floating_point():
            got = distance_map.dtype if isinstance(distance_map, torch.Tensor) else type(distance_map).__name__
            raise TypeError(f"distance_map must be a floating torch.Tensor, got {got}")
        B, C = input.shape[:2]
        spatial = tuple(input.shape[2:])
        shape = tuple(distance_map.shape)
        if shape == (B, C) + spatial:
            ch = C
        elif shape in ((B, 1) + spatial, (B,) + spatial):
            ch = 1
        else:
            raise ValueError(
                f"distance_map must have shape {(B, C) + spatial}, {(B, 1) + spatial} or {(B,) + spatial}, got {shape}"
            )
        if distance_map.device != input.device:
            raise ValueError(f"distance_map is on {distance_map.device} but input is on {input.device}")
        dm = distance_map.detach()
        if not bool(torch.isfinite(dm).all()):
            raise ValueError("distance_map must be finite")
        return dm.reshape(B, ch, -1)


distance_penalized_ce_loss = functional_form(DistancePenalizedCELoss, "distance_penalized_ce_loss", forward_kwargs=("distance_map",))
