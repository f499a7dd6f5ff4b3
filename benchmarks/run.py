"""The main job: every benchmark of fastloss on whatever device is here, in one run.

Stages, in order (``--only`` picks some):

- ``losses``: forward+backward of every paper loss against MONAI and hand-written torch;
- ``cpu_losses`` (by default on machines without a GPU, when benchmarks/bench_cpu_losses.py exists):
  the compiled C++ CPU kernels against MONAI, in worker processes, with issue 9's targets;
- ``edt``: the EDT against scipy (and the ``edt`` package and CuPy when installed);
- ``metrics``: NSD/HD95 against MONAI (and DeepMind's ``surface-distance`` when installed);
- ``plots``: one PNG per loss family, the EDT and the metrics (needs matplotlib).

Each stage prints a table with the shape, median and p20-p80 of each row, an "x baseline" column (how
many times faster than the baseline), ``~`` on rows whose spread is wide and, where the project has a
target, ``met`` or ``missed``; the first line of each table is the load average during the stage and the
CPU count (and how much of the CPUs this job and other processes used), so a busy machine reads as busy.
All rows of one run share a ``run_id``, and the plots are titled with it.

The job keeps going: a stage that raises is reported (its name, the exception, the traceback in
``benchmarks/results/local/logs/<run_id>.log``) and the next stage runs; a row that fails (one loss of
one provider) is an error row and its stage goes on. A provider that cannot run here (MONAI, ``edt``,
``surface-distance`` or scipy not installed; a GPU-only provider on a CPU machine) is a skipped row with
its reason, not an error. The job ends with a summary (stages run, failed and skipped, error rows,
targets, where the rows and plots went) and exits 1 if a stage failed or a row errored, else 0.

Quick mode (the default) takes one to three minutes on a 2-core machine, depending on what else runs
there: the losses at (2, 4, 24^3) on the CPU (10 calls or 2 s a row), the CPU kernels at (2, 9, 64^3) in
one timing process, the EDT at 128^3, the metrics at 64^3 on contiguous maps.
``--full`` runs the sizes the README cites (metrics at 128^3, EDT at 64^3-256^3, the losses at
(2, 9, 48^3) on the CPU, the CPU kernels at 64^3 and 96^3 in three timing processes per loss, MONAI's
slow distance-map baselines on the GPU).

Where rows go: ``benchmarks/results/local/`` (ignored by git) unless ``--record``, which appends to
the committed ``benchmarks/results/*.csv`` and redraws the committed PNGs.

``python benchmarks/run.py [--device cuda] [--full] [--compile] [--reference] [--record] [--only losses,edt]``
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

STAGES = ("losses", "cpu_losses", "edt", "metrics")
HERE = Path(__file__).resolve().parent


# ------------------------------------------------------------------------------------- the stage runner
@dataclass
class Stage:
    """One stage of the job. ``fn()`` runs it (printing its table) and returns its rows, or a dict with
    ``rows``, ``files`` (paths it wrote) and ``notes`` (lines for the summary). ``csv``: the file its
    measured rows are appended to. ``skip``: why it cannot run here (it is then not called)."""

    name: str
    fn: Callable[[], object]
    csv: str | None = None
    skip: str | None = None
    notes: Callable[[list], list] | None = None  # summary lines from the rows (e.g. targets met/missed)
    timed: bool = True  # whether its end line reports the load (a stage that measures nothing: False)


@dataclass
class StageResult:
    name: str
    status: str = "ok"  # ok | failed | skipped | interrupted
    reason: str = ""  # the exception ("Type: message") of a failed stage, or why it was skipped
    rows: list = field(default_factory=list)
    files: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    seconds: float = 0.0
    load: str = ""

    @property
    def error_rows(self) -> list:
        return [r for r in self.rows if r.get("error")]

    @property
    def skipped_rows(self) -> list:
        return [r for r in self.rows if r.get("skipped")]


@dataclass
class Report:
    results: list = field(default_factory=list)
    seconds: float = 0.0
    log: Path | None = None

    def by_status(self, status: str) -> list:
        return [r for r in self.results if r.status == status]

    @property
    def error_rows(self) -> list:
        return [(s.name, r) for s in self.results for r in s.error_rows]

    @property
    def exit_code(self) -> int:
        """130 if interrupted, 1 if a stage failed or a row errored, else 0."""
        if self.by_status("interrupted"):
            return 130
        return 1 if self.by_status("failed") or self.error_rows else 0


def _rel(path) -> str:
    try:
        return str(Path(path).resolve().relative_to(HERE.parent))
    except ValueError:
        return str(path)


def _write_rows(stage: Stage, rows: list) -> list:
    """Append the measured rows (error rows too, not the skipped ones) to the stage's CSV."""
    keep = [r for r in rows if not r.get("skipped")]
    if not stage.csv or not keep:
        return []
    return [common.append_csv(stage.csv, keep)]


