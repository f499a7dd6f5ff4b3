"""The fused loss formula on the CPU: ``csrc/formula_cpu.cpp``, the twin of ``ops/triton_formula.py``'s kernel.

On CPU tensors a Dice/CE-family loss is the compiled statistics pass (``ops/cpu_stats.py``) and then its
formula on the ``(B, C, K)`` sums. Written in torch that formula is ~30 small ops forward and ~30 more in
autograd's backward, 0.3-0.5 ms of host time per step on this project's 2-core machine: 5-8 % of a
(2, 9, 64³) step on two threads, and serial, so it also held the 2-thread scaling down. Here one C++ call
evaluates the loss **and** ``dL/d(stats)`` (configured by ``formula_spec.make_config``, same formulas,
computed in double); the backward multiplies the saved ``dL/d(stats)`` by the upstream gradient.

Covered: what the losses' adapters (``losses/_fused.py``) cover (Dice / IoU / Tversky, CE, Focal, DiceCE,
DiceFocal; float32 statistics, i.e. float32/float16/bfloat16 logits), and the generalized Dice, which only this
twin has (``_fused.generalized_dice``). ``ops/formula.py`` decides when this twin serves. float64 logits keep the torch formula,
so ``gradcheck`` still differentiates it end to end.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch

from .._validation import _is_compiling
from ._autograd import eager_formula_function, register_formula_autograd

from .. import _ext

_C = _ext.C  # the compiled extension or None (fastloss._ext is its one import)


def available() -> bool:
    """Whether ``fastloss._C`` carries the CPU formula."""
    return _ext.has("loss_formula_cpu")


def _ptr_stride(w: Optional[torch.Tensor]) -> Tuple[int, int]:
    return (0, 0) if w is None else (w.data_ptr(), w.stride(0))


def _formula_cpu_impl(stats: torch.Tensor, region_weight: Optional[torch.Tensor], dist_weight: Optional[torch.Tensor],
                      ints: List[int], floats: List[float]) -> Tuple[torch.Tensor, torch.Tensor]:
    s = stats.contiguous()
    B, C, K = s.shape
    loss = torch.empty((), dtype=torch.float32)
    dstats = torch.empty_like(s)
    rw, rws = _ptr_stride(region_weight)
    dw, dws = _ptr_stride(dist_weight)
    _C.loss_formula_cpu(s.data_ptr(), B, C, K, rw, rws, dw, dws, ints, floats, loss.data_ptr(), dstats.data_ptr())
    return loss, dstats


_formula_cpu_op = torch.library.custom_op("fastloss::cpu_loss_formula", mutates_args=(), device_types="cpu")(
    _formula_cpu_impl)


@_formula_cpu_op.register_fake
def _(stats, region_weight, dist_weight, ints, floats):
    return stats.new_empty((), dtype=torch.float32), torch.empty_like(stats)


register_formula_autograd(_formula_cpu_op)
_FormulaCPU = eager_formula_function(_formula_cpu_impl)


def loss_formula_cpu(stats: torch.Tensor, ints: List[int], floats: List[float],
                     region_weight: Optional[torch.Tensor] = None,
                     dist_weight: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The 0-d float32 loss of the configuration ``(ints, floats)`` on ``(B, C, K)`` float32 CPU ``stats``;
    differentiable once with respect to ``stats``. Weights: float32 CPU vectors (stride 0 repeats a value)."""
    if _is_compiling():
        return _formula_cpu_op(stats, region_weight, dist_weight, ints, floats)[0]
    return _FormulaCPU.apply(stats, region_weight, dist_weight, ints, floats)
