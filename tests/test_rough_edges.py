"""Small things a new user hits (issue 12): the label-range error names ignore_index for the usual
"unlabelled" codes, and TopKLoss's repr shows what selects its voxels."""

import pytest
import torch

import fastloss
from fastloss.losses.distribution import TopKLoss


@pytest.mark.parametrize("code", [255, -1])
def test_label_range_error_suggests_ignore_index(torch_backend, code):
    x = torch.randn(1, 3, 4, 4)
    lab = torch.randint(0, 3, (1, 4, 4))
    lab[0, 0, 0] = code
    with pytest.raises(ValueError, match=rf"found \[{code}\] \(if {code} marks unlabelled voxels, pass ignore_index={code}"):
        fastloss.get_loss("DiceCE")(x, lab)
    # with the suggested ignore_index the same input is accepted and the voxel is left out
    got = fastloss.get_loss("CE", ignore_index=code)(x, lab)
    want = torch.nn.functional.cross_entropy(x, lab, ignore_index=code)
    torch.testing.assert_close(got, want)


def test_label_range_error_without_a_usual_code_has_no_hint(torch_backend):
    lab = torch.full((1, 4, 4), 7)
    with pytest.raises(ValueError, match=r"found \[7\]$"):
        fastloss.get_loss("CE")(torch.randn(1, 3, 4, 4), lab)


def test_topk_repr_shows_k_or_t():
    assert repr(fastloss.get_loss("TopK")) == "TopKLoss(k=10.0, reduction='mean')"
    assert repr(TopKLoss(k=5)) == "TopKLoss(k=5.0, reduction='mean')"
    assert repr(TopKLoss(t=0.3, ignore_index=255)) == "TopKLoss(t=0.3, reduction='mean', ignore_index=255)"
    assert "k=10.0" in repr(fastloss.get_loss("DiceTopK"))


# ------------------------------------------------------------------ issue 25: the rough edges a new user hits
@pytest.mark.parametrize("alias,canonical", [
    ("TopK10", "TopK-10%"), ("TopK-10", "TopK-10%"), ("topk 30", "TopK-30%"), ("TopK90", "TopK-90%"),
    ("HausdorffDT", "HD"), ("GeneralizedDice", "GDice"), ("CrossEntropy", "CE"), ("DiceBoundary", "DiceBD"),
])
def test_natural_aliases_resolve(alias, canonical):
    from fastloss.registry import canonical_name

    assert canonical_name(alias) == canonical
    a, b = fastloss.get_loss(alias, **_quiet(canonical)), fastloss.get_loss(canonical, **_quiet(canonical))
    assert repr(a) == repr(b)


def _quiet(name):
    return {"warn_after_steps": None} if name == "DiceBD" else {}


def test_canonical_name_is_public_and_says_none_for_unknown_names():
    from fastloss import registry

    assert registry.canonical_name("lovasz") == "Lovász" and registry.canonical_name("NoSuchLoss") is None
    assert "canonical_name" in registry.__all__ and registry.name_key("TopK 10%") == registry.name_key("topk-10%")
    with pytest.raises(TypeError):
        registry.canonical_name(3)


def test_integrations_use_only_public_names_of_the_registry_and_of_each_other():
    """Layering (issue 20): no module reads another module's private names."""
    import ast
    import pathlib

    root = pathlib.Path(fastloss.__file__).parent
    offenders = []
    for path in [root / "nnunet" / "losses.py", root / "nnunet" / "cli.py", root / "nnunet" / "trainers.py",
                 *sorted((root / "odyssey").glob("*.py"))]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                offenders += [f"{path.name}: {a.name}" for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_reduction_where_the_class_has_none_is_one_clear_error():
    with pytest.raises(TypeError) as e:
        fastloss.get_loss("DiceTopK", reduction="none")
    msg = str(e.value)
    assert "DiceTopKLoss" in msg and "'reduction'" in msg and "it accepts: include_background" in msg
    assert "lambda_topk" in msg and "one scalar" in msg and "DiceBD, DiceHD, DiceTopK, ELL" in msg
    # accepted wherever the class takes it
    x, y = torch.randn(2, 3, 4, 4), torch.randint(0, 3, (2, 4, 4))
    assert fastloss.get_loss("TopK", reduction="none")(x, y).shape == (2, 4, 4)
    assert fastloss.get_loss("Dice", reduction="none")(x, y).numel() == 2
    with pytest.raises(TypeError, match=r"takes no argument 'no_such_argument'; it accepts: .*ignore_index"):
        fastloss.get_loss("Dice", no_such_argument=1)


def test_dicebd_without_steps_per_epoch_warns_once_at_construction():
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        loss = fastloss.get_loss("DiceBD")
    msgs = [str(w.message) for w in seen if issubclass(w.category, UserWarning)]
    assert len(msgs) == 1, msgs
    assert "plain Dice" in msgs[0] and "steps_per_epoch=" in msgs[0] and "step_epoch()" in msgs[0]
    assert seen[0].filename == __file__  # points at the caller's line
    assert loss.alpha == 1.0
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        fastloss.get_loss("DiceBD", steps_per_epoch=250)  # the schedule moves by itself
        fastloss.get_loss("DiceBD", alpha=0.5, alpha_step=0.0)  # a fixed alpha: nothing waits
        fastloss.get_loss("DiceBD", warn_after_steps=None)  # "I move it myself"
        fastloss.get_loss("DiceHD")
    assert [str(w.message) for w in seen if issubclass(w.category, UserWarning)] == []


@pytest.mark.parametrize("shape,target_shape", [
    ((2, 6, 5, 4, 3), (2, 6, 5, 4)), ((2, 6, 5, 4, 3), (2, 1, 6, 5, 4)), ((2, 6, 5, 3), (2, 6, 5, 1)),
])
def test_channels_last_logits_get_the_hint(shape, target_shape):
    x = torch.randn(*shape)
    y = torch.randint(0, 3, target_shape)
    with pytest.raises(ValueError, match=r"is the class axis last\?.*movedim\(-1, 1\)"):
        fastloss.get_loss("DiceCE")(x, y)
    # a plain mismatch gets no such hint
    with pytest.raises(ValueError) as e:
        fastloss.get_loss("DiceCE")(torch.randn(2, 3, 6, 5), torch.randint(0, 3, (2, 4, 4)))
    assert "class axis" not in str(e.value)
