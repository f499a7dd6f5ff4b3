"""Skeletons and the Skeleton Recall loss on the CPU: fastloss against scikit-image and the authors' path.

Two (2, 96^3) label batches: organ-like (a few large smooth blobs, two classes) and tubular (random tubes of
radius 2-5 voxels, vessels/airways). Rows:

- ``skeletonize``: scikit-image 0.26's ``skeletonize`` on each volume in turn (one thread, as a dataloader
  worker runs it) against ``fastloss.skeletonize`` of the batch on 1 and on all threads; fastloss is timed
  only where it equals scikit-image voxel for voxel (an error row where it does not).
- ``skeleton_recall``: one training step's loss part for logits (2, 3, 96^3) float32, forward + backward, on 1
  and on all torch threads (both sides alike): the authors' path (their ``SkeletonTransform``: scikit-image skeleton, two dilations, times the labels, per
  sample; then their ``SoftSkeletonRecallLoss`` in torch ops) against ``fastloss.SkeletonRecallLoss``
  (skeleton inside the loss, compiled statistics pass).
- ``skeletonize`` rows of ``method="parallel"`` (the GPU's thinning, report only: in 3D not scikit-image's
  voxels, see fastloss/skeleton.py): its host driver on all threads, and where a GPU and the CUDA build are
  there, the CUDA kernels on the batch (device-resident masks, the skeleton back on the GPU).

- ``cbdice``: the cbDice loss (Shi et al. 2024), forward + backward, logits (2, 3, S^3) of the tubular labels
  (S = ``--cbdice-size``, 64): the authors' ``SoftcbDiceLoss`` (transcribed: their soft skeleton in torch ops,
  MONAI's scipy EDT, per-sample loops) against ``fastloss.CbDiceLoss`` (compiled soft skeleton and EDT).

Median/p20/p80 wall ms and "x baseline". Appends to benchmarks/results/local/skeleton.csv (with --record: the
committed benchmarks/results/skeleton.csv) and prints a table.

    python benchmarks/bench_skeleton.py [--reps 7] [--size 96] [--cbdice-size 64] [--parts skeletonize,...] [--record]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import fastloss  # noqa: E402
from fastloss import SkeletonRecallLoss, skeletonize  # noqa: E402

TARGETS = {"skeletonize": 10.0, "skeleton_recall": 5.0, "cbdice": 10.0}


def organ_like(shape, seed):
    """Labels: 3-5 smooth blobs (ellipsoids with a low-frequency wobble), classes 1 and 2."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"))
    wobble = ndi.gaussian_filter(rng.standard_normal(shape).astype(np.float32), 8) * 40
    lab = np.zeros(shape, np.int64)
    for k in range(int(rng.integers(3, 6))):
        c = rng.uniform(0.25, 0.75, 3) * np.array(shape)
        r = rng.uniform(0.1, 0.22, 3) * np.array(shape)
        d = sum(((grid[i] - c[i]) / r[i]) ** 2 for i in range(3))
        lab[(d + wobble * 0.1) < 1] = 1 + k % 2
    return lab


