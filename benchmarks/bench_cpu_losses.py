"""The Dice/CE-family losses on the CPU: fastloss's compiled kernels against what users run today.

Issue 9's measurement: float32 logits and integer labels, forward + backward, MONAI 1.6.1 in the same run.
Per (loss, shape):

- **time**: a worker process runs fastloss on 2 threads, the baseline on 2 threads and fastloss on 1
  thread round by round (the order rotating each round), after 2 warm-up steps each; three such processes
  one after the other, their rounds pooled. Per row the median, p20 and p80 of its steps; and, on the
  fastloss 2-thread row, the medians of the per-round ratios (baseline / fastloss, and 1 thread / 2
  threads). On a shared 2-core machine a 2-thread step swings up to 2x with the other load; steps of the
  same round see the same load, so the per-round ratios hold where the times alone do not. Three
  processes, because a process's allocator state colours all its rounds: MONAI's median (2, 9, 64³) Dice
  step was 18.6, 22.6 and 26.7 ms in three processes of the same minute;
- **peak memory growth of one step**, each provider in its own process (so that one's allocator state does
  not colour another's): the resident-set high-water mark during one step minus the resident set before
  it (the gradient of the logits included, for every provider alike: fastloss's cache of freed gradient
  buffers, ``ops/cpu_buffers.py``, is emptied first), with glibc told to serve every
  allocation over 64 KiB by mmap, so that freed tensors leave the resident set at once;
- the loss value, so that the table can show the providers agree.

Providers: ``fastloss`` (the class with MONAI's arguments, or the paper's configuration where MONAI has no
class), ``monai`` (the same class from MONAI; DiceTopK: MONAI's DiceLoss plus ``torch.topk`` of the
per-voxel CE, 10 %), ``torch`` (CE: ``F.cross_entropy``; Lovász: fastloss's ``LovaszSoftmaxLoss`` on its
torch backend, i.e. Berman et al.'s algorithm with ``torch.sort``, as their reference code runs it).

``python benchmarks/bench_cpu_losses.py [--full] [--losses DiceCE,Dice] [--record]``
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LOSSES = ("DiceCE", "DiceFocal", "DiceTopK", "Dice", "Tversky", "GDice", "Focal", "CE", "Lovasz")
# issue 9's targets: speed ratio against the baseline, and peak-memory ratio at most 0.5 (Lovász has no
# target: its baseline is the same loss on fastloss's torch backend, Berman et al.'s torch.sort algorithm)
SPEED_TARGET = {"DiceCE": 4.0, "DiceFocal": 4.0, "DiceTopK": 4.0, "Dice": 3.0, "Tversky": 3.0, "GDice": 3.0,
                "Focal": 3.0, "CE": 1.5, "Lovasz": None}
MEMORY_TARGET = 0.5
QUICK_SHAPES = ((2, 9, 64, 64, 64),)
FULL_SHAPES = ((2, 9, 64, 64, 64), (2, 14, 96, 96, 96))
MONAI_KW = dict(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)


# ----------------------------------------------------------------------------------------------- providers
def _make(provider: str, name: str):
    """The loss callable ``f(logits, labels)`` of one provider, or None where it has none."""
    import torch
    import torch.nn.functional as F

    if provider == "fastloss":
        import fastloss as lib
    elif provider == "monai":
        try:
            import monai.losses as lib
        except ImportError:
            return None
    else:  # torch
        if name == "CE":
            return lambda x, y: F.cross_entropy(x, y[:, 0])
        if name == "Lovasz":  # run with FASTLOSS_BACKEND=torch (see _run_worker)
            import fastloss

            return fastloss.get_loss("Lovász")
        return None
    if name == "CE":
        return lib.get_loss("CE") if provider == "fastloss" else None
    if name == "Lovasz":
        return lib.get_loss("Lovász") if provider == "fastloss" else None
    if name == "DiceTopK":
        if provider == "fastloss":
            return lib.get_loss("DiceTopK")
        dice = lib.DiceLoss(**MONAI_KW)

        def dice_topk(x, y):  # nnU-Net's DC_and_topk_loss as a MONAI user writes it
            ce = F.cross_entropy(x, y[:, 0], reduction="none").flatten()
            k = max(1, int(ce.numel() * 10 / 100))
            return dice(x, y) + ce.topk(k, sorted=False).values.mean()

        return dice_topk
    table = {
        "DiceCE": lambda: lib.DiceCELoss(**MONAI_KW),
        "DiceFocal": lambda: lib.DiceFocalLoss(gamma=2.0, **MONAI_KW),
        "Dice": lambda: lib.DiceLoss(**MONAI_KW),
        "Tversky": lambda: lib.TverskyLoss(alpha=0.3, beta=0.7, **MONAI_KW),
        "GDice": lambda: lib.GeneralizedDiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True),
        "Focal": lambda: lib.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0),
    }
    return table[name]()


def _providers(name: str):
    return ("fastloss", "torch") if name in ("CE", "Lovasz") else ("fastloss", "monai")


# ------------------------------------------------------------------------------------------------- worker
def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # resets VmHWM to the current resident set
        return True
    except OSError:
        return False


def _data(shape):
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g).requires_grad_()
    y = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    return x, y


def _stepper(provider: str, name: str, x, y):
    """One forward + backward of ``provider``'s loss; Lovász's torch provider runs on the torch backend."""
    fn = _make(provider, name)
    torch_backend = provider == "torch" and name == "Lovasz"

    def step():
        if torch_backend:
            os.environ["FASTLOSS_BACKEND"] = "torch"
        try:
            loss = fn(x, y)
            loss.backward()
        finally:
            if torch_backend:
                os.environ.pop("FASTLOSS_BACKEND", None)
        x.grad = None
        return loss

    return step


def memory_worker(spec: dict) -> dict:
    """Loss value and peak memory growth of one step of one provider (its own process)."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    x, y = _data(tuple(spec["shape"]))
    step = _stepper(spec["provider"], spec["loss"], x, y)
    value = float(step().detach())
    step()
    # every allocation over 64 KiB an mmap of its own (mallopt M_MMAP_THRESHOLD), freed memory handed
    # back, so the resident set follows the live tensors
    peak_mib = None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD
        gc.collect()
        # fastloss keeps freed gradient buffers for the next step (ops/cpu_buffers.py): handed back here,
        # so the measured step allocates its gradient afresh and counts it, as the baselines' steps do
        from fastloss.ops import cpu_buffers

        cpu_buffers.empty_cache()
        libc.malloc_trim(0)
    except OSError:
        libc = None
    if libc is not None and _reset_peak():
        before = _status_kib("VmRSS")
        step()
        peak_mib = max(0, _status_kib("VmHWM") - before) / 1024.0
    return {"value": value, "peak_growth_mib": peak_mib}


