"""nnU-Net v2 trainers for the paper's losses and those after it (needs the ``[nnunet]`` extra: nnunetv2 2.8.1).

:func:`trainer_class` makes an ``nnUNetTrainer`` subclass per loss name, ``nnUNetTrainer_fastloss_<Name>``
(``..._nnUNetValues`` with nnU-Net's value convention). Its ``_build_loss`` is
:func:`fastloss.nnunet.losses.build_nnunet_loss` with what the plans and the label manager say, deep supervision
weights computed exactly as nnU-Net's ``_build_loss`` does, and the batch statistics all-reduced under DDP. Losses
with an epoch schedule (DiceBD's α) step it at the end of every epoch. Everything else (network, data, optimiser,
validation, checkpoints) is nnU-Net's.

nnU-Net finds trainers by name inside its own package folder and in the folders of its ``nnUNet_extTrainer``
environment variable: ``nnUNet_extTrainer=$(python -m fastloss.nnunet trainer-dir)``
(:data:`fastloss.nnunet.EXT_TRAINER_DIR`) lets
nnU-Net's own commands find these names; ``python -m fastloss.nnunet train`` (see :mod:`fastloss.nnunet.cli`)
resolves them without either.

Targets on the loss's device: nnU-Net's data loader makes one target per deep-supervision output
(``DownsampleSegForDSTransform``) and, for region-based datasets, a one-hot region tensor
(``ConvertSegmentationToRegionsTransform``) on the CPU, for every patch. These trainers switch both transforms off
(training and validation) and hand the loss the one integer label patch: :class:`fastloss.DeepSupervisionLoss`
downsamples it on the logits' device (``nearest-exact``, as nnU-Net's transform), and a region loss reads the
labels through a label-to-regions table (``regions=``), so the regions are applied after downsampling, from
integer labels, and the ignore label is an exact ``ignore_index``. The skeleton losses (``SkeletonRecall``,
``DiceCESkeletonRecall``) make their tubed skeleton there too, from the full-resolution labels, and downsample it
with them (:class:`fastloss.nnunet.losses.SkeletonTargetLoss`; the authors' trainer does both in its loader). The
online pseudo-Dice of validation is
computed from the same labels on the device. ``FASTLOSS_NNUNET_TARGETS_ON_DEVICE=0`` keeps nnU-Net's loader
transforms (and its one-hot region targets).

Environment knobs (read when a trainer is built, inherited by DDP workers): ``FASTLOSS_NNUNET_EPOCHS``,
``FASTLOSS_NNUNET_ITERATIONS`` and ``FASTLOSS_NNUNET_VAL_ITERATIONS`` replace nnU-Net's 1000 epochs, 250 training
and 50 validation iterations per epoch (for short runs and tests); ``FASTLOSS_NNUNET_SKIP_VALIDATION=1`` skips the
final validation (the sliding-window prediction of every validation case) after training.
"""

from __future__ import annotations

import os
from typing import Dict

from . import require_nnunetv2
from .._validation import check_regions
from .losses import build_nnunet_loss, canonical_name, trainer_suffix

require_nnunetv2()

import numpy as np  # noqa: E402
import torch  # noqa: E402
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer  # noqa: E402

__all__ = ["PREFIX", "FastlossTrainer", "trainer_class", "trainer_name", "parse_trainer_name", "all_trainer_classes"]

PREFIX = "nnUNetTrainer_fastloss_"
VALUES_SUFFIX = "_nnUNetValues"
_ENV_INT = {
    "FASTLOSS_NNUNET_EPOCHS": "num_epochs",
    "FASTLOSS_NNUNET_ITERATIONS": "num_iterations_per_epoch",
    "FASTLOSS_NNUNET_VAL_ITERATIONS": "num_val_iterations_per_epoch",
}


