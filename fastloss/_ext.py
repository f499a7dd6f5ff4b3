"""The one import of the compiled extension ``fastloss._C``.

Every op that calls compiled code asks this module, never ``fastloss._C`` directly, so a missing or partial
build is seen (and reported) in one place:

- :data:`C`: the extension module, or None when it does not import;
- :data:`IMPORT_ERROR`: why it did not import (None when it did);
- :func:`has`: whether the extension carries one entry point (a build without CUDA lacks ``edt_cuda``'s
  kernels, an old build may lack a newer kernel);
- :func:`require`: the module, or a ``RuntimeError`` that names what needed it and how to rebuild.

This module stands on the ground floor: it imports nothing of fastloss.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Optional

__all__ = ["C", "IMPORT_ERROR", "has", "require"]

try:
    # by name: the binary is not a Python module, and import-linter would read ``from . import _C`` as an
    # import of the package fastloss itself (which stands above everything)
    C: Optional[ModuleType] = importlib.import_module("fastloss._C")
    IMPORT_ERROR: Optional[BaseException] = None
except ImportError as exc:  # pragma: no cover - only without a build
    C = None
    IMPORT_ERROR = exc


def has(name: str) -> bool:
    """Whether the compiled extension imports and carries the entry point ``name``."""
    return C is not None and hasattr(C, name)


def require(what: str) -> ModuleType:
    """The extension module, or a ``RuntimeError`` saying that ``what`` needs it.

    Raises:
        RuntimeError: ``fastloss._C`` does not import (the message carries the import error).
    """
    if C is None:
        raise RuntimeError(
            f"{what} needs the compiled extension fastloss._C, which is not built; reinstall with "
            f"`pip install -e .` (import error: {IMPORT_ERROR!r})"
        )
    return C
