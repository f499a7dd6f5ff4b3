"""Shared benchmark plumbing: timers, environment facts and the append-only CSV files.

Every row carries the device, the versions and the date, so rows measured on different machines never
get compared by accident (compare ratios only within one run: same ``run_id``).

Where rows go: a user's run appends to ``benchmarks/results/local/`` (ignored by git); only a run asked
to record (``--record``, :func:`set_record`, or ``FASTLOSS_BENCH_RECORD=1`` in the environment, which
child processes inherit) appends to the committed ``benchmarks/results/*.csv`` that the README cites.
"""

from __future__ import annotations

import csv
import datetime as _dt
import os
import platform
import statistics
import time
import uuid
from pathlib import Path
from typing import Callable, Iterable

import torch

RESULTS = Path(__file__).resolve().parent / "results"  # committed rows and plots (written with --record)
LOCAL = RESULTS / "local"  # a user's runs (in .gitignore)
RUN_ID = os.environ.get("FASTLOSS_BENCH_RUN_ID") or _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]
# child processes (benchmarks that run a provider per process) join the same run
os.environ.setdefault("FASTLOSS_BENCH_RUN_ID", RUN_ID)

#: (p80 - p20) / median above which a timing is flagged as noisy
NOISY_SPREAD = 0.25


def recording() -> bool:
    """Whether this run appends to the committed files (``FASTLOSS_BENCH_RECORD=1``)."""
    return os.environ.get("FASTLOSS_BENCH_RECORD", "0").strip().lower() in ("1", "true", "yes")


def set_record(on: bool) -> None:
    """Record into the committed ``benchmarks/results/`` (True) or the untracked ``results/local/``.

    Set through the environment, so child processes started afterwards follow it too."""
    os.environ["FASTLOSS_BENCH_RECORD"] = "1" if on else "0"


def results_dir() -> Path:
    """Where this run's CSV rows and plots go: ``results/`` when recording, else ``results/local/``."""
    return RESULTS if recording() else LOCAL


def add_record_argument(parser) -> None:
    """The ``--record`` flag every benchmark script shares."""
    parser.add_argument(
        "--record",
        action="store_true",
        help="append the rows to the committed benchmarks/results/*.csv (default: benchmarks/results/local/, "
        "ignored by git)",
    )


def device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} threads)"


def versions() -> dict:
    import fastloss

    out = {"torch": torch.__version__, "fastloss": fastloss.__version__}
    try:
        import triton

        out["triton"] = triton.__version__
    except Exception:  # noqa: BLE001
        out["triton"] = ""
    return out


def stamp(row: dict, device: str) -> dict:
    """Add device, versions, host, date and run id to a result row."""
    row = dict(row)
    row.setdefault("device", device_name(device))
    row.update(versions())
    row["host"] = platform.node()
    row["date"] = _dt.datetime.now().isoformat(timespec="seconds")
    row["run_id"] = RUN_ID
    return row


