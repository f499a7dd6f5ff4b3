"""Class weights from a training set's label frequencies, as the paper used them for WCE and ELL.

Ma et al. (2021, Sec. 2.1.1) set the weighted cross entropy's ``w_c`` (Eq. 2) to "the reciprocal of the
class frequency in the training set"; Wong et al. (2018), whose exponential logarithmic loss is Eq. (23),
weigh label ``l`` by ``((Σ_k f_k) / f_l)^0.5`` with ``f_k`` the number of voxels of label ``k``. Both are
constants of the training set, not of a batch: count the labels once, build the loss with ``weight=``.

- :func:`class_counts`: the voxel count ``n_c`` of every class over an iterable of label volumes;
- :func:`class_weights`: the weights from label volumes or from a counts vector.

Example:
    >>> import torch
    >>> import fastloss
    >>> train_labels = [torch.randint(0, 3, (32, 32, 32)) for _ in range(4)]
    >>> wce = fastloss.get_loss("WCE", weight=fastloss.class_weights(train_labels, 3))
    >>> ell = fastloss.get_loss("ELL", weight=fastloss.class_weights(train_labels, 3, scheme="ell"))
"""

from __future__ import annotations

import numbers
import warnings
from typing import Iterable, Optional, Union

import numpy as np
import torch

__all__ = ["SCHEMES", "class_counts", "class_weights"]

SCHEMES = ("wce", "ell")

CountsLike = Union[torch.Tensor, np.ndarray, Iterable]


def _check_int(value, name: str, *, minimum: Optional[int] = None, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _as_label_tensor(vol, i: int) -> torch.Tensor:
    """Volume ``i`` as a flat int64 CPU tensor (integer/bool data, or floats holding whole numbers)."""
    if isinstance(vol, np.ndarray):
        vol = torch.from_numpy(np.ascontiguousarray(vol))
    if not isinstance(vol, torch.Tensor):
        raise TypeError(f"label volume {i} must be a torch.Tensor or numpy array, got {type(vol).__name__}")
    if vol.dtype.is_complex:
        raise TypeError(f"label volume {i} must hold integer labels, got dtype {vol.dtype}")
    vol = vol.detach().reshape(-1).cpu()
    if vol.is_floating_point():
        # Label maps read from NIfTI files often come as floats; accept them when every value is whole.
        bad = ~torch.isfinite(vol) | (vol != torch.round(vol))
        if bool(bad.any()):
            raise ValueError(f"label volume {i} must hold integer labels, got the value {vol[bad][0].item()!r}")
    return vol.long()


def class_counts(volumes: Iterable, num_classes: int, *, ignore_index: Optional[int] = None) -> torch.Tensor:
    """The number of voxels of each class over an iterable of integer label volumes.

    Args:
        volumes: an iterable (list, generator, dataset) of label volumes, each a torch tensor or numpy array
            of any shape holding integer labels (floats holding whole numbers are accepted too).
        num_classes: the number of classes ``C`` (labels are ``0 .. C-1``).
        ignore_index: a label whose voxels are not counted (e.g. 255), or None.

    Returns:
        A float64 tensor ``(C,)`` (on the CPU) of voxel counts ``n_c``.

    Raises:
        TypeError: ``volumes`` a single tensor/array or not iterable; a volume that is not a tensor/array or
            holds no integer labels; ``num_classes``/``ignore_index`` not ints.
        ValueError: ``num_classes < 1``; no volume; a label outside ``[0, C)`` other than ``ignore_index``.

    Example:
        >>> import torch
        >>> from fastloss.class_weights import class_counts
        >>> class_counts([torch.tensor([0, 0, 1]), torch.tensor([[2, 0], [255, 1]])], 3, ignore_index=255)
        tensor([3., 2., 1.], dtype=torch.float64)
    """
    num_classes = _check_int(num_classes, "num_classes", minimum=1)
    ignore_index = _check_int(ignore_index, "ignore_index", allow_none=True)
    if isinstance(volumes, (torch.Tensor, np.ndarray)):
        raise TypeError("volumes must be an iterable of label volumes; wrap a single volume in a list")
    try:
        it = iter(volumes)
    except TypeError:
        raise TypeError(f"volumes must be an iterable of label volumes, got {type(volumes).__name__}") from None
    counts = torch.zeros(num_classes + 1, dtype=torch.int64)  # last bin: ignored voxels
    n_vol = 0
    for i, vol in enumerate(it):
        lab = _as_label_tensor(vol, i)
        n_vol += 1
        ignored = lab == ignore_index if ignore_index is not None else torch.zeros_like(lab, dtype=torch.bool)
        inside = (lab >= 0) & (lab < num_classes) & ~ignored
        bad = ~(inside | ignored)
        if bool(bad.any()):
            v = int(lab[bad][0])
            hint = " (pass ignore_index for a label that marks unlabelled voxels)" if ignore_index is None else ""
            raise ValueError(f"label volume {i} has the label {v}, outside [0, {num_classes}){hint}")
        binned = torch.where(inside, lab, torch.full_like(lab, num_classes))  # ignored voxels -> bin C
        counts += torch.bincount(binned, minlength=num_classes + 1)
    if n_vol == 0:
        raise ValueError("volumes is empty: no label volume to count")
    return counts[:num_classes].to(torch.float64)


def _counts_vector(source) -> Optional[torch.Tensor]:
    """``source`` as a float64 counts vector when it is one (a tensor/array, or a sequence of numbers)."""
    if isinstance(source, (torch.Tensor, np.ndarray)):
        t = torch.as_tensor(source).detach().cpu()
        if t.ndim != 1:
            raise ValueError(
                f"a single tensor/array is read as a counts vector and must be 1-D, got shape {tuple(t.shape)}; "
                "pass label volumes as a list"
            )
        if t.dtype == torch.bool or t.dtype.is_complex:
            raise TypeError(f"a counts vector must hold real numbers, got dtype {t.dtype}")
        return t.to(torch.float64)
    if isinstance(source, (list, tuple)) and source and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) for v in source
    ):
        return torch.tensor([float(v) for v in source], dtype=torch.float64)
    return None


