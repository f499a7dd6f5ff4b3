"""LovaszSoftmaxLoss (Eqs. 11-13) against a naive implementation written from the equations."""

import pytest
import torch
import torch.nn.functional as F

from fastloss.losses.lovasz import LovaszSoftmaxLoss, lovasz_softmax_loss
from fastloss.ops.lovasz import lovasz_extension, lovasz_grad
from _scaling import assert_upstream_gradient_scales, skip_unless_backend_runs

DT = torch.float64


def _naive_lovasz_class(err, fg):
    """Eq. 12-13 for one class: err (P,) tensor with grad, fg (P,) 0/1 list. Explicit loop over sorted errors."""
    P = err.numel()
    order = sorted(range(P), key=lambda i: -float(err[i].detach()))
    G = sum(fg)

    def jaccard_loss(chosen):  # Δ(A): A = set of predicted errors
        if not chosen:
            return 0.0
        inter = G - sum(fg[i] for i in chosen)  # foreground voxels not in error
        union = G + sum(1 - fg[i] for i in chosen)  # foreground plus background errors
        return 1.0 - inter / union

    loss = err.sum() * 0.0
    prev = 0.0
    for i in range(1, P + 1):
        cur = jaccard_loss(order[:i])
        loss = loss + err[order[i - 1]] * (cur - prev)
        prev = cur
    return loss


def _naive(x, labels, classes="present", per_image=False, ignore=None):
    """Berman et al.'s lovasz_softmax, naive. x (B, C, *sp) logits, labels (B, *sp)."""
    B, C = x.shape[:2]
    p = torch.softmax(x, 1).reshape(B, C, -1)
    lab = labels.reshape(B, -1)
    cls = list(range(C)) if classes in ("present", "all") else list(classes)

    def flat_loss(pp, ll):  # pp (C, P), ll (P,)
        if ignore is not None:
            keep = [i for i in range(ll.numel()) if int(ll[i]) != ignore]
            pp, ll = pp[:, keep], ll[keep]
        losses = []
        for c in cls:
            fg = [1.0 if int(v) == c else 0.0 for v in ll]
            if classes == "present" and sum(fg) == 0:
                continue
            err = torch.stack([(fg[i] - pp[c, i]).abs() for i in range(ll.numel())]) if ll.numel() else pp[c, :0]
            losses.append(_naive_lovasz_class(err, fg) if ll.numel() else pp.sum() * 0)
        return sum(losses) / len(losses) if losses else pp.sum() * 0.0

    if per_image:
        return sum(flat_loss(p[b], lab[b]) for b in range(B)) / B
    return flat_loss(p.transpose(0, 1).reshape(C, -1), lab.reshape(-1))


@pytest.mark.parametrize("shape", [(2, 3, 7), (2, 3, 4, 5), (1, 4, 3, 3, 3)])
@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("classes", ["present", "all", [2, 0]])
def test_matches_naive(shape, per_image, classes):
    torch.manual_seed(hash((shape, per_image, str(classes))) % 2**31)
    B, C = shape[:2]
    x = (torch.randn(shape, dtype=DT) * 2).requires_grad_()
    y = torch.randint(0, C - 1, (B,) + shape[2:])  # class C-1 absent: 'present' and 'all' differ
    out = LovaszSoftmaxLoss(classes=classes, per_image=per_image)(x, y.unsqueeze(1))
    x2 = x.detach().clone().requires_grad_()
    ref = _naive(x2, y, classes=classes, per_image=per_image)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("per_image", [False, True])
def test_ignore_index_removes_voxels(per_image):
    torch.manual_seed(1)
    x = (torch.randn(2, 3, 5, 4, dtype=DT) * 2).requires_grad_()
    y = torch.randint(0, 3, (2, 5, 4))
    y[0, :2] = 255
    out = LovaszSoftmaxLoss(ignore_index=255, per_image=per_image)(x, y)
    x2 = x.detach().clone().requires_grad_()
    ref = _naive(x2, y, per_image=per_image, ignore=255)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
    out.backward()
    ref.backward()
    torch.testing.assert_close(x.grad, x2.grad, rtol=1e-10, atol=1e-12)
    assert x.grad[0, :, :2].abs().max() == 0  # ignored voxels get no gradient