class FastlossTrainer(nnUNetTrainer):
    """``nnUNetTrainer`` whose loss is fastloss's ``fastloss_loss`` (a paper loss or one after the paper) with
    nnU-Net's conventions, and whose targets are made on the loss's device (see the module docstring)."""

    fastloss_loss: str = "DiceCE"
    nnunet_values: bool = False

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")) -> None:
        # nnU-Net records its __init__ arguments by name (my_init_kwargs): keep its exact signature
        super().__init__(plans, configuration, fold, dataset_json, device)
        for env, attr in _ENV_INT.items():
            if os.environ.get(env):
                value = int(os.environ[env])
                if value < 1:
                    raise ValueError(f"{env} must be >= 1, got {value}")
                setattr(self, attr, value)
        flag = os.environ.get("FASTLOSS_NNUNET_TARGETS_ON_DEVICE", "1").strip()
        if flag not in ("0", "1"):
            raise ValueError(f"FASTLOSS_NNUNET_TARGETS_ON_DEVICE must be 0 or 1, got {flag!r}")
        self.targets_on_device = flag == "1"

    # ------------------------------------------------------------------ targets made on the loss's device
    def get_training_transforms(self, patch_size, rotation_for_DA, deep_supervision_scales, mirror_axes,
                                do_dummy_2d_data_aug, **kwargs):
        """nnU-Net's training transforms, without the deep-supervision downsampling and the region conversion
        when the targets are made on the device (nnU-Net's own method is a staticmethod: called the same way)."""
        if getattr(self, "targets_on_device", False):
            deep_supervision_scales = None
            kwargs["regions"] = None
        return nnUNetTrainer.get_training_transforms(patch_size, rotation_for_DA, deep_supervision_scales,
                                                     mirror_axes, do_dummy_2d_data_aug, **kwargs)

    def get_validation_transforms(self, deep_supervision_scales, **kwargs):
        """nnU-Net's validation transforms, without the same two transforms (see :meth:`get_training_transforms`)."""
        if getattr(self, "targets_on_device", False):
            deep_supervision_scales = None
            kwargs["regions"] = None
        return nnUNetTrainer.get_validation_transforms(deep_supervision_scales, **kwargs)

    def validation_step(self, batch: dict) -> dict:
        """nnU-Net's validation step (loss and the online pseudo-Dice counts) on the one integer label patch."""
        if not self.targets_on_device:
            return super().validation_step(batch)
        from nnunetv2.utilities.helpers import dummy_context

        data = batch["data"].to(self.device, non_blocking=True)
        target = batch["target"].to(self.device, non_blocking=True)
        with torch.autocast(self.device.type, enabled=True) if self.device.type == "cuda" else dummy_context():
            output = self.network(data)
            del data
            value = self.loss(output, target)
        if self.enable_deep_supervision:
            output = output[0]
        tp, fp, fn = online_counts(output, target, self.label_manager)
        return {"loss": value.detach().cpu().numpy(), "tp_hard": tp.cpu().numpy(), "fp_hard": fp.cpu().numpy(),
                "fn_hard": fn.cpu().numpy()}

    def deep_supervision_weights(self):
        """nnU-Net's weights (``nnUNetTrainer._build_loss``): ``1/2^i``, the lowest resolution 0 (1e-6 under DDP
        without torch.compile, nnU-Net's fix for DDP's unused-parameter check), normalised; None without deep
        supervision."""
        if not self.enable_deep_supervision:
            return None
        n = len(self._get_deep_supervision_scales())
        w = np.array([1 / (2**i) for i in range(n)])
        w[-1] = 1e-6 if (self.is_ddp and not self._do_i_compile()) else 0
        return (w / w.sum()).tolist()

    def _build_loss(self):
        lm = self.label_manager
        return build_nnunet_loss(
            self.fastloss_loss,
            batch_dice=bool(self.configuration_manager.batch_dice),
            ignore_label=lm.ignore_label,
            has_regions=lm.has_regions,
            deep_supervision_weights=self.deep_supervision_weights(),
            ddp=self.is_ddp,
            nnunet_values=self.nnunet_values,
            regions=lm.foreground_regions if lm.has_regions and self.targets_on_device else None,
            num_classes=lm.num_segmentation_heads,
        )

    def perform_actual_validation(self, save_probabilities: bool = False):
        if os.environ.get("FASTLOSS_NNUNET_SKIP_VALIDATION", "0") == "1":  # --skip-validation (short runs)
            self.print_to_log_file("fastloss: final validation skipped (--skip-validation)")
            return
        return super().perform_actual_validation(save_probabilities)

    def on_epoch_end(self):
        for m in self.loss.modules():  # epoch schedules (DiceBD's alpha)
            step = getattr(m, "step_epoch", None)
            if callable(step) and m is not self.loss:
                step()
        super().on_epoch_end()


