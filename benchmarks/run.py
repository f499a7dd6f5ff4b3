"""The main job: every benchmark of fastloss on whatever device is here, in one run.

Stages, in order (``--only`` picks some):

- ``losses``: forward+backward of every paper loss against MONAI and hand-written torch;
- ``cpu_losses`` (by default on machines without a GPU, when benchmarks/bench_cpu_losses.py exists):
  the compiled C++ CPU kernels against MONAI, each provider in its own process;
- ``edt``: the EDT against scipy (and the ``edt`` package and CuPy when installed);
- ``metrics``: NSD/HD95 against MONAI (and DeepMind's ``surface-distance`` when installed).

Each stage prints a table with the shape, median and p20-p80 of each row, an "x baseline" column (how
many times faster than the baseline) and ``~`` on rows whose spread is wide; all rows of one run share a
``run_id``, and the plots are titled with it.

Quick mode (the default) takes a few minutes: small losses case on the CPU, EDT at 128^3, metrics at
64^3. ``--full`` runs the sizes the README cites (metrics at 128^3, EDT at 64^3-256^3, the losses at
(2, 9, 48^3) on the CPU, MONAI's slow distance-map baselines on the GPU).

Where rows go: ``benchmarks/results/local/`` (ignored by git) unless ``--record``, which appends to
the committed ``benchmarks/results/*.csv`` and redraws the committed PNGs.

``python benchmarks/run.py [--device cuda] [--full] [--compile] [--reference] [--record] [--only losses,edt]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STAGES = ("losses", "cpu_losses", "edt", "metrics")


def _cpu_losses_module():
    """The lead's compiled-CPU-kernel benchmark, when it exists (None otherwise)."""
    if not (Path(__file__).resolve().parent / "bench_cpu_losses.py").exists():
        return None
    try:
        import bench_cpu_losses
    except ImportError as exc:
        print(f"cpu_losses: bench_cpu_losses.py does not import ({exc}); stage skipped", file=sys.stderr)
        return None
    return bench_cpu_losses


def default_stages(cuda: bool) -> list:
    """Every stage; ``cpu_losses`` only on machines without a GPU (on a GPU the losses stage times CUDA)."""
    return [s for s in STAGES if s != "cpu_losses" or not cuda]


def mode_line(full: bool, cuda: bool) -> str:
    """What the console says first: quick or full, and how to get the other."""
    if full:
        return ("full mode: the README's sizes (metrics at 128^3, EDT at 64^3-256^3, losses at "
                + ("(2, 9, 128^3) with MONAI's slow baselines" if cuda else "(2, 9, 48^3)")
                + "); drop --full for a quick run of a few minutes")
    return ("quick mode: small cases (losses at " + ("(2, 9, 128^3)" if cuda else "(2, 4, 24^3)")
            + ", EDT at 128^3, metrics at 64^3) and short time budgets; --full runs the README's sizes "
            "(metrics at 128^3) and takes much longer")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    ap.add_argument("--full", action="store_true", help="the README's sizes and the slow baselines (default: quick)")
    ap.add_argument("--compile", action="store_true", help="add torch.compile providers (GPU)")
    ap.add_argument("--reference", action="store_true",
                    help="also time fastloss.reference, the naive float64 test oracle (slow; not a baseline)")
    ap.add_argument("--only", default=None, help=f"comma-separated stages of {','.join(STAGES)} (default: all that apply)")
    ap.add_argument("--losses", default=None, help="comma-separated paper names (default: all of Table 2, BD, HD)")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    import torch

    cuda = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    parts = [p.strip() for p in args.only.split(",") if p.strip()] if args.only else default_stages(cuda)
    bad = [p for p in parts if p not in STAGES]
    if bad:
        ap.error(f"--only: unknown stage(s) {bad}; expected some of {list(STAGES)}")
    cpu_losses = _cpu_losses_module() if "cpu_losses" in parts else None
    if "cpu_losses" in parts and cpu_losses is None:
        parts.remove("cpu_losses")
    common.set_record(args.record)
    common.PROGRESS.stages = parts
    print(f"fastloss benchmark run {common.RUN_ID}")
    print(mode_line(args.full, cuda))
    print(f"stages: {', '.join(parts)}; rows go to {common.results_dir()}"
          + ("" if args.record else " (untracked; --record appends to the committed benchmarks/results/)") + "\n")

    def write(name, rows):
        if rows and "run_id" in rows[0]:
            print("->", common.append_csv(name, rows), "\n")

    if "losses" in parts:
        import bench_losses

        rows = bench_losses.run(quick=not args.full, device=args.device, full=args.full, compile_=args.compile,
                                losses=args.losses.split(",") if args.losses else None, reference=args.reference)
        bench_losses.print_table(rows)
        write("losses.csv", rows)
    if "cpu_losses" in parts:
        rows = cpu_losses.run(quick=not args.full)
        cpu_losses.print_table(rows)
        write("cpu_losses.csv", rows)
    if "edt" in parts:
        import bench_edt

        write("edt.csv", bench_edt.run(quick=not args.full))
    if "metrics" in parts:
        import bench_metrics

        write("metrics.csv", bench_metrics.run(quick=not args.full))
    common.PROGRESS.close()
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
