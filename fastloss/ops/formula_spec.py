"""The fused loss formula's configuration: the ABI shared by the Triton kernel (``ops/triton_formula.py``) and
its C++ twin (``csrc/formula_cpu.cpp`` through ``ops/cpu_formula.py``).

A formula is ``λ_r·region + λ_d·distribution`` on the ``(B, C, K)`` statistics of ``ops/stats.py``. Its
configuration travels as two flat lists (``make_config``): integers in the order of :data:`INT_FIELDS` and
floats in the order of :data:`FLOAT_FIELDS`, which is the form a ``torch.library`` custom op takes and the
order in which ``csrc/formula_cpu.cpp`` and the Triton launcher read them. Change a field here and in both
readers together.

This module imports no triton and no compiled code: the losses (``losses/_fused.py``) build configurations
with it on every device, and ``ops/formula.py`` hands them to whichever backend serves the tensor.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

__all__ = ["REGION", "GD_WEIGHT", "DIST", "INT_FIELDS", "FLOAT_FIELDS", "MAX_TILE", "make_config", "tiles", "fits"]

REGION = {"none": 0, "dice": 1, "jaccard": 2, "tversky": 3, "gdice": 4}  # gdice: the C++ twin only
GD_WEIGHT = {"uniform": 0, "simple": 1, "square": 2}
DIST = {"none": 0, "ce": 1, "focal": 2}
_F32_EPS = float(torch.finfo(torch.float32).eps)  # FocalLoss's clamp of the voxel count
MAX_TILE = 1 << 14  # padded (batch, class) entries one formula program holds (both backends keep this bound)


def _next_power_of_2(n: int) -> int:
    return 1 if n <= 1 else 1 << (int(n) - 1).bit_length()


def tiles(B: int, C: int) -> Tuple[int, int]:
    """The padded ``(batch, class)`` tile of one formula program: powers of two, at least 2."""
    return max(2, _next_power_of_2(B)), max(2, _next_power_of_2(C))


def fits(B: int, C: int) -> bool:
    """True when one formula program can hold the ``(B, C)`` statistics."""
    bb, bc = tiles(B, C)
    return bb * bc <= MAX_TILE


INT_FIELDS = ("region", "first_class", "batch", "region_mean", "i_tp", "i_ps", "i_gs",
               "dist", "dist_mean", "ce_weighted_den", "focal_masked", "i_ce", "i_g", "i_count", "i_focal",
               "gd_weight", "gd_relative", "gd_f32_weights")
FLOAT_FIELDS = ("smooth_nr", "smooth_dr", "alpha", "beta", "lambda_region", "lambda_dist", "region_numel",
                 "dist_divisor", "eps")


def make_config(
    *,
    region: str = "none",
    first_class: int = 0,
    batch: bool = False,
    region_mean: bool = True,
    i_tp: int = -1,
    i_ps: int = -1,
    i_gs: int = -1,
    smooth_nr: float = 0.0,
    smooth_dr: float = 0.0,
    alpha: float = 0.5,
    beta: float = 0.5,
    lambda_region: float = 1.0,
    region_numel: float = 1.0,
    dist: str = "none",
    dist_mean: bool = True,
    ce_weighted_den: bool = False,
    focal_masked: bool = False,
    i_ce: int = -1,
    i_g: int = -1,
    i_count: int = -1,
    i_focal: int = -1,
    lambda_dist: float = 1.0,
    dist_divisor: float = 1.0,
    eps: float = _F32_EPS,
    gd_weight: str = "square",
    gd_relative: bool = False,
    gd_f32_weights: bool = False,
) -> Tuple[List[int], List[float]]:
    """The formula as ``(int list, float list)``, the form the custom op takes.

    Region term (``region``: ``none``/``dice``/``jaccard``/``tversky``) on columns ``i_tp`` (Σpg), ``i_ps``
    (Σp or Σp²), ``i_gs`` (Σg or Σg²), classes ``c ≥ first_class``, summed over the batch first with
    ``batch``, mean over its ``region_numel`` values or sum, times ``lambda_region``. Distribution term
    (``dist``: ``none``/``ce``/``focal``) on ``i_ce`` (+ ``i_g`` for ``ce_weighted_den``, ``i_count``) or
    ``i_focal`` (+ ``i_count`` when ``focal_masked``), times ``lambda_dist``; ``dist_divisor`` is the unmasked
    focal divisor (N for sum, B·N or B·C·N for mean). ``region="gdice"`` (the generalized Dice, C++ twin only):
    class weights ``gd_weight`` (``uniform``/``simple``/``square``) from the target volumes, computed in float32
    with ``gd_f32_weights``, smoothing scaled by the weighted target volume with ``gd_relative``.
    """
    if region not in REGION or dist not in DIST:
        raise ValueError(f"region must be one of {list(REGION)} and dist one of {list(DIST)}, got {region!r}, {dist!r}")
    if gd_weight not in GD_WEIGHT:
        raise ValueError(f"gd_weight must be one of {list(GD_WEIGHT)}, got {gd_weight!r}")
    ints = [REGION[region], int(first_class), int(batch), int(region_mean), i_tp, i_ps, i_gs,
            DIST[dist], int(dist_mean), int(ce_weighted_den), int(focal_masked), i_ce, i_g, i_count, i_focal,
            GD_WEIGHT[gd_weight], int(gd_relative), int(gd_f32_weights)]
    floats = [smooth_nr, smooth_dr, alpha, beta, lambda_region, lambda_dist, region_numel, dist_divisor, eps]
    return [int(v) for v in ints], [float(v) for v in floats]
