"""MONAI 1.6.1's other segmentation losses, with its names, arguments, defaults and results, from fused
statistics: ``MCCLoss``, ``GeneralizedWassersteinDiceLoss``, ``AsymmetricUnifiedFocalLoss``, ``NACLLoss``
(and, in :mod:`fastloss.losses.cldice`, ``SoftclDiceLoss`` and ``SoftDiceclDiceLoss``).

- MCC is a formula of the Dice statistics ``Σp·g``, ``Σp``, ``Σg`` and the voxel count
  (:func:`fastloss.ops.stats.class_stats`): ``tn = n − Σp − Σg + Σp·g``, so ``tp·tn − fp·fn = n·tp − Σp·Σg``.
- The generalized Wasserstein Dice is a formula of the soft confusion matrix ``S[l, c] = Σ_{y=l} p_c``: the
  Wasserstein distances of the voxels of class ``l`` sum to ``W_l = Σ_c M[l, c]·S[l, c]``, which
  :func:`fastloss.ops.soft_confusion.distance_row_sums` computes from integer labels without a one-hot target
  (on the CPU one compiled pass, O(C) per voxel, that also keeps the derivative for the backward).
- Unified focal is MONAI's asymmetric focal + asymmetric focal Tversky: per class ``Σ p·g``, ``Σ p``,
  ``Σ g``, ``Σ −g log p`` and the focal ``Σ −(1−p)^γ g log p`` of the clamped probabilities; its multi-class form
  (Yeung et al. 2022) is behind ``rare_classes``, which MONAI lacks.
- NACL is the cross entropy (the ``ce`` statistics column) plus the mean L1/L2 distance between the logits
  and the filtered one-hot labels (:func:`fastloss.ops.neighbourhood.neighbourhood_penalty`, built one class at
  a time, keeping only the penalty's derivative for the backward).
"""

from __future__ import annotations

import warnings
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from .._validation import (Target, _is_compiling, check_logits, check_reduction, label_checks_enabled, prepare_target,
                           region_table)
from ..ops.neighbourhood import NeighbourhoodKernel, nacl_loss_value, neighbourhood_penalty
from ..ops.soft_confusion import distance_row_sums
from ..ops.stats import StatsSpec, class_stats, compute_dtype
from ._common import LossBase, check_bool, check_ignore_index, check_nonneg, functional_form, pool_flat, reduce_loss

__all__ = [
    "MCCLoss",
    "GeneralizedWassersteinDiceLoss",
    "AsymmetricUnifiedFocalLoss",
    "NACLLoss",
    "mcc_loss",
    "generalized_wasserstein_dice_loss",
    "asymmetric_unified_focal_loss",
    "nacl_loss",
]


def _warn(message: str, stacklevel: int = 2) -> None:
    """A warning, except while ``torch.compile`` traces (Dynamo cannot trace ``warnings.warn``)."""
    if not torch.compiler.is_compiling():
        warnings.warn(message, stacklevel=stacklevel + 1)


def _check_real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            return float(value.item())
        raise TypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


