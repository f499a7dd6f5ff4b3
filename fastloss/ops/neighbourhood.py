"""Class proportions of each voxel's neighbourhood, and NACL's penalty between them and the logits.

``class_neighbourhood(target, C, kernel)`` is the separable filter of the one-hot target, class by class:
a box filter (``kernel_ops="mean"``: window counts times ``1/k^d``, the weight rounded to float32 as MONAI's
``MeanFilter`` stores it) or a 1D kernel applied along every axis (MONAI's ``GaussianFilter``), zero padding
as a ``'same'`` convolution (for an even window one more voxel after than before).

The neighbourhood is computed in float32 whatever the logits' dtype (MONAI's one-hot is float32), then
compared with the logits in their accumulation dtype.

``neighbourhood_penalty(x, target, kernel, distance)`` is ``Σ |u − x|`` (``"l1"``) or ``Σ (u − x)²``
(``"l2"``) over all ``B·C·N`` elements, ``u`` the class neighbourhood (a constant: no gradient flows into the
target). It is an autograd Function that builds ``u`` one class at a time (never a ``(B, C, N)`` one-hot) and
keeps only the derivative ``∂/∂x = sign(x − u)`` or ``2(x − u)``, one tensor of the logits' size, which the
backward scales by the incoming gradient; no ``u`` is kept. On CPU tensors with integer labels the compiled
twin (``ops/cpu_neighbourhood.py``) filters each class's indicator inside the kernel, plane by plane.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import torch
import torch.nn.functional as F

__all__ = ["NeighbourhoodKernel", "gaussian_kernel_1d", "class_neighbourhood", "neighbourhood_penalty", "nacl_terms",
           "nacl_loss_value"]


def gaussian_kernel_1d(sigma: float, truncated: float = 4.0) -> torch.Tensor:
    """MONAI's ``gaussian_1d(sigma, truncated, approx="erf")``, float32, on the CPU."""
    s = torch.as_tensor(float(sigma), dtype=torch.float)
    tail = int(max(float(s) * truncated, 0.5) + 0.5)
    x = torch.arange(-tail, tail + 1, dtype=torch.float)
    t = 0.70710678 / torch.abs(s)
    return (0.5 * ((t * (x + 0.5)).erf() - (t * (x - 0.5)).erf())).clamp(min=0)


@dataclass(frozen=True)
class NeighbourhoodKernel:
    """A separable neighbourhood filter: ``"mean"`` with window ``size``, or ``"gaussian"`` with ``sigma``."""

    ops: str = "mean"
    size: int = 3
    sigma: float = 1.0

    def weights(self) -> Tuple[Optional[torch.Tensor], int, int]:
        """``(1D kernel or None for a box, left pad, right pad)``."""
        if self.ops == "mean":
            k = self.size
            return None, (k - 1) // 2, (k - 1) - (k - 1) // 2
        w = gaussian_kernel_1d(self.sigma)
        tail = (w.numel() - 1) // 2
        return w, tail, tail


def _filter(img: torch.Tensor, kernel: NeighbourhoodKernel) -> torch.Tensor:
    """Separable filter of ``img`` ``(B, *spatial)`` (zero padding), every spatial axis."""
    w, left, right = kernel.weights()
    out = img
    nd = img.ndim - 1
    k = kernel.size if w is None else w.numel()
    wv = None if w is None else w.to(device=img.device, dtype=img.dtype)
    for axis in range(1, nd + 1):
        pad = [0, 0] * nd
        # F.pad lists pads from the last axis backwards
        j = 2 * (nd - axis)
        pad[j], pad[j + 1] = left, right
        padded = F.pad(out, pad)
        n = out.shape[axis]
        acc = None
        for t in range(k):
            sl = padded.narrow(axis, t, n)
            term = sl if wv is None else sl * wv[t]
            acc = term.clone() if acc is None else acc.add_(term)
        out = acc
    if w is None:
        # MONAI's MeanFilter: ones / k^d in float32, cast to the input's dtype
        scale = torch.tensor(1.0, dtype=torch.float32) / float(kernel.size ** nd)
        out = out * scale.to(img.dtype).item()
    return out


def _class_map(target: torch.Tensor, c: int, dt: torch.dtype, soft: bool) -> torch.Tensor:
    return target[:, c].to(dt) if soft else (target == c).to(dt)