def append_csv(name: str, rows: Iterable[dict]) -> Path:
    """Append rows to ``<results_dir()>/<name>``; the header grows if new columns appear.

    ``results_dir()`` is the committed ``benchmarks/results/`` only when recording (``--record``),
    else the untracked ``benchmarks/results/local/``."""
    rows = list(rows)
    out_dir = results_dir()
    path = out_dir / name
    out_dir.mkdir(parents=True, exist_ok=True)
    old_rows, fields = [], []
    if path.exists():
        with path.open(newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            old_rows = list(reader)
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for r in old_rows + rows:
            writer.writerow({k: r.get(k, "") for k in fields})
    return path


def summarize(samples_ms: list) -> dict:
    """Median, p20, p80 and the relative spread ``(p80 - p20) / median`` of the samples (ms)."""
    s = sorted(samples_ms)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    med = statistics.median(s)
    spread = (q[7] - q[1]) / med if med > 0 else 0.0
    return {"median_ms": med, "p20_ms": q[1], "p80_ms": q[7], "reps": len(s), "spread": round(spread, 3)}


def noisy(row: dict, prefix: str = "") -> bool:
    """Whether a row's p20-p80 spread is wide (over :data:`NOISY_SPREAD` of its median)."""
    try:
        med = float(row[f"{prefix}median_ms"])
        return med > 0 and (float(row[f"{prefix}p80_ms"]) - float(row[f"{prefix}p20_ms"])) / med > NOISY_SPREAD
    except (KeyError, TypeError, ValueError):
        return False


def ratio(baseline_ms, ms) -> str:
    """``"12.3x"``: how many times faster than the baseline (``"-"`` when either is missing)."""
    try:
        b, v = float(baseline_ms), float(ms)
    except (TypeError, ValueError):
        return "-"
    return f"{b / v:.3g}x" if v > 0 else "-"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_wall(fn: Callable[[], object], device: str, *, reps: int, warmup: int = 2, budget_s: float = 20.0) -> dict:
    """Eager wall time of ``fn`` per call, one synchronize after each call.

    Up to ``reps`` timed calls; stops early once ``budget_s`` is spent and 3 calls are in. Keep
    ``reps`` >= 10 where the calls are cheap: p20/p80 of fewer samples are interpolations."""
    for _ in range(warmup):
        fn()
    sync(device)
    samples = []
    t_end = time.perf_counter() + budget_s
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        sync(device)
        samples.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() > t_end and len(samples) >= 3:
            break
    return summarize(samples)


def time_cuda_graph(fn: Callable[[], object], *, reps: int = 50) -> dict | None:
    """GPU time: ``fn`` captured once in a CUDA graph and replayed (None if it cannot be captured)."""
    try:
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(s)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            fn()
    except Exception:  # noqa: BLE001 - host syncs / CPU work make some baselines uncapturable
        torch.cuda.synchronize()
        return None
    graph.replay()
    torch.cuda.synchronize()
    samples = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        graph.replay()
        b.record()
        b.synchronize()
        samples.append(a.elapsed_time(b))
    del graph
    return summarize(samples)


def count_launches(fn: Callable[[], object]) -> dict:
    """Kernel launches and host syncs per call, from torch.profiler's CUDA runtime events."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    launches = syncs = 0
    for ev in prof.events():
        name = ev.name
        if name in ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx", "cudaLaunchKernelExC"):
            launches += 1
        elif name in ("cudaStreamSynchronize", "cudaMemcpy", "cudaDeviceSynchronize"):
            syncs += 1
        elif name == "cudaMemcpyAsync" and "DtoH" in str(getattr(ev, "metadata_json", "")):
            syncs += 1
    # the trailing torch.cuda.synchronize() is ours, not the step's
    return {"launches": launches, "host_syncs": max(0, syncs - 1)}


def peak_extra_mib(fn: Callable[[], object]) -> float:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbs(device: str) -> float:
    """Measured device copy bandwidth (read + write bytes per second), for the HBM floor."""
    n = 256 * 2**20 // 4
    a = torch.empty(n, device=device)
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    torch.cuda.synchronize()
    ev0, ev1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    ev0.record()
    for _ in range(20):
        b.copy_(a)
    ev1.record()
    ev1.synchronize()
    sec = ev0.elapsed_time(ev1) / 1e3 / 20
    return 2 * a.numel() * 4 / sec / 1e9


class Progress:
    """One progress display for a whole run: a single tqdm bar (or a counter on stderr) that every
    stage reuses. ``begin(stage, total)`` starts a stage, ``step(label)`` counts one job, ``end()``
    closes the stage. Use the module's :data:`PROGRESS`; ``Progress(total, desc)`` alone (the old
    form) begins a stage at once."""

    def __init__(self, total: int | None = None, desc: str = ""):
        self.bar = None
        self.stages: list = []  # the stages of the whole run, when a driver (run.py) names them
        self.stage, self.total, self.n = "", 0, 0
        if total is not None:
            self.begin(desc, total)

    def begin(self, stage: str, total: int) -> "Progress":
        self.stage, self.total, self.n = stage, int(total), 0
        desc = stage
        if stage in self.stages:
            desc = f"[{self.stages.index(stage) + 1}/{len(self.stages)}] {stage}"
        self._desc = desc
        try:
            from tqdm import tqdm
        except ImportError:
            self.bar = None
        else:
            if self.bar is None:
                self.bar = tqdm(total=self.total, desc=desc, leave=False, dynamic_ncols=True)
            else:
                self.bar.reset(total=self.total)
                self.bar.set_description(desc)
        return self

    def step(self, label: str = "") -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label[:40])
            self.bar.update(1)
        else:
            import sys

            print(f"{self._desc} {self.n}/{self.total} {label}", file=sys.stderr, flush=True)

    def write(self, text: str) -> None:
        """Print a line without breaking the bar."""
        if self.bar is not None:
            self.bar.write(text)
        else:
            print(text, flush=True)

    def end(self) -> None:
        """The stage is done; the bar stays for the next stage (``close()`` removes it)."""
        if self.bar is not None:
            if any(self is p for p in _SHARED):
                self.bar.clear()  # the stage's table prints on a clean line; the bar comes back on the next step
            else:
                self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


#: The run's one progress display (run.py names the stages; each benchmark begins its own).
PROGRESS = Progress()
_SHARED = [PROGRESS]
