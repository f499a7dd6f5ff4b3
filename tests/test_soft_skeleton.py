"""The soft skeleton op (compiled C++ and torch backends) against MONAI's ``soft_skel`` (values bitwise, gradients
of autograd through MONAI's pooling ops, ties included), gradcheck, thread-count independence, what the forward
keeps for the backward, opcheck; then SoftclDiceLoss / SoftDiceclDiceLoss against MONAI 1.6.1 in float64,
gradcheck, bad input and torch.compile(fullgraph=True)."""

import warnings

import pytest
import torch

from _compiled import assert_compiled_step_matches_eager

import fastloss
from fastloss.losses.cldice import SoftclDiceLoss, SoftDiceclDiceLoss, soft_cl_dice_loss, soft_dice_cl_dice_loss
from fastloss.ops import cpu_soft_skeleton
from fastloss.ops.soft_skeleton import soft_skel_reference, soft_skeleton, soft_skeleton_torch

monai_losses = pytest.importorskip("monai.losses")
from monai.losses.cldice import soft_skel as monai_soft_skel  # noqa: E402

needs_ext = pytest.mark.skipif(not cpu_soft_skeleton.available(), reason="fastloss._C lacks the soft skeleton")

SHAPES = [(2, 3, 9, 8), (1, 2, 7, 6, 5), (2, 1, 1, 5), (1, 2, 1, 1, 4), (1, 1, 3, 1, 2), (1, 1, 12, 11, 9)]
BACKENDS = ["compiled", "torch"]


def _op(backend):
    if backend == "compiled":
        if not cpu_soft_skeleton.available():
            pytest.skip("fastloss._C lacks the soft skeleton")
        return cpu_soft_skeleton.soft_skeleton_cpu
    return soft_skeleton_torch


