"""fastloss's nnU-Net integration against nnU-Net v2's own losses and deep-supervision wrapper (the oracles),
plus the bad input of the integration and of DeepSupervisionLoss.

nnU-Net accumulates its Dice sums in float32 (``sum(dtype=torch.float32)``), so the comparisons run in float32
at float32 tolerances. Values are compared with ``nnunet_values=True`` (nnU-Net's ``−Dice``); without it they
must differ by exactly the Dice weight.
"""

import importlib.util
import subprocess
import sys

import numpy as np
import pytest
import torch

import fastloss
from fastloss.losses.deep_supervision import (
    DeepSupervisionLoss,
    downsample_target,
    nnunet_deep_supervision_weights,
)
from fastloss.nnunet.losses import build_nnunet_loss, trainer_suffix

HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(not HAS_NNUNET, reason="nnunetv2 not installed (pip install 'fastloss[nnunet]')")

C = 4  # classes; the ignore label is C, as nnU-Net requires (the highest label)
RTOL, ATOL = 2e-5, 2e-6


def _data(seed, ignore, shape=(2, C, 7, 6, 5)):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * 2
    t = torch.randint(0, C, (shape[0], 1) + shape[2:], generator=g)
    if ignore:
        t[torch.rand(t.shape, generator=g) < 0.3] = C
    return x, t.float()  # nnU-Net hands over float label maps


def _value_and_grad(loss, x, t):
    x = x.clone().requires_grad_(True)
    v = loss(x, t)
    v.backward()
    return v.detach(), x.grad


def _nnunet_kwargs(batch_dice, do_bg=False):
    return {"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": do_bg, "ddp": False}


