"""Compiled CPU soft skeleton (``csrc/soft_skeleton_cpu.cpp``): the CPU twin of ``ops/soft_skeleton.py``'s torch
backend, MONAI's ``soft_skel`` iteration.

Two ``torch.library`` custom ops, ``fastloss::cpu_soft_skeleton`` (forward) and
``fastloss::cpu_soft_skeleton_backward``, with fake kernels and registered autograd, so that
``torch.compile(fullgraph=True)`` traces through them. The forward saves only its input; the backward
recomputes the iteration from it (checkpoints every ``ceil(sqrt(iters + 1))`` steps, held per plane only while
that plane's backward runs). Planes (``(b, c)`` images) run on ``torch.get_num_threads()`` threads, each plane's
result independent of their number; the tie rules are PyTorch's, so values are MONAI's bits and gradients
autograd's through MONAI's ops.
"""

from __future__ import annotations

import torch

from .. import _ext

__all__ = ["available", "supports", "soft_skeleton_cpu"]


def available() -> bool:
    """Whether ``fastloss._C`` carries the CPU soft skeleton."""
    return _ext.has("soft_skeleton_cpu")


def supports(x: torch.Tensor) -> bool:
    """CPU float32/float64 ``(B, C, H, W[, D])`` tensors that are not empty and hold finite values (the kernel's
    compare-selects do not propagate NaN as torch's pooling does; non-finite input goes to the torch backend,
    checked outside ``torch.compile`` only)."""
    if not (
        available() and isinstance(x, torch.Tensor) and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64) and x.ndim in (4, 5) and x.numel() > 0
    ):
        return False
    return torch.compiler.is_compiling() or bool(torch.isfinite(x.detach()).all())


def _geometry(x: torch.Tensor):
    B, C, H, W = x.shape[:4]
    D = x.shape[4] if x.ndim == 5 else 1
    return B * C, H, W, D, x.ndim - 2


def _check(x: torch.Tensor, name: str) -> None:
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64) or x.ndim not in (4, 5) or x.numel() == 0:
        raise ValueError(f"fastloss::{name}: expected a non-empty CPU float32/float64 (B, C, H, W[, D]) tensor, "
                         f"got {x.dtype} {tuple(x.shape)} on {x.device}")


@torch.library.custom_op("fastloss::cpu_soft_skeleton", mutates_args=(), device_types="cpu")
def _forward_op(x: torch.Tensor, iters: int) -> torch.Tensor:
    _check(x, "cpu_soft_skeleton")
    if iters < 0:
        raise ValueError(f"fastloss::cpu_soft_skeleton: iters must be >= 0, got {iters}")
    xc = x.contiguous()
    out = torch.empty_like(xc)
    R, H, W, D, nd = _geometry(xc)
    _ext.require("the CPU soft skeleton").soft_skeleton_cpu(
        xc.data_ptr(), 0, out.data_ptr(), R, H, W, D, nd, iters, xc.element_size(), max(1, torch.get_num_threads()))
    return out


@_forward_op.register_fake
def _(x, iters):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastloss::cpu_soft_skeleton_backward", mutates_args=(), device_types="cpu")
def _backward_op(x: torch.Tensor, grad: torch.Tensor, iters: int) -> torch.Tensor:
    _check(x, "cpu_soft_skeleton_backward")
    if tuple(grad.shape) != tuple(x.shape):
        # the kernel reads as many gradient values as there are input values
        raise ValueError(f"fastloss::cpu_soft_skeleton_backward: grad must have the input's shape {tuple(x.shape)}, "
                         f"got {tuple(grad.shape)}")
    xc = x.contiguous()
    gc = grad.to(device=xc.device, dtype=xc.dtype).contiguous()
    out = torch.empty_like(xc)
    R, H, W, D, nd = _geometry(xc)
    _ext.require("the CPU soft skeleton").soft_skeleton_cpu(
        xc.data_ptr(), gc.data_ptr(), out.data_ptr(), R, H, W, D, nd, iters, xc.element_size(),
        max(1, torch.get_num_threads()))
    return out


@_backward_op.register_fake
def _(x, grad, iters):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    x, iters = inputs
    ctx.save_for_backward(x)
    ctx.iters = iters


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return _backward_op(x, grad, ctx.iters), None


_forward_op.register_autograd(_backward, setup_context=_setup)


def soft_skeleton_cpu(x: torch.Tensor, iters: int) -> torch.Tensor:
    """MONAI's ``soft_skel(x, iters)`` of a CPU float32/float64 tensor, compiled; differentiable in ``x``.
    Call :func:`supports` first."""
    return _forward_op(x, iters)
