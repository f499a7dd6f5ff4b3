"""MONAI's metric functions and metric objects, as drop-ins for ``monai.metrics`` (MONAI is not imported).

``compute_dice``, ``compute_hausdorff_distance``, ``compute_surface_dice`` (also ``use_subvoxels=True``),
``compute_average_surface_distance``, ``do_metric_reduction`` and the cumulative metric objects
``DiceMetric``, ``HausdorffDistanceMetric``, ``SurfaceDiceMetric`` and ``SurfaceDistanceMetric``: MONAI
1.6.1's names, arguments, defaults, results and (where its unit tests compare them) error types and
messages. MONAI's argument handling lives here too: distance metrics, reductions, per-image spacing
lists, ``ignore_index`` masks, index maps turned one-hot.

The numbers come from :mod:`fastloss.metrics.core` (:func:`~fastloss.metrics.core.dice`,
:func:`~fastloss.metrics.core.border_metrics`) and :mod:`fastloss.metrics._subvoxel`; this is the top of
the package and nothing in it imports this module.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np
import torch

from .._validation import ShapeMismatchError, check_spacing
from ._checks import ChannelIndexError, EmptyListError, ShapeRuntimeError, ValueAttributeError, to_tensor
from ._subvoxel import surface_dice_subvoxels
from .core import border_metrics, dice


_DISTANCE_METRICS = ("euclidean", "chessboard", "taxicab")
_METRIC_REDUCTIONS = ("none", "mean", "sum", "mean_batch", "sum_batch", "mean_channel", "sum_channel")


def _check_distance_metric(distance_metric) -> str:
    distance_metric = getattr(distance_metric, "value", distance_metric)
    if distance_metric not in _DISTANCE_METRICS:
        raise ValueError(f"distance_metric must be one of {list(_DISTANCE_METRICS)}, got {distance_metric!r}")
    return distance_metric


def _per_image_spacing(spacing, batch_size: int, nd: int) -> list:
    """MONAI's ``prepare_spacing``: None, one number, ``nd`` numbers (every image), or one entry per image
    (each a number or ``nd`` numbers); returns ``batch_size`` checked spacings (tuples or None)."""
    if spacing is None or (isinstance(spacing, (int, float, np.number)) and not isinstance(spacing, bool)):
        return [check_spacing(None if spacing is None else float(spacing), nd)] * batch_size
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.tolist()
    items = list(spacing)
    if items and all(isinstance(s, (Sequence, np.ndarray, torch.Tensor)) and not isinstance(s, str) for s in items):
        if len(items) != batch_size:
            raise ValueError(
                f"a per-image spacing list must have one entry per image ({batch_size}), got {len(items)}: {spacing}"
            )
        out = []
        for s in items:
            s = list(np.asarray(s, dtype=np.float64).reshape(-1))
            out.append(check_spacing(s[0] if len(s) == 1 else s, nd))
        return out
    if any(isinstance(s, (Sequence, np.ndarray, torch.Tensor)) for s in items):
        raise ValueError(f"spacing must not mix numbers and sequences, got {spacing}")
    return [check_spacing(items, nd)] * batch_size


def _by_spacing(fn, y_pred, y, spacing, **kw) -> torch.Tensor:
    """Run ``fn(y_pred, y, spacing=..., **kw)`` once when every image has the same spacing, else once
    per image (MONAI's per-image spacing lists)."""
    y_pred = to_tensor(y_pred, "y_pred")
    y = to_tensor(y, "y")
    if y_pred.ndim < 3:
        raise ValueError(f"y_pred must have shape (B, C, *spatial), got shape {tuple(y_pred.shape)}")
    spacings = _per_image_spacing(spacing, y_pred.shape[0], y_pred.ndim - 2)
    if all(s == spacings[0] for s in spacings):
        return fn(y_pred, y, spacing=spacings[0], **kw)
    return torch.cat([fn(y_pred[b : b + 1], y[b : b + 1], spacing=s, **kw) for b, s in enumerate(spacings)])


def _apply_ignore_mask(y_pred, y, ignore_index):
    """MONAI's ``create_ignore_mask`` applied to both masks (voxels to ignore set to 0)."""
    keep = _keep_mask(y, ignore_index)
    return (y_pred, y) if keep is None else (y_pred * keep, y * keep)


def _keep_mask(y, ignore_index):
    """MONAI's ``create_ignore_mask``: ``(B, 1, *spatial)`` bool, False at the voxels to ignore (an index
    map's ``ignore_index`` label; in a one-hot ``y`` that class's voxels, or the all-zero voxels for a
    sentinel outside ``[0, C)``); None without ``ignore_index``."""
    if ignore_index is None:
        return None
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
        raise TypeError(f"ignore_index must be an int or None, got {type(ignore_index).__name__}")
    y = to_tensor(y, "y")
    if y.ndim < 3:
        raise ValueError(f"y must have shape (B, C, *spatial), got shape {tuple(y.shape)}")
    C = y.shape[1]
    if C == 1:
        keep = y != ignore_index
    elif 0 <= ignore_index < C:
        keep = y[:, ignore_index : ignore_index + 1] == 0
    else:
        keep = y.sum(dim=1, keepdim=True) > 0
    return keep


def _label_onehot(x: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(B, 1, *spatial)`` class indices -> ``(B, num_classes, *spatial)`` bool (labels outside the range
    give all-false voxels, as MONAI's per-class comparisons do)."""
    classes = torch.arange(num_classes, device=x.device).view((1, num_classes) + (1,) * (x.ndim - 2))
    return x == classes


def compute_dice(
    y_pred,
    y,
    include_background: bool = True,
    ignore_empty: bool = True,
    num_classes: Optional[int] = None,
    per_component: bool = False,
    ignore_index: Optional[int] = None,
) -> torch.Tensor:
    """``monai.metrics.compute_dice``: Dice per batch item and class, same arguments and results.

    Args:
        y_pred: binary/one-hot ``(B, C, *spatial)``, or class indices ``(B, 1, *spatial)`` with ``num_classes``.
        y: the reference, one-hot ``(B, C, *spatial)`` or class indices ``(B, 1, *spatial)``.
        include_background: keep class 0 (default True).
        ignore_empty: NaN for an empty reference (default) instead of 1 (both empty) / 0.
        num_classes: number of classes of index maps (default ``y_pred.shape[1]``).
        per_component: MONAI's per-component Dice of binary ``(B, 2, *spatial)`` maps (2 or 3 spatial dims):
            every voxel goes to its nearest connected component of the reference (Voronoi regions of the
            fully connected components, by an exact EDT), Dice per region, their mean; ``(B, 1)``.
        ignore_index: a label (index maps) or a class / sentinel (one-hot ``y``) whose voxels are excluded.

    Returns:
        ``(B, C')`` float32, as :func:`dice` (which this calls for one-hot masks).

    Raises:
        TypeError / ValueError: as :func:`dice`; for ``per_component``, inputs that are not matching
            ``(B, 2, *spatial)`` maps with 2 or 3 spatial dims (ValueError, as MONAI). Where MONAI fails on
            mismatched shapes by accident, the error is also MONAI's type: batch or spatial shapes that
            differ raise a ShapeMismatchError (ValueError, AssertionError) that is a RuntimeError too,
            channel counts that fit neither one-hot nor index maps one that is an IndexError too.
            ``num_classes`` not an int: TypeError (as MONAI); below 1: ValueError (MONAI computes channel 1).

    ``(B, C)`` maps (no spatial dims) and maps with more than 3 spatial dims are taken, as MONAI takes them.

    Example:
        >>> y = torch.tensor([[[[0, 1], [2, 2]]]])  # (1, 1, 2, 2) class indices
        >>> compute_dice(y, y, num_classes=3)
        tensor([[1., 1., 1.]])
    """
    y_pred, y = to_tensor(y_pred, "y_pred"), to_tensor(y, "y")
    if per_component:
        return _per_component_dice(y_pred, y, ignore_empty)
    if y_pred.ndim < 2 or y.ndim < 2:
        raise ValueError(
            f"y_pred and y must have shape (B, C, *spatial) or (B, C), got {tuple(y_pred.shape)} and {tuple(y.shape)}"
        )
    if num_classes is not None:
        if isinstance(num_classes, bool) or not isinstance(num_classes, int):
            raise TypeError(f"num_classes must be a positive int or None, got {type(num_classes).__name__}")
        if num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
    if y_pred.ndim != y.ndim or y_pred.shape[0] != y.shape[0] or y_pred.shape[2:] != y.shape[2:]:
        # MONAI fails in a broadcast here (RuntimeError); this error is also a ValueError and an AssertionError
        raise ShapeRuntimeError(
            f"y_pred and y must have the same batch size and spatial shape, got {tuple(y_pred.shape)} (y_pred) and "
            f"{tuple(y.shape)} (y)"
        )
    n = num_classes if num_classes is not None else y_pred.shape[1]
    for x, name in ((y_pred, "y_pred"), (y, "y")):
        if x.shape[1] not in (1, n):
            # MONAI indexes a channel that is not there (IndexError); this error is also a ValueError
            raise ChannelIndexError(
                f"{name} must have 1 channel (class indices) or {n} (one-hot; num_classes or y_pred's channels), "
                f"got shape {tuple(x.shape)}"
            )
    if y_pred.ndim == 2:  # (B, C) without spatial dims (classification), as MONAI takes them
        y_pred, y = y_pred[..., None], y[..., None]
    elif y_pred.ndim > 5:  # more than 3 spatial dims: Dice only counts, so the voxels may be one axis
        y_pred, y = y_pred.flatten(2), y.flatten(2)
    keep = _keep_mask(y, ignore_index)  # from y as given (labels or one-hot), as MONAI
    if n > 1:  # index maps become one-hot masks; a single channel stays a binary mask
        if y_pred.shape[1] == 1:
            y_pred = _label_onehot(y_pred, n)
        if y.shape[1] == 1:
            y = _label_onehot(y, n)
    if keep is not None:
        y_pred, y = y_pred * keep, y * keep
    return dice(y_pred, y, include_background=include_background, ignore_empty=ignore_empty)


def _per_component_dice(y_pred: torch.Tensor, y: torch.Tensor, ignore_empty: bool) -> torch.Tensor:
    """MONAI's per-component Dice (``DiceHelper.compute_cc_dice``), one batch item at a time."""
    if not (y_pred.ndim == y.ndim and y_pred.ndim in (4, 5) and y_pred.shape == y.shape and y_pred.shape[1] == 2):
        raise ValueError(
            "per_component requires matching 4D/5D binary tensors (B, 2, H, W) or (B, 2, D, H, W); "
            f"got y_pred={tuple(y_pred.shape)}, y={tuple(y.shape)}"
        )
    from scipy import ndimage  # lazy: only this option needs scipy

    out = torch.empty((y.shape[0], 1), dtype=torch.float32)
    for b in range(y.shape[0]):
        pred = y_pred[b].argmax(0).cpu().numpy().astype(bool)
        ref = y[b].argmax(0).cpu().numpy().astype(bool)
        if not ref.any():  # MONAI's empty-reference conventions
            out[b] = float("nan") if ignore_empty else float(not pred.any())
            continue
        # fully connected components of the reference; each voxel joins the nearest one (Voronoi region)
        cc, n = ndimage.label(ref, structure=ndimage.generate_binary_structure(ref.ndim, ref.ndim))
        nearest = ndimage.distance_transform_edt(cc == 0, return_distances=False, return_indices=True)
        region = torch.from_numpy(cc[tuple(nearest)].astype(np.int64)).reshape(-1) - 1  # 0 .. n-1
        # per region: counts of (ref, pred) = (0, 1) false positives, (1, 0) false negatives, (1, 1) hits
        code = torch.from_numpy(ref.reshape(-1).astype(np.int64) * 2 + pred.reshape(-1))
        hist = torch.bincount(region * 4 + code, minlength=4 * n).reshape(n, 4)
        fp, fn, tp = hist[:, 1], hist[:, 2], hist[:, 3]
        denom = 2 * tp + fp + fn
        scores = torch.where(denom > 0, 2 * tp.float() / denom.float(), torch.ones(()))
        out[b] = scores.mean()
    return out.to(y_pred.device)


def compute_hausdorff_distance(
    y_pred,
    y,
    include_background: bool = False,
    distance_metric: str = "euclidean",
    percentile: Optional[float] = None,
    directed: bool = False,
    spacing=None,
    ignore_index: Optional[int] = None,
) -> torch.Tensor:
    """``monai.metrics.compute_hausdorff_distance``: same arguments, defaults and results.

    Unlike :func:`hausdorff_distance` (HD95 by default), ``percentile=None`` (the default) is the
    maximum; ``percentile=0`` is also the maximum, as in MONAI. ``spacing``: a number, one per spatial
    axis, or a list with one entry per image. ``ignore_index``: NaN for that class (as MONAI, this
    function masks no voxel; :class:`HausdorffDistanceMetric` does).

    Example:
        >>> p = torch.zeros(1, 1, 5, 5); p[0, 0, 1, 1] = 1
        >>> g = torch.zeros(1, 1, 5, 5); g[0, 0, 4, 1] = 1
        >>> compute_hausdorff_distance(p, g, include_background=True)
        tensor([[3.]])
    """
    metric = _check_distance_metric(distance_metric)
    q = None if not percentile else percentile  # MONAI: 0 and None both mean the maximum
    y_pred = to_tensor(y_pred, "y_pred")

    def hd(a, b, spacing):
        return border_metrics(
            a, b, include_background, spacing, percentile=q, want_hd=True, directed=directed, metric=metric
        )[1]

    out = _by_spacing(hd, y_pred, y, spacing)
    return _nan_ignored_class(out, ignore_index, include_background, y_pred.shape[1])


def _nan_ignored_class(out: torch.Tensor, ignore_index, include_background: bool, C: int) -> torch.Tensor:
    off = 0 if include_background or C == 1 else 1
    if isinstance(ignore_index, (float, np.floating)) and float(ignore_index).is_integer():
        ignore_index = int(ignore_index)
    elif not isinstance(ignore_index, (int, np.integer)) or isinstance(ignore_index, bool):
        return out  # no class has this index (MONAI's function only compares it with class indices)
    if 0 <= ignore_index - off < out.shape[1]:
        out = out.clone()
        out[:, ignore_index - off] = float("nan")
    return out


def compute_surface_dice(
    y_pred,
    y,
    class_thresholds,
    include_background: bool = False,
    distance_metric: str = "euclidean",
    spacing=None,
    use_subvoxels: bool = False,
    ignore_index: Optional[int] = None,
) -> torch.Tensor:
    """``monai.metrics.compute_surface_dice``: NSD with one tolerance per evaluated class.

    Same arguments and results as MONAI. ``use_subvoxels=False`` (default): border voxels counted.
    ``use_subvoxels=True`` (2D and 3D): DeepMind's surface elements, the cells of voxel centres the
    marching-cubes surface passes through (the masks' box with one layer of background around it), each
    weighted by its surface area (3D) or contour length (2D) for the spacing; distances between cells as
    between voxels (``distance_metric`` as MONAI: Euclidean with spacing, or chessboard/taxicab grid
    steps). ``spacing`` may be a number (MONAI's subvoxel path takes sequences only), a sequence, or a
    per-image list. ``class_thresholds``: one per evaluated class (ValueError otherwise, as MONAI). Maps
    must be 2D or 3D ``(B, C, H, W[, D])``, as MONAI's (:func:`surface_dice` takes 1D too); the argument
    checks raise MONAI's errors with MONAI's messages.
    Conventions: both masks empty -> NaN; one empty -> 0.

    Example:
        >>> p = torch.zeros(1, 1, 6, 6); p[0, 0, 1:4, 1:4] = 1
        >>> compute_surface_dice(p, p, [0.0], include_background=True)
        tensor([[1.]])
    """
    metric = _check_distance_metric(distance_metric)
    if not isinstance(class_thresholds, (Sequence, np.ndarray, torch.Tensor)) or isinstance(class_thresholds, str):
        raise TypeError(f"class_thresholds must be a list of numbers, got {type(class_thresholds).__name__}")
    y_pred, y = _apply_ignore_mask(y_pred, y, ignore_index)
    tol = list(class_thresholds.reshape(-1).tolist() if isinstance(class_thresholds, (np.ndarray, torch.Tensor)) else class_thresholds)
    # MONAI's checks, in MONAI's order and words (its unit tests compare the messages); the shapes are those
    # after the background channel is dropped
    a, b = to_tensor(y_pred, "y_pred"), to_tensor(y, "y")
    if a.ndim not in (4, 5) or b.ndim not in (4, 5):
        raise ValueError("y_pred and y should be one-hot encoded: [B,C,H,W] or [B,C,H,W,D].")
    drop = lambda s: s if include_background or s[1] == 1 else s[:1] + torch.Size([s[1] - 1]) + s[2:]  # noqa: E731
    if a.shape != b.shape:
        raise ShapeMismatchError(
            f"y_pred and y should have same shape, but instead, shapes are {drop(a.shape)} (y_pred) and "
            f"{drop(b.shape)} (y)."
        )
    n_class = drop(a.shape)[1]
    if n_class != len(tol):  # one threshold per evaluated class, no broadcasting of a single value
        raise ValueError(f"number of classes ({n_class}) does not match number of class thresholds ({len(tol)}).")
    try:
        tol = [float(t) for t in tol]
    except (TypeError, ValueError):
        raise TypeError(f"class_thresholds must be numbers, got {tol!r}") from None
    if not all(math.isfinite(t) for t in tol):
        raise ValueError("All class thresholds need to be finite.")
    if any(t < 0 for t in tol):
        raise ValueError("All class thresholds need to be >= 0.")

    def nsd(a, b, spacing):
        if use_subvoxels:
            return surface_dice_subvoxels(a, b, tol, include_background, spacing, metric)
        return border_metrics(a, b, include_background, spacing, tolerance=tol, metric=metric)[0]

    return _by_spacing(nsd, y_pred, y, spacing)


def compute_average_surface_distance(
    y_pred,
    y,
    include_background: bool = False,
    symmetric: bool = False,
    distance_metric: str = "euclidean",
    spacing=None,
    ignore_index: Optional[int] = None,
) -> torch.Tensor:
    """``monai.metrics.compute_average_surface_distance``: the mean distance from the prediction's border
    voxels to the reference border (with ``symmetric``, the mean over both directions' distances pooled).

    Conventions (MONAI's): one empty mask -> ``inf``; both empty -> NaN. ``distance_metric`` as MONAI.
    ``ignore_index`` is accepted and, as in MONAI's function, changes nothing here
    (:class:`SurfaceDistanceMetric` masks the ignored voxels).

    Example:
        >>> p = torch.zeros(1, 1, 5, 5); p[0, 0, 1, 1] = 1
        >>> g = torch.zeros(1, 1, 5, 5); g[0, 0, 3, 1] = 1
        >>> compute_average_surface_distance(p, g, include_background=True)
        tensor([[2.]])
    """
    metric = _check_distance_metric(distance_metric)

    def asd(a, b, spacing):
        return border_metrics(a, b, include_background, spacing, want_asd=True, directed=not symmetric, metric=metric)[1]

    return _by_spacing(asd, y_pred, y, spacing)


def do_metric_reduction(f: torch.Tensor, reduction: str = "mean"):
    """MONAI's ``do_metric_reduction``: reduce a ``(B, C)`` metric over its non-NaN values.

    Returns ``(reduced, not_nans)``. ``"mean"`` averages over classes per image, then over the images
    that have a value; ``"*_batch"`` reduces over images per class, ``"*_channel"`` over classes per
    image; an all-NaN group gives 0. ``f`` is not modified.
    """
    reduction = getattr(reduction, "value", reduction)
    if reduction not in _METRIC_REDUCTIONS:
        raise ValueError(f"reduction must be one of {list(_METRIC_REDUCTIONS)}, got {reduction!r}")
    nans = torch.isnan(f)
    not_nans = (~nans).float()
    if reduction == "none":
        return f, not_nans
    f = torch.where(nans, torch.zeros((), dtype=f.dtype, device=f.device), f)
    zero = torch.zeros(1, device=f.device, dtype=torch.float)

    def mean(dim):
        n = not_nans.sum(dim=dim)
        return torch.where(n > 0, f.sum(dim=dim).float() / n, zero), n

    if reduction == "mean":
        per_image, n = mean(1)  # mean over classes, then over the images with at least one value
        n_img = (n > 0).sum(dim=0).float()
        return torch.where(n_img > 0, per_image.sum(dim=0) / n_img, zero), n_img
    if reduction == "sum":
        return f.sum(dim=[0, 1]), not_nans.sum(dim=[0, 1])
    dim = 0 if reduction.endswith("batch") else 1
    if reduction.startswith("mean"):
        return mean(dim)
    return f.sum(dim=dim).float(), not_nans.sum(dim=dim)


class _CumulativeMetric:
    """MONAI's cumulative metric API: ``__call__`` per batch (a batch-first tensor, or lists of
    channel-first tensors, each its own batch item), ``aggregate()``, ``reset()``, ``get_buffer()``."""

    def __init__(self, reduction: str = "mean", get_not_nans: bool = False) -> None:
        reduction = getattr(reduction, "value", reduction)
        if reduction not in _METRIC_REDUCTIONS:
            raise ValueError(f"reduction must be one of {list(_METRIC_REDUCTIONS)}, got {reduction!r}")
        self.reduction = reduction
        self.get_not_nans = bool(get_not_nans)
        self._buffer: list = []

    def _compute(self, y_pred: torch.Tensor, y: torch.Tensor, **kwargs) -> torch.Tensor:  # pragma: no cover
        raise NotImplementedError

    def __call__(self, y_pred, y=None, **kwargs) -> torch.Tensor:
        if y is None:
            raise ValueAttributeError(f"{type(self).__name__} needs both y_pred and y")
        # MONAI's words where its unit tests compare them
        kinds = "y_pred or y must be a list/tuple of `channel-first` Tensors or a `batch-first` Tensor."
        if isinstance(y_pred, (list, tuple)) or isinstance(y, (list, tuple)):
            # MONAI pairs the items up; a batch-first tensor on one side gives its batch items
            if not all(isinstance(x, (list, tuple, torch.Tensor)) for x in (y_pred, y)):
                raise ValueError(kinds)
            if len(y_pred) != len(y):
                raise ValueError(f"y_pred and y must hold the same number of items, got {len(y_pred)} and {len(y)}")
            if len(y_pred) == 0:
                raise EmptyListError("y_pred and y must not be empty lists")
            if not all(isinstance(t, torch.Tensor) for t in list(y_pred) + list(y)):
                raise ValueAttributeError(f"{kinds} The lists hold {sorted({type(t).__name__ for t in list(y_pred) + list(y)})}.")
            # items of one shape are evaluated as one batch (no per-item loop); others one at a time
            items_p = [p.detach() for p in y_pred]
            items_y = [t.detach() for t in y]
            if all(p.shape == items_p[0].shape for p in items_p) and all(t.shape == items_y[0].shape for t in items_y):
                ret = self._compute(torch.stack(items_p), torch.stack(items_y), **kwargs)
            else:
                ret = torch.cat([self._compute(p[None], t[None], **kwargs) for p, t in zip(items_p, items_y)])
        else:
            if not (isinstance(y_pred, torch.Tensor) and isinstance(y, torch.Tensor)):
                # MONAI: ValueError for y_pred; a y that is no tensor reaches its functions as None
                if not isinstance(y_pred, torch.Tensor):
                    raise ValueError(kinds)
                raise ValueAttributeError("y_pred and y must be PyTorch Tensor.")
            y_pred, y = y_pred.detach(), y.detach()
            if y_pred.ndim < 3:
                raise ValueError(
                    f"y_pred must have at least 3 dimensions (batch, channel, spatial), got shape {tuple(y_pred.shape)}"
                )
            ret = self._compute(y_pred, y, **kwargs)
        self._buffer.append(ret)
        return ret

    def reset(self) -> None:
        """Empty the buffer of per-batch results."""
        self._buffer = []

    def get_buffer(self) -> Optional[torch.Tensor]:
        """Every result since the last ``reset()``, concatenated along the batch dim (None when empty)."""
        if not self._buffer:
            return None
        return torch.cat(self._buffer, dim=0)

    def aggregate(self, reduction: Optional[str] = None):
        """Reduce the buffer with ``reduction`` (default: the constructor's); ``(value, not_nans)`` when
        ``get_not_nans``."""
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError("there is nothing to aggregate: call the metric on a batch first")
        f, not_nans = do_metric_reduction(data.clone(), reduction or self.reduction)
        return (f, not_nans) if self.get_not_nans else f


class DiceMetric(_CumulativeMetric):
    """``monai.metrics.DiceMetric``: :func:`compute_dice` per batch, accumulated.

    Args: as MONAI 1.6.1 (``include_background=True``, ``reduction="mean"``, ``get_not_nans=False``,
    ``ignore_empty=True``, ``num_classes=None``, ``return_with_label=False``, ``per_component=False``,
    ``ignore_index=None``). ``return_with_label`` (True or a list of names) makes
    ``aggregate()`` return ``{label: value}`` rounded to 4 digits when the reduction is ``"mean_batch"``.

    Example:
        >>> metric = DiceMetric(include_background=False, num_classes=3)  # index maps need num_classes
        >>> y = torch.tensor([[[[0, 1], [2, 2]]]])
        >>> _ = metric(y, y)
        >>> metric.aggregate()
        tensor([1.])
    """

    def __init__(
        self,
        include_background: bool = True,
        reduction: str = "mean",
        get_not_nans: bool = False,
        ignore_empty: bool = True,
        num_classes: Optional[int] = None,
        return_with_label=False,
        per_component: bool = False,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(reduction, get_not_nans)
        self.per_component = per_component
        self.include_background = include_background
        self.ignore_empty = ignore_empty
        self.num_classes = num_classes
        self.return_with_label = return_with_label
        self.ignore_index = ignore_index

    def _compute(self, y_pred, y, **kwargs):
        return compute_dice(
            y_pred, y, self.include_background, self.ignore_empty, self.num_classes, self.per_component,
            self.ignore_index,
        )

    def aggregate(self, reduction: Optional[str] = None):
        out = super().aggregate(reduction)
        f, not_nans = out if self.get_not_nans else (out, None)
        if self.reduction == "mean_batch" and self.return_with_label:
            if isinstance(self.return_with_label, bool):
                first = 0 if self.include_background else 1
                keys = [f"label_{i + first}" for i in range(len(f))]
            else:
                keys = list(self.return_with_label)
            f = {k: round(v.item(), 4) for k, v in zip(keys, f)}
        return (f, not_nans) if self.get_not_nans else f


class HausdorffDistanceMetric(_CumulativeMetric):
    """``monai.metrics.HausdorffDistanceMetric``: :func:`compute_hausdorff_distance` per batch,
    accumulated; ``spacing`` goes to ``__call__`` as a keyword, as in MONAI.

    Example:
        >>> p = torch.zeros(1, 2, 5, 5); p[0, 1, 1, 1] = 1
        >>> g = torch.zeros(1, 2, 5, 5); g[0, 1, 4, 1] = 1
        >>> metric = HausdorffDistanceMetric(); _ = metric(p, g, spacing=2.0); metric.aggregate()
        tensor([6.])
    """

    def __init__(
        self,
        include_background: bool = False,
        distance_metric: str = "euclidean",
        percentile: Optional[float] = None,
        directed: bool = False,
        reduction: str = "mean",
        get_not_nans: bool = False,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(reduction, get_not_nans)
        self.include_background = include_background
        self.distance_metric = _check_distance_metric(distance_metric)
        self.percentile = percentile
        self.directed = directed
        self.ignore_index = ignore_index

    def _compute(self, y_pred, y, **kwargs):
        y_pred, y = _apply_ignore_mask(y_pred, y, self.ignore_index)
        return compute_hausdorff_distance(
            y_pred, y, self.include_background, self.distance_metric, self.percentile, self.directed,
            spacing=kwargs.get("spacing"), ignore_index=self.ignore_index,
        )


class SurfaceDiceMetric(_CumulativeMetric):
    """``monai.metrics.SurfaceDiceMetric``: :func:`compute_surface_dice` per batch, accumulated
    (``use_subvoxels=True``: the area-weighted NSD on surface elements; ``spacing`` goes to ``__call__``).

    Example:
        >>> p = torch.zeros(1, 2, 6, 6); p[0, 1, 1:4, 1:4] = 1
        >>> metric = SurfaceDiceMetric([1.0]); _ = metric(p, p); metric.aggregate()
        tensor([1.])
    """

    def __init__(
        self,
        class_thresholds,
        include_background: bool = False,
        distance_metric: str = "euclidean",
        reduction: str = "mean",
        get_not_nans: bool = False,
        use_subvoxels: bool = False,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(reduction, get_not_nans)
        self.class_thresholds = class_thresholds
        self.include_background = include_background
        self.distance_metric = _check_distance_metric(distance_metric)
        self.use_subvoxels = use_subvoxels
        self.ignore_index = ignore_index

    def _compute(self, y_pred, y, **kwargs):
        return compute_surface_dice(
            y_pred, y, self.class_thresholds, self.include_background, self.distance_metric,
            spacing=kwargs.get("spacing"), use_subvoxels=self.use_subvoxels, ignore_index=self.ignore_index,
        )


class SurfaceDistanceMetric(_CumulativeMetric):
    """``monai.metrics.SurfaceDistanceMetric``: :func:`compute_average_surface_distance` per batch,
    accumulated.

    Example:
        >>> p = torch.zeros(1, 2, 5, 5); p[0, 1, 1, 1] = 1
        >>> g = torch.zeros(1, 2, 5, 5); g[0, 1, 3, 1] = 1
        >>> metric = SurfaceDistanceMetric(symmetric=True); _ = metric(p, g); metric.aggregate()
        tensor([2.])
    """

    def __init__(
        self,
        include_background: bool = False,
        symmetric: bool = False,
        distance_metric: str = "euclidean",
        reduction: str = "mean",
        get_not_nans: bool = False,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(reduction, get_not_nans)
        self.include_background = include_background
        self.symmetric = symmetric
        self.distance_metric = _check_distance_metric(distance_metric)
        self.ignore_index = ignore_index

    def _compute(self, y_pred, y, **kwargs):
        y_pred, y = _apply_ignore_mask(y_pred, y, self.ignore_index)
        return compute_average_surface_distance(
            y_pred, y, self.include_background, self.symmetric, self.distance_metric,
            spacing=kwargs.get("spacing"), ignore_index=self.ignore_index,
        )
