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

That is ``--full`` (the README's table). The quick mode of the main job (``benchmarks/run.py`` without
``--full``) keeps the shape (2, 9, 64³) and the interleaved rounds but runs them in one timing process for
all losses (8 rounds each, fewer past a 3 s budget: at least 3) and measures memory in one process per
provider for all losses, two such processes at a time (the freed tensors of the loss before are unmapped
first; fastloss's 1-thread memory, which no target reads, is left out), so that it takes about a minute instead
of ten: its ratios are a smoke test, not the README's numbers.

Targets (issue 9): speed ratio per loss (``SPEED_TARGET``), peak-memory ratio at most ``MEMORY_TARGET``,
2 threads at least ``SCALING_TARGET`` times as fast as one; the table says ``met`` or ``missed`` for each,
under a header with the load average and the CPUs other processes used during the stage.

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
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

LOSSES = common.CPU_KERNEL_LOSSES  # fastloss.get_loss's spelling ("Lovász"), in the table and the CSV rows
# issue 9's targets: speed ratio against the baseline, and peak-memory ratio at most 0.5 (Lovász has no
# target: its baseline is the same loss on fastloss's torch backend, Berman et al.'s torch.sort algorithm)
SPEED_TARGET = {"DiceCE": 4.0, "DiceFocal": 4.0, "DiceTopK": 4.0, "Dice": 3.0, "Tversky": 3.0, "GDice": 3.0,
                "Focal": 3.0, "CE": 1.5, "Lovász": None}
MEMORY_TARGET = 0.5
SCALING_TARGET = 1.7  # fastloss on 2 threads / on 1 thread
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
        if name == "Lovász":  # run with FASTLOSS_BACKEND=torch (see _stepper)
            import fastloss

            return fastloss.get_loss("Lovász")
        return None
    if name == "CE":
        return lib.get_loss("CE") if provider == "fastloss" else None
    if name == "Lovász":
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
    return ("fastloss", "torch") if name in ("CE", "Lovász") else ("fastloss", "monai")


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
    torch_backend = provider == "torch" and name == "Lovász"

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
        try:
            from fastloss.ops import cpu_buffers
        except ImportError:  # an older or newer layout without the cache: nothing to empty
            pass
        else:
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

    import traceback

    x, y = _data(tuple(spec["shape"]))
    jobs = [tuple(j) for j in spec["jobs"]]  # (provider, threads)
    steps, errors = {}, {}
    for j in jobs:  # build, then warm up: first-call costs (allocator, thread pool, caches)
        try:
            torch.set_num_threads(j[1])
            step = _stepper(j[0], spec["loss"], x, y)
            step()
            step()
            steps[j] = step
        except Exception as exc:  # noqa: BLE001 - that job is an error row; the others are still timed
            errors[f"{j[0]}:{j[1]}"] = {"error": common.error_text(exc), "traceback": traceback.format_exc()}
    jobs = [j for j in jobs if j in steps]
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
    return {"samples": {f"{p}:{t}": v for (p, t), v in samples.items()}, "errors": errors}


TIMING_PROCESSES = 3


def pooled_timing(specs_out: list, baseline: str) -> dict:
    """Summaries of the rounds of several timing workers pooled: per (provider, threads) the step times,
    and the medians of the per-round ratios (each ratio within one worker's round)."""
    import statistics

    keys = [k for k in specs_out[0]["samples"] if all(k in o["samples"] for o in specs_out)]
    out = {k: common.summarize([v for o in specs_out for v in o["samples"][k]]) for k in keys}
    fl2, base2, fl1 = "fastloss:2", f"{baseline}:2", "fastloss:1"
    if fl2 in keys and base2 in keys:
        out["speedup_median_of_rounds"] = statistics.median(
            b / f for o in specs_out for b, f in zip(o["samples"][base2], o["samples"][fl2]))
    if fl2 in keys and fl1 in keys:
        out["scaling_median_of_rounds"] = statistics.median(
            a / f for o in specs_out for a, f in zip(o["samples"][fl1], o["samples"][fl2]))
    return out




def _guarded(fn, spec: dict) -> dict:
    """``fn(spec)``, or ``{"error": "Type: message", "traceback": ...}`` when it raises (one loss of a
    worker that serves several must not take the others down)."""
    import traceback

    try:
        return fn(spec)
    except Exception as exc:  # noqa: BLE001
        return {"error": common.error_text(exc), "traceback": traceback.format_exc()}


def many_worker(spec: dict) -> dict:
    """The quick mode's workers: ``spec["mode"]`` ``time_many`` (the rounds of every loss, one after the
    other) or ``memory_many`` (one provider and thread count, every loss), in one process; per loss the
    result of :func:`timing_worker` / :func:`memory_worker` or its error."""
    fn = timing_worker if spec["mode"] == "time_many" else memory_worker
    out = {}
    for item in spec["items"]:
        out[item["loss"]] = _guarded(fn, dict(spec, **item))
        gc.collect()
    return {"by_loss": out}


def _run_worker(spec: dict, timeout: float = 1800) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec.get("threads", 2))
    env.pop("FASTLOSS_BACKEND", None)  # the default (compiled CPU kernels); _stepper sets Lovász's torch provider
    # a world without triton (python -c "sys.modules['triton'] = None; ...") reaches the workers too
    if sys.modules.get("triton", 0) is None:
        env["FASTLOSS_BENCH_BLOCK_TRITON"] = "1"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()
        last = tail[-1] if tail else f"exit status {res.returncode}"
        common.log_text(f"cpu_losses worker {spec.get('mode')} {spec.get('loss', '')}", res.stderr[-8000:])
        raise RuntimeError(f"worker ({spec.get('mode')}) failed: {last}")
    return json.loads(res.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------- run
def _jobs(name: str) -> tuple:
    """(baseline, [(provider, threads)]) of one loss: fastloss on 2 threads, the baseline on 2 (where it
    is installed) and fastloss on 1 thread."""
    baseline = _providers(name)[1]
    have = baseline != "monai" or importlib.util.find_spec("monai") is not None
    return baseline, [("fastloss", 2)] + ([(baseline, 2)] if have else []) + [("fastloss", 1)]


def _row(name, shape, provider, threads, timing, w, m, t) -> dict:
    row = {
        "bench": "cpu_loss", "loss": name, "shape": "x".join(map(str, shape)), "dtype": "float32",
        "provider": provider, "threads": threads, "timing": timing,
        "wall_median_ms": w["median_ms"], "wall_p20_ms": w["p20_ms"], "wall_p80_ms": w["p80_ms"],
        "wall_reps": w["reps"], "peak_growth_mib": m.get("peak_growth_mib"), "value": m.get("value"),
    }
    if (provider, threads) == ("fastloss", 2):
        row["speedup_median_of_rounds"] = t.get("speedup_median_of_rounds", "")
        row["scaling_median_of_rounds"] = t.get("scaling_median_of_rounds", "")
    return row


def _base_row(name, shape, provider, threads) -> dict:
    return {"bench": "cpu_loss", "loss": name, "shape": "x".join(map(str, shape)), "dtype": "float32",
            "provider": provider, "threads": threads}


def _error_rows(name, shape, jobs, message: str, trace: str = "") -> list:
    if trace:
        common.log_text(f"cpu_losses {name} {'x'.join(map(str, shape))}", trace)
    return [common.stamp(dict(_base_row(name, shape, p, t), error=message), "cpu") for p, t in jobs]


def _rows_of(name, shape, jobs, baseline, timing_label, t_out: list, mem: dict) -> list:
    """Rows of one loss and shape from its timing outputs and per-job memory results (errors as rows)."""
    bad = [o for o in t_out if "error" in o]
    if bad:
        return _error_rows(name, shape, jobs, bad[0]["error"], bad[0].get("traceback", ""))
    t = pooled_timing(t_out, baseline)
    rows = []
    for provider, threads in jobs:
        m = mem.get((provider, threads)) or {"peak_growth_mib": "", "value": ""}
        failed = next((o["errors"][f"{provider}:{threads}"] for o in t_out
                       if f"{provider}:{threads}" in o.get("errors", {})), None)
        key = f"{provider}:{threads}"
        if failed is not None or key not in t:
            failed = failed or {"error": "no timing (the job failed in a timing process)"}
            rows += _error_rows(name, shape, [(provider, threads)], failed["error"], failed.get("traceback", ""))
        elif "error" in m:
            rows += _error_rows(name, shape, [(provider, threads)], "memory: " + m["error"], m.get("traceback", ""))
        else:
            rows.append(common.stamp(_row(name, shape, provider, threads, timing_label, t[key], m, t), "cpu"))
    return rows


def _run_full(shapes, names) -> list:
    """The README's protocol: per loss and shape, TIMING_PROCESSES timing processes, then each provider's
    memory in its own process."""
    rows = []
    cases = [(shape, name) for shape in shapes for name in names]
    bar = common.PROGRESS.begin("cpu_losses", len(cases))
    for shape, name in cases:
        baseline, jobs = _jobs(name)
        label = f"{name} {'x'.join(map(str, shape))}"
        try:
            rounds = 4 if shape[2] >= 96 else 14  # per process; TIMING_PROCESSES processes
            t_out = [_run_worker(dict(mode="time", loss=name, shape=list(shape), jobs=[list(j) for j in jobs],
                                      baseline=baseline, rounds=rounds, budget_s=40.0))
                     for _ in range(TIMING_PROCESSES)]
            mem = {}
            for provider, threads in jobs:
                try:
                    mem[(provider, threads)] = _run_worker(dict(mode="memory", loss=name, shape=list(shape),
                                                                provider=provider, threads=threads))
                except Exception as exc:  # noqa: BLE001 - a row of its own
                    mem[(provider, threads)] = {"error": common.error_text(exc)}
            rows += _rows_of(name, shape, jobs, baseline, f"interleaved x{TIMING_PROCESSES} processes", t_out, mem)
        except Exception as exc:  # noqa: BLE001 - the next loss still runs
            rows += _error_rows(name, shape, jobs, common.error_text(exc))
        bar.step(label)
    bar.end()
    return rows


QUICK_ROUNDS = 8
QUICK_BUDGET_S = 3.0  # per loss: at least 3 rounds, then stop once this is spent
MEMORY_PARALLEL = 2  # quick mode's memory processes at a time


def _run_quick(shapes, names) -> list:
    """The quick protocol: one timing process for every loss, then one memory process per (provider,
    threads) for every loss."""
    rows = []
    plan = {name: _jobs(name) for name in names}
    kinds = list(dict.fromkeys(j for _, jobs in plan.values() for j in jobs))
    bar = common.PROGRESS.begin("cpu_losses", len(shapes) * len(kinds))
    for shape in shapes:
        items = [dict(loss=n, jobs=[list(j) for j in jobs], baseline=b) for n, (b, jobs) in plan.items()]
        try:
            timed = _run_worker(dict(mode="time_many", shape=list(shape), items=items, rounds=QUICK_ROUNDS,
                                     budget_s=QUICK_BUDGET_S), timeout=900)["by_loss"]
        except Exception as exc:  # noqa: BLE001 - the whole process failed: every loss is an error row
            timed = {n: {"error": common.error_text(exc)} for n in names}
        bar.step("timing")
        mem: dict = {n: {} for n in names}
        # no target reads fastloss's 1-thread memory (the gradient is the same): quick mode leaves it out
        mem_kinds = [k for k in kinds if k != ("fastloss", 1)]

        def measure(kind, shape=shape):
            provider, threads = kind
            its = [dict(loss=n) for n, (_, jobs) in plan.items() if kind in jobs]
            try:
                return kind, _run_worker(dict(mode="memory_many", shape=list(shape), provider=provider,
                                              threads=threads, items=its), timeout=600)["by_loss"]
            except Exception as exc:  # noqa: BLE001
                return kind, {it["loss"]: {"error": common.error_text(exc)} for it in its}

        # the memory processes run two at a time: each measures its own resident set, which the other
        # does not change (the timing is over by now), and most of their time is importing torch and MONAI
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=MEMORY_PARALLEL) as pool:
            for (provider, threads), got in pool.map(measure, mem_kinds):
                for n, m in got.items():
                    mem[n][(provider, threads)] = m
                bar.step(f"memory {provider} {threads}t")
        for n, (baseline, jobs) in plan.items():
            rows += _rows_of(n, shape, jobs, baseline, "interleaved x1 process (quick)", [timed[n]], mem[n])
    bar.end()
    return rows


