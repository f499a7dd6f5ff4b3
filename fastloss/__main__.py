"""``python -m fastloss info``: versions, available backends and the devices seen."""

from __future__ import annotations

import argparse
import os
import platform
import sys


_KERNEL_TEXT = {"triton": "Triton kernels", "compiled": "compiled C++ (fastloss._C)", "torch": "torch"}


def serving() -> dict:
    """What serves the losses and the EDT for CPU and CUDA tensors here, under ``FASTLOSS_BACKEND``: the
    answers of :func:`fastloss.backend.loss_kernels_reason` (the decision the losses run) and of the EDT's
    own checks, in words.

    Returns:
        ``{row name: text}`` for the rows "losses on CPU tensors", "losses on CUDA tensors",
        "EDT on CPU tensors", "EDT on CUDA tensors" and "Triton kernels".
    """
    import torch

    from fastloss import _ext, backend
    from fastloss.distance import cuda_available

    try:
        backend.backend_name()
    except ValueError as exc:
        return {"losses on CPU tensors": f"error: {exc}"}
    gpu = torch.cuda.is_available()
    out = {}
    for device in ("cpu", "cuda"):
        try:
            kernels, reason = backend.loss_kernels_reason(device)
        except RuntimeError as exc:
            text = f"error: {exc}"
        else:
            text = _KERNEL_TEXT[kernels]
            if kernels == "triton" and device == "cpu":
                text += " under the interpreter (FASTLOSS_BACKEND=triton; slow, for tests)"
            elif kernels == "compiled" and _ext.has("cpu_isa"):
                text += f", {_ext.C.cpu_isa()} kernels"
            elif kernels == "torch":
                text += f" ({reason})"
        if device == "cuda" and not gpu:
            text = f"no CUDA device here (on a GPU: {text})"
        out[f"losses on {device.upper()} tensors"] = text
    out["EDT on CPU tensors"] = (
        "compiled C++ (fastloss._C)" if _ext.has("edt_cpu") else f"unavailable (fastloss._C does not import: {_ext.IMPORT_ERROR})"
    )
    cuda_edt = "compiled CUDA (fastloss._C)" if cuda_available() else "CPU EDT with a copy (built without nvcc)"
    out["EDT on CUDA tensors"] = cuda_edt if gpu else f"no CUDA device here (on a GPU: {cuda_edt})"
    # Triton can run here only on a GPU, or on the CPU under the interpreter
    triton_ok = backend.triton_available()
    if not triton_ok:
        out["Triton kernels"] = f"no (triton does not import: {backend.TRITON_INSTALL_HINT})"
    elif gpu:
        out["Triton kernels"] = "yes (CUDA GPU)"
    elif backend.triton_interpreting():
        out["Triton kernels"] = "yes, under the interpreter (TRITON_INTERPRET=1; slow, for tests)"
    else:
        out["Triton kernels"] = "no (no CUDA GPU; TRITON_INTERPRET=1 runs them on the CPU for tests)"
    return out


def info() -> dict:
    import torch

    import fastloss

    rows = {
        "fastloss": fastloss.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "torch CUDA": torch.version.cuda or "none",
    }
    try:
        import numpy

        rows["numpy"] = numpy.__version__
    except ImportError:
        rows["numpy"] = "not installed"
    try:
        import triton

        rows["triton"] = triton.__version__
    except Exception as exc:  # noqa: BLE001 - report whatever stops triton from importing
        rows["triton"] = f"unavailable ({type(exc).__name__})"
    from fastloss import _ext

    rows["compiled extension (fastloss._C)"] = "yes" if _ext.C is not None else f"no ({_ext.IMPORT_ERROR})"
    rows.update(serving())
    rows["FASTLOSS_BACKEND"] = os.environ.get("FASTLOSS_BACKEND", "auto")
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
    rows["devices"] = ", ".join(devices)
    rows["CPU threads"] = str(os.cpu_count())
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fastloss", description=__doc__)
    parser.add_argument("command", nargs="?", default="info", choices=["info"])
    parser.parse_args(argv)
    rows = info()
    width = max(len(k) for k in rows)
    for key, value in rows.items():
        print(f"{key:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
