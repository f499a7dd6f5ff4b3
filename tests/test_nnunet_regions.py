"""Region-based nnU-Net training from integer labels, and deep-supervision targets made on the loss's device.

- fastloss's deep-supervision targets (the full-resolution labels downsampled by the loss, regions applied after)
  equal what nnU-Net's own transforms give (``ConvertSegmentationToRegionsTransform`` then
  ``DownsampleSegForDSTransform``), voxel for voxel, at nnU-Net's scales, anisotropic ones included;
- the integer-label region losses equal nnU-Net's one-hot region losses (value and gradient, with deep
  supervision and an ignore label);
- the trainers' loader transforms no longer downsample or convert; the online pseudo-Dice counts from the labels
  equal nnU-Net's ``get_tp_fp_fn_tn`` on its converted targets;
- end to end: a BraTS-like region dataset (4 labels, 3 nested regions) through nnU-Net's planning and
  preprocessing, ``python -m fastloss.nnunet train`` and ``predict``.
"""

import json
import os
import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("nnunetv2", reason="nnunetv2 not installed (pip install 'fastloss[nnunet]')")
pytest.importorskip("batchgeneratorsv2")
from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform  # noqa: E402
from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform  # noqa: E402

from fastloss.losses.deep_supervision import downsample_target  # noqa: E402
from fastloss.nnunet.losses import build_nnunet_loss  # noqa: E402

BRATS = [[1, 2, 3], [2, 3], [3]]
REPO = Path(__file__).resolve().parents[1]
# nnU-Net's scales for a 3d_fullres plan with a first anisotropic stride (1, 2, 2), then isotropic ones
SCALES = [[1.0, 1.0, 1.0], [1.0, 0.5, 0.5], [0.5, 0.25, 0.25], [0.25, 0.125, 0.125]]


def _labels(shape, seed, top=4):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, top, shape, generator=g).to(torch.int16)


@pytest.mark.parametrize("patch", [(20, 48, 40), (13, 37, 29)])
def test_downsampled_targets_equal_nnunets_transform(patch):
    seg = _labels((1,) + patch, 1)  # nnU-Net's per-sample segmentation (1, *patch)
    theirs = DownsampleSegForDSTransform(ds_scales=SCALES)(segmentation=seg)["segmentation"]
    for s, t in zip(SCALES, theirs):
        mine = downsample_target(seg[None], t.shape[1:])[0]
        assert mine.dtype == seg.dtype and torch.equal(mine, t)


def test_regions_after_downsampling_equal_nnunets_regions_then_downsampling():
    seg = _labels((1, 20, 48, 40), 2, top=5)  # label 4: the ignore label
    conv = ConvertSegmentationToRegionsTransform(regions=BRATS + [4], channel_in_seg=0)
    theirs = DownsampleSegForDSTransform(ds_scales=SCALES)(segmentation=conv(segmentation=seg)["segmentation"])
    theirs = theirs["segmentation"]
    for t in theirs:
        low = downsample_target(seg[None], t.shape[1:])[0, 0]
        mine = torch.stack([torch.isin(low, torch.tensor(r, dtype=low.dtype)) for r in BRATS + [[4]]])
        assert torch.equal(mine, t)


