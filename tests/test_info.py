"""``python -m fastloss info``: what serves CPU and CUDA tensors, and whether Triton can run here."""

import types

import pytest
import torch

from fastloss import __main__ as cli
from fastloss import backend


def _ext(*names, cuda=False):
    ns = {n: (lambda *a: None) for n in names}
    ns["has_cuda"] = lambda: cuda
    return types.SimpleNamespace(**ns)


def test_cpu_losses_name_the_compiled_kernels_only_when_they_exist(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    assert cli.serving(_ext("edt_cpu"))["losses on CPU tensors"] == "torch"
    assert cli.serving(_ext("edt_cpu", "class_stats_forward"))["losses on CPU tensors"] == "compiled C++ (fastloss._C)"
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    rows = cli.serving(_ext("class_stats_forward"))
    assert rows["losses on CPU tensors"] == "torch (FASTLOSS_BACKEND=torch)"
    assert "torch (FASTLOSS_BACKEND=torch)" in rows["losses on CUDA tensors"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without a GPU")
def test_triton_is_yes_only_where_it_can_run(monkeypatch):
    monkeypatch.setattr(backend, "_TRITON_AVAILABLE", True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    rows = cli.serving(_ext())
    assert rows["Triton kernels"].startswith("no (no CUDA GPU")
    assert rows["losses on CUDA tensors"] == "no CUDA device here (on a GPU: Triton kernels)"
    assert rows["EDT on CUDA tensors"] == "no CUDA device here (on a GPU: CPU EDT with a copy (built without nvcc))"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cli.serving(_ext())["Triton kernels"].startswith("yes, under the interpreter")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    assert cli.serving(_ext())["losses on CPU tensors"].startswith("Triton kernels under the interpreter")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cli.serving(_ext())["losses on CPU tensors"].startswith("error: FASTLOSS_BACKEND=triton")
    monkeypatch.setattr(backend, "_TRITON_AVAILABLE", False)
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    assert cli.serving(_ext())["Triton kernels"] == "no (triton does not import)"


def test_bad_backend_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "cuda")
    assert cli.serving(_ext())["losses on CPU tensors"].startswith("error: FASTLOSS_BACKEND must be one of")


def test_cli_prints_every_row(capsys, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("losses on CPU tensors", "losses on CUDA tensors", "EDT on CPU tensors", "Triton kernels", "torch"):
        assert key in out
