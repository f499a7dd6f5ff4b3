"""The Skeleton Recall trainer's loss part in an nnU-Net step with deep supervision: the authors' path against
fastloss's ``nnUNetTrainer_fastloss_DiceCESkeletonRecall``.

One training step's target-and-loss work for a batch of label patches (tubular labels of
``bench_skeleton.tubular``, classes 1 and 2) and nnU-Net's four deep-supervision outputs (full, 1/2, 1/4, 1/8
resolution; weights 1/2^i, the lowest 0, normalised), logits float32, forward + backward to the outputs:

- ``authors``: their loader's work (``SkeletonTransform(do_tube=True)`` per sample: scikit-image skeleton, two
  dilations, times the labels; then nnU-Net's ``DownsampleSegForDSTransform`` of the segmentation and the
  skeleton per sample) and their loss (``DeepSupervisionWrapper`` of nnU-Net's ``DC_and_CE_loss`` plus their
  ``SoftSkeletonRecallLoss``, transcribed, ``batch_dice`` False, smoothing 1e-5);
- ``fastloss``: ``fastloss.nnunet.build_nnunet_loss("DiceCESkeletonRecall", deep_supervision_weights=w)`` on the
  one full-resolution label patch (the trainers' targets-on-device path: the compiled skeleton of the full patch,
  downsampled with the labels, one statistics pass per scale for Dice + CE and a sparse one for the recall).

Both are checked to give the same value (fastloss's = the authors' + 2: ``1 - dice``, ``1 - recall``) and the same
gradient before they are timed; the two alternate call by call, so load changes hit both alike.

Rows (``nnunet_skeleton.csv``): median/p20/p80 ms per provider and "x authors".

    python benchmarks/bench_nnunet_skeleton.py [--size 64] [--batch 2] [--reps 7] [--threads N] [--record]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402
from bench_skeleton import authors_transform, tubular  # noqa: E402

NUM_CLASSES = 3
SCALES = [[1.0] * 3, [0.5] * 3, [0.25] * 3, [0.125] * 3]


def ds_weights(n: int) -> list:
    w = np.array([1 / 2**i for i in range(n)])
    w[-1] = 0
    return list(w / w.sum())


def authors_recall(x, skel, smooth=1e-5):
    """SoftSkeletonRecallLoss(apply_nonlin=softmax, do_bg=False, batch_dice=False, smooth) forward, transcribed."""
    p = torch.softmax(x, 1)[:, 1:]
    axes = list(range(2, x.ndim))
    with torch.no_grad():
        y = torch.zeros(x.shape, dtype=x.dtype).scatter_(1, skel.long(), 1)[:, 1:]
        sum_gt = y.sum(axes)
    inter = (p * y).sum(axes)
    return -((inter + smooth) / torch.clip(sum_gt + smooth, 1e-8)).mean()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=64, help="patch edge (S^3)")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave torch's default)")
    common.add_record_argument(p)
    args = p.parse_args(argv)
    if args.record:
        common.set_record(True)
    if args.threads:
        torch.set_num_threads(args.threads)

    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    from fastloss.nnunet import build_nnunet_loss

    shape = (args.size,) * 3
    seg = torch.from_numpy(np.stack([tubular(shape, 10 + b) for b in range(args.batch)])[:, None]).to(torch.int16)
    g = torch.Generator().manual_seed(0)
    outs = [torch.randn((args.batch, NUM_CLASSES) + tuple(round(s * f) for s, f in zip(shape, sc)), generator=g)
            for sc in SCALES]
    w = ds_weights(len(SCALES))
    down = DownsampleSegForDSTransform(ds_scales=SCALES)
    dc_ce = DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False, "ddp": False}, {}, weight_ce=1,
                           weight_dice=1, dice_class=MemoryEfficientSoftDiceLoss)
    theirs = DeepSupervisionWrapper(lambda x, t, s: dc_ce(x, t) + authors_recall(x, s), w)
    ours = build_nnunet_loss("DiceCESkeletonRecall", batch_dice=False, deep_supervision_weights=w)

    def stacked(per_sample):
        return [torch.stack([q[i] for q in per_sample]) for i in range(len(SCALES))]

    def authors():
        skel = torch.from_numpy(authors_transform(seg[:, 0].numpy()))[:, None]  # the loader, per sample
        t = stacked([down(segmentation=seg[b])["segmentation"] for b in range(args.batch)])
        s = stacked([down(segmentation=skel[b])["segmentation"] for b in range(args.batch)])
        xs = [o.clone().requires_grad_(True) for o in outs]
        v = theirs(xs, [q.float() for q in t], s)
        v.backward()
        return v.detach(), [x.grad for x in xs[:3]]

    def fastloss_():
        xs = [o.clone().requires_grad_(True) for o in outs]
        v = ours(xs, seg)
        v.backward()
        return v.detach(), [x.grad for x in xs[:3]]

    (va, ga), (vb, gb) = authors(), fastloss_()
    agree = abs(float(vb) - float(va) - 2.0) < 1e-4 and all(
        torch.allclose(a, b, rtol=1e-4, atol=1e-7) for a, b in zip(ga, gb))
    if not agree:
        raise SystemExit(f"the providers disagree: authors {float(va):.6f} + 2 vs fastloss {float(vb):.6f}")
    fns = {"authors": authors, "fastloss": fastloss_}
    samples = {n: [] for n in fns}
    for _ in range(args.reps):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[n].append((time.perf_counter() - t0) * 1e3)
    rows = []
    base = common.summarize(samples["authors"])["median_ms"]
    for n in fns:
        stats = common.summarize(samples[n])
        row = {"bench": "nnunet_skeleton_recall", "provider": n, "loss": "DiceCESkeletonRecall",
               "labels": "tubular", "shape": f"{args.batch}x{NUM_CLASSES}x" + "x".join(map(str, shape)),
               "outputs": len(SCALES), "threads": torch.get_num_threads(), **stats,
               "x_authors": round(base / stats["median_ms"], 2)}
        rows.append(common.stamp(row, "cpu"))
        print(f"{n:9s} {stats['median_ms']:9.1f} ms (p20 {stats['p20_ms']:.1f}, p80 {stats['p80_ms']:.1f})  "
              f"{row['x_authors']:.2f}x authors  [{torch.get_num_threads()} threads]")
    path = common.append_csv("nnunet_skeleton.csv", rows)
    print(f"rows -> {path} (run {common.RUN_ID})")


if __name__ == "__main__":
    main()
