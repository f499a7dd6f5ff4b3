"""The folder to give nnU-Net as ``nnUNet_extTrainer`` (``python -m fastloss.nnunet trainer-dir`` prints it).

nnU-Net v2 looks trainers up by name in its own package and then, when the name is not there, in every folder of
the ``nnUNet_extTrainer`` environment variable, importing each module it finds. This folder holds one module,
:mod:`fastloss_trainers`, whose names are every ``nnUNetTrainer_fastloss_<Name>`` (and ``..._nnUNetValues``), so
that nnU-Net's own ``nnUNetv2_train``/``nnUNetv2_predict -tr nnUNetTrainer_fastloss_<Name>`` find them.
"""
