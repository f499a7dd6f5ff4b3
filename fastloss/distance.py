"""Exact Euclidean distance transform (EDT) and the distance maps of the boundary and Hausdorff losses.

The transform itself is compiled (``fastloss._C``): separable Felzenszwalb-Huttenlocher passes with
float64 envelope maths and float32 results, threaded over lines on the CPU, one launch per pass on the
GPU. This module validates inputs, flattens leading dims into a batch, and dispatches.

Semantics (as ``scipy.ndimage.distance_transform_edt``): non-zero voxels are foreground; each gets
its distance to the nearest zero voxel, axes scaled by ``spacing``; background voxels get 0; the image
edge is *not* background. Unlike scipy (whose answer is undefined there), a volume with no zero voxel
gets ``+inf`` everywhere.

Tensors go through the custom op ``torch.ops.fastloss.edt`` (with a fake implementation, so
``torch.compile`` traces through it); it is not differentiable, since its input is a mask.
"""

from __future__ import annotations

import numbers
import os
from typing import Optional, Sequence, Union

import numpy as np
import torch

from fastloss._validation import check_spacing, warn_once

from fastloss import _ext as _extension


def _ext():
    """The compiled extension (``fastloss._ext``), or a RuntimeError naming the EDT as what needs it."""
    return _extension.require("the EDT (fastloss.distance)")


def cuda_available() -> bool:
    """Whether the CUDA EDT kernels were compiled into ``fastloss._C``."""
    return _extension.has("has_cuda") and bool(_extension.C.has_cuda())


# --------------------------------------------------------------------------------------------------
# validation


def _check_mask(mask, name: str = "mask") -> None:
    if isinstance(mask, torch.Tensor):
        if mask.dtype.is_complex:
            raise TypeError(f"{name} must be a real (bool, integer or float) tensor, got dtype {mask.dtype}")
        numel = mask.numel()
    elif isinstance(mask, np.ndarray):
        if mask.dtype.kind == "c":
            raise TypeError(f"{name} must be a real (bool, integer or float) array, got dtype {mask.dtype}")
        if mask.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a bool, integer or float array, got dtype {mask.dtype}")
        numel = mask.size
    else:
        raise TypeError(f"{name} must be a torch.Tensor or a numpy.ndarray, got {type(mask).__name__}")
    if mask.ndim == 0:
        raise ValueError(f"{name} must have at least one (spatial) dim, got a 0-dim {type(mask).__name__}")
    if numel == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(mask.shape)}")


def _check_spatial_dims(spatial_dims, ndim: int, default: int) -> int:
    if spatial_dims is None:
        spatial_dims = default
    if isinstance(spatial_dims, bool) or not isinstance(spatial_dims, numbers.Integral):
        raise TypeError(f"spatial_dims must be an int (1, 2 or 3) or None, got {type(spatial_dims).__name__}")
    spatial_dims = int(spatial_dims)
    if not 1 <= spatial_dims <= min(3, ndim):
        raise ValueError(
            f"spatial_dims must be in [1, {min(3, ndim)}] for a mask with {ndim} dims, got {spatial_dims}"
        )
    return spatial_dims


def _warn_ambiguous_stack(shape, spatial_dims) -> None:
    """A 3-dim mask with no ``spatial_dims`` is one 3D volume; warn when it looks like a (B, H, W)
    stack of 2D masks (a first dim much smaller than the other two), which needs ``spatial_dims=2``."""
    if spatial_dims is None and len(shape) == 3 and shape[0] <= 16 and 4 * shape[0] <= min(shape[1], shape[2]):
        warn_once(
            f"mask of shape {tuple(shape)} is read as ONE 3D volume (spatial_dims defaults to min(ndim, 3)); "
            f"for a batch of {shape[0]} 2D masks pass spatial_dims=2, for a thin volume pass spatial_dims=3 "
            "to silence this warning"
        )


def max_threads() -> int:
    """The most CPU threads a distance function uses: the number of hardware threads
    (``os.cpu_count()``). A larger ``threads=`` is reduced to it: the transform is compute-bound, and
    thousands of threads (``threads=30000``) would each take a stack, or kill the process inside the
    OpenMP runtime when their stacks do not fit."""
    return max(1, os.cpu_count() or 1)