def run(quick: bool = True, losses=None, progress=None) -> list:
    """Time every loss and shape round by round, then each provider's memory; returns stamped rows (one
    per provider and thread count; error rows for a loss that failed, skipped rows for a baseline that is
    not installed). ``quick``: (2, 9, 64³) in one timing process (see the module's docstring)."""
    shapes = QUICK_SHAPES if quick else FULL_SHAPES
    names = [canonical(n) for n in (losses or LOSSES)]
    unknown = [n for n in names if n not in LOSSES]
    if unknown:
        raise ValueError(f"unknown losses {unknown}; known: {LOSSES}")
    rows = (_run_quick if quick else _run_full)(shapes, names)
    if importlib.util.find_spec("monai") is None:
        for shape in shapes:
            for n in names:
                if _providers(n)[1] == "monai":
                    rows.append(common.skip_row(_base_row(n, shape, "monai", 2), "MONAI not installed (pip install -e '.[bench]')"))
    return rows


def canonical(name: str) -> str:
    """The spelling of LOSSES for a name typed any way (``"lovasz"`` -> ``"Lovász"``)."""
    for n in LOSSES:
        if common.fold_name(n) == common.fold_name(name):
            return n
    return name


def _verdicts(rows) -> list:
    """Per fastloss 2-thread row: (row, baseline row, speed, memory ratio, scaling, their met/missed)."""
    by = {(r["loss"], r["shape"], r["provider"], int(r["threads"])): r for r in rows
          if not r.get("error") and not r.get("skipped")}
    out = []
    for (loss, shape, provider, threads), r in by.items():
        if provider != "fastloss" or threads != 2:
            continue
        b = by.get((loss, shape, _providers(loss)[1], 2))
        one = by.get((loss, shape, "fastloss", 1))
        fl = float(r["wall_median_ms"])
        speed = float(b["wall_median_ms"]) / fl if b else None
        if b and r.get("speedup_median_of_rounds") not in (None, ""):
            speed = float(r["speedup_median_of_rounds"])
        mem = None
        if b and r.get("peak_growth_mib") not in (None, "") and b.get("peak_growth_mib") not in (None, ""):
            mem = float(r["peak_growth_mib"]) / max(float(b["peak_growth_mib"]), 1e-9)
        scale = float(one["wall_median_ms"]) / fl if one else None
        if r.get("scaling_median_of_rounds") not in (None, ""):
            scale = float(r["scaling_median_of_rounds"])
        out.append({"row": r, "base": b, "speed": speed, "mem": mem, "scale": scale,
                    "speed_ok": common.target_status(speed, SPEED_TARGET.get(loss)),
                    "mem_ok": common.target_status(mem, MEMORY_TARGET if SPEED_TARGET.get(loss) else None, at_least=False),
                    "scale_ok": common.target_status(scale, SCALING_TARGET)})
    return out


