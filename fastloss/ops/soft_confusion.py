"""The soft confusion matrix of a softmax prediction and integer labels, without a one-hot target.

For logits ``x`` ``(B, C, N)`` with ``p = softmax(x)`` over the classes and labels ``y`` ``(B, N)`` in ``[0, C)``:

    S[b, l, c] = Σ_{v : y[b, v] = l} p[b, c, v]                         (B, C, C)

Row ``l`` sums the predicted probabilities of the voxels of true class ``l``. Every loss that is linear in
the one-hot target *and* in the prediction, with a class-pair weight, is a formula of ``S``: the generalized
Wasserstein Dice loss (Fidon et al. 2017) sums ``M[l, c]·S[l, c]`` for its Wasserstein distances
``Σ_c p_c M[y, c]``; ``S[l, l]`` is the Dice statistic ``Σ p·g`` of class ``l``.

Memory: the forward keeps nothing of size ``B·C·N``; the backward recomputes the softmax from ``x``:

    dL/dp[b, c, v] = G[b, y[b, v], c]                          (G = dL/dS: one row gathered per voxel)
    dL/dx[b, c, v] = p_c · (dL/dp_c − Σ_k p_k · dL/dp_k)       (softmax Jacobian)

:func:`distance_row_sums` gives only what the Wasserstein Dice reads, the rows contracted with a class-pair weight
``M`` and the label counts, ``W[b, l] = Σ_c M[l, c]·S[b, l, c]`` (O(C) per voxel in the compiled CPU kernel, not C·C):

    dL/dx[b, c, v] = A[y] · p_c · (M[y, c] − w_v)      (A = dL/dW, w_v = Σ_k M[y, k] p_k: the softmax Jacobian of
                                                        dL/dp_c = A[y]·M[y, c])

Labels outside ``[0, C)`` (possible only with the loss's label check off) count nowhere and get no gradient.
Sums accumulate in float32 for float16/bfloat16/float32 logits, float64 for float64 (the torch backend here), or
in double (the compiled CPU twin, ``ops/cpu_soft_confusion.py``, for float32/float64 CPU logits).
"""

from __future__ import annotations

from typing import Optional

import torch

__all__ = ["soft_confusion", "soft_confusion_torch", "distance_row_sums"]


def _dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _labels(labels: torch.Tensor, C: int, checked: bool):
    """``(index (B, N) int64 in [0, C), valid (B, N) bool, or None when every label is known to be in range)``."""
    lab = labels.long()
    if checked:
        return lab, None
    valid = (lab >= 0) & (lab < C)
    return torch.where(valid, lab, torch.zeros_like(lab)), valid


def _forward(x: torch.Tensor, labels: torch.Tensor, acc: torch.dtype, checked: bool) -> torch.Tensor:
    B, C, N = x.shape
    dt = acc
    p = torch.softmax(x.to(_dtype(x)), dim=1).to(dt)
    lab, valid = _labels(labels, C, checked)
    if valid is not None:
        p = p * valid.unsqueeze(1).to(dt)
    # S2[b, c, l] = Σ_v [y_v = l] p[b, c, v]: a scatter along the voxel axis, the index broadcast over c
    s2 = torch.zeros(B, C, C, dtype=dt, device=x.device)
    s2.scatter_add_(2, lab.unsqueeze(1).expand(B, C, N), p)
    return s2.transpose(1, 2).contiguous()


class _SoftConfusion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, labels, acc, checked):
        ctx.save_for_backward(x, labels)
        ctx.acc, ctx.checked = acc, checked
        with torch.no_grad():
            return _forward(x, labels, acc, checked)

    @staticmethod
    def backward(ctx, grad):
        x, labels = ctx.saved_tensors
        if not ctx.needs_input_grad[0]:
            return None, None, None, None
        B, C, N = x.shape
        dt = ctx.acc
        with torch.no_grad():
            p = torch.softmax(x.to(_dtype(x)), dim=1).to(dt)
            lab, valid = _labels(labels, C, ctx.checked)
            g2 = grad.to(dt).transpose(1, 2)  # (B, c, l)
            dp = g2.gather(2, lab.unsqueeze(1).expand(B, C, N))
            if valid is not None:
                dp = dp * valid.unsqueeze(1).to(dt)
            dot = (p * dp).sum(dim=1, keepdim=True)
            dx = dp.sub_(dot).mul_(p)  # p_c·(dL/dp_c − Σ_k p_k·dL/dp_k), in dp's memory
        return dx.to(x.dtype), None, None, None


