"""Skeletons of binary masks: ``fastloss.skeletonize``, scikit-image's thinning in compiled C++, and a parallel
thinning that runs on the GPU.

``method="exact"`` (the default on the CPU and for numpy arrays) equals ``skimage.morphology.skeletonize``
(scikit-image 0.26) voxel for voxel: Zhang and Suen's thinning in 2D (with scikit-image's decision table, which
differs from the paper's in 25 of its 256 entries), Lee, Kashyap and Chu's 1994 thinning in 3D (the sequential
form of scikit-image and ImageJ's Skeletonize3D, whose result depends on the scan order, which is therefore
kept). The image edge is background. Leading dims beyond the spatial ones are a batch; batch items are thinned
on the CPU threads in parallel.

``method="parallel"`` (the default for CUDA tensors) is the GPU's algorithm (csrc/skeleton_cuda.cu); on CPU
tensors and arrays its host driver (csrc/skeleton_parallel_host.cpp) runs the same passes with the same per-voxel
code, so that any machine can compute, and CI checks, the GPU's answer. In 2D it is Zhang-Suen itself (each
sub-pass decides every pixel from a snapshot): equal to ``method="exact"``. In 3D it applies Lee's deletion test
(border voxel in the pass's direction, no end point, Euler invariant, simple) to one parity subfield at a time
(the voxels with given p % 2, r % 2, c % 2, of which no two are 26-neighbours), deleting the whole subfield at
once, for each of the 6 border directions and 8 subfields, until a sweep deletes nothing. Its skeleton differs
from scikit-image's in places, and it guarantees (and the tests check exactly this): every skeleton voxel is in
the mask; the skeleton is thin (no voxel left that Lee's test would delete, i.e. simple and no end point; in the
test shapes no 2x2x2 cube of voxels); it has the mask's (and the exact skeleton's) number of 26-connected
components and Euler characteristic (26/6 connectivity: cavities and tunnels are kept); it is idempotent (the
skeleton of a skeleton is itself); a batch gives what its items give one by one. CUDA tensors go to the GPU
kernels when ``fastloss._C`` was built with CUDA, otherwise to the host driver (one warning), so the answer does
not depend on the build. ``method="exact"`` on a CUDA tensor copies it to the CPU and back (one warning).

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


_METHODS = ("exact", "parallel")


def _check_method(method, device_type: str) -> str:
    """The method: ``None`` is "parallel" on CUDA, "exact" elsewhere."""
    if method is None:
        return "parallel" if device_type == "cuda" else "exact"
    if not isinstance(method, str):
        raise TypeError(f"method must be 'exact', 'parallel' or None, got {type(method).__name__}")
    if method not in _METHODS:
        raise ValueError(
            f"method must be 'exact' (scikit-image's answer) or 'parallel' (the GPU algorithm), got {method!r}"
        )
    return method


def cuda_available() -> bool:
    """Whether the CUDA thinning kernels were compiled into ``fastloss._C``."""
    return _ext.has("skeletonize_cuda")


def _run_cpu(m: np.ndarray, threads: int, method: str = "exact") -> np.ndarray:
    """Skeletons of a contiguous uint8 (batch, *spatial) array (non-zero = foreground) as uint8 0/1."""
    C = _ext.require("fastloss.skeletonize")
    entry = "skeletonize_cpu" if method == "exact" else "skeletonize_parallel_host"
    if not hasattr(C, entry):
        raise RuntimeError(f"fastloss.skeletonize(method={method!r}) needs {entry} in fastloss._C, which this build "
                           "lacks (an older build); reinstall with `pip install -e .`")
    out = np.empty(m.shape, dtype=np.uint8)
    getattr(C, entry)(m.ctypes.data, out.ctypes.data, m.shape[0], list(m.shape[1:]), threads)
    return out


def _run_cuda(m: torch.Tensor) -> torch.Tensor:
    """The parallel thinning of a contiguous uint8 (batch, *spatial) CUDA tensor on its GPU (on the current
    stream; one host sync per sweep), as uint8 0/1."""
    C = _ext.require("fastloss.skeletonize")
    with torch.cuda.device(m.device):
        out = torch.empty_like(m)
        scratch = torch.empty_like(m)  # 2D: the sub-passes' second image; 3D: the direction's border voxels
        flag = torch.empty(1, dtype=torch.int32, device=m.device)
        stream = torch.cuda.current_stream(m.device).cuda_stream
        C.skeletonize_cuda(m.data_ptr(), out.data_ptr(), scratch.data_ptr(), flag.data_ptr(),
                           m.shape[0], list(m.shape[1:]), stream)
    return out


def _skeleton_tensor(t: torch.Tensor, sd: int, nthreads: int, method: str) -> torch.Tensor:
    """Bool skeletons of a (checked) CPU or CUDA tensor, the last ``sd`` dims spatial, on its device."""
    shape = tuple(t.shape)
    spatial = shape[len(shape) - sd :]
    device = t.device
    t = t.detach()
    t = (t != 0) if t.dtype not in (torch.bool, torch.uint8, torch.int8) else t
    if device.type == "cuda" and method == "parallel":
        if cuda_available():
            u8 = t.contiguous().view(torch.uint8).reshape((-1,) + spatial)
            return _run_cuda(u8).view(torch.bool).reshape(shape)
        warn_once(
            "fastloss._C was built without CUDA: fastloss.skeletonize thins CUDA masks on the CPU (the parallel "
            "algorithm's host driver: the GPU's answer) and copies them back"
        )
    elif device.type == "cuda":
        warn_once(
            "fastloss.skeletonize(method='exact') runs on the CPU: CUDA masks are copied to the CPU, thinned there and "
            "copied back (method='parallel', the default for CUDA tensors, thins on the GPU)"
        )
    a = t.to("cpu").contiguous().view(torch.uint8).reshape((-1,) + spatial).numpy()
    out = torch.from_numpy(_run_cpu(a, nthreads, method)).view(torch.bool).reshape(shape)
    return out.to(device) if device.type != "cpu" else out


def _as_u8(a: np.ndarray) -> np.ndarray:
    if a.dtype.itemsize == 1 and a.dtype.kind in "biu":
        return np.ascontiguousarray(a).view(np.uint8)
    return np.ascontiguousarray(a != 0).view(np.uint8)


def skeletonize(
    mask: Array, spatial_dims: Optional[int] = None, *, threads: Optional[int] = None, method: Optional[str] = None
) -> Array:
    """The skeleton of binary masks: scikit-image's voxel for voxel (``method="exact"``), or the GPU's parallel
    thinning (``method="parallel"``).

    Args:
        mask: torch tensor (CPU or CUDA) or numpy array of bool, integer or float; non-zero is foreground.
            The last ``spatial_dims`` dims are spatial, leading dims are a batch.
        spatial_dims: 2 (Zhang-Suen, scikit-image's 2D default) or 3 (Lee 1994, its 3D default); default
            ``min(mask.ndim, 3)``. **A (B, H, W) stack of 2D masks needs ``spatial_dims=2``**: without it, it
            is one 3D volume (a (1, H, W) volume gets scikit-image's 3D answer: Lee's four in-plane directions).
        threads: CPU threads over the batch items; default ``torch.get_num_threads()``.
        method: ``"exact"``: equal to ``skimage.morphology.skeletonize`` (compiled C++ on the CPU; a CUDA tensor is
            copied to the CPU and back). ``"parallel"``: the GPU algorithm (on CUDA tensors on the GPU, on CPU
            tensors and arrays its host driver, the same answer); equal to "exact" in 2D; in 3D the skeleton is
            inside the mask, thin (no voxel left that is simple and no end point), with the mask's 26-connected
            components and Euler characteristic, idempotent, batch-independent, but not scikit-image's voxel for
            voxel (see the module's notes). Default (None): "parallel" for CUDA tensors, "exact" otherwise.

    Returns:
        bool skeletons of the mask's shape, of the same kind (tensor or array) and on the same device.
        Empty masks give empty skeletons; the image edge counts as background.

    Raises:
        TypeError: mask is not a tensor/array or has a complex or non-numeric dtype; bad argument types.
        ValueError: fewer than 2 dims, empty mask, spatial_dims not 2 or 3, threads < 1, an unknown method, a
            device other than CPU and CUDA.

    Example:
        >>> skeletonize(torch.ones(1, 5, 9), spatial_dims=2)[0, 2].int()   # Zhang-Suen, as scikit-image
        tensor([0, 0, 1, 1, 1, 1, 0, 0, 0], dtype=torch.int32)
        >>> skeletonize(torch.ones(1, 5, 9))[0, 2].int()   # one 3D volume: Lee, as scikit-image
        tensor([0, 1, 1, 1, 1, 1, 1, 1, 0], dtype=torch.int32)
        >>> bool((skeletonize(torch.ones(1, 5, 9), spatial_dims=2, method="parallel")
        ...       == skeletonize(torch.ones(1, 5, 9), spatial_dims=2)).all())   # 2D: parallel is exact
        True
    """
    _check_mask(mask)
    sd = _check_spatial_dims(spatial_dims, mask.ndim)
    nthreads = _check_threads(threads)
    device_type = mask.device.type if isinstance(mask, torch.Tensor) else "cpu"
    if device_type not in ("cpu", "cuda"):
        raise ValueError(f"fastloss.skeletonize supports CPU and CUDA tensors, got device {mask.device}")
    how = _check_method(method, device_type)
    if isinstance(mask, np.ndarray):
        shape = tuple(mask.shape)
        spatial = shape[len(shape) - sd :]
        out = _run_cpu(_as_u8(mask).reshape((-1,) + spatial), nthreads, how)
        return out.view(bool).reshape(shape)
    return _skeleton_tensor(mask, sd, nthreads, how)


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
    labels: torch.Tensor,
    spatial_dims: Optional[int] = None,
    *,
    dilations: int = 2,
    threads: Optional[int] = None,
    method: Optional[str] = None,
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
        method: the skeleton's, as :func:`skeletonize` (default: "parallel" for CUDA labels, thinned and dilated
            on the GPU; "exact", scikit-image's skeleton, otherwise).

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
    how = _check_method(method, labels.device.type)
    if _is_compiling():  # a custom op, so that torch.compile(fullgraph=True) traces through the losses using it
        return torch.ops.fastloss.tubed_skeleton(labels, sd, int(dilations), nthreads, how)
    return _tubed_impl(labels, sd, int(dilations), nthreads, how)


def _dilate_cross(x: torch.Tensor, sd: int, dilations: int) -> torch.Tensor:
    """``dilations`` binary dilations of a bool tensor by the cross (each voxel and its face neighbours along the
    last ``sd`` dims), outside the image background: torch ops on the tensor's device, no host sync."""
    for _ in range(dilations):
        grown = x.clone()
        for ax in range(x.ndim - sd, x.ndim):
            n = x.shape[ax]
            if n > 1:
                grown.narrow(ax, 1, n - 1).logical_or_(x.narrow(ax, 0, n - 1))  # from the voxel before
                grown.narrow(ax, 0, n - 1).logical_or_(x.narrow(ax, 1, n - 1))  # from the voxel after
        x = grown
    return x


def _tubed_on_device(labels: torch.Tensor, sd: int, dilations: int, nthreads: int, method: str,
                     indices_only: bool = False) -> torch.Tensor:
    """:func:`_tubed_impl` with every step on the labels' device (the CUDA path: the skeleton by the GPU kernels,
    the tube by :func:`_dilate_cross`); the same voxels as the CPU path's stamped L1 balls."""
    tube = _dilate_cross(_skeleton_tensor(labels > 0, sd, nthreads, method), sd, dilations)
    if indices_only:
        return tube.reshape(-1).nonzero().squeeze(1)
    lab = labels.detach()
    if lab.dtype == torch.bool:
        return lab & tube
    return torch.where(tube, lab, torch.zeros((), dtype=lab.dtype, device=lab.device))


def _tubed_impl(labels: torch.Tensor, sd: int, dilations: int, nthreads: int, method: str = "exact",
                indices_only: bool = False) -> torch.Tensor:
    """:func:`tubed_skeleton` of checked arguments (``nthreads`` 0: ``torch.get_num_threads()``); with
    ``indices_only``, the sorted flat indices (int64, on the CPU for CPU labels, on the labels' device for CUDA
    labels thinned in parallel) of the tube's voxels instead (the tube before it is multiplied by the labels:
    voxels off the foreground included)."""
    nthreads = nthreads if nthreads > 0 else max(1, torch.get_num_threads())
    if labels.device.type == "cuda" and method == "parallel":
        return _tubed_on_device(labels, sd, dilations, nthreads, method, indices_only)
    if labels.device.type == "cuda":
        warn_once(
            "fastloss.skeletonize(method='exact') runs on the CPU: CUDA masks are copied to the CPU, thinned there and "
            "copied back (method='parallel', the default for CUDA tensors, thins on the GPU)"
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
    idx = _tube_voxels(_run_cpu(fg, nthreads, method).reshape(shape), sd, int(dilations))
    if indices_only:
        return torch.from_numpy(idx)
    out_np = np.zeros(shape, lab.dtype)
    out_np.reshape(-1)[idx] = lab.reshape(-1)[idx]  # each tube voxel carries its label (0 off the foreground)
    out = torch.from_numpy(out_np)
    if labels.dtype == torch.bool:
        out = out.view(torch.bool)
    return out.to(labels.device) if labels.device.type != "cpu" else out


@torch.library.custom_op("fastloss::tubed_skeleton", mutates_args=())
def _tubed_skeleton_op(
    labels: torch.Tensor, spatial_dims: int, dilations: int, threads: int, method: str
) -> torch.Tensor:
    """:func:`tubed_skeleton` as a torch custom op (not differentiable: its input is a label map)."""
    return _tubed_impl(labels, spatial_dims, dilations, threads, method)


@_tubed_skeleton_op.register_fake
def _(labels, spatial_dims, dilations, threads, method):
    return torch.empty_like(labels)


def tube_indices(
    labels: torch.Tensor, spatial_dims: int, *, dilations: int = 2, threads: Optional[int] = None,
    method: Optional[str] = None,
) -> torch.Tensor:
    """The sorted flat indices (int64) into ``labels`` of the voxels of its tube (the voxels where
    :func:`tubed_skeleton` may be non-zero: those of them on the foreground carry their label there). For losses
    that read the few tube voxels only. A CPU tensor for CPU labels; for CUDA labels (method "parallel", their
    default) a tensor on their device, computed there. Arguments as :func:`tubed_skeleton` (checked by the caller,
    but for ``method``)."""
    how = _check_method(method, labels.device.type)
    return _tubed_impl(labels, spatial_dims, int(dilations), 0 if threads is None else int(threads), how,
                       indices_only=True)
