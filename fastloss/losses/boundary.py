"""Boundary-based losses (Ma et al. 2021, Sec. 2.3): the boundary loss (Eq. 20, Kervadec et al.) and the
Hausdorff-distance loss (Eq. 21, Karimi and Salcudean; MONAI's ``HausdorffDTLoss``).

Both are formulas over per-(batch, class) voxel sums with a per-voxel weight map (``class_stats`` columns
``map_p`` and ``map_sqerr``), so the fused statistics kernels serve them. The maps come from the exact
distance transform in :mod:`fastloss.distance`; they are computed without gradient (they are functions of the
target, and of the thresholded prediction for the Hausdorff loss, which is piecewise constant).
"""

from __future__ import annotations

from typing import Callable, Optional

import torch

from .._validation import check_spacing
from ..ops.stats import StatsSpec, activate, class_stats, compute_dtype
from ._common import LossBase, check_nonneg, reduce_loss, select_classes

__all__ = ["BoundaryLoss", "HausdorffDTLoss", "boundary_loss", "hausdorff_dt_loss"]


def _check_spacing_arg(spacing):
    """Validate a spacing argument before the number of spatial dims is known."""
    if spacing is None:
        return None
    n = 1 if isinstance(spacing, (int, float)) and not isinstance(spacing, bool) else None
    if n is None:
        try:
            n = len(spacing)
        except TypeError:
            raise TypeError(f"spacing must be a number or a sequence of numbers, got {type(spacing).__name__}")
    check_spacing(spacing, n)
    return spacing