def _check_threads(threads) -> int:
    if threads is None:
        return 0
    if isinstance(threads, bool) or not isinstance(threads, numbers.Integral):
        raise TypeError(f"threads must be a non-negative int or None, got {type(threads).__name__}")
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 or None: all hardware threads), got {threads}")
    return min(int(threads), max_threads())


def _nonzero_u8(t: torch.Tensor) -> torch.Tensor:
    """A uint8 tensor (a view where it can be) whose non-zero bytes are the non-zero voxels of ``t``.
    bool, uint8 and int8 masks are viewed as they are: ``mask != 0`` on a bool tensor first widens the
    whole mask to int64 (8 bytes a voxel: 17 GiB for a 1291³ volume) to compare it with the int 0."""
    if t.dtype in (torch.bool, torch.uint8, torch.int8):
        return t.view(torch.uint8)
    return (t != 0).view(torch.uint8)


def _nonzero_u8_numpy(a: np.ndarray) -> np.ndarray:
    """:func:`_nonzero_u8` for numpy: a contiguous uint8 array, non-zero where ``a`` is."""
    if a.dtype.itemsize == 1 and a.dtype.kind in "biu":
        return np.ascontiguousarray(a).view(np.uint8)
    return np.ascontiguousarray(a != 0).view(np.uint8)


def _spacing_list(spacing, spatial_dims: int) -> list:
    sp = check_spacing(spacing, spatial_dims)
    return [1.0] * spatial_dims if sp is None else [float(s) for s in sp]


# --------------------------------------------------------------------------------------------------
# the custom op: mask is a contiguous uint8 tensor (batch, *spatial)


def _run_cpu(mask_u8: torch.Tensor, spacing: list, squared: bool, threads: int) -> torch.Tensor:
    out = torch.empty(mask_u8.shape, dtype=torch.float32)
    _ext().edt_cpu(
        mask_u8.data_ptr(), out.data_ptr(), mask_u8.shape[0], list(mask_u8.shape[1:]), spacing, squared, threads
    )
    return out


def _run_cuda(mask_u8: torch.Tensor, spacing: list, squared: bool) -> torch.Tensor:
    # Spacings far from 1 (1e20, 1e-20) would overflow or underflow the passes' float32 squares:
    # the CPU code scales them by a power of two and its results back (csrc/edt.h); the CUDA kernels do
    # not, so that is done here, the results scaled back in float64 and rounded once.
    scale = 1.0
    if _extension.has("edt_normalise_spacing"):
        spacing, scale = _ext().edt_normalise_spacing(list(spacing), list(mask_u8.shape[1:]))
    out = _run_cuda_normalised(mask_u8, list(spacing), squared)
    if scale != 1.0:
        wide = out.double() * scale
        if squared:
            wide *= scale
        out = wide.float()
    return out


def _run_cuda_normalised(mask_u8: torch.Tensor, spacing: list, squared: bool) -> torch.Tensor:
    with torch.cuda.device(mask_u8.device):
        out = torch.empty(mask_u8.shape, dtype=torch.float32, device=mask_u8.device)
        # envelope scratch: one float32 value and one int32 root per voxel
        scratch = torch.empty(2 * mask_u8.numel(), dtype=torch.int32, device=mask_u8.device)
        stream = torch.cuda.current_stream(mask_u8.device).cuda_stream
        _ext().edt_cuda(
            mask_u8.data_ptr(),
            out.data_ptr(),
            scratch.data_ptr(),
            mask_u8.shape[0],
            list(mask_u8.shape[1:]),
            spacing,
            squared,
            stream,
        )
    return out


def _edt_impl(mask: torch.Tensor, spacing: list, squared: bool, threads: int) -> torch.Tensor:
    """Squared (or plain) EDT of a contiguous uint8 (batch, *spatial) mask; float32 of the same shape."""
    mask = mask.contiguous()
    if mask.device.type == "cuda":
        if cuda_available():
            return _run_cuda(mask, list(spacing), squared)
        warn_once(
            "fastloss.edt: fastloss._C was built without CUDA; CUDA tensors are copied to the CPU for the "
            "distance transform (rebuild with nvcc on the PATH, or FASTLOSS_CUDA=ON, for the GPU kernels)"
        )
        return _run_cpu(mask.cpu(), list(spacing), squared, threads).to(mask.device)
    if mask.device.type != "cpu":
        raise ValueError(f"fastloss.edt supports CPU and CUDA tensors, got device {mask.device}")
    return _run_cpu(mask, list(spacing), squared, threads)