def class_weights(
    source: CountsLike,
    num_classes: Optional[int] = None,
    *,
    scheme: str = "wce",
    ignore_index: Optional[int] = None,
) -> torch.Tensor:
    r"""Per-class loss weights from the training set's label frequencies (the paper's WCE and ELL weights).

    With ``n_c`` the number of voxels of class ``c`` in the training set and ``N = Σ_c n_c``:

    .. math::
        \texttt{"wce"}:\ w_c = \frac{1}{f_c} = \frac{N}{n_c}\qquad
        \texttt{"ell"}:\ w_c = \Big(\frac{N}{n_c}\Big)^{1/2}

    ``"wce"`` is the reciprocal class frequency of Sec. 2.1.1 (Eq. 2), ``"ell"`` Wong et al.'s label weight
    ``((Σ_k f_k)/f_l)^{0.5}`` of Eq. (23). Pass the result as ``weight=`` to ``get_loss("WCE")`` or
    ``get_loss("ELL")`` (or :class:`~fastloss.WeightedCrossEntropyLoss` / :class:`~fastloss.ExpLogLoss`).
    Their means divide by ``Σ_i w_{y_i}`` (torch's weighted-mean convention), so only the ratios of the
    weights matter there; the scale is the paper's. A class that never occurs gets weight 0 (it has no voxel
    to weigh; its ``1/f_c`` would be infinite) and a warning.

    Args:
        source: an iterable of integer label volumes (tensors or numpy arrays, counted with
            :func:`class_counts`), or a counts vector: a 1-D tensor/array or a list/tuple of numbers
            ``n_c >= 0`` (a single tensor/array is always read as a counts vector).
        num_classes: ``C``; required with label volumes, optional with a counts vector (then it must equal
            its length).
        scheme: ``"wce"`` (default) or ``"ell"``.
        ignore_index: a label not counted (label volumes only), or None.

    Returns:
        A float64 tensor ``(C,)`` on the CPU.

    Raises:
        TypeError: a bad ``source`` (see :func:`class_counts`), ``num_classes``/``ignore_index`` not ints,
            ``scheme`` not a string.
        ValueError: an unknown ``scheme``; label volumes without ``num_classes``; a counts vector with a
            negative or non-finite count, fewer than 2 entries, no voxel at all, or a length other than
            ``num_classes``; label errors as :func:`class_counts`.

    Example:
        >>> import torch
        >>> from fastloss.class_weights import class_weights
        >>> class_weights([90, 10])
        tensor([ 1.1111, 10.0000], dtype=torch.float64)
        >>> class_weights([torch.tensor([0, 0, 0, 1])], 2, scheme="ell")
        tensor([1.1547, 2.0000], dtype=torch.float64)
    """
    if not isinstance(scheme, str):
        raise TypeError(f"scheme must be a string, got {type(scheme).__name__}")
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    num_classes = _check_int(num_classes, "num_classes", minimum=2, allow_none=True)
    counts = _counts_vector(source)
    if counts is None:
        if num_classes is None:
            raise ValueError("num_classes is required to count label volumes")
        counts = class_counts(source, num_classes, ignore_index=ignore_index)
    else:
        if ignore_index is not None:
            raise ValueError("ignore_index applies to label volumes, not to a counts vector")
        if counts.numel() < 2:
            raise ValueError(f"a counts vector needs at least 2 classes, got {counts.numel()}")
        if num_classes is not None and counts.numel() != num_classes:
            raise ValueError(f"the counts vector has {counts.numel()} entries, num_classes is {num_classes}")
        if not bool(torch.isfinite(counts).all()) or bool((counts < 0).any()):
            raise ValueError(f"counts must be finite and >= 0, got {counts.tolist()}")
    total = counts.sum()
    if not total > 0:
        raise ValueError("the data hold no counted voxel: every class count is 0")
    present = counts > 0
    if not bool(present.all()):
        absent = torch.nonzero(~present).flatten().tolist()
        warnings.warn(f"classes {absent} never occur in the data; their weight is 0", stacklevel=2)
    # 1/f_c = N/n_c; Wong et al. take its square root. Absent classes: 0 (they weigh no voxel).
    ratio = torch.where(present, total / torch.where(present, counts, torch.ones_like(counts)), torch.zeros_like(counts))
    return ratio if scheme == "wce" else ratio.sqrt()
