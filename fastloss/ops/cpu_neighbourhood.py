"""Compiled CPU NACL penalty (``csrc/nacl_cpu.cpp``): the CPU twin of ``ops/neighbourhood.py``'s torch backend.

One ``torch.library`` custom op, ``fastloss::cpu_nacl_penalty``, with a fake kernel and registered autograd: for
integer labels it filters each class's indicator in float32 inside the kernel (no one-hot tensor, no ``u``
tensor) and returns the ``B·C`` per-plane sums of ``|x − u|`` or ``(x − u)²`` (double, summed in a fixed order)
and, when the logits need a gradient, the derivative ``sign(x − u)`` or ``2(x − u)``, which the backward scales.
Planes run on ``torch.get_num_threads()`` threads; results do not depend on their number.

``fastloss::cpu_nacl_loss`` (with ``_backward``) is the whole NACL loss of integer labels, for ``NACLLoss``: the
penalty's per-plane sums and the per-item sums of the softmax cross entropy ``−log p_y`` in one forward that keeps
nothing of size ``B·C·N``, and one backward that recomputes ``u`` and the softmax and writes
``dx = g_pen[b, c]·(sign(x − u) or 2(x − u)) + g_ce[b]·(p_c − [y = c])`` into one tensor (no derivative tensor,
no separate CE gradient, no autograd sum of the two). Labels outside ``[0, C)`` are in no class: no CE term, ``u = 0``.

``fastloss::cpu_nacl_loss_value`` is the loss ``w_ce·Σ CE + w_pen·Σ penalty`` itself (weights known before the
forward: ``NACLLoss``'s normalisations and ``alpha``): when the logits need a gradient its forward also writes ``dx``
for those weights from the same ``u`` and softmax (the filters run once per step, not twice), and the backward
scales it in place by the loss's gradient. A second backward through the same graph (retain_graph, gradcheck's
reentrancy check) finds that tensor taken and computes ``dx`` again with ``cpu_nacl_loss_backward``; under
``torch.compile`` the forward keeps none (a traced graph cannot carry it) and the backward computes it.
"""

from __future__ import annotations

from typing import List, Tuple

import torch

from .. import _ext
from .cpu_buffers import new_output_like

__all__ = ["available", "supports", "nacl_penalty_cpu", "loss_available", "nacl_loss_cpu", "nacl_loss_value_cpu"]


def available() -> bool:
    return _ext.has("nacl_penalty_cpu")


def supports(x: torch.Tensor, target: torch.Tensor) -> bool:
    """CPU float32/float64 logits with 1 to 3 spatial dims and integer labels ``(B, *spatial)`` on the CPU."""
    return (
        available() and x.device.type == "cpu" and x.dtype in (torch.float32, torch.float64) and 3 <= x.ndim <= 5
        and x.numel() > 0 and not target.dtype.is_floating_point and target.device.type == "cpu"
        and tuple(target.shape) == (x.shape[0],) + tuple(x.shape[2:])
    )


def _geometry(x: torch.Tensor):
    B, C = x.shape[:2]
    sp = list(x.shape[2:]) + [1] * (5 - x.ndim)
    return B, C, sp[0], sp[1], sp[2], x.ndim - 2


@torch.library.custom_op("fastloss::cpu_nacl_penalty", mutates_args=(), device_types="cpu")
def _penalty_op(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float, distance: int,
                need_deriv: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    B, C, H, W, D, nd = _geometry(x)
    if tuple(labels.shape) != (B,) + tuple(x.shape[2:]):
        # the kernel reads B·N labels: a smaller tensor would be read past its end
        raise ValueError(f"fastloss::cpu_nacl_penalty: labels must have shape {(B,) + tuple(x.shape[2:])}, "
                         f"got {tuple(labels.shape)}")
    if not weights or not 0 <= left < len(weights) or distance not in (1, 2):
        raise ValueError("fastloss::cpu_nacl_penalty: bad kernel, left or distance")
    xc = x.contiguous()
    lab = labels.to(torch.int64).contiguous()
    sums = torch.empty(B * C, dtype=torch.float64)
    deriv = torch.empty_like(xc) if need_deriv else xc.new_empty(0)
    _ext.require("the CPU NACL penalty").nacl_penalty_cpu(
        xc.data_ptr(), lab.data_ptr(), B, C, H, W, D, nd, [float(w) for w in weights], left, float(scale), distance,
        xc.element_size(), sums.data_ptr(), deriv.data_ptr() if need_deriv else 0, max(1, torch.get_num_threads()))
    return sums, deriv


@_penalty_op.register_fake
def _(x, labels, weights, left, scale, distance, need_deriv):
    B, C = x.shape[:2]
    deriv = torch.empty_like(x, memory_format=torch.contiguous_format) if need_deriv else x.new_empty(0)
    return x.new_empty(B * C, dtype=torch.float64), deriv


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])
    ctx.shape = inputs[0].shape
    ctx.dtype = inputs[0].dtype


