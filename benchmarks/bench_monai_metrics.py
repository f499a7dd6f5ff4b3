"""fastloss.metrics' MONAI-named functions and metric classes against MONAI 1.6.1 on the CPU.

Cases, each with the same inputs for both providers (one-hot float32 maps ``(2, 9, n, n, n)`` of
organ-like ellipsoids from ``bench_metrics.label_pair``, prediction = reference + smooth noise):

- ``compute_dice`` and ``DiceMetric`` (one ``__call__`` + ``aggregate()`` of a new object), on the
  channels-last layout that ``one_hot(...).movedim(-1, 1)`` gives and on contiguous maps;
- ``compute_hausdorff_distance(percentile=95)`` / ``HausdorffDistanceMetric``,
  ``compute_surface_dice([1.0] * 8)`` / ``SurfaceDiceMetric`` (voxel borders, and surface elements with
  ``use_subvoxels=True``), ``compute_average_surface_distance(symmetric=True)`` /
  ``SurfaceDistanceMetric`` (contiguous maps).

A function and the class that wraps it are timed together: each round calls all four (fastloss and
MONAI, function and class) back to back in a rotating order, since this 2-core machine is shared and its
load changes during a run (the rows of run 20261129T201723-b3b45c timed the Dice function and class nine
rounds apart and so put a 10x load swing between them). Each row's median, p20 and p80 are over the
rounds; ``speedup`` is the median of the per-round ratios MONAI / fastloss; class rows carry
``class_over_function``, the median per-round ratio class / function of the same provider. Results are
checked to agree before timing.

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


def _groups(y, p):
    """(function case, class case, layout, {(kind, provider): callable}) for the maps y (reference) and p
    (prediction); kind is "function" or "class" (one ``__call__`` + ``aggregate()`` of a new object)."""
    import monai.metrics as mm

    yc, pc = y.contiguous(), p.contiguous()
    tol = [1.0] * (y.shape[1] - 1)

    def group(fn_case, cls_case, layout, fn_name, cls_name, a, b, args=(), fn_kw=None, cls_kw=None):
        calls = {}
        for provider, lib in (("fastloss", fm), ("monai", mm)):
            fn, cls = getattr(lib, fn_name), getattr(lib, cls_name)

            def f(fn=fn):
                return fn(a, b, *args, **(fn_kw or {}))

            def c(cls=cls):
                m = cls(*args, **(cls_kw or {}))
                m(a, b)
                return m.aggregate()

            calls[("function", provider)], calls[("class", provider)] = f, c
        return fn_case, cls_case, layout, calls

    out = []
    for layout, a, b in (("channels_last", p, y), ("contiguous", pc, yc)):
        out.append(group("compute_dice", "DiceMetric", layout, "compute_dice", "DiceMetric", a, b))
    out += [
        group("compute_hausdorff_distance(p95)", "HausdorffDistanceMetric(p95)", "contiguous",
              "compute_hausdorff_distance", "HausdorffDistanceMetric", pc, yc,
              fn_kw={"percentile": 95}, cls_kw={"percentile": 95}),
        group("compute_surface_dice(1.0)", "SurfaceDiceMetric(1.0)", "contiguous",
              "compute_surface_dice", "SurfaceDiceMetric", pc, yc, args=(tol,)),
        group("compute_surface_dice(1.0, subvoxels)", "SurfaceDiceMetric(1.0, subvoxels)", "contiguous",
              "compute_surface_dice", "SurfaceDiceMetric", pc, yc, args=(tol,),
              fn_kw={"use_subvoxels": True}, cls_kw={"use_subvoxels": True}),
        group("compute_average_surface_distance(sym)", "SurfaceDistanceMetric(sym)", "contiguous",
              "compute_average_surface_distance", "SurfaceDistanceMetric", pc, yc,
              fn_kw={"symmetric": True}, cls_kw={"symmetric": True}),
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
    for fn_case, cls_case, layout, calls in _groups(y, p):
        if only and not any(o in fn_case or o in cls_case for o in only):
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            results = {key: f() for key, f in calls.items()}  # warm-up, and the check that all four agree
            for key, res in results.items():
                torch.testing.assert_close(torch.as_tensor(res).float().reshape(-1),
                                           torch.as_tensor(results[("class", "monai")]).float().reshape(-1)
                                           if key[0] == "class" else
                                           torch.as_tensor(results[("function", "monai")]).float().reshape(-1),
                                           rtol=1e-4, atol=1e-5, equal_nan=True)
            r = rounds if fn_case == "compute_dice" else slow_rounds  # the Dice cases are cheap
            # One round times all four callables back to back, in a rotating order, so that a change of
            # the machine's load hits the function and the class (and both providers) alike.
            times = {key: [] for key in calls}
            keys = list(calls)
            for i in range(r):
                for key in keys[i % 4 :] + keys[: i % 4]:
                    times[key].append(common.time_wall(calls[key], "cpu", reps=1, warmup=0)["median_ms"])
        for kind, case in (("function", fn_case), ("class", cls_case)):
            ours, theirs = times[(kind, "fastloss")], times[(kind, "monai")]
            speedup = statistics.median(m / o for m, o in zip(theirs, ours))
            for provider, t in (("fastloss", ours), ("monai", theirs)):
                med, p20, p80 = _summary(t)
                row = {
                    "bench": "monai_metrics", "case": case, "shape": f"{B}x{C}x{n}x{n}x{n}", "layout": layout,
                    "provider": provider, "threads": torch.get_num_threads(), "median_ms": round(med, 3),
                    "p20_ms": round(p20, 3), "p80_ms": round(p80, 3), "reps": len(t),
                    "speedup_vs_monai": round(speedup, 3) if provider == "fastloss" else 1.0,
                }
                if kind == "class":  # the class against the function it wraps, same provider, same rounds
                    fn_t = times[("function", provider)]
                    row["class_over_function"] = round(statistics.median(c / f for c, f in zip(t, fn_t)), 3)
                rows.append(common.stamp(row, "cpu"))
            extra = ""
            if kind == "class":
                extra = f"   class/function {rows[-2]['class_over_function']:.2f} (MONAI {rows[-1]['class_over_function']:.2f})"
            print(f"{case:40s} {layout:14s} fastloss {statistics.median(ours):9.1f} ms   MONAI "
                  f"{statistics.median(theirs):9.1f} ms   speed-up {speedup:6.2f}x{extra} (median of {r} rounds)",
                  flush=True)
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