@torch.library.custom_op("fastloss::edt", mutates_args=())
def _edt_op(mask: torch.Tensor, spacing: list[float], squared: bool, threads: int) -> torch.Tensor:
    """The EDT as a torch custom op, so ``torch.compile(fullgraph=True)`` traces through it."""
    return _edt_impl(mask, spacing, squared, threads)


@_edt_op.register_fake
def _(mask, spacing, squared, threads):
    return torch.empty(mask.shape, dtype=torch.float32, device=mask.device)


# --------------------------------------------------------------------------------------------------
# public API


def edt(
    mask: Array,
    spacing: Union[None, float, Sequence[float]] = None,
    *,
    spatial_dims: Optional[int] = None,
    squared: bool = False,
    threads: Optional[int] = None,
) -> Array:
    """Exact Euclidean distance transform: distance of each non-zero voxel to the nearest zero voxel.

    Args:
        mask: torch tensor (CPU or CUDA) or numpy array of bool, integer or float; non-zero is
            foreground. The last ``spatial_dims`` dims are spatial, leading dims are a batch.
        spacing: voxel size, one number or one per spatial dim (positive, finite); default 1. Values far
            from 1 (1e20, 1e-20) are exact too: they are scaled by a power of two for the passes and the
            distances scaled back, so that the passes' float32 squares neither overflow nor underflow (the
            result itself is float32: ``inf`` beyond 3.4e38). Refused only where no such scale exists: the
            largest spacing times its axis length more than 2^122 (~5e36) times the smallest spacing.
        spatial_dims: 1, 2 or 3; default ``min(mask.ndim, 3)``. **A (B, H, W) stack of 2D masks is one
            3D volume unless ``spatial_dims=2``** (a warning says so when the shape looks like a stack).
        squared: return squared distances (skips the square root).
        threads: CPU threads; ``None`` or 0 uses every hardware thread, and at most
            :func:`max_threads` (``os.cpu_count()``) are used: a larger value is reduced to it. Ignored
            on the GPU.

    Returns:
        float32 distances of the mask's shape, of the same kind (tensor or array) and on the same
        device. Zero voxels give 0; a volume (one batch entry) with no zero voxel gives ``inf``.

    Raises:
        TypeError: mask is not a tensor/array, or has a complex or non-numeric dtype; bad argument types.
        ValueError: empty mask, spatial_dims out of range, spacing of the wrong length, not positive or
            too far apart (above), negative threads.

    Example:
        >>> d = edt(torch.tensor([[1, 1, 0, 1]]), spatial_dims=1)   # tensor([[2., 1., 0., 1.]])
    """
    _check_mask(mask)
    sd = _check_spatial_dims(spatial_dims, mask.ndim, min(mask.ndim, 3))
    _warn_ambiguous_stack(tuple(mask.shape), spatial_dims)
    sp = _spacing_list(spacing, sd)
    nthreads = _check_threads(threads)
    shape = tuple(mask.shape)
    spatial = shape[mask.ndim - sd :]
    batch = 1
    for s in shape[: mask.ndim - sd]:
        batch *= s

    if isinstance(mask, np.ndarray):
        m = _nonzero_u8_numpy(mask).reshape((batch,) + spatial)
        out = np.empty(m.shape, dtype=np.float32)
        _ext().edt_cpu(m.ctypes.data, out.ctypes.data, batch, list(spatial), sp, bool(squared), nthreads)
        return out.reshape(shape)

    m = _nonzero_u8(mask).reshape((batch,) + spatial).contiguous()
    if _is_compiling():
        return torch.ops.fastloss.edt(m, sp, bool(squared), nthreads).reshape(shape)
    # Eager: call the implementation directly. The custom op's dispatcher imports torch._dynamo on its
    # first call (about 3 s), which an eager training loop should not pay.
    return _edt_impl(m, sp, bool(squared), nthreads).reshape(shape)


