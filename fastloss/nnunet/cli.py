"""Command line: ``python -m fastloss.nnunet train|list``.

``train DATASET CONFIGURATION FOLD --loss NAME [--nnunet-values] [--epochs N] [--iterations N]
[--val-iterations N] [--skip-validation] [nnU-Net's nnUNetv2_train options: -p, -pretrained_weights, -num_gpus,
--npz, --c, --val, --val_best, --disable_checkpointing, -device]`` runs nnU-Net's own ``nnUNetv2_train`` with the trainer
``nnUNetTrainer_fastloss_<NAME>``. nnU-Net looks trainers up by name in its package folder; this command makes
nnU-Net's lookup (``run_training.recursive_find_trainer_class_by_name``) resolve the fastloss names first and
wraps its DDP worker so that spawned workers do the same. nnU-Net's folder is never written to.

``predict -i IN -o OUT -d DATASET -c CONFIGURATION -f FOLD --loss NAME [--nnunet-values] [nnU-Net's
nnUNetv2_predict options]`` runs nnU-Net's own ``nnUNetv2_predict`` with a model trained that way (nnU-Net
looks the trainer up by name there too).

``list`` prints the loss names and their trainer names, and what the tags beside them mean.

``trainer-dir`` prints the folder to give nnU-Net as ``nnUNet_extTrainer``: with it, nnU-Net's own
``nnUNetv2_train ... -tr nnUNetTrainer_fastloss_<NAME>`` and ``nnUNetv2_predict`` find the trainers too, where
nnU-Net's lookup itself works (it imports every trainer module of nnU-Net first, and through its Primus trainers
timm and torchvision: a torchvision that does not import beside your torch stops it; ``train``/``predict`` here
resolve the fastloss names before that walk).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from ..registry import BEYOND_PAPER, PAPER_LOSSES

_ORIGINAL = {}


def install() -> None:
    """Let nnU-Net's ``run_training`` module find the fastloss trainers by name (idempotent)."""
    from . import require_nnunetv2

    require_nnunetv2()
    import nnunetv2.run.run_training as rt

    from .trainers import parse_trainer_name, trainer_class

    import nnunetv2.inference.predict_from_raw_data as pr

    if "find" in _ORIGINAL:
        return
    _ORIGINAL["find"] = rt.recursive_find_trainer_class_by_name
    _ORIGINAL["run_ddp"] = rt.run_ddp

    def find(name: str, *args, **kwargs):
        parsed = parse_trainer_name(name)
        if parsed is not None:
            return trainer_class(parsed[0], parsed[1])
        return _ORIGINAL["find"](name, *args, **kwargs)

    rt.recursive_find_trainer_class_by_name = find
    pr.recursive_find_trainer_class_by_name = find
    rt.run_ddp = _run_ddp


def _run_ddp(rank, *args):
    """nnU-Net's DDP worker, after installing the lookup in the spawned process (it starts unpatched)."""
    install()
    return _ORIGINAL["run_ddp"](rank, *args)


def _positive(s: str) -> int:
    v = int(s)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {v}")
    return v


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m fastloss.nnunet",
                                description="nnU-Net v2 with the paper's losses and those after it")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="nnUNetv2_train with a fastloss trainer (other options go to nnU-Net)")
    t.add_argument("dataset_name_or_id")
    t.add_argument("configuration")
    t.add_argument("fold")
    t.add_argument("--loss", required=True, help="a loss name: the paper's or one after it (see `list`)")
    t.add_argument("--nnunet-values", action="store_true", help="nnU-Net's value convention (-Dice)")
    t.add_argument("--epochs", type=_positive, help="instead of nnU-Net's 1000")
    t.add_argument("--iterations", type=_positive, help="training iterations per epoch instead of 250")
    t.add_argument("--val-iterations", type=_positive, help="validation iterations per epoch instead of 50")
    t.add_argument("--skip-validation", action="store_true",
                   help="skip nnU-Net's final validation after training (short runs)")
    pr = sub.add_parser("predict", help="nnUNetv2_predict with a model of a fastloss trainer (other options go "
                        "to nnU-Net: -i, -o, -d, -c, -f, ...)")
    pr.add_argument("--loss", required=True, help="the loss the model was trained with")
    pr.add_argument("--nnunet-values", action="store_true", help="the model was trained with --nnunet-values")
    sub.add_parser("list", help="the loss names and their trainer names")
    sub.add_parser("trainer-dir", help="the folder for nnU-Net's nnUNet_extTrainer variable (for nnUNetv2_train "
                   "-tr nnUNetTrainer_fastloss_<Name>)")
    return p