def timing_worker(spec: dict) -> dict:
    """Step times of every (provider, threads) of one loss and shape, round by round in one process."""
    import torch

    x, y = _data(tuple(spec["shape"]))
    jobs = [tuple(j) for j in spec["jobs"]]  # (provider, threads)
    steps = {j: _stepper(j[0], spec["loss"], x, y) for j in jobs}
    for j in jobs:  # warm-up: first-call costs (allocator, thread pool, caches)
        torch.set_num_threads(j[1])
        steps[j]()
        steps[j]()
    samples = {j: [] for j in jobs}
    t_end = time.perf_counter() + float(spec["budget_s"])
    rounds = 0
    while rounds < int(spec["rounds"]) and (rounds < 3 or time.perf_counter() < t_end):
        for k in range(len(jobs)):
            j = jobs[(rounds + k) % len(jobs)]
            torch.set_num_threads(j[1])
            t0 = time.perf_counter()
            steps[j]()
            samples[j].append((time.perf_counter() - t0) * 1e3)
        rounds += 1
    return {"samples": {f"{p}:{t}": v for (p, t), v in samples.items()}}


TIMING_PROCESSES = 3


def pooled_timing(specs_out: list, baseline: str) -> dict:
    """Summaries of the rounds of several timing workers pooled: per (provider, threads) the step times,
    and the medians of the per-round ratios (each ratio within one worker's round)."""
    import statistics

    keys = specs_out[0]["samples"].keys()
    out = {k: common.summarize([v for o in specs_out for v in o["samples"][k]]) for k in keys}
    fl2, base2, fl1 = "fastloss:2", f"{baseline}:2", "fastloss:1"
    if fl2 in keys and base2 in keys:
        out["speedup_median_of_rounds"] = statistics.median(
            b / f for o in specs_out for b, f in zip(o["samples"][base2], o["samples"][fl2]))
    if fl2 in keys and fl1 in keys:
        out["scaling_median_of_rounds"] = statistics.median(
            a / f for o in specs_out for a, f in zip(o["samples"][fl1], o["samples"][fl2]))
    return out


