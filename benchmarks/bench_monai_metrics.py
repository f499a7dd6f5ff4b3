"""fastloss.metrics' MONAI-named functions and metric classes against MONAI 1.6.1 on the CPU.

Cases, each with the same inputs for both providers (one-hot float32 maps ``(2, 9, n, n, n)`` of
organ-like ellipsoids from ``bench_metrics.label_pair``, prediction = reference + smooth noise):

- ``compute_dice`` and ``DiceMetric`` (one ``__call__`` + ``aggregate()``), on the channels-last layout
  that ``one_hot(...).movedim(-1, 1)`` gives and on contiguous maps;
- ``compute_hausdorff_distance(percentile=95)`` / ``HausdorffDistanceMetric``,
  ``compute_surface_dice([1.0] * 8)`` / ``SurfaceDiceMetric``,
  ``compute_average_surface_distance(symmetric=True)`` / ``SurfaceDistanceMetric`` (contiguous maps).

The providers run alternately, one call each per round (this 2-core machine is shared, so its load
changes during a run): each row's median, p20 and p80 are over the rounds, and ``speedup`` is the
median of the per-round ratios MONAI / fastloss. Results are checked to agree before timing.

    python benchmarks/bench_monai_metrics.py              # n = 128, 2 threads; rows to results/local/
    python benchmarks/bench_monai_metrics.py --n 64 --record   # rows to the committed results/
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from bench_metrics import label_pair  # noqa: E402

import fastloss.metrics as fm  # noqa: E402

CSV = "monai_metrics.csv"


def _cases(y, p):
    """(case, layout, fastloss fn, MONAI fn) for the maps y (reference) and p (prediction)."""
    import monai.metrics as mm

    yc, pc = y.contiguous(), p.contiguous()
    tol = [1.0] * (y.shape[1] - 1)

    def metric_call(cls_ours, cls_theirs, a, b, *args, **kw):
        def run(cls):
            def f():
                m = cls(*args, **kw)
                m(a, b)
                return m.aggregate()

            return f

        return run(cls_ours), run(cls_theirs)

    out = []
    for layout, a, b in (("channels_last", p, y), ("contiguous", pc, yc)):
        out.append(("compute_dice", layout, lambda a=a, b=b: fm.compute_dice(a, b), lambda a=a, b=b: mm.compute_dice(a, b)))
        out.append(("DiceMetric", layout, *metric_call(fm.DiceMetric, mm.DiceMetric, a, b, reduction="mean_batch")))
    out += [
        ("compute_hausdorff_distance(p95)", "contiguous",
         lambda: fm.compute_hausdorff_distance(pc, yc, percentile=95),
         lambda: mm.compute_hausdorff_distance(pc, yc, percentile=95)),
        ("HausdorffDistanceMetric(p95)", "contiguous",
         *metric_call(fm.HausdorffDistanceMetric, mm.HausdorffDistanceMetric, pc, yc, percentile=95)),
        ("compute_surface_dice(1.0)", "contiguous",
         lambda: fm.compute_surface_dice(pc, yc, tol), lambda: mm.compute_surface_dice(pc, yc, tol)),
        ("SurfaceDiceMetric(1.0)", "contiguous", *metric_call(fm.SurfaceDiceMetric, mm.SurfaceDiceMetric, pc, yc, tol)),
        ("compute_average_surface_distance(sym)", "contiguous",
         lambda: fm.compute_average_surface_distance(pc, yc, symmetric=True),
         lambda: mm.compute_average_surface_distance(pc, yc, symmetric=True)),
        ("SurfaceDistanceMetric(sym)", "contiguous",
         *metric_call(fm.SurfaceDistanceMetric, mm.SurfaceDistanceMetric, pc, yc, symmetric=True)),
    ]
    return out


def _summary(samples):
    s = sorted(samples)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    return statistics.median(s), q[1], q[7]


def run(n: int, rounds: int, slow_rounds: int, only=None) -> list[dict]:
    y, p = label_pair(n)
    B, C = y.shape[:2]
    rows = []
    for case, layout, ours, theirs in _cases(y, p):
        if only and not any(o in case for o in only):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            a, b = ours(), theirs()  # warm-up, and the check that both agree
            torch.testing.assert_close(torch.as_tensor(a).float(), torch.as_tensor(b).float(), rtol=1e-4, atol=1e-5,
                                       equal_nan=True)
            r = rounds if "ice" in case and "urface" not in case else slow_rounds  # dice cases are cheap
            t_ours, t_theirs = [], []
            for _ in range(r):  # alternate the providers so that both see the same load
                t_ours.append(common.time_wall(ours, "cpu", reps=1, warmup=0)["median_ms"])
                t_theirs.append(common.time_wall(theirs, "cpu", reps=1, warmup=0)["median_ms"])
        speedup = statistics.median(m / o for m, o in zip(t_theirs, t_ours))
        for provider, t in (("fastloss", t_ours), ("monai", t_theirs)):
            med, p20, p80 = _summary(t)
            row = {
                "bench": "monai_metrics", "case": case, "shape": f"{B}x{C}x{n}x{n}x{n}", "layout": layout,
                "provider": provider, "threads": torch.get_num_threads(), "median_ms": round(med, 3),
                "p20_ms": round(p20, 3), "p80_ms": round(p80, 3), "reps": len(t),
                "speedup_vs_monai": round(speedup, 3) if provider == "fastloss" else 1.0,
            }
            rows.append(common.stamp(row, "cpu"))
        print(f"{case:40s} {layout:14s} fastloss {statistics.median(t_ours):9.1f} ms   MONAI "
              f"{statistics.median(t_theirs):9.1f} ms   speed-up {speedup:6.2f}x (median of {r} rounds)", flush=True)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=128, help="edge of the cubic volume (default 128)")
    ap.add_argument("--rounds", type=int, default=9, help="alternating rounds of the Dice cases (default 9)")
    ap.add_argument("--slow-rounds", type=int, default=3, help="rounds of the surface-distance cases (default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--only", nargs="*", help="run only the cases whose name contains one of these")
    ap.add_argument("--record", action="store_true",
                    help="append to the committed benchmarks/results/ (default: the untracked results/local/)")
    args = ap.parse_args(argv)
    if args.record:
        os.environ["FASTLOSS_BENCH_RECORD"] = "1"
    torch.set_num_threads(args.threads)
    rows = run(args.n, args.rounds, args.slow_rounds, args.only)
    path = common.append_csv(CSV, rows)
    print(f"{len(rows)} rows -> {path} (run {common.RUN_ID})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
