"""Input checks of the metrics, with MONAI's error types.

Every metric of :mod:`fastloss.metrics` checks its masks here: tensors or numpy arrays of shape
``(B, C, *spatial)`` (1 to 3 spatial dims for fastloss's own functions), the same shape and device for
the prediction and the reference, real values that are all 0 or 1 (:func:`check_binary`), and the
arguments of the surface metrics (:func:`check_percentile`, :func:`check_tolerance`).

Where MONAI's functions fail on such input by accident (a broadcast, a missing channel, reading
``.shape`` of something that is no tensor), the error classes below are two exceptions at once: the one
fastloss documents and the one MONAI raises, so that code catching either library's error keeps working.

The ground of the package: this module imports only :mod:`fastloss._validation`.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from .._validation import ShapeMismatchError


class ShapeRuntimeError(ShapeMismatchError, RuntimeError):
    """Shapes that do not match where MONAI's function fails in a broadcast (a RuntimeError): a
    :class:`~fastloss._validation.ShapeMismatchError` (ValueError and AssertionError) and a RuntimeError,
    so that code catching either library's error keeps working."""


class ChannelIndexError(ShapeMismatchError, IndexError):
    """Channel counts that do not match where MONAI indexes a missing channel (an IndexError): a
    :class:`~fastloss._validation.ShapeMismatchError` and an IndexError."""


class NotATensorError(TypeError, AttributeError):
    """An input that is no tensor or array: a TypeError, and an AttributeError as MONAI's functions raise
    (they read ``.shape`` of whatever they get)."""


class EmptyListError(ValueError, IndexError):
    """A metric object called with empty lists: a ValueError, and an IndexError as MONAI raises."""


class ValueAttributeError(ValueError, AttributeError):
    """A metric object called without ``y``, or with lists of items that are no tensors: a ValueError, and
    an AttributeError as MONAI raises (it reads tensor attributes of whatever it gets)."""


def to_tensor(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        # np.ascontiguousarray keeps a negative stride on a size-1 axis and a non-native byte order, which
        # torch.from_numpy refuses: copy those
        if any(st < 0 for st in a.strides) or not a.dtype.isnative:
            a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
        return torch.from_numpy(a)
    if not isinstance(x, torch.Tensor):
        raise NotATensorError(
            f"{name} must be a torch.Tensor or numpy array of shape (B, C, *spatial), got {type(x).__name__}"
        )
    return x


def check_binary(x: torch.Tensor, name: str) -> torch.Tensor:
    """Return ``x != 0`` after checking every value is 0 or 1 (bool, integer or float masks)."""
    if x.dtype.is_complex:
        raise TypeError(f"{name} must be a real binary mask, got dtype {x.dtype}")
    if x.dtype == torch.bool:
        return x
    nonzero = x != 0
    bad = nonzero & (x != 1)
    if bool(bad.any()):
        values = torch.unique(x[bad].detach())[:8].tolist()
        raise ValueError(
            f"{name} must be a binary (0/1) or one-hot mask; found values {values}. "
            "Threshold probabilities or one-hot encode label maps first."
        )
    return nonzero


def check_pair(y_pred, y, include_background: bool):
    """Shape, device and type checks of a (y_pred, y) pair of masks (values are checked later)."""
    y_pred = to_tensor(y_pred, "y_pred")
    y = to_tensor(y, "y")
    if not isinstance(include_background, bool):
        raise TypeError(f"include_background must be a bool, got {type(include_background).__name__}")
    if y_pred.ndim not in (3, 4, 5):
        raise ValueError(
            f"y_pred must have shape (B, C, *spatial) with 1 to 3 spatial dims (3 to 5 dims), "
            f"got shape {tuple(y_pred.shape)}"
        )
    if tuple(y_pred.shape) != tuple(y.shape):
        raise ValueError(
            f"y_pred and y must have the same shape (B, C, *spatial), got {tuple(y_pred.shape)} (y_pred) "
            f"and {tuple(y.shape)} (y)"
        )
    if y_pred.numel() == 0:
        raise ValueError(f"y_pred and y must not be empty, got shape {tuple(y_pred.shape)}")
    if y_pred.device != y.device:
        raise ValueError(f"y_pred is on {y_pred.device} but y is on {y.device}")
    for x, name in ((y_pred, "y_pred"), (y, "y")):
        if x.dtype.is_complex:
            raise TypeError(f"{name} must be a real binary mask, got dtype {x.dtype}")
    return y_pred, y


def prepare(y_pred, y, include_background: bool):
    """Check a (y_pred, y) pair of masks; return bool tensors with the background channel dropped
    (MONAI's ``ignore_background``: the first channel goes only when there is more than one)."""
    y_pred, y = check_pair(y_pred, y, include_background)
    p = check_binary(y_pred, "y_pred")
    g = check_binary(y, "y")
    if not include_background and p.shape[1] > 1:
        p, g = p[:, 1:], g[:, 1:]
    return p, g


def check_percentile(percentile) -> Optional[float]:
    if percentile is None:
        return None
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)):
        raise TypeError(f"percentile must be a number in [0, 100] or None, got {type(percentile).__name__}")
    if not (0 <= percentile <= 100):
        raise ValueError(f"percentile must lie in [0, 100], got {percentile}")
    return float(percentile)


def check_tolerance(tolerance, num_classes: int) -> torch.Tensor:
    if isinstance(tolerance, torch.Tensor):
        tol = tolerance.detach().to("cpu", torch.float64).reshape(-1)
    elif isinstance(tolerance, (int, float, np.floating, np.integer)) and not isinstance(tolerance, bool):
        tol = torch.full((num_classes,), float(tolerance), dtype=torch.float64)
    else:
        try:
            tol = torch.tensor([float(t) for t in tolerance], dtype=torch.float64)
        except (TypeError, ValueError):
            raise TypeError(
                f"tolerance must be a number or a sequence of {num_classes} numbers (one per evaluated class), "
                f"got {tolerance!r}"
            ) from None
    if tol.numel() == 1 and num_classes != 1:
        tol = tol.expand(num_classes)
    if tol.numel() != num_classes:
        raise ValueError(
            f"tolerance must be one number or one per evaluated class ({num_classes}, after dropping the "
            f"background channel when include_background=False), got {tol.numel()} values: {tol.tolist()}"
        )
    if not bool(torch.isfinite(tol).all()):
        raise ValueError(f"tolerance values must be finite, got {tol.tolist()}")
    if bool((tol < 0).any()):
        raise ValueError(f"tolerance values must be >= 0, got {tol.tolist()}")
    return tol
