"""Command line of the odyssey runner: ``python -m fastloss.odyssey [--mode quick|full] [options]``, and
``python -m fastloss.odyssey readme-table RUN_DIR [--write README.md]`` (:mod:`fastloss.odyssey.report`)."""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from typing import List, Optional

from .runner import BEYOND_LOSSES, MODES, TABLE2_LOSSES, run
from .synthetic import TASKS


def _ints(text: str, n: int, what: str):
    try:
        vals = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} must be integers like 32 or 32,32,32, got {text!r}") from None
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n or min(vals) < 1:
        raise argparse.ArgumentTypeError(f"{what} must be one or {n} positive integers, got {text!r}")
    return vals


def _names(text: str):
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fastloss.odyssey",
        description="Train, evaluate and rank segmentation losses as Ma et al. (2021) did, on synthetic tasks "
        "modelled on the paper's four or on your own data; write CSV tables and plots.",
    )
    p.add_argument("--mode", choices=sorted(MODES), default="quick",
                   help="quick: ~10 min on a 2-core CPU, 5 losses, 32^3 volumes; full: the 20 losses of Table 2, "
                   "96^3 volumes, for a GPU (default quick)")
    p.add_argument("--losses", type=_names, help="comma-separated loss names (fastloss.get_loss: the paper's, or "
                   f"those after it: {', '.join(BEYOND_LOSSES)}); 'table2' stands for the paper's 20, 'beyond' for "
                   "those after it (both may be mixed with names)")
    p.add_argument("--tasks", type=_names, help=f"comma-separated synthetic tasks (default all: {', '.join(TASKS)})")
    p.add_argument("--data", help="your dataset instead: an nnU-Net raw folder (dataset.json, imagesTr, labelsTr) "
                   "or a folder with images/ and labels/ (NIfTI or .npy)")
    p.add_argument("--test-fraction", type=float, help="held-out share of --data (default 0.2, as the paper)")
    p.add_argument("--size", type=lambda t: _ints(t, 3, "--size"), help="synthetic volume size, e.g. 48 or 48,64,64")
    p.add_argument("--patch", type=lambda t: _ints(t, 3, "--patch"), help="training patch size")
    p.add_argument("--train-cases", type=int, help="synthetic training cases per task")
    p.add_argument("--test-cases", type=int, help="synthetic test cases per task")
    p.add_argument("--epochs", type=int, help="epochs (the DiceBD schedule and the learning-rate plateau count them)")
    p.add_argument("--steps", type=int, help="training steps per epoch")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--lr", type=float, help="Adam's initial learning rate (the paper searched 3e-3, 3e-4, 3e-5)")
    p.add_argument("--filters", type=lambda t: tuple(int(v) for v in t.split(",")), help="feature maps per U-Net level")
    p.add_argument("--seed", type=int)
    p.add_argument("--device", help="cpu or cuda (default: cuda for full, cpu for quick)")
    p.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's); 1 is often faster on a busy CPU")
    p.add_argument("--timing-steps", type=int, help="side-by-side timed steps per loss (0: none)")
    p.add_argument("--no-monai", action="store_true", help="do not time MONAI's losses beside ours")
    p.add_argument("--tolerance", type=float, help="NSD tolerance in spacing units (default 1, the paper's 1 mm)")
    p.add_argument("--out", help="output root (default odyssey-runs; each run writes into <out>/<run id>)")
    p.add_argument("--run-id")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true")
    return p


def config_from_args(args: argparse.Namespace):
    cfg = MODES[args.mode]
    tc = cfg.train
    tc = replace(tc, **{k: v for k, v in dict(
        epochs=args.epochs, steps_per_epoch=args.steps, batch_size=args.batch_size, patch=args.patch, lr=args.lr,
        seed=args.seed, device=args.device).items() if v is not None})
    losses = args.losses
    if losses is not None:  # the groups 'table2' and 'beyond' expand in place
        groups = {"table2": TABLE2_LOSSES, "beyond": BEYOND_LOSSES}
        losses = tuple(n for name in losses for n in groups.get(name.lower(), (name,)))
    changes = dict(losses=losses, tasks=args.tasks, data=args.data, test_fraction=args.test_fraction, size=args.size,
                   n_train=args.train_cases, n_test=args.test_cases, filters=args.filters,
                   timing_steps=args.timing_steps, threads=args.threads, tolerance=args.tolerance, out=args.out)
    cfg = replace(cfg, train=tc, **{k: v for k, v in changes.items() if v is not None})
    return replace(cfg, monai=cfg.monai and not args.no_monai, plots=not args.no_plots, progress=not args.no_progress)


def _readme_table(argv: List[str]) -> int:
    """``readme-table RUN_DIR [--write README.md]``: the README passage of a recorded run, from its files."""
    from .report import readme_block, write_readme

    p = argparse.ArgumentParser(prog="python -m fastloss.odyssey readme-table",
                                description="Print the README passage of a recorded run (from its CSV files and "
                                "config.json); --write replaces the passage between its markers in a README.")
    p.add_argument("run_dir")
    p.add_argument("--write", metavar="README", help="the README whose odyssey passage to replace")
    args = p.parse_args(argv)
    try:
        block = write_readme(args.write, args.run_dir) if args.write else readme_block(args.run_dir)
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(block)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["readme-table"]:
        return _readme_table(argv[1:])
    args = build_parser().parse_args(argv)
    try:
        cfg = config_from_args(args)
        if cfg.train.device.startswith("cuda"):
            import torch

            if not torch.cuda.is_available():
                print("error: no CUDA device; pass --device cpu (the full mode is meant for a GPU)", file=sys.stderr)
                return 2
        run(cfg, run_id=args.run_id)
    except (ValueError, TypeError, ImportError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
