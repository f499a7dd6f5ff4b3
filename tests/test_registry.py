"""The paper's configurations by name: every entry builds and trains; lookup rules; a few configurations
checked against formulas written here."""

import pytest
import torch

from fastloss.registry import PAPER_LOSSES, get_loss, paper_loss_names

# get_loss("DiceBD") warns at construction that it is plain Dice until its schedule moves (tested in
# tests/test_rough_edges.py); here it is built on purpose.
pytestmark = pytest.mark.filterwarnings(r"ignore:get_loss\('DiceBD'\) is plain Dice:UserWarning")

TABLE2 = ["Asym", "CE", "Dice", "DiceBD", "DiceCE", "DiceFocal", "DiceHD", "DiceTopK", "ELL", "Focal",
          "FocalTversky", "GDice", "IoU", "Lovász", "pCE", "pGDice", "SS", "TopK", "Tversky", "WCE"]
TABLE3 = ["TopK-10%", "TopK-30%", "TopK-50%", "TopK-70%", "TopK-90%", "TopK-Threshold (0.1)",
          "TopK-Threshold (0.3)", "TopK-Threshold (0.5)", "TopK-Threshold (0.7)", "TopK-Threshold (0.9)"]
TABLE4 = ["Dice (Batch, no square)", "BatchSquareDice", "SampleDice (no square)", "SampleSquareDice"]
EQUATIONS = ["BD", "HD"]  # Eqs. (20), (21) on their own


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 3, 6, 5, 4, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (2, 1, 6, 5, 4), generator=g)
    return x, y


def test_tables_are_all_there():
    assert set(TABLE2 + TABLE3 + TABLE4 + EQUATIONS) == set(PAPER_LOSSES)
    assert paper_loss_names()[:20] == TABLE2


@pytest.mark.parametrize("name", TABLE2 + TABLE3 + TABLE4 + EQUATIONS)
def test_every_name_builds_and_trains(name):
    x, y = _batch(hash(name) % 97)
    x.requires_grad_()
    loss = get_loss(name)
    assert isinstance(loss, torch.nn.Module)
    v = loss(x, y)
    assert v.ndim == 0 and v.dtype == torch.float64 and torch.isfinite(v)
    (2 * v).backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


@pytest.mark.parametrize("alias,canonical", [
    ("Lovasz", "Lovász"), ("lovász", "Lovász"), ("LOVASZ", "Lovász"), ("dicetopk", "DiceTopK"),
    ("topk 30%", "TopK-30%"), ("TopK-Threshold(0.5)", "TopK-Threshold (0.5)"),
    ("BatchDice", "Dice (Batch, no square)"), ("SampleDice", "SampleDice (no square)"), ("pgdice", "pGDice"),
])
def test_aliases(alias, canonical):
    a, b = get_loss(alias), get_loss(canonical)
    assert type(a) is type(b)
    x, y = _batch(1)
    torch.testing.assert_close(a(x, y), b(x, y))


def test_unknown_name_and_overrides():
    with pytest.raises(ValueError, match="DiceTopK"):
        get_loss("DiceTopKK")
    with pytest.raises(TypeError):
        get_loss(3)
    with pytest.raises(TypeError):
        get_loss("Dice", no_such_argument=1)
    assert get_loss("DiceCE", lambda_ce=0.5).lambda_ce == 0.5
    assert get_loss("TopK-30%").k == 30.0 and get_loss("TopK-Threshold (0.7)").t == 0.7


def _dice(p, g, batch, squared):
    p, g = p[:, 1:], g[:, 1:]
    dims = [0, 2, 3, 4] if batch else [2, 3, 4]
    den = (p ** 2).sum(dims) + (g ** 2).sum(dims) if squared else p.sum(dims) + g.sum(dims)
    return (1 - (2 * (p * g).sum(dims) + 1e-5) / (den + 1e-5)).mean()


@pytest.mark.parametrize("name,batch,squared", [
    ("Dice", True, False), ("BatchSquareDice", True, True), ("SampleDice (no square)", False, False),
    ("SampleSquareDice", False, True),
])
def test_table4_dice_variants(name, batch, squared):
    x, y = _batch(2)
    p = torch.softmax(x, 1)
    g = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).double()
    torch.testing.assert_close(get_loss(name)(x, y), _dice(p, g, batch, squared), rtol=1e-10, atol=1e-10)


def test_paper_tversky_and_topk_configurations():
    x, y = _batch(3)
    p = torch.softmax(x, 1)[:, 1:]
    g = torch.nn.functional.one_hot(y[:, 0], 3).movedim(-1, 1).double()[:, 1:]
    dims = [0, 2, 3, 4]
    tp, fp, fn = (p * g).sum(dims), (p * (1 - g)).sum(dims), ((1 - p) * g).sum(dims)
    tversky = 1 - (tp + 1e-5) / (tp + 0.3 * fp + 0.7 * fn + 1e-5)
    torch.testing.assert_close(get_loss("Tversky")(x, y), tversky.mean(), rtol=1e-10, atol=1e-10)
    ce = -torch.log_softmax(x, 1).gather(1, y).flatten()
    top = torch.sort(ce, descending=True).values[: int(ce.numel() * 0.1)].mean()
    torch.testing.assert_close(get_loss("TopK")(x, y), top, rtol=1e-10, atol=1e-10)


def test_dicebd_schedule_exposed():
    loss = get_loss("DiceBD")
    assert loss.alpha == 1.0
    loss.step_epoch()
    assert loss.alpha == pytest.approx(0.99)


@pytest.mark.parametrize("class_name,canonical", [
    ("DiceCELoss", "DiceCE"), ("diceceloss", "DiceCE"), ("GeneralizedDiceLoss", "GDice"),
    ("FocalTverskyLoss", "FocalTversky"), ("TopKLoss", "TopK"), ("DiceLoss", "Dice"),
    ("LovaszSoftmaxLoss", "Lovász"), ("HausdorffDTLoss", "HD"), ("WeightedCrossEntropyLoss", "WCE"),
])
def test_class_names_give_the_paper_configuration(class_name, canonical):
    a, b = get_loss(class_name), get_loss(canonical)
    assert type(a) is type(b) and type(a).__name__.casefold() == class_name.casefold()
    assert repr(a) == repr(b)  # the same configuration, not the class's own defaults
    x, y = _batch(4)
    torch.testing.assert_close(a(x, y), b(x, y))


def test_every_loss_class_of_the_registry_is_accepted_by_name():
    for cls, _ in PAPER_LOSSES.values():
        assert type(get_loss(cls.__name__)) is cls


def test_help_lists_every_name_and_the_schedules():
    doc = get_loss.__doc__
    for name in PAPER_LOSSES:
        assert f"``{name}``" in doc, name
    for cls, _ in PAPER_LOSSES.values():
        assert cls.__name__ in doc
    assert "DiceBoundaryLoss" in doc and "DiceHausdorffDTLoss" in doc and "epoch" in doc
    assert "class_weights" in doc
    with pytest.raises(ValueError, match="class name"):
        get_loss("NoSuchLoss")
