"""Input checks and target normalisation shared by every loss.

Everything here runs before any kernel: a bad argument gets a ``TypeError``/``ValueError`` that says
what was expected and what came. The one check that has to look at tensor *values* (labels inside
``[0, C)`` or equal to ``ignore_index``) costs one host sync; it is skipped while ``torch.compile``
traces and can be switched off with ``FASTLOSS_CHECK_LABELS=0`` (kernels then treat out-of-range
labels as ignored voxels, so nothing is ever read out of bounds).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import warnings
from typing import Optional, Sequence

import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


class ShapeMismatchError(ValueError, AssertionError):
    """A target whose shape does not match the input: a ``ValueError``, and an ``AssertionError`` too,
    because MONAI's losses ``assert`` there, so code written to catch either keeps working. The message
    starts with MONAI's words ("input and target shapes do not match")."""


class FloatLabelsError(ShapeMismatchError, TypeError):
    """A one-channel float target (a label map loaded as floats) without ``to_onehot_y=True``: a
    ``TypeError`` to us (labels must be integers), and to MONAI, which compares shapes before looking at
    dtypes, a target of the wrong shape (its region losses ``assert``, its ``FocalLoss`` raises
    ``ValueError``): so it is all three."""

REDUCTIONS = ("none", "mean", "sum")


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - torch < 2.3
        return False


def label_checks_enabled() -> bool:
    return os.environ.get("FASTLOSS_CHECK_LABELS", "1") != "0" and not _is_compiling()


def check_logits(input: torch.Tensor, name: str = "input", *, allow_flat: bool = False) -> None:
    """``input`` must be a floating tensor ``(B, C, *spatial)`` with 1 to 3 spatial dims, non-empty.

    ``allow_flat``: ``(B, C)`` (no spatial dim, classification) is accepted too; the losses whose MONAI
    namesakes take it (Dice, Tversky, Focal, DiceCE, DiceFocal) pass it."""
    if not isinstance(input, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape (B, C, *spatial), got {type(input).__name__}")
    if input.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64 logits, got dtype {input.dtype}")
    if input.ndim not in ((2, 3, 4, 5) if allow_flat else (3, 4, 5)):
        also = " or (B, C) without spatial dims" if allow_flat else ""
        raise ValueError(
            f"{name} must have shape (B, C, *spatial) with 1 to 3 spatial dims (3 to 5 dims in all){also}, "
            f"got {input.ndim} dims: shape {tuple(input.shape)}"
        )
    if input.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(input.shape)}")


def check_reduction(reduction: str, allowed: Sequence[str] = REDUCTIONS) -> str:
    reduction = getattr(reduction, "value", reduction)  # accept MONAI's LossReduction enum
    if reduction not in allowed:
        raise ValueError(f"reduction must be one of {list(allowed)}, got {reduction!r}")
    return reduction


def check_activation(sigmoid: bool, softmax: bool, other_act=None) -> str:
    """Resolve MONAI-style activation flags to 'sigmoid', 'softmax', 'none' or 'other'."""
    if sigmoid and softmax:
        raise ValueError("sigmoid=True and softmax=True are incompatible: choose one activation")
    if other_act is not None and (sigmoid or softmax):
        raise ValueError("other_act cannot be combined with sigmoid=True or softmax=True")
    if other_act is not None and not callable(other_act):
        raise TypeError(f"other_act must be callable, got {type(other_act).__name__}")
    if sigmoid:
        return "sigmoid"
    if softmax:
        return "softmax"
    return "other" if other_act is not None else "none"


def check_class_weight(weight, num_classes: Optional[int] = None, name: str = "weight") -> Optional[torch.Tensor]:
    """A per-class weight: None, a number, a sequence or a 1D tensor of non-negative finite values."""
    if weight is None:
        return None
    w = torch.as_tensor(weight, dtype=torch.float64).detach().cpu()
    if w.ndim > 1:
        raise ValueError(f"{name} must be a number or a 1D sequence of per-class weights, got shape {tuple(w.shape)}")
    if w.numel() == 0:
        raise ValueError(f"{name} must not be empty")
    if not torch.isfinite(w).all() or (w < 0).any():
        raise ValueError(f"{name} must be finite and non-negative, got {w.tolist()}")
    if num_classes is not None and w.ndim == 1 and w.numel() != num_classes:
        raise ValueError(f"{name} must have one value per class ({num_classes}), got {w.numel()} values")
    return w