def test_onehot_target_equals_labels():
    torch.manual_seed(2)
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    y = torch.randint(0, 3, (2, 1, 6, 6))
    oh = F.one_hot(y[:, 0], 3).movedim(-1, 1).to(DT)
    for kw in ({}, {"per_image": True}, {"classes": "all"}):
        torch.testing.assert_close(LovaszSoftmaxLoss(**kw)(x, oh), LovaszSoftmaxLoss(**kw)(x, y), rtol=0, atol=1e-14)


def test_reductions_and_functional():
    torch.manual_seed(3)
    x = torch.randn(2, 3, 6, 6, dtype=DT)
    y = torch.randint(0, 2, (2, 1, 6, 6))  # class 2 absent
    per = LovaszSoftmaxLoss(reduction="none")(x, y)
    assert per.shape == (3,) and per[2] == 0
    torch.testing.assert_close(LovaszSoftmaxLoss(reduction="sum")(x, y), per.sum())
    torch.testing.assert_close(LovaszSoftmaxLoss()(x, y), per[:2].mean())
    per_img = LovaszSoftmaxLoss(reduction="none", per_image=True)(x, y)
    assert per_img.shape == (2, 3)
    torch.testing.assert_close(lovasz_softmax_loss(x, y, classes="all"), LovaszSoftmaxLoss(classes="all")(x, y))


def test_perfect_prediction_is_zero_and_errors_bounded():
    y = torch.randint(0, 3, (1, 1, 5, 5))
    x = F.one_hot(y[:, 0], 3).movedim(-1, 1).to(DT) * 60.0
    assert LovaszSoftmaxLoss()(x, y).abs() < 1e-12
    bad = -x
    v = LovaszSoftmaxLoss()(bad, y)
    # every voxel wrong: logits −60 on the label, 0 elsewhere. For a present class c with G voxels, the
    # errors are 1 − p_c ≈ 1 − e^-60/2 on its own voxels (sorted first) and p_c ≈ 1/2 elsewhere. The
    # Jaccard loss of the first i sorted errors is i/G while i <= G (no false positive yet), then stays 1:
    # the Lovász weights are 1/G on the class's voxels and 0 after, so the loss is 1 − e^-60/2 = 1.
    torch.testing.assert_close(v, torch.tensor(1.0, dtype=DT), rtol=0, atol=1e-12)


def test_absent_class_and_all_ignored_finite():
    x = torch.randn(1, 3, 4, 4, dtype=DT, requires_grad=True)
    y = torch.zeros(1, 1, 4, 4, dtype=torch.long)
    for cl in ("present", "all"):
        v = LovaszSoftmaxLoss(classes=cl)(x, y)
        v.backward()
        assert torch.isfinite(v) and torch.isfinite(x.grad).all()
    y_ign = torch.full((1, 1, 4, 4), 255)
    v = LovaszSoftmaxLoss(ignore_index=255)(x, y_ign)
    assert v == 0


def test_op_lovasz_grad_and_extension():
    # d_i for fg sorted [1, 0, 1]: G = 2, J = [1 - 1/2, 1 - 1/3, 1 - 0/3] = [0.5, 2/3, 1].
    d = lovasz_grad(torch.tensor([[1.0, 0.0, 1.0]], dtype=DT))
    torch.testing.assert_close(d, torch.tensor([[0.5, 1 / 6, 1 / 3]], dtype=DT))
    e = torch.tensor([[0.2, 0.9, 0.5]], dtype=DT)
    fg = torch.tensor([[1.0, 0.0, 1.0]], dtype=DT)
    # sorted errors 0.9 (bg), 0.5 (fg), 0.2 (fg): J = [1 - 2/3, 1 - 1/3, 1] → d = [1/3, 1/3, 1/3]
    torch.testing.assert_close(lovasz_extension(e, fg), torch.tensor([(0.9 + 0.5 + 0.2) / 3], dtype=DT))


