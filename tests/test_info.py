"""``python -m fastloss info``: what serves CPU and CUDA tensors, and whether Triton can run here."""

import types

import pytest
import torch

from fastloss import __main__ as cli
from fastloss import _ext, backend


def _fake_ext(*names, cuda=False):
    ns = {n: (lambda *a: None) for n in names}
    ns["has_cuda"] = lambda: cuda
    return types.SimpleNamespace(**ns)


def test_cpu_losses_name_the_compiled_kernels_only_when_they_exist(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    monkeypatch.setattr(_ext, "C", _fake_ext("edt_cpu"))
    rows = cli.serving()
    assert rows["losses on CPU tensors"].startswith("torch (fastloss._C lacks the CPU loss kernels")
    # what the losses run asks the same question and gets the same answer
    assert backend.loss_kernels_reason("cpu")[0] == "torch"
    monkeypatch.setattr(_ext, "C", _fake_ext("edt_cpu", *backend.CPU_KERNEL_ENTRY_POINTS))
    assert cli.serving()["losses on CPU tensors"] == "compiled C++ (fastloss._C)"
    assert backend.use_compiled_cpu(torch.zeros(1))
    monkeypatch.setattr(_ext, "C", None)
    assert cli.serving()["EDT on CPU tensors"].startswith("unavailable")
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    rows = cli.serving()
    assert rows["losses on CPU tensors"] == "torch (FASTLOSS_BACKEND=torch)"
    assert "torch (FASTLOSS_BACKEND=torch)" in rows["losses on CUDA tensors"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answers of a machine without a GPU")
def test_triton_is_yes_only_where_it_can_run(monkeypatch):
    monkeypatch.setattr(backend, "_TRITON_AVAILABLE", True)
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_ext, "C", _fake_ext())
    rows = cli.serving()
    assert rows["Triton kernels"].startswith("no (no CUDA GPU")
    assert rows["losses on CUDA tensors"] == "no CUDA device here (on a GPU: Triton kernels)"
    assert rows["EDT on CUDA tensors"] == "no CUDA device here (on a GPU: CPU EDT with a copy (built without nvcc))"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert cli.serving()["Triton kernels"].startswith("yes, under the interpreter")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    assert cli.serving()["losses on CPU tensors"].startswith("Triton kernels under the interpreter")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert cli.serving()["losses on CPU tensors"].startswith("error: FASTLOSS_BACKEND=triton")
    monkeypatch.setattr(backend, "_TRITON_AVAILABLE", False)
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    rows = cli.serving()
    assert rows["Triton kernels"].startswith("no (triton does not import")
    assert rows["losses on CUDA tensors"].startswith("no CUDA device here (on a GPU: torch (triton does not import")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    with pytest.raises(RuntimeError, match="needs triton"):
        backend.use_triton(torch.zeros(1))


def test_bad_backend_is_reported_not_raised(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "cuda")
    assert cli.serving()["losses on CPU tensors"].startswith("error: FASTLOSS_BACKEND must be one of")


def test_cli_prints_every_row(capsys, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
    assert cli.main(["info"]) == 0
    out = capsys.readouterr().out
    for key in ("losses on CPU tensors", "losses on CUDA tensors", "EDT on CPU tensors", "Triton kernels", "torch"):
        assert key in out
