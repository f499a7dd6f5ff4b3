"""Machinery shared by the losses: MONAI-style activation flags, ``include_background``, ``batch``,
per-class ``weight`` and the ``(B, C)`` -> ``reduction`` step.

Every loss that is a formula of per-class voxel sums follows the same four steps, all of which live here:

1. :func:`prepare_inputs` - check the logits, normalise the target (:func:`fastloss._validation.prepare_target`),
   apply ``other_act`` and resolve the activation the statistics kernel applies (``softmax``/``sigmoid``/``none``),
   emitting MONAI's single-channel warnings;
2. :func:`fastloss.ops.stats.class_stats` - the ``(B, C, K)`` sums (the only pass over the voxels);
3. :func:`select_classes` (drop channel 0 *after* the activation, so the softmax still sees every class) and
   :func:`sum_batch` (MONAI's ``batch=True``: sum the sums over the batch);
4. the loss formula on the small tensor, then :func:`apply_class_weight` and :func:`reduce_loss`.

:class:`LossBase` bundles the arguments and steps 1-3 for ``nn.Module`` losses; the free functions are there
for losses that need only a part of it. This module is imported by every loss module: keep it small and stable.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from torch import nn

from .._validation import (
    Target,
    check_activation,
    check_class_weight,
    check_logits,
    check_reduction,
    check_regions,
    prepare_target,
)
from ..ops.stats import StatsSpec, class_stats, compute_dtype

__all__ = [
    "LossBase",
    "Prepared",
    "apply_class_weight",
    "check_bool",
    "check_ignore_index",
    "check_nonneg",
    "check_region_activation",
    "expand_class_weight",
    "flatten_spatial",
    "functional_form",
    "pool_flat",
    "prepare_inputs",
    "reduce_loss",
    "reduce_pooled",
    "resolve_activation",
    "select_classes",
    "sum_batch",
]


# --------------------------------------------------------------------------------------------------- checks
def check_bool(value, name: str) -> bool:
    """``value`` must be a bool (or 0/1 int, as MONAI configs sometimes pass); returns ``bool(value)``."""
    if isinstance(value, bool) or (isinstance(value, int) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")


def check_nonneg(value, name: str, *, positive: bool = False, upper: Optional[float] = None) -> float:
    """A finite real number ``>= 0`` (``> 0`` when ``positive``; ``<= upper`` when given); returns it as float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1 and not value.dtype.is_complex:
            value = value.item()
        else:
            raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value}")
    if upper is not None and value > upper:
        raise ValueError(f"{name} must be <= {upper}, got {value}")
    return value


def check_region_activation(regions, activation: str, include_background: bool = True, name: str = "regions"):
    """``regions=`` (:func:`fastloss._validation.check_regions`) with the loss's activation: regions overlap
    (whole tumour contains tumour core), so each channel is an independent sigmoid probability. Returns the
    checked tuple or None.

    Raises:
        ValueError: regions with another activation than the sigmoid, or with ``include_background=False``
            (it would drop the first region: with regions there is no background channel).
    """
    regions = check_regions(regions)
    if regions is None:
        return None
    if activation != "sigmoid":
        raise ValueError(f"{name}= needs sigmoid outputs (regions overlap: one independent probability per "
                         f"region), got activation {activation!r}; pass sigmoid=True")
    if not include_background:
        raise ValueError(f"{name}= with include_background=False would drop channel 0, the first region (there "
                         "is no background channel with regions); leave include_background=True")
    return regions


