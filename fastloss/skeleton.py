"""Skeletons of binary masks: ``fastloss.skeletonize``, scikit-image's thinning in compiled C++.

The result equals ``skimage.morphology.skeletonize`` (scikit-image 0.26) voxel for voxel: Zhang and Suen's
thinning in 2D (with scikit-image's decision table, which differs from the paper's in 25 of its 256 entries),
Lee, Kashyap and Chu's 1994 thinning in 3D (the sequential form of scikit-image and ImageJ's Skeletonize3D,
whose result depends on the scan order, which is therefore kept). The image edge is background. Leading dims
beyond the spatial ones are a batch; batch items are thinned on the CPU threads in parallel.

CUDA tensors are copied to the CPU and the skeleton copied back (one warning per process): there is no GPU
thinning yet. Lee's thinning is sequential by nature; a GPU version would have to give up the voxel-for-voxel
equality (and guarantee instead: inside the object, one voxel thin, the same components and Euler number).

This module stands on the floor of ``fastloss.distance``: it imports ``fastloss._ext`` and
``fastloss._validation`` only.
"""

from __future__ import annotations

import numbers
from typing import Optional, Union

import numpy as np
import torch

from fastloss import _ext
from fastloss._validation import _is_compiling, warn_once

__all__ = ["skeletonize", "tubed_skeleton"]

Array = Union[torch.Tensor, np.ndarray]


def _check_mask(mask) -> None:
    if isinstance(mask, torch.Tensor):
        if mask.dtype.is_complex:
            raise TypeError(f"mask must be a real (bool, integer or float) tensor, got dtype {mask.dtype}")
        numel = mask.numel()
    elif isinstance(mask, np.ndarray):
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"mask must be a bool, integer or float array, got dtype {mask.dtype}")
        numel = mask.size
    else:
        raise TypeError(f"mask must be a torch.Tensor or a numpy.ndarray, got {type(mask).__name__}")
    if mask.ndim < 2:
        raise ValueError(
            f"mask must have 2 or 3 spatial dims (and any leading batch dims), got shape {tuple(mask.shape)}"
        )
    if numel == 0:
        raise ValueError(f"mask must not be empty, got shape {tuple(mask.shape)}")


def _check_spatial_dims(spatial_dims, ndim: int) -> int:
    if spatial_dims is None:
        return min(ndim, 3)
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral):
        raise TypeError(f"spatial_dims must be 2, 3 or None, got {type(spatial_dims).__name__}")
    if int(spatial_dims) not in (2, 3) or int(spatial_dims) > ndim:
        raise ValueError(f"spatial_dims must be 2 or 3 (at most mask.ndim = {ndim}), got {spatial_dims}")
    return int(spatial_dims)


def _check_threads(threads) -> int:
    if threads is None:
        return max(1, torch.get_num_threads())
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be a positive int or None, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1 (None: torch.get_num_threads()), got {threads}")
    return int(threads)


def _run_cpu(m: np.ndarray, threads: int) -> np.ndarray:
    """Skeletons of a contiguous uint8 (batch, *spatial) array (non-zero = foreground) as uint8 0/1."""
    C = _ext.require("fastloss.skeletonize")
    out = np.empty(m.shape, dtype=np.uint8)
    C.skeletonize_cpu(m.ctypes.data, out.ctypes.data, m.shape[0], list(m.shape[1:]), threads)
    return out


def _as_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 1 and a.dtype.kind in "biu":
        return np.ascontiguousarray(a).view(np.uint8)
    return np.ascontiguousarray(a != 0).view(np.uint8)