def check_spacing(spacing, ndim: int) -> Optional[tuple]:
    """Per-axis voxel spacing: None, one positive number, or ``ndim`` positive numbers."""
    if spacing is None:
        return None
    if isinstance(spacing, (int, float)) and not isinstance(spacing, bool):
        spacing = (float(spacing),) * ndim
    try:
        sp = tuple(float(s) for s in spacing)
    except TypeError:
        raise TypeError(f"spacing must be a number or a sequence of {ndim} numbers, got {type(spacing).__name__}")
    if len(sp) != ndim:
        raise ValueError(f"spacing must have one value per spatial dim ({ndim}), got {len(sp)}: {sp}")
    if not all(s > 0 and s != float("inf") for s in sp):
        raise ValueError(f"spacing values must be positive and finite, got {sp}")
    return sp


class Target:
    """A normalised target for ``num_classes`` channels over ``N`` flattened voxels.

    Exactly one of ``labels`` / ``soft`` is set:

    - ``labels``: ``(B, N)`` int64 class indices, for the torch backend's indexing (gather, scatter).
      ``raw_labels`` is the same ``(B, N)`` view in the caller's integer dtype (uint8, int8, int16, int32
      or int64; bool as uint8), which the compiled kernels read as it is: labels of a narrower dtype are
      widened to int64 only when, and the first time, ``labels`` is asked for. Voxels to ignore keep
      their value; ``ignore_index`` says which.
    - ``soft``: ``(B, C, N)`` one-hot or soft target in the input's compute dtype.

    ``mask`` is ``(B, N)`` float (1 = counted, 0 = ignored, fractional for MONAI's soft one-hot
    convention) or None when nothing is ignored. MONAI multiplies both the prediction and the target
    by this mask before any sum; every loss here does the same.

    ``regions`` (region-based training, :func:`region_table`): None, or the int64 ``(L,)`` label-to-regions
    table on the labels' device, bit ``r`` of ``regions[l]`` set when label ``l`` belongs to region ``r``; the
    ``num_classes`` channels are then the regions, and channel ``r``'s target at a voxel is that bit of its
    label's entry (0 for a label ``>= L``). Negative labels that are not ``ignore_index`` (possible only with
    the label check off) are ignored voxels, as out-of-range class labels are.

    ``aux_labels`` (:func:`attach_aux_labels`): None, or a second ``(B, N)`` integer label map in its own dtype
    and strides (a skeleton of the labels, say), read by the statistics columns ``aux_pg`` and ``aux_g``: its
    class-``c`` target is ``[aux = c]`` (one channel: ``[aux = 1]``) times the voxel mask of the primary target;
    aux labels equal to ``ignore_index`` or (with the label check off) outside ``[0, C)`` count nowhere.
    """

    __slots__ = ("raw_labels", "_labels_long", "soft", "mask", "num_classes", "spatial_shape", "ignore_index",
                 "regions", "aux_labels", "_aux_long")

    def __init__(self, labels: Optional[torch.Tensor], soft: Optional[torch.Tensor], mask: Optional[torch.Tensor],
                 num_classes: int, spatial_shape: tuple, ignore_index: Optional[int] = None,
                 regions: Optional[torch.Tensor] = None, aux_labels: Optional[torch.Tensor] = None):
        if labels is not None and labels.dtype == torch.bool:
            labels = labels.view(torch.uint8)
        if aux_labels is not None and aux_labels.dtype == torch.bool:
            aux_labels = aux_labels.view(torch.uint8)
        self.raw_labels = labels
        self._labels_long = labels if labels is None or labels.dtype == torch.int64 else None
        self.soft = soft
        self.mask = mask
        self.num_classes = num_classes
        self.spatial_shape = spatial_shape
        self.ignore_index = ignore_index
        self.regions = regions
        self.aux_labels = aux_labels
        self._aux_long = aux_labels if aux_labels is None or aux_labels.dtype == torch.int64 else None

    @property
    def labels(self) -> Optional[torch.Tensor]:
        if self._labels_long is None and self.raw_labels is not None:
            self._labels_long = self.raw_labels.long()
        return self._labels_long

    @property
    def aux_long(self) -> Optional[torch.Tensor]:
        """``aux_labels`` as int64 (widened the first time it is asked for), or None."""
        if self._aux_long is None and self.aux_labels is not None:
            self._aux_long = self.aux_labels.long()
        return self._aux_long

    def with_aux(self, aux_labels: Optional[torch.Tensor]) -> "Target":
        """This target with ``aux_labels`` (``(B, N)`` integers, checked by :func:`attach_aux_labels`)."""
        t = Target(self.raw_labels, self.soft, self.mask, self.num_classes, self.spatial_shape, self.ignore_index,
                   self.regions, aux_labels)
        t._labels_long = self._labels_long
        return t

    def aux_onehot(self, dtype: torch.dtype) -> torch.Tensor:
        """The ``(B, C, N)`` one-hot of ``aux_labels`` (before the voxel mask): ``[aux = c]`` (one channel:
        ``[aux = 1]``), 0 where the aux label is ``ignore_index`` or outside ``[0, C)``; all zero without aux
        labels."""
        C = self.num_classes
        if self.aux_labels is None:
            ref = self.raw_labels if self.raw_labels is not None else self.soft
            return torch.zeros((), dtype=dtype, device=ref.device).expand(ref.shape[0], C, ref.shape[-1])
        lab = self.aux_long
        B = lab.shape[0]
        cls = lab - 1 if C == 1 else lab  # one channel: its target is aux label 1
        valid = (cls >= 0) & (cls < C)
        if self.ignore_index is not None and _INT64_MIN <= self.ignore_index <= _INT64_MAX:
            valid &= lab != self.ignore_index
        g = torch.zeros((B, C) + tuple(lab.shape[1:]), dtype=dtype, device=lab.device)
        g.scatter_(1, torch.where(valid, cls, torch.zeros_like(cls)).unsqueeze(1), valid.unsqueeze(1).to(dtype))
        return g

    def __repr__(self) -> str:
        kind = f"labels {tuple(self.raw_labels.shape)} {self.raw_labels.dtype}" if self.raw_labels is not None \
            else f"soft {tuple(self.soft.shape)}"
        regions = "" if self.regions is None else f", regions table of {self.regions.numel()} labels"
        aux = "" if self.aux_labels is None else f", aux labels {self.aux_labels.dtype}"
        return (f"Target({kind}, mask={'yes' if self.mask is not None else 'no'}, num_classes={self.num_classes}, "
                f"spatial_shape={self.spatial_shape}, ignore_index={self.ignore_index}{regions}{aux})")

    def dense(self, dtype: torch.dtype) -> torch.Tensor:
        """The ``(B, C, N)`` target, one-hot for labels, with ignored voxels zeroed."""
        if self.soft is not None:
            g = self.soft.to(dtype)
        elif self.regions is not None:
            # bit r of the label's table entry; labels outside the table (>= L, or negative) are in no region
            lab = self.labels
            L = self.regions.numel()
            inside = (lab >= 0) & (lab < L)
            bits = self.regions[torch.where(inside, lab, torch.zeros_like(lab))] * inside
            shifts = torch.arange(self.num_classes, device=lab.device).view(1, -1, 1)
            g = ((bits.unsqueeze(1) >> shifts) & 1).to(dtype)
        else:
            lab = self.labels
            if self.num_classes == 1:
                g = (lab == 1).to(dtype).unsqueeze(1)
            else:
                # channel-first one-hot written in place; an out-of-range label (possible only with the
                # label check off) gets an all-zero vector, as the kernels treat it
                in_range = (lab >= 0) & (lab < self.num_classes)
                g = torch.zeros((lab.shape[0], self.num_classes) + tuple(lab.shape[1:]), dtype=dtype, device=lab.device)
                if label_checks_enabled() and self.ignore_index is None:
                    g.scatter_(1, lab.unsqueeze(1), 1.0)  # every label was checked to lie in [0, C)
                else:
                    safe = torch.where(in_range, lab, torch.zeros_like(lab))
                    g.scatter_(1, safe.unsqueeze(1), in_range.unsqueeze(1).to(dtype))
        if self.mask is not None:
            g = g * self.mask.to(dtype).unsqueeze(1)
        return g