class BoundaryLoss(LossBase):
    r"""Boundary loss of Kervadec et al. (Ma et al. 2021, Eq. 20).

    .. math::
        L_{BD} = \frac{1}{|\mathcal{C}|\,B\,N} \sum_{b}\sum_{c \in \mathcal{C}} \sum_{i}
                 \phi_G^{b,c}(i)\, s_\theta^{b,c}(i)

    with :math:`s_\theta` the softmax (or sigmoid) probability and :math:`\phi_G` the signed distance map
    of each one-hot target channel, :func:`fastloss.signed_distance`:
    ``edt(~g)·(~g) − (edt(g) − 1)·g`` (positive outside the object, ≤ 0 inside, the boundary voxels at 0),
    and 0 for a class absent from an image, exactly as Kervadec's ``one_hot2dist``. The constant term
    :math:`-\sum\phi_G g` of Eq. (19) is dropped (it has no gradient), so the loss is negative when the
    prediction is good. As in Kervadec's ``SurfaceLoss`` (``loss = (probs[:, idc] * dist_maps[:, idc]).mean()``
    with ``idc = [1]`` in their experiments), the background channel is left out by default
    (``include_background=False``) and the result is the mean over images, kept classes and voxels.

    The map is computed inside ``forward`` from the target (no gradient flows through it), unless a
    precomputed ``distance_map`` is passed (e.g. from a data loader); the gradient is
    ``∂L/∂s = φ_G / (|C|·B·N)``, pushed through the activation by autograd or the fused kernels.

    Args:
        include_background: keep channel 0 (Kervadec's ``idc`` would then include it). Default False.
        to_onehot_y: accepted for MONAI compatibility; integer labels are always accepted.
        sigmoid: apply a sigmoid to the logits.
        softmax: apply a softmax over channels. ``None`` (default) means softmax unless ``sigmoid`` or
            ``other_act`` is given.
        other_act: any other activation callable applied to the input.
        reduction: ``"mean"`` (default), ``"sum"`` over the per-(image, class) means, or ``"none"``:
            shape ``(B, C', 1, ...)``.
        spacing: voxel spacing for the distance maps (one number or one per spatial dim).
        ignore_index: label (or one-hot class / sentinel, MONAI's convention) whose voxels are ignored:
            prediction and target are masked there, the map is computed from the masked target, and the
            mean is taken over counted voxels.

    Raises:
        TypeError: wrong argument types, non-callable ``other_act``, bad input/target dtypes.
        ValueError: incompatible activations, unknown reduction, bad spacing, bad shapes or labels, a
            ``distance_map`` of the wrong shape.

    Example:
        >>> loss = BoundaryLoss()
        >>> x = torch.randn(2, 3, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16, 16))
        >>> loss(x, y).backward()
    """

    def __init__(
        self,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: Optional[bool] = None,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
        spacing=None,
        ignore_index: Optional[int] = None,
    ) -> None:
        if softmax is None:
            softmax = not sigmoid and other_act is None
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            ignore_index=ignore_index,
        )
        self.spacing = _check_spacing_arg(spacing)

    def _first_class(self, C: int) -> int:
        return 0 if (self.include_background or C == 1) else 1

    def distance_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The ``(B, C, N)`` signed distance map φ_G of ``target`` (zero in the background channel when it
        is excluded), as ``forward`` computes it; pass it back reshaped to ``(B, C, *spatial)``."""
        prep = self.prepare(input, target)
        return self._map_from_target(input, prep.target, self._first_class(input.shape[1]))

    @torch.no_grad()
    def _map_from_target(self, input: torch.Tensor, tgt, c0: int) -> torch.Tensor:
        from ..distance import signed_distance

        B, C = input.shape[:2]
        spatial = tuple(input.shape[2:])
        dt = compute_dtype(input)
        spacing = check_spacing(self.spacing, len(spatial))
        g = tgt.dense(dt)[:, c0:] > 0.5  # (B, C', N) binary masks, ignored voxels are background
        phi = signed_distance(g.reshape((B, C - c0) + spatial), spacing, spatial_dims=len(spatial))
        phi = torch.as_tensor(phi).to(device=input.device, dtype=dt).reshape(B, C - c0, -1)
        if c0:
            phi = torch.cat([phi.new_zeros(B, c0, phi.shape[2]), phi], dim=1)
        return phi

    def forward(self, input: torch.Tensor, target: torch.Tensor, distance_map: Optional[torch.Tensor] = None):
        """``input`` logits ``(B, C, *spatial)``; ``target`` labels or one-hot; optional precomputed
        ``distance_map`` of shape ``(B, C, *spatial)`` (or ``(B, C-1, *spatial)`` without background)."""
        prep = self.prepare(input, target)
        C = input.shape[1]
        c0 = self._first_class(C)
        if distance_map is None:
            phi = self._map_from_target(input, prep.target, c0)
        else:
            phi = self._check_map(distance_map, input, c0).to(compute_dtype(input))
        # Σ_i m·φ·p and Σ_i m per (b, c); ∂L/∂p_i = φ_i / count (autograd or the fused backward kernel).
        stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, ("map_p", "count")), phi)
        stats = select_classes(stats, self.include_background)
        f = stats[..., 0] / stats[..., 1].clamp_min(1.0)
        return reduce_loss(f, self.reduction, prep.spatial_ndim)

    @staticmethod
    def _check_map(distance_map, input: torch.Tensor, c0: int) -> torch.Tensor:
        if not isinstance(distance_map, torch.Tensor):
            raise TypeError(f"distance_map must be a torch.Tensor, got {type(distance_map).__name__}")
        if not distance_map.dtype.is_floating_point:
            raise TypeError(f"distance_map must be a float tensor, got dtype {distance_map.dtype}")
        if distance_map.device != input.device:
            raise ValueError(f"distance_map is on {distance_map.device} but input is on {input.device}")
        B, C = input.shape[:2]
        spatial = tuple(input.shape[2:])
        N = input[0, 0].numel()
        full, part = (B, C) + spatial, (B, C - c0) + spatial
        shape = tuple(distance_map.shape)
        dm = distance_map.detach()
        if shape in (full, (B, C, N)):
            dm = dm.reshape(B, C, N)
            if c0:
                dm = torch.cat([torch.zeros_like(dm[:, :c0]), dm[:, c0:]], dim=1)
            return dm
        if c0 and shape in (part, (B, C - c0, N)):
            dm = dm.reshape(B, C - c0, N)
            return torch.cat([dm.new_zeros(B, c0, N), dm], dim=1)
        raise ValueError(
            f"distance_map must have shape {full}" + (f" or {part}" if c0 else "") + f", got {shape}"
        )


class HausdorffDTLoss(LossBase):
    r"""Hausdorff-distance loss of Karimi and Salcudean (Ma et al. 2021, Eq. 21); MONAI 1.6 ``HausdorffDTLoss``.

    .. math::
        L_{HD} = \frac{1}{N} \sum_i (s_i - g_i)^2 \, (d_{G,i}^{\alpha} + d_{S,i}^{\alpha})

    per image and class (per class over the whole batch with ``batch=True``), then reduced over images and
    classes. ``d_G`` and ``d_S`` are MONAI's distance fields of the target and of the thresholded
    prediction ``p > 0.5``: for each (image, class) mask that is neither empty nor full, the distance of
    each voxel to the nearest voxel of the other value (``edt(mask) + edt(~mask)``); zero for a mask of one
    value. The fields are computed without gradient (as MONAI does: they are piecewise constant in p), so
    ``∂L/∂s_i = 2 (s_i − g_i)(d_G^α + d_S^α)/N``. Same argument names, order, defaults, warnings and results
    as MONAI 1.6.1; additionally 1D inputs, integer labels whatever ``to_onehot_y`` says, ``ignore_index``
    (prediction and target masked, as MONAI's Dice does; the mean is then over counted voxels) and
    ``spacing`` for anisotropic voxels.

    Args:
        alpha: exponent of the distance fields. Default 2.0.
        include_background: keep channel 0. Default False (MONAI's default).
        to_onehot_y: accepted for MONAI compatibility.
        sigmoid, softmax, other_act: activation of the input (MONAI's rules; none by default).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (shape ``(B, C', 1, ...)``, ``(1, C', 1, ...)`` with
            ``batch``).
        batch: average over the batch before the per-class reduction.
        ignore_index: see above.
        spacing: voxel spacing for the distance fields.

    Raises:
        TypeError: non-callable ``other_act``, wrong argument or tensor types.
        ValueError: incompatible activations, unknown reduction, bad shapes, labels or spacing.

    Example:
        >>> loss = HausdorffDTLoss(softmax=True)
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16))
        >>> loss(x, y).backward()
    """

    def __init__(
        self,
        alpha: float = 2.0,
        include_background: bool = False,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
        batch: bool = False,
        ignore_index: Optional[int] = None,
        spacing=None,
    ) -> None:
        super().__init__(
            include_background=include_background,
            to_onehot_y=to_onehot_y,
            sigmoid=sigmoid,
            softmax=softmax,
            other_act=other_act,
            reduction=reduction,
            batch=batch,
            ignore_index=ignore_index,
        )
        self.alpha = check_nonneg(alpha, "alpha")
        self.spacing = _check_spacing_arg(spacing)

    @torch.no_grad()
    def weight_map(self, p: torch.Tensor, g: torch.Tensor, spatial: tuple) -> torch.Tensor:
        """``d_G^α + d_S^α`` (no gradient) for probabilities ``p`` and targets ``g`` of shape ``(B, C, N)``:
        MONAI's distance fields of the masks ``p > 0.5`` and ``g > 0.5`` per (image, class)."""
        from ..distance import distance_field

        B, C, _ = p.shape
        spacing = check_spacing(self.spacing, len(spatial))
        masks = torch.stack([p > 0.5, g > 0.5])  # (2, B, C, N): prediction and target masks
        field = distance_field(masks.reshape((2, B, C) + spatial), spacing, spatial_dims=len(spatial))
        field = torch.as_tensor(field).to(device=p.device, dtype=p.dtype).reshape(2, B, C, -1)
        return field[0] ** self.alpha + field[1] ** self.alpha

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` ``(B, C, *spatial)`` (logits with ``sigmoid``/``softmax``); ``target`` labels or one-hot."""
        prep = self.prepare(input, target)
        B, C = input.shape[:2]
        c0 = 0 if (self.include_background or C == 1) else 1
        dt = compute_dtype(input)
        with torch.no_grad():
            # The prediction as the statistics see it (activation, ignore mask), thresholded at 0.5 as MONAI.
            p = activate(prep.input.detach().reshape(B, C, -1).to(dt), prep.activation)
            if prep.target.mask is not None:
                p = p * prep.target.mask.to(dt).unsqueeze(1)
            g = prep.target.dense(dt)
            w = torch.zeros_like(p)
            w[:, c0:] = self.weight_map(p[:, c0:], g[:, c0:], tuple(input.shape[2:]))
        # Σ_i m·(p − g)²·w and Σ_i m per (b, c); ∂/∂p_i = 2 m (p_i − g_i) w_i / count (autograd / fused kernel).
        stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, ("map_sqerr", "count")), w)
        stats = select_classes(stats, self.include_background)
        if self.batch:  # MONAI: mean over batch and voxels, shape (1, C')
            stats = stats.sum(dim=0, keepdim=True)
        f = stats[..., 0] / stats[..., 1].clamp_min(1.0)
        return reduce_loss(f, self.reduction, prep.spatial_ndim)


def boundary_loss(input: torch.Tensor, target: torch.Tensor, distance_map: Optional[torch.Tensor] = None, **kwargs):
    """Functional :class:`BoundaryLoss`: ``BoundaryLoss(**kwargs)(input, target, distance_map)``."""
    return BoundaryLoss(**kwargs)(input, target, distance_map)


def hausdorff_dt_loss(input: torch.Tensor, target: torch.Tensor, **kwargs):
    """Functional :class:`HausdorffDTLoss`: ``HausdorffDTLoss(**kwargs)(input, target)``."""
    return HausdorffDTLoss(**kwargs)(input, target)
