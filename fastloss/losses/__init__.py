"""The losses of the paper, grouped as in its Fig. 1: distribution, region, boundary and compound."""

from .boundary import BoundaryLoss, HausdorffDTLoss, LogHausdorffDTLoss
from .compound import (
    DiceBoundaryLoss,
    DiceCELoss,
    DiceFocalLoss,
    DiceHausdorffDTLoss,
    DiceTopKLoss,
    ExpLogLoss,
)
from .deep_supervision import DeepSupervisionLoss
from .distribution import (
    CrossEntropyLoss,
    DistancePenalizedCELoss,
    FocalLoss,
    TopKLoss,
    WeightedCrossEntropyLoss,
    class_weights_from_labels,
)
from .lovasz import LovaszSoftmaxLoss
from .monai_extra import GeneralizedDiceFocalLoss, MaskedDiceLoss
from .cldice import SoftclDiceLoss, SoftDiceclDiceLoss
from .monai_more import AsymmetricUnifiedFocalLoss, GeneralizedWassersteinDiceLoss, MCCLoss, NACLLoss
from .topology import BoundaryDoULoss, CbDiceLoss, DiceCESkeletonRecallLoss, SkeletonRecallLoss
from .region import (
    AsymmetricSimilarityLoss,
    DiceLoss,
    FocalTverskyLoss,
    GeneralizedDiceLoss,
    IoULoss,
    PenaltyGeneralizedDiceLoss,
    SensitivitySpecificityLoss,
    TverskyLoss,
)

__all__ = [
    "AsymmetricSimilarityLoss", "BoundaryLoss", "CrossEntropyLoss", "DeepSupervisionLoss", "DiceBoundaryLoss",
    "DiceCELoss", "DiceFocalLoss", "DiceHausdorffDTLoss", "DiceLoss", "DiceTopKLoss", "DistancePenalizedCELoss",
    "ExpLogLoss", "FocalLoss", "FocalTverskyLoss", "GeneralizedDiceLoss", "HausdorffDTLoss", "IoULoss",
    "LovaszSoftmaxLoss", "PenaltyGeneralizedDiceLoss", "SensitivitySpecificityLoss", "TopKLoss",
    "TverskyLoss", "WeightedCrossEntropyLoss", "class_weights_from_labels",
    # MONAI losses outside the paper
    "GeneralizedDiceFocalLoss", "LogHausdorffDTLoss", "MaskedDiceLoss",
    "AsymmetricUnifiedFocalLoss", "GeneralizedWassersteinDiceLoss", "MCCLoss", "NACLLoss", "SoftclDiceLoss",
    "SoftDiceclDiceLoss",
    # after the paper: topology- and boundary-aware losses (issue 22)
    "SkeletonRecallLoss", "DiceCESkeletonRecallLoss", "BoundaryDoULoss", "CbDiceLoss",
]
