"""Triton is optional: without it every loss runs on CPU tensors through the compiled kernels, and CUDA tensors
fall back to torch ops with one warning that says what to install.

The no-triton world is made in a subprocess (``sys.modules["triton"] = None`` before fastloss is imported), so
this file runs in the normal suite, where triton is installed. CI also runs ``tools/check_cpu_path.py`` in a
venv installed by the README's main-job command, where triton is truly absent.
"""

import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from fastloss import backend

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_every_named_loss_runs_compiled_without_triton():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "check_cpu_path.py"), "--block-triton"],
                          capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "0 failures; triton imported: no" in proc.stdout
    import fastloss

    # every PAPER_LOSSES entry and every MONAI drop-in name was checked, each served by a compiled kernel
    ok_rows = [line for line in proc.stdout.splitlines() if " ok " in line and "kernels: " in line]
    sys.path.insert(0, str(ROOT / "tools"))
    from check_cpu_path import MONAI_DROP_INS

    assert len(MONAI_DROP_INS) >= 17  # MONAI 1.6.1's segmentation losses that fastloss has
    from fastloss.registry import BEYOND_PAPER

    assert len(ok_rows) == len(fastloss.PAPER_LOSSES) + len(BEYOND_PAPER) + len(MONAI_DROP_INS)
    assert all(not line.endswith("kernels: -") for line in ok_rows)


def test_readme_usage_and_info_without_triton():
    proc = _run(
        "import sys; sys.modules['triton'] = None\n"
        "import warnings; warnings.simplefilter('error')\n"  # no fallback warning on the CPU path
        "import torch, fastloss\n"
        "logits = torch.randn(2, 9, 8, 8, 8, requires_grad=True)\n"
        "labels = torch.randint(0, 9, (2, 1, 8, 8, 8))\n"
        "fastloss.DiceCELoss(to_onehot_y=True, softmax=True)(logits, labels).backward()\n"
        "from fastloss import backend\n"
        "assert backend.loss_kernels('cpu') == 'compiled'\n"
        "from fastloss.__main__ import serving\n"
        "rows = serving()\n"
        "print(rows['losses on CPU tensors']); print(rows['Triton kernels']); print(rows['losses on CUDA tensors'])\n"
        "assert not [m for m, v in sys.modules.items() if m.startswith('triton') and v is not None]\n"
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    cpu, triton_row, cuda = proc.stdout.splitlines()[-3:]
    assert cpu.startswith("compiled C++ (fastloss._C)")
    assert triton_row.startswith("no (triton does not import")
    assert "torch (triton does not import: pip install" in cuda


def test_cuda_without_triton_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    monkeypatch.setattr(backend, "_TRITON_AVAILABLE", False)
    monkeypatch.setattr(backend, "_WARNED", set())
    with pytest.warns(RuntimeWarning, match=r"CUDA tensors use the slower torch backend: triton does not import: pip"):
        assert backend.loss_kernels("cuda") == "torch"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second time: no warning
        assert backend.loss_kernels("cuda") == "torch"
    # the CPU answer never asks for triton
    monkeypatch.setattr(backend, "triton_available", lambda: pytest.fail("the CPU path asked for triton"))
    assert backend.loss_kernels("cpu") in ("compiled", "torch")
    assert not backend.use_triton(torch.zeros(1))
