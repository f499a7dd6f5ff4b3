"""Compiled CPU soft confusion matrix (``csrc/soft_confusion_cpu.cpp``): the CPU twin of ``ops/soft_confusion.py``.

Custom ops ``fastloss::cpu_soft_confusion`` and ``fastloss::cpu_soft_confusion_backward`` (fake kernels,
registered autograd): the forward computes each voxel's softmax and adds it to its label's row (per tile in
double, tiles added in order: the same bits for any thread count) and keeps only the logits and labels; the
backward recomputes the softmax and writes ``p_c·(G[y, c] − Σ_k p_k G[y, k])``.
"""

from __future__ import annotations

import torch

from .. import _ext

__all__ = ["available", "supports", "soft_confusion_cpu"]


def available() -> bool:
    return _ext.has("soft_confusion_cpu")


def supports(x: torch.Tensor, labels: torch.Tensor) -> bool:
    return (available() and x.device.type == "cpu" and labels.device.type == "cpu" and x.ndim == 3
            and x.dtype in (torch.float32, torch.float64) and x.numel() > 0
            and tuple(labels.shape) == (x.shape[0], x.shape[2]) and not labels.dtype.is_floating_point)


def _check(x, labels, name):
    if x.ndim != 3 or tuple(labels.shape) != (x.shape[0], x.shape[2]) or x.numel() == 0:
        # the kernel reads B·N labels and B·C·N logits
        raise ValueError(f"fastloss::{name}: expected logits (B, C, N) and labels (B, N), got {tuple(x.shape)} and "
                         f"{tuple(labels.shape)}")


@torch.library.custom_op("fastloss::cpu_soft_confusion", mutates_args=(), device_types="cpu")
def _forward_op(x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    _check(x, labels, "cpu_soft_confusion")
    B, C, N = x.shape
    xc, lab = x.contiguous(), labels.to(torch.int64).contiguous()
    out = torch.empty(B, C, C, dtype=torch.float64)
    _ext.require("the CPU soft confusion matrix").soft_confusion_cpu(
        xc.data_ptr(), lab.data_ptr(), 0, out.data_ptr(), B, C, N, xc.element_size(), max(1, torch.get_num_threads()))
    return out


@_forward_op.register_fake
def _(x, labels):
    B, C = x.shape[:2]
    return x.new_empty(B, C, C, dtype=torch.float64)


@torch.library.custom_op("fastloss::cpu_soft_confusion_backward", mutates_args=(), device_types="cpu")
def _backward_op(x: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    _check(x, labels, "cpu_soft_confusion_backward")
    B, C, N = x.shape
    if tuple(grad.shape) != (B, C, C):
        raise ValueError(f"fastloss::cpu_soft_confusion_backward: grad must be {(B, C, C)}, got {tuple(grad.shape)}")
    xc, lab = x.contiguous(), labels.to(torch.int64).contiguous()
    g = grad.to(torch.float64).contiguous()
    dx = torch.empty_like(xc)
    _ext.require("the CPU soft confusion matrix").soft_confusion_cpu(
        xc.data_ptr(), lab.data_ptr(), g.data_ptr(), dx.data_ptr(), B, C, N, xc.element_size(),
        max(1, torch.get_num_threads()))
    return dx


@_backward_op.register_fake
def _(x, labels, grad):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(inputs[0], inputs[1])


def _backward(ctx, grad):
    x, labels = ctx.saved_tensors
    return _backward_op(x, labels, grad), None


_forward_op.register_autograd(_backward, setup_context=_setup)


def soft_confusion_cpu(x: torch.Tensor, labels: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``(B, C, C)`` soft confusion matrix in ``dtype`` (summed in double); call :func:`supports` first."""
    return _forward_op(x, labels).to(dtype)