def target_notes(rows) -> list:
    """Summary lines: how many targets were met and which were missed (with the load of the stage)."""
    v = _verdicts(rows)
    if not v:
        return []
    counts, missed = {}, []
    shapes = {d["row"]["shape"] for d in v}
    for d in v:
        for what, key in (("speed", "speed_ok"), ("memory", "mem_ok"), ("1t/2t", "scale_ok")):
            if d[key] in ("met", "missed"):
                c = counts.setdefault(what, [0, 0])
                c[0 if d[key] == "met" else 1] += 1
                if d[key] == "missed":
                    missed.append(f"{d['row']['loss']} {what}" + (f" at {d['row']['shape']}" if len(shapes) > 1 else ""))
    text = "targets " + ", ".join(f"{w} {c[0]}/{c[0] + c[1]} met" for w, c in counts.items())
    if missed:
        text += "; missed: " + ", ".join(missed)
        if common.LOAD.snapshot()["busy"]:
            text += " (the machine was busy during the stage: rerun on a quiet one before reading a miss as the code's)"
    return [text]


def print_table(rows) -> None:
    print(common.LOAD.header())
    print("CPU, float32 logits, integer labels, forward+backward, 2 threads; ms median (lower is better); "
          f"timing: {next((r.get('timing') for r in rows if r.get('timing')), '-')}")
    head = (f"{'loss':10s} {'shape':16s} {'fastloss':>9s} {'baseline':>9s}  {'speed (target)':<22s} "
            f"{'MiB fl/base':>13s}  {'mem (target)':<21s} {'1t/2t (target)':<21s} agree")
    print(head)
    print("-" * len(head))
    for d in _verdicts(rows):
        r, b = d["row"], d["base"]
        loss, shape = r["loss"], r["shape"]
        fl = float(r["wall_median_ms"])
        mems = f"{float(r['peak_growth_mib'] or 0):.0f}/-"
        if d["mem"] is not None:
            mems = f"{float(r['peak_growth_mib']):.0f}/{float(b['peak_growth_mib']):.0f}"
        agree = "-"
        if b:
            v, w = float(r["value"]), float(b["value"])
            agree = "yes" if abs(v - w) <= 1e-4 * max(1.0, abs(w)) else f"NO ({v:.6g} vs {w:.6g})"
        flag = "~" if common.noisy(r, "wall_") or (b and common.noisy(b, "wall_")) else " "
        speed = common.target_cell(d["speed"], SPEED_TARGET.get(loss), unit="x")
        mem = common.target_cell(d["mem"], MEMORY_TARGET if SPEED_TARGET.get(loss) else None, at_least=False)
        scale = common.target_cell(d["scale"], SCALING_TARGET)
        print(f"{loss:10s} {shape:16s} {fl:9.2f} {float(b['wall_median_ms']) if b else float('nan'):9.2f}{flag} "
              f"{speed:<22s} {mems:>13s}  {mem:<21s} {scale:<21s} {agree}")
    for r in rows:
        if r.get("error"):
            print(f"{r['loss']:10s} {r['shape']:16s} {r['provider']} {r['threads']}t error: {r['error']}")
    common.print_skips(rows)
    print("speed: median over rounds of baseline ms / fastloss ms; mem: peak growth ratio fastloss / baseline; "
          "1t/2t: median over rounds of fastloss 1 thread / 2 threads; ~: wide p20-p80 spread")
    for line in target_notes(rows):
        print(line)


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
        mode = spec["mode"]
        out = many_worker(spec) if mode.endswith("_many") else timing_worker(spec) if mode == "time" else memory_worker(spec)
        print(json.dumps(out))
        return 0
    rows = run(quick=not args.full, losses=args.losses.split(",") if args.losses else None)
    print_table(rows)
    print("->", common.append_csv("cpu_losses.csv", [r for r in rows if not r.get("skipped")]))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    if os.environ.get("FASTLOSS_BENCH_BLOCK_TRITON") == "1":
        sys.modules["triton"] = None  # the parent ran in a world without triton: so do its workers
    sys.exit(main())