def check_ignore_index(ignore_index) -> Optional[int]:
    """``ignore_index`` must be an int (a class index or a sentinel such as -1 or 255) or None."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    return int(ignore_index)


# ------------------------------------------------------------------------------------------ shape helpers
def flatten_spatial(x: torch.Tensor) -> torch.Tensor:
    """``(B, C, *spatial)`` -> ``(B, C, N)`` (a view when ``x`` is contiguous)."""
    return x.reshape(x.shape[0], x.shape[1], -1)


# ------------------------------------------------------------------------------------------ activation
def resolve_activation(activation: str, num_channels: int) -> str:
    """The activation the statistics apply, from :func:`fastloss._validation.check_activation`'s answer.

    ``'other'`` becomes ``'none'`` (the caller applies ``other_act`` itself, :func:`prepare_inputs`);
    ``'softmax'`` over one channel is skipped with MONAI's warning (the raw input is then used as is).
    """
    if activation == "other":
        return "none"
    if activation == "softmax" and num_channels == 1:
        warnings.warn("single channel prediction, `softmax=True` ignored.", stacklevel=3)
        return "none"
    return activation


@dataclass
class Prepared:
    """What :func:`prepare_inputs` returns.

    ``input``: the tensor to hand to ``class_stats`` (the logits, or ``other_act`` of them in the compute
    dtype; ``(B, C, 1)`` for a ``(B, C)`` input); ``target``: the normalised
    :class:`fastloss._validation.Target`; ``activation``: the ``StatsSpec`` activation; ``spatial_ndim``:
    number of spatial dims (for ``reduction="none"`` shapes; 0 for a ``(B, C)`` input, see :attr:`flat`).
    """

    input: torch.Tensor
    target: Target
    activation: str
    spatial_ndim: int

    @property
    def flat(self) -> bool:
        """A ``(B, C)`` input without spatial dims (classification). MONAI's Dice and Tversky losses then
        sum over the empty list of spatial dims, which ``torch.sum(x, dim=[])`` reads as *all* dims: one
        pooled ratio over batch and classes (with ``batch=True``, one per class); see :func:`pool_flat`."""
        return self.spatial_ndim == 0


def prepare_inputs(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    activation: str,
    other_act: Optional[Callable] = None,
    to_onehot_y: bool = False,
    ignore_index: Optional[int] = None,
    multiclass: Optional[str] = None,
    allow_flat: bool = False,
    regions: Optional[tuple] = None,
) -> Prepared:
    """Validate ``input``/``target`` and resolve the activation, as MONAI's region losses do.

    ``multiclass``: the name of a loss that takes a softmax over classes and so needs ``C >= 2``
    (checked before the target is looked at).

    ``allow_flat``: accept ``(B, C)`` inputs (no spatial dim), as MONAI's Dice, Tversky and Focal losses do;
    targets are then ``(B, C)`` one-hot/soft or ``(B, 1)``/``(B,)`` labels, and the returned ``input`` is
    ``(B, C, 1)`` (one voxel) with ``spatial_ndim == 0``, so the statistics run unchanged.

    ``regions``: :func:`fastloss._validation.check_regions`'s tuple (the target is then integer labels and the
    channels are the regions; :func:`fastloss._validation.prepare_target`).

    ``activation`` is :func:`fastloss._validation.check_activation`'s answer (``sigmoid``/``softmax``/
    ``other``/``none``). ``other_act`` is applied to the input (cast to the compute dtype) and the statistics
    then use activation ``'none'``. Emits MONAI's warnings for ``softmax=True`` and ``to_onehot_y=True`` with a
    single channel, in MONAI's order.

    Raises:
        TypeError/ValueError: bad logits or target (see ``check_logits`` / ``prepare_target``), or an
            ``other_act`` that changes the shape.
    """
    check_logits(input, allow_flat=allow_flat)
    C = input.shape[1]
    if multiclass is not None and C < 2:
        raise ValueError(f"{multiclass} needs at least 2 channels (softmax over classes), got C={C}")
    act = resolve_activation(activation, C)
    if to_onehot_y and C == 1:
        warnings.warn("single channel prediction, `to_onehot_y=True` ignored.", stacklevel=3)
    tgt = prepare_target(input, target, ignore_index=ignore_index, to_onehot_y=to_onehot_y, regions=regions)
    x = input
    if activation == "other":
        x = other_act(input.to(compute_dtype(input)))
        if not isinstance(x, torch.Tensor) or tuple(x.shape) != tuple(input.shape):
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"other_act must keep the input's shape {tuple(input.shape)}, got {got}")
    if input.ndim == 2:
        x = x.unsqueeze(-1)  # one voxel per (batch, class): the Target is (B, N=1) already
    return Prepared(x, tgt, act, input.ndim - 2)


# ------------------------------------------------------------------------------- class and batch handling
def select_classes(stats: torch.Tensor, include_background: bool, *, warn: bool = True) -> torch.Tensor:
    """Drop class 0 from ``(B, C, ...)`` statistics when ``include_background`` is False and ``C > 1``.

    Done on the statistics, i.e. after the softmax over all classes, which is exactly MONAI's
    ``input[:, 1:]`` after its activation. With one channel MONAI ignores the flag and warns; so do we.
    """
    if include_background:
        return stats
    if stats.shape[1] == 1:
        if warn:
            warnings.warn("single channel prediction, `include_background=False` ignored.", stacklevel=3)
        return stats
    return stats[:, 1:]


def sum_batch(stats: torch.Tensor, batch: bool) -> torch.Tensor:
    """MONAI's ``batch=True``: the sums over voxels become sums over batch and voxels, ``(B, C, K)`` -> ``(C, K)``."""
    return stats.sum(dim=0) if batch else stats


