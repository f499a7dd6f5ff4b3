"""``python -m fastloss info``: versions, available backends and the devices seen."""

from __future__ import annotations

import argparse
import os
import platform
import sys


def info() -> dict:
    import torch

    import fastloss
    from fastloss import backend

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

        rows["compiled CPU EDT (fastloss._C)"] = "yes"
        rows["compiled CUDA EDT"] = "yes" if _C.has_cuda() else "no (built without nvcc)"
    except ImportError as exc:
        rows["compiled CPU EDT (fastloss._C)"] = f"no ({exc})"
        rows["compiled CUDA EDT"] = "no"
    rows["Triton kernels"] = "yes" if backend.triton_available() else "no"
    rows["Triton interpreter (TRITON_INTERPRET=1)"] = "on" if backend.triton_interpreting() else "off"
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