def tubular(shape, seed, n=8):
    """Labels: ``n`` straight tubes of radius 2-5 between random points, classes 1 and 2."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.arange(s, dtype=np.float32) for s in shape], indexing="ij"), -1)
    lab = np.zeros(shape, np.int64)
    for k in range(n):
        a, b = rng.uniform(5, np.array(shape) - 5), rng.uniform(5, np.array(shape) - 5)
        d = (b - a) / max(np.linalg.norm(b - a), 1e-6)
        length = np.linalg.norm(b - a)
        rel = grid - a
        t = np.clip(rel @ d, 0, length)
        lab[np.linalg.norm(rel - t[..., None] * d, axis=-1) < rng.uniform(2, 5)] = 1 + k % 2
    return lab


# ------------------------------------------------------------------------------ the authors' path (transcribed)
def authors_transform(seg):
    """SkeletonTransform(do_tube=True) per sample of (B, *spatial) labels (numpy)."""
    from skimage.morphology import dilation
    from skimage.morphology import skeletonize as sk

    out = np.zeros(seg.shape, np.int16)
    for b in range(seg.shape[0]):
        fg = seg[b] > 0
        if fg.sum():
            s = dilation(dilation((sk(fg) > 0).astype(np.int16)))
            out[b] = s * seg[b].astype(np.int16)
    return out


def authors_loss(x, skel, smooth=1.0):
    """SoftSkeletonRecallLoss(apply_nonlin=softmax, do_bg=False, batch_dice=False) forward."""
    p = torch.softmax(x, 1)[:, 1:]
    axes = list(range(2, x.ndim))
    with torch.no_grad():
        y = torch.zeros(x.shape, dtype=torch.float32)
        y.scatter_(1, skel.long().unsqueeze(1), 1)
        y = y[:, 1:]
        sum_gt = y.sum(axes)
    inter = (p * y).sum(axes)
    return -((inter + smooth) / torch.clip(sum_gt + smooth, 1e-8)).mean()


def authors_cbdice(y_pred, y_true, iters=10, smooth=1.0):
    """SoftcbDiceLoss.forward of the cbDice authors (morphological skeleton), transcribed."""
    import torch.nn.functional as F
    from monai.transforms import distance_transform_edt

    def erode(t):
        return torch.min(torch.min(-F.max_pool3d(-t, (3, 1, 1), 1, (1, 0, 0)), -F.max_pool3d(-t, (1, 3, 1), 1, (0, 1, 0))),
                         -F.max_pool3d(-t, (1, 1, 3), 1, (0, 0, 1)))

    def soft_skel(img):
        skel = F.relu(img - F.max_pool3d(erode(img), 3, 1, 1))
        for _ in range(iters):
            img = erode(img)
            delta = F.relu(img - F.max_pool3d(erode(img), 3, 1, 1))
            skel = skel + F.relu(delta - skel * delta)
        return skel

    def weights(mask_input, skel_input, prob):
        mask, skel = ((mask_input > 0.5).int(), (skel_input > 0.5).int()) if prob else (mask_input, skel_input)
        d = distance_transform_edt(mask).float()
        d[mask == 0] = 0
        rad = torch.zeros_like(d)
        rad[skel == 1] = d[skel == 1]
        dn, rn = torch.zeros_like(d), torch.zeros_like(rad)
        for i in range(rad.shape[0]):
            r = max(rad[i].max(), 1)
            di = d[i]
            di[di > r] = r
            dn[i], rn[i] = di / r, rad[i] / r
        inv = (1 + 1e-7) / (rn**2 + 1e-7)
        inv[skel == 0] = 0
        return dn * mask_input, rn * mask_input, inv * skel_input

    def comb(a, b, c):
        out = (b * c).clone()
        m = (a != 0) & (b == 0)
        out[m] = (a * c)[m]
        return out

    fore = torch.max(y_pred[:, 1:], dim=1, keepdim=True)[0]
    p = torch.softmax(torch.cat([y_pred[:, :1], fore], dim=1), 1)[:, 1]
    y = torch.where(y_true > 0, 1, 0).squeeze(1).float()
    sp, sl = soft_skel(p.unsqueeze(1)).squeeze(1), soft_skel(y.unsqueeze(1)).squeeze(1)
    q_vl, q_slvl, q_sl = weights(y, sl, False)
    q_vp, q_spvp, q_sp = weights(p, sp, True)
    tprec = (torch.sum(q_sp * q_vl) + smooth) / (torch.sum(comb(q_spvp, q_slvl, q_sp)) + smooth)
    tsens = (torch.sum(q_sl * q_vp) + smooth) / (torch.sum(comb(q_slvl, q_spvp, q_sl)) + smooth)
    return -2.0 * (tprec * tsens) / (tprec + tsens)


def cbdice_rows(reps, size, ncpu):
    """The cbDice rows (tubular labels, 3 classes), both sides on all torch threads."""
    rows = []
    try:
        import monai  # noqa: F401
    except ImportError:
        return [common.skip_row({"bench": "cbdice", "provider": "authors"}, "monai not installed (pip install monai)")]
    shape = (size, size, size)
    lab = torch.from_numpy(np.stack([tubular(shape, seed) for seed in (1, 2)])).unsqueeze(1)
    onehot = torch.nn.functional.one_hot(lab[:, 0], 3).movedim(-1, 1).float()
    x = (3 * onehot + torch.randn(onehot.shape, generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    loss = fastloss.CbDiceLoss()
    tag = f"2x3x{size}^3"
    with torch.no_grad():
        v_theirs, v_ours = float(authors_cbdice(x, lab)), float(loss(x, lab))

    def theirs():
        x.grad = None
        authors_cbdice(x, lab).backward()

    def ours():
        x.grad = None
        loss(x, lab).backward()

    th = common.time_wall(theirs, "cpu", reps=reps, warmup=1, budget_s=90)
    rows.append(_row("cbdice", "tubular", tag, "authors (torch + MONAI scipy EDT)", ncpu, th))
    if abs((1 + v_theirs) - v_ours) > 1e-4:
        rows.append(common.stamp(common.error_row({"bench": "cbdice", "case": "tubular", "shape": tag,
                                                   "provider": "fastloss", "threads": ncpu},
                                                  AssertionError(f"loss {v_ours} != 1 + {v_theirs}")), "cpu"))
    else:
        st = common.time_wall(ours, "cpu", reps=max(reps, 10), warmup=1)
        rows.append(_row("cbdice", "tubular", tag, "fastloss", ncpu, st, th["median_ms"]))
    return rows


def _row(bench, case, shape, provider, threads, stats, base_ms=None, device="cpu"):
    row = {"bench": bench, "case": case, "shape": shape, "provider": provider, "threads": threads,
           "median_ms": round(stats["median_ms"], 3), "p20_ms": round(stats["p20_ms"], 3),
           "p80_ms": round(stats["p80_ms"], 3), "reps": stats["reps"], "spread": stats["spread"]}
    if base_ms is not None:
        row["x_baseline"] = round(base_ms / stats["median_ms"], 2)
        row["target_x"] = TARGETS[bench]
    return common.stamp(row, device)


def parallel_rows(case, tag, fg, reps, ncpu, base_ms):
    """method="parallel": the host driver (all threads), and the CUDA kernels where they can run."""
    rows = [_row("skeletonize", case, tag, "fastloss parallel (host)", ncpu,
                 common.time_wall(lambda: skeletonize(fg, 3, threads=ncpu, method="parallel"), "cpu",
                                  reps=max(reps, 5), warmup=1, budget_s=60), base_ms)]
    if torch.cuda.is_available() and fastloss.skeleton.cuda_available():
        g = torch.from_numpy(fg).cuda()
        if not np.array_equal(skeletonize(g).cpu().numpy(), skeletonize(fg, 3, method="parallel")):
            rows.append(common.stamp(common.error_row(
                {"bench": "skeletonize", "case": case, "shape": tag, "provider": "fastloss parallel (CUDA)"},
                AssertionError("the CUDA kernels differ from the host driver")), "cuda"))
        else:
            st = common.time_wall(lambda: skeletonize(g), "cuda", reps=max(reps, 10), warmup=2)
            rows.append(_row("skeletonize", case, tag, "fastloss parallel (CUDA)", "", st, base_ms, device="cuda"))
    return rows


def run(reps: int = 7, size: int = 96, cbdice_size: int = 64, parts=("skeletonize", "skeleton_recall", "cbdice")):
    from skimage.morphology import skeletonize as sk

    ncpu = common.cpu_count()
    torch.set_num_threads(ncpu)
    shape = (size, size, size)
    rows = []
    for case, make in (("organ-like", organ_like), ("tubular", tubular)):
        lab = np.stack([make(shape, seed) for seed in (1, 2)])
        fg = lab > 0
        tag = f"2x{size}^3"
        base = {"bench": "skeletonize", "case": case, "shape": tag}
        ref = np.stack([sk(v) for v in fg])
        ok = np.array_equal(skeletonize(fg, 3, threads=1), ref)
        sk_stats = common.time_wall(lambda: [sk(v) for v in fg], "cpu", reps=reps, warmup=1, budget_s=60)
        rows.append(_row("skeletonize", case, tag, "scikit-image", 1, sk_stats))
        for threads in sorted({1, ncpu}):
            if not ok:
                rows.append(common.stamp(common.error_row(dict(base, provider="fastloss", threads=threads),
                                                          AssertionError("fastloss differs from scikit-image")), "cpu"))
                continue
            st = common.time_wall(lambda: skeletonize(fg, 3, threads=threads), "cpu", reps=max(reps, 10), warmup=1)
            rows.append(_row("skeletonize", case, tag, "fastloss", threads, st, sk_stats["median_ms"]))
        if "skeletonize" in parts:
            rows += parallel_rows(case, tag, fg, reps, ncpu, sk_stats["median_ms"])
        if "skeleton_recall" not in parts:
            continue

        # the loss part of a training step: target skeleton + loss, forward + backward
        C = 3
        y = torch.from_numpy(lab)
        x = torch.randn((2, C) + shape, generator=torch.Generator().manual_seed(0)).requires_grad_(True)

        def theirs():
            skel = torch.from_numpy(authors_transform(lab))
            x.grad = None
            authors_loss(x, skel).backward()

        loss = SkeletonRecallLoss()

        def ours():
            x.grad = None
            loss(x, y).backward()

        # the same value (theirs is -recall, ours 1 - recall) before timing
        with torch.no_grad():
            v_theirs = float(authors_loss(x, torch.from_numpy(authors_transform(lab))))
            v_ours = float(loss(x, y))
        tag_l = f"2x{C}x{size}^3"
        for threads in sorted({1, ncpu}):  # both sides on the same torch threads
            torch.set_num_threads(threads)
            th = common.time_wall(theirs, "cpu", reps=reps, warmup=1, budget_s=60)
            rows.append(_row("skeleton_recall", case, tag_l, "authors (skimage + torch)", threads, th))
            if abs((1 + v_theirs) - v_ours) > 1e-4:
                rows.append(common.stamp(common.error_row(
                    {"bench": "skeleton_recall", "case": case, "shape": tag_l, "provider": "fastloss",
                     "threads": threads}, AssertionError(f"loss {v_ours} != 1 + {v_theirs}")), "cpu"))
            else:
                st = common.time_wall(ours, "cpu", reps=max(reps, 10), warmup=1)
                rows.append(_row("skeleton_recall", case, tag_l, "fastloss", threads, st, th["median_ms"]))
        torch.set_num_threads(ncpu)
    if "cbdice" in parts:
        rows += cbdice_rows(reps, cbdice_size, ncpu)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--cbdice-size", type=int, default=64)
    ap.add_argument("--parts", default="skeletonize,skeleton_recall,cbdice",
                    help="comma-separated: skeletonize (with the parallel rows), skeleton_recall, cbdice")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    parts = tuple(p.strip() for p in args.parts.split(",") if p.strip())
    unknown = set(parts) - {"skeletonize", "skeleton_recall", "cbdice"}
    if unknown:
        ap.error(f"unknown --parts {sorted(unknown)}")
    if args.record:
        common.set_record(True)
    rows = run(args.reps, args.size, args.cbdice_size, parts)
    path = common.append_csv("skeleton.csv", rows)
    print(f"{'bench':16s} {'case':11s} {'shape':12s} {'provider':26s} {'thr':>3s} {'median':>9s} "
          f"{'p20':>9s} {'p80':>9s}  x baseline")
    for r in rows:
        if "median_ms" not in r:
            print(f"{r.get('bench', ''):16s} {r.get('case', ''):11s} {r.get('shape', ''):12s} "
                  f"{r.get('provider', ''):26s} {r.get('threads', '')!s:>3s}  {r.get('error', r.get('skipped', ''))}")
            continue
        x = f"{r['x_baseline']}x (target >= {r['target_x']}x)" if "x_baseline" in r else ""
        print(f"{r['bench']:16s} {r['case']:11s} {r['shape']:12s} {r['provider']:26s} {r['threads']!s:>3s} "
              f"{r['median_ms']:9.1f} {r['p20_ms']:9.1f} {r['p80_ms']:9.1f}  {x}")
    print(f"rows appended to {path} (fastloss {fastloss.__version__})")


if __name__ == "__main__":
    main()
