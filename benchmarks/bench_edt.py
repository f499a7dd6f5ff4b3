"""EDT throughput: scipy, the `edt` package, CuPy and fastloss, on random-sphere volumes.

The volume is the complement of a few random spheres (the distances outside the spheres, as in the
baselines' anchor benchmark), so most voxels are foreground. CPU: 128^3 (64^3 and 256^3 with --sizes);
GPU (when present): 64^3, 128^3, 256^3, 512x512x128 and the signed maps of a (2, 9, 128^3) one-hot batch.
Median/p20/p80 wall ms and "x scipy" (times faster than scipy on the same shape); rows with a wide
p20-p80 spread are marked ``~``. Appends rows to benchmarks/results/local/edt.csv (with --record: the
committed benchmarks/results/edt.csv) and prints a table.

    python benchmarks/bench_edt.py [--full] [--sizes 64,128,256] [--record]

`run(quick)` is the entry point for the main benchmark.
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
from fastloss.distance import cuda_available, edt, signed_distance  # noqa: E402


def spheres(shape, seed=1, count=6):
    """Boolean volume, True OUTSIDE `count` random spheres (the EDT then measures distance to them)."""
    rng = np.random.default_rng(seed)
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    m = np.zeros(shape, bool)
    side = min(shape)
    for _ in range(count):
        c = rng.uniform(0.2, 0.8, len(shape)) * np.array(shape)
        r = rng.uniform(0.05, 0.2) * side
        m |= sum((g - ci) ** 2 for g, ci in zip(grids, c)) < r * r
    return ~m


def _timeit(fn, reps, warmup=1, sync=None):
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        if sync:
            sync()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts)), float(np.percentile(ts, 20)), float(np.percentile(ts, 80))


def _row(case, shape, device, provider, threads, stats, peak=None):
    row = {
        "bench": "edt",
        "case": case,
        "shape": "x".join(map(str, shape)),
        "provider": provider,
        "threads": threads,
        "median_ms": round(stats[0], 4),
        "p20_ms": round(stats[1], 4),
        "p80_ms": round(stats[2], 4),
        "peak_mem_mib": "" if peak is None else round(peak, 1),
    }
    return common.stamp(row, "cpu" if device == "cpu" else "cuda")


def _cpu_rows(sizes, reps, bar=None):
    """Rows of every CPU provider per size; scipy and the ``edt`` package are optional (a skipped row
    each when missing), a provider that raises is an error row, and fastloss is timed only where it
    equals scipy (an error row where it does not)."""
    try:
        from scipy import ndimage
    except ImportError:
        ndimage = None
    try:
        import edt as edt_pkg
    except ImportError:
        edt_pkg = None
    ncpu = common.cpu_count()
    rows = []
    for S in sizes:
        shape = (S, S, S)
        m = spheres(shape)
        r = max(2, reps if S <= 128 else reps // 2)
        wrong = None
        if ndimage is not None:
            try:
                ref = ndimage.distance_transform_edt(m)
                err = float(np.abs(edt(m, threads=1) - ref).max())
                if not err < 1e-3 * max(1.0, float(ref.max())):
                    wrong = AssertionError(f"fastloss differs from scipy by {err:.3g} on {S}^3")
            except Exception as exc:  # noqa: BLE001 - fastloss's error: its rows below say so
                wrong = exc
        jobs = []
        if ndimage is not None:
            jobs.append(("scipy", 1, lambda: ndimage.distance_transform_edt(m)))
        else:
            jobs.append(("scipy", 1, "scipy not installed (pip install scipy): no baseline, no check of the values"))
        if edt_pkg is not None:
            jobs.append(("edt-pkg", 1, lambda: edt_pkg.edt(m, parallel=1)))
        else:
            jobs.append(("edt-pkg", 1, "the edt package is not installed (pip install edt)"))
        jobs.append(("fastloss", 1, wrong or (lambda: edt(m, threads=1))))
        if ncpu > 1:
            jobs.append(("fastloss", ncpu, wrong or (lambda: edt(m, threads=0))))
        for provider, threads, fn in jobs:
            base = {"bench": "edt", "case": "spheres", "shape": "x".join(map(str, shape)), "provider": provider,
                    "threads": threads}
            if isinstance(fn, str):
                rows.append(common.skip_row(base, fn))
                continue
            if isinstance(fn, Exception):
                rows.append(common.stamp(common.error_row(base, fn, f"edt {provider} x{threads} {S}^3"), "cpu"))
            else:
                try:
                    rows.append(_row("spheres", shape, "cpu", provider, threads, _timeit(fn, r)))
                except Exception as exc:  # noqa: BLE001 - an error row; the next provider still runs
                    rows.append(common.stamp(common.error_row(base, exc, f"edt {provider} x{threads} {S}^3"), "cpu"))
            if bar is not None:
                bar.step(f"{provider} x{threads} {S}^3")
    return rows


def _gpu_rows(quick, reps):
    dev = torch.device("cuda")
    sync = torch.cuda.synchronize
    try:
        import cupy as cp
        from cupyx.scipy.ndimage import distance_transform_edt as cupy_edt
    except ImportError:
        cp = None
    rows = []
    shapes = [(64, 64, 64), (128, 128, 128), (256, 256, 256), (128, 512, 512)]
    gpu = torch.cuda.get_device_name()
    if not cuda_available():
        rows.append(common.skip_row({"bench": "edt", "case": "spheres", "shape": "GPU shapes", "provider": "fastloss",
                                     "device": gpu}, "fastloss's CUDA EDT is not compiled in (no nvcc at build time)"))
    if cp is None:
        rows.append(common.skip_row({"bench": "edt", "case": "spheres", "shape": "GPU shapes", "provider": "cupy",
                                     "device": gpu}, "CuPy not installed"))
    for shape in shapes:
        m = torch.from_numpy(spheres(shape)).to(dev)
        if cuda_available():
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            stats = _timeit(lambda: edt(m), reps, warmup=2, sync=sync)
            peak = (torch.cuda.max_memory_allocated() - base) / 2**20
            rows.append(_row("spheres", shape, torch.cuda.get_device_name(), "fastloss", "", stats, peak))
        if cp is not None:
            mc = cp.asarray(m.cpu().numpy())
            pool = cp.get_default_memory_pool()
            stats = _timeit(lambda: cupy_edt(mc, float64_distances=False), reps, warmup=2,
                            sync=cp.cuda.Device().synchronize)
            rows.append(_row("spheres", shape, torch.cuda.get_device_name(), "cupy", "", stats,
                             pool.total_bytes() / 2**20))
        del m
    # signed maps of a (2, 9, 128^3) one-hot batch
    rng = np.random.default_rng(0)
    lab = torch.from_numpy(rng.integers(0, 9, (2, 128, 128, 128))).to(dev)
    onehot = torch.nn.functional.one_hot(lab, 9).permute(0, 4, 1, 2, 3).contiguous()
    if cuda_available():
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        stats = _timeit(lambda: signed_distance(onehot, spatial_dims=3), reps, warmup=2, sync=sync)
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
        rows.append(_row("signed_onehot", (2, 9, 128, 128, 128), torch.cuda.get_device_name(), "fastloss", "",
                         stats, peak))
    if cp is not None:
        oh = cp.asarray(onehot.cpu().numpy().astype(bool))

        def cupy_loop():
            for b in range(2):
                for c in range(9):
                    pos = oh[b, c]
                    if pos.any():
                        neg = ~pos
                        _ = cupy_edt(neg, float64_distances=False) * neg - (
                            cupy_edt(pos, float64_distances=False) - 1) * pos

        stats = _timeit(cupy_loop, max(2, reps // 2), warmup=1, sync=cp.cuda.Device().synchronize)
        rows.append(_row("signed_onehot", (2, 9, 128, 128, 128), torch.cuda.get_device_name(), "cupy-loop", "",
                         stats))
    return rows


def print_table(rows):
    """Median/p20/p80 ms, "x scipy" (scipy's median on the same shape and device / the row's) and
    ``~`` on rows whose p20-p80 spread is wide."""
    skipped = [r for r in rows if r.get("skipped")]
    errors = [r for r in rows if r.get("error")]
    rows = [r for r in rows if not r.get("skipped") and not r.get("error")]
    scipy_ms = {r["shape"]: r["median_ms"] for r in rows if r["provider"] == "scipy"}
    print(common.LOAD.header())
    print(f"{'case':14} {'shape':14} {'device':24} {'provider':10} {'thr':>4} {'median ms':>10} {'p20':>10} {'p80':>10} "
          f"{'x scipy':>8}")
    flagged = 0
    for r in rows:
        mark = "~" if common.noisy(r) else " "
        flagged += mark == "~"
        base = scipy_ms.get(r["shape"]) if str(r["device"]).startswith("cpu") else None
        print(f"{r['case']:14} {r['shape']:14} {str(r['device'])[:24]:24} {r['provider']:10} {str(r['threads']):>4} "
              f"{r['median_ms']:10.3f} {r['p20_ms']:10.3f} {r['p80_ms']:10.3f} {common.ratio(base, r['median_ms']):>8} {mark}")
    for r in errors:
        print(f"{r['case']:14} {r['shape']:14} {'':24} {r['provider']:10} {str(r['threads']):>4} error: {r['error']}")
    common.print_skips(skipped)
    if flagged:
        print(f"~ {flagged} row(s) with p80 - p20 over {common.NOISY_SPREAD:.0%} of the median: noisy, rerun before quoting.")
    # thread scaling on the CPU, per shape
    by = {}
    for r in rows:
        if r["device"].startswith("cpu"):
            by.setdefault(r["shape"], {})[(r["provider"], r["threads"])] = r["median_ms"]
    for shape, d in by.items():
        one = d.get(("fastloss", 1))
        for (p, t), v in d.items():
            if one and p == "fastloss" and t != 1:
                print(f"{shape}: fastloss {t} threads vs 1 thread: {one / v:.2f}x")


def run(quick: bool = True, sizes=None) -> list[dict]:
    """Time the EDT providers, print the table and return the rows (the caller appends them to edt.csv)."""
    sizes = sizes or ([128] if quick else [64, 128, 256])
    reps = 10 if quick else 15  # p20/p80 need about 10 samples
    import importlib.util

    ncpu_jobs = (importlib.util.find_spec("scipy") is not None) + (importlib.util.find_spec("edt") is not None) + 1 \
        + (common.cpu_count() > 1)
    bar = common.PROGRESS.begin("edt", len(sizes) * ncpu_jobs)
    rows = _cpu_rows(sizes, reps, bar)
    bar.end()
    if torch.cuda.is_available():
        rows += _gpu_rows(quick, 10 if quick else 30)
    print_table(rows)
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="more repetitions and 64^3/256^3 on the CPU")
    ap.add_argument("--sizes", default=None, help="comma-separated cube sides for the CPU, e.g. 64,128,256")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    common.set_record(args.record)
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else None
    rows = run(quick=not args.full, sizes=sizes)
    print("->", common.append_csv("edt.csv", [r for r in rows if not r.get("skipped")]))


if __name__ == "__main__":
    main()