# -------------------------------------------------------------------------------------------- parity
@needs_nnunet
@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("ignore", [False, True])
def test_dice_ce_equals_nnunet(batch_dice, ignore):
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    x, t = _data(1, ignore)
    ref = DC_and_CE_loss(_nnunet_kwargs(batch_dice), {}, ignore_label=C if ignore else None,
                         dice_class=MemoryEfficientSoftDiceLoss)
    ours = build_nnunet_loss("DiceCE", batch_dice=batch_dice, ignore_label=C if ignore else None,
                             nnunet_values=True)
    v_ref, g_ref = _value_and_grad(ref, x, t)
    v, g = _value_and_grad(ours, x, t)
    torch.testing.assert_close(v, v_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(g, g_ref, rtol=RTOL, atol=ATOL)
    plain = build_nnunet_loss("DiceCE", batch_dice=batch_dice, ignore_label=C if ignore else None)
    torch.testing.assert_close(_value_and_grad(plain, x, t)[0], v_ref + 1.0, rtol=RTOL, atol=ATOL)


@needs_nnunet
@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("ignore", [False, True])
def test_dice_equals_memory_efficient_soft_dice(batch_dice, ignore):
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    x, t = _data(2, ignore)
    dc = MemoryEfficientSoftDiceLoss(apply_nonlin=lambda z: torch.softmax(z, 1), **_nnunet_kwargs(batch_dice))
    mask = t != C

    def ref(z, tt):  # what DC_and_CE_loss does with an ignore label
        return dc(z, torch.where(mask, tt, 0), loss_mask=mask if ignore else None)

    ours = build_nnunet_loss("Dice", batch_dice=batch_dice, ignore_label=C if ignore else None, nnunet_values=True)
    v_ref, g_ref = _value_and_grad(ref, x, t)
    v, g = _value_and_grad(ours, x, t)
    torch.testing.assert_close(v, v_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(g, g_ref, rtol=RTOL, atol=ATOL)


@needs_nnunet
@pytest.mark.parametrize("batch_dice", [True, False])
def test_dice_topk_equals_nnunet(batch_dice):
    from nnunetv2.training.loss.compound_losses import DC_and_topk_loss

    x, t = _data(3, False, shape=(2, C, 9, 8, 7))  # 1008 voxels: nnU-Net keeps int(100.8) = 100
    ref = DC_and_topk_loss(_nnunet_kwargs(batch_dice), {"k": 10})
    ours = build_nnunet_loss("DiceTopK", batch_dice=batch_dice, nnunet_values=True)
    v_ref, g_ref = _value_and_grad(ref, x, t)
    v, g = _value_and_grad(ours, x, t)
    torch.testing.assert_close(v, v_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(g, g_ref, rtol=RTOL, atol=ATOL)


@needs_nnunet
def test_dice_topk_with_ignore_label():
    """The documented difference: nnU-Net's TopK counts k % of all voxels (ignored ones have CE 0), fastloss k %
    of the labelled ones. The Dice part must equal nnU-Net's; the TopK part a plain torch top-k over the
    labelled voxels."""
    from nnunetv2.training.loss.dice import SoftDiceLoss

    x, t = _data(4, True, shape=(2, C, 9, 8, 7))
    mask = t != C
    dc = SoftDiceLoss(apply_nonlin=lambda z: torch.softmax(z, 1), **_nnunet_kwargs(True))

    def ref(z, tt):
        dice = dc(z, torch.where(mask, tt, 0), loss_mask=mask)
        ce = -torch.log_softmax(z, 1).gather(1, torch.where(mask, tt, 0).long())[mask]
        k = int(ce.numel() * 10 / 100)
        return dice + torch.topk(ce, k).values.mean()

    ours = build_nnunet_loss("DiceTopK", batch_dice=True, ignore_label=C, nnunet_values=True)
    v_ref, g_ref = _value_and_grad(ref, x, t)
    v, g = _value_and_grad(ours, x, t)
    torch.testing.assert_close(v, v_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(g, g_ref, rtol=RTOL, atol=ATOL)


@needs_nnunet
@pytest.mark.parametrize("batch_dice", [True, False])
@pytest.mark.parametrize("ignore", [False, True])
def test_region_dice_bce_equals_nnunet(batch_dice, ignore):
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    g = torch.Generator().manual_seed(5)
    R = 3
    x = torch.randn(2, R, 6, 5, 7, generator=g) * 2
    labels = torch.randint(0, 4, (2, 1, 6, 5, 7), generator=g)
    regions = [labels >= 1, labels >= 2, labels == 3]  # nested regions, nnU-Net's typical layout
    t = torch.cat(regions, 1)
    if ignore:
        t = torch.cat([t, torch.rand(labels.shape, generator=g) < 0.25], 1)  # ignore channel last
    ref = DC_and_BCE_loss({}, _nnunet_kwargs(batch_dice, do_bg=True), use_ignore_label=ignore,
                          dice_class=MemoryEfficientSoftDiceLoss)
    ours = build_nnunet_loss("DiceCE", batch_dice=batch_dice, has_regions=True, ignore_label=4 if ignore else None,
                             nnunet_values=True)
    v_ref, g_ref = _value_and_grad(ref, x, t)
    v, gr = _value_and_grad(ours, x, t)
    torch.testing.assert_close(v, v_ref, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(gr, g_ref, rtol=RTOL, atol=ATOL)


@needs_nnunet
@pytest.mark.parametrize("targets", ["list", "full"])
def test_deep_supervision_equals_wrapper(targets):
    """DeepSupervisionLoss vs nnU-Net's DeepSupervisionWrapper with nnU-Net's weights and its data loader's
    target downsampling (DownsampleSegForDSTransform): 4 outputs at 1, 1/2, 1/4, 1/8 resolution."""
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    g = torch.Generator().manual_seed(6)
    full = torch.randint(0, C + 1, (2, 1, 16, 16, 8), generator=g).to(torch.int16)  # with ignore label C
    scales = [1, 0.5, 0.25, 0.125]
    ds = DownsampleSegForDSTransform(scales)
    per_sample = [ds(segmentation=full[b])["segmentation"] for b in range(2)]
    t_list = [torch.stack([per_sample[b][i] for b in range(2)]).float() for i in range(len(scales))]
    outs = [torch.randn((2, C) + tuple(tt.shape[2:]), generator=g) for tt in t_list]
    # nnU-Net's _build_loss weights: 1/2^i, last 0, normalised
    w = np.array([1 / 2**i for i in range(4)])
    w[-1] = 0
    w = w / w.sum()
    assert nnunet_deep_supervision_weights(4) == pytest.approx(list(w), rel=1e-12)
    ref = DeepSupervisionWrapper(DC_and_CE_loss(_nnunet_kwargs(True), {}, ignore_label=C,
                                                dice_class=MemoryEfficientSoftDiceLoss), w)
    ours = build_nnunet_loss("DiceCE", batch_dice=True, ignore_label=C, nnunet_values=True)
    ours = DeepSupervisionLoss(ours.loss if isinstance(ours, DeepSupervisionLoss) else ours)  # default weights

    xs_ref = [o.clone().requires_grad_(True) for o in outs]
    xs = [o.clone().requires_grad_(True) for o in outs]
    v_ref = ref(xs_ref, t_list)
    v = ours(xs, t_list if targets == "list" else full)
    v_ref.backward()
    v.backward()
    torch.testing.assert_close(v.detach(), v_ref.detach(), rtol=RTOL, atol=ATOL)
    for a, b in zip(xs[:3], xs_ref[:3]):
        torch.testing.assert_close(a.grad, b.grad, rtol=RTOL, atol=ATOL)
    assert xs[3].grad is None and xs_ref[3].grad is None  # weight 0: not evaluated


def test_downsample_target_is_nearest_exact_by_hand():
    # nearest-exact picks source index floor((i + 0.5) * in / out): for a factor 2 the odd indices 1, 3, 5.
    t = torch.arange(6 * 4).reshape(1, 1, 6, 4)
    d = downsample_target(t, (3, 2))
    assert d.dtype == t.dtype
    assert d[0, 0].tolist() == [[t[0, 0, r, c].item() for c in (1, 3)] for r in (1, 3, 5)]


def test_deep_supervision_weights_by_hand():
    assert nnunet_deep_supervision_weights(1) == [1.0]
    assert nnunet_deep_supervision_weights(2) == [1.0, 0.0]
    assert nnunet_deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])


def test_deep_supervision_given_weights_and_single_tensor():
    loss = fastloss.DiceLoss(softmax=True)
    x = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    t = torch.randint(0, 3, (2, 1, 8, 8))
    ds = DeepSupervisionLoss(loss, weights=[0.25, 2.0])
    expected = 0.25 * loss(x[0], t) + 2.0 * loss(x[1], downsample_target(t, (4, 4)))
    torch.testing.assert_close(ds(x, t), expected)
    torch.testing.assert_close(ds(x[0], t), loss(x[0], t))  # a plain tensor: no deep supervision
    torch.testing.assert_close(ds(x, t[:, 0]), expected)  # (B, *spatial) labels


# ------------------------------------------------------------------------------------------------- bad input
def test_deep_supervision_bad_input():
    loss = fastloss.DiceLoss(softmax=True)
    x = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    t = torch.randint(0, 3, (2, 1, 8, 8))
    with pytest.raises(ValueError, match="at least one non-zero"):
        DeepSupervisionLoss(loss, weights=[0, 0])
    with pytest.raises(ValueError, match=r"weights\[1\] must be finite and >= 0, got -1"):
        DeepSupervisionLoss(loss, weights=[1, -1])
    with pytest.raises(TypeError, match="weights must be a sequence"):
        DeepSupervisionLoss(loss, weights="1,2")
    with pytest.raises(TypeError, match="loss must be callable"):
        DeepSupervisionLoss(3)
    with pytest.raises(ValueError, match="got 2 outputs but 3 weights"):
        DeepSupervisionLoss(loss, weights=[1, 1, 1])(x, t)
    with pytest.raises(ValueError, match="got 2 outputs but 1 targets"):
        DeepSupervisionLoss(loss)(x, [t])
    with pytest.raises(ValueError, match=r"target \(3, 1, 8, 8\) does not match outputs\[0\]"):
        DeepSupervisionLoss(loss)(x, torch.zeros(3, 1, 8, 8, dtype=torch.long))
    with pytest.raises(TypeError, match=r"outputs\[1\] must be a \(B, C, \*spatial\) tensor"):
        DeepSupervisionLoss(loss)([x[0], "x"], t)
    with pytest.raises(TypeError, match="target must be a tensor or a list"):
        DeepSupervisionLoss(loss)(x, 3)


def test_build_nnunet_loss_bad_input():
    with pytest.raises(ValueError, match="unknown loss name 'Bogus'; known names: .*DiceTopK"):
        build_nnunet_loss("Bogus")
    with pytest.raises(ValueError, match="cannot train on nnU-Net's regions.*supports .*Dice"):
        build_nnunet_loss("DiceTopK", has_regions=True)
    with pytest.raises(ValueError, match="nnU-Net has no loss 'GDice'"):
        build_nnunet_loss("GDice", nnunet_values=True)
    with pytest.raises(ValueError, match="cannot mask nnU-Net's ignore label"):
        build_nnunet_loss("SS", has_regions=True, ignore_label=3)
    with pytest.raises(TypeError, match="batch_dice must be a bool"):
        build_nnunet_loss("Dice", batch_dice="yes")
    with pytest.raises(TypeError, match="ignore_index must be an int"):
        build_nnunet_loss("Dice", ignore_label=2.5)


def test_batch_dice_follows_the_plan_except_fixed_names():
    assert build_nnunet_loss("Dice", batch_dice=False).loss.batch is False
    assert build_nnunet_loss("Dice", batch_dice=True).loss.batch is True
    assert build_nnunet_loss("SampleDice", batch_dice=True).loss.batch is False
    assert build_nnunet_loss("DiceTopK", batch_dice=False).loss.dice.batch is False
    region = build_nnunet_loss("Tversky", has_regions=True).loss
    assert region.activation == "sigmoid" and region.include_background


def test_missing_nnunetv2_names_the_extra():
    code = ("import sys; sys.modules['nnunetv2'] = None\n"
            "try:\n    import fastloss.nnunet.trainers\nexcept ImportError as e:\n    print(e)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "pip install 'fastloss[nnunet]'" in r.stdout, r.stdout + r.stderr


def test_trainer_names_round_trip_and_cli_list():
    from fastloss.registry import PAPER_LOSSES

    suffixes = [trainer_suffix(n) for n in PAPER_LOSSES]
    assert len(set(suffixes)) == len(suffixes) and all(s.isidentifier() for s in suffixes)
    assert trainer_suffix("TopK-10%") == "TopK_10pct" and trainer_suffix("lovasz") == "Lovasz"
    from fastloss.nnunet.cli import main

    with pytest.raises(SystemExit):
        main(["train", "1", "3d_fullres", "0", "--loss", "NoSuchLoss"])


@needs_nnunet
def test_trainer_classes():
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from fastloss.nnunet.trainers import parse_trainer_name, trainer_class
    from fastloss.registry import PAPER_LOSSES

    for name in PAPER_LOSSES:
        cls = trainer_class(name)
        assert issubclass(cls, nnUNetTrainer) and cls.fastloss_loss == name
        assert parse_trainer_name(cls.__name__) == (name, False)
    cls = trainer_class("dicetopk", nnunet_values=True)
    assert cls.__name__ == "nnUNetTrainer_fastloss_DiceTopK_nnUNetValues"
    assert parse_trainer_name(cls.__name__) == ("DiceTopK", True)
    assert parse_trainer_name("nnUNetTrainer") is None
    with pytest.raises(ValueError, match="nnU-Net has no loss 'Tversky'"):
        trainer_class("Tversky", nnunet_values=True)