# ---------------------------------------------------------------------------------------------------- MCC
class MCCLoss(LossBase):
    r"""Matthews correlation coefficient loss; MONAI 1.6.1 ``MCCLoss`` (Abhishek and Hamarneh, ISBI 2021).

    Per batch item (all items together with ``batch=True``) and class, with the soft confusion entries
    ``tp = Σpg``, ``fp = Σp(1−g)``, ``fn = Σ(1−p)g``, ``tn = Σ(1−p)(1−g)``:

    .. math:: L = 1 - \frac{tp\,tn - fp\,fn + s_{nr}}{\sqrt{(tp+fp)(tp+fn)(tn+fp)(tn+fn) + s_{dr}}}

    and 0 where ``fp = fn = 0`` (a perfect prediction), as MONAI. Computed from ``Σpg``, ``Σp``, ``Σg`` and the
    voxel count ``n`` of one statistics pass: ``tp·tn − fp·fn = n·tp − Σp·Σg``,
    ``(tp+fp)(tp+fn)(tn+fp)(tn+fn) = Σp·Σg·(n−Σg)·(n−Σp)``.

    Args:
        include_background, to_onehot_y, sigmoid, softmax, other_act, reduction, batch: as MONAI
            (``reduction="none"`` gives ``(B, C)``, or ``(C,)`` with ``batch=True``). Integer labels are accepted
            whatever ``to_onehot_y`` says.
        smooth_nr: added to the numerator (0.0). smooth_dr: added under the square root (1e-5).
        ignore_index: (not in MONAI) voxels of this label are left out of every sum, ``n`` included.

    Raises:
        TypeError: ``other_act`` not callable, non-float input, float labels without ``to_onehot_y``.
        ValueError: several activations, an unknown ``reduction``, a target of the wrong shape (also an
            ``AssertionError``, as MONAI's).

    Example:
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 8, 8))
        >>> MCCLoss(softmax=True, to_onehot_y=True)(x, y).backward()
    """

    _accepts_flat = True

    def __init__(
        self,
        include_background: bool = True,
        to_onehot_y: bool = False,
        sigmoid: bool = False,
        softmax: bool = False,
        other_act: Optional[Callable] = None,
        reduction: str = "mean",
        smooth_nr: float = 0.0,
        smooth_dr: float = 1e-5,
        batch: bool = False,
        ignore_index: Optional[int] = None,
    ) -> None:
        super().__init__(include_background=include_background, to_onehot_y=to_onehot_y, sigmoid=sigmoid,
                         softmax=softmax, other_act=other_act, reduction=reduction, batch=batch,
                         ignore_index=ignore_index)
        self.smooth_nr = _check_real(smooth_nr, "smooth_nr")
        self.smooth_dr = _check_real(smooth_dr, "smooth_dr")

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` ``(B, C, *spatial)`` (or ``(B, C)``); ``target`` labels or one-hot. See the class doc."""
        s, prep = self.class_stats(input, target, ("pg", "p", "g", "count"))
        tp, sp, sg, n = s.unbind(-1)
        if prep.flat:
            tp, sp, sg, n = pool_flat(tp, sp, sg, n, batch=self.batch)
        fp, fn = sp - tp, sg - tp
        num = n * tp - sp * sg + self.smooth_nr
        den = torch.sqrt(sp * sg * (n - sg) * (n - sp) + self.smooth_dr)
        score = 1.0 - num / den
        score = torch.where((fp == 0) & (fn == 0), torch.zeros_like(score), score)
        return reduce_loss(score, self.reduction, prep.spatial_ndim, broadcast=False)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", smooth_nr={self.smooth_nr}, smooth_dr={self.smooth_dr}"


# ------------------------------------------------------------------------------- generalized Wasserstein Dice
class GeneralizedWassersteinDiceLoss(nn.Module):
    r"""Generalized Wasserstein Dice loss; MONAI 1.6.1 ``GeneralizedWassersteinDiceLoss`` (Fidon et al. 2017;
    ``weighting_mode="GDL"``: Tilborghs et al. 2020).

    With ``p = softmax(input)``, the Wasserstein distance of voxel ``v`` of label ``y_v`` is
    ``w_v = Σ_c p_c(v)·M[y_v, c]`` (``M`` the class distance matrix, divided by its maximum when that is not 1),
    and with class weights ``α`` (``"default"``: 0 for the background, 1 otherwise; ``"GDL"``: ``1/(|class|+1)``,
    in float32 as MONAI)

    .. math::
        TP = \sum_v α_{y_v}(1 - w_v),\quad
        L = 1 - \frac{2\,TP + s_{nr}}{D + s_{dr}},\quad
        D = 2\,TP + \sum_v w_v \ (\text{default}),\ \ D = \sum_v α_{y_v}(2 - w_v)\ (\text{GDL})

    per batch item (``reduction="none"`` gives ``(B,)``), in MONAI's dtype: the softmax in float32 (float64 for
    float64 logits), the rest in the type promoted with ``dist_matrix``'s (a float64 numpy matrix gives a float64
    loss, as MONAI's). Every sum is a formula of the soft confusion matrix
    ``S[l, c] = Σ_{y_v = l} p_c(v)``, computed from the integer labels without a one-hot target
    (:func:`fastloss.ops.soft_confusion.distance_row_sums` gives ``W`` and the volumes). A one-hot or soft ``(B, C, *spatial)`` target (MONAI
    takes labels only) gives the same formulas with ``S = Σ_v g(v) p(v)ᵀ``; for a hard one-hot target that is
    MONAI's value for its labels.

    Args:
        dist_matrix: ``C × C`` class distances (numpy array or tensor). ``None`` (not in MONAI, which requires
            it): the 0/1 distance ``1 − I`` for the input's number of classes.
        weighting_mode: ``"default"`` or ``"GDL"``.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.
        smooth_nr, smooth_dr: smoothing terms (1e-5).

    Raises:
        ValueError: a ``dist_matrix`` that is not square (MONAI's message) or has no positive entry, an unknown
            ``weighting_mode`` or ``reduction``, labels outside ``[0, C)``, a ``dist_matrix`` whose size is not
            the input's number of classes, non-integral float labels.
        TypeError: non-float input, a ``dist_matrix`` that is not an array.

    Example:
        >>> M = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.5], [1.0, 0.5, 0.0]])
        >>> x = torch.randn(2, 3, 8, 8, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 1, 8, 8))
        >>> GeneralizedWassersteinDiceLoss(M)(x, y).backward()
    """

    def __init__(
        self,
        dist_matrix: Union[np.ndarray, torch.Tensor, None] = None,
        weighting_mode: str = "default",
        reduction: str = "mean",
        smooth_nr: float = 1e-5,
        smooth_dr: float = 1e-5,
    ) -> None:
        super().__init__()
        m = None
        if dist_matrix is not None:
            if isinstance(dist_matrix, np.ndarray):
                m = torch.from_numpy(dist_matrix)
            elif isinstance(dist_matrix, torch.Tensor):
                m = dist_matrix.detach().clone()
            else:
                raise TypeError(f"dist_matrix must be a numpy array or a torch.Tensor, got {type(dist_matrix).__name__}")
            if m.ndim != 2 or m.shape[0] != m.shape[1]:
                if m.ndim == 2:
                    raise ValueError(f"dist_matrix must be C x C, got {m.shape[0]} x {m.shape[1]}.")
                raise ValueError(f"dist_matrix must be a C x C matrix, got shape {tuple(m.shape)}")
            if not m.is_floating_point():
                m = m.to(torch.get_default_dtype())
            mx = torch.max(m)
            if not mx > 0:
                raise ValueError(f"dist_matrix must have a positive entry (it is divided by its maximum), got max {mx.item()}")
            if mx != 1:
                m = m / mx
        if weighting_mode not in ("default", "GDL"):
            raise ValueError(f"weighting_mode must be either 'default' or 'GDL', got {weighting_mode}.")
        self.register_buffer("m", m)
        self.alpha_mode = weighting_mode
        self.num_classes = None if m is None else m.shape[0]
        self.reduction = check_reduction(reduction)
        self.smooth_nr = _check_real(smooth_nr, "smooth_nr")
        self.smooth_dr = _check_real(smooth_dr, "smooth_dr")

    def _target(self, input: torch.Tensor, target: torch.Tensor) -> Target:
        if not isinstance(target, torch.Tensor):
            raise TypeError(f"target must be a torch.Tensor, got {type(target).__name__}")
        B, C = input.shape[:2]
        # MONAI reads any B·N values as labels (target.reshape(B, -1).long()): float label maps too
        labels_like = target.numel() == input.numel() // C and target.dtype.is_floating_point
        return prepare_target(input, target, to_onehot_y=labels_like)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``input`` logits ``(B, C, *spatial)`` or ``(B, C)``; ``target`` labels ``(B, 1, *spatial)``,
        ``(B, *spatial)``, or one-hot/soft ``(B, C, *spatial)``."""
        check_logits(input, allow_flat=True)
        B, C = input.shape[:2]
        if self.m is not None and C != self.num_classes:
            raise ValueError(f"dist_matrix is {self.num_classes} x {self.num_classes} but the input has C={C} classes")
        tgt = self._target(input, target)
        cdt = compute_dtype(input)
        # MONAI's arithmetic: the softmax in the input's dtype, the rest promoted with the distance matrix's
        dt = cdt if self.m is None or not self.m.is_floating_point() else torch.promote_types(cdt, self.m.dtype)
        x = input.reshape(B, C, -1)
        M = (1.0 - torch.eye(C, dtype=dt, device=input.device)) if self.m is None else self.m.to(device=input.device, dtype=dt)
        if tgt.soft is not None:
            g = tgt.soft.to(dt)
            p = torch.softmax(x.to(cdt), dim=1).to(dt)
            S = torch.bmm(g, p.transpose(1, 2))  # S[b, l, c] = Σ_v g_l p_c
            vol = g.sum(dim=2)
            W = (S * M.unsqueeze(0)).sum(dim=2)  # (B, C): Wasserstein distances of the voxels of each true class
        else:
            # W[b, l] = Σ_c M[l, c]·S[b, l, c] and the class volumes, from the labels in one pass
            W, vol = distance_row_sums(x, tgt.labels, M, dt, labels_in_range=label_checks_enabled())
        if self.alpha_mode == "GDL":
            # MONAI: 1 / (volume + 1) with float32 volumes
            alpha = (1.0 / (vol.detach().to(torch.float32) + 1.0)).to(dt)
            true_pos = (alpha * (vol - W)).sum(dim=1)
            denom = (alpha * (2.0 * vol - W)).sum(dim=1)
        else:
            alpha = torch.ones(C, dtype=dt, device=input.device)
            alpha[0] = 0.0
            true_pos = (alpha * (vol - W)).sum(dim=1)
            denom = 2.0 * true_pos + W.sum(dim=1)
        loss = 1.0 - (2.0 * true_pos + self.smooth_nr) / (denom + self.smooth_dr)
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss

    def extra_repr(self) -> str:
        return f"weighting_mode={self.alpha_mode!r}, reduction={self.reduction!r}, num_classes={self.num_classes}"


# ------------------------------------------------------------------------------------------ unified focal
class AsymmetricUnifiedFocalLoss(nn.Module):
    r"""Asymmetric unified focal loss; MONAI 1.6.1 ``AsymmetricUnifiedFocalLoss`` (Yeung et al., CMIG 2022).

    ``L = weight·L_aF + (1 − weight)·L_aFT`` of the clamped probabilities ``p = clamp(input, ε, 1 − ε)``,
    ``ε = 1e-7`` (MONAI applies no activation: the input is read as probabilities; a one-channel input ``p``
    becomes ``(1 − p, p)`` and a one-channel target ``g`` becomes ``(1 − g, g)``):

    - asymmetric focal ``L_aF = [Σ_v (1−δ)(1−p_0)^γ·(−g_0 log p_0) + δ·(−g_1 log p_1)] / (B·2·N)``;
    - asymmetric focal Tversky, the mean over batch items and the two classes of ``1 − TI_0`` and
      ``(1 − TI_1)^{1−γ}``, ``TI_c = (tp + ε)/(tp + δ·fn + (1−δ)·fp + ε)``.

    Always one scalar, as MONAI (its parts are means). Only channels 0 and 1 count in MONAI's binary form.
    The sums come from one statistics pass (``Σpg``, ``Σp``, ``Σg``, ``Σ−g log p``, ``Σ−(1−p)^γ g log p``).

    **Multi-class form (not in MONAI)**: ``rare_classes`` (a class index or a sequence of them) switches to
    Yeung et al.'s C-class form over all ``C = num_classes`` channels: the rare classes get ``δ·CE`` with the
    focal suppression switched off and the Tversky term ``(1 − TI_c)^{1−γ}`` (enhanced), every other class
    ``(1−δ)(1−p_c)^γ·CE`` and ``1 − TI_c`` (suppressed); the focal part is divided by ``B·C·N`` and the Tversky part
    averaged over batch and classes, MONAI's normalisation, so that ``rare_classes=[1]`` with two classes is
    exactly MONAI's loss.

    Args:
        to_onehot_y: one-hot encode label targets (integer labels are accepted either way).
        num_classes: number of classes (2, MONAI's binary form; with ``rare_classes`` the input's C).
        weight: ``λ`` between the focal (``weight``) and focal Tversky (``1 − weight``) parts (0.5).
        gamma: focal exponent (0.5). delta: the background/foreground weight ``δ`` (0.7).
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (validated; the result is one scalar whichever).
        ignore_index: label (or one-hot class index / sentinel, MONAI's rule) of voxels to leave out.
            MONAI's order is kept: the prediction and the target are multiplied by the mask before the clamp,
            so an ignored voxel contributes ``ε`` to ``Σp`` and its voxels count in ``N``.
        rare_classes: see above (not in MONAI); ``None`` is MONAI's binary loss.

    Raises:
        ValueError: input not 4D/5D, a target of the wrong shape, a class index ``>= num_classes``, an unknown
            ``reduction``, ``rare_classes`` outside ``[0, num_classes)``, ``num_classes`` not the input's C in
            the multi-class form.
        TypeError: non-float input, bad argument types.

    Example:
        >>> p = torch.rand(2, 2, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 2, (2, 1, 16, 16))
        >>> AsymmetricUnifiedFocalLoss(to_onehot_y=True)(p, y).backward()
        >>> q = torch.softmax(torch.randn(2, 4, 16, 16), 1).requires_grad_()
        >>> AsymmetricUnifiedFocalLoss(num_classes=4, rare_classes=[2, 3])(q, torch.randint(0, 4, (2, 1, 16, 16)))
    """

    epsilon = 1e-7

    def __init__(
        self,
        to_onehot_y: bool = False,
        num_classes: int = 2,
        weight: float = 0.5,
        gamma: float = 0.5,
        delta: float = 0.7,
        reduction: str = "mean",
        ignore_index: Optional[int] = None,
        rare_classes: Union[int, Sequence[int], None] = None,
    ) -> None:
        super().__init__()
        self.to_onehot_y = check_bool(to_onehot_y, "to_onehot_y")
        if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
            raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
        self.num_classes = num_classes
        self.weight = _check_real(weight, "weight")
        self.gamma = _check_real(gamma, "gamma")
        self.delta = _check_real(delta, "delta")
        self.reduction = check_reduction(reduction)
        self.ignore_index = check_ignore_index(ignore_index)
        if rare_classes is not None:
            rc = [rare_classes] if isinstance(rare_classes, int) and not isinstance(rare_classes, bool) else list(rare_classes)
            for c in rc:
                if isinstance(c, bool) or not isinstance(c, int) or not 0 <= c < num_classes:
                    raise ValueError(f"rare_classes must be class indices in [0, {num_classes}), got {rare_classes!r}")
            rare_classes = tuple(sorted(set(rc)))
        self.rare_classes = rare_classes

    def _inputs(self, y_pred: torch.Tensor, y_true: torch.Tensor):
        """``(p (B, C', N) in the compute dtype before the clamp, Target, voxel mask (B, 1, N) or None)``."""
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y_true, torch.Tensor):
            raise TypeError(f"input and target must be torch.Tensors, got {type(y_pred).__name__} and {type(y_true).__name__}")
        if y_pred.ndim not in (4, 5):
            raise ValueError(f"input shape must be 4 or 5, but got {y_pred.shape}")
        check_logits(y_pred)
        C = y_pred.shape[1]
        if C == 1 and self.to_onehot_y:
            _warn("single channel prediction, `to_onehot_y=True` ignored.")
        if C == 1 and self.ignore_index is not None:
            _warn("single channel prediction, `ignore_index` is applied to label-encoded targets.")
        dt = compute_dtype(y_pred)
        B = y_pred.shape[0]
        x = y_pred.reshape(B, C, -1).to(dt)
        if C == 1:
            if tuple(y_true.shape) != (B, 1) + tuple(y_pred.shape[2:]):
                raise ValueError(f"ground truth has different shape ({y_true.shape}) from input ({y_pred.shape})")
            g = y_true.reshape(B, 1, -1).to(dt)
            if self.ignore_index is None and not _is_compiling() and torch.max(g) > self.num_classes - 1:
                raise ValueError(f"Invalid class index found. Maximum class should be {self.num_classes - 1}")
            mask = None if self.ignore_index is None else (g != self.ignore_index).to(dt)
            x = torch.cat([1 - x, x], dim=1)
            g = torch.cat([1 - g, g], dim=1)
            if mask is not None:
                g = g * mask
            return x, Target(None, g, None, 2, tuple(y_pred.shape[2:])), mask
        shape_ok = tuple(y_true.shape) == tuple(y_pred.shape)
        if not shape_ok and y_true.dtype.is_floating_point and not self.to_onehot_y:
            raise ValueError(f"ground truth has different shape ({y_true.shape}) from input ({y_pred.shape})")
        if not shape_ok and C != self.num_classes:
            raise ValueError(
                f"ground truth has different shape ({tuple(y_true.shape[:1]) + (self.num_classes,) + tuple(y_true.shape[2:])} "
                f"after one-hot encoding with num_classes={self.num_classes}) from input ({y_pred.shape})")
        tgt = prepare_target(y_pred, y_true, ignore_index=self.ignore_index, to_onehot_y=self.to_onehot_y)
        if (tgt.soft is not None and self.ignore_index is None and not _is_compiling()
                and torch.max(tgt.soft) > self.num_classes - 1):
            raise ValueError(f"Invalid class index found. Maximum class should be {self.num_classes - 1}")
        mask = None if tgt.mask is None else tgt.mask.to(dt).unsqueeze(1)
        return x, tgt, mask

    @staticmethod
    def _binary_channels(x: torch.Tensor, tgt: Target):
        """Channels 0 and 1 of ``x`` ``(B, C, N)`` and of the target: all MONAI's binary form reads. Labels stay
        labels (a region table maps label 0 to channel 0, label 1 to channel 1, any other label to neither), so the
        clamp and the statistics pass cover two channels, not C."""
        if x.shape[1] == 2:
            return x, tgt
        if tgt.soft is not None:
            return x[:, :2], Target(None, tgt.soft[:, :2], tgt.mask, 2, tgt.spatial_shape, tgt.ignore_index)
        table = region_table(((0,), (1,)), x.device)
        return x[:, :2], Target(tgt.raw_labels, None, tgt.mask, 2, tgt.spatial_shape, tgt.ignore_index, regions=table)

    def forward(self, y_pred: torch.Tensor, y_true: torch.Tensor) -> torch.Tensor:
        """``y_pred`` probabilities ``(B, C, H, W[, D])``; ``y_true`` labels ``(B, 1, ...)`` or one-hot. One scalar."""
        x, tgt, mask = self._inputs(y_pred, y_true)
        if self.rare_classes is None:
            if x.shape[1] < 2:
                raise ValueError(f"the binary form needs 2 channels, got {x.shape[1]}")
            x, tgt = self._binary_channels(x, tgt)
        eps, gamma, delta = self.epsilon, self.gamma, self.delta
        if mask is not None:
            x = x * mask
        p = torch.clamp(x, eps, 1.0 - eps)
        B, C, N = p.shape
        # the target's mask (labels' ignore_index) is applied by the statistics to g; Σp counts every voxel
        cols = ("pg", "g", "ce", "focal") if mask is not None else ("pg", "g", "ce", "focal", "p")
        s = class_stats(p, tgt, StatsSpec("none", cols, gamma=gamma))
        tp, sg, ce, focal = s[..., 0], s[..., 1], s[..., 2], s[..., 3]
        sp = p.sum(dim=2) if mask is not None else s[..., 4]
        fn, fp = sg - tp, sp - tp
        ti = (tp + eps) / (tp + delta * fn + (1 - delta) * fp + eps)
        if self.rare_classes is None:
            f = ((1 - delta) * focal[:, 0] + delta * ce[:, 1]).sum() / (B * 2 * N)
            t = torch.stack([1 - ti[:, 0], torch.pow(1 - ti[:, 1], 1 - gamma)], dim=-1).mean()
        else:
            if C != self.num_classes:
                raise ValueError(f"the multi-class form (rare_classes) needs num_classes == C, got num_classes="
                                 f"{self.num_classes} and an input of {C} channels")
            rare = torch.zeros(C, dtype=torch.bool, device=p.device)
            rare[list(self.rare_classes)] = True
            f = torch.where(rare, delta * ce, (1 - delta) * focal).sum() / (B * C * N)
            t = torch.where(rare, torch.pow(1 - ti, 1 - gamma), 1 - ti).mean()
        return self.weight * f + (1 - self.weight) * t

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, weight={self.weight}, gamma={self.gamma}, delta={self.delta}, "
                f"rare_classes={self.rare_classes}")


# -------------------------------------------------------------------------------------------------- NACL
class NACLLoss(nn.Module):
    r"""Neighbour-aware calibration loss; MONAI 1.6.1 ``NACLLoss`` (Murugesan et al., MICCAI 2023).

    .. math:: L = \mathrm{CE}(x, y) + \alpha \cdot \operatorname{mean}_{b,c,v} d\big(u_c(v), x_c(v)\big)

    ``CE`` the mean softmax cross entropy over the voxels (its sums from the statistics pass), ``u`` the
    one-hot labels filtered by a ``kernel_size``-wide mean filter (``kernel_ops="mean"``) or MONAI's Gaussian
    filter of ``sigma`` (``"gaussian"``, truncated at 4σ; ``kernel_size`` is then unused, as in MONAI), ``d`` the
    L1 or squared L2 distance to the raw logits ``x``. ``u`` is built one class at a time, never a
    ``(B, C, N)`` one-hot (:func:`fastloss.ops.neighbourhood.neighbourhood_penalty`).

    Args:
        classes: the number of classes (``None``, not in MONAI: the input's C).
        dim: 2 or 3 spatial dims (``None``, not in MONAI: the input's).
        kernel_size: mean filter width (3). kernel_ops: ``"mean"`` or ``"gaussian"``.
        distance_type: ``"l1"`` or ``"l2"``. alpha: the penalty's weight (0.1). sigma: the Gaussian's σ (1.0).

    Forward: ``inputs`` logits ``(B, C, *spatial)``; ``targets`` labels ``(B, *spatial)`` (MONAI's shape),
    ``(B, 1, *spatial)``, or a one-hot/soft ``(B, C, *spatial)`` target (not in MONAI: the soft cross entropy and
    the filtered channels). One scalar.

    Raises:
        ValueError: MONAI's for ``kernel_ops``, ``dim`` and ``distance_type``; an input whose C or number of
            spatial dims differs from ``classes``/``dim``; labels outside ``[0, C)``; a target of another shape.
        TypeError: non-float input.

    Example:
        >>> x = torch.randn(2, 3, 16, 16, requires_grad=True)
        >>> y = torch.randint(0, 3, (2, 16, 16))
        >>> NACLLoss(classes=3, dim=2)(x, y).backward()
    """

    def __init__(
        self,
        classes: Optional[int] = None,
        dim: Optional[int] = None,
        kernel_size: int = 3,
        kernel_ops: str = "mean",
        distance_type: str = "l1",
        alpha: float = 0.1,
        sigma: float = 1.0,
    ) -> None:
        super().__init__()
        if kernel_ops not in ["mean", "gaussian"]:
            raise ValueError("Kernel ops must be either mean or gaussian")
        if dim is not None and dim not in [2, 3]:
            raise ValueError(f"Support 2d and 3d, got dim={dim}.")
        if distance_type not in ["l1", "l2"]:
            raise ValueError(f"Distance type must be either L1 or L2, got {distance_type}")
        if classes is not None and (isinstance(classes, bool) or not isinstance(classes, int) or classes < 1):
            raise ValueError(f"classes must be a positive int, got {classes!r}")
        if isinstance(kernel_size, bool) or not isinstance(kernel_size, int) or kernel_size < 1:
            raise ValueError(f"kernel_size must be a positive int, got {kernel_size!r}")
        self.nc = classes
        self.dim = dim
        self.distance_type = distance_type
        self.alpha = _check_real(alpha, "alpha")
        self.ks = kernel_size
        self.kernel_ops = kernel_ops
        self.sigma = check_nonneg(sigma, "sigma", positive=True)
        self.kernel = NeighbourhoodKernel(kernel_ops, kernel_size, self.sigma)

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """See the class doc."""
        check_logits(inputs)
        B, C = inputs.shape[:2]
        nd = inputs.ndim - 2
        if self.dim is not None and nd != self.dim:
            raise ValueError(f"NACLLoss(dim={self.dim}) expects inputs (B, C) + {self.dim} spatial dims, got shape {tuple(inputs.shape)}")
        if self.nc is not None and C != self.nc:
            raise ValueError(f"NACLLoss(classes={self.nc}) expects {self.nc} input channels, got shape {tuple(inputs.shape)}")
        if nd not in (2, 3):
            raise ValueError(f"Support 2d and 3d, got an input with {nd} spatial dims: shape {tuple(inputs.shape)}")
        tgt = prepare_target(inputs, targets, name="targets")
        dt = compute_dtype(inputs)
        spatial = tuple(inputs.shape[2:])
        n_vox = tgt.raw_labels.shape[1] if tgt.raw_labels is not None else tgt.soft.shape[2]
        if tgt.raw_labels is not None:
            # CPU tensors: the loss from one compiled op whose forward also writes the gradient (the filters once
            # per step; ops/neighbourhood.nacl_loss_value)
            fused = nacl_loss_value(inputs, tgt.raw_labels.reshape((B,) + spatial), self.kernel, self.distance_type,
                                    self.alpha / inputs.numel(), 1.0 / (B * n_vox))
            if fused is not None:
                return fused
        s = class_stats(inputs, tgt, StatsSpec("softmax", ("ce",)))
        ce = s.sum() / (B * n_vox)
        if tgt.raw_labels is not None:
            tmap = tgt.raw_labels.reshape((B,) + spatial)
        else:
            tmap = tgt.soft.reshape((B, C) + spatial).to(dt)
        pen = neighbourhood_penalty(inputs, tmap, self.kernel, self.distance_type)
        return ce + self.alpha * (pen / inputs.numel())

    def extra_repr(self) -> str:
        return (f"classes={self.nc}, dim={self.dim}, kernel_ops={self.kernel_ops!r}, kernel_size={self.ks}, "
                f"distance_type={self.distance_type!r}, alpha={self.alpha}, sigma={self.sigma}")


mcc_loss = functional_form(MCCLoss, "mcc_loss")
generalized_wasserstein_dice_loss = functional_form(GeneralizedWassersteinDiceLoss, "generalized_wasserstein_dice_loss")
asymmetric_unified_focal_loss = functional_form(AsymmetricUnifiedFocalLoss, "asymmetric_unified_focal_loss")
nacl_loss = functional_form(NACLLoss, "nacl_loss")