def _backward(ctx, grad_sums, grad_deriv):
    (deriv,) = ctx.saved_tensors
    if deriv.numel() == 0:
        return None, None, None, None, None, None, None
    B, C = ctx.shape[:2]
    g = grad_sums.to(ctx.dtype).reshape((B, C) + (1,) * (len(ctx.shape) - 2))
    return deriv * g, None, None, None, None, None, None


_penalty_op.register_autograd(_backward, setup_context=_setup)


def nacl_penalty_cpu(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float,
                     distance: str) -> torch.Tensor:
    """``Σ |u − x|`` or ``Σ (u − x)²`` (0-d, float32, float64 for float64 ``x``); call :func:`supports` first."""
    sums, _ = _penalty_op(x, labels, list(weights), int(left), float(scale), 1 if distance == "l1" else 2,
                          bool(x.requires_grad))
    return sums.sum().to(torch.float64 if x.dtype == torch.float64 else torch.float32)


# ------------------------------------------------------------------------------------ the fused NACL loss
def loss_available() -> bool:
    return _ext.has("nacl_loss_cpu")


def _loss_call(x, labels, weights, left, scale, distance, pen, ce, gpen, gce, dx, name):
    B, C, H, W, D, nd = _geometry(x)
    if tuple(labels.shape) != (B,) + tuple(x.shape[2:]):
        # the kernel reads B·N labels: a smaller tensor would be read past its end
        raise ValueError(f"fastloss::{name}: labels must have shape {(B,) + tuple(x.shape[2:])}, got {tuple(labels.shape)}")
    if not weights or not 0 <= left < len(weights) or distance not in (1, 2):
        raise ValueError(f"fastloss::{name}: bad kernel, left or distance")
    ptr = lambda t: 0 if t is None else t.data_ptr()  # noqa: E731
    _ext.require("the CPU NACL loss").nacl_loss_cpu(
        x.data_ptr(), labels.data_ptr(), B, C, H, W, D, nd, [float(w) for w in weights], left, float(scale), distance,
        x.element_size(), ptr(pen), ptr(ce), ptr(gpen), ptr(gce), ptr(dx), max(1, torch.get_num_threads()))


@torch.library.custom_op("fastloss::cpu_nacl_loss", mutates_args=(), device_types="cpu")
def _loss_op(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float,
             distance: int) -> Tuple[torch.Tensor, torch.Tensor]:
    xc, lab = x.contiguous(), labels.to(torch.int64).contiguous()
    B, C = x.shape[:2]
    pen = torch.empty(B * C, dtype=torch.float64)
    ce = torch.empty(B, dtype=torch.float64)
    _loss_call(xc, lab, weights, left, scale, distance, pen, ce, None, None, None, "cpu_nacl_loss")
    return pen, ce


@_loss_op.register_fake
def _(x, labels, weights, left, scale, distance):
    B, C = x.shape[:2]
    return x.new_empty(B * C, dtype=torch.float64), x.new_empty(B, dtype=torch.float64)


@torch.library.custom_op("fastloss::cpu_nacl_loss_backward", mutates_args=(), device_types="cpu")
def _loss_backward_op(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float,
                      distance: int, grad_pen: torch.Tensor, grad_ce: torch.Tensor) -> torch.Tensor:
    B, C = x.shape[:2]
    if tuple(grad_pen.shape) != (B * C,) or tuple(grad_ce.shape) != (B,):
        raise ValueError(f"fastloss::cpu_nacl_loss_backward: gradients must be ({B * C},) and ({B},), got "
                         f"{tuple(grad_pen.shape)} and {tuple(grad_ce.shape)}")
    xc, lab = x.contiguous(), labels.to(torch.int64).contiguous()
    dx = torch.empty_like(xc)
    _loss_call(xc, lab, weights, left, scale, distance, None, None, grad_pen.to(torch.float64).contiguous(),
               grad_ce.to(torch.float64).contiguous(), dx, "cpu_nacl_loss_backward")
    return dx


@_loss_backward_op.register_fake
def _(x, labels, weights, left, scale, distance, grad_pen, grad_ce):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def _loss_setup(ctx, inputs, output):
    x, labels, weights, left, scale, distance = inputs
    ctx.save_for_backward(x, labels)
    ctx.args = (list(weights), left, scale, distance)


