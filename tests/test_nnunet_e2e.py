"""End to end through nnU-Net v2 on the CPU: a tiny synthetic dataset in nnU-Net's raw format, nnU-Net's own
planning and preprocessing, then ``python -m fastloss.nnunet train`` for one short epoch with DiceTopK and
DiceHD: the run must finish, log finite losses and write a checkpoint; the DiceTopK model then predicts a case
through ``python -m fastloss.nnunet predict``.

Sized to stay cheap on a 2-core machine: two 32^3 cases, the 3d_fullres configuration, one epoch of two
training and one validation iteration, fold "all", nnU-Net's final sliding-window validation skipped.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("nnunetv2", reason="nnunetv2 not installed (pip install 'fastloss[nnunet]')")
sitk = pytest.importorskip("SimpleITK", reason="SimpleITK (an nnunetv2 dependency) not installed")

DATASET = "Dataset901_FastlossTiny"
REPO = Path(__file__).resolve().parents[1]


def _write_case(folder: Path, name: str, rng: np.random.Generator) -> None:
    # Two labelled spheres in noise: foreground classes 1 and 2, enough structure for nnU-Net's fingerprint.
    z, y, x = np.mgrid[:32, :32, :32]
    seg = np.zeros((32, 32, 32), np.uint8)
    c1, c2 = rng.integers(9, 23, 3), rng.integers(9, 23, 3)
    seg[(z - c1[0]) ** 2 + (y - c1[1]) ** 2 + (x - c1[2]) ** 2 < 36] = 1
    seg[(z - c2[0]) ** 2 + (y - c2[1]) ** 2 + (x - c2[2]) ** 2 < 16] = 2
    img = seg.astype(np.float32) * 100 + rng.normal(0, 10, seg.shape).astype(np.float32)
    for arr, path in ((img, folder / "imagesTr" / f"{name}_0000.nii.gz"),
                      (seg, folder / "labelsTr" / f"{name}.nii.gz")):
        im = sitk.GetImageFromArray(arr)
        im.SetSpacing((1.0, 1.0, 1.0))
        sitk.WriteImage(im, str(path))


@pytest.fixture(scope="module")
def nnunet_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("nnunet")
    raw = root / "raw" / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    for i in range(2):
        _write_case(raw, f"tiny_{i:03d}", rng)
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "MRI"}, "labels": {"background": 0, "a": 1, "b": 2},
        "numTraining": 2, "file_ending": ".nii.gz",
    }))
    env = dict(os.environ)
    env.update(
        nnUNet_raw=str(root / "raw"), nnUNet_preprocessed=str(root / "pre"), nnUNet_results=str(root / "res"),
        nnUNet_n_proc_DA="0", nnUNet_def_n_proc="1", nnUNet_compile="false", OMP_NUM_THREADS="2",
        PYTHONPATH=str(REPO) + os.pathsep + env.get("PYTHONPATH", ""),
    )
    env.pop("TRITON_INTERPRET", None)  # CPU training runs the compiled/torch backend; no kernels to interpret
    code = ("import sys; from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import "
            "plan_and_preprocess_entry as f; sys.argv = ['nnUNetv2_plan_and_preprocess', '-d', '901', '-c', "
            "'3d_fullres', '-np', '1', '-npfp', '1']; f()")
    r = subprocess.run([sys.executable, "-c", code], env={**env, "nnUNet_n_proc_DA": "1"}, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    return root, env


@pytest.mark.parametrize("loss", ["DiceTopK", "DiceHD"])
def test_cli_trains_one_epoch(nnunet_env, loss):
    root, env = nnunet_env
    cmd = [sys.executable, "-m", "fastloss.nnunet", "train", "901", "3d_fullres", "all", "--loss", loss,
           "--epochs", "1", "--iterations", "2", "--val-iterations", "1", "--skip-validation", "-device", "cpu"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(root))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    folder = root / "res" / DATASET / f"nnUNetTrainer_fastloss_{loss}__nnUNetPlans__3d_fullres" / "fold_all"
    assert (folder / "checkpoint_final.pth").is_file(), sorted(p.name for p in folder.iterdir())
    losses = [float(v) for v in re.findall(r"(?:train|val)_loss (-?[0-9.eE+-]+|nan|inf)", out)]
    assert len(losses) == 2 and all(np.isfinite(losses)), out[-2000:]
    import torch

    ckpt = torch.load(folder / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == f"nnUNetTrainer_fastloss_{loss}"
    assert ckpt["current_epoch"] == 1
    if loss == "DiceTopK":  # the trained model serves nnU-Net's prediction through the CLI too
        out_dir = root / "pred"
        cmd = [sys.executable, "-m", "fastloss.nnunet", "predict", "--loss", loss, "-i",
               str(root / "raw" / DATASET / "imagesTr"), "-o", str(out_dir), "-d", "901", "-c", "3d_fullres", "-f",
               "all", "-chk", "checkpoint_final.pth", "-device", "cpu", "--disable_tta", "-npp", "1", "-nps", "1"]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900, cwd=str(root))
        assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
        pred = sitk.GetArrayFromImage(sitk.ReadImage(str(out_dir / "tiny_000.nii.gz")))
        assert pred.shape == (32, 32, 32) and set(np.unique(pred)) <= {0, 1, 2}


def test_nnunets_own_train_command_with_nnunet_ext_trainer(nnunet_env):
    """nnU-Net's own nnUNetv2_train -tr nnUNetTrainer_fastloss_DiceCE, the trainer found through nnUNet_extTrainer
    (python -m fastloss.nnunet trainer-dir), the short run set by the FASTLOSS_NNUNET_* variables. nnU-Net's lookup
    imports its own trainer modules first, and with them timm and torchvision: skipped where torchvision does not
    import beside this torch (the pair the test extra pins does)."""
    r = subprocess.run([sys.executable, "-c", "import torchvision, torchvision.ops"], capture_output=True, text=True,
                       timeout=300)
    if r.returncode != 0:
        pytest.skip("torchvision does not import beside this torch "
                    f"({(r.stderr.strip().splitlines() or ['?'])[-1]}): nnUNetv2_train cannot look trainers up here")
    root, env = nnunet_env
    from fastloss.nnunet import EXT_TRAINER_DIR

    env = dict(env, nnUNet_extTrainer=EXT_TRAINER_DIR, FASTLOSS_NNUNET_EPOCHS="1", FASTLOSS_NNUNET_ITERATIONS="2",
               FASTLOSS_NNUNET_VAL_ITERATIONS="1", FASTLOSS_NNUNET_SKIP_VALIDATION="1")
    code = ("import sys; from nnunetv2.run.run_training import run_training_entry as f; sys.argv = ['nnUNetv2_train', "
            "'901', '3d_fullres', 'all', '-tr', 'nnUNetTrainer_fastloss_DiceCE', '-device', 'cpu']; f()")
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=900,
                       cwd=str(root))
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    folder = root / "res" / DATASET / "nnUNetTrainer_fastloss_DiceCE__nnUNetPlans__3d_fullres" / "fold_all"
    assert (folder / "checkpoint_final.pth").is_file(), sorted(p.name for p in folder.iterdir())
    losses = [float(v) for v in re.findall(r"(?:train|val)_loss (-?[0-9.eE+-]+|nan|inf)", out)]
    assert len(losses) == 2 and all(np.isfinite(losses)), out[-2000:]