# ------------------------------------------------------------------------------------------------- regions
MAX_REGION_LABEL = (1 << 16) - 1  # the label-to-regions table has at most 65536 entries
MAX_REGIONS = 31  # one bit per region in a table entry (the C++ kernels hold the bits in an int32)


def check_regions(regions) -> Optional[tuple]:
    """``regions=`` of the region-capable losses: a sequence of label sets, one per output channel (nnU-Net's
    ``regions`` of a plans file: ``[[1, 2, 3], [2, 3], [3]]``; a bare int is the set of that one label).
    Returns them as a tuple of sorted tuples, or None.

    Raises:
        TypeError: not a sequence of ints / sequences of ints.
        ValueError: no region, an empty region, a label outside ``[0, 65535]``, more than 31 regions.
    """
    if regions is None:
        return None
    if isinstance(regions, (str, bytes, torch.Tensor)) or not isinstance(regions, Sequence):
        raise TypeError(f"regions must be a sequence of label sets (e.g. [[1, 2, 3], [2, 3], [3]]), got "
                        f"{type(regions).__name__}")
    if len(regions) == 0:
        raise ValueError("regions must name at least one region, got an empty sequence")
    if len(regions) > MAX_REGIONS:
        raise ValueError(f"regions: at most {MAX_REGIONS} regions, got {len(regions)}")
    out = []
    for r, region in enumerate(regions):
        labels = (region,) if isinstance(region, int) and not isinstance(region, bool) else region
        if isinstance(labels, (str, bytes)) or not isinstance(labels, (Sequence, set, frozenset)):
            raise TypeError(f"regions[{r}] must be a label or a sequence of labels, got {type(region).__name__}")
        labels = list(labels)
        if not labels:
            raise ValueError(f"regions[{r}] is empty: every region needs at least one label")
        for v in labels:
            if isinstance(v, bool) or not isinstance(v, int):
                raise TypeError(f"regions[{r}] must hold integer labels, got {v!r} ({type(v).__name__})")
            if not 0 <= v <= MAX_REGION_LABEL:
                raise ValueError(f"regions[{r}]: labels must lie in [0, {MAX_REGION_LABEL}], got {v}")
        out.append(tuple(sorted(set(labels))))
    return tuple(out)