def skeletonize(mask: Array, spatial_dims: Optional[int] = None, *, threads: Optional[int] = None) -> Array:
    """The skeleton of binary masks, equal voxel for voxel to ``skimage.morphology.skeletonize``.

    Args:
        mask: torch tensor (CPU or CUDA) or numpy array of bool, integer or float; non-zero is foreground.
            The last ``spatial_dims`` dims are spatial, leading dims are a batch.
        spatial_dims: 2 (Zhang-Suen, scikit-image's 2D default) or 3 (Lee 1994, its 3D default); default
            ``min(mask.ndim, 3)``. **A (B, H, W) stack of 2D masks needs ``spatial_dims=2``**: without it, it
            is one 3D volume (a (1, H, W) volume gets scikit-image's 3D answer: Lee's four in-plane directions).
        threads: CPU threads over the batch items; default ``torch.get_num_threads()``.

    Returns:
        bool skeletons of the mask's shape, of the same kind (tensor or array) and on the same device.
        Empty masks give empty skeletons; the image edge counts as background.

    Raises:
        TypeError: mask is not a tensor/array or has a complex or non-numeric dtype; bad argument types.
        ValueError: fewer than 2 dims, empty mask, spatial_dims not 2 or 3, threads < 1.

    Example:
        >>> skeletonize(torch.ones(1, 5, 9), spatial_dims=2)[0, 2].int()   # Zhang-Suen, as scikit-image
        tensor([0, 0, 1, 1, 1, 1, 0, 0, 0], dtype=torch.int32)
        >>> skeletonize(torch.ones(1, 5, 9))[0, 2].int()   # one 3D volume: Lee, as scikit-image
        tensor([0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.int32)
    """
    _check_mask(mask)
    sd = _check_spatial_dims(spatial_dims, mask.ndim)
    nthreads = _check_threads(threads)
    shape = tuple(mask.shape)
    spatial = shape[len(shape) - sd :]
    batch = int(np.prod(shape[: len(shape) - sd], dtype=np.int64))
    if isinstance(mask, np.ndarray):
        out = _run_cpu(_as_u8(mask).reshape((batch,) + spatial), nthreads)
        return out.view(bool).reshape(shape)
    device = mask.device
    t = mask.detach()
    if device.type == "cuda":
        warn_once(
            "fastloss.skeletonize has no GPU implementation yet: CUDA masks are copied to the CPU, thinned there "
            "and copied back"
        )
    elif device.type != "cpu":
        raise ValueError(f"fastloss.skeletonize supports CPU and CUDA tensors, got device {device}")
    t = (t != 0) if t.dtype not in (torch.bool, torch.uint8, torch.int8) else t
    a = t.to("cpu").contiguous().view(torch.uint8).reshape((batch,) + spatial).numpy()
    out = torch.from_numpy(_run_cpu(a, nthreads)).view(torch.bool).reshape(shape)
    return out.to(device) if device.type != "cpu" else out


def _tube_voxels(skel: np.ndarray, spatial_dims: int, dilations: int) -> np.ndarray:
    """Flat indices (into ``skel``) of the voxels within L1 distance ``dilations`` of a non-zero voxel of
    ``skel``, inside the image: ``dilations`` binary dilations by the cross (each voxel and its face
    neighbours), outside the image background. The skeleton is sparse, so its voxels are stamped with the L1
    ball instead of dilating the whole volume (the same set: inside a box an L1 path between two voxels can
    always stay inside the box)."""
    shape = skel.shape
    flat = np.flatnonzero(skel)  # (np.nonzero of a 4-dim array is ~10x slower)
    if dilations == 0 or flat.size == 0:
        return flat
    coords = np.stack(np.unravel_index(flat, shape), axis=1)  # (n, ndim)
    r = int(dilations)
    grids = np.meshgrid(*[np.arange(-r, r + 1)] * spatial_dims, indexing="ij")
    ball = np.stack([g.ravel() for g in grids], axis=1)
    ball = ball[np.abs(ball).sum(axis=1) <= r]
    offsets = np.zeros((ball.shape[0], len(shape)), np.int64)
    offsets[:, len(shape) - spatial_dims :] = ball
    pts = (coords[:, None, :] + offsets[None, :, :]).reshape(-1, len(shape))
    inside = np.all((pts >= 0) & (pts < np.asarray(shape)), axis=1)
    return np.unique(np.ravel_multi_index(tuple(pts[inside].T), shape))


