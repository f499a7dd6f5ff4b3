"""The soft skeleton of clDice (Shit et al., CVPR 2021), MONAI's exact iteration, with a backward that
recomputes instead of storing.

For an image ``x`` ``(B, C, H, W[, D])`` (each ``(b, c)`` plane on its own), MONAI's ``soft_skel(x, K)`` is

    erode(x)  = min over the 3-voxel windows along each axis (a plus-shaped min; the image edge is ignored)
    dilate(x) = max over the 3×3(×3) box
    x_0 = x,  s_{−1} = 0
    for k = 0 .. K:   e_k   = erode(x_k)
                      δ_k   = relu(x_k − dilate(e_k))                (x_k minus its opening)
                      s_k   = s_{k−1} + relu(δ_k − s_{k−1}·δ_k)
                      x_{k+1} = e_k
    skeleton = s_K

(MONAI erodes ``x_k`` twice per step, for the opening and for the next image; it is one erosion here.) Step 0 is
MONAI's ``relu(x − open(x))``: with ``s_{−1} = 0`` the update gives exactly ``δ_0``.

Backward, per step, with ``G_s = ∂L/∂s_k`` and ``G_x = ∂L/∂x_{k+1}``, ``r = [δ_k − s_{k−1}δ_k > 0]``,
``q = [x_k − dilate(e_k) > 0]``:

    ∂L/∂s_{k−1} = G_s·(1 − r·δ_k)
    ∂L/∂δ_k     = G_s·r·(1 − s_{k−1})
    ∂L/∂e_k     = G_x − dilate^T(∂L/∂δ_k · q)        (dilate^T: each value's gradient to its window's argmax)
    ∂L/∂x_k     = ∂L/∂δ_k · q + erode^T(∂L/∂e_k)      (erode^T: to the argmin, MONAI's tie rules)

Memory: the forward keeps only its input. The backward walks the steps from ``K`` down to 0 and recomputes
``x_k`` and ``s_{k−1}`` from the input for each (``K(K+1)/2`` steps in all), so nothing is kept per iteration;
the torch backend's routing uses ``max_pool``'s indices, exactly as autograd through MONAI's ops (ties included).

Backends: the Triton op (``ops/triton_soft_skeleton.py``) on CUDA tensors when triton imports (and on CPU tensors
under ``FASTLOSS_BACKEND=triton``, through the interpreter), the compiled CPU op (``ops/cpu_soft_skeleton.py``,
``csrc/soft_skeleton_cpu.cpp``) on CPU tensors, the torch ops here otherwise and under ``FASTLOSS_BACKEND=torch``.
"""

from __future__ import annotations

from typing import Tuple

import torch
import torch.nn.functional as F

__all__ = ["soft_skeleton", "soft_skeleton_torch", "soft_skel_reference", "check_iterations"]


def check_iterations(iter_) -> int:
    """MONAI's ``iter_`` rules: an int (TypeError otherwise), ``>= 0`` (ValueError otherwise)."""
    if not isinstance(iter_, int):  # MONAI's check (a bool is an int to it too)
        raise TypeError(f"iter_ must be an integer but got {type(iter_).__name__}.")
    if iter_ < 0:
        raise ValueError(f"iter_ must be a non-negative integer but got {iter_}.")
    return int(iter_)


# ------------------------------------------------------------------------------------------- MONAI's ops
def _erode_ref(img):
    if img.ndim == 4:
        p1 = -F.max_pool2d(-img, (3, 1), (1, 1), (1, 0))
        p2 = -F.max_pool2d(-img, (1, 3), (1, 1), (0, 1))
        return torch.min(p1, p2)
    p1 = -F.max_pool3d(-img, (3, 1, 1), (1, 1, 1), (1, 0, 0))
    p2 = -F.max_pool3d(-img, (1, 3, 1), (1, 1, 1), (0, 1, 0))
    p3 = -F.max_pool3d(-img, (1, 1, 3), (1, 1, 1), (0, 0, 1))
    return torch.min(torch.min(p1, p2), p3)


def _dilate_ref(img):
    if img.ndim == 4:
        return F.max_pool2d(img, (3, 3), (1, 1), (1, 1))
    return F.max_pool3d(img, (3, 3, 3), (1, 1, 1), (1, 1, 1))


def soft_skel_reference(img: torch.Tensor, iter_: int) -> torch.Tensor:
    """MONAI's ``soft_skel`` written out (autograd through every pooling: the memory this module avoids)."""
    img1 = _dilate_ref(_erode_ref(img))
    skel = F.relu(img - img1)
    for _ in range(iter_):
        img = _erode_ref(img)
        img1 = _dilate_ref(_erode_ref(img))
        delta = F.relu(img - img1)
        skel = skel + F.relu(delta - skel * delta)
    return skel


# ---------------------------------------------------------------------------- forward pieces with routing
def _pool(x, kernel, padding, nd):
    pool = F.max_pool2d if nd == 2 else F.max_pool3d
    return pool(x, kernel, 1, padding, return_indices=True)


def _erode_fwd(x: torch.Tensor):
    """``(erode(x), routing)``: MONAI's directional min pools with their argmin indices."""
    nd = x.ndim - 2
    pools = []
    for a in range(nd):
        k = [1] * nd
        k[a] = 3
        pd = [0] * nd
        pd[a] = 1
        v, i = _pool(-x, tuple(k), tuple(pd), nd)
        pools.append((-v, i))
    m = torch.min(pools[0][0], pools[1][0])
    mins = [m]
    if nd == 3:
        m = torch.min(m, pools[2][0])
        mins.append(m)
    return m, (pools, mins)