_TABLES: dict = {}


def region_table(regions: tuple, device) -> torch.Tensor:
    """The int64 ``(L,)`` label-to-regions table of :func:`check_regions`'s ``regions`` on ``device``
    (``L`` = the largest label named + 1; bit ``r`` of entry ``l`` set when ``l`` is in ``regions[r]``).
    Built once per (regions, device) and kept."""
    key = (regions, str(torch.device(device)))
    table = _TABLES.get(key)
    if table is None:
        bits = [0] * (max(max(region) for region in regions) + 1)
        for r, region in enumerate(regions):
            for label in region:
                bits[label] |= 1 << r
        table = torch.tensor(bits, dtype=torch.int64, device=device)
        _TABLES[key] = table
    return table


def _region_target(input: torch.Tensor, target: torch.Tensor, regions: tuple, ignore_index: Optional[int],
                   name: str) -> "Target":
    """:func:`prepare_target` with ``regions``: integer labels only, one channel per region."""
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    if C != len(regions):
        raise ValueError(f"regions: the input must have one channel per region ({len(regions)} regions {regions}), "
                         f"got {C} channels (input shape {tuple(input.shape)})")
    if target.dtype.is_floating_point or target.dtype.is_complex:
        raise TypeError(f"regions= needs integer labels (torch.long, int32, uint8, ...) in {name}, got dtype "
                        f"{target.dtype}: the regions are made from the labels (a one-hot region target needs no "
                        "regions=)")
    if tuple(target.shape) not in ((B, 1) + spatial, (B,) + spatial):
        raise ShapeMismatchError(
            f"input and target shapes do not match: with regions= the {name} must be integer labels of shape "
            f"{(B, 1) + spatial} or {(B,) + spatial}, got {tuple(target.shape)}"
        )
    N = 1
    for s in spatial:
        N *= s
    labels = target.reshape(B, N)
    if labels.dtype == torch.bool:
        labels = labels.view(torch.uint8)
    if label_checks_enabled():
        seen = _CHECKED.get()
        key = (labels.data_ptr(), labels.numel(), labels.dtype, labels.device, labels._version, "regions",
               ignore_index)
        if seen is None or key not in seen:
            low = labels.long() if ignore_index is not None and ignore_index < 0 else labels
            bad = low < 0 if ignore_index is None else (low < 0) & (low != ignore_index)
            if bool(bad.any()):
                values = torch.unique(low[bad].long())[:8].tolist()
                raise ValueError(f"{name} labels must be >= 0 with regions="
                                 + (f" (or equal ignore_index={ignore_index})" if ignore_index is not None else "")
                                 + f"; found {values}")
            if seen is not None:
                seen.add(key)
    # with the label check off, negative labels are ignored voxels in the kernels: in the mask too
    mask = _ignore_mask(labels, ignore_index, input.dtype, lambda: labels >= 0)
    return Target(labels, None, mask, C, spatial, ignore_index, regions=region_table(regions, input.device))