def tubed_skeleton(
    labels: torch.Tensor, spatial_dims: Optional[int] = None, *, dilations: int = 2, threads: Optional[int] = None
) -> torch.Tensor:
    """The target of the Skeleton Recall loss (Kirchhoff et al., ECCV 2024): the skeleton of the foreground
    (``labels > 0``, all classes together), dilated ``dilations`` times by the cross (scikit-image's default
    footprint), times the labels, so each tube voxel carries the class id of the voxel it lies on (0 where the
    tube leaves the foreground). As the authors' ``SkeletonTransform(do_tube=True)``, per batch item.

    Args:
        labels: integer (or bool) tensor ``(..., *spatial)``; leading dims are a batch.
        spatial_dims: 2 or 3; default ``min(labels.ndim, 3)``.
        dilations: cross dilations of the skeleton (the authors' tube: 2; 0: the bare skeleton).
        threads: CPU threads of :func:`skeletonize`.

    Returns:
        a tensor of the labels' shape, dtype and device.

    Raises:
        TypeError: not an integer/bool tensor, or a non-int ``dilations``.
        ValueError: as :func:`skeletonize`, or ``dilations < 0``.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"labels must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"labels must be an integer (or bool) tensor of class ids, got dtype {labels.dtype}")
    if isinstance(dilations, bool) or not isinstance(dilations, numbers.Integral):
        raise TypeError(f"dilations must be an int >= 0, got {type(dilations).__name__}")
    if dilations < 0:
        raise ValueError(f"dilations must be >= 0, got {dilations}")
    sd = _check_spatial_dims(spatial_dims, labels.ndim)
    if labels.numel() == 0:
        raise ValueError(f"labels must not be empty, got shape {tuple(labels.shape)}")
    nthreads = 0 if threads is None else _check_threads(threads)  # 0: torch.get_num_threads() when it runs
    if labels.device.type not in ("cpu", "cuda"):
        raise ValueError(f"fastloss.tubed_skeleton supports CPU and CUDA tensors, got device {labels.device}")
    if _is_compiling():  # a custom op, so that torch.compile(fullgraph=True) traces through the losses using it
        return torch.ops.fastloss.tubed_skeleton(labels, sd, int(dilations), nthreads)
    return _tubed_impl(labels, sd, int(dilations), nthreads)


def _tubed_impl(labels: torch.Tensor, sd: int, dilations: int, nthreads: int, indices_only: bool = False) -> torch.Tensor:
    """:func:`tubed_skeleton` of checked arguments (``nthreads`` 0: ``torch.get_num_threads()``); with
    ``indices_only``, the sorted flat indices (int64, CPU) of the tube's voxels instead (the tube before it is
    multiplied by the labels: voxels off the foreground included)."""
    nthreads = nthreads if nthreads > 0 else max(1, torch.get_num_threads())
    if labels.device.type == "cuda":
        warn_once(
            "fastloss.skeletonize has no GPU implementation yet: CUDA masks are copied to the CPU, thinned there "
            "and copied back"
        )
    elif labels.device.type != "cpu":
        raise ValueError(f"fastloss.tubed_skeleton supports CPU and CUDA tensors, got device {labels.device}")
    lab = labels.detach().to("cpu")
    if lab.dtype == torch.bool:
        lab = lab.view(torch.uint8)
    lab = lab.contiguous().numpy()
    shape = lab.shape
    spatial = shape[len(shape) - sd :]
    fg = np.ascontiguousarray(lab > 0).view(np.uint8).reshape((-1,) + spatial)
    idx = _tube_voxels(_run_cpu(fg, nthreads).reshape(shape), sd, int(dilations))
    if indices_only:
        return torch.from_numpy(idx)
    out_np = np.zeros(shape, lab.dtype)
    out_np.reshape(-1)[idx] = lab.reshape(-1)[idx]  # each tube voxel carries its label (0 off the foreground)
    out = torch.from_numpy(out_np)
    if labels.dtype == torch.bool:
        out = out.view(torch.bool)
    return out.to(labels.device) if labels.device.type != "cpu" else out


@torch.library.custom_op("fastloss::tubed_skeleton", mutates_args=())
def _tubed_skeleton_op(labels: torch.Tensor, spatial_dims: int, dilations: int, threads: int) -> torch.Tensor:
    """:func:`tubed_skeleton` as a torch custom op (not differentiable: its input is a label map)."""
    return _tubed_impl(labels, spatial_dims, dilations, threads)


@_tubed_skeleton_op.register_fake
def _(labels, spatial_dims, dilations, threads):
    return torch.empty_like(labels)


def tube_indices(labels: torch.Tensor, spatial_dims: int, *, dilations: int = 2, threads: Optional[int] = None) -> torch.Tensor:
    """The sorted flat indices (int64 CPU tensor) into ``labels`` of the voxels of its tube (the voxels where
    :func:`tubed_skeleton` may be non-zero: those of them on the foreground carry their label there). For losses
    that read the few tube voxels only. Arguments as :func:`tubed_skeleton` (checked by the caller)."""
    return _tubed_impl(labels, spatial_dims, int(dilations), 0 if threads is None else int(threads), indices_only=True)

