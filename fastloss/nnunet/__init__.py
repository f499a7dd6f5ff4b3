"""nnU-Net v2 integration: the paper's losses and those after it (:data:`fastloss.registry.BEYOND_PAPER`: Skeleton
Recall, cbDice, Boundary DoU, MONAI's other losses) as nnU-Net trainers, with deep supervision and DDP-exact batch Dice.

- :func:`build_nnunet_loss` (no nnunetv2 needed): a loss with nnU-Net's conventions;
- :mod:`fastloss.nnunet.trainers` (needs the ``[nnunet]`` extra): ``nnUNetTrainer`` subclasses per loss;
- ``python -m fastloss.nnunet train DATASET CONFIGURATION FOLD --loss DiceTopK [nnU-Net options]``,
  ``python -m fastloss.nnunet list`` and ``python -m fastloss.nnunet trainer-dir`` (:mod:`fastloss.nnunet.cli`);
- :data:`EXT_TRAINER_DIR`: the folder for nnU-Net's ``nnUNet_extTrainer`` variable, with which nnU-Net's own
  ``nnUNetv2_train``/``nnUNetv2_predict -tr nnUNetTrainer_fastloss_<Name>`` find the trainers.
"""

from __future__ import annotations

import os

from .losses import NNUNET_VALUE_LOSSES, REGION_LOSSES, NNUNetLoss, RegionDiceBCELoss, build_nnunet_loss

__all__ = [
    "NNUNET_VALUE_LOSSES", "REGION_LOSSES", "NNUNetLoss", "RegionDiceBCELoss", "build_nnunet_loss",
    "require_nnunetv2", "EXT_TRAINER_DIR",
]

NNUNET_VERSION = "2.8.1"
#: The folder for nnU-Net's ``nnUNet_extTrainer`` variable (``python -m fastloss.nnunet trainer-dir`` prints it).
EXT_TRAINER_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "ext_trainers")


def require_nnunetv2() -> None:
    """Raise a clear ImportError when nnunetv2 is not installed.

    Raises:
        ImportError: nnunetv2 is missing; the message names the extra to install.
    """
    try:
        import nnunetv2  # noqa: F401
    except ImportError as e:
        raise ImportError(
            f"fastloss.nnunet needs nnunetv2 ({NNUNET_VERSION}), which is not installed: "
            f"pip install 'fastloss[nnunet]' (or pip install nnunetv2=={NNUNET_VERSION})"
        ) from e