def test_gradcheck():
    torch.manual_seed(4)
    x = torch.randn(2, 3, 3, 3, dtype=DT, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 3, 3))
    assert torch.autograd.gradcheck(lambda t: LovaszSoftmaxLoss()(t, y), (x,))
    assert torch.autograd.gradcheck(lambda t: LovaszSoftmaxLoss(per_image=True, ignore_index=2)(t, y), (x,))


@pytest.mark.parametrize("backend", ["torch", "triton", "auto"])
@pytest.mark.parametrize("kw", [{}, dict(per_image=True, ignore_index=2)], ids=["batch", "per_image"])
def test_loss_times_two(backend, kw, monkeypatch):
    """On the paths with a custom backward (triton, auto) in float32: 2·L doubles the gradient exactly
    and 0.37·L gives 0.37 times the float64 torch gradient (a backward ignoring its upstream fails)."""
    skip_unless_backend_runs(backend)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, 4, 4, dtype=DT, generator=gen)
    y = torch.randint(0, 3, (2, 1, 4, 4), generator=gen)
    dt = DT if backend == "torch" else torch.float32
    assert_upstream_gradient_scales(LovaszSoftmaxLoss(**kw), x, y, backend, monkeypatch, dtype=dt, rtol=1e-5)


def test_float32_and_half_inputs():
    x = torch.randn(1, 3, 4, 4)
    y = torch.randint(0, 3, (1, 1, 4, 4))
    assert LovaszSoftmaxLoss()(x.half(), y).dtype == torch.float32
    torch.testing.assert_close(LovaszSoftmaxLoss()(x, y).double(), LovaszSoftmaxLoss()(x.double(), y), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"classes": "some"}, ValueError),
        ({"classes": []}, ValueError),
        ({"classes": [0, 0]}, ValueError),
        ({"classes": [0.5]}, TypeError),
        ({"classes": [-1]}, ValueError),
        ({"per_image": "yes"}, TypeError),
        ({"reduction": "avg"}, ValueError),
        ({"ignore_index": 1.0}, TypeError),
    ],
)
def test_bad_constructor_args(kwargs, exc):
    with pytest.raises(exc):
        LovaszSoftmaxLoss(**kwargs)


def test_bad_forward_inputs():
    x = torch.randn(1, 3, 4, 4)
    with pytest.raises(ValueError, match="classes"):
        LovaszSoftmaxLoss(classes=[3])(x, torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError, match="2 channels"):
        LovaszSoftmaxLoss()(torch.randn(1, 1, 4, 4), torch.zeros(1, 1, 4, 4, dtype=torch.long))
    with pytest.raises(ValueError):
        LovaszSoftmaxLoss()(x, torch.full((1, 1, 4, 4), 3))  # label >= C
    with pytest.raises(TypeError):
        LovaszSoftmaxLoss()(x, torch.zeros(1, 1, 4, 4))  # float labels
    with pytest.raises(ValueError):
        LovaszSoftmaxLoss()(x, torch.zeros(1, 1, 4, 5, dtype=torch.long))  # shape mismatch
    with pytest.raises(ValueError):
        LovaszSoftmaxLoss()(torch.randn(3, 4), torch.zeros(3, dtype=torch.long))  # ndim


@pytest.mark.parametrize("per_image", [False, True])
@pytest.mark.parametrize("ignore", [None, 2])
def test_triton_backend_matches_torch_backend(monkeypatch, per_image, ignore):
    """float32 Lovász through the fused Triton post-sort kernels equals the torch path."""
    pytest.importorskip("triton")
    g = torch.Generator().manual_seed(11)
    x = torch.randn(2, 3, 9, 7, generator=g, requires_grad=True)
    y = torch.randint(0, 3, (2, 1, 9, 7), generator=g)
    loss = LovaszSoftmaxLoss(per_image=per_image, ignore_index=ignore)
    out = {}
    for be in ("torch", "triton"):
        monkeypatch.setenv("FASTLOSS_BACKEND", be)
        v = loss(x, y)
        (gx,) = torch.autograd.grad(v, x)
        out[be] = (v.detach(), gx)
    torch.testing.assert_close(out["triton"][0], out["torch"][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["triton"][1], out["torch"][1], rtol=1e-4, atol=1e-6)