def run_stages(stages, *, write: Callable[[Stage, list], list] | None = _write_rows, out=None) -> Report:
    """Run every stage in order, whatever happens to the ones before it, and return the :class:`Report`.

    A stage whose ``fn`` raises is marked failed (the exception's type and message kept, its traceback
    appended to :func:`common.log_path`); the rows of a stage that returns are written with ``write``
    (a failure to write fails the stage). Ctrl-C stops the job: the stage is marked interrupted and the
    report covers what ran."""
    out = out or sys.stdout
    say = lambda text="": print(text, file=out, flush=True)  # noqa: E731
    report = Report()
    t_job = time.monotonic()
    names = [s.name for s in stages]
    common.PROGRESS.stages = names
    for i, stage in enumerate(stages):
        res = StageResult(stage.name)
        report.results.append(res)
        tag = f"[{i + 1}/{len(stages)}] {stage.name}"
        if stage.skip:
            res.status, res.reason = "skipped", stage.skip
            say(f"== {tag}: skipped: {stage.skip}\n")
            continue
        say(f"== {tag}")
        common.LOAD.begin(stage.name)
        t0 = time.monotonic()
        try:
            got = stage.fn()
            if isinstance(got, dict):
                res.rows, res.files, res.notes = list(got.get("rows") or []), list(got.get("files") or []), list(got.get("notes") or [])
            else:
                res.rows = list(got or [])
            if write is not None:
                res.files += list(write(stage, res.rows) or [])
            if stage.notes is not None:
                res.notes += list(stage.notes(res.rows) or [])
        except KeyboardInterrupt:
            res.status, res.reason = "interrupted", "KeyboardInterrupt"
            res.seconds, res.load = time.monotonic() - t0, common.LOAD.header()
            common.PROGRESS.end()
            say(f"\n{tag}: interrupted; the summary covers the stages before it")
            break
        except Exception as exc:  # noqa: BLE001 - one stage's failure must not end the job
            res.status, res.reason = "failed", common.error_text(exc, limit=300)
            report.log = common.log_exception(f"stage {stage.name}", exc)
            common.PROGRESS.end()
            say(f"{tag} FAILED: {res.reason}\n  traceback: {_rel(report.log)}; the job goes on")
        res.seconds, res.load = time.monotonic() - t0, common.LOAD.header() if stage.timed else ""
        if res.error_rows and report.log is None and common.log_path().exists():
            report.log = common.log_path()
        for f in res.files:
            if str(f).endswith(".csv"):
                say(f"-> {_rel(f)}")
        measured = len(res.rows) - len(res.skipped_rows)
        say(f"{tag}: {res.status} in {res.seconds:.0f} s; {measured} rows"
            + (f" ({len(res.error_rows)} error rows)" if res.error_rows else "")
            + (f", {len(res.skipped_rows)} skipped" if res.skipped_rows else "") + (f"; {res.load}" if res.load else "") + "\n")
    common.PROGRESS.close()
    report.seconds = time.monotonic() - t_job
    if report.log is None and common.log_path().exists():
        report.log = common.log_path()
    return report


