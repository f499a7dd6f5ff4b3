"""DiceCE + Skeleton Recall from one statistics pass (issue 22's "reads the logits once"), against its parts.

Logits (2, 3, S^3) float32 (S = ``--size``, 96) of organ-like labels (``bench_skeleton.organ_like``), forward +
backward, on the CPU with ``--threads`` torch threads (2) or on a CUDA device (``--device cuda``). Rows, all with
the tubed skeleton given (``skeleton=``) unless the case says "skeleton inside":

- ``DiceCE``: ``fastloss.DiceCELoss`` as the compound configures it (the floor of the compound);
- ``SkeletonRecall``: ``fastloss.SkeletonRecallLoss`` alone;
- ``DiceCESkeletonRecall parts``: the compound as the sum of its parts (``_one_pass = False``: DiceCE's pass and,
  on CPU tensors, the recall from the tube voxels' gathered logits; elsewhere a second statistics pass);
- ``DiceCESkeletonRecall one pass``: the compound from one statistics pass (the skeleton as the labels' aux map).

Median/p20/p80 wall ms. Appends to benchmarks/results/local/auxpass.csv (with --record: the committed
benchmarks/results/auxpass.csv) and prints a table.

    python benchmarks/bench_auxpass.py [--reps 15] [--size 96] [--threads 2] [--device cpu] [--record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from bench_skeleton import organ_like  # noqa: E402
from fastloss import DiceCELoss, SkeletonRecallLoss  # noqa: E402
from fastloss.losses.topology import DiceCESkeletonRecallLoss  # noqa: E402
from fastloss.skeleton import tubed_skeleton  # noqa: E402


def run(reps: int = 15, size: int = 96, threads: int = 2, device: str = "cpu"):
    if device == "cpu":
        torch.set_num_threads(threads)
    shape = (size, size, size)
    lab = torch.from_numpy(np.stack([organ_like(shape, seed) for seed in (1, 2)])).to(device)
    C = 3
    x = torch.randn((2, C) + shape, generator=torch.Generator().manual_seed(0)).to(device).requires_grad_(True)
    skel = tubed_skeleton(lab, 3)
    y = lab.unsqueeze(1)
    smooth = 1e-5
    dice_ce = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, smooth_nr=smooth, smooth_dr=smooth)
    srec = SkeletonRecallLoss(smooth=smooth)
    parts = DiceCESkeletonRecallLoss()
    parts._one_pass = False
    one = DiceCESkeletonRecallLoss()

    def step(fn):
        def go():
            x.grad = None
            fn().backward()
        return go

    cases = [
        ("DiceCE", step(lambda: dice_ce(x, y))),
        ("SkeletonRecall", step(lambda: srec(x, y, skeleton=skel))),
        ("DiceCESkeletonRecall parts", step(lambda: parts(x, y, skeleton=skel))),
        ("DiceCESkeletonRecall one pass", step(lambda: one(x, y, skeleton=skel))),
        ("DiceCESkeletonRecall parts, skeleton inside", step(lambda: parts(x, y))),
        ("DiceCESkeletonRecall one pass, skeleton inside", step(lambda: one(x, y))),
    ]
    # the two compounds agree before anything is timed
    with torch.no_grad():
        a, b = float(parts(x, y, skeleton=skel)), float(one(x, y, skeleton=skel))
    rows = []
    tag = f"2x{C}x{size}^3"
    for name, fn in cases:
        base = {"bench": "auxpass", "case": name, "shape": tag, "threads": threads if device == "cpu" else ""}
        if abs(a - b) > 1e-4 * max(1.0, abs(a)):
            rows.append(common.stamp(common.error_row(base, AssertionError(f"one pass {b} != parts {a}")), device))
            continue
        st = common.time_wall(fn, device, reps=reps, warmup=2)
        rows.append(common.stamp(dict(base, median_ms=round(st["median_ms"], 3), p20_ms=round(st["p20_ms"], 3),
                                      p80_ms=round(st["p80_ms"], 3), reps=st["reps"], spread=st["spread"]), device))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    if args.record:
        common.set_record(True)
    rows = run(args.reps, args.size, args.threads, args.device)
    path = common.append_csv("auxpass.csv", rows)
    print(f"{'case':48s} {'median':>9s} {'p20':>9s} {'p80':>9s}  load")
    for r in rows:
        if "median_ms" not in r:
            print(f"{r['case']:48s}  {r.get('error', '')}")
            continue
        print(f"{r['case']:48s} {r['median_ms']:9.2f} {r['p20_ms']:9.2f} {r['p80_ms']:9.2f}  {r['load_avg_1m']}")
    print(f"rows appended to {path}")


if __name__ == "__main__":
    main()
