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


#: The losses of the compiled-CPU-kernel stage (bench_cpu_losses.py), spelled as fastloss.get_loss
#: spells them: one spelling per loss in every table and CSV row.
CPU_KERNEL_LOSSES = ("DiceCE", "DiceFocal", "DiceTopK", "Dice", "Tversky", "GDice", "Focal", "CE", "Lovász")


def fold_name(name: str) -> str:
    """A loss name without case, accents, spaces or punctuation (``"Lovász"`` == ``"lovasz"``), to match
    what a user types against the canonical spelling."""
    import unicodedata

    s = unicodedata.normalize("NFKD", str(name)).encode("ascii", "ignore").decode().lower()
    return "".join(ch for ch in s if ch.isalnum())


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


_VERSIONS: dict | None = None


def versions() -> dict:
    """torch, fastloss and triton versions. Triton is looked up, never imported: a CPU machine has no use
    for it, and a run must not need it (an installed-but-blocked triton reads as absent)."""
    global _VERSIONS
    if _VERSIONS is None:
        import importlib.metadata
        import importlib.util

        try:
            import fastloss

            fl = fastloss.__version__
        except Exception as exc:  # noqa: BLE001 - a row still says which torch measured it
            fl = f"unimportable ({type(exc).__name__})"
        try:
            triton = importlib.metadata.version("triton") if importlib.util.find_spec("triton") else ""
        except (ImportError, ValueError):
            triton = ""
        _VERSIONS = {"torch": torch.__version__, "fastloss": fl, "triton": triton}
    return dict(_VERSIONS)


def stamp(row: dict, device: str) -> dict:
    """Add device, versions, host, date and run id to a result row."""
    row = dict(row)
    row.setdefault("device", device_name(device))
    row.update(versions())
    row["host"] = platform.node()
    row["date"] = _dt.datetime.now().isoformat(timespec="seconds")
    row["run_id"] = RUN_ID
    row.setdefault("load_avg_1m", round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else "")
    row.setdefault("cpus", cpu_count())
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


def target_status(value, target, *, at_least: bool = True) -> str:
    """``"met"`` or ``"missed"`` for a measured ``value`` against ``target`` (``value >= target`` when
    ``at_least``, else ``value <= target``); ``"-"`` when there is no target or no value."""
    try:
        v, t = float(value), float(target)
    except (TypeError, ValueError):
        return "-"
    if v != v or t != t:  # NaN
        return "-"
    return "met" if (v >= t if at_least else v <= t) else "missed"


def target_cell(value, target, *, at_least: bool = True, fmt: str = "{:.2f}", tfmt: str = "{:.1f}",
                unit: str = "") -> str:
    """``"5.60x (>=4.0x) met"``: the value, the target and whether it was met; only the value where there
    is no target, ``"-"`` for a missing value."""
    try:
        shown = fmt.format(float(value)) + unit
    except (TypeError, ValueError):
        shown = "-"
    if target in (None, ""):
        return shown
    op = ">=" if at_least else "<="
    return f"{shown} ({op}{tfmt.format(float(target))}{unit}) {target_status(value, target, at_least=at_least)}"


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _busy_cpu_seconds() -> float | None:
    """CPU seconds all processes of the machine have run since boot (``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as fh:
            first = fh.readline().split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    # user nice system idle iowait irq softirq steal ...: busy = all but idle and iowait
    vals = [int(v) for v in first[1:9]]
    busy = sum(vals) - vals[3] - (vals[4] if len(vals) > 4 else 0)
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    """CPU seconds of this process and its finished children (worker processes included)."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