def class_neighbourhood(target: torch.Tensor, num_classes: int, kernel: NeighbourhoodKernel,
                        dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(B, C, *spatial)`` filtered one-hot of integer ``target`` ``(B, *spatial)`` (or the filtered channels of
    a soft ``(B, C, *spatial)`` target)."""
    soft = target.dtype.is_floating_point
    return torch.stack([_filter(_class_map(target, c, dtype, soft), kernel) for c in range(num_classes)], dim=1)


class _Penalty(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, target, kernel, distance, soft):
        dt = torch.float64 if x.dtype == torch.float64 else torch.float32
        C = x.shape[1]
        total = torch.zeros((), dtype=dt, device=x.device)
        need = ctx.needs_input_grad[0]
        deriv = torch.empty(x.shape, dtype=dt, device=x.device) if need else None
        with torch.no_grad():
            for c in range(C):
                # u in float32 whatever the logits' dtype, as MONAI's float32 one-hot and filter
                u = _filter(_class_map(target, c, torch.float32, soft), kernel).to(dt)
                diff = x[:, c].to(dt) - u
                if distance == "l1":
                    total = total + diff.abs().sum()
                    if need:
                        deriv[:, c].copy_(torch.sign(diff))
                else:
                    total = total + (diff * diff).sum()
                    if need:
                        deriv[:, c].copy_(diff * 2.0)
        ctx.save_for_backward(deriv)
        ctx.in_dtype = x.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        (deriv,) = ctx.saved_tensors
        if deriv is None:
            return None, None, None, None, None
        return (deriv * grad.to(deriv.dtype)).to(ctx.in_dtype), None, None, None, None


def neighbourhood_penalty(x: torch.Tensor, target: torch.Tensor, kernel: NeighbourhoodKernel,
                          distance: str = "l1") -> torch.Tensor:
    """``Σ |u − x|`` or ``Σ (u − x)²`` over ``x`` ``(B, C, *spatial)``, ``u = class_neighbourhood(target)``.

    ``target``: integer labels ``(B, *spatial)`` or a soft ``(B, C, *spatial)`` target. Returns a 0-d tensor in
    the accumulation dtype (float32, float64 for float64 ``x``), differentiable in ``x``.
    """
    if distance not in ("l1", "l2"):
        raise ValueError(f"distance must be 'l1' or 'l2', got {distance!r}")
    soft = target.dtype.is_floating_point
    want = tuple(x.shape) if soft else (x.shape[0],) + tuple(x.shape[2:])
    if tuple(target.shape) != want:
        raise ValueError(f"target must have shape {want} for input {tuple(x.shape)}, got {tuple(target.shape)}")
    from ..backend import use_compiled_cpu

    if not soft and use_compiled_cpu(x):
        from . import cpu_neighbourhood

        if cpu_neighbourhood.supports(x, target):
            weights, left, scale = _compiled_kernel(kernel, x.ndim - 2)
            return cpu_neighbourhood.nacl_penalty_cpu(x, target, weights, left, scale, distance)
    return _Penalty.apply(x, target, kernel, distance, soft)


def _compiled_kernel(kernel: NeighbourhoodKernel, nd: int):
    """``(1D weights, left pad, scale)`` for the compiled kernels: a box is ones scaled by MONAI's float32 ``1/k^d``."""
    w, left, _ = kernel.weights()
    if w is None:
        return [1.0] * kernel.size, left, float(torch.tensor(1.0, dtype=torch.float32) / float(kernel.size ** nd))
    return [float(v) for v in w.tolist()], left, 1.0


def _fused_nacl(x: torch.Tensor, labels: torch.Tensor, distance: str):
    """``ops/cpu_neighbourhood`` when its fused NACL kernels serve ``x`` and integer ``labels``, else None (not CPU,
    float16/bfloat16, the torch backend, no extension, float labels)."""
    if distance not in ("l1", "l2"):
        raise ValueError(f"distance must be 'l1' or 'l2', got {distance!r}")
    if labels.dtype.is_floating_point:
        return None
    from ..backend import use_compiled_cpu

    if not use_compiled_cpu(x):
        return None
    from . import cpu_neighbourhood

    if not (cpu_neighbourhood.loss_available() and cpu_neighbourhood.supports(x, labels)):
        return None
    return cpu_neighbourhood


def nacl_terms(x: torch.Tensor, labels: torch.Tensor, kernel: NeighbourhoodKernel, distance: str = "l1"):
    """``(Σ penalty, Σ_v −log softmax(x)_y)`` of integer ``labels`` ``(B, *spatial)`` from one compiled kernel
    (``ops/cpu_neighbourhood.py``'s ``cpu_nacl_loss``: no derivative tensor kept, one gradient tensor written), or
    None where that kernel does not serve (not CPU, float16/bfloat16, the torch backend, no extension): the caller
    then sums the statistics' CE and :func:`neighbourhood_penalty`. Labels outside ``[0, C)`` are in no class."""
    fused = _fused_nacl(x, labels, distance)
    if fused is None:
        return None
    weights, left, scale = _compiled_kernel(kernel, x.ndim - 2)
    return fused.nacl_loss_cpu(x, labels, weights, left, scale, distance)


def nacl_loss_value(x: torch.Tensor, labels: torch.Tensor, kernel: NeighbourhoodKernel, distance: str, w_pen: float,
                    w_ce: float):
    """The NACL loss ``w_ce·Σ_v −log softmax(x)_y + w_pen·Σ penalty`` of integer ``labels`` ``(B, *spatial)`` as one
    compiled op whose forward also writes the gradient (``ops/cpu_neighbourhood.py``'s ``cpu_nacl_loss_value``), or
    None where that kernel does not serve (as :func:`nacl_terms`)."""
    fused = _fused_nacl(x, labels, distance)
    if fused is None:
        return None
    weights, left, scale = _compiled_kernel(kernel, x.ndim - 2)
    return fused.nacl_loss_value_cpu(x, labels, weights, left, scale, distance, w_pen, w_ce)
