"""Non-finite logits: the documented behaviour (README, "Non-finite input") for every paper loss on every
backend (``torch``, ``triton`` under the interpreter, and whatever ``auto`` serves CPU tensors with).

- A NaN of either sign in the logits of a counted voxel gives a NaN loss, never a finite one.
- A +inf logit in a counted voxel gives a NaN loss (the softmax is inf/inf there, as ``torch.softmax``).
- A −inf logit is the limit p_c = 0: the losses give the same finite value as a logit of −1e4 (as
  ``torch.nn.functional.cross_entropy`` does), on every backend; with a log term, −inf on the voxel's
  label gives +inf.
- A NaN in an ignored voxel gives either the loss of the same batch with a finite logit there, or NaN.
"""

import os

import pytest
import torch

from fastloss import PAPER_LOSSES, get_loss

BACKENDS = ["torch", "triton", "auto"]
NAMES = list(PAPER_LOSSES)
# losses with a −log p (CE, focal, ELL, pCE, TopK) term: −inf on the label makes it +inf
LOG_TERM = {"CE", "WCE", "pCE", "Focal", "DiceCE", "DiceFocal", "DiceTopK", "ELL"} | {
    n for n in NAMES if n.startswith("TopK")
}

B, C, SPATIAL = 2, 3, (4, 5)
VOXEL = (0, 0, 0)  # batch item, row, column of the poisoned voxel; its label is 1
NEG_NAN = torch.tensor(float("nan")).neg()


def _inputs():
    gen = torch.Generator().manual_seed(21)
    x = torch.randn((B, C) + SPATIAL, generator=gen)
    y = torch.randint(0, C, (B, 1) + SPATIAL, generator=gen)
    y[VOXEL[0], 0, VOXEL[1], VOXEL[2]] = 1
    return x, y


def _poison(x, cls, value):
    x = x.clone()
    x[VOXEL[0], cls, VOXEL[1], VOXEL[2]] = value
    return x


def _loss(name, **kw):
    loss = get_loss(name, **kw)
    if name == "DiceBD":
        loss.set_epoch(50)  # α = 0.5: the boundary part runs too (α = 1 is Dice alone)
    return loss


# Under the interpreter every call costs ~0.1 s: the Triton path skips the entries that only repeat
# another one's code with other numbers (TopK-10 % is TopK; the other percentages and thresholds run
# the same kernels as TopK-50 % and TopK-Threshold (0.5); "Dice (Batch, no square)" is Dice).
TRITON_REPEATS = {"TopK-10%", "TopK-30%", "TopK-70%", "TopK-90%", "TopK-Threshold (0.1)", "TopK-Threshold (0.3)",
                  "TopK-Threshold (0.7)", "TopK-Threshold (0.9)", "Dice (Batch, no square)"}
CASES = [(b, n) for b in BACKENDS for n in NAMES if not (b == "triton" and n in TRITON_REPEATS)]


@pytest.fixture
def backend(request, monkeypatch):
    if request.param == "triton":
        pytest.importorskip("triton")
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
            pytest.skip("Triton on CPU tensors needs TRITON_INTERPRET=1")
    monkeypatch.setenv("FASTLOSS_BACKEND", request.param)
    return request.param


@pytest.mark.parametrize("backend, name", CASES, indirect=["backend"])
def test_nan_or_pos_inf_in_a_counted_voxel_gives_nan(name, backend):
    x, y = _inputs()
    for cls, value in ((1, NEG_NAN), (2, float("nan")), (2, float("inf")), (1, float("inf"))):
        got = _loss(name)(_poison(x, cls, value), y)
        assert torch.isnan(got), f"{name} on {backend}: logit {value} on class {cls} gave {got.item()}"


@pytest.mark.parametrize("backend, name", CASES, indirect=["backend"])
def test_neg_inf_is_the_limit(name, backend, monkeypatch):
    x, y = _inputs()
    for cls in (1, 2):  # 1: the voxel's label, 2: another class
        got = _loss(name)(_poison(x, cls, float("-inf")), y)
        with monkeypatch.context() as m:  # the limit p_c = 0, from the plain torch backend
            m.setenv("FASTLOSS_BACKEND", "torch")
            limit = _loss(name)(_poison(x, cls, -1e4), y)
        assert torch.isfinite(limit)
        if name in LOG_TERM and cls == 1:
            assert got.item() == float("inf"), f"{name} on {backend}: −inf on the label gave {got.item()}"
        else:  # −inf on another class: −g·log p is 0 there (g = 0), never 0·inf = NaN
            assert torch.isfinite(got), f"{name} on {backend}: −inf on class {cls} gave {got.item()}"
            torch.testing.assert_close(got, limit, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["torch", "auto"], indirect=True)
def test_neg_inf_on_another_class_is_torchs_cross_entropy_limit(backend):
    # one −inf logit on a class that is not the voxel's label: the finite limit torch's cross entropy gives,
    # and a finite gradient (0 for the −inf logit itself: its softmax is 0)
    from fastloss import CrossEntropyLoss, DiceCELoss

    x, y = _inputs()
    bad = _poison(x, 2, float("-inf")).requires_grad_()
    want = torch.nn.functional.cross_entropy(_poison(x, 2, float("-inf")), y[:, 0])
    assert torch.isfinite(want)
    got = CrossEntropyLoss()(bad, y)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    got.backward()
    # (the compiled kernels' exp flushes below e^−87 to ~1e−38·e^r instead of 0: no sum can see it)
    assert torch.isfinite(bad.grad).all() and bad.grad[VOXEL[0], 2, VOXEL[1], VOXEL[2]].abs() <= 1e-30
    dice_ce = DiceCELoss(to_onehot_y=True, softmax=True)(_poison(x, 2, float("-inf")), y)
    assert torch.isfinite(dice_ce)


@pytest.mark.parametrize("backend, name", CASES, indirect=["backend"])
def test_nan_in_an_ignored_voxel_is_nan_or_ignored(name, backend):
    x, y = _inputs()
    y[VOXEL[0], 0, VOXEL[1], VOXEL[2]] = 255
    clean = _loss(name, ignore_index=255)(x, y)
    got = _loss(name, ignore_index=255)(_poison(x, 1, float("nan")), y)
    assert torch.isfinite(clean)
    if not torch.isnan(got):
        torch.testing.assert_close(got, clean, rtol=1e-6, atol=1e-7)