class LoadWatch:
    """How busy the machine was during a stage, for the header of its table.

    ``begin(stage)`` notes the time, the 1-minute load average, this job's CPU seconds and the machine's
    (``/proc/stat``), and samples the load average every ``every`` seconds in a daemon thread;
    :meth:`snapshot` and :meth:`header` report the stage so far: the load average at the start, now and
    its maximum, the CPU count, the CPUs this job used and those other processes used. A stage counts as
    *busy* when other processes used at least a quarter of the CPUs (where ``/proc/stat`` cannot tell:
    when the load average at the start was at least half the CPU count): on a busy machine a missed
    target may be the load's, not the code's."""

    BUSY_SHARE = 0.25

    def __init__(self, every: float = 2.0):
        self.every = every
        self.stage = ""
        self._thread = None
        self._samples: list = []
        self.begin("")

    @staticmethod
    def _load() -> float | None:
        try:
            return os.getloadavg()[0]
        except (AttributeError, OSError):
            return None

    def begin(self, stage: str = "") -> "LoadWatch":
        self.stage = stage
        self.t0 = time.monotonic()
        self.own0 = _own_cpu_seconds()
        self.busy0 = _busy_cpu_seconds()
        first = self._load()
        self._samples = [first] if first is not None else []
        if self._thread is None and self.every > 0 and first is not None:
            import threading

            def sample():
                while True:
                    time.sleep(self.every)
                    v = self._load()
                    if v is not None:
                        self._samples.append(v)

            self._thread = threading.Thread(target=sample, name="fastloss-bench-load", daemon=True)
            self._thread.start()
        return self

    def snapshot(self) -> dict:
        now = self._load()
        samples = list(self._samples) + ([now] if now is not None else [])
        wall = max(time.monotonic() - self.t0, 1e-9)
        own = (_own_cpu_seconds() - self.own0) / wall
        busy1 = _busy_cpu_seconds()
        others = None
        if self.busy0 is not None and busy1 is not None:
            others = max(0.0, (busy1 - self.busy0) / wall - own)
        cpus = cpu_count()
        start = samples[0] if samples else None
        if others is not None:
            busy = others >= self.BUSY_SHARE * cpus
        else:
            busy = start is not None and start >= 0.5 * cpus
        return {"stage": self.stage, "seconds": wall, "cpus": cpus, "load_start": start, "load_now": now,
                "load_max": max(samples) if samples else None, "own_cpus": own, "other_cpus": others, "busy": busy}

    def header(self) -> str:
        """One line: ``load average 0.41 -> 2.13 (max 2.20) on 2 CPUs; this job used 1.85 CPUs, other
        processes 0.05: quiet`` (or ``busy: ...``)."""
        s = self.snapshot()
        f = lambda v: "?" if v is None else f"{v:.2f}"  # noqa: E731
        text = (f"load average (1 min) {f(s['load_start'])} -> {f(s['load_now'])} (max {f(s['load_max'])}) "
                f"on {s['cpus']} CPUs over {s['seconds']:.0f} s; this job used {s['own_cpus']:.2f} CPUs")
        if s["other_cpus"] is not None:
            text += f", other processes {s['other_cpus']:.2f}"
        if s["busy"]:
            return text + ": BUSY (other work shared the CPUs: slow rows and missed targets may be the load's, not the code's)"
        return text + ": quiet"


#: The run's load watch: run.py begins it at each stage; each table prints its header line.
LOAD = LoadWatch()


def log_path() -> Path:
    """This run's log of tracebacks: ``benchmarks/results/local/logs/<run_id>.log`` (ignored by git, also
    with ``--record``: a log is no measurement)."""
    return LOCAL / "logs" / f"{RUN_ID}.log"


def log_text(context: str, text: str) -> Path:
    """Append ``text`` (a traceback) under a ``context`` heading to :func:`log_path`; returns the path."""
    path = log_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fh.write(f"===== {_dt.datetime.now().isoformat(timespec='seconds')} {context}\n{text.rstrip()}\n\n")
    return path


def log_exception(context: str, exc: BaseException) -> Path:
    """Append ``exc``'s traceback to the run's log (see :func:`log_text`)."""
    import traceback

    return log_text(context, "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))


def error_text(exc: BaseException, limit: int = 200) -> str:
    """``"Type: message"`` of an exception, the message cut to ``limit`` characters, on one line."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg[:limit]}" if msg else type(exc).__name__


def error_row(row: dict, exc: BaseException, context: str = "") -> dict:
    """``row`` with ``error`` set from ``exc``, its traceback logged (the row stays in the table and the CSV)."""
    row = dict(row)
    row["error"] = error_text(exc)
    log_exception(context or " ".join(str(v) for v in row.values()), exc)
    return row


def skip_row(row: dict, reason: str) -> dict:
    """A provider that cannot run here (optional package missing, GPU-only): a reason row for the table
    and the summary; the main job does not write it to the CSV."""
    row = dict(row)
    row["skipped"] = reason
    return row


def print_skips(rows, key: str = "provider") -> None:
    """One line per (provider, reason) of the skipped rows, naming what they would have measured."""
    groups: dict = {}
    for r in rows:
        if r.get("skipped"):
            groups.setdefault((r.get(key, ""), r["skipped"]), []).append(r)
    for (prov, reason), rs in groups.items():
        what = sorted({str(r.get("loss") or r.get("maps") or r.get("shape") or "") for r in rs} - {""})
        more = f" ({len(rs)} rows: {', '.join(what[:6])}{', ...' if len(what) > 6 else ''})" if len(rs) > 1 and what else ""
        print(f"skipped {prov}: {reason}{more}")


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
                self.bar.set_postfix_str("")
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