def edt_at(
    mask: Array,
    query: Array,
    spacing: Union[None, float, Sequence[float]] = None,
    *,
    spatial_dims: Optional[int] = None,
    threads: Optional[int] = None,
) -> Array:
    """The EDT read at query voxels: ``edt(mask, spacing)[query != 0]``, without the full transform.

    The surface metrics need distances at border voxels only. On the CPU this runs the first pass of
    the EDT and then, for each query voxel, an exact search over the lines around it in order of
    distance, stopping at the first line that cannot hold a nearer zero: a query ``d`` voxels from the
    nearest zero costs about ``pi d^2`` lookups. Volumes whose queries would cost more than the full
    transform (queries far from every zero) fall back to it. Both are exact; with unit spacing the
    values equal :func:`edt`'s bit for bit, otherwise to float32 rounding. CUDA tensors run the full
    transform and index it.

    Args:
        mask: as in :func:`edt` (non-zero = foreground; leading dims beyond ``spatial_dims`` a batch).
        query: tensor/array of the same shape and kind (and device); non-zero voxels are read.
        spacing, spatial_dims, threads: as in :func:`edt`.

    Returns:
        1D float32 distances of the query voxels in C order over all dims (batch first), the order of
        ``edt(mask)[query != 0]``; same kind and device as ``mask``.

    Raises:
        TypeError / ValueError: as :func:`edt`, and a query of another shape, kind or device.
    """
    _check_mask(mask)
    _check_mask(query, "query")
    if type(query) is not type(mask) and not (isinstance(query, torch.Tensor) and isinstance(mask, torch.Tensor)):
        raise TypeError(
            f"query must be of the same kind as mask, got {type(query).__name__} and {type(mask).__name__}"
        )
    if tuple(query.shape) != tuple(mask.shape):
        raise ValueError(f"query must have the mask's shape {tuple(mask.shape)}, got {tuple(query.shape)}")
    sd = _check_spatial_dims(spatial_dims, mask.ndim, min(mask.ndim, 3))
    _warn_ambiguous_stack(tuple(mask.shape), spatial_dims)
    sp = _spacing_list(spacing, sd)
    nthreads = _check_threads(threads)
    was_numpy = isinstance(mask, np.ndarray)
    if was_numpy:  # any numpy dtype, byte order and strides: only "!= 0" is read
        mask, query = _nonzero_u8_numpy(mask), _nonzero_u8_numpy(query)
    t, _ = _as_tensor(mask)
    qt, _ = _as_tensor(query)
    if qt.device != t.device:
        raise ValueError(f"query is on {qt.device} but mask is on {t.device}")
    if t.device.type != "cpu":
        values = edt(t, sp, spatial_dims=sd, threads=nthreads)[qt != 0]
        return values
    spatial = tuple(t.shape[t.ndim - sd :])
    m = _nonzero_u8(t).reshape((-1,) + spatial)
    q = _nonzero_u8(qt).reshape((-1,) + spatial)
    out = edt_at_cpu(m, q, int(q.count_nonzero()), sp, nthreads)
    return out.numpy() if was_numpy else out


def edt_at_cpu(
    mask_u8: torch.Tensor,
    query_u8: torch.Tensor,
    count: int,
    spacing: list,
    threads: int = 0,
    features_nonzero: bool = False,
    max_distance: float = float("inf"),
):
    """:func:`edt_at` on checked CPU inputs: uint8 ``(batch, *spatial)`` mask and query, ``count`` the
    number of non-zero query voxels (the compiled code checks it before writing). With
    ``features_nonzero`` the distances go to the nearest non-zero voxel of ``mask`` instead of the nearest
    zero; distances above ``max_distance`` (float32 compare) come back as ``inf``."""
    m = mask_u8.contiguous()
    q = query_u8.contiguous()
    out = torch.empty(count, dtype=torch.float32)
    _ext().edt_query_cpu(
        m.data_ptr(),
        q.data_ptr(),
        out.data_ptr(),
        count,
        m.shape[0],
        list(m.shape[1:]),
        list(spacing),
        features_nonzero,
        max_distance,
        threads,
    )
    return out


def _is_compiling() -> bool:
    try:
        return bool(torch.compiler.is_compiling())
    except AttributeError:  # pragma: no cover - old torch
        return False


def _as_tensor(mask):
    if isinstance(mask, np.ndarray):
        a = np.ascontiguousarray(mask)
        # numpy calls an array with a negative stride on a size-1 axis contiguous, and a non-native byte
        # order is contiguous too; torch.from_numpy refuses both: a fresh native copy then
        if any(st < 0 for st in a.strides) or not a.dtype.isnative:
            a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
        return torch.from_numpy(a), True
    return mask, False