def _scatter(shape, g, idx):
    """``Σ`` of ``g`` into the flat spatial positions ``idx`` of each ``(b, c)`` plane."""
    B, C = shape[:2]
    out = torch.zeros((B * C, g[0, 0].numel()), dtype=g.dtype, device=g.device)
    out.scatter_add_(1, idx.reshape(B * C, -1), g.reshape(B * C, -1))
    return out.reshape(shape)


def _min_split(g, a, b):
    """torch.minimum's backward (derivatives.yaml): a tie halves the gradient, the larger operand gets none."""
    half = torch.where(a == b, g / 2, g)
    zero = torch.zeros_like(g)
    return torch.where(a > b, zero, half), torch.where(a < b, zero, half)


def _erode_bwd(shape, g, routing):
    pools, mins = routing
    if len(pools) == 3:
        g12, g3 = _min_split(g, mins[0], pools[2][0])
    else:
        g12, g3 = g, None
    g1, g2 = _min_split(g12, pools[0][0], pools[1][0])
    out = _scatter(shape, g1, pools[0][1]) + _scatter(shape, g2, pools[1][1])
    if g3 is not None:
        out = out + _scatter(shape, g3, pools[2][1])
    return out


def _dilate_fwd(x):
    nd = x.ndim - 2
    return _pool(x, (3,) * nd, (1,) * nd, nd)


def _step(x, s):
    """One step: ``(x_{k+1}, s_k)`` from ``(x_k, s_{k−1})``."""
    e, _ = _erode_fwd(x)
    o, _ = _dilate_fwd(e)
    delta = F.relu(x - o)
    return e, s + F.relu(delta - s * delta)


def _run(x, steps):
    """``(x_steps, s_{steps−1})``: ``steps`` steps from the input (``s_{−1} = 0``)."""
    s = torch.zeros_like(x)
    for _ in range(steps):
        x, s = _step(x, s)
    return x, s


def _step_backward(x, s, g_s, g_x):
    """``(∂L/∂x_k, ∂L/∂s_{k−1})`` from ``x_k``, ``s_{k−1}`` and ``∂L/∂s_k``, ``∂L/∂x_{k+1}`` (or None)."""
    e, er = _erode_fwd(x)
    o, oi = _dilate_fwd(e)
    d0 = x - o
    delta = F.relu(d0)
    z = delta - s * delta
    r = (z > 0).to(x.dtype)
    q = (d0 > 0).to(x.dtype)
    g_prev = g_s * (1 - r * delta)
    g_delta = g_s * r * (1 - s)
    g_o = -(g_delta * q)
    g_e = _scatter(x.shape, g_o, oi)
    if g_x is not None:
        g_e = g_e + g_x
    g_in = g_delta * q + _erode_bwd(x.shape, g_e, er)
    return g_in, g_prev


def _forward_value(x: torch.Tensor, iters: int) -> torch.Tensor:
    _, s = _run(x, iters + 1)
    return s


class _SoftSkeletonTorch(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, iters):
        ctx.save_for_backward(x)
        ctx.iters = iters
        with torch.no_grad():
            return _forward_value(x, iters)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        K = ctx.iters
        with torch.no_grad():
            g_s, g_x = grad, None
            for k in range(K, -1, -1):
                xk, s_prev = _run(x, k)  # recompute x_k and s_{k−1}: nothing was kept per step
                g_x, g_s = _step_backward(xk, s_prev, g_s, g_x)
        return g_x, None


def _prepare(img: torch.Tensor):
    if not isinstance(img, torch.Tensor):
        raise TypeError(f"img must be a torch.Tensor, got {type(img).__name__}")
    if img.ndim not in (4, 5):
        raise ValueError(f"img must have shape (B, C, H, W) or (B, C, H, W, D), got {tuple(img.shape)}")
    if not img.dtype.is_floating_point:
        raise TypeError(f"img must be a float tensor, got dtype {img.dtype}")
    if img.numel() == 0:
        raise ValueError(f"img must not be empty, got shape {tuple(img.shape)}")
    dt = torch.float64 if img.dtype == torch.float64 else torch.float32
    return img.to(dt)


def soft_skeleton_torch(img: torch.Tensor, iter_: int) -> torch.Tensor:
    """The torch backend of :func:`soft_skeleton` (float32, float64 for float64 input)."""
    iters = check_iterations(iter_)
    return _SoftSkeletonTorch.apply(_prepare(img), iters)


def soft_skeleton(img: torch.Tensor, iter_: int) -> torch.Tensor:
    """MONAI's ``soft_skel(img, iter_)`` (see the module doc), differentiable, with a recomputing backward.

    ``img``: ``(B, C, H, W)`` or ``(B, C, H, W, D)`` float. Returns float32 (float64 for float64 input).

    Raises:
        TypeError: ``iter_`` not an int, ``img`` not a float tensor. ValueError: negative ``iter_``, another shape.
    """
    iters = check_iterations(iter_)
    x = _prepare(img)
    from ..backend import use_compiled_cpu, use_triton

    if use_triton(x):  # CUDA tensors with triton; CPU tensors under FASTLOSS_BACKEND=triton (the interpreter)
        from . import triton_soft_skeleton

        if triton_soft_skeleton.supports(x):
            return triton_soft_skeleton.soft_skeleton_triton(x, iters)
    elif use_compiled_cpu(x):
        from . import cpu_soft_skeleton

        if cpu_soft_skeleton.supports(x):
            return cpu_soft_skeleton.soft_skeleton_cpu(x, iters)
    return _SoftSkeletonTorch.apply(x, iters)


def skeleton_shape(img: torch.Tensor) -> Tuple[int, int, int, int]:
    """``(R, H, W, D)``: planes and spatial sizes (``D = 1`` for a 2D image), the kernels' geometry."""
    B, C, H, W = img.shape[:4]
    D = img.shape[4] if img.ndim == 5 else 1
    return B * C, H, W, D
