"""Shared check for the loss test files: a loss under a small network, compiled whole
(``torch.compile(fullgraph=True)``, aot_eager), gives the eager value and parameter gradients."""

import torch


def assert_compiled_step_matches_eager(loss, *, probs: bool = False, seeds=(0, 1)) -> None:
    """``loss(net(x), y)`` (``softmax`` of the outputs first with ``probs``) compiled with ``fullgraph=True``
    equals the eager step in value and in the gradient of every parameter of ``net``, for two inputs."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1)

    def step(x, y):
        out = net(x)
        return loss(torch.softmax(out, 1) if probs else out, y)

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    for seed in seeds:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(2, 1, 6, 5, 4, generator=g)
        y = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g)
        ref = step(x, y)
        rg = torch.autograd.grad(ref, list(net.parameters()))
        got = compiled(x, y)
        gg = torch.autograd.grad(got, list(net.parameters()))
        torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
        for a, b in zip(gg, rg):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    torch._dynamo.reset()
