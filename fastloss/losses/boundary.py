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
from ._common import LossBase, check_bool, check_nonneg, functional_form, reduce_loss, select_classes

__all__ = ["BoundaryLoss", "HausdorffDTLoss", "LogHausdorffDTLoss", "boundary_loss", "hausdorff_dt_loss",
           "log_hausdorff_dt_loss"]


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
    r"""Boundary loss of Kervadec et al. (Ma et al. 2021, Eq. 20); MONAI 1.6.1 ``BoundaryLoss``.

    .. math::
        f_{b,c} = \frac{1}{N} \sum_{i=1}^{N} \phi_G^{b,c}(i)\, s^{b,c}(i), \qquad
        L = \operatorname{reduction}_{b,\,c \in \mathcal{C}}\big(f_{b,c}\big)

    with :math:`s` the prediction (after ``sigmoid``/``softmax``/``other_act``, or the input as is),
    :math:`N` the number of voxels, and :math:`\phi_G^{b,c}` the signed distance map of the target mask
    :math:`g = (y^{b,c} > 0.5)` (one-hot channel ``c`` of image ``b``)::

        phi = edt(~g)·(~g) − (edt(g) − 1)·g

    positive outside the object (distance to it), ≤ 0 inside (the innermost boundary layer at 0). As in
    MONAI, a mask with no boundary, i.e. **empty or full**, gets a map of zeros (per image and class), so
    it contributes 0. The constant term :math:`-\sum\phi_G g` of Eq. (19) is dropped (it has no gradient),
    so the loss is negative when the prediction is good. With ``batch=True`` the values are averaged over
    the batch first: :math:`f_c = \frac{1}{B}\sum_b f_{b,c}` (MONAI's ``loss.mean(dim=0)``).

    The map is a function of the target only: it is computed without gradient (the batched exact EDT of
    :func:`fastloss.distance.signed_distance`, every (image, class) volume in one call), or passed in
    precomputed as ``distance_map``. So ``∂f_{b,c}/∂s^{b,c}(i) = φ_G^{b,c}(i)/N``, pushed through the
    activation by autograd or the fused statistics kernels (``class_stats`` columns ``map_p``, ``count``).

    Constructor arguments, their order and defaults, warnings and results are MONAI 1.6.1's (defaults: no
    activation, background included, per-image values); the paper's configuration (softmax, background
    excluded, as Kervadec's ``idc = [1]``) is ``fastloss.get_loss("BD")``. fastloss additionally accepts
    integer labels whatever ``to_onehot_y`` says, ``spacing``, ``ignore_index``, and 1D inputs with
    ``allow_1d=True`` (MONAI refuses them with a ``ValueError``, and so does this class by default;
    ``get_loss("BD")`` and :class:`~fastloss.losses.compound.DiceBoundaryLoss` allow them).

    ``ignore_index`` (labels: voxels with that label; one-hot targets: that class's voxels, or all-zero
    voxels for a sentinel, MONAI's convention): the prediction is masked there, the map is computed from
    the target with the ignored voxels counted as **background** (so the empty/full rule applies to that
    mask), and :math:`N` becomes the number of counted voxels of the image, or of the whole batch with
    ``batch=True`` (:math:`f_c = \sum_b \sum_i m\,\phi\,s / \sum_b \sum_i m`, which is MONAI's batch mean
    when nothing is ignored). An image with every voxel ignored gives 0.

    Args:
        include_background: if False, channel 0 (background) is excluded, after the activation (ignored,
            with MONAI's warning, for a single channel). Default True.
        to_onehot_y: convert the target to one-hot with ``input.shape[1]`` classes (MONAI). Integer labels
            ``(B, 1, *spatial)`` / ``(B, *spatial)`` are accepted either way; float labels need it.
            Ignored, with MONAI's warning, for a single channel.
        sigmoid: apply a sigmoid to the input.
        softmax: apply a softmax over channels (ignored, with MONAI's warning, for a single channel).
        other_act: any other callable applied to the input instead, e.g. ``torch.tanh``.
        reduction: ``"mean"`` (default) or ``"sum"`` over the values ``f``, or ``"none"``: shape ``(B, C')``,
            ``(C',)`` with ``batch`` (``C'`` the kept classes).
        batch: average over the batch before the reduction. Default False.
        spacing: keyword only, fastloss addition: voxel spacing for the distance maps (one number or one
            per spatial dim; MONAI's unit spacing by default).
        ignore_index: keyword only, fastloss addition: see above.
        allow_1d: keyword only, fastloss addition: accept 1D inputs ``(B, C, L)``. Default False (MONAI).

    Forward args:
        input: ``(B, C, *spatial)``, 2 or 3 spatial dims (1 to 3 with ``allow_1d``; logits with
            ``sigmoid``/``softmax``).
        target: integer labels ``(B, 1, *spatial)`` / ``(B, *spatial)``, or one-hot / soft ``(B, C, *spatial)``.
        distance_map: optional precomputed φ_G, ``(B, C, *spatial)`` (or ``(B, C - 1, *spatial)`` without
            the background; ``*spatial`` may be flattened), used as is; no gradient flows into it.

    Raises:
        TypeError: non-callable ``other_act``, non-bool flags, a non-int ``ignore_index``, bad input, target
            or ``distance_map`` types.
        ValueError: more than one activation, an unknown ``reduction``, bad ``spacing``, an input without
            2 or 3 spatial dims (1 to 3 with ``allow_1d``), a target or ``distance_map`` of the wrong shape,
            out-of-range labels.

    Example:
        >>> import torch
        >>> from fastloss.losses.boundary import BoundaryLoss
        >>> loss = BoundaryLoss(softmax=True, to_onehot_y=True)  # MONAI's call, unchanged
        >>> x = torch.randn(2, 3, 16, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16, 16))
        >>> loss(x, y).backward()
        >>> BoundaryLoss(softmax=True, reduction="none", batch=True)(x, y).shape
        torch.Size([3])
    """

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
        batch: bool = False,
        *,
        spacing=None,
        ignore_index: Optional[int] = None,
        allow_1d: bool = False,
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
        self.spacing = _check_spacing_arg(spacing)
        self.allow_1d = check_bool(allow_1d, "allow_1d")

    def _first_class(self, C: int) -> int:
        return 0 if (self.include_background or C == 1) else 1

    @torch.no_grad()
    def compute_distance_map(self, target: torch.Tensor) -> torch.Tensor:
        """MONAI's ``compute_distance_map``: the signed map of every (image, channel) mask ``target > 0.5``
        of a one-hot/binary ``target`` ``(B, C, *spatial)`` (1 to 3 spatial dims), zeros for an empty or
        full mask; float32, on ``target``'s device, with this loss's ``spacing``."""
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        if target.ndim not in (3, 4, 5):
            raise ValueError(
                f"target must be (B, C, *spatial) with 1 to 3 spatial dims, got {target.ndim} dims "
                f"(shape {tuple(target.shape)})"
            )
        return self._signed_map(target > 0.5, tuple(target.shape[2:])).to(torch.float32)

    def _signed_map(self, g: torch.Tensor, spatial: tuple) -> torch.Tensor:
        """Signed map of the boolean masks ``g`` ``(B, C, ...)`` (any layout of ``spatial``), zero where a
        mask is empty or full; shape ``(B, C, *spatial)``, float32."""
        from ..distance import signed_distance

        B, C = g.shape[:2]
        g = g.reshape((B, C) + spatial)
        spacing = check_spacing(self.spacing, len(spatial))
        phi = torch.as_tensor(signed_distance(g, spacing, spatial_dims=len(spatial)))
        # signed_distance gives 0 for an empty mask already, but a finite map for a full one (distance to
        # the image edge); MONAI (no foreground/background interface) gives 0 for both.
        full = g.reshape(B, C, -1).all(dim=-1).reshape((B, C) + (1,) * len(spatial))
        return torch.where(full, torch.zeros((), dtype=phi.dtype, device=phi.device), phi)

    def distance_map(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The map ``forward`` computes for ``input``/``target``: ``(B, C, *spatial)`` in the compute dtype,
        zeros in channel 0 when the background is excluded; pass it back as ``distance_map``."""
        prep = self.prepare(input, target)
        B, C = input.shape[:2]
        return self._map_from_target(input, prep.target, self._first_class(C)).reshape(input.shape)

    @torch.no_grad()
    def _map_from_target(self, input: torch.Tensor, tgt, c0: int) -> torch.Tensor:
        B, C = input.shape[:2]
        dt = compute_dtype(input)
        g = tgt.dense(dt)[:, c0:] > 0.5  # (B, C', N) binary masks; ignored voxels are background
        phi = self._signed_map(g, tuple(input.shape[2:])).to(device=input.device, dtype=dt).reshape(B, C - c0, -1)
        if c0:
            phi = torch.cat([phi.new_zeros(B, c0, phi.shape[2]), phi], dim=1)
        return phi

    def forward(self, input: torch.Tensor, target: torch.Tensor, distance_map: Optional[torch.Tensor] = None):
        """See the class docstring: ``input`` ``(B, C, *spatial)``, ``target`` labels or one-hot, optional
        precomputed ``distance_map``. Returns a scalar, or ``(B, C')`` / ``(C',)`` for ``reduction="none"``."""
        prep = self.prepare(input, target)
        if input.ndim == 3 and not self.allow_1d:
            raise ValueError(
                f"BoundaryLoss expects 2D or 3D inputs (B, C, H, W[, D]), as MONAI's, got shape {tuple(input.shape)}; "
                "pass allow_1d=True for fastloss's 1D boundary loss"
            )
        C = input.shape[1]
        c0 = self._first_class(C)
        if distance_map is None:
            phi = self._map_from_target(input, prep.target, c0)
        else:
            phi = self._check_map(distance_map, input, c0).to(compute_dtype(input))
        # Σ_i m·φ·p and Σ_i m per (b, c) (m the ignore mask, 1 without ignore_index, so Σ m = N);
        # ∂f/∂p_i = m_i φ_i / Σ m (autograd or the fused backward kernel), φ a constant.
        stats = class_stats(prep.input, prep.target, StatsSpec(prep.activation, ("map_p", "count")), phi)
        stats = self.reduce_stats(stats)  # drop the background; batch: sum the sums over the batch
        f = stats[..., 0] / stats[..., 1].clamp_min(1.0)
        return reduce_loss(f, self.reduction, prep.spatial_ndim, broadcast=False)

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


class LogHausdorffDTLoss(HausdorffDTLoss):
    r"""Logarithm of the Hausdorff-distance loss; MONAI 1.6.1 ``LogHausdorffDTLoss``.

    .. math:: L = \log(L_{HD} + 1)

    applied to what :class:`HausdorffDTLoss` returns (the reduced value, or elementwise for
    ``reduction="none"``, as MONAI). The log compresses the large values that the squared distance maps
    give early in training; by the chain rule ``∂L/∂s = (∂L_{HD}/∂s) / (L_{HD} + 1)``, so the fused
    statistics and their backward kernel serve it unchanged. Arguments, defaults and errors are
    :class:`HausdorffDTLoss`'s (MONAI's, plus ``ignore_index`` and ``spacing``).

    Example:
        >>> loss = LogHausdorffDTLoss(softmax=True)
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 16, 16))
        >>> loss(x, y).backward()
    """

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``log(HausdorffDTLoss(input, target) + 1)``."""
        return torch.log1p(super().forward(input, target))


boundary_loss = functional_form(BoundaryLoss, "boundary_loss", forward_kwargs=("distance_map",))
log_hausdorff_dt_loss = functional_form(LogHausdorffDTLoss, "log_hausdorff_dt_loss")
hausdorff_dt_loss = functional_form(HausdorffDTLoss, "hausdorff_dt_loss")
