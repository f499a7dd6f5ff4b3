"""Test setup. TRITON_INTERPRET must be set before fastloss (and its @triton.jit kernels) is imported:
with no GPU, the Triton kernels run on CPU tensors under Triton's interpreter."""

import os

import torch

if "TRITON_INTERPRET" not in os.environ and not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def pytest_collection_modifyitems(config, items):
    skip_cuda = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords and not torch.cuda.is_available():
            item.add_marker(skip_cuda)


@pytest.fixture
def torch_backend(monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")


@pytest.fixture
def triton_backend(monkeypatch):
    pytest.importorskip("triton")
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
