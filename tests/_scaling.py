"""Shared check for the custom backwards: the upstream gradient must scale dL/dx.

On the torch backend autograd guarantees it; on the Triton path (under the interpreter) and the compiled
CPU kernels (``auto``) the backward is ours, so a backward that ignores its upstream gradient fails here.
"""

from __future__ import annotations

import os

import pytest
import torch


def skip_unless_backend_runs(backend: str) -> None:
    """Skip when ``backend`` is ``triton`` and the Triton kernels cannot run here."""
    if backend == "triton":
        pytest.importorskip("triton")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")


def assert_upstream_gradient_scales(loss, x, y, backend, monkeypatch, *, dtype=torch.float32, rtol=1e-4):
    """On ``backend``, in ``dtype``: 2·L gives exactly twice the gradient of L, and 0.37·L gives 0.37 times
    the float64 gradient of the torch backend (``x`` float64)."""
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    (ref,) = torch.autograd.grad(loss(x64, y), x64)
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    g = {}
    for factor in (1.0, 2.0, 0.37):
        xx = x.detach().to(dtype).requires_grad_(True)
        (factor * loss(xx, y)).backward()
        g[factor] = xx.grad
    assert torch.isfinite(g[1.0]).all() and g[1.0].abs().sum() > 0
    assert torch.equal(g[2.0], 2 * g[1.0])
    torch.testing.assert_close(g[0.37].double(), 0.37 * ref, rtol=rtol, atol=1e-6)