def _border_distance(spatial: Sequence[int], spacing: Sequence[float], device) -> torch.Tensor:
    """Distance of every voxel centre to the nearest voxel centre just outside the image (float32)."""
    d = None
    nd = len(spatial)
    for a, (n, s) in enumerate(zip(spatial, spacing)):
        idx = torch.arange(n, device=device, dtype=torch.float32)
        da = torch.minimum(idx + 1, n - idx) * float(s)
        da = da.reshape((n,) + (1,) * (nd - 1 - a))
        d = da if d is None else torch.minimum(d, da)
    return d


def signed_distance(
    mask: Array, spacing: Union[None, float, Sequence[float]] = None, *, spatial_dims: Optional[int] = None
) -> Array:
    """Signed distance map of the boundary loss (Kervadec et al., ``one_hot2dist``), per volume.

    With ``g`` the mask (non-zero = inside) and ``edt`` as in :func:`edt` (same ``spacing``)::

        phi = edt(~g) * (~g) - (edt(g) - 1) * g

    Outside voxels get their distance to the nearest inside voxel (positive); inside voxels get
    ``-(d - 1)`` with ``d`` their distance to the nearest outside voxel, so the innermost layer of the
    object is 0 with unit spacing. As in Kervadec's code the shift is 1 in *physical units* whatever the
    spacing (the inner layer then gets ``1 - spacing`` along the axis that reaches the boundary).

    Special volumes (each batch entry on its own): an empty mask gives 0 everywhere (Kervadec's
    "absent class"). A mask with no outside voxel (all foreground) has no boundary in the image; it is
    treated as if surrounded by background just outside the image edge: ``-(d_edge - 1)`` with
    ``d_edge`` the distance to the nearest voxel centre outside the image, which is finite (0 on the
    edge layer, negative inside).

    Args:
        mask: tensor or array, non-zero = inside; leading dims beyond ``spatial_dims`` are a batch.
        spacing: voxel size (one number or one per spatial dim).
        spatial_dims: 1, 2 or 3, default ``min(mask.ndim, 3)``.

    Returns:
        float32 map of the mask's shape, same kind and device as ``mask``.
    """
    _check_mask(mask)
    sd = _check_spatial_dims(spatial_dims, mask.ndim, min(mask.ndim, 3))
    _warn_ambiguous_stack(tuple(mask.shape), spatial_dims)
    sp = _spacing_list(spacing, sd)
    t, was_numpy = _as_tensor(mask)
    g = t if t.dtype == torch.bool else t != 0  # (a bool compared with 0 would be widened to int64 first)
    # One transform for both halves: index 0 = outside distances, 1 = inside distances.
    # (Memory: the two transforms, 8 bytes a voxel, and the map, 4: the rest is done in place.)
    d = edt(torch.stack((~g, g)), sp, spatial_dims=sd, squared=False)
    d_out, d_in = d[0], d[1]
    phi = torch.where(g, d_in.neg_().add_(1.0), d_out)  # 1 − d_in, formed in place
    del d, d_out, d_in
    # d_out is +inf only in a volume with no inside voxel (empty mask): 0 there.
    # d_in is +inf only in a volume with no outside voxel (all foreground): distance to the image edge.
    phi.masked_fill_(phi == float("inf"), 0.0)
    spatial = tuple(mask.shape[mask.ndim - sd :])
    edge = 1.0 - _border_distance(spatial, sp, phi.device)
    torch.where(phi == -float("inf"), edge.expand_as(phi), phi, out=phi)
    return phi.numpy() if was_numpy else phi


def _above_half(t: torch.Tensor) -> torch.Tensor:
    """``t > 0.5`` (MONAI's threshold) as a bool tensor without a widened copy: a bool mask is itself, an
    integer one is ``t > 0`` (comparing it with 0.5 would first convert it to float32)."""
    if t.dtype == torch.bool:
        return t
    if not t.dtype.is_floating_point:
        return t > 0
    return t > 0.5


