"""Deep supervision with nnU-Net v2's conventions: one loss applied to each output of a decoder at decreasing
resolutions, with weights that halve per scale.

nnU-Net v2 (``nnUNetTrainer._build_loss`` and ``DeepSupervisionWrapper``) weighs output ``i`` (0 = full
resolution) by ``1/2^i``, sets the weight of the lowest resolution to 0, normalises the weights to sum to 1,
and skips outputs whose weight is 0. Its data loader (``DownsampleSegForDSTransform``) makes the target of
output ``i`` by ``nearest-exact`` interpolation of the full-resolution segmentation to that output's size.
:class:`DeepSupervisionLoss` does the same, taking either nnU-Net's list of targets or one full-resolution
target that it downsamples itself. Every scale is one call of the wrapped loss, i.e. one statistics pass.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DeepSupervisionLoss", "nnunet_deep_supervision_weights", "downsample_target"]


def nnunet_deep_supervision_weights(num_outputs: int) -> list:
    """nnU-Net v2's weights for ``num_outputs`` outputs, full resolution first.

    ``w_i = 1/2^i``, the last (lowest resolution) set to 0, then normalised to sum to 1; e.g. for 3 outputs
    ``(1, 1/2, 0) / 1.5 = (2/3, 1/3, 0)``. With one output the weight is ``[1.0]`` (nnU-Net would divide 0
    by 0 there).

    Raises:
        TypeError: ``num_outputs`` is not an int.
        ValueError: ``num_outputs < 1``.
    """
    if isinstance(num_outputs, bool) or not isinstance(num_outputs, int):
        raise TypeError(f"num_outputs must be an int, got {type(num_outputs).__name__}")
    if num_outputs < 1:
        raise ValueError(f"num_outputs must be >= 1, got {num_outputs}")
    if num_outputs == 1:
        return [1.0]
    w = [1.0 / 2**i for i in range(num_outputs)]
    w[-1] = 0.0
    total = sum(w)
    return [x / total for x in w]


def downsample_target(target: torch.Tensor, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``target`` ``(B, C, *spatial)`` (labels with ``C = 1`` or one-hot/regions) at ``spatial_shape``, by
    ``nearest-exact`` interpolation as nnU-Net's ``DownsampleSegForDSTransform``; the dtype is kept.

    ``nearest-exact`` takes source index ``floor((i + 0.5)·in/out)`` (pixel centres), so a factor-2 reduction
    picks the second voxel of each pair; it never averages, so labels stay labels.
    """
    spatial_shape = tuple(int(s) for s in spatial_shape)
    if tuple(target.shape[2:]) == spatial_shape:
        return target
    # interpolate is not defined for integer or bool tensors; labels below 2^24 are exact in float32
    return F.interpolate(target.float(), size=spatial_shape, mode="nearest-exact").to(target.dtype)


def _check_weights(weights) -> Optional[tuple]:
    if weights is None:
        return None
    if isinstance(weights, torch.Tensor):
        weights = weights.detach().cpu().reshape(-1).tolist()
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence):
        raise TypeError(f"weights must be a sequence of numbers or None, got {type(weights).__name__}")
    out = []
    for i, w in enumerate(weights):
        if isinstance(w, bool) or not isinstance(w, (int, float)):
            raise TypeError(f"weights[{i}] must be a real number, got {type(w).__name__}")
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"weights[{i}] must be finite and >= 0, got {w}")
        out.append(float(w))
    if not out or not any(w != 0 for w in out):
        raise ValueError(f"weights must contain at least one non-zero value, got {list(out)}")
    return tuple(out)


