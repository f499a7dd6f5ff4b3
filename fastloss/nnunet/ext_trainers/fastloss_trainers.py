"""Every fastloss trainer by its nnU-Net name, for nnU-Net's ``nnUNet_extTrainer`` lookup (see ``__init__.py``).

nnU-Net imports this file as a top-level module and takes the class named by ``-tr``; the classes themselves live in
:mod:`fastloss.nnunet.trainers` (one per loss and value convention).
"""

from fastloss.nnunet.trainers import all_trainer_classes

globals().update(all_trainer_classes())
__all__ = sorted(all_trainer_classes())
