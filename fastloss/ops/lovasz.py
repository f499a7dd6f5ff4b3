"""Lovász extension of the Jaccard loss (Berman et al., CVPR 2018; paper Eqs. 11-13), batched over rows.

For one row (a class, or an (image, class) pair) with errors ``m ∈ [0, 1]^P`` (Eq. 11) and foreground
indicator ``g``, sort the errors in decreasing order (permutation π). With ``G = Σ g`` and the first ``i``
sorted elements taken as the predicted error set,

    J_i = 1 − (G − Σ_{j≤i} g_πj) / (G + Σ_{j≤i} (1 − g_πj))          (Jaccard loss of that set)
    d_i = J_i − J_{i−1},  J_0 = 0                                    (Eq. 13's d_i(m))
    loss = Σ_i m_πi · d_i                                            (Eq. 12-13)

The union ``G + Σ_{j≤i}(1 − g_πj)`` is never 0: if ``G = 0`` every counted element is background, so
it equals ``i ≥ 1``. ``d`` depends on ``m`` only through the permutation, which is piecewise constant,
so ``∂loss/∂m_πi = d_i`` (the subgradient Berman et al. use); autograd gets it from the gather that
``torch.sort`` performs, with ``d`` computed without gradient.

Ignored elements (``valid == False``) are sorted after every counted one (sort key −1 < 0 ≤ m) and
their errors are zeroed, so they change neither the value nor the gradient of the counted elements:
Jaccard terms only look at the elements before them. A row with no counted element gives 0.
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["lovasz_grad", "lovasz_extension"]


def lovasz_grad(fg_sorted: torch.Tensor) -> torch.Tensor:
    """``d_i`` of Eq. 13 for rows of foreground indicators sorted by decreasing error, shape ``(R, P)``."""
    g = fg_sorted
    gts = g.sum(dim=-1, keepdim=True)
    intersection = gts - g.cumsum(dim=-1)
    union = gts + (1.0 - g).cumsum(dim=-1)
    jac = 1.0 - intersection / union
    # d_1 = J_1 − J_0 with J_0 = 0; d_i = J_i − J_{i−1} for i > 1.
    return torch.cat([jac[..., :1], jac[..., 1:] - jac[..., :-1]], dim=-1)


def check_valid(errors: torch.Tensor, valid: Optional[torch.Tensor]) -> None:
    """``valid`` must be None or a bool tensor of the errors' shape on their device: the compiled and
    Triton kernels read it as ``R·P`` flags, so a smaller (broadcastable) mask would be read past its end."""
    if valid is None:
        return
    if not isinstance(valid, torch.Tensor):
        raise TypeError(f"valid must be None or a bool tensor, got {type(valid).__name__}")
    if valid.dtype != torch.bool:
        raise TypeError(f"valid must be a bool tensor, got dtype {valid.dtype}")
    if valid.shape != errors.shape:
        raise ValueError(
            f"valid must have the errors' shape {tuple(errors.shape)} (one flag per element), got {tuple(valid.shape)}"
        )
    if valid.device != errors.device:
        raise ValueError(f"valid is on {valid.device} but errors are on {errors.device}")


def lovasz_extension(
    errors: torch.Tensor, fg: torch.Tensor, valid: Optional[torch.Tensor] = None
) -> torch.Tensor:
    """Lovász–Jaccard loss of each row: ``errors`` and ``fg`` are ``(R, P)``; returns ``(R,)``.

    ``errors`` carries the gradient; ``fg`` (0/1 or soft foreground) and ``valid`` (bool, same shape,
    None for all counted) are constants.

    Raises:
        ValueError: ``errors``/``fg`` not of one ``(R, P)`` shape; ``valid`` of another shape or device.
        TypeError: ``valid`` not a bool tensor.
    """
    if errors.shape != fg.shape or errors.ndim != 2:
        raise ValueError(f"errors and fg must both be (R, P), got {tuple(errors.shape)} and {tuple(fg.shape)}")
    check_valid(errors, valid)
    if errors.shape[1] == 0:
        return errors.sum(dim=1) * 0.0
    from ..backend import use_compiled_cpu, use_triton

    if errors.dtype == torch.float32 and use_triton(errors):
        # Same sort, then the cumulative sums, d_i and the row sums fused in two Triton passes.
        from .triton_lovasz import lovasz_extension_triton

        return lovasz_extension_triton(errors, fg, valid)
    if use_compiled_cpu(errors):
        # A radix sort and one pass per row in C++ (csrc/lovasz_cpu.cpp), rows over the threads.
        from . import cpu_lovasz

        if cpu_lovasz.supports(errors, fg, valid):
            return cpu_lovasz.lovasz_extension_cpu(errors, fg, valid)
    fg = fg.detach().to(errors.dtype)
    if valid is None:
        key = errors.detach()
    else:
        key = torch.where(valid, errors.detach(), torch.full_like(errors, -1.0))
    perm = torch.sort(key, dim=1, descending=True).indices
    m_sorted = errors.gather(1, perm)
    g_sorted = fg.gather(1, perm)
    if valid is not None:
        v_sorted = valid.gather(1, perm).to(errors.dtype)
        m_sorted = m_sorted * v_sorted
        g_sorted = g_sorted * v_sorted
    with torch.no_grad():
        d = lovasz_grad(g_sorted)
    return (m_sorted * d).sum(dim=1)
