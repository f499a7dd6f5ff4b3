"""Autograd for the kernels' custom ops, whose only differentiable input is the first (the logits).

``register_logits_autograd(op, backward_op)``: the forward's tensor inputs are saved (nothing computed is
kept), the other inputs are passed through as they were, and the backward is ``backward_op(grad, *inputs)``
for the logits; targets, masks, maps and labels get no gradient (the backends' ``supports`` send calls that
need one to the torch backend). Used by the Triton and the compiled CPU ops alike.
``eager_logits_function(forward_impl, backward_impl)``: the same as an autograd Function for eager calls.
"""

from __future__ import annotations

import torch


def _save(ctx, inputs) -> None:
    is_tensor = [isinstance(v, torch.Tensor) for v in inputs]
    ctx.save_for_backward(*[v for v, t in zip(inputs, is_tensor) if t])
    ctx.rest = [None if t else v for v, t in zip(inputs, is_tensor)]
    ctx.is_tensor = is_tensor


def _logits_grad(ctx, grad, backward_op):
    saved = iter(ctx.saved_tensors)
    args = [next(saved) if t else v for v, t in zip(ctx.rest, ctx.is_tensor)]
    dx = backward_op(grad, *args) if ctx.needs_input_grad[0] else None
    return (dx,) + (None,) * (len(args) - 1)


def register_logits_autograd(op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        _save(ctx, inputs)

    def backward(ctx, grad):
        return _logits_grad(ctx, grad, backward_op)

    op.register_autograd(backward, setup_context=setup_context)


def eager_logits_function(forward_impl, backward_impl) -> type:
    """The same autograd as :func:`register_logits_autograd`, as a ``torch.autograd.Function`` over the ops'
    plain implementations, for eager calls: a custom op's dispatcher (schema defaults, redispatch, the
    dynamo guard) cost ~100 µs of host time per forward and per backward call on this project's CPU, a
    tenth of a (2, 9, 64³) step on two threads. ``torch.compile`` keeps tracing the custom ops."""

    class _LogitsFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, *inputs):
            _save(ctx, inputs)
            return forward_impl(*inputs)

        @staticmethod
        @torch.autograd.function.once_differentiable  # the backward kernels have no derivative of their own
        def backward(ctx, grad):
            return _logits_grad(ctx, grad, backward_impl)

    _LogitsFunction.__name__ = _LogitsFunction.__qualname__ = f"{forward_impl.__name__}_function"
    return _LogitsFunction


# ----------------------------------------------------------------------------------------------------
# the fused loss formulas (ops/triton_formula.py, ops/cpu_formula.py): impl(stats, region_weight,
# dist_weight, ints, floats) -> (loss, dL/dstats); the backward multiplies the saved dL/dstats by the
# upstream gradient (no gradient for the weights and the configuration; no second derivative)
# ----------------------------------------------------------------------------------------------------
def register_formula_autograd(op) -> None:
    """Autograd of a formula custom op whose outputs are ``(loss, dL/dstats)``."""

    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(output[1])
        ctx.mark_non_differentiable(output[1])

    def backward(ctx, grad_loss, grad_dstats):
        (dstats,) = ctx.saved_tensors
        return dstats * grad_loss, None, None, None, None

    op.register_autograd(backward, setup_context=setup_context)


def eager_formula_function(impl) -> type:
    """The eager twin of a formula custom op (no dispatcher on the host path): same forward, same backward."""

    class _FormulaFunction(torch.autograd.Function):
        @staticmethod
        def forward(ctx, stats, region_weight, dist_weight, ints, floats):
            loss, dstats = impl(stats, region_weight, dist_weight, ints, floats)
            ctx.save_for_backward(dstats)
            return loss

        @staticmethod
        @torch.autograd.function.once_differentiable  # dstats is a constant here: no silent wrong 2nd derivative
        def backward(ctx, grad_loss):
            (dstats,) = ctx.saved_tensors
            return dstats * grad_loss, None, None, None, None

    _FormulaFunction.__name__ = _FormulaFunction.__qualname__ = f"{impl.__name__}_function"
    return _FormulaFunction