LIST_LEGEND = """\
Tags:
  [regions]        also trains nnU-Net's region-based datasets (dataset.json with "regions_class_order":
                   sigmoid outputs, every region kept); untagged losses take a softmax over classes and
                   train label datasets only.
  [regions, no ignore label]
                   region-based training, but not with an ignore label (its statistics cannot mask voxels).
  [nnunet-values]  --nnunet-values (trainer ..._nnUNetValues) logs nnU-Net's own numbers for this loss
                   (its Dice part is -Dice, fastloss's 1 - Dice: the same gradients).
  [after the paper] a loss published after the paper (fastloss.registry.BEYOND_PAPER), its authors' or
                   MONAI's settings with nnU-Net's batch Dice and ignore label; label datasets only. The
                   skeleton losses make their target from the full-resolution labels, as their authors' trainer.
Train: python -m fastloss.nnunet train DATASET CONFIGURATION FOLD --loss NAME [-device cpu]
   or: nnUNet_extTrainer="$(python -m fastloss.nnunet trainer-dir)" nnUNetv2_train DATASET CONFIGURATION FOLD -tr TRAINER
       (nnU-Net's own command: needs a torchvision that imports beside your torch)"""


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point; returns the exit status.

    Raises:
        SystemExit: bad arguments (argparse), or an unknown loss name (the message lists the known ones).
        ImportError: nnunetv2 is not installed (the message names the extra).
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest = _parser().parse_known_args(argv)
    from .losses import canonical_name, trainer_suffix

    if args.command == "list":
        from .losses import NNUNET_VALUE_LOSSES, REGION_LOSSES

        for name in list(PAPER_LOSSES) + list(BEYOND_PAPER):
            notes = []
            if name in REGION_LOSSES:
                notes.append("regions" if REGION_LOSSES[name] else "regions, no ignore label")
            if name in NNUNET_VALUE_LOSSES:
                notes.append("nnunet-values")
            if name in BEYOND_PAPER:
                notes.append("after the paper")
            tail = "".join(f"  [{n}]" for n in notes)
            print(f"{name:26s} nnUNetTrainer_fastloss_{trainer_suffix(name)}{tail}")
        print()
        print(LIST_LEGEND)
        return 0
    if args.command == "trainer-dir":
        from . import EXT_TRAINER_DIR

        print(EXT_TRAINER_DIR)
        return 0
    if rest and args.command not in ("train", "predict"):
        _parser().error(f"unrecognized arguments: {' '.join(rest)}")
    try:
        canon = canonical_name(args.loss)
    except ValueError as e:
        _parser().error(str(e))
    install()
    from .trainers import trainer_class

    try:
        cls = trainer_class(canon, args.nnunet_values)
    except ValueError as e:
        _parser().error(str(e))
    if "-tr" in rest:
        _parser().error("-tr is chosen by --loss")
    if args.command == "predict":
        import nnunetv2.inference.predict_from_raw_data as pr

        sys.argv = ["nnUNetv2_predict", *rest, "-tr", cls.__name__]
        pr.predict_entry_point()
        return 0
    for env, value in (("FASTLOSS_NNUNET_EPOCHS", args.epochs), ("FASTLOSS_NNUNET_ITERATIONS", args.iterations),
                       ("FASTLOSS_NNUNET_VAL_ITERATIONS", args.val_iterations)):
        if value is not None:
            os.environ[env] = str(value)
    if args.skip_validation:
        os.environ["FASTLOSS_NNUNET_SKIP_VALIDATION"] = "1"
    import nnunetv2.run.run_training as rt

    sys.argv = ["nnUNetv2_train", args.dataset_name_or_id, args.configuration, args.fold, "-tr", cls.__name__, *rest]
    rt.run_training_entry()
    return 0
