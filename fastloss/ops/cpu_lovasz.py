"""Compiled CPU Lovász extension (``csrc/lovasz_cpu.cpp``): the CPU twin of ``ops/triton_lovasz.py``.

:func:`fastloss.ops.lovasz.lovasz_extension`'s semantics row for row, without ``torch.sort``: per row a
radix sort of the errors' bits (ignored elements last), then one pass in that order forms the Jaccard
losses, their differences ``d`` (the subgradient) and the row's loss. ``d`` comes back in the elements'
own order, so the backward is ``dL/dm = upstream · d``; nothing else is saved. Rows run on
``torch.get_num_threads()`` threads, each row's result independent of their number. The sort is stable
(tied errors keep their order; ``torch.sort`` promises no order among ties, which changes the
subgradient between tied elements but never the loss).
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .cpu_buffers import new_output_like

from .. import _ext

_C = _ext.C  # the compiled extension or None (fastloss._ext is its one import)


def available() -> bool:
    """Whether ``fastloss._C`` carries the CPU Lovász kernel."""
    return _ext.has("lovasz_cpu")


def supports(errors: torch.Tensor, fg: torch.Tensor, valid: Optional[torch.Tensor]) -> bool:
    """CPU float32/float64 rows of fewer than 2^32 elements, targets that need no gradient."""
    if not available() or errors.device.type != "cpu" or errors.dtype not in (torch.float32, torch.float64):
        return False
    if fg.device.type != "cpu" or fg.requires_grad or (valid is not None and valid.device.type != "cpu"):
        return False
    if valid is not None and valid.shape != errors.shape:
        return False
    return errors.ndim == 2 and fg.shape == errors.shape and errors.shape[1] < 2**32


@torch.library.custom_op("fastloss::cpu_lovasz", mutates_args=(), device_types="cpu")
def _lovasz_op(errors: torch.Tensor, fg: torch.Tensor, valid: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor]:
    R, P = errors.shape
    # the kernel reads R·P values of each: anything smaller would be read past its end
    if fg.shape != errors.shape or (valid is not None and valid.shape != errors.shape):
        raise ValueError(
            f"fastloss::cpu_lovasz: errors, fg and valid must have one shape, got {tuple(errors.shape)}, "
            f"{tuple(fg.shape)} and {None if valid is None else tuple(valid.shape)}"
        )
    e = errors.contiguous()
    g = fg.to(errors.dtype).contiguous()
    v = None if valid is None else valid.to(torch.uint8).contiguous()
    loss = torch.empty(R, dtype=errors.dtype)
    d = new_output_like(e)
    _C.lovasz_cpu(
        e.data_ptr(), g.data_ptr(), 0 if v is None else v.data_ptr(), R, P, e.element_size(), loss.data_ptr(),
        d.data_ptr(), max(1, torch.get_num_threads()),
    )
    return loss, d


@_lovasz_op.register_fake
def _(errors, fg, valid):
    return errors.new_empty(errors.shape[:1]), errors.new_empty(errors.shape)


def _setup(ctx, inputs, output):
    ctx.save_for_backward(output[1])


def _backward(ctx, grad_loss, grad_d):
    # loss_r = Σ_i m_ri·d_ri with d piecewise constant in m (it depends on m through the order only)
    (d,) = ctx.saved_tensors
    return grad_loss.unsqueeze(1) * d, None, None


_lovasz_op.register_autograd(_backward, setup_context=_setup)


def lovasz_extension_cpu(errors: torch.Tensor, fg: torch.Tensor, valid: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``(R,)`` Lovász–Jaccard losses of the rows of ``errors`` (see ``ops/lovasz.py``), compiled;
    differentiable with respect to ``errors``. Call :func:`supports` first."""
    return _lovasz_op(errors, fg.detach(), valid)[0]
