"""Backend selection: which implementation serves a tensor.

``FASTLOSS_BACKEND`` (read at every call, so tests can switch it):

- ``auto`` (default): CUDA tensors use the Triton kernels (when triton imports), CPU tensors the compiled
  C++ kernels of ``fastloss._C`` (statistics, per-voxel CE, TopK select; the torch backend, with one
  warning, when the extension lacks them);
- ``triton``: the Triton kernels for every tensor; CPU tensors need ``TRITON_INTERPRET=1`` set before
  fastloss is imported (the interpreter mode is fixed when a kernel is decorated);
- ``torch``: plain torch ops everywhere (the second opinion the kernels are tested against).
"""

from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "torch", "triton")


def backend_name() -> str:
    name = os.environ.get("FASTLOSS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"FASTLOSS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


_TRITON_AVAILABLE = None


def triton_available() -> bool:
    """Whether triton imports (checked once; a plain global, which torch.compile traces as a constant)."""
    global _TRITON_AVAILABLE
    if _TRITON_AVAILABLE is None:
        try:
            import triton  # noqa: F401
            import triton.language  # noqa: F401

            _TRITON_AVAILABLE = True
        except Exception:
            _TRITON_AVAILABLE = False
    return _TRITON_AVAILABLE


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels should serve tensor ``t``."""
    name = backend_name()
    if name == "torch" or not triton_available():
        return False
    if t.is_cuda:
        return True
    if name == "triton":
        if not triton_interpreting():
            raise RuntimeError(
                "FASTLOSS_BACKEND=triton on a CPU tensor needs TRITON_INTERPRET=1 set before fastloss is imported"
            )
        return True
    return False


_COMPILED_CPU = None


def compiled_cpu_available() -> bool:
    """Whether ``fastloss._C`` carries the CPU loss kernels (checked once; warns once when it does not)."""
    global _COMPILED_CPU
    if _COMPILED_CPU is None:
        try:
            from .ops.cpu_stats import available

            _COMPILED_CPU = bool(available())
        except Exception:  # pragma: no cover - a broken install
            _COMPILED_CPU = False
        if not _COMPILED_CPU:
            import warnings

            warnings.warn(
                "fastloss._C has no compiled CPU loss kernels (reinstall with `pip install -e .`); CPU tensors "
                "use the slower torch backend",
                RuntimeWarning,
                stacklevel=3,
            )
    return _COMPILED_CPU


def use_compiled_cpu(t: torch.Tensor) -> bool:
    """True when the compiled C++ kernels should serve CPU tensor ``t`` (backend ``auto``)."""
    return t.device.type == "cpu" and backend_name() == "auto" and compiled_cpu_available()