@pytest.mark.parametrize("name", ["DiceCE", "Dice", "Tversky", "GDice"])
@pytest.mark.parametrize("ignore_label", [None, 4])
def test_integer_label_regions_equal_nnunets_onehot_regions(name, ignore_label, torch_backend):
    """With deep supervision: nnU-Net's targets (regions, then one downsampled one-hot per output, the ignore
    label as the last channel) against the one integer label patch."""
    gen = torch.Generator().manual_seed(3)
    shapes = [(12, 16, 16), (12, 8, 8), (6, 4, 4)]
    outs = [torch.randn((2, 3) + s, generator=gen, dtype=torch.float64, requires_grad=True) for s in shapes]
    seg = _labels((2, 1) + shapes[0], 4, top=5 if ignore_label is not None else 4)
    w = [4 / 7, 2 / 7, 1 / 7]
    regions_ch = BRATS + ([ignore_label] if ignore_label is not None else [])
    conv = ConvertSegmentationToRegionsTransform(regions=regions_ch, channel_in_seg=0)
    ds = DownsampleSegForDSTransform(ds_scales=[[1, 1, 1], [1, 0.5, 0.5], [0.5, 0.25, 0.25]])
    per_sample = [ds(segmentation=conv(segmentation=seg[b])["segmentation"])["segmentation"] for b in range(2)]
    theirs_t = [torch.stack([p[i] for p in per_sample]) for i in range(3)]
    theirs = build_nnunet_loss(name, batch_dice=True, ignore_label=ignore_label, has_regions=True,
                               deep_supervision_weights=w)
    mine = build_nnunet_loss(name, batch_dice=True, ignore_label=ignore_label, has_regions=True,
                             deep_supervision_weights=w, regions=BRATS)
    a = theirs(outs, theirs_t)
    ga = torch.autograd.grad(a, outs)
    b = mine(outs, seg.float())  # nnU-Net's loader hands labels as float or int16
    gb = torch.autograd.grad(b, outs)
    torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-12)
    for x, y in zip(gb, ga):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-12)


def _fake_trainer(on_device):
    return types.SimpleNamespace(targets_on_device=on_device)


@pytest.mark.parametrize("on_device", [True, False])
def test_trainer_loader_transforms_leave_targets_to_the_loss(on_device):
    from fastloss.nnunet.trainers import FastlossTrainer

    kw = dict(use_mask_for_norm=[False], is_cascaded=False, foreground_labels=[1, 2, 3], regions=BRATS, ignore_label=4)
    tr = FastlossTrainer.get_training_transforms(_fake_trainer(on_device), (16, 16, 16), {"x": (0, 0), "y": (0, 0),
                                                 "z": (0, 0)}, SCALES, (0, 1, 2), False, **kw)
    val = FastlossTrainer.get_validation_transforms(_fake_trainer(on_device), SCALES, is_cascaded=False,
                                                    foreground_labels=[1, 2, 3], regions=BRATS, ignore_label=4)
    for comp in (tr, val):
        names = {type(t).__name__ for t in comp.transforms}
        names |= {type(getattr(t, "transform", None)).__name__ for t in comp.transforms}
        made_on_cpu = {"DownsampleSegForDSTransform", "ConvertSegmentationToRegionsTransform"} & names
        assert (not made_on_cpu) if on_device else made_on_cpu == {"DownsampleSegForDSTransform",
                                                                      "ConvertSegmentationToRegionsTransform"}


@pytest.mark.parametrize("regions", [True, False])
@pytest.mark.parametrize("ignore", [None, 4])
def test_online_counts_equal_nnunets(regions, ignore):
    from nnunetv2.training.loss.dice import get_tp_fp_fn_tn

    from fastloss.nnunet.trainers import online_counts

    gen = torch.Generator().manual_seed(5)
    C = 3 if regions else 4
    out = torch.randn(2, C, 6, 7, 8, generator=gen)
    lab = _labels((2, 1, 6, 7, 8), 6, top=5 if ignore is not None else 4)
    lm = types.SimpleNamespace(has_regions=regions, foreground_regions=BRATS if regions else None,
                               has_ignore_label=ignore is not None, ignore_label=ignore)
    tp, fp, fn = online_counts(out, lab, lm)
    axes = [0, 2, 3, 4]
    if regions:  # nnU-Net's validation_step on its converted target
        chans = BRATS + ([ignore] if ignore is not None else [])
        t = torch.stack([torch.isin(lab[:, 0], torch.tensor(r if isinstance(r, list) else [r], dtype=lab.dtype))
                         for r in chans], 1)
        pred = (torch.sigmoid(out) > 0.5).long()
        mask = None
        if ignore is not None:
            mask = 1 - t[:, -1:].long()
            t = t[:, :-1]
        ref = get_tp_fp_fn_tn(pred, t.long(), axes=axes, mask=mask)[:3]
    else:
        t = lab.long().clone()
        mask = None
        if ignore is not None:
            mask = (t != ignore).float()
            t[t == ignore] = 0
        pred = torch.zeros(out.shape).scatter_(1, out.argmax(1)[:, None], 1)
        ref = [v[1:] for v in get_tp_fp_fn_tn(pred, t, axes=axes, mask=mask)[:3]]
    for mine, theirs in zip((tp, fp, fn), ref):
        assert torch.equal(mine.double(), theirs.double())