def pool_flat(*terms: torch.Tensor, batch: bool):
    """MONAI's sums for a ``(B, C)`` input (no spatial dims): its reduce-axis list is then empty without
    ``batch``, and ``torch.sum(x, dim=[])`` sums over *every* dim, so each per-(batch, class) term (``tp``,
    ``fp``, ``fn``: linear in the statistics, so summing them is summing the statistics) becomes one pooled
    scalar; with ``batch=True`` MONAI reduces dim 0 only, which :func:`sum_batch` did already."""
    if batch:
        return terms
    return tuple(t.sum() for t in terms)


def reduce_pooled(f: torch.Tensor, weight: Optional[torch.Tensor], reduction: str) -> torch.Tensor:
    """MONAI's weighting and reduction of the pooled scalar loss of a ``(B, C')`` input (:func:`pool_flat`),
    ``f`` given as ``(C',)`` copies of the scalar (so the number of classes travels with it): a class weight
    (when ``C' > 1``) turns the scalar into ``f·w``, ``(C',)``; ``"none"`` returns the scalar, or ``f·w``."""
    weighted = weight is not None and f.shape[0] != 1
    if weighted:
        f = f * expand_class_weight(weight, f.shape[0]).to(device=f.device, dtype=f.dtype)
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum() if weighted else f[0]
    if reduction == "none":
        return f if weighted else f[0]
    raise ValueError(f'Unsupported reduction: {reduction}, available options are ["mean", "sum", "none"].')


def expand_class_weight(weight: Optional[torch.Tensor], num_classes: int) -> Optional[torch.Tensor]:
    """A scalar weight repeated per class, or a 1D weight checked to have ``num_classes`` values.

    ``num_classes`` counts the classes *after* ``include_background`` (as MONAI).

    Raises:
        ValueError: a sequence of the wrong length.
    """
    if weight is None:
        return None
    if weight.ndim == 0:
        return weight.reshape(1).expand(num_classes)
    if weight.shape[0] != num_classes:
        raise ValueError(
            f"weight must have one value per class ({num_classes}), got {weight.shape[0]} values. "
            "If include_background=False, the weight should not include the background class 0."
        )
    return weight


def apply_class_weight(f: torch.Tensor, weight: Optional[torch.Tensor]) -> torch.Tensor:
    """Multiply per-class values ``f`` (``(..., C)``) by ``weight`` (scalar or ``(C,)``), as MONAI's DiceLoss.

    MONAI skips the weight when only one class remains; so do we.
    """
    if weight is None or f.shape[-1] == 1:
        return f
    w = expand_class_weight(weight, f.shape[-1])
    return f * w.to(device=f.device, dtype=f.dtype)


def reduce_loss(f: torch.Tensor, reduction: str, spatial_ndim: int, *, broadcast: bool = True) -> torch.Tensor:
    """MONAI's reduction of per-(batch, class) values ``f`` (``(B, C)``, or ``(C,)`` with ``batch=True``).

    ``mean``/``sum`` over every element. ``none``: with ``broadcast`` (MONAI's DiceLoss/GeneralizedDiceLoss)
    the shape ``f.shape[:2] + (1,) * spatial_ndim``, broadcastable against the input; without it, ``f`` as is
    (MONAI's TverskyLoss).
    """
    if reduction == "mean":
        return f.mean()
    if reduction == "sum":
        return f.sum()
    if reduction == "none":
        if broadcast:
            return f.reshape(list(f.shape[:2]) + [1] * spatial_ndim)
        return f
    raise ValueError(f'Unsupported reduction: {reduction}, available options are ["mean", "sum", "none"].')


