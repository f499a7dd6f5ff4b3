"""The main job's stage runner (benchmarks/run.py) with stub stages: no benchmark is timed here.

A stage that raises does not stop the next one; the job's exit status is non-zero only at the end, and
the summary names the failed stage and its error; error rows count, skipped rows do not; targets read
``met``/``missed``; every stage reports the load average and the CPU count."""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_had_run_id = "FASTLOSS_BENCH_RUN_ID" in os.environ
common = _load("common")
run = _load("run")
if not _had_run_id:  # common.py exports its run id for its worker processes; not for the rest of the suite
    os.environ.pop("FASTLOSS_BENCH_RUN_ID", None)


@pytest.fixture(autouse=True)
def _results_in_tmp(tmp_path, monkeypatch):
    """Rows, plots and logs of these tests go to a temporary folder, never benchmarks/results/."""
    monkeypatch.setattr(common, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(common, "LOCAL", tmp_path / "results" / "local")
    monkeypatch.setenv("FASTLOSS_BENCH_RECORD", "0")
    common.PROGRESS.close()
    yield
    common.PROGRESS.close()


def _row(**kw):
    return common.stamp({"bench": "stub", "loss": "Dice", "provider": "fastloss", "median_ms": 1.0, **kw}, "cpu")


def _run(stages, write=run._write_rows):
    out = io.StringIO()
    report = run.run_stages(stages, write=write, out=out)
    return report, out.getvalue()


def test_a_failing_stage_does_not_stop_the_next_and_the_exit_status_is_non_zero_at_the_end():
    ran = []

    def boom():
        ran.append("boom")
        raise ValueError("the stub stage broke")

    def fine():
        ran.append("fine")
        return [_row()]

    report, text = _run([run.Stage("boom", boom, "boom.csv"), run.Stage("fine", fine, "fine.csv")])
    assert ran == ["boom", "fine"]
    assert [r.status for r in report.results] == ["failed", "ok"]
    assert report.results[0].reason == "ValueError: the stub stage broke"
    assert report.exit_code == 1
    assert "boom FAILED: ValueError: the stub stage broke" in text
    # the traceback went to the run's log under the output folder (ignored by git)
    log = common.log_path()
    assert report.log == log and log.is_relative_to(common.LOCAL)
    body = log.read_text()
    assert "Traceback (most recent call last)" in body and "ValueError: the stub stage broke" in body
    # the stage after it wrote its rows
    assert (common.LOCAL / "fine.csv").exists() and not (common.LOCAL / "boom.csv").exists()

    summary = run.format_summary(report)
    assert "FAILED boom: ValueError: the stub stage broke" in summary
    assert "stages run: 2 of 2" in summary and "failed: 1" in summary
    assert "fine.csv (1 rows)" in summary
    assert summary.rstrip().endswith("exit status 1 (1 stage(s) failed)")


def test_error_rows_count_and_set_the_exit_status_skipped_rows_do_not():
    def stage():
        return [_row(), _row(provider="monai", error="ModuleNotFoundError: No module named 'triton'"),
                common.skip_row({"loss": "Dice", "provider": "edt-pkg"}, "the edt package is not installed")]

    report, text = _run([run.Stage("losses", stage, "losses.csv")])
    res = report.results[0]
    assert res.status == "ok" and len(res.error_rows) == 1 and len(res.skipped_rows) == 1
    assert report.exit_code == 1
    # the skipped row is a reason, not a measurement: not in the CSV
    written = (common.LOCAL / "losses.csv").read_text()
    assert "edt-pkg" not in written and "ModuleNotFoundError" in written
    summary = run.format_summary(report)
    assert "error rows: 1" in summary
    assert "losses monai: ModuleNotFoundError: No module named 'triton'" in summary
    assert "edt-pkg: the edt package is not installed" in summary
    assert "exit status 1 (1 error row(s))" in summary


def test_all_ok_or_skipped_exits_zero_and_says_where_rows_went():
    report, text = _run([run.Stage("edt", lambda: [_row()], "edt.csv"),
                         run.Stage("gpu", lambda: pytest.fail("a skipped stage must not run"), skip="needs a CUDA GPU")])
    assert [r.status for r in report.results] == ["ok", "skipped"]
    assert report.exit_code == 0
    assert "gpu: skipped: needs a CUDA GPU" in text
    summary = run.format_summary(report)
    assert "skipped gpu: needs a CUDA GPU" in summary
    assert "edt.csv (1 rows)" in summary and "ignored by git" in summary
    assert summary.rstrip().endswith("exit status 0")


def test_interrupt_stops_the_job_and_reports_it():
    def stop():
        raise KeyboardInterrupt

    report, _ = _run([run.Stage("a", stop), run.Stage("b", lambda: pytest.fail("runs after Ctrl-C"))], write=None)
    assert [r.status for r in report.results] == ["interrupted"]
    assert report.exit_code == 130


def test_every_stage_reports_the_load_average_and_the_cpu_count():
    header = common.LOAD.begin("stub").header()
    assert header.startswith("load average (1 min) ")
    assert f"on {common.cpu_count()} CPUs" in header
    assert header.endswith(": quiet") or ": BUSY" in header
    _, text = _run([run.Stage("one", lambda: []), run.Stage("two", lambda: [])], write=None)
    ends = [line for line in text.splitlines() if line.startswith(("[1/2] one: ok", "[2/2] two: ok"))]
    assert len(ends) == 2 and all("load average (1 min)" in line and "CPUs" in line for line in ends)


def test_busy_reads_as_busy(monkeypatch):
    watch = common.LoadWatch(every=0)
    clock = iter([100.0, 101.0, 101.0])  # begin, then two snapshots one second later
    monkeypatch.setattr(common.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(common, "_own_cpu_seconds", lambda: 0.0)
    busy = iter([0.0, float(common.cpu_count()), float(common.cpu_count())])
    monkeypatch.setattr(common, "_busy_cpu_seconds", lambda: next(busy))
    watch.begin("stub")
    # every CPU busy for the whole second, none of it this job's: other work
    snap = watch.snapshot()
    assert snap["busy"] and snap["other_cpus"] == pytest.approx(common.cpu_count())
    assert ": BUSY" in watch.header()


def test_met_and_missed_against_a_target():
    assert common.target_status(5.6, 4.0) == "met"
    assert common.target_status(3.9, 4.0) == "missed"
    assert common.target_status(0.3, 0.5, at_least=False) == "met"
    assert common.target_status(0.6, 0.5, at_least=False) == "missed"
    assert common.target_status(None, 4.0) == "-" and common.target_status(2.0, None) == "-"
    assert common.target_cell(5.6, 4.0, unit="x") == "5.60x (>=4.0x) met"
    assert common.target_cell(0.62, 0.5, at_least=False) == "0.62 (<=0.5) missed"
    assert common.target_cell(3.06, None, unit="x") == "3.06x"


def test_the_cpu_kernel_table_says_met_or_missed_under_a_load_header(capsys):
    cpu = _load("bench_cpu_losses")

    def r(loss, provider, threads, ms, mib, **kw):
        return {"bench": "cpu_loss", "loss": loss, "shape": "2x9x64x64x64", "provider": provider, "threads": threads,
                "wall_median_ms": ms, "wall_p20_ms": ms, "wall_p80_ms": ms, "peak_growth_mib": mib, "value": 0.5,
                "timing": "stub", **kw}

    rows = [r("DiceCE", "fastloss", 2, 5.0, 18, speedup_median_of_rounds=6.0, scaling_median_of_rounds=1.8),
            r("DiceCE", "monai", 2, 30.0, 100), r("DiceCE", "fastloss", 1, 9.0, 18),
            r("CE", "fastloss", 2, 10.0, 18, speedup_median_of_rounds=1.2, scaling_median_of_rounds=1.5),
            r("CE", "torch", 2, 12.0, 20), r("CE", "fastloss", 1, 15.0, 18),
            {"loss": "Dice", "shape": "2x9x64x64x64", "provider": "fastloss", "threads": 2, "error": "RuntimeError: x"}]
    common.LOAD.begin("cpu_losses")
    cpu.print_table(rows)
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("load average (1 min)")
    dice_ce = next(line for line in out.splitlines() if line.startswith("DiceCE"))
    assert "6.00x (>=4.0x) met" in dice_ce and "0.18 (<=0.5) met" in dice_ce and "1.80 (>=1.7) met" in dice_ce
    ce = next(line for line in out.splitlines() if line.startswith("CE "))
    assert "1.20x (>=1.5x) missed" in ce and "0.90 (<=0.5) missed" in ce and "1.50 (>=1.7) missed" in ce
    assert "Dice" in out and "error: RuntimeError: x" in out
    (note,) = cpu.target_notes(rows)
    assert "speed 1/2 met" in note and "missed: CE speed" in note


def test_one_spelling_per_loss_name():
    import fastloss

    losses, cpu, plot = _load("bench_losses"), _load("bench_cpu_losses"), _load("plot")
    names = set(fastloss.PAPER_LOSSES)
    assert set(losses.TABLE2) <= names
    assert set(cpu.LOSSES) <= names and "Lovász" in cpu.LOSSES
    assert set(cpu.SPEED_TARGET) == set(cpu.LOSSES)
    assert {n for family in plot.FAMILIES.values() for n in family} <= set(losses.TABLE2)
    assert cpu.canonical("lovasz") == "Lovász" and cpu.canonical("dice_ce") == "DiceCE"


def test_gpu_only_and_missing_providers_are_skipped_rows_not_errors(monkeypatch):
    losses = _load("bench_losses")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "monai" else real(name, *a))
    provs = dict(losses.providers("Dice", "cpu", compile_=True))
    assert "fastloss" in provs  # a callable, or the exception that building it raised (an error row)
    assert "GPU-only" in provs["torch.compile"]
    assert "MONAI not installed" in provs["monai"]


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the no-GPU answer")
def test_a_cuda_stage_without_a_gpu_is_skipped_with_its_reason():
    args = run.argparse.Namespace(full=False, losses=None, device="cuda", compile=False, reference=False)
    stages = {s.name: s for s in run.build_stages(args, ["losses", "edt"], cuda=True)}
    assert "needs a CUDA GPU" in stages["losses"].skip
    assert stages["edt"].skip is None and "plots" in stages


def test_the_benchmark_modules_import_without_triton():
    code = ("import sys; sys.modules['triton'] = None; sys.path.insert(0, sys.argv[1]); "
            "import common, run, bench_losses, bench_cpu_losses, plot; assert common.versions()['triton'] == ''")
    res = subprocess.run([sys.executable, "-c", code, str(BENCH)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr


def test_a_cpu_kernel_job_that_fails_is_an_error_row_and_its_baseline_is_still_measured():
    cpu = _load("bench_cpu_losses")
    shape, jobs = (2, 9, 64, 64, 64), [("fastloss", 2), ("monai", 2), ("fastloss", 1)]
    t_out = [{"samples": {"monai:2": [30.0, 31.0, 29.0], "fastloss:1": [9.0, 9.5, 8.5]},
              "errors": {"fastloss:2": {"error": "RuntimeError: stub kernel", "traceback": "Traceback: stub"}}}]
    mem = {j: {"peak_growth_mib": 18.0, "value": 0.5} for j in jobs}
    rows = cpu._rows_of("Dice", shape, jobs, "monai", "stub", t_out, mem)
    by = {(r["provider"], r["threads"]): r for r in rows}
    assert by[("fastloss", 2)]["error"] == "RuntimeError: stub kernel"
    assert by[("monai", 2)]["wall_median_ms"] == 30.0 and "error" not in by[("monai", 2)]
    assert by[("fastloss", 1)]["wall_median_ms"] == 9.0
    assert "Traceback: stub" in common.log_path().read_text()