def _image(shape, seed, ties=False, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    if ties:  # few distinct values: ties in every window, the tie rules decide the gradient's routing
        return (torch.randint(0, 4, shape, generator=g) / 3).to(dtype)
    return torch.rand(shape, generator=g, dtype=dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("iters", [0, 1, 3, 6])
@pytest.mark.parametrize("ties", [False, True])
def test_soft_skeleton_matches_monai(backend, shape, iters, ties):
    op = _op(backend)
    for dtype in (torch.float64, torch.float32):
        x = _image(shape, 1 + iters, ties, dtype)
        a = x.clone().requires_grad_()
        b = x.clone().requires_grad_()
        got = op(a, iters)
        want = monai_soft_skel(b, iters)
        assert got.dtype == dtype
        assert torch.equal(got, want)  # min/max/relu and separately rounded products: MONAI's bits
        w = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        (got * w).sum().backward()
        (want * w).sum().backward()
        tol = dict(rtol=1e-12, atol=1e-13) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-6)
        torch.testing.assert_close(a.grad, b.grad, **tol)
    assert torch.equal(monai_soft_skel(x, iters), soft_skel_reference(x, iters))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape,iters", [((1, 2, 5, 4, 3), 3), ((2, 2, 6, 5), 4), ((1, 1, 4, 1, 3), 2)])
def test_soft_skeleton_gradcheck(backend, shape, iters):
    op = _op(backend)
    x = _image(shape, 3).requires_grad_()
    assert torch.autograd.gradcheck(lambda t: op(t, iters) * 2, (x,))


@needs_ext
def test_compiled_equals_torch_backend_float32():
    x = torch.softmax(torch.randn(2, 3, 17, 13, 11, generator=torch.Generator().manual_seed(4)), 1)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ga = cpu_soft_skeleton.soft_skeleton_cpu(a, 5)
    gb = soft_skeleton_torch(b, 5)
    assert torch.equal(ga, gb)
    w = torch.randn_like(ga)
    (ga * w).sum().backward()
    (gb * w).sum().backward()
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


@needs_ext
def test_thread_count_independence():
    x = torch.rand(2, 3, 10, 9, 8, generator=torch.Generator().manual_seed(5)).requires_grad_()
    w = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
    n = torch.get_num_threads()
    out = []
    try:
        for t in (1, 2, 3):
            torch.set_num_threads(t)
            x.grad = None
            s = cpu_soft_skeleton.soft_skeleton_cpu(x, 4)
            (s * w).sum().backward()
            out.append((s.detach().clone(), x.grad.clone()))
    finally:
        torch.set_num_threads(n)
    for s, g in out[1:]:
        assert torch.equal(s, out[0][0]) and torch.equal(g, out[0][1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_forward_keeps_only_its_input(backend):
    """No per-iteration tensor is saved for the backward: the input is the only saved tensor (MONAI saves
    dozens per iteration: pooling indices, the eroded and opened images, masks)."""
    op = _op(backend)
    x = torch.rand(1, 2, 8, 7, 6, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        s = op(x, 10)
    assert len(saved) == 1 and saved[0].shape == x.shape
    s.sum().backward()
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        monai_soft_skel(x, 10)
    assert len(saved) > 50


@needs_ext
def test_custom_ops_opcheck():
    from fastloss.ops.cpu_soft_skeleton import _backward_op, _forward_op

    for shape in [(2, 2, 5, 4), (1, 2, 4, 3, 3)]:
        x = torch.rand(shape, dtype=torch.float64, requires_grad=True)
        torch.library.opcheck(_forward_op, (x, 2))
        torch.library.opcheck(_backward_op, (x.detach(), torch.randn(shape, dtype=torch.float64), 2))


def test_soft_skeleton_bad_input():
    x = torch.rand(1, 1, 4, 4)
    with pytest.raises(TypeError, match="iter_ must be an integer"):
        soft_skeleton(x, 2.0)
    with pytest.raises(ValueError, match="non-negative"):
        soft_skeleton(x, -1)
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        soft_skeleton(x[0], 2)
    with pytest.raises(TypeError, match="float"):
        soft_skeleton(x.long(), 2)
    with pytest.raises(ValueError, match="empty"):
        soft_skeleton(x[:, :, :0], 2)
    if cpu_soft_skeleton.available():
        from fastloss.ops.cpu_soft_skeleton import _backward_op

        with pytest.raises(ValueError, match="input's shape"):
            _backward_op(x, torch.rand(1, 1, 4, 3), 2)


def test_half_input_gives_float32():
    x = torch.rand(1, 2, 6, 5)
    got = soft_skeleton(x.half(), 2)
    assert got.dtype == torch.float32
    assert torch.equal(got, monai_soft_skel(x.half().float(), 2))


# ----------------------------------------------------------------------------------------------- clDice
def _data(shape, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    y = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    oh = torch.nn.functional.one_hot(y[:, 0], shape[1]).movedim(-1, 1).to(torch.float64)
    return x, y, oh


def _compare(ours, theirs, x, y_ours, y_theirs, rtol=1e-10, atol=1e-12):
    a = x.clone().requires_grad_(True)
    b = x.clone().requires_grad_(True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = ours(a, y_ours)
        want = theirs(b, y_theirs)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol)
    (got.sum() * 2).backward()
    (want.sum() * 2).backward()
    assert a.grad.abs().sum() > 0
    torch.testing.assert_close(a.grad, b.grad, rtol=rtol, atol=atol)


CL_CASES = [
    dict(softmax=True),
    dict(softmax=True, include_background=False, iter_=5),
    dict(sigmoid=True, reduction="none", iter_=0),
    dict(sigmoid=True, reduction="sum", smooth_nr=0.1, smooth_dr=0.2, smooth=1e-3, iter_=2),
    dict(other_act=lambda t: torch.softmax(t, 1), include_background=False, reduction="none"),
]


@pytest.mark.parametrize("cls", ["SoftclDiceLoss", "SoftDiceclDiceLoss"])
@pytest.mark.parametrize("shape", [(2, 3, 9, 8), (2, 3, 7, 6, 5), (1, 2, 11, 10, 9)])
@pytest.mark.parametrize("kw", CL_CASES)
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cldice_matches_monai(cls, shape, kw, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    x, y, oh = _data(shape, seed=7)
    ours_cls = getattr(fastloss.losses.cldice, cls)
    theirs = getattr(monai_losses, cls)(**kw)
    # MONAI gets the float64 one-hot target (its own one_hot is float32, whose sums it rounds to float32)
    _compare(ours_cls(**kw), theirs, x, oh, oh)
    _compare(ours_cls(to_onehot_y=True, **kw), theirs, x, y, oh)  # integer labels
    _compare(ours_cls(**kw), theirs, x, y[:, 0] if cls == "SoftclDiceLoss" else y, oh)


def test_cldice_alpha_and_single_channel():
    x, y, oh = _data((2, 3, 8, 7), seed=8)
    for alpha in (0.0, 0.3, 1.0):
        _compare(SoftDiceclDiceLoss(alpha=alpha, softmax=True), monai_losses.SoftDiceclDiceLoss(alpha=alpha, softmax=True),
                 x, oh, oh)
    # one channel (sigmoid), a binary target
    x1 = x[:, :1]
    t1 = (y > 0).to(torch.float64)
    _compare(SoftclDiceLoss(sigmoid=True, iter_=4), monai_losses.SoftclDiceLoss(sigmoid=True, iter_=4), x1, t1, t1)
    _compare(SoftclDiceLoss(sigmoid=True, iter_=4), monai_losses.SoftclDiceLoss(sigmoid=True, iter_=4), x1,
             (y > 0).long(), t1)


@pytest.mark.parametrize("cls", [SoftclDiceLoss, SoftDiceclDiceLoss])
def test_cldice_gradcheck(cls):
    x, y, _ = _data((2, 3, 5, 4, 4), seed=9)
    loss = cls(softmax=True, iter_=2)
    assert torch.autograd.gradcheck(lambda a: loss(a, y) * 2, (x.clone().requires_grad_(),))


def test_cldice_bad_arguments_and_inputs():
    with pytest.raises(TypeError, match="iter_ must be an integer"):
        SoftclDiceLoss(iter_=2.5)
    with pytest.raises(ValueError, match="non-negative"):
        SoftclDiceLoss(iter_=-1)
    with pytest.raises(ValueError, match="smooth must be a positive"):
        SoftclDiceLoss(smooth=0.0)
    with pytest.raises(ValueError, match="incompatible|Incompatible"):
        SoftclDiceLoss(sigmoid=True, softmax=True)
    with pytest.raises(TypeError, match="callable"):
        SoftclDiceLoss(other_act="relu")
    with pytest.raises(ValueError, match="reduction"):
        SoftclDiceLoss(reduction="avg")
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        SoftDiceclDiceLoss(alpha=1.5)
    x, y, oh = _data((2, 3, 6, 5), seed=10)
    with pytest.raises(ValueError, match="2 or 3|H, W"):
        SoftclDiceLoss()(x[..., 0], y[..., 0])
    with pytest.raises(AssertionError, match="ground truth has different shape"):
        SoftclDiceLoss()(x, oh[:, :2])
    with pytest.raises(ValueError, match="ground truth has different shape"):
        SoftclDiceLoss()(x, oh[..., :4])
    with pytest.raises(TypeError, match="float dtype"):
        SoftclDiceLoss()(x, y.double())  # float labels without to_onehot_y
    with pytest.raises(ValueError, match="number of dimensions"):
        SoftDiceclDiceLoss()(x, y[:, 0, :, 0])
    with pytest.raises(ValueError, match="neither 1 nor the same"):
        SoftDiceclDiceLoss()(x, oh[:, :2])


def test_functional_forms_and_exports():
    x, y, oh = _data((2, 3, 6, 5), seed=11)
    torch.testing.assert_close(soft_cl_dice_loss(x, y, softmax=True), SoftclDiceLoss(softmax=True)(x, y))
    torch.testing.assert_close(soft_dice_cl_dice_loss(x, y, softmax=True, alpha=0.2),
                               SoftDiceclDiceLoss(softmax=True, alpha=0.2)(x, y))
    for name in ("SoftclDiceLoss", "SoftDiceclDiceLoss"):
        assert getattr(fastloss, name) is getattr(fastloss.losses, name)


@pytest.mark.parametrize("cls", [SoftclDiceLoss, SoftDiceclDiceLoss])
@pytest.mark.parametrize("backend", ["auto", "torch"])
def test_cldice_compile_fullgraph(cls, backend, monkeypatch):
    monkeypatch.setenv("FASTLOSS_BACKEND", backend)
    assert_compiled_step_matches_eager(cls(softmax=True, iter_=2))


def test_non_finite_input_gives_monai_result():
    """NaN and inf go to the torch backend (the compiled kernel's compare-selects assume finite values)."""
    x = torch.rand(1, 2, 6, 5, 4)
    x[0, 0, 2, 2, 2] = float("nan")
    x[0, 1, 1, 3, 0] = float("inf")
    torch.testing.assert_close(soft_skeleton(x, 3), monai_soft_skel(x, 3), equal_nan=True)
    if cpu_soft_skeleton.available():
        assert not cpu_soft_skeleton.supports(x) and cpu_soft_skeleton.supports(torch.rand(1, 2, 6, 5, 4))
