"""Shared benchmark plumbing: timers, environment facts and the append-only CSV files.

Every row carries the device, the versions and the date, so rows measured on different machines never
get compared by accident (compare ratios only within one run: same ``run_id``).
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

RESULTS = Path(__file__).resolve().parent / "results"
RUN_ID = os.environ.get("FASTLOSS_BENCH_RUN_ID") or _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


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
    """Append rows to ``benchmarks/results/<name>``; the header grows if new columns appear."""
    rows = list(rows)
    path = RESULTS / name
    RESULTS.mkdir(parents=True, exist_ok=True)
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
    s = sorted(samples_ms)
    q = statistics.quantiles(s, n=10, method="inclusive") if len(s) > 1 else [s[0]] * 9
    return {"median_ms": statistics.median(s), "p20_ms": q[1], "p80_ms": q[7], "reps": len(s)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def time_wall(fn: Callable[[], object], device: str, *, reps: int, warmup: int = 2, budget_s: float = 20.0) -> dict:
    """Eager wall time of ``fn`` per call, one synchronize after each call."""
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
    """tqdm when installed, else a plain counter on stderr."""

    def __init__(self, total: int, desc: str):
        self.total, self.desc, self.n = total, desc, 0
        try:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=desc, leave=False)
        except ImportError:
            self.bar = None

    def step(self, label: str = "") -> None:
        self.n += 1
        if self.bar is not None:
            self.bar.set_postfix_str(label[:40])
            self.bar.update(1)
        else:
            import sys

            print(f"[{self.desc} {self.n}/{self.total}] {label}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
