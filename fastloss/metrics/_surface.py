"""Border voxels and border-to-border distances: the engine of the surface metrics (NSD, HD, HD95, ASD).

How the surface metrics are computed:

1. Border voxels, as MONAI defines them (``get_mask_edges`` with ``spacing=None``): a foreground
   voxel is on the border when it does not survive a binary erosion with the face-connected cross
   (``scipy.ndimage.generate_binary_structure(ndim, 1)``), voxels outside the image counting as
   background. So foreground voxels on the image boundary are border voxels.
2. Distances from each border voxel of one mask to the nearest border voxel of the other, in physical
   units (``spacing`` scaling each axis): the same Euclidean distances as MONAI's KD-tree over
   border-voxel coordinates.
3. NSD counts border voxels within the tolerance; HD takes a per-row maximum; HD95 takes a per-row
   percentile with ``torch.quantile``'s linear interpolation.

On the CPU (compiled helpers, one ``(batch, class)`` row at a time, see :class:`CpuRows`): one pass
over each input checks the values and finds every row's bounding box of ``p | g`` (cropping to it
changes no border voxel and no distance); the borders of the box are computed from the input in any
dtype and layout; the distances are read at the border voxels only (:func:`fastloss.distance.edt_at`:
pass 1 of the EDT and a search over nearby lines; for NSD with a small tolerance, a search of the
tolerance ball voxel by voxel and no transform at all); HD95 selects its two order statistics with
``numpy.partition`` instead of sorting (:func:`select_quantile`).

On the GPU (no Python loop over batch or class): the erosion is ``2 * ndim`` shifted logical ANDs
over the whole ``(B * C)`` batch (:func:`mask_edges`); one exact EDT (``fastloss.edt``, CUDA) of the
inverted border masks, both directions and every row stacked into its batch, cropped to the bounding
box of all border voxels, read at the border voxels (:func:`edge_distance_chunks`); HD95 by one batched
sort of the border distances scattered into an inf-padded ``(rows, max count)`` matrix
(:func:`row_quantile`). NSD with a small tolerance ball (up to 125 voxel offsets: 1 mm at ~1 mm spacing
is 7) skips the EDT: shifting the border masks by every offset of the ball gives the same counts
(:func:`ball_offsets`, :func:`close_counts_by_shifts`).

The metrics themselves (the empty-mask conventions, which path serves an input) are in
:mod:`fastloss.metrics.core`. This module imports :mod:`fastloss.metrics._checks`, and, lazily, the
compiled extension (:mod:`fastloss._ext`) and :mod:`fastloss.distance` when a surface metric runs.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from ._checks import check_binary, check_pair, prepare, to_tensor


# Voxels (both directions, all rows of a chunk) given to one EDT call; bounds the float32
# distance buffer at 4 bytes per voxel (1 GiB). Larger problems are processed in row chunks.
_CHUNK_VOXELS = 1 << 28
# Tests set this to run the batched (GPU) path of the surface metrics on CPU tensors (read here and by
# fastloss.metrics._subvoxel, at call time: patch it on this module).
BATCHED_ON_CPU = False


def prepare_surface(y_pred, y, include_background: bool):
    """Checked inputs of the surface metrics: ``(nd, B, C', device, plan, p, g)``. CPU tensors come as a
    :class:`CpuRows` plan (``p``/``g`` None), GPU tensors as whole bool masks (:func:`prepare`, ``plan``
    None), so that the GPU path stays batched."""
    first = to_tensor(y_pred, "y_pred")
    nd = first.ndim - 2
    if first.device.type == "cpu" and not BATCHED_ON_CPU:
        plan = CpuRows(y_pred, y, include_background)
        return nd, plan.B, plan.C, torch.device("cpu"), plan, None, None
    p, g = prepare(y_pred, y, include_background)
    return nd, p.shape[0], p.shape[1], p.device, None, p, g


def _word_pattern(dtype: torch.dtype):
    """``(zero_mask, one_bits)`` of a real dtype read as raw words: a value is 0 when
    ``bits & zero_mask == 0`` (floats: either sign) and 1 when ``bits == one_bits``."""
    bits = 8 * dtype.itemsize
    if dtype.is_floating_point:
        words = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[dtype.itemsize]
        one = int(torch.ones((), dtype=dtype).view(words).item()) & ((1 << bits) - 1)
        return (1 << (bits - 1)) - 1, one
    return (1 << bits) - 1, 1


def _mask_view(x: torch.Tensor):
    """The compiled helpers' view of a ``(B, C, *spatial)`` CPU tensor: data pointer, word size, the
    :func:`_word_pattern` and five strides (spatial padded to 3 axes with leading size-1 axes)."""
    zero_mask, one_bits = _word_pattern(x.dtype)
    st = list(x.stride())
    return (x.data_ptr(), x.element_size(), zero_mask, one_bits, st[:2] + [0] * (5 - x.ndim) + st[2:])


class CpuRows:
    """CPU plan of the surface metrics: the checked masks and the bounding box of every evaluated
    ``(b, c)`` row's foreground ``p | g``.

    One compiled pass over each input (``mask_boxes_cpu``) checks that every value (background channel
    included) is 0 or 1, reading raw bits so that NaN and every other value are caught, and finds the
    boxes, reading channels-last maps in memory order. The border step then reads the boxes in place,
    whatever the dtype and layout (see the comment on byte masks below). Outside its box both
    masks of a row are 0, so its border voxels (the outside of the image is background for the erosion,
    and so is the outside of the box) and all distances between them are those of the full volume. The
    box of ``p | g`` is also the box of the two borders (a mask's extreme voxels are border voxels).
    """

    def __init__(self, y_pred, y, include_background: bool):
        from .. import _ext

        y_pred, y = check_pair(y_pred, y, include_background)
        B, C = y_pred.shape[:2]
        self.off = 1 if not include_background and C > 1 else 0
        self.B, self.C = B, C - self.off
        self.nd = y_pred.ndim - 2
        spatial3 = [1] * (3 - self.nd) + list(y_pred.shape[2:])
        boxes = torch.empty((B * C, 6), dtype=torch.int64)
        # the compiled helpers use torch's intra-op thread count (torch.set_num_threads limits them too)
        self.threads = torch.get_num_threads()
        views = (_mask_view(y_pred), _mask_view(y))
        bad = _ext.require("the surface metrics").mask_boxes_cpu(*views, B, C, spatial3, boxes.data_ptr(), self.threads)
        for x, name, n_bad in zip((y_pred, y), ("y_pred", "y"), bad):
            if n_bad:
                check_binary(x, name)  # raises, naming the bad values
        # The border step reads each row's box in place. Along a strided last axis (channels-last maps)
        # that pulls in every channel's cache lines; when the boxes cover more than one volume per batch
        # item in all, one byte mask per input (torch, same layout: 1 byte instead of 4 per channel)
        # costs less.
        evaluated = boxes.view(B, C, 6)[:, self.off :]  # the rows the metrics report
        covered = int((evaluated[..., 1::2] - evaluated[..., 0::2]).prod(-1).sum())
        heavy = covered > B * math.prod(spatial3)
        self.masks = [
            x != 0 if heavy and x.stride(-1) != 1 and x.element_size() > 1 else x for x in (y_pred, y)
        ]
        self.views = tuple(_mask_view(m) for m in self.masks)  # self.masks keeps their memory
        table = evaluated.reshape(-1, 6).tolist()
        self.boxes = [row if row[1] > 0 else None for row in table]  # (lo0, hi0, lo1, hi1, lo2, hi2) or empty

    def rows(self, spacing, distances: bool = True, directed: bool = False, max_distance=None):
        """Yield ``(r, counts, V)`` for every row ``r`` with a foreground.

        ``counts``: int64 ``(2,)`` numbers of border voxels of the prediction and the reference.
        ``V``: float32 distances from the prediction's border voxels (C order) to the reference border,
        followed (unless ``directed``) by those from the reference's border voxels to the prediction's
        border (:func:`fastloss.distance.edt_at`'s search, on the row's box); with ``max_distance`` (a
        per-row sequence) distances above it come as ``inf``. None when ``distances`` is False or a mask
        of the row is empty (the callers' empty-mask conventions need no distances).
        """
        from .. import _ext
        from ..distance import edt_at_cpu

        sp = [1.0] * self.nd if spacing is None else [float(v) for v in spacing]
        ext = _ext.require("the surface metrics")
        for r, box in enumerate(self.boxes):
            if box is None:
                continue
            b, c = divmod(r, self.C)
            lo, hi = box[0::2], box[1::2]
            shape = [h - l for l, h in zip(lo, hi)]
            E = torch.empty([2] + shape, dtype=torch.uint8)  # borders of the prediction and the reference
            counts = [
                ext.mask_border_cpu(view, b, c + self.off, lo, hi, self.nd, E[i].data_ptr(), self.threads)
                for i, view in enumerate(self.views)
            ]
            V = None
            if distances and counts[0] and counts[1]:  # a mask is empty exactly when it has no border
                E = E.view([2] + shape[3 - self.nd :])
                limit = float("inf") if max_distance is None else float(max_distance[r])
                # direction 0: the prediction's border voxels, distances to the reference border
                kw = dict(threads=self.threads, features_nonzero=True, max_distance=limit)
                parts = [edt_at_cpu(E[1:], E[:1], counts[0], sp, **kw)]
                if not directed:
                    parts.append(edt_at_cpu(E[:1], E[1:], counts[1], sp, **kw))
                V = torch.cat(parts) if len(parts) > 1 else parts[0]
            yield r, torch.tensor(counts, dtype=torch.int64), V


# ----------------------------------------------------------------------------------------------
# borders and border-to-border distances
# ----------------------------------------------------------------------------------------------


def mask_edges(mask: torch.Tensor, spatial_dims: Optional[int] = None) -> torch.Tensor:
    """Border voxels of boolean masks, as MONAI's ``get_mask_edges`` (``spacing=None``) defines them.

    ``mask & ~erode(mask)`` with the face-connected cross and the outside of the image counting as
    background (``scipy.ndimage.binary_erosion``'s default ``border_value=0``). Leading dims beyond
    the last ``spatial_dims`` (default: all dims) are a batch. Returns a bool tensor of the same shape.
    """
    m = mask if mask.dtype == torch.bool else mask != 0
    nd = m.ndim if spatial_dims is None else spatial_dims
    lead = m.ndim - nd
    # zero-padded copy: the outside of the image is background, so every shifted view of the
    # padded mask reads False beyond the image edge
    padded = m.new_zeros(m.shape[:lead] + tuple(s + 2 for s in m.shape[lead:]))
    inner = (slice(None),) * lead + tuple(slice(1, s + 1) for s in m.shape[lead:])
    padded[inner] = m
    eroded = m.clone()
    for axis in range(nd):
        for shift in (0, 2):  # the neighbour before and after along this axis
            view = list(inner)
            view[lead + axis] = slice(shift, shift + m.shape[lead + axis])
            eroded.logical_and_(padded[tuple(view)])
    return m ^ eroded  # eroded is a subset of m: the border is what erosion removed


def pack_row_boxes(ep: torch.Tensor, eg: torch.Tensor, nd: int):
    """Cut the ``(R, *spatial)`` edge masks to one box size for all rows, each row's box placed around
    its own border voxels: ``(R, *extent)`` copies, ``extent[a]`` the largest extent over the rows of
    their border voxels along axis ``a``. None when no row has a border voxel.

    A row's box holds all its border voxels and lies inside the image (moved back from the far edge
    where needed), so EDT values at its border voxels are the distances of the full volume. Organ-like
    maps have small boxes: the transform then runs on a fraction of ``R`` full volumes. One host sync
    (the extents)."""
    R = ep.shape[0]
    spatial = ep.shape[1:]
    any_edge = ep | eg
    starts, extents = [], []
    for axis in range(nd):
        other = tuple(1 + a for a in range(nd) if a != axis)
        prof = (any_edge.any(dim=other) if other else any_edge).to(torch.uint8)  # (R, n_axis)
        n = spatial[axis]
        has = prof.amax(1) > 0
        first = torch.where(has, prof.argmax(1), 0)  # argmax: the first maximal index
        last = torch.where(has, n - prof.flip(1).argmax(1), 0)
        starts.append(first)
        extents.append(last - first)
    ext = torch.stack(extents).amax(1).tolist()  # the one host sync
    if min(ext) <= 0:
        return None
    index = []
    for axis, (start, e) in enumerate(zip(starts, ext)):
        start = start.clamp(max=spatial[axis] - e)  # keep the box inside the image
        idx = start[:, None] + torch.arange(e, device=ep.device)  # (R, e)
        index.append(idx.view((R,) + tuple(e if a == axis else 1 for a in range(nd))))
    rows = torch.arange(R, device=ep.device).view((R,) + (1,) * nd)
    return ep[(rows, *index)], eg[(rows, *index)]


def edge_distance_chunks(p: torch.Tensor, g: torch.Tensor, spacing, directed: bool = False, metric: str = "euclidean"):
    """Yield ``(rows, E, D)`` over row chunks of the flattened ``(B * C)`` masks.

    ``E`` is ``(2, r, *spatial)`` bool: ``E[0]`` the prediction's border voxels, ``E[1]`` the
    reference's. ``D`` is float32 ``(K, r, *spatial)``: ``D[0]`` the distance from each voxel to the
    nearest reference border voxel (``inf`` when the reference has none), ``D[1]`` (absent when
    ``directed``) to the nearest prediction border voxel. ``D`` is None when no row has any border.
    ``metric``: ``"euclidean"`` (:func:`fastloss.distance.edt`, with ``spacing``) or ``"chessboard"`` /
    ``"taxicab"`` (:func:`fastloss.distance.cdt`, grid steps, no spacing: MONAI's convention).
    """
    from ..distance import cdt, edt  # lazy: the compiled extension loads only when a surface metric runs

    nd = p.ndim - 2
    R = p.shape[0] * p.shape[1]
    ep = mask_edges(p.reshape((R,) + p.shape[2:]), nd)
    eg = mask_edges(g.reshape((R,) + g.shape[2:]), nd)
    k = 1 if directed else 2
    cropped = pack_row_boxes(ep, eg, nd)
    if cropped is None:
        yield slice(0, R), torch.stack((ep, eg)), None
        return
    ep, eg = cropped
    n_vox = math.prod(ep.shape[1:])
    step = max(1, _CHUNK_VOXELS // (k * n_vox))
    for start in range(0, R, step):
        rows = slice(start, min(R, start + step))
        E = torch.stack((ep[rows], eg[rows]))
        # edt(~border) is the distance to the nearest border voxel; the query side is the other mask.
        targets = torch.stack((~eg[rows], ~ep[rows]))[:k]
        if metric == "euclidean":
            D = edt(targets.view(torch.uint8), spacing, spatial_dims=nd)
        else:
            D = cdt(targets, metric, spatial_dims=nd)
        yield rows, E, D


def ball_offsets(radius: float, spacing, nd: int, limit: int):
    """Integer offsets ``o`` with ``|o * spacing| <= radius`` and their float32 lengths, or None when
    there are more than ``limit`` of them (then an EDT is cheaper than shifting masks)."""
    sp = [1.0] * nd if spacing is None else list(spacing)
    reach = [int(math.floor(radius / s)) for s in sp]
    if math.prod(2 * r + 1 for r in reach) > 8 * limit:
        return None
    grids = torch.meshgrid(*[torch.arange(-r, r + 1, dtype=torch.float64) for r in reach], indexing="ij")
    offs = torch.stack([g.reshape(-1) for g in grids], 1)  # (n, nd)
    # MONAI's distances are float64 Euclidean norms rounded to float32, compared in float32
    length = (offs * torch.tensor(sp, dtype=torch.float64)).pow(2).sum(1).sqrt().to(torch.float32)
    keep = length <= torch.tensor(radius, dtype=torch.float32)
    if int(keep.sum()) > limit:
        return None
    return [tuple(int(v) for v in o) for o in offs[keep].tolist()], length[keep].tolist()


def close_counts_by_shifts(E: torch.Tensor, tol_rows: torch.Tensor, offsets, lengths) -> torch.Tensor:
    """Per (direction, row): border voxels of ``E[k]`` with a border voxel of ``E[1 - k]`` within the
    row's tolerance, by dilating the other border with every offset of the tolerance ball."""
    target = E.flip(0)  # direction 0 queries the reference border, direction 1 the prediction's
    near = torch.zeros_like(E)
    nd = E.ndim - 2
    tol_host = tol_rows.cpu()  # decide per offset on the host: no device sync in the loop
    for o, length in zip(offsets, lengths):
        rows_ok_host = tol_host >= length  # per-class tolerances: only rows whose ball holds this offset
        if not bool(rows_ok_host.any()):
            continue
        dst, src = near, target
        for a, k in enumerate(o):  # near[x] |= target[x + o], inside the image only
            ax, n = 2 + a, E.shape[2 + a]
            if abs(k) >= n:
                dst = None
                break
            dst = dst.narrow(ax, max(0, -k), n - abs(k))
            src = src.narrow(ax, max(0, k), n - abs(k))
        if dst is None:
            continue
        if bool(rows_ok_host.all()):
            dst.logical_or_(src)
        else:
            rows_ok = rows_ok_host.to(E.device, non_blocking=True)
            dst.logical_or_(src & rows_ok.view((1, -1) + (1,) * nd))
    near &= E
    return near.flatten(2).sum(-1)


def row_quantile(values: torch.Tensor, row_ids: torch.Tensor, counts: torch.Tensor, q: Optional[float]):
    """Per-row ``q``-quantile (``q`` in [0, 1]; ``torch.quantile``'s linear interpolation) or maximum
    (``q=None``) of float32 ``values`` stored row after row (row ``i`` holds ``counts[i]`` values, in
    any order; ``row_ids`` names each value's row). Empty rows give NaN."""
    n_rows = counts.numel()
    out = torch.full((n_rows,), float("nan"), dtype=torch.float32, device=counts.device)
    if values.numel() == 0:
        return out
    # Scatter into an inf-padded (rows, max count) matrix and sort every row at once (a batched sort
    # is several times faster than one long segmented sort). The padding sorts after every finite
    # value and equals any infinite one, so each row's first counts[i] sorted entries are its values.
    offsets = torch.cumsum(counts, 0) - counts
    pos = torch.arange(values.numel(), device=values.device) - offsets[row_ids]
    padded = torch.full((n_rows, int(counts.max())), float("inf"), dtype=torch.float32, device=values.device)
    padded[row_ids, pos] = values
    srt = padded.sort(dim=-1).values
    last = (counts - 1).clamp_min(0)
    if q is None:
        picked = srt.gather(1, last[:, None])[:, 0]
    else:
        below, above, weights = _quantile_ranks(q, last)
        lo = srt.gather(1, below[:, None])[:, 0]
        hi = srt.gather(1, above[:, None])[:, 0]
        picked = torch.lerp(lo, hi, weights)
    return torch.where(counts > 0, picked, out)


def _quantile_ranks(q: float, last: torch.Tensor):
    """``torch.quantile``'s interpolation points for ``q`` in [0, 1] and ``last = n - 1`` (any shape):
    ``rank = q * (n - 1)`` in float32 (the input dtype), the int64 indices ``floor(rank)`` and
    ``ceil(rank)``, and the weight ``rank - floor(rank)``, for ``torch.lerp`` (which, as
    ``torch.quantile``, gives NaN between two infinite neighbours)."""
    ranks = torch.tensor(q, dtype=torch.float32, device=last.device) * last.to(torch.float32)
    below = ranks.to(torch.int64)
    return below, ranks.ceil().to(torch.int64), ranks - below


def select_quantile(values: torch.Tensor, q: Optional[float]) -> torch.Tensor:
    """``torch.quantile(values, q)`` (or the maximum for ``q=None``) of a non-empty float32 CPU vector,
    by selection instead of a sort: the two order statistics that the linear interpolation needs come
    from one ``numpy.partition`` (O(n)); the interpolation is :func:`row_quantile`'s."""
    if q is None:
        return values.max()
    n = values.numel()
    below, above, weight = _quantile_ranks(q, torch.tensor(n - 1))
    below, above = int(below), int(above)
    part = np.partition(values.numpy(), (below, above) if above != below else below)
    return torch.lerp(torch.tensor(part[below]), torch.tensor(part[above]), weight)


def chunk_hausdorff(E: torch.Tensor, D: torch.Tensor, counts: torch.Tensor, q: Optional[float], pooled: bool):
    """Hausdorff distance (maximum, or percentile ``q`` in [0, 100]) of each row of a GPU-path chunk
    (``E``, ``D`` as :func:`edge_distance_chunks` yields them, ``counts`` the ``(2, r)`` border counts)."""
    K, r = D.shape[:2]
    E = E[:K]  # the query border voxels of each direction computed
    counts = counts[:K]
    if q is None and not pooled:
        # maximum per row and direction without extracting anything
        per_dir = torch.where(E, D, torch.zeros((), dtype=D.dtype, device=D.device)).flatten(2).amax(-1)
        per_dir = torch.where(counts > 0, per_dir, torch.full_like(per_dir, float("nan")))
    else:
        if pooled:  # one group per row holding both directions: read (row, direction, voxel)
            values = D.transpose(0, 1)[E.transpose(0, 1)]
            group_counts = counts.sum(0)
        else:  # one group per (direction, row)
            values = D[E]
            group_counts = counts.flatten()
        row_ids = torch.repeat_interleave(torch.arange(group_counts.numel(), device=D.device), group_counts)
        per_dir = row_quantile(values, row_ids, group_counts, None if q is None else q / 100.0).view(-1, r)
    # NaN-propagating maximum over the directions, as MONAI's torch.max over the stack
    return per_dir.amax(0) if per_dir.shape[0] > 1 else per_dir[0]
