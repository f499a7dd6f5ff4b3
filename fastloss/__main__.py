"""``python -m fastloss info``: versions, available backends and the devices seen."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def compiled_cpu_kernels(ext) -> bool:
    """Whether the compiled extension has the CPU loss kernels (its ``class_stats_*`` entry points)."""
    return ext is not None and any(name.startswith("class_stats") for name in dir(ext))


def serving(ext=None) -> dict:
    """What serves the losses and the EDT for CPU and CUDA tensors here, under ``FASTLOSS_BACKEND``.

    Args:
        ext: the compiled extension module ``fastloss._C``, or None when it does not import.

    Returns:
        ``{row name: text}`` for the rows "losses on CPU tensors", "losses on CUDA tensors",
        "EDT on CPU tensors", "EDT on CUDA tensors" and "Triton kernels".
    """
    import torch

    from fastloss import backend

    try:
        name = backend.backend_name()
    except ValueError as exc:
        return {"losses on CPU tensors": f"error: {exc}"}
    triton_ok = backend.triton_available()
    interp = backend.triton_interpreting()
    gpu = torch.cuda.is_available()
    compiled = compiled_cpu_kernels(ext)
    out = {}
    # CPU tensors (backend.use_triton and the ops' dispatch)
    if name == "torch":
        out["losses on CPU tensors"] = "torch (FASTLOSS_BACKEND=torch)"
    elif name == "triton":
        if triton_ok and interp:
            out["losses on CPU tensors"] = "Triton kernels under the interpreter (FASTLOSS_BACKEND=triton; slow, for tests)"
        else:
            out["losses on CPU tensors"] = (
                "error: FASTLOSS_BACKEND=triton on CPU tensors needs triton and TRITON_INTERPRET=1 set before import"
            )
    else:
        out["losses on CPU tensors"] = "compiled C++ (fastloss._C)" if compiled else "torch"
        if compiled and hasattr(ext, "cpu_isa"):
            out["losses on CPU tensors"] += f", {ext.cpu_isa()} kernels"
    # CUDA tensors
    if name == "torch":
        cuda = "torch (FASTLOSS_BACKEND=torch)"
    elif triton_ok:
        cuda = "Triton kernels"
    else:
        cuda = "torch (triton does not import)"
    out["losses on CUDA tensors"] = cuda if gpu else f"no CUDA device here (on a GPU: {cuda})"
    out["EDT on CPU tensors"] = "compiled C++ (fastloss._C)" if ext is not None else "unavailable (fastloss._C does not import)"
    has_cuda_edt = ext is not None and ext.has_cuda()
    cuda_edt = "compiled CUDA (fastloss._C)" if has_cuda_edt else "CPU EDT with a copy (built without nvcc)"
    out["EDT on CUDA tensors"] = cuda_edt if gpu else f"no CUDA device here (on a GPU: {cuda_edt})"
    # Triton can run here only on a GPU, or on the CPU under the interpreter
    if not triton_ok:
        out["Triton kernels"] = "no (triton does not import)"
    elif gpu:
        out["Triton kernels"] = "yes (CUDA GPU)"
    elif interp:
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
    try:
        from fastloss import _C
    except ImportError as exc:
        _C = None
        rows["compiled extension (fastloss._C)"] = f"no ({exc})"
    else:
        rows["compiled extension (fastloss._C)"] = "yes"
    rows.update(serving(_C))
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