def soft_confusion_torch(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Plain autograd version of :func:`soft_confusion` (the second opinion in the tests)."""
    B, C, N = x.shape
    dt = _dtype(x)
    p = torch.softmax(x.to(dt), dim=1)
    lab, valid = _labels(labels, C, False)
    p = p * valid.unsqueeze(1).to(dt)
    s2 = torch.zeros(B, C, C, dtype=dt, device=x.device).scatter_add(2, lab.unsqueeze(1).expand(B, C, N), p)
    return s2.transpose(1, 2)


def _check(x: torch.Tensor, labels: torch.Tensor) -> None:
    if x.ndim != 3 or labels.ndim != 2 or tuple(labels.shape) != (x.shape[0], x.shape[2]):
        raise ValueError(f"expected logits (B, C, N) and labels (B, N), got {tuple(x.shape)} and {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.dtype.is_complex:
        raise TypeError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    if labels.device != x.device:
        raise ValueError(f"labels are on {labels.device} but the logits are on {x.device}")


def soft_confusion(x: torch.Tensor, labels: torch.Tensor, dtype: Optional[torch.dtype] = None,
                   labels_in_range: bool = False) -> torch.Tensor:
    """``S[b, l, c] = Σ_{v: labels[b, v] = l} softmax(x)[b, c, v]``, shape ``(B, C, C)`` (see the module doc).

    ``x``: logits ``(B, C, N)``; ``labels``: integer ``(B, N)``. Differentiable in ``x``. ``dtype``: the sums'
    dtype (default float32, float64 for float64 logits); the softmax is computed in that default either way and
    then cast (float64 sums of float32 probabilities: MONAI's arithmetic when its distance matrix is float64).
    ``labels_in_range``: the caller checked every label to lie in ``[0, C)`` (skips the masking that keeps
    other labels out).

    Raises:
        ValueError: shapes that do not fit; TypeError: float labels.
    """
    _check(x, labels)
    acc = _dtype(x) if dtype is None else dtype
    from ..backend import use_compiled_cpu

    if use_compiled_cpu(x):
        from . import cpu_soft_confusion

        if cpu_soft_confusion.supports(x, labels):
            return cpu_soft_confusion.soft_confusion_cpu(x, labels, acc)
    return _SoftConfusion.apply(x, labels, acc, bool(labels_in_range))


def _label_counts(labels: torch.Tensor, B: int, C: int, dtype: torch.dtype, checked: bool) -> torch.Tensor:
    """``(B, C)`` voxel count of each label (labels outside ``[0, C)`` count nowhere), in ``dtype``."""
    lab = labels.long()
    offset = C * torch.arange(B, device=labels.device).unsqueeze(1)
    if checked:  # every label in [0, C): one counting pass
        return torch.bincount((lab + offset).reshape(-1), minlength=B * C).reshape(B, C).to(dtype)
    ok = (lab >= 0) & (lab < C)
    # integer counts (exact, whatever the order of a GPU's atomics), then the dtype
    return torch.zeros(B, C, dtype=torch.int64, device=labels.device).scatter_add_(
        1, torch.where(ok, lab, torch.zeros_like(lab)), ok.long()).to(dtype)


def distance_row_sums(x: torch.Tensor, labels: torch.Tensor, M: torch.Tensor, dtype: Optional[torch.dtype] = None,
                      labels_in_range: bool = False):
    """``(W, counts)``, each ``(B, C)``: ``W[b, l] = Σ_c M[l, c]·S[b, l, c]``, the summed class distances
    ``Σ_{v: y_v = l} Σ_c M[l, c]·softmax(x)_c(v)`` of the voxels of label ``l`` (differentiable in ``x``), and the
    voxel count of each label (no gradient). ``M``: ``(C, C)`` float tensor. ``dtype`` and ``labels_in_range`` as
    :func:`soft_confusion`.

    Compiled CPU kernel for float32/float64 CPU logits: one pass, O(C) per voxel, each voxel's distance
    ``Σ_c M[y, c] p_c`` in the logits' type and the sums in double (so with float32 logits and a float64 ``M`` the
    per-voxel distances are float32 where MONAI's are float64: a relative difference of ~1e-7). Otherwise plain torch
    ops in ``dtype``, one class at a time (``(B, N)`` tensors, no ``(B, N, C)`` gather, no scatter: the sums do not
    depend on the order of float atomics on a GPU).
    """
    _check(x, labels)
    B, C = x.shape[:2]
    if not isinstance(M, torch.Tensor) or tuple(M.shape) != (C, C) or not M.is_floating_point():
        raise ValueError(f"M must be a float ({C}, {C}) tensor, got {type(M).__name__} "
                         f"{tuple(M.shape) if isinstance(M, torch.Tensor) else ''}")
    acc = _dtype(x) if dtype is None else dtype
    from ..backend import use_compiled_cpu

    if use_compiled_cpu(x):
        from . import cpu_soft_confusion

        if (cpu_soft_confusion.rows_available() and cpu_soft_confusion.supports(x, labels)
                and C <= cpu_soft_confusion.ROWS_MAX_CLASSES):
            return cpu_soft_confusion.soft_confusion_rows_cpu(x, labels, M.detach(), acc)
    lab, valid = _labels(labels, C, bool(labels_in_range))
    p = torch.softmax(x.to(_dtype(x)), dim=1).to(acc)
    m = M.detach().to(device=x.device, dtype=acc)
    w = m[:, 0][lab] * p[:, 0]  # w_v = Σ_c M[y_v, c]·p_c(v), summed over c in order
    for c in range(1, C):
        w = w + m[:, c][lab] * p[:, c]
    if valid is not None:  # labels outside [0, C) count nowhere
        w = w * valid.to(acc)
    W = torch.stack([torch.where(lab == l, w, torch.zeros_like(w)).sum(dim=1) for l in range(C)], dim=1)
    with torch.no_grad():
        counts = _label_counts(labels, B, C, acc, labels_in_range)
    return W, counts