def distance_field(
    mask: Array, spacing: Union[None, float, Sequence[float]] = None, *, spatial_dims: Optional[int] = None
) -> Array:
    """MONAI ``HausdorffDTLoss.distance_field`` for every (batch, channel) volume at once.

    For ``mask`` of shape ``(B, C, *spatial)``, with ``fg = mask > 0.5`` (MONAI's threshold) per volume
    ``(b, c)``: ``edt(fg) + edt(~fg)`` (distance of each voxel to the other side of the boundary), and 0
    for a volume that is all foreground or all background (MONAI skips those). MONAI calls its
    ``distance_field`` on one channel at a time, so its skipping is per (batch, channel), as here.

    Args:
        mask: tensor or array ``(B, C, *spatial)`` (any leading dims work: each volume is separate).
        spacing: voxel size (MONAI uses unit spacing, the default).
        spatial_dims: default ``mask.ndim - 2`` (the ``(B, C, *spatial)`` convention).

    Returns:
        float32 field of the mask's shape, same kind and device as ``mask``.
    """
    _check_mask(mask)
    default = mask.ndim - 2
    if spatial_dims is None and not 1 <= default <= 3:
        raise ValueError(
            f"distance_field expects (B, C, *spatial) with 1 to 3 spatial dims (3 to 5 dims), got shape "
            f"{tuple(mask.shape)}; pass spatial_dims for another layout"
        )
    sd = _check_spatial_dims(spatial_dims, mask.ndim, default)
    sp = _spacing_list(spacing, sd)
    t, was_numpy = _as_tensor(mask)
    fg = _above_half(t)
    d = edt(torch.stack((fg, ~fg)), sp, spatial_dims=sd, squared=False)
    field = d[0] + d[1]
    # inf only where one side is absent (an all-fg or all-bg volume): MONAI leaves those at 0.
    field = torch.where(torch.isinf(field), torch.zeros((), dtype=field.dtype, device=field.device), field)
    return field.numpy() if was_numpy else field


def hausdorff_distance_maps(
    pred_mask: Array,
    target_mask: Array,
    alpha: float = 2.0,
    spacing: Union[None, float, Sequence[float]] = None,
    *,
    spatial_dims: Optional[int] = None,
) -> Array:
    """The Hausdorff-loss weights ``d_S**alpha + d_G**alpha`` (Karimi and Salcudean, MONAI's
    ``HausdorffDTLoss``): :func:`distance_field` of the thresholded prediction and of the target, both
    computed in one transform. ``pred_mask``/``target_mask`` must have the same shape ``(B, C, *spatial)``.
    """
    _check_mask(pred_mask, "pred_mask")
    _check_mask(target_mask, "target_mask")
    if tuple(pred_mask.shape) != tuple(target_mask.shape):
        raise ValueError(
            f"pred_mask and target_mask must have the same shape, got {tuple(pred_mask.shape)} and "
            f"{tuple(target_mask.shape)}"
        )
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
    p, p_np = _as_tensor(pred_mask)
    g, _ = _as_tensor(target_mask)
    if p.device != g.device:
        raise ValueError(f"pred_mask is on {p.device} but target_mask is on {g.device}")
    p = _above_half(p)
    g = _above_half(g)
    sd = spatial_dims if spatial_dims is not None else p.ndim - 2
    fields = distance_field(torch.stack((p, g)), spacing, spatial_dims=sd)
    maps = fields[0] ** alpha + fields[1] ** alpha
    return maps.numpy() if p_np else maps


# --------------------------------------------------------------------------------------------------
# chessboard and taxicab distance transforms (scipy.ndimage.distance_transform_cdt's metrics)
# --------------------------------------------------------------------------------------------------


