"""Autograd for the kernels' custom ops, whose only differentiable input is the first (the logits).

``register_logits_autograd(op, backward_op)``: the forward's tensor inputs are saved (nothing computed is
kept), the other inputs are passed through as they were, and the backward is ``backward_op(grad, *inputs)``
for the logits; targets, masks, maps and labels get no gradient (the backends' ``supports`` send calls that
need one to the torch backend). Used by the Triton and the compiled CPU ops alike.
"""

from __future__ import annotations

import torch


def register_logits_autograd(op, backward_op) -> None:
    def setup_context(ctx, inputs, output):
        is_tensor = [isinstance(v, torch.Tensor) for v in inputs]
        ctx.save_for_backward(*[v for v, t in zip(inputs, is_tensor) if t])
        ctx.rest = [None if t else v for v, t in zip(inputs, is_tensor)]
        ctx.is_tensor = is_tensor

    def backward(ctx, grad):
        saved = iter(ctx.saved_tensors)
        args = [next(saved) if t else v for v, t in zip(ctx.rest, ctx.is_tensor)]
        dx = backward_op(grad, *args) if ctx.needs_input_grad[0] else None
        return (dx,) + (None,) * (len(args) - 1)

    op.register_autograd(backward, setup_context=setup_context)
