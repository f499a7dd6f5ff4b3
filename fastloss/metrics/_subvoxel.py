"""NSD on surface elements: MONAI's ``compute_surface_dice(..., use_subvoxels=True)``, DeepMind's
``surface-distance``.

The surface lies in the cells between voxel centres, and each cell the surface passes through is a
surface element weighted by its area (3D, from the marching-cubes neighbour-code table) or its contour
length (2D, marching squares) for the spacing; NSD is then an area-weighted fraction. It differs from the
voxel-count NSD of :func:`fastloss.metrics.surface_dice`, most for coarse or anisotropic grids. The
Medical Segmentation Decathlon's evaluation code, whose 1 mm tolerance the paper uses, follows DeepMind.

This module imports :mod:`fastloss.metrics._checks` and the CPU plan of
:mod:`fastloss.metrics._surface` (:class:`~fastloss.metrics._surface.CpuRows`, and its switch
``BATCHED_ON_CPU``, read on that module at call time), and, lazily, :mod:`fastloss.distance`.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from .._validation import check_spacing
from . import _surface
from ._checks import check_tolerance, prepare, to_tensor
from ._surface import CpuRows


# Surface area of the marching-cubes surface inside one 2x2x2 cell of voxel centres, per neighbour code,
# as a function of the spacing. The code of a cell is sum(bit(o) * mask[x + o]) over the 8 offsets
# o in {0, 1}^3 with bit(o) = 2 ** (7 - (4 o0 + 2 o1 + o2)) (MONAI's encoding kernel). The surface is
# DeepMind surface-distance's triangulation (the table MONAI 1.6.1 ships), whose triangles come in three
# families once the grid is stretched by the spacing s: normals along a body diagonal, normals in a
# coordinate plane, normals along an axis. With w = (s1 s2, s0 s2, s0 s1) (the factors by which a
# stretch scales the area of a face perpendicular to each axis) a cell's area is
#
#     A/8 |w| + B01/4 hypot(w0, w1) + B02/4 hypot(w0, w2) + B12/4 hypot(w1, w2) + (G0 w0 + G1 w1 + G2 w2)/2
#
# with the seven small integers (A, B01, B02, B12, G0, G1, G2) below, one group of seven digits per code
# 0..127; code c >= 128 has the area of 255 - c (a cell and its complement share their surface).
# tests/test_monai_metrics.py checks all 256 areas against MONAI's table for anisotropic spacings.
# The digits are facts read from that table (DeepMind surface-distance, Apache License 2.0; MONAI,
# Apache License 2.0), re-encoded here; no code of either project is used.
_SURFEL_COEFFS = (
    "00000001000000100000002000001000000002000020000003000100100000020000000020000300010002000003000100"
    "30001000000200100000000020002000000300001020000003000001300000060000002000000100200010200004011000"
    "12000004101000400010030001001000000200000000020003000010200000010200001002000401100020000003000000"
    "30000016000000120000040001004101000300010002000003000010300001000000201200000411000040000103000010"
    "12000004000010411000030000100400000120000012000000200000100000020000002000000120000000020003000001"
    "10020004101000200000030000001020000400010030000106000000401100030001000020000300000110200004110000"
    "30000010000002400000130000011020000400000100400001020000411000030000011020000002000020000003000000"
    "10020004000010100200040000010004000100200030000004000000400000130000004000010300000010020002000000"
    "30001006000000401100030000104101000300000110020000002000400010030000001020000200000012000002000000"
    "20000001000000"
)


def _surfel_area_table(spacing, nd: int, device) -> torch.Tensor:
    """float64 table: neighbour code -> area (3D, ``_SURFEL_COEFFS``) or contour length (2D) of the
    surface inside one cell of voxel centres, for ``spacing`` (None: 1 per axis)."""
    sp = [1.0] * nd if spacing is None else [float(s) for s in spacing]
    if nd == 2:
        # Marching squares with the contour through the edge midpoints. Corners of a cell, by bit:
        # 8 -> (0, 0), 4 -> (0, 1), 2 -> (1, 0), 1 -> (1, 1). A segment joins the midpoints of two cut
        # edges: across the cell (opposite edges) it is as long as the cell along that direction; between
        # adjacent edges it is half the cell diagonal; a saddle (4 cut edges) has two of those.
        s0, s1 = sp
        half_diag = 0.5 * math.hypot(s0, s1)
        table = []
        for code in range(16):
            a, b, c, d = (code >> 3) & 1, (code >> 2) & 1, (code >> 1) & 1, code & 1  # (0,0) (0,1) (1,0) (1,1)
            cut = {"top": a != b, "bottom": c != d, "left": a != c, "right": b != d}
            n = sum(cut.values())
            if n == 0:
                table.append(0.0)
            elif n == 4:
                table.append(2 * half_diag)
            elif cut["top"] and cut["bottom"]:
                table.append(s0)  # a segment along axis 0
            elif cut["left"] and cut["right"]:
                table.append(s1)  # a segment along axis 1
            else:
                table.append(half_diag)
        return torch.tensor(table, dtype=torch.float64, device=device)
    s0, s1, s2 = sp
    w = (s1 * s2, s0 * s2, s0 * s1)
    basis = torch.tensor(
        [math.hypot(*w) / 8, math.hypot(w[0], w[1]) / 4, math.hypot(w[0], w[2]) / 4, math.hypot(w[1], w[2]) / 4,
         w[0] / 2, w[1] / 2, w[2] / 2],
        dtype=torch.float64,
    )
    digits = torch.tensor([int(ch) for ch in _SURFEL_COEFFS], dtype=torch.float64).view(128, 7)
    half = digits @ basis
    return torch.cat([half, half.flip(0)]).to(device)


def _cell_codes(m: torch.Tensor) -> torch.Tensor:
    """Neighbour codes of every cell of voxel centres of ``m`` (bool ``(k, *box)``) with one layer of
    background around it (MONAI crops with a margin of 1): uint8 ``(k, *(box + 1))``."""
    nd = m.ndim - 1
    a = torch.zeros((m.shape[0],) + tuple(s + 2 for s in m.shape[1:]), dtype=torch.uint8, device=m.device)
    a[(slice(None),) + tuple(slice(1, s + 1) for s in m.shape[1:])] = m
    out_shape = (m.shape[0],) + tuple(s + 1 for s in m.shape[1:])
    code = torch.zeros(out_shape, dtype=torch.uint8, device=m.device)
    for i, o in enumerate(np.ndindex(*(2,) * nd)):
        part = a[(slice(None),) + tuple(slice(k, k + n) for k, n in zip(o, out_shape[1:]))]
        code.add_(part << ((1 << nd) - 1 - i))  # MONAI's encoding kernel: the first offset is the top bit
    return code


def _subvoxel_row(pm: torch.Tensor, gm: torch.Tensor, tol: float, table: torch.Tensor, spacing, metric: str):
    """NSD on surface elements of one ``(b, c)`` row: ``pm``/``gm`` the bool masks cropped to the box of
    their union (not both empty). Returns ``(Σ close areas, Σ areas)`` as float64 scalars."""
    from ..distance import edt_at_cpu, cdt, edt_at

    nd = pm.ndim
    code = _cell_codes(torch.stack((pm, gm)))
    full = (1 << (1 << nd)) - 1
    E = (code != 0) & (code != full)  # the cells the surface passes through, (2, *cells)
    counts = E.flatten(1).sum(1).tolist()
    areas = [table[code[k][E[k]].long()] for k in range(2)]  # C order, as the distances below
    total = areas[0].sum() + areas[1].sum()
    if not (counts[0] and counts[1]):  # one mask empty: every distance is inf, nothing is close
        return total.new_zeros(()), total
    sp = [1.0] * nd if spacing is None else [float(s) for s in spacing]
    tol32 = torch.tensor(tol, dtype=torch.float32)  # MONAI compares float32 distances in float32
    close = 0.0
    for k in range(2):  # direction k: cells of mask k, distance to the nearest cell of the other mask
        query, target = E[k], E[1 - k]
        if metric == "euclidean":
            if query.device.type == "cpu" and not _surface.BATCHED_ON_CPU:
                d = edt_at_cpu(
                    target[None].view(torch.uint8), query[None].view(torch.uint8), counts[k], sp,
                    threads=torch.get_num_threads(), features_nonzero=True, max_distance=float(tol32),
                )
            else:
                d = edt_at(~target, query, sp, spatial_dims=nd)
        else:  # grid steps, no spacing (MONAI's chamfer transforms)
            d = cdt(~target, metric, spatial_dims=nd)[query]
        close = close + areas[k][d.to(areas[k].device) <= tol32.to(d.device)].sum()
    return close, total


def surface_dice_subvoxels(y_pred, y, class_thresholds, include_background: bool, spacing, metric: str):
    """``compute_surface_dice(..., use_subvoxels=True)`` for one spacing: ``(B, C')`` float32."""
    first = to_tensor(y_pred, "y_pred")
    nd = first.ndim - 2
    if nd not in (2, 3):
        raise ValueError(
            "use_subvoxels=True needs y_pred and y of shape [B,C,H,W] or [B,C,H,W,D] (surface elements exist "
            f"in 2D and 3D), got shape {tuple(first.shape)}"
        )
    if first.device.type == "cpu" and not _surface.BATCHED_ON_CPU:
        plan = CpuRows(y_pred, y, include_background)
        B, C, dev = plan.B, plan.C, torch.device("cpu")
        boxes = [None if box is None else box[2 * (3 - nd) :] for box in plan.boxes]

        def crops(r, sl):
            b, c = divmod(r, C)
            return [m[(b, c + plan.off) + sl] != 0 for m in plan.masks]

    else:
        p, g = prepare(y_pred, y, include_background)
        B, C, dev = p.shape[0], p.shape[1], p.device
        boxes = _union_boxes(p.reshape((-1,) + p.shape[2:]) | g.reshape((-1,) + g.shape[2:]))

        def crops(r, sl):
            b, c = divmod(r, C)
            return [p[(b, c) + sl], g[(b, c) + sl]]

    sp = check_spacing(spacing, nd)
    tol = check_tolerance(class_thresholds, C).tolist()
    table = _surfel_area_table(sp, nd, dev)
    out = torch.full((B * C,), float("nan"), dtype=torch.float64, device=dev)
    for r, box in enumerate(boxes):
        if box is None:
            continue  # both masks empty: no surface, 0 / 0
        sl = tuple(slice(lo, hi) for lo, hi in zip(box[0::2], box[1::2]))
        pm, gm = crops(r, sl)
        close, total = _subvoxel_row(pm, gm, tol[r % C], table, sp, metric)
        out[r] = close / total
    return out.float().view(B, C)


def _union_boxes(m: torch.Tensor) -> list:
    """Per row of a bool ``(R, *spatial)`` mask: ``[lo0, hi0, lo1, hi1, ...]`` of its non-zero voxels, or
    None for an empty row (one host sync)."""
    R, nd = m.shape[0], m.ndim - 1
    cols = []
    for axis in range(nd):
        other = tuple(1 + a for a in range(nd) if a != axis)
        prof = (m.any(dim=other) if other else m).to(torch.uint8)  # (R, n)
        n = prof.shape[1]
        cols += [prof.argmax(1), n - prof.flip(1).argmax(1)]
    has = m.flatten(1).any(1)
    table = torch.stack(cols, 1).tolist()
    return [row if ok else None for row, ok in zip(table, has.tolist())]
