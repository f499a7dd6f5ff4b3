"""The main job: every benchmark of fastloss on whatever device is here, in one run.

Runs, in order, the loss benchmark (forward+backward of every paper loss against MONAI, plain torch and
the reference), the EDT benchmark (against scipy, the ``edt`` package and CuPy when installed) and the
metrics benchmark (NSD/HD95 against MONAI), prints each table and appends the rows to
``benchmarks/results/{losses,edt,metrics}.csv``. All rows of one run share a ``run_id``.

``python benchmarks/run.py [--device cuda] [--full] [--compile] [--only losses,edt,metrics]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--full", action="store_true", help="larger cases and the slow baselines")
    ap.add_argument("--compile", action="store_true", help="add torch.compile providers (GPU)")
    ap.add_argument("--only", default="losses,edt,metrics")
    ap.add_argument("--losses", default=None, help="comma-separated paper names (default: all of Table 2, BD, HD)")
    args = ap.parse_args(argv)
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    print(f"fastloss benchmark run {common.RUN_ID}")
    if "losses" in parts:
        import bench_losses

        rows = bench_losses.run(quick=not args.full, device=args.device, full=args.full, compile_=args.compile,
                                losses=args.losses.split(",") if args.losses else None)
        bench_losses.print_table(rows)
        print("->", common.append_csv("losses.csv", rows), "\n")
    if "edt" in parts:
        import bench_edt

        rows = bench_edt.run(quick=not args.full)
        print("->", common.append_csv("edt.csv", rows) if rows and "run_id" in rows[0] else "edt rows written by bench_edt", "\n")
    if "metrics" in parts:
        import bench_metrics

        rows = bench_metrics.run(quick=not args.full)
        print("->", common.append_csv("metrics.csv", rows) if rows and "run_id" in rows[0] else "metrics rows written by bench_metrics", "\n")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("matplotlib not installed: no plots (pip install -e '.[bench]')")
    else:
        import plot

        plot.main(["--run", common.RUN_ID])
    return 0


if __name__ == "__main__":
    sys.exit(main())
