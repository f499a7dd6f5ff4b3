"""nnU-Net trainers for the losses after the paper (issue 22): every name of ``fastloss.registry.BEYOND_PAPER``
builds a trainer whose loss on nnU-Net's deep-supervision outputs equals nnU-Net's ``DeepSupervisionWrapper`` of
the loss at each scale, computed by hand (value and gradient), on the one full-resolution label patch
(fastloss's targets on the device) and on nnU-Net's own list of downsampled targets.

The skeleton losses are checked against the Skeleton Recall authors' path: their ``SkeletonTransform`` (transcribed
with scikit-image: skeletonize, two cross dilations, times the labels) on the full-resolution labels, downsampled by
nnU-Net's ``DownsampleSegForDSTransform`` like the segmentation, and their loss (nnU-Net's ``DC_and_CE_loss`` plus
their ``SoftSkeletonRecallLoss``, transcribed), whose ``-dice``/``-recall`` are fastloss's ``1 - dice``/``1 - recall``.
"""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 not installed (pip install 'fastloss[nnunet]')")
pytest.importorskip("batchgeneratorsv2")
skimage_morphology = pytest.importorskip("skimage.morphology")
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform  # noqa: E402
from nnunetv2.training.loss.compound_losses import DC_and_CE_loss  # noqa: E402
from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper  # noqa: E402
from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss  # noqa: E402

from test_nnunet_e2e import DATASET as E2E_DATASET  # noqa: E402
from test_nnunet_e2e import nnunet_env  # noqa: E402,F401  (its tiny dataset, planned once for this module)

from fastloss import losses as L  # noqa: E402
from fastloss.nnunet.losses import build_nnunet_loss, canonical_name, trainer_suffix  # noqa: E402
from fastloss.registry import BEYOND_PAPER, get_loss  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
C = 3
IGNORE = 3
PATCH = (24, 24, 12)
# a 5-stage plan with a first anisotropic stride: outputs at (24, 24, 12), (12, 12, 12), (6, 6, 6), (3, 3, 3)
STRIDES = [[1, 1, 1], [2, 2, 1], [2, 2, 2], [2, 2, 2], [2, 2, 1]]
SCALES = [[1.0, 1.0, 1.0], [0.5, 0.5, 1.0], [0.25, 0.25, 0.5], [0.125, 0.125, 0.25]]
WITH_IGNORE_INDEX = ("SkeletonRecall", "DiceCESkeletonRecall", "BoundaryDoU", "UnifiedFocal", "MCC")