def prepare_target(
    input: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: Optional[int] = None,
    to_onehot_y: bool = False,
    name: str = "target",
    regions: Optional[tuple] = None,
) -> Target:
    """Check ``target`` against logits ``input`` (already checked) and normalise it.

    Accepted: integer labels ``(B, 1, *spatial)`` or ``(B, *spatial)``; one-hot/soft ``(B, C, *spatial)``
    (float, or integer when C > 1). Float labels ``(B, 1, *spatial)`` are accepted only with
    ``to_onehot_y=True`` (MONAI's convention for label maps loaded as floats) and must be integral.
    With ``regions`` (:func:`check_regions`'s tuple) only integer labels, and one input channel per region.
    """
    if not isinstance(target, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(target).__name__}")
    if ignore_index is not None and (isinstance(ignore_index, bool) or not isinstance(ignore_index, int)):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    if target.device != input.device:
        raise ValueError(f"{name} is on {target.device} but input is on {input.device}")
    if regions is not None:
        return _region_target(input, target, regions, ignore_index, name)
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    N = 1
    for s in spatial:
        N *= s
    is_float = target.dtype.is_floating_point
    if target.dtype.is_complex:
        raise TypeError(f"{name} must be integer labels or a real one-hot/soft target, got dtype {target.dtype}")

    if tuple(target.shape) == tuple(input.shape) and (C > 1 or is_float):
        if C > 1 and to_onehot_y and not is_float:
            raise ValueError(
                f"to_onehot_y=True expects labels of shape (B, 1, *spatial) = {(B, 1) + spatial}, "
                f"got a {C}-channel {name} of shape {tuple(target.shape)}"
            )
        if target.dtype == torch.bool:
            target = target.to(torch.uint8)
        soft = target.reshape(B, C, N)
        if not is_float:
            soft = soft.to(input.dtype if input.dtype == torch.float64 else torch.float32)
        mask = None
        if ignore_index is not None and C == 1:
            # One channel is a label map to MONAI (create_ignore_mask compares values with ignore_index).
            mask = (soft[:, 0] != ignore_index).to(soft.dtype)
        elif ignore_index is not None:
            # MONAI's one-hot convention: a class index masks the voxels of that class,
            # any other value (a sentinel) masks the voxels whose one-hot vector is all zero.
            if 0 <= ignore_index < C:
                mask = 1.0 - soft[:, ignore_index]
            else:
                mask = (soft.sum(dim=1) > 0).to(soft.dtype)
        return Target(None, soft, mask, C, spatial, ignore_index)

    if tuple(target.shape) == (B, 1) + spatial:
        labels = target.reshape(B, N)
    elif tuple(target.shape) == (B,) + spatial:
        labels = target.reshape(B, N)
    else:
        raise ShapeMismatchError(
            f"input and target shapes do not match: {name} must be labels of shape {(B, 1) + spatial} or "
            f"{(B,) + spatial}, or one-hot/soft of shape {(B, C) + spatial}, to match input of shape "
            f"{tuple(input.shape)}; got {tuple(target.shape)}{_channels_last_hint(input, target)}"
        )
    if is_float:
        if not to_onehot_y:
            raise FloatLabelsError(
                f"{name} holds labels (one channel) but has float dtype {target.dtype}: expected integer labels "
                f"(torch.long), or to_onehot_y=True to convert integral float labels, or a one-hot target "
                f"of shape {(B, C) + spatial}"
            )
        if label_checks_enabled() and not torch.equal(labels, labels.round()):
            raise ValueError(f"{name} has non-integral float labels; expected class indices")
        labels = labels.long()
    elif target.dtype == torch.bool:
        labels = labels.view(torch.uint8)  # same bytes; read as 0/1 labels
    # other integer dtypes stay as they are: the kernels read them in place (Target.labels widens lazily)

    if label_checks_enabled():
        _check_label_range_once(labels, C, ignore_index, name)

    # with the label check off, out-of-range labels are ignored voxels in the kernels: in the mask too, so that
    # every backend counts the same voxels (the focal and CE normalisations read the mask)
    hi = 2 if C == 1 else C
    mask = _ignore_mask(labels, ignore_index, input.dtype, lambda: (labels >= 0) & (labels < hi))
    return Target(labels, None, mask, C, spatial, ignore_index)