def _loss_backward(ctx, grad_pen, grad_ce):
    x, labels = ctx.saved_tensors
    if not ctx.needs_input_grad[0]:
        return None, None, None, None, None, None
    B, C = x.shape[:2]
    gp = torch.zeros(B * C, dtype=torch.float64) if grad_pen is None else grad_pen
    gc = torch.zeros(B, dtype=torch.float64) if grad_ce is None else grad_ce
    return _loss_backward_op(x, labels, *ctx.args, gp, gc), None, None, None, None, None


_loss_op.register_autograd(_loss_backward, setup_context=_loss_setup)


def nacl_loss_cpu(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float,
                  distance: str) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(Σ penalty, Σ −log p_y)``, both 0-d in float32 (float64 for float64 ``x``); call :func:`supports` and
    :func:`loss_available` first."""
    pen, ce = _loss_op(x, labels, list(weights), int(left), float(scale), 1 if distance == "l1" else 2)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    return pen.sum().to(dt), ce.sum().to(dt)


# ------------------------------------------------------------------- the loss value, with dx from the forward
@torch.library.custom_op("fastloss::cpu_nacl_loss_value", mutates_args=(), device_types="cpu")
def _value_op(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float, distance: int,
              w_pen: float, w_ce: float, need_deriv: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    xc, lab = x.contiguous(), labels.to(torch.int64).contiguous()
    B, C = x.shape[:2]
    pen = torch.empty(B * C, dtype=torch.float64)
    ce = torch.empty(B, dtype=torch.float64)
    if need_deriv:
        dx = new_output_like(xc)  # the gradient cache: no page faults on a fresh 8 MiB+ buffer
        gp = torch.full((B * C,), float(w_pen), dtype=torch.float64)
        gc = torch.full((B,), float(w_ce), dtype=torch.float64)
        _loss_call(xc, lab, weights, left, scale, distance, pen, ce, gp, gc, dx, "cpu_nacl_loss_value")
    else:
        dx = xc.new_empty(0)
        _loss_call(xc, lab, weights, left, scale, distance, pen, ce, None, None, None, "cpu_nacl_loss_value")
    return ce.sum() * w_ce + pen.sum() * w_pen, dx


@_value_op.register_fake
def _(x, labels, weights, left, scale, distance, w_pen, w_ce, need_deriv):
    dx = torch.empty_like(x, memory_format=torch.contiguous_format) if need_deriv else x.new_empty(0)
    return x.new_empty((), dtype=torch.float64), dx


def _value_setup(ctx, inputs, output):
    x, labels, weights, left, scale, distance, w_pen, w_ce, _ = inputs
    ctx.save_for_backward(x, labels)
    ctx.args = (list(weights), left, scale, distance, w_pen, w_ce)
    # dx of the forward, held as an attribute (not a saved tensor: the first backward scales it in place into the
    # gradient and drops it); marked non-differentiable it has no grad_fn, so holding it makes no reference cycle
    ctx.dx = output[1] if output[1].numel() > 0 and not torch.compiler.is_compiling() else None
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)


def _value_backward(ctx, grad, grad_dx):
    x, labels = ctx.saved_tensors
    if grad is None or not ctx.needs_input_grad[0]:
        return (None,) * 9
    weights, left, scale, distance, w_pen, w_ce = ctx.args
    dx, ctx.dx = ctx.dx, None
    if dx is None:  # a second backward, or a traced graph: dx again, for the weights times the loss's gradient
        B, C = x.shape[:2]
        g = grad.to(torch.float64)
        dx = _loss_backward_op(x, labels, weights, left, scale, distance, (g * w_pen).expand(B * C).contiguous(),
                               (g * w_ce).expand(B).contiguous())
    elif float(grad) != 1.0:  # dL/dx = dL/dloss · dx (a loss's own backward passes 1: nothing to do)
        dx.mul_(grad.to(dx.dtype))
    return dx, None, None, None, None, None, None, None, None


_value_op.register_autograd(_value_backward, setup_context=_value_setup)


def nacl_loss_value_cpu(x: torch.Tensor, labels: torch.Tensor, weights: List[float], left: int, scale: float,
                        distance: str, w_pen: float, w_ce: float) -> torch.Tensor:
    """``w_ce·Σ −log p_y + w_pen·Σ penalty``, 0-d in float32 (float64 for float64 ``x``), with ``dx`` from the forward
    when ``x`` needs a gradient; call :func:`supports` and :func:`loss_available` first."""
    need = torch.is_grad_enabled() and x.requires_grad and not torch.compiler.is_compiling()
    value, _ = _value_op(x, labels, list(weights), int(left), float(scale), 1 if distance == "l1" else 2,
                         float(w_pen), float(w_ce), need)
    return value.to(torch.float64 if x.dtype == torch.float64 else torch.float32)