def online_counts(output: torch.Tensor, labels: torch.Tensor, label_manager):
    """The per-channel ``(tp, fp, fn)`` of nnU-Net's online pseudo-Dice from the full-resolution ``output`` and
    the integer ``labels`` ``(B, 1, *spatial)``, summed over the batch and the voxels, as nnU-Net's
    ``validation_step`` counts them on its own targets: regions are ``sigmoid > 0.5`` against each region's
    label set, classes the argmax against the label without the background channel; ignored voxels are not
    counted."""
    lab = labels[:, 0].round().long() if labels.is_floating_point() else labels[:, 0].long()
    ignore = label_manager.ignore_label if label_manager.has_ignore_label else None
    counted = None if ignore is None else (lab != ignore)
    if label_manager.has_regions:
        pred = torch.sigmoid(output.float()) > 0.5  # (B, R, *spatial)
        regions = check_regions([list(r) if not isinstance(r, int) else r for r in label_manager.foreground_regions])
        truth = torch.stack([torch.isin(lab, torch.tensor(r, device=lab.device)) for r in regions], dim=1)
        first = 0
    else:
        C = output.shape[1]
        pred = torch.nn.functional.one_hot(output.argmax(1), C).movedim(-1, 1).bool()
        truth = torch.nn.functional.one_hot(lab.clamp(0, C - 1), C).movedim(-1, 1).bool() & (lab < C).unsqueeze(1)
        first = 1  # the background is not reported (nnU-Net's [1:])
    if counted is not None:
        pred = pred & counted.unsqueeze(1)
        truth = truth & counted.unsqueeze(1)
    axes = [0] + list(range(2, pred.ndim))
    tp = (pred & truth).sum(axes)
    fp = (pred & ~truth).sum(axes)
    fn = (~pred & truth).sum(axes)
    return tp[first:], fp[first:], fn[first:]


_CLASSES: Dict[str, type] = {}


def trainer_name(loss: str, nnunet_values: bool = False) -> str:
    """``nnUNetTrainer_fastloss_<Name>`` (with ``_nnUNetValues`` for nnU-Net's value convention).

    Raises:
        ValueError: an unknown loss name (lists the known ones).
    """
    return PREFIX + trainer_suffix(loss) + (VALUES_SUFFIX if nnunet_values else "")


def parse_trainer_name(name: str):
    """``(canonical loss name, nnunet_values)`` for a name made by :func:`trainer_name`, or None."""
    if not isinstance(name, str) or not name.startswith(PREFIX):
        return None
    rest = name[len(PREFIX):]
    values = rest.endswith(VALUES_SUFFIX)
    if values:
        rest = rest[: -len(VALUES_SUFFIX)]
    from ..registry import BEYOND_PAPER, PAPER_LOSSES

    for canon in list(PAPER_LOSSES) + list(BEYOND_PAPER):
        if trainer_suffix(canon) == rest:
            return canon, values
    return None


def trainer_class(loss: str, nnunet_values: bool = False) -> type:
    """The trainer class for loss ``loss``, a paper loss or one after the paper (made once, then cached).

    Raises:
        ValueError: an unknown loss name (lists the known ones), or ``nnunet_values`` for a loss nnU-Net does
            not have.
    """
    canon = canonical_name(loss)
    if nnunet_values:
        from .losses import NNUNET_VALUE_LOSSES

        if canon not in NNUNET_VALUE_LOSSES:
            raise ValueError(f"--nnunet-values: nnU-Net has no loss {canon!r}; it has {', '.join(NNUNET_VALUE_LOSSES)}")
    name = trainer_name(canon, nnunet_values)
    if name not in _CLASSES:
        from ..registry import PAPER_LOSSES

        what = "the paper's configuration" if canon in PAPER_LOSSES else "after the paper: its authors' settings"
        _CLASSES[name] = type(name, (FastlossTrainer,), {
            "fastloss_loss": canon, "nnunet_values": bool(nnunet_values), "__module__": __name__,
            "__doc__": f"nnU-Net v2 trainer with fastloss's {canon!r} ({what}).",
        })
    return _CLASSES[name]


def all_trainer_classes() -> Dict[str, type]:
    """``{trainer name: class}`` for every paper loss and every loss after the paper (and ``..._nnUNetValues`` for
    the losses nnU-Net has)."""
    from ..registry import BEYOND_PAPER, PAPER_LOSSES
    from .losses import NNUNET_VALUE_LOSSES

    out = {}
    for canon in list(PAPER_LOSSES) + list(BEYOND_PAPER):
        for values in ((False, True) if canon in NNUNET_VALUE_LOSSES else (False,)):
            cls = trainer_class(canon, values)
            out[cls.__name__] = cls
    return out
