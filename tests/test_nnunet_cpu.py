"""nnU-Net on a CPU machine (issue 25): the torchvision that the `test` extra pins imports beside the torch it
takes, nnU-Net's own trainer lookup finds nnUNetTrainer_fastloss_<Name> through nnUNet_extTrainer, and
`python -m fastloss.nnunet list` explains its tags."""

import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HAS_NNUNET = importlib.util.find_spec("nnunetv2") is not None
needs_nnunet = pytest.mark.skipif(not HAS_NNUNET, reason="nnunetv2 not installed (pip install 'fastloss[nnunet]')")


def _pinned(package: str):
    """The version the `test` extra of pyproject.toml pins for ``package`` (``package==X``), or None."""
    text = (REPO / "pyproject.toml").read_text()
    m = re.search(r"^test = \[(.*?)\]\s*$", text, re.S | re.M)
    pins = re.findall(rf'"{re.escape(package)}==([^"]+)"', m.group(1)) if m else []
    return pins[0] if pins else None


def _import_in_subprocess(code: str, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


_TORCHVISION = {}


def torchvision_error():
    """Why torchvision does not import beside this torch (None when it does); one subprocess per session."""
    if "err" not in _TORCHVISION:
        r = _import_in_subprocess("import torchvision, torchvision.ops")
        _TORCHVISION["err"] = None if r.returncode == 0 else (r.stderr.strip().splitlines() or ["?"])[-1]
    return _TORCHVISION["err"]


@needs_nnunet
def test_the_pinned_torchvision_imports_beside_torch():
    """nnunetv2 needs timm, and timm torchvision: the pin must be a build that imports beside the torch it takes
    (PyPI's torchvision 0.28.0 installs beside the CPU torch 2.13.0 but fails with 'operator torchvision::nms
    does not exist')."""
    pin = _pinned("torchvision")
    assert pin is not None, "the test extra pins no torchvision (nnunetv2 -> timm -> torchvision)"
    try:
        have = importlib.metadata.version("torchvision")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("torchvision is not installed")
    if have.split("+")[0] != pin:
        pytest.skip(f"this environment has torchvision {have}, not the test extra's {pin} "
                    "(pip install -e '.[test]' installs the pinned pair)")
    code = ("import torch, torchvision, torchvision.ops\n"
            "b = torch.tensor([[0., 0., 1., 1.], [0., 0., 1., 1.]]); s = torch.tensor([1., .5])\n"
            "assert torchvision.ops.nms(b, s, 0.5).tolist() == [0]\n"
            "import timm; print(torch.__version__, torchvision.__version__)")
    r = _import_in_subprocess(code)
    assert r.returncode == 0, f"torchvision {pin} does not import beside this torch: {r.stderr[-2000:]}"


def test_list_explains_its_tags(capsys):
    from fastloss.nnunet.cli import main

    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^DiceCE\s+nnUNetTrainer_fastloss_DiceCE  \[regions\]  \[nnunet-values\]$", out, re.M)
    assert re.search(r"^SS\s+nnUNetTrainer_fastloss_SS  \[regions, no ignore label\]$", out, re.M)
    assert re.search(r"^TopK\s+nnUNetTrainer_fastloss_TopK$", out, re.M)
    legend = out[out.index("Tags:"):]
    assert "[regions]" in legend and "region-based" in legend and "softmax" in legend
    assert "[nnunet-values]" in legend and "--nnunet-values" in legend
    assert "nnUNet_extTrainer" in legend and "python -m fastloss.nnunet train" in legend


def test_trainer_dir_is_a_folder_for_nnunets_ext_trainer_lookup(capsys):
    from fastloss.nnunet import EXT_TRAINER_DIR
    from fastloss.nnunet.cli import main

    assert main(["trainer-dir"]) == 0
    folder = capsys.readouterr().out.strip()
    assert folder == EXT_TRAINER_DIR and os.path.isfile(os.path.join(folder, "fastloss_trainers.py"))


@needs_nnunet
def test_nnunets_ext_trainer_search_finds_every_trainer():
    """The search nnU-Net runs on each nnUNet_extTrainer folder (no torchvision needed for this part)."""
    from nnunetv2.utilities.find_class_by_name import recursive_find_python_class

    from fastloss.nnunet import EXT_TRAINER_DIR
    from fastloss.nnunet.trainers import all_trainer_classes

    classes = all_trainer_classes()
    assert "nnUNetTrainer_fastloss_DiceTopK_nnUNetValues" in classes and "nnUNetTrainer_fastloss_Lovasz" in classes
    for name in ("nnUNetTrainer_fastloss_DiceTopK", "nnUNetTrainer_fastloss_TopK_10pct",
                 "nnUNetTrainer_fastloss_DiceCE_nnUNetValues"):
        cls = recursive_find_python_class(EXT_TRAINER_DIR, name, None, base_folder=EXT_TRAINER_DIR,
                                          cleanup_imports_from_base_folder=True)
        assert cls is classes[name], name
    assert "fastloss_trainers" not in sys.modules  # nnU-Net's cleanup: nothing left behind


@needs_nnunet
def test_nnunets_own_lookup_finds_the_trainers_through_nnunet_ext_trainer():
    """nnUNetv2_train's lookup (recursive_find_trainer_class_by_name): it imports every trainer module of nnU-Net
    first (its Primus trainers import timm and torchvision), then searches nnUNet_extTrainer."""
    if torchvision_error():
        pytest.skip(f"torchvision does not import beside this torch ({torchvision_error()}): nnU-Net's own lookup "
                    "cannot run here; python -m fastloss.nnunet train does (tests/test_nnunet_e2e.py)")
    from fastloss.nnunet import EXT_TRAINER_DIR

    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "c = f('nnUNetTrainer_fastloss_DiceTopK'); print('FOUND', c.__name__, c.fastloss_loss)")
    r = _import_in_subprocess(code, env={**os.environ, "nnUNet_extTrainer": EXT_TRAINER_DIR})
    assert r.returncode == 0 and "FOUND nnUNetTrainer_fastloss_DiceTopK DiceTopK" in r.stdout, r.stderr[-3000:]
