"""Compiled CPU soft confusion matrix (``csrc/soft_confusion_cpu.cpp``): the CPU twin of ``ops/soft_confusion.py``.

Custom ops ``fastloss::cpu_soft_confusion`` and ``fastloss::cpu_soft_confusion_backward`` (fake kernels,
registered autograd): the forward computes each voxel's softmax and adds it to its label's row (per tile in
double, tiles added in order: the same bits for any thread count) and keeps only the logits and labels; the
backward recomputes the softmax and writes ``p_c·(G[y, c] − Σ_k p_k G[y, k])``.

``fastloss::cpu_soft_confusion_rows`` contracts the rows with a class-pair weight in the same pass, O(C) per voxel
instead of C·C: ``W[b, l] = Σ_{y=l} w_v``, ``w_v = Σ_c M[l, c]·p_c(v)``, and the label counts; when the logits need a
gradient the same pass writes the derivative ``q_c = p_c·(M[y, c] − w_v)``, which the backward scales in place by
``A[y]`` (``A = dL/dW``) into the gradient: one softmax per step, and the derivative is the gradient's memory.
"""

from __future__ import annotations

from typing import Tuple

import torch

from .. import _ext
from .cpu_buffers import new_output_like

__all__ = ["available", "supports", "soft_confusion_cpu", "rows_available", "soft_confusion_rows_cpu"]


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
    dx = new_output_like(xc)  # the gradient cache: no page faults on a fresh 8 MiB+ buffer
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


# ------------------------------------------------------------------------------------------ rows contracted with M
ROWS_MAX_CLASSES = 32768  # csrc/soft_confusion_cpu.cpp's bound on C


def rows_available() -> bool:
    return _ext.has("soft_confusion_rows_cpu")


@torch.library.custom_op("fastloss::cpu_soft_confusion_rows", mutates_args=(), device_types="cpu")
def _rows_op(x: torch.Tensor, labels: torch.Tensor, M: torch.Tensor, need_deriv: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    _check(x, labels, "cpu_soft_confusion_rows")
    B, C, N = x.shape
    if tuple(M.shape) != (C, C) or C > ROWS_MAX_CLASSES:  # the kernel reads C·C weights
        raise ValueError(f"fastloss::cpu_soft_confusion_rows: expected a {C} x {C} matrix for C <= {ROWS_MAX_CLASSES}, "
                         f"got {tuple(M.shape)}")
    xc, lab, m = x.contiguous(), labels.to(torch.int64).contiguous(), M.to(torch.float64).contiguous()
    out = torch.empty(B, 2 * C, dtype=torch.float64)
    q = new_output_like(xc) if need_deriv else xc.new_empty(0)  # the gradient cache: no page faults on 8 MiB+
    _ext.require("the CPU soft confusion rows").soft_confusion_rows_cpu(
        xc.data_ptr(), lab.data_ptr(), m.data_ptr(), out.data_ptr(), q.data_ptr() if need_deriv else 0, B, C, N,
        xc.element_size(), max(1, torch.get_num_threads()))
    return out, q


@_rows_op.register_fake
def _(x, labels, M, need_deriv):
    B, C = x.shape[:2]
    q = torch.empty_like(x, memory_format=torch.contiguous_format) if need_deriv else x.new_empty(0)
    return x.new_empty(B, 2 * C, dtype=torch.float64), q


@torch.library.custom_op("fastloss::cpu_soft_confusion_rows_scale", mutates_args=("q",), device_types="cpu")
def _rows_scale_op(q: torch.Tensor, labels: torch.Tensor, grad: torch.Tensor) -> None:
    """``q[b, c, v] *= grad[b, labels[b, v]]`` in place (0 for labels outside ``[0, C)``)."""
    if q.ndim != 3 or not q.is_contiguous() or q.numel() == 0 or tuple(labels.shape) != (q.shape[0], q.shape[2]):
        raise ValueError(f"fastloss::cpu_soft_confusion_rows_scale: expected a contiguous (B, C, N) q and (B, N) labels, "
                         f"got {tuple(q.shape)} and {tuple(labels.shape)}")
    B, C, N = q.shape
    if tuple(grad.shape) != (B, C):
        raise ValueError(f"fastloss::cpu_soft_confusion_rows_scale: grad must be {(B, C)}, got {tuple(grad.shape)}")
    lab, g = labels.to(torch.int64).contiguous(), grad.to(torch.float64).contiguous()
    _ext.require("the CPU soft confusion rows").soft_confusion_rows_scale_cpu(
        lab.data_ptr(), g.data_ptr(), q.data_ptr(), B, C, N, q.element_size(), max(1, torch.get_num_threads()))


@_rows_scale_op.register_fake
def _(q, labels, grad):
    return None


def _rows_setup(ctx, inputs, output):
    x, labels, M, _ = inputs
    ctx.save_for_backward(x, labels, M)
    # The derivative is held as an attribute, not a saved tensor: the first backward scales it in place into the
    # gradient and drops it (so its memory is the gradient's), a later backward through the same graph
    # (retain_graph, gradcheck's reentrancy check) computes it again from x. Marked non-differentiable, it has no
    # grad_fn, so holding it makes no reference cycle. Traced graphs (torch.compile) cannot carry a tensor held that
    # way: there the forward keeps no derivative and the backward computes it from x.
    ctx.q = output[1] if output[1].numel() > 0 and not torch.compiler.is_compiling() else None
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # no (B, C, N) zeros for the derivative output's gradient


def _rows_backward(ctx, grad, grad_q):
    x, labels, M = ctx.saved_tensors
    if grad is None:
        return None, None, None, None
    q, ctx.q = ctx.q, None
    if q is None:  # a second backward (or a forward without need_deriv): the derivative again, from x
        q = _rows_op(x.detach(), labels, M, True)[1]
    # dL/dx = dL/dW[y]·q (the counts, grad[:, C:], do not depend on x); labels outside [0, C) have q = 0
    _rows_scale_op(q, labels, grad[:, : x.shape[1]])
    return q, None, None, None


_rows_op.register_autograd(_rows_backward, setup_context=_rows_setup)


def soft_confusion_rows_cpu(x: torch.Tensor, labels: torch.Tensor, M: torch.Tensor, dtype: torch.dtype):
    """``(W, counts)``, each ``(B, C)`` in ``dtype``: ``W[b, l] = Σ_{y=l} Σ_c M[l, c]·softmax(x)_c`` (differentiable in
    ``x``; the derivative is computed in the same pass when ``x`` needs a gradient) and the voxel count of each label;
    call :func:`supports` and check ``C <= ROWS_MAX_CLASSES`` first."""
    C = x.shape[1]
    need_deriv = torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling()
    out, _ = _rows_op(x, labels, M, need_deriv)
    return out[:, :C].to(dtype), out[:, C:].detach().to(dtype)