class DeepSupervisionLoss(nn.Module):
    r"""A loss over the outputs of a deeply supervised network, nnU-Net v2's way.

    .. math:: L = \sum_i w_i\, \mathrm{loss}(\mathrm{output}_i, \mathrm{target}_i)

    Outputs come full resolution first (nnU-Net's order). ``target`` is either a list with one target per
    output (what nnU-Net's data loader yields) or one full-resolution tensor, downsampled to each output's
    spatial size with ``nearest-exact`` interpolation (:func:`downsample_target`, nnU-Net's transform).
    Outputs whose weight is 0 are not evaluated. A single tensor output is passed to ``loss`` as is.

    Args:
        loss: the loss applied at every scale (any fastloss loss, or any ``loss(output, target)`` module).
        weights: one weight per output, or None for nnU-Net's default
            (:func:`nnunet_deep_supervision_weights`, computed from the number of outputs at each call).
            Given weights are used as they are (not normalised), as nnU-Net's ``DeepSupervisionWrapper``.

    Raises:
        TypeError: ``loss`` is not callable; ``weights`` not a sequence of numbers; outputs/targets not
            tensors or lists of tensors.
        ValueError: negative, non-finite or all-zero weights; a number of weights, targets and outputs
            that do not match; an output and a target with different batch sizes or numbers of spatial dims.

    Example:
        >>> import torch, fastloss
        >>> ds = fastloss.DeepSupervisionLoss(fastloss.get_loss("DiceCE"))
        >>> outs = [torch.randn(2, 3, 16, 16), torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
        >>> loss = ds(outs, torch.randint(0, 3, (2, 1, 16, 16)))  # weights (2/3, 1/3, 0)
    """

    def __init__(self, loss: nn.Module, weights: Optional[Sequence[float]] = None) -> None:
        super().__init__()
        if not callable(loss):
            raise TypeError(f"loss must be callable (an nn.Module loss), got {type(loss).__name__}")
        self.loss = loss
        self.weights = _check_weights(weights)

    def weights_for(self, num_outputs: int) -> tuple:
        """The weights used for ``num_outputs`` outputs (the given ones, checked, or nnU-Net's default)."""
        if self.weights is None:
            return tuple(nnunet_deep_supervision_weights(num_outputs))
        if len(self.weights) != num_outputs:
            raise ValueError(f"got {num_outputs} outputs but {len(self.weights)} weights {list(self.weights)}")
        return self.weights

    def forward(
        self, outputs: Union[torch.Tensor, Sequence[torch.Tensor]], target: Union[torch.Tensor, Sequence[torch.Tensor]]
    ) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            return self.loss(outputs, target)
        if not isinstance(outputs, (list, tuple)) or not outputs:
            raise TypeError(
                f"outputs must be a tensor or a non-empty list/tuple of tensors, got {type(outputs).__name__}"
            )
        for i, o in enumerate(outputs):
            if not isinstance(o, torch.Tensor) or o.ndim < 2:
                raise TypeError(f"outputs[{i}] must be a (B, C, *spatial) tensor, got {type(o).__name__}"
                                + (f" of shape {tuple(o.shape)}" if isinstance(o, torch.Tensor) else ""))
        weights = self.weights_for(len(outputs))
        if isinstance(target, torch.Tensor):
            full = target
            if full.ndim == outputs[0].ndim - 1:  # (B, *spatial) labels -> (B, 1, *spatial)
                full = full.unsqueeze(1)
            if full.ndim != outputs[0].ndim or full.shape[0] != outputs[0].shape[0]:
                raise ValueError(
                    f"target {tuple(target.shape)} does not match outputs[0] {tuple(outputs[0].shape)}: expected "
                    "(B, 1, *spatial) labels or (B, C, *spatial) one-hot with the same B and number of dims"
                )
            targets = [None] * len(outputs)
        elif isinstance(target, (list, tuple)):
            if len(target) != len(outputs):
                raise ValueError(f"got {len(outputs)} outputs but {len(target)} targets")
            for i, t in enumerate(target):
                if not isinstance(t, torch.Tensor):
                    raise TypeError(f"target[{i}] must be a tensor, got {type(t).__name__}")
            targets = list(target)
            full = None
        else:
            raise TypeError(f"target must be a tensor or a list/tuple of tensors, got {type(target).__name__}")
        total = None
        for i, (out, w) in enumerate(zip(outputs, weights)):
            if w == 0.0:
                continue
            t = targets[i] if full is None else downsample_target(full, out.shape[2:])
            term = w * self.loss(out, t)
            total = term if total is None else total + term
        return total

    def extra_repr(self) -> str:
        return f"weights={'nnU-Net default' if self.weights is None else list(self.weights)}"