# ------------------------------------------------------------------------------------------ a real nnU-Net trainer
def _plans(batch_dice: bool) -> dict:
    arch = {
        "n_stages": 5, "features_per_stage": [4, 8, 16, 32, 32], "conv_op": "torch.nn.modules.conv.Conv3d",
        "kernel_sizes": [[3, 3, 3]] * 5, "strides": STRIDES, "n_conv_per_stage": [2] * 5,
        "n_conv_per_stage_decoder": [2] * 4, "conv_bias": True,
        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d", "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True},
    }
    resample = "resample_data_or_seg_to_shape"
    return {
        "dataset_name": "Dataset998_FastlossBeyond", "plans_name": "nnUNetPlans",
        "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": list(PATCH),
        "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
        "label_manager": "LabelManager", "experiment_planner_used": "ExperimentPlanner",
        "foreground_intensity_properties_per_channel": {}, "continue_training": False,
        "configurations": {"3d_fullres": {
            "data_identifier": "nnUNetPlans_3d_fullres", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": list(PATCH), "median_image_size_in_voxels": list(PATCH), "spacing": [1.0, 1.0, 1.0],
            "normalization_schemes": ["ZScoreNormalization"], "use_mask_for_norm": [False],
            "resampling_fn_data": resample, "resampling_fn_seg": resample, "resampling_fn_probabilities": resample,
            "resampling_fn_data_kwargs": {}, "resampling_fn_seg_kwargs": {}, "resampling_fn_probabilities_kwargs": {},
            "batch_dice": batch_dice,
            "architecture": {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
                             "arch_kwargs": arch, "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        }},
    }


@pytest.fixture
def make_trainer(tmp_path, monkeypatch):
    """``make(name, batch_dice, ignore)``: the fastloss trainer for ``name`` built by nnU-Net's own __init__ on a
    plan in memory (CPU, results under tmp_path)."""
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    from fastloss.nnunet.trainers import trainer_class

    def make(name, batch_dice=True, ignore=False):
        labels = {"background": 0, "a": 1, "b": 2}
        if ignore:
            labels["ignore"] = IGNORE
        dataset_json = {"channel_names": {"0": "MRI"}, "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"}
        return trainer_class(name)(_plans(batch_dice), "3d_fullres", 0, dataset_json, device=torch.device("cpu"))

    return make


# ------------------------------------------------------------------------------------------ data and references
def _labels(seed: int, ignore: bool) -> torch.Tensor:
    """(2, 1, *PATCH) int16 labels with blob and tube structure (a smoothed random field in three levels), and with
    ``ignore`` a slab of the ignore label."""
    g = torch.Generator().manual_seed(seed)
    field = torch.nn.functional.avg_pool3d(torch.randn((2, 1) + PATCH, generator=g, dtype=torch.float64), 5, 1, 2)
    field = field / field.std()
    seg = (field > 0.3).to(torch.int16) + (field > 1.0).to(torch.int16)
    if ignore:
        seg[:, :, :, 18:] = IGNORE
    return seg


def _outputs(seed: int):
    g = torch.Generator().manual_seed(seed)
    shapes = [tuple(round(p * s) for p, s in zip(PATCH, sc)) for sc in SCALES]
    return [torch.randn((2, C) + s, generator=g, dtype=torch.float64) for s in shapes]


def _nnunet_targets(seg: torch.Tensor):
    """nnU-Net's loader: DownsampleSegForDSTransform per sample, then stacked (one target per output)."""
    ds = DownsampleSegForDSTransform(ds_scales=SCALES)
    per = [ds(segmentation=seg[b])["segmentation"] for b in range(seg.shape[0])]
    return [torch.stack([p[i] for p in per]) for i in range(len(SCALES))]


def _nnunet_weights():
    w = np.array([1 / 2**i for i in range(len(SCALES))])
    w[-1] = 0
    return list(w / w.sum())


def _authors_skeleton(seg: torch.Tensor) -> torch.Tensor:
    """The authors' SkeletonTransform(do_tube=True) per sample: skeletonize the foreground, dilate twice with
    scikit-image's default (cross) footprint, times the labels."""
    out = np.zeros(seg.shape, np.int16)
    for b in range(seg.shape[0]):
        s = seg[b, 0].numpy()
        if (s > 0).sum():
            sk = (skimage_morphology.skeletonize(s > 0) > 0).astype(np.int16)
            sk = skimage_morphology.dilation(skimage_morphology.dilation(sk))
            out[b, 0] = sk * s.astype(np.int16)
    return torch.from_numpy(out)


def _authors_recall(x, skel, mask, batch_dice):
    """The authors' SoftSkeletonRecallLoss (softmax, no background, smooth 1e-5): -recall."""
    p = torch.softmax(x, 1)[:, 1:]
    onehot = torch.zeros_like(x).scatter_(1, skel.long(), 1)[:, 1:]
    axes = list(range(2, x.ndim))
    m = 1.0 if mask is None else mask.to(x.dtype)
    sum_gt = (onehot * m).sum(axes)
    inter = (p * onehot * m).sum(axes)
    if batch_dice:
        inter, sum_gt = inter.sum(0), sum_gt.sum(0)
    return -((inter + 1e-5) / torch.clip(sum_gt + 1e-5, 1e-8)).mean()


def _authors_loss(name, batch_dice, ignore):
    """The Skeleton Recall authors' per-scale loss ``loss(x, target, skel)``, plus the constant between the value
    conventions (fastloss's 1 - dice and 1 - recall)."""
    ig = IGNORE if ignore else None
    dc_ce = DC_and_CE_loss({"batch_dice": batch_dice, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                           weight_dice=1, ignore_label=ig, dice_class=MemoryEfficientSoftDiceLoss)

    def loss(x, t, skel):
        mask = None if ig is None else (t != ig)
        skel = skel if mask is None else torch.where(mask, skel, 0)
        srec = _authors_recall(x, skel, mask, batch_dice) + 1.0
        if name == "SkeletonRecall":
            return srec
        return dc_ce(x, t.float()) + 1.0 + srec  # DC_and_CE_loss's Dice part is -dice

    return loss


class _Softmax(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.loss = loss

    def forward(self, x, t):
        return self.loss(torch.softmax(x, 1), t)


def _by_hand(name, batch_dice, ignore):
    """The loss at one scale, configured by hand: the registry's settings, nnU-Net's batch Dice where the loss has
    ``batch``, the ignore label as ``ignore_index``; UnifiedFocal on the softmax in its multi-class form (every
    foreground class rare)."""
    ig = {"ignore_index": IGNORE} if ignore else {}
    made = {
        "BoundaryDoU": lambda: get_loss("BoundaryDoU", batch=batch_dice, **ig),
        "cbDice": lambda: get_loss("cbDice"),
        "clDice": lambda: L.SoftclDiceLoss(softmax=True),
        "DiceclDice": lambda: L.SoftDiceclDiceLoss(softmax=True),
        "UnifiedFocal": lambda: _Softmax(L.AsymmetricUnifiedFocalLoss(num_classes=C, rare_classes=[1, 2], **ig)),
        "GWDice": lambda: L.GeneralizedWassersteinDiceLoss(),
        "MCC": lambda: L.MCCLoss(softmax=True, batch=batch_dice, **ig),
        "NACL": lambda: L.NACLLoss(),
    }[name]()

    def loss(x, t):
        return made(x, t.long())

    return loss


def _grads(value, xs):
    return torch.autograd.grad(value, [x for x in xs if x.requires_grad], allow_unused=True)


CASES = [(n, bd, ig) for n in BEYOND_PAPER for bd in (True, False) for ig in (False, True)
         if (not ig or n in WITH_IGNORE_INDEX) and (bd or n in ("SkeletonRecall", "DiceCESkeletonRecall", "MCC"))]


@pytest.mark.parametrize("name, batch_dice, ignore", CASES)
def test_trainer_loss_equals_deep_supervision_wrapper_by_hand(make_trainer, name, batch_dice, ignore):
    trainer = make_trainer(name, batch_dice=batch_dice, ignore=ignore)
    assert trainer.targets_on_device and trainer.enable_deep_supervision
    assert len(trainer._get_deep_supervision_scales()) == len(SCALES)
    ours = trainer._build_loss()
    seg = _labels(1, ignore)
    targets = _nnunet_targets(seg)
    w = _nnunet_weights()
    outs = _outputs(2)
    if name in ("SkeletonRecall", "DiceCESkeletonRecall"):
        skel = _authors_skeleton(seg)
        assert int((skel > 0).sum()) > 50  # the check means something: a real tube on both samples
        ref = DeepSupervisionWrapper(_authors_loss(name, batch_dice, ignore), w)
        xs = [o.clone().requires_grad_(True) for o in outs]
        v_ref = ref(xs, targets, _nnunet_targets(skel))
    else:
        ref = DeepSupervisionWrapper(_by_hand(name, batch_dice, ignore), w)
        xs = [o.clone().requires_grad_(True) for o in outs]
        v_ref = ref(xs, targets)
    g_ref = _grads(v_ref, xs)
    # fastloss's trainers: the one full-resolution patch on the device; FASTLOSS_NNUNET_TARGETS_ON_DEVICE=0:
    # nnU-Net's list of downsampled targets
    for target in (seg, targets):
        mine = [o.clone().requires_grad_(True) for o in outs]
        v = ours(mine, target)
        g = _grads(v, mine)
        torch.testing.assert_close(v, v_ref, rtol=1e-7, atol=1e-9)
        for i, (a, b) in enumerate(zip(g, g_ref)):
            if w[i] == 0:
                assert a is None and b is None  # weight 0: not evaluated (nnU-Net's wrapper skips it too)
            else:
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-10)


def test_the_skeleton_is_made_at_full_resolution_then_downsampled(make_trainer):
    """The low-resolution skeleton is the full-resolution one downsampled, not the skeleton of the downsampled
    labels (they differ on these labels, so the test tells the two apart)."""
    ours = make_trainer("SkeletonRecall")._build_loss()
    seg = _labels(3, False)
    full = _authors_skeleton(seg)
    low = _nnunet_targets(full)[1]
    again = _authors_skeleton(_nnunet_targets(seg)[1])
    assert not torch.equal(low, again)
    made = ours.skeleton(seg.long())
    assert torch.equal(made, full.long())
    stacked = []
    ours.inner.loss.loss.forward = lambda x, t, skeleton=None: stacked.append(skeleton) or x.sum() * 0
    ours(_outputs(0), seg)
    assert torch.equal(stacked[1].to(low.dtype), low)


def test_losses_without_ignore_index_refuse_an_ignore_label(make_trainer):
    for name in BEYOND_PAPER:
        if name in WITH_IGNORE_INDEX:
            continue
        with pytest.raises(ValueError, match=rf"loss '{name}' has no ignore_index.*ignore label \(3\).*SkeletonRecall"):
            make_trainer(name, ignore=True)._build_loss()


def test_region_datasets_are_refused_with_the_losses_that_can():
    for name in ("cbDice", "DiceCESkeletonRecall"):
        with pytest.raises(ValueError, match=rf"'{name}' takes a softmax.*supports Dice"):
            build_nnunet_loss(name, has_regions=True)
        with pytest.raises(ValueError, match=rf"'{name}' takes a softmax"):
            build_nnunet_loss(name, has_regions=True, regions=[[1, 2], [2]])
    with pytest.raises(ValueError, match="nnU-Net has no loss 'SkeletonRecall'"):
        build_nnunet_loss("SkeletonRecall", nnunet_values=True)


def test_skeleton_targets_bad_input_is_named():
    loss = build_nnunet_loss("DiceCESkeletonRecall", deep_supervision_weights=[2 / 3, 1 / 3, 0])
    outs = [torch.randn(2, C, 8, 8, 8), torch.randn(2, C, 4, 4, 4), torch.randn(2, C, 2, 2, 2)]
    with pytest.raises(TypeError, match="target must be a tensor or a list of tensors, got str"):
        loss(outs, "labels")
    with pytest.raises(ValueError, match=r"label targets \(B, 1, \*spatial\), got \(2, 3, 8, 8, 8\)"):
        loss(outs, torch.zeros(2, C, 8, 8, 8))  # a one-hot target
    with pytest.raises(ValueError, match="non-empty list"):
        loss(outs, [])
    with pytest.raises(ValueError, match="2 or 3 spatial dims"):
        build_nnunet_loss("SkeletonRecall")(torch.randn(2, C, 8), torch.zeros(2, 1, 8))
    with pytest.raises(ValueError, match=r"labels must (lie in \[0, 2\]|be class indices in \[0, 3\))"):
        loss(outs, torch.full((2, 1, 8, 8, 8), 5.0))  # a label the logits have no channel for
    with pytest.raises(ValueError, match="stack of labels and skeleton"):
        loss.inner.loss(outs[0], torch.zeros(2, 1, 8, 8, 8, dtype=torch.long))
    # DDP: the Dice and recall batch sums are all-reduced (tests/test_ddp.py checks the values), no warning
    import warnings

    from fastloss.distributed import synced_modules
    from fastloss.losses.topology import SkeletonRecallLoss

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        synced = build_nnunet_loss("DiceCESkeletonRecall", batch_dice=True, ddp=True)
    assert any(isinstance(m, SkeletonRecallLoss) for m in synced_modules(synced))


def test_unified_focal_on_two_classes_is_monais_loss_of_the_softmax():
    from monai.losses import AsymmetricUnifiedFocalLoss

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 2, 8, 8, 8, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (2, 1, 8, 8, 8), generator=g)
    ours = build_nnunet_loss("UnifiedFocal", num_classes=2)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    va = ours(xa, y.float())
    vb = AsymmetricUnifiedFocalLoss(to_onehot_y=True)(torch.softmax(xb, 1), y)
    va.backward()
    vb.backward()
    torch.testing.assert_close(va, vb.to(va.dtype), rtol=1e-7, atol=1e-10)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-10)
    with pytest.raises(ValueError, match="UnifiedFocal needs the number of classes"):
        build_nnunet_loss("UnifiedFocal")


# ------------------------------------------------------------------------------------------ names and lookup
def test_names_aliases_and_trainer_lookup(monkeypatch):
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from fastloss.nnunet import EXT_TRAINER_DIR
    from fastloss.nnunet.cli import install
    from fastloss.nnunet.trainers import FastlossTrainer, all_trainer_classes, parse_trainer_name, trainer_class

    classes = all_trainer_classes()
    install()
    import nnunetv2.run.run_training as rt

    for name in BEYOND_PAPER:
        cls = trainer_class(name)
        assert issubclass(cls, FastlossTrainer) and cls.fastloss_loss == name
        assert cls.__name__ == "nnUNetTrainer_fastloss_" + trainer_suffix(name) and cls.__name__.isidentifier()
        assert parse_trainer_name(cls.__name__) == (name, False)
        assert classes[cls.__name__] is cls
        # nnU-Net's search of an nnUNet_extTrainer folder, and nnUNetv2_train's lookup as `train` installs it
        found = recursive_find_python_class(EXT_TRAINER_DIR, cls.__name__, None, base_folder=EXT_TRAINER_DIR,
                                            cleanup_imports_from_base_folder=True)
        assert found is cls
        assert rt.recursive_find_trainer_class_by_name(cls.__name__) is cls
    assert "fastloss_trainers" not in sys.modules
    for alias, canon in (("skeletonrecall", "SkeletonRecall"), ("DiceCESkeletonRecallLoss", "DiceCESkeletonRecall"),
                         ("SoftclDiceLoss", "clDice"), ("SoftclDice", "clDice"), ("CbDice", "cbDice"),
                         ("boundary-dou", "BoundaryDoU"), ("GeneralizedWassersteinDice", "GWDice"),
                         ("AsymmetricUnifiedFocalLoss", "UnifiedFocal")):
        assert canonical_name(alias) == canon and trainer_class(alias) is trainer_class(canon)
    assert canonical_name("topk10") == "TopK-10%"  # the paper's names are unchanged
    with pytest.raises(ValueError, match=r"unknown loss name 'Bogus'; known names: .*DiceTopK.*after the paper: "
                       r".*DiceCESkeletonRecall.*NACL"):
        canonical_name("Bogus")


def test_cli_accepts_the_names_and_lists_them(capsys):
    from fastloss.nnunet.cli import main

    with pytest.raises(SystemExit):
        main(["train", "1", "3d_fullres", "0", "--loss", "NoSuchLoss"])
    err = capsys.readouterr().err
    assert "unknown loss name 'NoSuchLoss'" in err and "DiceCESkeletonRecall" in err and "cbDice" in err
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    for name in BEYOND_PAPER:
        assert re.search(rf"^{re.escape(name)}\s+nnUNetTrainer_fastloss_{trainer_suffix(name)}  \[after the paper\]$",
                         out, re.M), name
    assert "[after the paper]" in out[out.index("Tags:"):]


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow  # ~85 s on 2 busy cores (nnU-Net's planning of the tiny dataset ~45 s, the epoch ~35 s)
def test_cli_trains_one_epoch_with_dice_ce_skeleton_recall(nnunet_env):
    """python -m fastloss.nnunet train --loss DiceCESkeletonRecall on tests/test_nnunet_e2e.py's tiny dataset (its
    planning fixture): one epoch of two training and one validation iteration, the skeleton made from the full
    patch on the CPU, deep supervision on; finite losses and a checkpoint of this trainer."""
    root, env = nnunet_env
    name = "nnUNetTrainer_fastloss_DiceCESkeletonRecall"
    cmd = [sys.executable, "-m", "fastloss.nnunet", "train", "901", "3d_fullres", "all", "--loss",
           "dice-ce-skeleton-recall", "--epochs", "1", "--iterations", "2", "--val-iterations", "1",
           "--skip-validation", "-device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(root))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    folder = root / "res" / E2E_DATASET / f"{name}__nnUNetPlans__3d_fullres" / "fold_all"
    assert (folder / "checkpoint_final.pth").is_file(), sorted(p.name for p in folder.iterdir())
    losses = [float(v) for v in re.findall(r"(?:train|val)_loss (-?[0-9.eE+-]+|nan|inf)", out)]
    # fastloss's value is the authors' + 2 (1 - dice, 1 - recall): between 0 and 2 + CE
    assert len(losses) == 2 and all(np.isfinite(losses)) and all(v > 0 for v in losses), out[-2000:]
    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == name and ckpt["current_epoch"] == 1
