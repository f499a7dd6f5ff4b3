"""Functional forms of every loss: ``f(input, target, **kwargs) == Class(**kwargs)(input, target)``."""

from .losses.boundary import boundary_loss, hausdorff_dt_loss, log_hausdorff_dt_loss
from .losses.compound import (
    dice_boundary_loss,
    dice_ce_loss,
    dice_focal_loss,
    dice_hausdorff_dt_loss,
    dice_topk_loss,
    exp_log_loss,
)
from .losses.distribution import (
    cross_entropy_loss,
    distance_penalized_ce_loss,
    focal_loss,
    topk_loss,
    weighted_cross_entropy_loss,
)
from .losses.lovasz import lovasz_softmax_loss
from .losses.monai_extra import generalized_dice_focal_loss, masked_dice_loss
from .losses.cldice import soft_cl_dice_loss, soft_dice_cl_dice_loss
from .losses.monai_more import asymmetric_unified_focal_loss, generalized_wasserstein_dice_loss, mcc_loss, nacl_loss
from .losses.topology import boundary_dou_loss, cb_dice_loss, dice_ce_skeleton_recall_loss, skeleton_recall_loss
from .losses.region import (
    asymmetric_similarity_loss,
    dice_loss,
    focal_tversky_loss,
    generalized_dice_loss,
    iou_loss,
    penalty_generalized_dice_loss,
    sensitivity_specificity_loss,
    tversky_loss,
)

__all__ = [
    "asymmetric_similarity_loss", "boundary_loss", "cross_entropy_loss", "dice_boundary_loss", "dice_ce_loss",
    "dice_focal_loss", "dice_hausdorff_dt_loss", "dice_loss", "dice_topk_loss", "distance_penalized_ce_loss",
    "exp_log_loss", "focal_loss", "focal_tversky_loss", "generalized_dice_focal_loss", "generalized_dice_loss",
    "hausdorff_dt_loss", "iou_loss", "log_hausdorff_dt_loss", "lovasz_softmax_loss", "masked_dice_loss",
    "penalty_generalized_dice_loss", "sensitivity_specificity_loss", "topk_loss", "tversky_loss",
    "weighted_cross_entropy_loss",
    "asymmetric_unified_focal_loss", "generalized_wasserstein_dice_loss", "mcc_loss", "nacl_loss",
    "soft_cl_dice_loss", "soft_dice_cl_dice_loss",
    "skeleton_recall_loss", "dice_ce_skeleton_recall_loss", "boundary_dou_loss", "cb_dice_loss",
]