def _ignore_mask(labels: torch.Tensor, ignore_index: Optional[int], input_dtype: torch.dtype, in_range) -> Optional[torch.Tensor]:
    """The float ``(B, N)`` mask of integer ``labels`` with ``ignore_index`` (None without one): 0 at the ignored
    voxels and, with the label check off, at the labels ``in_range()`` (a callable giving the bool tensor of
    counted labels) rejects, as the kernels treat them."""
    if ignore_index is None:
        return None
    dt = torch.float64 if input_dtype == torch.float64 else torch.float32
    info = torch.iinfo(labels.dtype)
    ok = None if label_checks_enabled() else in_range()
    if info.min <= ignore_index <= info.max:
        keep = labels != ignore_index
        return (keep if ok is None else keep & ok).to(dt)
    if ok is not None:
        return ok.to(dt)
    # e.g. uint8 labels with ignore_index=-100: no voxel can hold it (and comparing would wrap it)
    return torch.ones(labels.shape, dtype=dt, device=labels.device)


# Inside ``labels_checked_once()`` (entered by every compound loss through
# ``fastloss.ops.stats.shared_statistics``) a label tensor is range-checked once, not once per part:
# the check reads every label and costs a host sync.
_CHECKED: contextvars.ContextVar = contextvars.ContextVar("fastloss_checked_labels", default=None)


@contextlib.contextmanager
def labels_checked_once():
    if _CHECKED.get() is not None:
        yield
        return
    token = _CHECKED.set(set())
    try:
        yield
    finally:
        _CHECKED.reset(token)


def _check_label_range_once(labels: torch.Tensor, C: int, ignore_index: Optional[int], name: str) -> None:
    seen = _CHECKED.get()
    if seen is None:
        _check_label_range(labels, C, ignore_index, name)
        return
    key = (labels.data_ptr(), labels.numel(), labels.dtype, labels.device, labels._version, C, ignore_index)
    if key not in seen:
        _check_label_range(labels, C, ignore_index, name)
        seen.add(key)


