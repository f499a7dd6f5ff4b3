"""Lovász-Softmax loss (Berman et al., CVPR 2018; Ma et al. 2021, Section 2.2.4, Eqs. 11-13)."""

from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import nn

from ..ops.lovasz import lovasz_extension
from ..ops.stats import compute_dtype
from ._common import check_bool, check_ignore_index, flatten_spatial, functional_form, prepare_inputs
from .._validation import check_reduction

__all__ = ["LovaszSoftmaxLoss", "lovasz_softmax_loss"]


class LovaszSoftmaxLoss(nn.Module):
    r"""Lovász-Softmax loss: a convex surrogate of the Jaccard loss, per class.

    With ``s = softmax(input)`` over the classes, for each class ``c`` the vector of errors (Eq. 11)

    .. math:: m_i(c) = 1 - s_i^c \text{ if } g_i = c, \quad s_i^c \text{ otherwise}

    (``|g_i^c - s_i^c|``, which is the same for one-hot targets and extends it to soft ones) is fed to
    the Lovász extension of the Jaccard loss (Eqs. 12-13):
    ``L_c = Σ_i m_{π_i}(c) · d_i`` with ``π`` sorting ``m(c)`` decreasingly and ``d_i`` the increase of the
    Jaccard loss when the ``i``-th largest error joins the error set (:mod:`fastloss.ops.lovasz`).

    The class losses are averaged as in Berman et al.'s ``lovasz_softmax``: over the classes in
    ``classes`` (``"present"``: those with at least one counted voxel in the target; a loss with none
    present is 0). ``per_image=False`` (default) pools all voxels of the batch per class;
    ``per_image=True`` computes the loss of each image and averages over images (an image without a
    present class contributes 0, as in the reference code).

    Args:
        classes: ``"present"`` (default), ``"all"``, or a sequence of class indices to average over.
            With ``"all"`` an absent class contributes its largest error (the reference behaviour).
        per_image: compute the loss per image and average over the batch.
        ignore_index: label (or one-hot class index / sentinel, MONAI's convention) whose voxels are
            removed before sorting, as Berman et al.'s ``ignore``.
        reduction: ``"mean"`` (Berman et al.'s average, above), ``"sum"`` (sum of the included class
            losses, over images too when ``per_image``), or ``"none"``: the per-class losses, shape
            ``(len(classes),)`` (``(B, len(classes))`` when ``per_image``; ``C`` entries for
            ``"present"``/``"all"``), with classes excluded by ``"present"`` set to 0.
        to_onehot_y: MONAI compatibility; integer labels are accepted either way, float labels need it.

    Raises:
        TypeError: non-bool flags, non-int class indices or ``ignore_index``.
        ValueError: unknown ``classes`` string, empty or duplicated class list, an unknown ``reduction``;
            in ``forward``: fewer than 2 channels, a class index ``>= C``, and every input/target
            problem :func:`fastloss._validation.prepare_target` reports.

    Example:
        >>> import torch
        >>> from fastloss.losses.lovasz import LovaszSoftmaxLoss
        >>> logits = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> labels = torch.randint(0, 3, (2, 1, 8, 8))
        >>> LovaszSoftmaxLoss()(logits, labels).backward()
    """

    def __init__(
        self,
        classes: Union[str, Sequence[int]] = "present",
        per_image: bool = False,
        ignore_index: Optional[int] = None,
        reduction: str = "mean",
        to_onehot_y: bool = False,
    ) -> None:
        super().__init__()
        if isinstance(classes, str):
            if classes not in ("present", "all"):
                raise ValueError(f"classes must be 'present', 'all' or a sequence of class indices, got {classes!r}")
            self.classes: Union[str, tuple] = classes
        else:
            try:
                cls = tuple(classes)
            except TypeError:
                raise TypeError(
                    f"classes must be 'present', 'all' or a sequence of class indices, got {type(classes).__name__}"
                ) from None
            if len(cls) == 0:
                raise ValueError("classes must not be an empty sequence")
            for c in cls:
                if isinstance(c, bool) or not isinstance(c, int):
                    raise TypeError(f"class indices must be ints, got {type(c).__name__} {c!r}")
                if c < 0:
                    raise ValueError(f"class indices must be >= 0, got {c}")
            if len(set(cls)) != len(cls):
                raise ValueError(f"classes must not repeat an index, got {list(cls)}")
            self.classes = cls
        self.per_image = check_bool(per_image, "per_image")
        self.ignore_index = check_ignore_index(ignore_index)
        self.reduction = check_reduction(reduction)
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input``: logits ``(B, C, *spatial)``, ``C >= 2``; ``target``: labels or one-hot/soft."""
        prep = prepare_inputs(
            input, target, activation="none", to_onehot_y=self.to_onehot_y, ignore_index=self.ignore_index,
            multiclass="LovaszSoftmaxLoss",
        )
        B, C = input.shape[:2]
        if isinstance(self.classes, tuple):
            bad = [c for c in self.classes if c >= C]
            if bad:
                raise ValueError(f"classes must be indices in [0, {C - 1}] for C={C} channels, got {bad}")
            sel = list(self.classes)
        else:
            sel = list(range(C))
        dt = compute_dtype(input)
        p = torch.softmax(flatten_spatial(prep.input).to(dt), dim=1)  # (B, C, N)
        g = prep.target.dense(dt)  # (B, C, N), zero at ignored voxels
        mask = prep.target.mask
        valid = None if mask is None else (mask > 0)  # (B, N)
        if len(sel) != C:
            idx = torch.tensor(sel, device=p.device)
            p, g = p.index_select(1, idx), g.index_select(1, idx)
        K = len(sel)
        N = p.shape[2]
        errors = (g - p).abs()  # Eq. 11: 1 - s for the labelled class, s otherwise
        if self.per_image:
            rows_e = errors.reshape(B * K, N)
            rows_g = g.reshape(B * K, N)
            rows_v = None if valid is None else valid.unsqueeze(1).expand(B, K, N).reshape(B * K, N)
            losses = lovasz_extension(rows_e, rows_g, rows_v).reshape(B, K)
            present = (g.sum(dim=2) > 0).to(dt)  # (B, K)
        else:
            rows_e = errors.transpose(0, 1).reshape(K, B * N)
            rows_g = g.transpose(0, 1).reshape(K, B * N)
            rows_v = None if valid is None else valid.reshape(1, B * N).expand(K, B * N)
            losses = lovasz_extension(rows_e, rows_g, rows_v)  # (K,)
            present = (g.sum(dim=(0, 2)) > 0).to(dt)  # (K,)
        if self.classes != "present":
            present = torch.ones_like(present)
        losses = losses * present
        if self.reduction == "none":
            return losses
        if self.reduction == "sum":
            return losses.sum()
        # mean over the included classes (0 when none), then over images when per_image
        per = losses.sum(dim=-1) / present.sum(dim=-1).clamp_min(1.0)
        return per.mean() if self.per_image else per


lovasz_softmax_loss = functional_form(LovaszSoftmaxLoss, "lovasz_softmax_loss")