# ------------------------------------------------------------------------------------------------ end to end
sitk = pytest.importorskip("SimpleITK", reason="SimpleITK (an nnunetv2 dependency) not installed")
DATASET = "Dataset902_FastlossRegions"


def _write_case(folder: Path, name: str, rng: np.random.Generator) -> None:
    # a BraTS-like lesion: enhancing core (3) inside a tumour core (2) inside an oedema (1)
    z, y, x = np.mgrid[:32, :32, :32]
    c = rng.integers(12, 20, 3)
    r2 = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2
    seg = np.zeros((32, 32, 32), np.uint8)
    seg[r2 < 64] = 1
    seg[r2 < 25] = 2
    seg[r2 < 6] = 3
    img = seg.astype(np.float32) * 60 + rng.normal(0, 10, seg.shape).astype(np.float32)
    for arr, path in ((img, folder / "imagesTr" / f"{name}_0000.nii.gz"),
                      (seg, folder / "labelsTr" / f"{name}.nii.gz")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(im, str(path))


def test_region_dataset_trains_and_predicts_from_integer_labels(tmp_path):
    raw = tmp_path / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(1)
    for i in range(2):
        _write_case(raw, f"brats_{i:03d}", rng)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "whole tumor": [1, 2, 3], "tumor core": [2, 3], "enhancing tumor": 3},
        "regions_class_order": [1, 2, 3], "numTraining": 2, "file_ending": ".nii.gz",
    }))
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(tmp_path / "raw"), nnUNet_preprocessed=str(tmp_path / "pre"), nnUNet_results=str(tmp_path / "res"),
        nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="false", OMP_NUM_THREADS="2",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("TRITON_INTERPRET", None)
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as f; sys.argv = ['nnUNetv2_plan_and_preprocess', '-d', '902', '-c', "
            "'3d_fullres', '-np', '1', '-npfp', '1']; f()")
    r = subprocess.run([sys.executable, "-c", code], env={**env, "nnUNet_n_proc_DA": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    cmd = [sys.executable, "-m", "fastloss.nnunet", "train", "902", "3d_fullres", "all", "--loss", "DiceCE",
           "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--skip-validation", "-device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    losses = [float(v) for v in re.findall(r"(?:train|val)_loss (-?[0-9.eE+-]+|nan|inf)", out)]
    assert len(losses) == 2 and all(np.isfinite(losses)), out[-2000:]
    dice = re.findall(r"Pseudo dice \[([^\]]*)\]", out)
    assert dice and len(dice[-1].split(",")) == 3, out[-2000:]  # one pseudo-Dice per region
    folder = tmp_path / "res" / DATASET / "nnUNetTrainer_fastloss_DiceCE__nnUNetPlans__3d_fullres" / "fold_all"
    assert (folder / "checkpoint_final.pth").is_file()
    out_dir = tmp_path / "pred"
    cmd = [sys.executable, "-m", "fastloss.nnunet", "predict", "--loss", "DiceCE", "-i", str(raw / "imagesTr"),
           "-o", str(out_dir), "-d", "902", "-c", "3d_fullres", "-f", "all", "-chk", "checkpoint_final.pth",
           "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(tmp_path))
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "brats_000.nii.gz")))
    assert pred.shape == (32, 32, 32) and set(np.unique(pred)) <= {0, 1, 2, 3}