def _run_worker(spec: dict) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec.get("threads", 2))
    env.pop("FASTLOSS_BACKEND", None)  # the default (compiled CPU kernels); _stepper sets Lovász's torch provider
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise RuntimeError(f"worker {spec} failed:\n{res.stderr[-2000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- run
def run(quick: bool = True, losses=None, progress=None) -> list:
    """Time every loss and shape round by round in one process, then each provider's memory in its own;
    returns stamped rows (one per provider and thread count)."""
    if _make("monai", "Dice") is None:
        print("bench_cpu_losses: MONAI is not installed (pip install -e '.[bench]'): fastloss rows only")
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    names = [n for n in (losses or LOSSES)]
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise ValueError(f"unknown losses {unknown}; known: {LOSSES}")
    rows = []
    cases = [(shape, name) for shape in shapes for name in names]
    for i, (shape, name) in enumerate(cases):
        baseline = _providers(name)[1]
        jobs = [("fastloss", 2)] + ([(baseline, 2)] if _make(baseline, name) is not None else []) + [("fastloss", 1)]
        label = f"{name} {'x'.join(map(str, shape))}"
        print(f"[{i + 1}/{len(cases)}] {label}: time ({', '.join(f'{p} {t}t' for p, t in jobs)}), then memory",
              flush=True)
        if progress is not None:
            progress(label)
        big = shape[2] >= 96
        rounds = 4 if big else 14  # per process; TIMING_PROCESSES processes
        t = pooled_timing([_run_worker(dict(mode="time", loss=name, shape=list(shape), jobs=[list(j) for j in jobs],
                                            baseline=baseline, rounds=rounds, budget_s=40.0))
                           for _ in range(TIMING_PROCESSES)], baseline)
        for provider, threads in jobs:
            m = _run_worker(dict(mode="memory", loss=name, shape=list(shape), provider=provider, threads=threads))
            w = t[f"{provider}:{threads}"]
            row = {
                "bench": "cpu_loss", "loss": name, "shape": "x".join(map(str, shape)), "dtype": "float32",
                "provider": provider, "threads": threads, "timing": f"interleaved x{TIMING_PROCESSES} processes",
                "wall_median_ms": w["median_ms"], "wall_p20_ms": w["p20_ms"], "wall_p80_ms": w["p80_ms"],
                "wall_reps": w["reps"], "peak_growth_mib": m["peak_growth_mib"], "value": m["value"],
            }
            if (provider, threads) == ("fastloss", 2):
                row["speedup_median_of_rounds"] = t.get("speedup_median_of_rounds", "")
                row["scaling_median_of_rounds"] = t.get("scaling_median_of_rounds", "")
            rows.append(common.stamp(row, "cpu"))
    return rows


def print_table(rows) -> None:
    by = {(r["loss"], r["shape"], r["provider"], int(r["threads"])): r for r in rows}
    head = (f"{'loss':10s} {'shape':16s} {'fastloss':>9s} {'baseline':>9s} {'speed':>7s} {'target':>6s} "
            f"{'MiB fl/base':>13s} {'mem':>5s} {'1t/2t':>6s} agree")
    print("CPU, float32 logits, integer labels, forward+backward, 2 threads; ms median (lower is better)")
    print(head)
    print("-" * len(head))
    for (loss, shape, provider, threads), r in by.items():
        if provider != "fastloss" or threads != 2:
            continue
        base_name = "torch" if loss in ("CE", "Lovasz") else "monai"
        b = by.get((loss, shape, base_name, 2))
        one = by.get((loss, shape, "fastloss", 1))
        fl = float(r["wall_median_ms"])
        speed = f"{float(b['wall_median_ms']) / fl:.2f}x" if b else "-"
        if r.get("speedup_median_of_rounds") not in (None, ""):
            speed = f"{float(r['speedup_median_of_rounds']):.2f}x"
        mem = "-"
        mems = f"{float(r['peak_growth_mib'] or 0):.0f}/-"
        if b and r["peak_growth_mib"] not in (None, "") and b["peak_growth_mib"] not in (None, ""):
            mems = f"{float(r['peak_growth_mib']):.0f}/{float(b['peak_growth_mib']):.0f}"
            mem = f"{float(r['peak_growth_mib']) / max(float(b['peak_growth_mib']), 1e-9):.2f}"
        scale = f"{float(one['wall_median_ms']) / fl:.2f}" if one else "-"
        if r.get("scaling_median_of_rounds") not in (None, ""):
            scale = f"{float(r['scaling_median_of_rounds']):.2f}"
        agree = "-"
        if b:
            v, w = float(r["value"]), float(b["value"])
            agree = "yes" if abs(v - w) <= 1e-4 * max(1.0, abs(w)) else f"NO ({v:.6g} vs {w:.6g})"
        flag = "~" if common.noisy(r, "wall_") or (b and common.noisy(b, "wall_")) else " "
        target = f"{SPEED_TARGET[loss]:5.1f}x" if SPEED_TARGET[loss] else "    - "
        print(f"{loss:10s} {shape:16s} {fl:9.2f} {float(b['wall_median_ms']) if b else float('nan'):9.2f} "
              f"{speed:>7s}{flag}{target} {mems:>13s} {mem:>5s} {scale:>6s} {agree}")
    print(f"speed: median over rounds of baseline ms / fastloss ms (target per loss); mem: peak growth ratio (target <= {MEMORY_TARGET}); "
          "1t/2t: median over rounds of fastloss 1 thread / 2 threads (target >= 1.7); ~: wide p20-p80 spread")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--full", action="store_true", help="both shapes of issue 9: (2, 9, 64^3) and (2, 14, 96^3)")
    ap.add_argument("--losses", default=None, help=f"comma-separated subset of {','.join(LOSSES)}")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    common.set_record(args.record)
    if args.worker:
        spec = json.loads(args.worker)
        print(json.dumps(timing_worker(spec) if spec["mode"] == "time" else memory_worker(spec)))
        return 0
    rows = run(quick=not args.full, losses=args.losses.split(",") if args.losses else None)
    print_table(rows)
    print("->", common.append_csv("cpu_losses.csv", rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