def format_summary(report: Report, *, where: Path | None = None) -> str:
    """The job's last words: stages run, failed (with the error) and skipped; error rows; skipped
    providers; targets; where the CSV rows and the plots went; the log; the exit status."""
    lines = [f"===== summary of run {common.RUN_ID}: {report.seconds / 60:.1f} min on {common.cpu_count()} CPUs"]
    ran = [r for r in report.results if r.status in ("ok", "failed", "interrupted")]
    failed = report.by_status("failed")
    lines.append(f"stages run: {len(ran)} of {len(report.results)} ({', '.join(r.name for r in ran) or 'none'}); "
                 f"ok: {len(report.by_status('ok'))}, failed: {len(failed)}")
    for r in failed:
        lines.append(f"  FAILED {r.name}: {r.reason}")
    for r in report.by_status("interrupted"):
        lines.append(f"  INTERRUPTED {r.name}; the stages after it did not run")
    for r in report.by_status("skipped"):
        lines.append(f"  skipped {r.name}: {r.reason}")
    errs = report.error_rows
    lines.append(f"error rows: {len(errs)}")
    groups: dict = {}
    for stage, row in errs:
        groups.setdefault((stage, row.get("provider", ""), row["error"]), []).append(row)
    for (stage, prov, err), rows in list(groups.items())[:12]:
        what = sorted({str(r.get("loss") or r.get("case") or "") for r in rows} - {""})
        lines.append(f"  {stage} {prov}: {err}" + (f" [{len(rows)} rows: {', '.join(what[:8])}{', ...' if len(what) > 8 else ''}]" if what else ""))
    if len(groups) > 12:
        lines.append(f"  ... {len(groups) - 12} more kinds of error; see the tables above")
    skips: dict = {}
    for s in report.results:
        for row in s.skipped_rows:
            skips.setdefault((s.name, row.get("provider", ""), row["skipped"]), 0)
            skips[(s.name, row.get("provider", ""), row["skipped"])] += 1
    if skips:
        lines.append("skipped providers (not errors): " + "; ".join(
            f"{stage} {prov}: {why}" + (f" ({n} rows)" if n > 1 else "") for (stage, prov, why), n in skips.items()))
    for s in report.results:
        for note in s.notes:
            lines.append(f"{s.name}: {note}")
    csvs = [(s.name, f, len([r for r in s.rows if not r.get("skipped")])) for s in report.results for f in s.files
            if str(f).endswith(".csv")]
    plots = [f for s in report.results for f in s.files if str(f).endswith(".png")]
    where = where or common.results_dir()
    lines.append(f"rows: {', '.join(f'{_rel(f)} ({n} rows)' for _, f, n in csvs) or 'none written'}")
    lines.append(f"plots: {', '.join(_rel(f) for f in plots) or 'none'}")
    if where == common.LOCAL:
        lines.append(f"(all under {_rel(where)}/, ignored by git; --record appends to the committed {_rel(common.RESULTS)}/)")
    if report.log is not None:
        lines.append(f"tracebacks: {_rel(report.log)}")
    code = report.exit_code
    why = "" if code == 0 else (" (interrupted)" if code == 130 else
                                " (" + ", ".join(x for x in (f"{len(failed)} stage(s) failed" if failed else "",
                                                             f"{len(errs)} error row(s)" if errs else "") if x) + ")")
    lines.append(f"exit status {code}{why}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- the stages
def _cpu_losses_module():
    """The compiled-CPU-kernel benchmark (imported inside its stage, so an import error fails only it)."""
    import bench_cpu_losses

    return bench_cpu_losses


def default_stages(cuda: bool) -> list:
    """Every stage; ``cpu_losses`` only on machines without a GPU (on a GPU the losses stage times CUDA)."""
    return [s for s in STAGES if s != "cpu_losses" or not cuda]


def mode_line(full: bool, cuda: bool) -> str:
    """What the console says first: quick or full, and how to get the other."""
    if full:
        return ("full mode: the README's sizes (metrics at 128^3, EDT at 64^3-256^3, losses at "
                + ("(2, 9, 128^3) with MONAI's slow baselines" if cuda else "(2, 9, 48^3), CPU kernels at 64^3 and 96^3")
                + "); drop --full for a quick run of a few minutes")
    return ("quick mode: small cases (losses at " + ("(2, 9, 128^3)" if cuda else "(2, 4, 24^3), CPU kernels at 64^3")
            + ", EDT at 128^3, metrics at 64^3 in one layout) and short time budgets, a few minutes on 2 CPUs; --full "
            "runs the README's sizes and takes much longer")


def build_stages(args, parts: list, cuda: bool) -> list:
    """The job's stages for the parsed arguments (``parts``: the benchmark stages asked for)."""
    import torch

    quick = not args.full
    losses = [n.strip() for n in args.losses.split(",") if n.strip()] if args.losses else None
    no_cuda = None
    if args.device and args.device.startswith("cuda") and not torch.cuda.is_available():
        no_cuda = f"needs a CUDA GPU (--device {args.device}) and torch sees none here"

    def losses_stage():
        import bench_losses

        rows = bench_losses.run(quick=quick, device=args.device, full=args.full, compile_=args.compile,
                                losses=losses, reference=args.reference)
        bench_losses.print_table(rows)
        return rows

    def cpu_losses_stage():
        mod = _cpu_losses_module()
        names = None
        if losses:
            names = [n for n in mod.LOSSES if common.fold_name(n) in map(common.fold_name, losses)]
        rows = mod.run(quick=quick, losses=names or None)
        mod.print_table(rows)
        return rows

    def cpu_losses_notes(rows):
        mod = sys.modules.get("bench_cpu_losses")
        return mod.target_notes(rows) if mod is not None and rows else []

    def edt_stage():
        import bench_edt

        return bench_edt.run(quick=quick)

    def metrics_stage():
        import bench_metrics

        # quick: the contiguous layout only (MONAI's one_hot); --full adds channels-last
        return bench_metrics.run(quick=quick, layouts=("contiguous",) if quick else ("contiguous", "channels_last"))

    def plots_stage():
        import plot

        return {"files": plot.make_plots(common.RUN_ID, strict=True)}

    cpu_skip = None
    if "cpu_losses" in parts:
        if not (HERE / "bench_cpu_losses.py").exists():
            cpu_skip = "benchmarks/bench_cpu_losses.py is not in this checkout"
        elif losses and not any(common.fold_name(n) in map(common.fold_name, common.CPU_KERNEL_LOSSES) for n in losses):
            cpu_skip = f"none of --losses {','.join(losses)} is one of its losses ({', '.join(common.CPU_KERNEL_LOSSES)})"
    table = {
        "losses": Stage("losses", losses_stage, "losses.csv", skip=no_cuda),
        "cpu_losses": Stage("cpu_losses", cpu_losses_stage, "cpu_losses.csv", skip=cpu_skip, notes=cpu_losses_notes),
        "edt": Stage("edt", edt_stage, "edt.csv"),
        "metrics": Stage("metrics", metrics_stage, "metrics.csv"),
    }
    stages = [table[p] for p in parts]
    plot_skip = None if importlib.util.find_spec("matplotlib") else "matplotlib not installed (pip install -e '.[bench]')"
    stages.append(Stage("plots", plots_stage, skip=plot_skip, timed=False))
    return stages


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
    common.set_record(args.record)
    print(f"fastloss benchmark run {common.RUN_ID}")
    print(mode_line(args.full, cuda))
    print(f"stages: {', '.join(parts)}, plots; rows go to {_rel(common.results_dir())}/"
          + ("" if args.record else " (ignored by git; --record appends to the committed benchmarks/results/)"))
    load = common.LOAD.snapshot()["load_start"]
    print(f"load average (1 min) {'?' if load is None else f'{load:.2f}'} on {common.cpu_count()} CPUs at the start\n")
    report = run_stages(build_stages(args, parts, cuda))
    print(format_summary(report))
    return report.exit_code


if __name__ == "__main__":
    sys.exit(main())
