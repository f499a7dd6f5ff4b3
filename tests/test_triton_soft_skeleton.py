"""The Triton soft skeleton (fastloss/ops/triton_soft_skeleton.py) under TRITON_INTERPRET=1 (or on a GPU): values
and input gradients against the compiled C++ op (bits, float32 and float64: the same operations in the same order,
gradient sums included), the torch backend and MONAI's ``soft_skel`` (values bitwise; autograd's gradient through
MONAI's ops in float64), ties, 2D/3D, odd sizes, several blocks, non-contiguous input, gradcheck, what the forward
keeps, opcheck, torch.compile, bad input; then SoftclDiceLoss / SoftDiceclDiceLoss through the Triton backend
against MONAI 1.6.1. The ``cuda`` test repeats the comparison on a GPU."""

import os
import warnings

import pytest
import torch

pytest.importorskip("triton")

import fastloss  # noqa: E402
from fastloss.ops import cpu_soft_skeleton, triton_soft_skeleton  # noqa: E402
from fastloss.ops.soft_skeleton import soft_skeleton, soft_skeleton_torch  # noqa: E402
from fastloss.ops.triton_soft_skeleton import soft_skeleton_triton  # noqa: E402

monai_losses = pytest.importorskip("monai.losses")
from monai.losses.cldice import soft_skel as monai_soft_skel  # noqa: E402

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available() and not INTERPRET, reason="Triton kernels need a GPU or TRITON_INTERPRET=1"
)
DEV = "cpu" if INTERPRET else "cuda"
HAS_CPP = cpu_soft_skeleton.available()


def _image(shape, seed, ties=False, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: ties in every window, the tie rules decide where the gradient goes
        return (torch.randint(0, 4, shape, generator=g) / 3).to(dtype)
    return torch.rand(shape, generator=g, dtype=dtype)


def _value_and_grad(op, x, w, iters):
    a = x.clone().requires_grad_()
    out = op(a, iters)
    (out * w).sum().backward()
    return out.detach(), a.grad


# (shape, iters, ties, dtype): 2D and 3D, odd sizes, single-voxel extents (W = 1, H = W = 1), iter_ 0/1/3/6
CASES = [
    ((2, 3, 9, 8), 0, False, torch.float32),
    ((2, 3, 9, 8), 3, True, torch.float32),
    ((1, 3, 11, 13), 3, False, torch.float64),
    ((2, 1, 1, 5), 1, True, torch.float64),
    ((2, 2, 7, 6, 5), 1, False, torch.float32),
    ((1, 2, 7, 6, 5), 3, True, torch.float32),
    ((1, 1, 5, 1, 3), 3, True, torch.float64),
    ((1, 2, 1, 1, 4), 0, False, torch.float64),
]


@pytest.mark.parametrize("shape,iters,ties,dtype", CASES)
def test_matches_compiled_torch_and_monai(shape, iters, ties, dtype):
    x = _image(shape, 10 + iters, ties, dtype).to(DEV)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=dtype).to(DEV)
    got, g_got = _value_and_grad(soft_skeleton_triton, x, w, iters)
    assert got.dtype == dtype and got.device == x.device
    # values: min/max/relu are exact and the products and differences are rounded as torch's separate ops
    assert torch.equal(got, monai_soft_skel(x, iters))
    want, g_torch = _value_and_grad(soft_skeleton_torch, x, w, iters)
    assert torch.equal(got, want)
    if HAS_CPP:  # the same operations and the same order of every gradient sum: the same bits
        want_c, g_cpp = _value_and_grad(cpu_soft_skeleton.soft_skeleton_cpu, x.cpu(), w.cpu(), iters)
        assert torch.equal(got.cpu(), want_c)
        assert torch.equal(g_got.cpu(), g_cpp)
    # the torch backend adds the routed gradients in another order (three scatter_adds, then their sum): rounding
    if dtype == torch.float64:
        torch.testing.assert_close(g_got, g_torch, rtol=1e-12, atol=1e-13)
        _, g_monai = _value_and_grad(monai_soft_skel, x, w, iters)
        torch.testing.assert_close(g_got, g_monai, rtol=1e-12, atol=1e-13)
    else:
        torch.testing.assert_close(g_got, g_torch, rtol=1e-5, atol=2e-6)
    assert g_got.abs().sum() > 0