def _check_label_range(labels: torch.Tensor, C: int, ignore_index: Optional[int], name: str) -> None:
    hi = 2 if C == 1 else C
    lo_hi = torch.aminmax(labels)  # one pass, one host sync; the detailed check only when it fails
    if int(lo_hi.min) >= 0 and int(lo_hi.max) < hi:
        return
    labels = labels.long()  # a narrower dtype would wrap ignore_index in the comparisons below
    bad = (labels < 0) | (labels >= hi)
    if ignore_index is not None:
        bad &= labels != ignore_index
    if bool(bad.any()):
        values = torch.unique(labels[bad])[:8].tolist()
        raise ValueError(
            f"{name} labels must lie in [0, {hi - 1}] for {C} channel(s)"
            + (f" or equal ignore_index={ignore_index}" if ignore_index is not None else "")
            + f"; found {values}"
            + _ignore_hint(values, ignore_index)
        )


def attach_aux_labels(input: torch.Tensor, target: Target, aux: torch.Tensor, name: str = "aux") -> Target:
    """``target`` (of logits ``input``, from :func:`prepare_target`) with a second label map ``aux`` for the
    statistics columns ``aux_pg`` / ``aux_g`` (see :class:`Target`). ``aux``: integer labels ``(B, 1, *spatial)``
    or ``(B, *spatial)`` of any integer dtype (bool as 0/1), any strides, on the input's device; read in place.

    Raises:
        TypeError: ``aux`` not a tensor, or not of an integer dtype.
        ValueError: a shape or device that does not match ``input``; labels outside ``[0, C)`` (``[0, 1]`` for one
            channel) other than ``ignore_index`` (checked unless the label check is off, before any kernel runs).
    """
    if not isinstance(aux, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer labels, got {type(aux).__name__}")
    if aux.dtype.is_floating_point or aux.dtype.is_complex:
        raise TypeError(f"{name} must hold integer class labels (torch.long, int32, uint8, ...), got dtype {aux.dtype}")
    B, C = input.shape[:2]
    spatial = tuple(input.shape[2:])
    if tuple(aux.shape) not in ((B, 1) + spatial, (B,) + spatial):
        raise ValueError(f"{name} must be integer labels of shape {(B, 1) + spatial} or {(B,) + spatial} for an input "
                         f"of shape {tuple(input.shape)}, got {tuple(aux.shape)}")
    if aux.device != input.device:
        raise ValueError(f"{name} is on {aux.device} but input is on {input.device}")
    N = 1
    for s in spatial:
        N *= s
    labels = aux.reshape(B, N)
    if labels.dtype == torch.bool:
        labels = labels.view(torch.uint8)
    if label_checks_enabled():
        _check_label_range_once(labels, C, target.ignore_index, name)
    return target.with_aux(labels)


def _channels_last_hint(input: torch.Tensor, target: torch.Tensor) -> str:
    """For logits laid out ``(B, *spatial, C)`` (channels last) beside labels ``(B, *spatial)``,
    ``(B, 1, *spatial)`` or ``(B, *spatial, 1)``: say so, and how to move the class axis."""
    if input.ndim < 3:
        return ""
    b, spatial = input.shape[0], tuple(input.shape[1:-1])
    if tuple(target.shape) not in ((b,) + spatial, (b, 1) + spatial, (b,) + spatial + (1,)):
        return ""
    return (f" (is the class axis last? input {tuple(input.shape)} reads as (B, *spatial, C) with "
            f"C = {input.shape[-1]}; fastloss takes logits (B, C, *spatial): pass input.movedim(-1, 1))")


def _ignore_hint(values, ignore_index: Optional[int]) -> str:
    """255 and -1 are the usual "unlabelled" codes: suggest ignore_index when one is found unhandled."""
    codes = [v for v in (255, -1, -100) if v in values and v != ignore_index]
    if not codes:
        return ""
    return f" (if {codes[0]} marks unlabelled voxels, pass ignore_index={codes[0]} to skip them)"


def warn_once(message: str, _seen=set()) -> None:
    if message not in _seen:
        _seen.add(message)
        warnings.warn(message, stacklevel=3)
