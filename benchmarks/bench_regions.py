"""Region-based training (BraTS-like: 4 labels, 3 nested regions) on the CPU: nnU-Net's path against fastloss's.

Two measurements (issue 23's targets), CPU, ``--threads`` threads (2 by default):

- ``label_transforms``: the per-batch cost of making the targets. nnU-Net's data loader runs, per sample,
  ``ConvertSegmentationToRegionsTransform`` (a bool region tensor) and ``DownsampleSegForDSTransform`` (one target
  per deep-supervision output, nnU-Net's 5 scales of a 128³ patch); fastloss's trainers switch both off and the
  loss downsamples the one integer label patch itself (``downsample_target`` of the outputs it evaluates: the
  lowest resolution has weight 0). Target: nnU-Net's time / fastloss's >= 3.
- ``loss_step``: forward + backward of the loss on ``(2, 3, 128³)`` float32 logits: nnU-Net's
  ``DC_and_BCE_loss`` (MemoryEfficientSoftDiceLoss, batch Dice) on its one-hot region target against
  ``fastloss.nnunet.build_nnunet_loss("DiceCE", has_regions=True, regions=...)`` on the integer labels (the same
  loss up to nnU-Net's −Dice constant). Speed target >= 3x; peak memory growth of the step (each provider in its
  own process, ``VmHWM``) at most 0.5x.

The providers alternate call by call, so changes in the machine's load hit both alike. Rows go to
``benchmarks/results/local/regions.csv`` (``--record``: ``benchmarks/results/regions.csv``).

``python benchmarks/bench_regions.py [--patch 128] [--reps 7] [--threads 2] [--record]``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

REGIONS = [[1, 2, 3], [2, 3], [3]]
SPEED_TARGET = 3.0
MEMORY_TARGET = 0.5


def _scales(n: int = 5):
    return [[1.0 / 2**i] * 3 for i in range(n)]


def _labels(patch, batch=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (batch, 1) + tuple(patch), generator=g).to(torch.int16)


def _nnunet_loss():
    from nnunetv2.training.loss.compound_losses import DC_and_BCE_loss
    from nnunetv2.training.loss.dice import MemoryEfficientSoftDiceLoss

    return DC_and_BCE_loss({}, {"batch_dice": True, "do_bg": True, "smooth": 1e-5, "ddp": False},
                           use_ignore_label=False, dice_class=MemoryEfficientSoftDiceLoss)


def _fastloss_loss():
    from fastloss.nnunet import build_nnunet_loss

    return build_nnunet_loss("DiceCE", batch_dice=True, has_regions=True, regions=REGIONS)


def _region_onehot(seg):
    from batchgeneratorsv2.transforms.utils.seg_to_regions import ConvertSegmentationToRegionsTransform

    conv = ConvertSegmentationToRegionsTransform(regions=REGIONS, channel_in_seg=0)
    return torch.stack([conv(segmentation=s)["segmentation"] for s in seg])


def _steppers(patch):
    g = torch.Generator().manual_seed(1)
    x = torch.randn((2, 3) + tuple(patch), generator=g).requires_grad_()
    seg = _labels(patch)
    onehot = _region_onehot(seg)  # made once: the loader's work, not the loss's
    nn_loss, fl_loss = _nnunet_loss(), _fastloss_loss()

    def nnunet_step():
        nn_loss(x, onehot).backward()
        x.grad = None

    def fastloss_step():
        fl_loss(x, seg).backward()
        x.grad = None

    return {"nnunet": nnunet_step, "fastloss": fastloss_step}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def memory_worker(provider: str, patch, threads: int) -> dict:
    """Peak resident-set growth of one loss step of ``provider`` (run in a process of its own)."""
    torch.set_num_threads(threads)
    step = _steppers(patch)[provider]
    step()
    step()
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: freed memory goes back, the resident set follows live tensors
    gc.collect()
    from fastloss.ops import cpu_buffers

    cpu_buffers.empty_cache()  # the measured step allocates its gradient afresh, as the baseline's does
    libc.malloc_trim(0)
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # VmHWM := VmRSS
    before = _status_kib("VmRSS")
    step()
    return {"peak_growth_mib": max(0, _status_kib("VmHWM") - before) / 1024.0}


def _memory(provider: str, patch, threads: int) -> float:
    code = (f"import sys, json; sys.path.insert(0, {str(Path(__file__).resolve().parent)!r}); import bench_regions as b; "
            f"print(json.dumps(b.memory_worker({provider!r}, {tuple(patch)!r}, {threads})))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        raise RuntimeError(f"memory worker {provider}: {r.stderr[-800:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])["peak_growth_mib"]


def _label_transform_fns(patch):
    from batchgeneratorsv2.transforms.utils.deep_supervision_downsampling import DownsampleSegForDSTransform

    from fastloss.losses.deep_supervision import downsample_target

    seg = _labels(patch)
    scales = _scales()
    ds = DownsampleSegForDSTransform(ds_scales=scales)
    shapes = [tuple(round(s * f) for s, f in zip(patch, sc)) for sc in scales]

    def nnunet():  # per sample: regions, then one target per output
        for b in range(seg.shape[0]):
            onehot = _region_onehot(seg[b:b + 1])[0]
            ds(segmentation=onehot)

    def fastloss():  # the loss's own work: the integer labels at the outputs it evaluates (weights > 0)
        for shape in shapes[:-1]:
            downsample_target(seg, shape)

    return {"nnunet": nnunet, "fastloss": fastloss}


def _alternate(fns: dict, reps: int) -> dict:
    for fn in fns.values():
        fn()
    samples = {n: [] for n in fns}
    for _ in range(reps):
        for n, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            samples[n].append((time.perf_counter() - t0) * 1e3)
    return {n: common.summarize(v) for n, v in samples.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--patch", type=int, default=128, help="cubic patch edge (128: the issue's size)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    common.add_record_argument(p)
    args = p.parse_args(argv)
    if args.record:
        common.set_record(True)
    torch.set_num_threads(args.threads)
    patch = (args.patch,) * 3
    common.LOAD.begin("regions")
    rows = []
    base = {"patch": "x".join(map(str, patch)), "batch": 2, "regions": len(REGIONS), "threads": args.threads}
    t = _alternate(_label_transform_fns(patch), args.reps)
    ratio = t["nnunet"]["median_ms"] / t["fastloss"]["median_ms"]
    for n, s in t.items():
        rows.append(common.stamp({**base, "what": "label_transforms", "provider": n, **s}, "cpu"))
    print(f"label transforms per batch: nnU-Net {t['nnunet']['median_ms']:.1f} ms, fastloss "
          f"{t['fastloss']['median_ms']:.1f} ms: {ratio:.1f}x ({common.target_status(ratio, SPEED_TARGET)} "
          f">= {SPEED_TARGET}x)")
    t = _alternate(_steppers(patch), args.reps)
    speed = t["nnunet"]["median_ms"] / t["fastloss"]["median_ms"]
    mem = {n: _memory(n, patch, args.threads) for n in ("nnunet", "fastloss")}
    mem_ratio = mem["fastloss"] / mem["nnunet"] if mem["nnunet"] else float("nan")
    for n, s in t.items():
        rows.append(common.stamp({**base, "what": "loss_step", "provider": n, **s, "peak_growth_mib": round(mem[n], 1)},
                                 "cpu"))
    print(f"loss step (2, 3, {args.patch}^3): nnU-Net {t['nnunet']['median_ms']:.1f} ms / {mem['nnunet']:.0f} MiB, "
          f"fastloss {t['fastloss']['median_ms']:.1f} ms / {mem['fastloss']:.0f} MiB: {speed:.1f}x "
          f"({common.target_status(speed, SPEED_TARGET)} >= {SPEED_TARGET}x), memory {mem_ratio:.2f} "
          f"({common.target_status(mem_ratio, MEMORY_TARGET, at_least=False)} <= {MEMORY_TARGET})")
    print(common.LOAD.header())
    path = common.append_csv("regions.csv", rows)
    print(f"rows -> {path} (run {common.RUN_ID})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