@pytest.fixture
def small_blocks(monkeypatch):
    """64-voxel blocks: several programs, blocks that straddle planes and rows, a partial last block."""
    monkeypatch.setattr(triton_soft_skeleton, "_INTERPRET_MAX_BLOCK", 64)
    monkeypatch.setattr(triton_soft_skeleton, "_GPU_BLOCK", 64)


@pytest.mark.parametrize("shape,iters", [((2, 3, 7, 5), 2), ((1, 2, 5, 4, 3), 1)])
def test_several_blocks(small_blocks, shape, iters):
    x = _image(shape, 3, ties=True, dtype=torch.float64).to(DEV)
    w = torch.randn(shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64).to(DEV)
    got, g_got = _value_and_grad(soft_skeleton_triton, x, w, iters)
    assert torch.equal(got, monai_soft_skel(x, iters))
    _, g_monai = _value_and_grad(monai_soft_skel, x, w, iters)
    torch.testing.assert_close(g_got, g_monai, rtol=1e-12, atol=1e-13)


def test_non_contiguous_input():
    base = _image((2, 6, 9, 2, 7), 5).to(DEV)
    view = lambda t: t[:, ::2, :, 1].transpose(2, 3)  # (2, 3, 7, 9): stepped channels, a picked slice, swapped axes
    assert not view(base).is_contiguous()
    w = torch.randn(view(base).shape, generator=torch.Generator().manual_seed(6)).to(DEV)
    b = base.clone().requires_grad_()
    got = soft_skeleton_triton(view(b), 2)
    (got * w).sum().backward()
    want, g_want = _value_and_grad(soft_skeleton_triton, view(base).contiguous(), w, 2)
    assert torch.equal(got, want) and torch.equal(got, monai_soft_skel(view(base), 2))
    # the gradient reaches the base tensor's strided positions, and only those
    assert torch.equal(view(b.grad), g_want)
    assert b.grad[:, 1::2].abs().sum() == 0 and b.grad[:, :, :, 0].abs().sum() == 0


def test_gradcheck():
    # the full Jacobian on a tiny 2D image; a random projection (fast mode) on larger 2D and 3D ones, with ties
    # excluded (random values): the interpreter is slow, and the full Jacobians of these sizes are covered by the
    # C++ op's gradcheck (tests/test_soft_skeleton.py) and the bitwise equality with it above
    x = _image((1, 1, 2, 3), 7, dtype=torch.float64).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_skeleton_triton(t, 1) * 2, (x,))
    x = _image((1, 2, 5, 4), 8, dtype=torch.float64).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_skeleton_triton(t, 2) * 2, (x,), fast_mode=True)
    x = _image((1, 2, 5, 4, 3), 8, dtype=torch.float64).to(DEV).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_skeleton_triton(t, 3) * 2, (x,), fast_mode=True)


def test_non_finite_values_are_monais():
    x = _image((1, 2, 7, 6, 5), 9).to(DEV)
    x[0, 0, 3, 2, 1] = float("nan")
    x[0, 0, 0, 0, 0] = float("nan")
    x[0, 1, 1, 1, 1] = float("inf")
    x[0, 1, 5, 4, 3] = -float("inf")
    for iters in (0, 2):
        got = soft_skeleton_triton(x, iters)
        want = monai_soft_skel(x, iters)
        assert torch.equal(got.isnan(), want.isnan()) and got.isnan().any()
        torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)