def cdt(mask: Array, metric: str = "chessboard", *, spatial_dims: Optional[int] = None) -> Array:
    """Exact chessboard (L∞) or taxicab (L1) distance transform: for each non-zero voxel the number of
    steps to the nearest zero voxel, in grid units (spacing plays no part, as in MONAI).

    Both metrics are separable, so one 1D pass per axis gives the exact answer (as :func:`edt`'s passes do
    for the squared Euclidean distance): along axis k, ``h(i) = min_j f(j) ⊕ |i - j|`` with ``⊕`` the sum
    (taxicab) or the maximum (chessboard), ``f`` the previous pass, 0 at zero voxels and ``inf`` elsewhere
    before the first (where both metrics give the distance along the line). The sum pass doubles its
    reach: ``h(i) = min(h(i), h(i ∓ s) + s)`` for ``s = 1, 2, 4, ...`` (``log2 n`` steps over the whole
    tensor, in place). The maximum pass tries the offsets ``d = 1, 2, ...`` on the lines that still hold
    a value above ``d`` (a neighbour ``d`` away can only help a voxel whose distance exceeds ``d``); lines
    that are done leave the working set every 8 offsets.

    Args:
        mask: torch tensor or numpy array; non-zero is foreground. The last ``spatial_dims`` dims are
            spatial (default ``min(ndim, 3)``), leading dims a batch.
        metric: ``"chessboard"`` or ``"taxicab"`` (``"cityblock"``/``"manhattan"`` are taxicab too).

    Returns:
        float32 distances of the mask's shape and kind; 0 at zero voxels; ``inf`` in a volume with no zero
        voxel (where ``scipy.ndimage.distance_transform_cdt`` returns -1).

    Raises:
        TypeError / ValueError: as :func:`edt`; an unknown ``metric``.

    Example:
        >>> cdt(torch.tensor([[1, 1, 1], [1, 1, 1], [0, 1, 1]]), "taxicab")
        tensor([[2., 3., 4.],
                [1., 2., 3.],
                [0., 1., 2.]])
    """
    _check_mask(mask)
    metric = {"cityblock": "taxicab", "manhattan": "taxicab"}.get(metric, metric)
    if metric not in ("chessboard", "taxicab"):
        raise ValueError(f"metric must be 'chessboard' or 'taxicab', got {metric!r}")
    sd = _check_spatial_dims(spatial_dims, mask.ndim, min(mask.ndim, 3))
    _warn_ambiguous_stack(tuple(mask.shape), spatial_dims)
    m, was_numpy = _as_tensor(mask)
    inf = float("inf")
    f = torch.where(m != 0, torch.full((), inf, device=m.device), torch.zeros((), device=m.device))
    for k, axis in enumerate(range(m.ndim - sd, m.ndim)):
        # the first pass sees only 0 and inf: both metrics are the distance along the line there
        f = _taxicab_pass(f, axis) if metric == "taxicab" or k == 0 else _chessboard_pass(f, axis)
    f = f.contiguous()
    return f.numpy() if was_numpy else f


def _taxicab_pass(f: torch.Tensor, axis: int) -> torch.Tensor:
    """``min_j f(j) + |i − j|`` along ``axis``, by doubling: after the shifts ``s = 1, 2, ..., 2^k`` (each
    from both sides, ``h(i) = min(h(i), h(i ∓ s) + s)`` with ``h(i ∓ s)`` read before the step) every voxel
    has seen each ``j`` within ``2^(k+1) − 1``, with the cost ``|i − j|`` summed along the way; extra
    candidates that a step picks up are costs of real paths, so never below the answer. Float32 holds
    every grid distance exactly; ``inf`` stays ``inf``."""
    n = f.shape[axis]
    h = f.clone()
    tmp = torch.empty_like(h)
    s = 1
    while s < n:
        for dst, src in ((s, 0), (0, s)):  # from the left, then from the right
            t = tmp.narrow(axis, 0, n - s)
            torch.add(h.narrow(axis, src, n - s), s, out=t)
            h.narrow(axis, dst, n - s).clamp_max_(t)
        s *= 2
    return h


def _chessboard_pass(f: torch.Tensor, axis: int) -> torch.Tensor:
    """``min_j max(f(j), |i − j|)`` along ``axis``: the offsets ``d = 1, 2, ...`` on the lines that can
    still change. A line changes at offset ``d`` only while it holds a value above ``d`` (``inf``
    included) and a finite ``f``; every 8 offsets the lines that are done leave the working set."""
    n = f.shape[axis]
    shape = f.movedim(axis, -1).shape
    lines = f.movedim(axis, -1).reshape(-1, n).contiguous()  # (L, n), one row per line
    out = lines.clone()
    fa, ha = lines, out  # the working set: all lines, then the rows ``active`` of them
    active = None
    tmp = torch.empty_like(fa)
    for d in range(1, n):
        if d % 8 == 1:
            keep = (ha.amax(1) > d) & torch.isfinite(fa).any(1)
            if not bool(keep.all()):
                idx = keep.nonzero()[:, 0]
                if active is not None:
                    out[active] = ha
                active = idx if active is None else active[idx]
                fa, ha = fa[idx], ha[idx]
                tmp = tmp[: fa.shape[0]]
                if fa.shape[0] == 0:
                    break
        for dst, src in ((d, 0), (0, d)):  # the neighbour d to the left, then to the right
            t = tmp[:, : n - d]
            torch.clamp_min(fa[:, src : src + n - d], d, out=t)
            ha[:, dst : dst + n - d].clamp_max_(t)
    if active is not None:
        out[active] = ha
    return out.view(shape).movedim(-1, axis)
