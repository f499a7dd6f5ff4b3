"""Segmentation metrics: Dice (DSC), normalized surface Dice (NSD) and Hausdorff distance (HD, HD95).

The paper evaluates every loss with DSC and NSD at 1 mm and discusses HD95 (Sections 3.3 and 5.1).
These functions take batches of binary or one-hot masks ``(B, C, *spatial)`` (1 to 3 spatial dims;
torch tensors on the CPU or a GPU, or numpy arrays) and return ``(B, C)`` float32 tensors on the
input's device, with the values and the empty-mask conventions of MONAI 1.6's ``compute_dice``,
``compute_surface_dice`` and ``compute_hausdorff_distance``. MONAI's own names (``compute_*``,
``do_metric_reduction`` and the cumulative metric objects) are here as drop-ins for ``monai.metrics``.

One idea per module, imports pointing down (a module imports only those above it in this list, and
the package imports only :mod:`fastloss._validation`, :mod:`fastloss._ext` and :mod:`fastloss.distance`,
the last two lazily, when a surface metric runs):

- :mod:`~fastloss.metrics._checks`: input checks, with MONAI's error types;
- :mod:`~fastloss.metrics._surface`: border voxels and border-to-border distances (the CPU plan
  :class:`~fastloss.metrics._surface.CpuRows`, the batched GPU path), percentiles;
- :mod:`~fastloss.metrics._subvoxel`: NSD on surface elements (surfel areas, ``use_subvoxels=True``);
- :mod:`~fastloss.metrics.core`: fastloss's own metrics (:func:`dice`, :func:`surface_dice`,
  :func:`hausdorff_distance`, :func:`surface_metrics`);
- :mod:`~fastloss.metrics.monai_compat`: MONAI's ``compute_*`` functions and metric objects.

This module only re-exports the public names.
"""

from __future__ import annotations

from ._surface import mask_edges
from .core import Spacing, dice, hausdorff_distance, surface_dice, surface_metrics
from .monai_compat import (
    DiceMetric,
    HausdorffDistanceMetric,
    SurfaceDiceMetric,
    SurfaceDistanceMetric,
    compute_average_surface_distance,
    compute_dice,
    compute_hausdorff_distance,
    compute_surface_dice,
    do_metric_reduction,
)

__all__ = [
    # fastloss's own functions
    "dice", "surface_dice", "hausdorff_distance", "surface_metrics", "mask_edges",
    # MONAI's names, arguments and results (drop-ins for monai.metrics)
    "compute_dice", "compute_hausdorff_distance", "compute_surface_dice", "compute_average_surface_distance",
    "do_metric_reduction", "DiceMetric", "HausdorffDistanceMetric", "SurfaceDiceMetric", "SurfaceDistanceMetric",
]
