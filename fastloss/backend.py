"""Backend selection: which implementation serves a tensor. The one decision, asked by every op and by
``python -m fastloss info``.

``FASTLOSS_BACKEND`` (read at every call, so tests can switch it):

- ``auto`` (default): CUDA tensors use the Triton kernels (torch ops, with one warning that says what to
  install, when triton does not import); CPU tensors the compiled C++ kernels of ``fastloss._C``
  (the torch backend, with one warning, when the extension lacks them). The CPU path never imports triton.
- ``triton``: the Triton kernels for every tensor; CPU tensors need ``TRITON_INTERPRET=1`` set before
  fastloss is imported (the interpreter mode is fixed when a kernel is decorated);
- ``torch``: plain torch ops everywhere (the second opinion the kernels are tested against).

:func:`loss_kernels` answers for a device type (``"triton"``, ``"compiled"`` or ``"torch"``);
:func:`use_triton` and :func:`use_compiled_cpu` are its answers for one tensor. Whether the extension carries
an entry point is asked of :mod:`fastloss._ext`, the one import of ``fastloss._C``.
"""

from __future__ import annotations

import os
import warnings
from typing import Tuple

import torch

from . import _ext

BACKENDS = ("auto", "torch", "triton")
KERNELS = ("triton", "compiled", "torch")
# the entry points without which the CPU loss kernels are not there (an old or partial build)
CPU_KERNEL_ENTRY_POINTS = ("class_stats_cpu_forward", "class_stats_cpu_backward")
TRITON_INSTALL_HINT = "pip install 'triton>=3.6' (or fastloss[triton])"


def backend_name() -> str:
    name = os.environ.get("FASTLOSS_BACKEND", "auto").strip().lower() or "auto"
    if name not in BACKENDS:
        raise ValueError(f"FASTLOSS_BACKEND must be one of {BACKENDS}, got {name!r}")
    return name


_TRITON_AVAILABLE = None


def triton_available() -> bool:
    """Whether triton imports (checked once, and only when a tensor could use it; a plain global, which
    torch.compile traces as a constant)."""
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


def compiled_cpu_present() -> bool:
    """Whether ``fastloss._C`` carries the CPU loss kernels (no warning)."""
    return all(_ext.has(n) for n in CPU_KERNEL_ENTRY_POINTS)


_WARNED = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=4)


def loss_kernels_reason(device_type: str) -> Tuple[str, str]:
    """``(kernels, reason)``: what serves the loss kernels of a tensor on ``device_type`` under
    ``FASTLOSS_BACKEND``, and why. ``kernels`` is ``"triton"``, ``"compiled"`` (``fastloss._C``'s C++) or
    ``"torch"``. Imports triton only for a device other than the CPU, or when ``FASTLOSS_BACKEND=triton``.

    Raises:
        ValueError: an unknown ``FASTLOSS_BACKEND``.
        RuntimeError: ``FASTLOSS_BACKEND=triton`` on CPU tensors without triton or without ``TRITON_INTERPRET=1``.
    """
    name = backend_name()
    if name == "torch":
        return "torch", "FASTLOSS_BACKEND=torch"
    if device_type == "cpu":
        if name == "triton":
            if not triton_available():
                raise RuntimeError(f"FASTLOSS_BACKEND=triton needs triton, which does not import: {TRITON_INSTALL_HINT}")
            if not triton_interpreting():
                raise RuntimeError(
                    "FASTLOSS_BACKEND=triton on a CPU tensor needs TRITON_INTERPRET=1 set before fastloss is imported"
                )
            return "triton", "FASTLOSS_BACKEND=triton, under TRITON_INTERPRET=1"
        if compiled_cpu_present():
            return "compiled", "fastloss._C has the CPU kernels"
        why = "fastloss._C does not import" if _ext.C is None else "fastloss._C lacks the CPU loss kernels"
        return "torch", f"{why} (reinstall with `pip install -e .`)"
    if device_type == "cuda":
        if triton_available():
            return "triton", "triton imports"
        return "torch", f"triton does not import: {TRITON_INSTALL_HINT}"
    return "torch", f"no kernels for {device_type} tensors"


def loss_kernels(device_type: str) -> str:
    """:func:`loss_kernels_reason`'s answer, warning once per device type when a tensor falls back to torch ops
    for want of triton (CUDA) or of the compiled extension (CPU)."""
    kernels, reason = loss_kernels_reason(device_type)
    if kernels == "torch" and backend_name() == "auto" and device_type in ("cpu", "cuda"):
        _warn_once(device_type, f"fastloss: {device_type.upper()} tensors use the slower torch backend: {reason}")
    return kernels


def use_triton(t: torch.Tensor) -> bool:
    """True when the Triton kernels should serve tensor ``t``."""
    return loss_kernels(t.device.type) == "triton"


def use_compiled_cpu(t: torch.Tensor) -> bool:
    """True when the compiled C++ kernels should serve CPU tensor ``t``."""
    return t.device.type == "cpu" and loss_kernels("cpu") == "compiled"


def compiled_cpu_available() -> bool:
    """Whether the compiled C++ kernels serve CPU tensors now (warns once when the extension lacks them)."""
    return loss_kernels("cpu") == "compiled"