def test_forward_keeps_only_its_input():
    x = torch.rand(1, 2, 5, 4, device=DEV, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s = soft_skeleton_triton(x, 10)
    assert len(saved) == 1 and saved[0] is x  # MONAI's soft_skel saves dozens per iteration


def test_custom_ops_opcheck():
    from fastloss.ops.triton_soft_skeleton import _backward_op, _forward_op

    for shape in [(1, 2, 3, 4)]:  # the registration is the same for every shape; the interpreter is slow
        x = torch.rand(shape, dtype=torch.float64, device=DEV, requires_grad=True)
        torch.library.opcheck(_forward_op, (x, 1))
        torch.library.opcheck(_backward_op, (x.detach(), torch.randn(shape, dtype=torch.float64, device=DEV), 1))


def test_compile_fullgraph_traces_through(triton_backend):
    torch._dynamo.reset()
    x = _image((1, 2, 5, 4), 11).to(DEV)

    def f(t):
        return soft_skeleton(torch.sigmoid(t), 1).square().sum()

    from torch._dynamo.backends.registry import lookup_backend

    targets = []

    def record(gm, example_inputs):  # the traced graph's calls, then aot_eager (fake kernels, registered autograd)
        targets.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return lookup_backend("aot_eager")(gm, example_inputs)

    compiled = torch.compile(f, fullgraph=True, backend=record)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    got, want = compiled(a), f(b)
    got.backward()
    want.backward()
    assert "fastloss.triton_soft_skeleton.default" in targets, targets
    assert torch.equal(got, want) and torch.equal(a.grad, b.grad)
    torch._dynamo.reset()


def test_bad_input(monkeypatch):
    from fastloss.ops.triton_soft_skeleton import _backward_op, _forward_op

    x = torch.rand(1, 1, 4, 3, device=DEV)
    with pytest.raises(ValueError, match="float32/float64"):
        _forward_op(x.half(), 1)
    with pytest.raises(ValueError, match="float32/float64"):
        _forward_op(x[0], 1)
    with pytest.raises(ValueError, match="non-empty"):
        _forward_op(x[:, :, :0], 1)
    with pytest.raises(ValueError, match="iters must be >= 0"):
        _forward_op(x, -1)
    with pytest.raises(ValueError, match="input's shape"):
        _backward_op(x, torch.rand(1, 1, 4, 2, device=DEV), 1)
    if INTERPRET:
        monkeypatch.delenv("TRITON_INTERPRET")
        with pytest.raises(ValueError, match="TRITON_INTERPRET=1"):
            _forward_op(x, 1)
        assert not triton_soft_skeleton.supports(x)


def test_dispatch(monkeypatch):
    calls = []
    real = triton_soft_skeleton.soft_skeleton_triton

    def spy(x, iters):
        calls.append(x.shape)
        return real(x, iters)

    monkeypatch.setattr(triton_soft_skeleton, "soft_skeleton_triton", spy)
    x = _image((1, 2, 5, 4), 12).to(DEV)
    monkeypatch.setenv("FASTLOSS_BACKEND", "triton")
    got = soft_skeleton(x, 2)
    assert calls == [x.shape] and torch.equal(got, monai_soft_skel(x, 2))
    monkeypatch.setenv("FASTLOSS_BACKEND", "torch")
    assert torch.equal(soft_skeleton(x, 2), got) and len(calls) == 1
    if DEV == "cpu":  # auto: CPU tensors take the compiled op (or torch), never Triton
        monkeypatch.setenv("FASTLOSS_BACKEND", "auto")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            soft_skeleton(x, 2)
        assert len(calls) == 1


# ----------------------------------------------------------------------------------------------- clDice
def _loss_data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    oh = torch.nn.functional.one_hot(y[:, 0], shape[1]).movedim(-1, 1).to(torch.float64)
    return x.to(DEV), y.to(DEV), oh.to(DEV)


@pytest.mark.parametrize("cls,shape,kw", [
    ("SoftclDiceLoss", (2, 3, 9, 8), dict(softmax=True, iter_=3)),
    ("SoftclDiceLoss", (1, 2, 6, 5, 4), dict(sigmoid=True, include_background=False, iter_=2)),
    ("SoftDiceclDiceLoss", (2, 2, 7, 6, 5), dict(softmax=True, iter_=2, alpha=0.3)),
])
def test_cldice_through_triton_matches_monai(triton_backend, monkeypatch, cls, shape, kw):
    calls = []
    real = triton_soft_skeleton.soft_skeleton_triton
    monkeypatch.setattr(triton_soft_skeleton, "soft_skeleton_triton", lambda x, i: calls.append(1) or real(x, i))
    x, y, oh = _loss_data(shape, seed=3)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = getattr(fastloss.losses.cldice, cls)(to_onehot_y=True, **kw)
    theirs = getattr(monai_losses, cls)(**kw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(a, y)
        want = theirs(b, oh)
    assert len(calls) == 2  # the prediction's and the target's skeletons
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    (got * 2).backward()
    (want * 2).backward()
    assert a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- GPU
@pytest.mark.cuda
@pytest.mark.parametrize("shape,iters", [((2, 3, 64, 57), 10), ((2, 3, 33, 40, 29), 10), ((1, 2, 17, 1, 9), 3)])
def test_cuda_matches_compiled_cpu(shape, iters):
    """Compiled Triton on a GPU: float32 values and gradients equal the C++ op's bits (fp fusion off, the same
    order of every sum), float64 equal MONAI's autograd, and two runs give the same bits (no atomics)."""
    for ties in (False, True):
        for dtype in (torch.float32, torch.float64):
            x = _image(shape, 20, ties, dtype)
            w = torch.randn(shape, generator=torch.Generator().manual_seed(21), dtype=dtype)
            got, g_got = _value_and_grad(soft_skeleton_triton, x.cuda(), w.cuda(), iters)
            again, g_again = _value_and_grad(soft_skeleton_triton, x.cuda(), w.cuda(), iters)
            assert torch.equal(got, again) and torch.equal(g_got, g_again)
            assert torch.equal(got.cpu(), monai_soft_skel(x, iters))
            if HAS_CPP:
                want, g_want = _value_and_grad(cpu_soft_skeleton.soft_skeleton_cpu, x, w, iters)
                assert torch.equal(got.cpu(), want) and torch.equal(g_got.cpu(), g_want)
            if dtype == torch.float64:
                _, g_monai = _value_and_grad(monai_soft_skel, x.cuda(), w.cuda(), iters)
                torch.testing.assert_close(g_got, g_monai, rtol=1e-12, atol=1e-13)
    x = _image((1, 2, 6, 5, 4), 22, dtype=torch.float64).cuda().requires_grad_()
    assert torch.autograd.gradcheck(lambda t: soft_skeleton_triton(t, 3) * 2, (x,))


@pytest.mark.cuda
def test_cuda_backward_memory():
    """The forward keeps its input only; the backward's peak is its documented work: checkpoints
    ``2(⌈(K+1)/c⌉ − 1)`` images, eight work images, 3 bytes of codes per voxel, and the gradient it returns."""
    shape, iters = (2, 3, 64, 64, 64), 10
    x = torch.rand(shape, device="cuda", requires_grad=True)
    w = torch.randn(shape, device="cuda")
    image = x.numel() * 4
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    s = soft_skeleton_triton(x, iters)
    torch.cuda.synchronize()
    assert torch.cuda.max_memory_allocated() - base <= 3 * image + (1 << 20)  # output + two work images
    loss = (s * w).sum()
    del s
    loss.backward()
    torch.cuda.synchronize()
    c = 4  # ceil(sqrt(11))
    checkpoints = 2 * ((iters + 1 - 1) // c)
    bound = (checkpoints + 8 + 1 + 1) * image + 3 * x.numel() + (8 << 20)  # + the gradient and the incoming grad
    assert torch.cuda.max_memory_allocated() - base <= bound