# ------------------------------------------------------------------------------------------- base class
class LossBase(nn.Module):
    """Holds the arguments every region-style loss shares and computes its ``(B', C', K)`` statistics.

    Args:
        include_background: if False, class 0 is excluded (after the activation).
        to_onehot_y: MONAI compatibility; integer labels are accepted either way, float labels need it.
        sigmoid, softmax, other_act: the activation (at most one; ``other_act`` is any callable
            applied to the input, after which the prediction is used as is).
        reduction: ``"none"``, ``"mean"`` or ``"sum"`` over the per-(batch, class) values.
        batch: sum the statistics over the batch before the formula (batch Dice).
        weight: per-class weights (number, sequence or 1D tensor, ``>= 0``), or None. Stored as the buffer
            ``class_weight`` like MONAI.
        ignore_index: a label (or one-hot class index / sentinel) whose voxels are excluded.
        regions: region-based training (nnU-Net's BraTS-style regions): a sequence of label sets, one per
            output channel (``[[1, 2, 3], [2, 3], [3]]``); the target is then integer labels and channel
            ``r``'s target at a voxel is 1 when its label is in ``regions[r]``, read by the kernels from a
            label-to-regions table (no ``(B, R, *spatial)`` tensor is built). Needs ``sigmoid=True``.

    Raises:
        TypeError: ``other_act`` not callable, a non-bool flag, a non-int ``ignore_index``.
        ValueError: two activations, an unknown ``reduction``, a negative or non-finite ``weight``.
    """

    def __init__(
        self,
        *,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
        batch: bool = False,
        weight: Optional[Sequence[float] | float | int | torch.Tensor] = None,
        ignore_index: Optional[int] = None,
        regions: Optional[Sequence] = None,
    ) -> None:
        super().__init__()
        self.include_background = check_bool(include_background, "include_background")
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")
        self.sigmoid = check_bool(sigmoid, "sigmoid")
        self.softmax = check_bool(softmax, "softmax")
        self.activation = check_activation(self.sigmoid, self.softmax, other_act)
        self.other_act = other_act
        self.reduction = check_reduction(reduction)
        self.batch = check_bool(batch, "batch")
        self.ignore_index = check_ignore_index(ignore_index)
        self.regions = check_region_activation(regions, self.activation, self.include_background)
        if weight is not None:
            check_class_weight(weight)
            weight = torch.as_tensor(weight).detach().clone()
            if not weight.is_floating_point():
                weight = weight.to(torch.get_default_dtype())
        self.register_buffer("class_weight", weight)

    # True in the losses whose MONAI namesakes take (B, C) inputs (Dice, Tversky): their formulas then pool
    # the statistics as MONAI does (pool_flat); the others keep asking for spatial dims.
    _accepts_flat = False

    def prepare(self, input: torch.Tensor, target: torch.Tensor) -> Prepared:
        """:func:`prepare_inputs` with this loss's flags."""
        return prepare_inputs(
            input,
            target,
            activation=self.activation,
            other_act=self.other_act,
            to_onehot_y=self.to_onehot_y,
            ignore_index=self.ignore_index,
            allow_flat=self._accepts_flat,
            regions=self.regions,
        )

    # Set by fastloss.distributed.sync_batch_statistics: with batch=True the summed statistics are
    # all-reduced (with autograd) over this process group (None: the default group).
    _ddp_sync = False
    _ddp_group = None

    def reduce_stats(self, stats: torch.Tensor) -> torch.Tensor:
        """``(B, C, K)`` -> class selection (``include_background``) -> batch sum (``batch``) -> with
        ``batch=True`` under :func:`fastloss.distributed.sync_batch_statistics`, the sum over all ranks (``ops.collectives``)."""
        s = sum_batch(select_classes(stats, self.include_background), self.batch)
        if self.batch and self._ddp_sync:
            from ..ops.collectives import all_reduce_sum

            s = all_reduce_sum(s, self._ddp_group)
        return s

    def class_stats(
        self,
        input: torch.Tensor,
        target: torch.Tensor,
        columns: Sequence[str],
        *,
        voxel_map: Optional[torch.Tensor] = None,
        **spec_kwargs,
    ):
        """Validate, compute the statistics ``columns`` and apply ``include_background`` / ``batch``.

        Returns ``(stats, prepared)``: ``stats`` is ``(B, C', K)`` (``(C', K)`` with ``batch=True``),
        ``C'`` = ``C - 1`` without the background; ``prepared`` the :class:`Prepared` inputs.
        """
        prep = self.prepare(input, target)
        spec = StatsSpec(prep.activation, tuple(columns), **spec_kwargs)
        stats = class_stats(prep.input, prep.target, spec, voxel_map)
        return self.reduce_stats(stats), prep

    def extra_repr(self) -> str:
        return (
            f"include_background={self.include_background}, activation={self.activation!r}, "
            f"reduction={self.reduction!r}, batch={self.batch}, ignore_index={self.ignore_index}"
        )


def functional_form(cls, name: str, forward_kwargs: Sequence[str] = ()):
    """The functional form of loss class ``cls``: ``name(input, target, *args, **kwargs)`` builds
    ``cls(**kwargs)`` and calls it on ``(input, target, *args)``; the keyword arguments named in
    ``forward_kwargs`` (e.g. ``distance_map``) go to ``forward`` instead of the constructor."""

    def loss_fn(input: torch.Tensor, target: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        fwd = {k: kwargs.pop(k) for k in forward_kwargs if k in kwargs}
        return cls(**kwargs)(input, target, *args, **fwd)

    extra = "".join(f", {k}=None" for k in forward_kwargs)
    loss_fn.__name__ = loss_fn.__qualname__ = name
    loss_fn.__module__ = cls.__module__
    loss_fn.__doc__ = f"Functional :class:`{cls.__name__}`: ``{cls.__name__}(**kwargs)(input, target{extra})``."
    return loss_fn
