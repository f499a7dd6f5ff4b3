"""The fused loss formula: which backend evaluates a configuration (``ops/formula_spec.py``) on a tensor of
statistics, and the call.

Two backends evaluate the loss **and** ``dL/d(stats)`` of a formula in one call: the Triton kernel
(``ops/triton_formula.py``, CUDA tensors, or CPU tensors under ``FASTLOSS_BACKEND=triton`` with the
interpreter) and its C++ twin (``ops/cpu_formula.py``, CPU tensors on the compiled backend). Where neither
serves (the torch backend, a build without the extension, CUDA without triton) the losses keep their torch
formula, the reference. Triton is imported only when the Triton backend serves the tensor.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .. import _ext
from ..backend import loss_kernels
from .formula_spec import REGION, fits

__all__ = ["formula_backend", "loss_formula", "fits"]


def formula_backend(t: torch.Tensor) -> Optional[str]:
    """``"triton"`` or ``"compiled"`` when a fused formula serves statistics computed from tensor ``t``
    (the same decision as the statistics kernels, :func:`fastloss.backend.loss_kernels`), else None."""
    kernels = loss_kernels(t.device.type)
    if kernels == "triton":
        return "triton"
    if kernels == "compiled" and _ext.has("loss_formula_cpu"):
        return "compiled"
    return None


def loss_formula(
    stats: torch.Tensor,
    config: Tuple[List[int], List[float]],
    region_weight: Optional[torch.Tensor] = None,
    dist_weight: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """The 0-d float32 loss of ``config`` (:func:`fastloss.ops.formula_spec.make_config`) on ``(B, C, K)``
    float32 ``stats``, fused.

    Differentiable once with respect to ``stats`` (backward: one multiply of the saved ``dL/dstats``; no
    second derivative). ``region_weight``: ``(C − first_class,)`` float32 on ``stats``' device (stride 0
    repeats a value) or None; ``dist_weight``: ``(C,)`` likewise. Check :func:`fits` first.
    CPU statistics that the Triton backend does not serve go to the C++ twin.

    Raises:
        ValueError: the generalized Dice term on the Triton backend (only the C++ twin has it).
        RuntimeError: no fused formula here (CUDA statistics without triton, or no compiled extension).
    """
    ints, floats = config
    backend = formula_backend(stats)
    if backend != "triton" and stats.device.type == "cpu" and _ext.has("loss_formula_cpu"):
        from .cpu_formula import loss_formula_cpu

        return loss_formula_cpu(stats, ints, floats, region_weight, dist_weight)
    if backend != "triton":
        raise RuntimeError(f"no fused formula serves {stats.device.type} statistics here (the losses use their torch formula)")
    if ints[0] == REGION["gdice"]:
        raise ValueError("the Triton formula has no generalized Dice term (the C++ twin has)")
    from .triton_formula import loss_formula_triton

    return loss_formula_triton(stats, ints, floats, region_weight, dist_weight)
