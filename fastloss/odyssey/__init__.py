"""``python -m fastloss.odyssey``: the paper's experiment in miniature (Ma et al. 2021, Sec. 3).

Train the same 3D U-Net with each loss on the same data, score every held-out case by DSC and NSD,
rank the losses with the paper's significance scheme (:mod:`fastloss.ranking`) and time whole
training steps, with MONAI's loss beside ours where MONAI has one. On the synthetic tasks
(:mod:`fastloss.odyssey.synthetic`, modelled on Table 1) or on one's own data (a folder of NIfTI
image/label pairs or an nnU-Net raw dataset): the way to choose a loss for one's own task.

Needs MONAI (the network); nibabel for NIfTI data; matplotlib for the plots; tqdm for progress bars
(``pip install 'fastloss[odyssey]'``). Imported by nothing else in fastloss.

Example:
    >>> from dataclasses import replace
    >>> from fastloss.odyssey import MODES, run
    >>> folder = run(replace(MODES["quick"], losses=("Dice", "DiceTopK"), tasks=("liver",)))  # doctest: +SKIP
"""

from .data import BatchSampler, Case, Dataset, load_folder, synthetic_dataset
from .runner import BEYOND_LOSSES, MODES, QUICK_LOSSES, TABLE2_LOSSES, OdysseyConfig, run
from .synthetic import TASKS, make_case
from .train import TrainConfig

__all__ = ["run", "OdysseyConfig", "TrainConfig", "MODES", "QUICK_LOSSES", "TABLE2_LOSSES", "BEYOND_LOSSES", "TASKS",
           "make_case", "load_folder", "synthetic_dataset", "Dataset", "Case", "BatchSampler"]
