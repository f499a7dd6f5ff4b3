"""MONAI's other segmentation losses on the CPU: fastloss against MONAI 1.6.1 (issue 21's targets).

Forward + backward of one training step's loss, CPU, 2 threads (``--threads``), float32 logits, integer labels:

- ``SoftclDiceLoss`` and ``SoftDiceclDiceLoss``, softmax, ``iter_=10``, at (2, 3, 48³) and (2, 3, 96³): targets at
  least ``10x`` MONAI's speed and at most ``0.1x`` its peak memory growth;
- ``MCCLoss`` (softmax), ``GeneralizedWassersteinDiceLoss`` (the 0/1 distance matrix ``1 − I`` as a float32 numpy
  array, MONAI's example type), ``AsymmetricUnifiedFocalLoss`` (MONAI's binary form on channels 0 and 1 of the
  softmax probabilities, ``num_classes=C``) and ``NACLLoss`` (mean filter 3, L1) at (2, 9, 64³): at least ``3x``,
  at most ``0.5x``.

Inputs, the same tensors for both sides, built outside the timed region as a user's dataloader would: logits
``(B, C, *spatial)`` from a seeded generator, labels ``(B, 1, *spatial)`` (NACL: ``(B, *spatial)``, MONAI's shape).
MONAI gets the labels with ``to_onehot_y=True`` wherever it has the argument (its usual input: its one-hot encoding
is part of what it costs per step, and the row's ``case`` says so); GWDice and NACL take labels in MONAI anyway.
The Unified Focal loss reads probabilities in both libraries: the softmax of the logits, computed outside the timed
region, is the leaf that gets the gradient.

Per (case, provider) one worker process: two warm-up steps (one for MONAI's clDice at 48³, none at 96³, where one
step takes about a minute: its time and memory are then those of a cold first step, the row says so), timed steps
up to ``--reps`` or the time budget, then one step whose peak memory growth is measured (resident-set high-water
mark minus the resident set before it, every allocation over 64 KiB an mmap of its own so that freed tensors leave
the resident set; fastloss's cache of freed gradient buffers emptied first). The loss values of the two
providers are compared (an error row where they differ). Rows: median, p20, p80 (ms), ``x_baseline`` (MONAI's
median / fastloss's), ``target_x``, ``peak_growth_mib``, ``mem_ratio`` (fastloss / MONAI), ``target_mem``, the load
average at the row and the run's ``load_*`` columns.

A full run takes about 4 minutes on a quiet 2-core machine, most of it MONAI's clDice at 96³; ``--quick`` (what
``benchmarks/run.py`` runs as its ``monai_more`` stage) keeps the four (2, 9, 64³) losses and runs clDice at
(2, 3, 32³) only, in well under two minutes: a smoke test of the ratios, not the README's numbers.

Appends to benchmarks/results/local/monai_more.csv (with ``--record``: the committed benchmarks/results/monai_more.csv).

    python benchmarks/bench_monai_more.py [--quick] [--only MCC,NACL] [--reps 10] [--threads 2] [--record]
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

CSV = "monai_more.csv"
SPEED_10X, MEM_01X, SPEED_3X, MEM_05X = 10.0, 0.1, 3.0, 0.5
CLDICE = ("clDice", "DiceclDice")
OTHERS = ("MCC", "GWDice", "UnifiedFocal", "NACL")
CLASS_NAMES = {"clDice": "SoftclDiceLoss", "DiceclDice": "SoftDiceclDiceLoss", "MCC": "MCCLoss",
               "GWDice": "GeneralizedWassersteinDiceLoss", "UnifiedFocal": "AsymmetricUnifiedFocalLoss",
               "NACL": "NACLLoss"}
CASE_TEXT = {
    "clDice": "softmax, iter_=10; MONAI to_onehot_y=True (its one-hot inside the step)",
    "DiceclDice": "softmax, iter_=10; MONAI to_onehot_y=True (its one-hot inside the step)",
    "MCC": "softmax; MONAI to_onehot_y=True (its one-hot inside the step)",
    "GWDice": "dist_matrix 1-I (float32 numpy); labels on both sides",
    "UnifiedFocal": "binary form on softmax probabilities (leaf outside the step), num_classes=C, to_onehot_y=True",
    "NACL": "mean filter 3, L1, alpha 0.1; labels (B, *spatial) on both sides",
}


def cases(quick: bool, only=None) -> list:
    """(loss, shape, target_x, target_mem) of the run."""
    sizes = (32,) if quick else (48, 96)
    out = [(n, (2, 3, s, s, s), SPEED_10X, MEM_01X) for s in sizes for n in CLDICE]
    out += [(n, (2, 9, 64, 64, 64), SPEED_3X, MEM_05X) for n in OTHERS]
    if only:
        want = {common.fold_name(o) for o in only}
        out = [c for c in out if common.fold_name(c[0]) in want or common.fold_name(CLASS_NAMES[c[0]]) in want]
    return out


# ----------------------------------------------------------------------------------------------- providers
def _make(provider: str, name: str, C: int):
    """The loss module of ``provider`` (``"fastloss"`` or ``"monai"``) for ``name``."""
    import numpy as np

    if provider == "fastloss":
        import fastloss as lib
    else:
        import monai.losses as lib
    cls = getattr(lib, CLASS_NAMES[name])
    if name in CLDICE:
        return cls(iter_=10, softmax=True, to_onehot_y=True)
    if name == "MCC":
        return cls(softmax=True, to_onehot_y=True)
    if name == "GWDice":
        return cls(dist_matrix=(np.ones((C, C)) - np.eye(C)).astype(np.float32))
    if name == "UnifiedFocal":
        return cls(to_onehot_y=True, num_classes=C)
    return cls(classes=C, dim=3)  # NACL


def _inputs(name: str, shape):
    """(leaf that gets the gradient, loss input, target), built before any timing."""
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=g)
    y = torch.randint(0, shape[1], (shape[0], 1) + tuple(shape[2:]), generator=g)
    if name == "UnifiedFocal":
        leaf = torch.softmax(x, 1).requires_grad_()
        return leaf, leaf, y
    leaf = x.requires_grad_()
    return leaf, leaf, (y[:, 0] if name == "NACL" else y)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return -1


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # VmHWM back to the current resident set
        return True
    except OSError:
        return False


def worker(spec: dict) -> dict:
    """Warm-up, one memory-measured (and timed) step, then timed steps, for one provider and case."""
    import torch

    torch.set_num_threads(int(spec["threads"]))
    name, shape = spec["loss"], tuple(spec["shape"])
    leaf, inp, tgt = _inputs(name, shape)
    loss = _make(spec["provider"], name, shape[1])

    def step():
        leaf.grad = None
        out = loss(inp, tgt)
        out.backward()
        return out

    import warnings

    warnings.simplefilter("ignore")  # MONAI's deprecation notes are not the measurement
    value = None
    for _ in range(int(spec["warmup"])):
        value = float(step().detach())
    samples = []
    cold = int(spec["warmup"]) == 0  # one cold step: timed and memory-measured at once (MONAI's clDice at 96^3)
    if not cold:  # timed steps first, with the allocator as it is (its mmap setting below slows every step)
        t_end = time.perf_counter() + float(spec["budget_s"])
        while len(samples) < int(spec["reps"]) and (len(samples) < int(spec["min_reps"]) or time.perf_counter() < t_end):
            t0 = time.perf_counter()
            step()
            samples.append((time.perf_counter() - t0) * 1e3)
    leaf.grad = None
    gc.collect()
    peak = None
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 65536)  # M_MMAP_THRESHOLD: every allocation over 64 KiB an mmap, freed at once
        if spec["provider"] == "fastloss":
            from fastloss.ops import cpu_buffers

            cpu_buffers.empty_cache()  # the measured step allocates its gradient afresh, as MONAI's does
        libc.malloc_trim(0)
    except (OSError, ImportError):
        libc = None
    measured = libc is not None and _reset_peak()
    before = _status_kib("VmRSS")
    t0 = time.perf_counter()
    out = step()
    if cold:
        samples.append((time.perf_counter() - t0) * 1e3)
    if measured:
        peak = max(0, _status_kib("VmHWM") - before) / 1024.0
    value = float(out.detach()) if value is None else value
    return {"samples": samples, "peak_growth_mib": peak, "value": value}


def _run_worker(spec: dict, timeout: float = 900) -> dict:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = str(spec["threads"])
    env.pop("FASTLOSS_BACKEND", None)  # the default: compiled CPU kernels
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        tail = res.stderr.strip().splitlines()
        common.log_text(f"monai_more worker {spec['provider']} {spec['loss']}", res.stderr[-8000:])
        raise RuntimeError(f"worker failed: {tail[-1] if tail else res.returncode}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _plan(provider: str, name: str, shape, reps: int) -> dict:
    """Warm-up steps, timed steps and budget: MONAI's clDice steps take seconds (48³) to a minute (96³)."""
    slow = provider == "monai" and name in CLDICE
    if slow and shape[2] >= 96:
        return dict(warmup=0, reps=1, min_reps=1, budget_s=0.0)
    if slow and shape[2] >= 48:
        return dict(warmup=1, reps=2, min_reps=2, budget_s=0.0)
    if slow:
        return dict(warmup=1, reps=3, min_reps=3, budget_s=5.0)
    return dict(warmup=2, reps=reps, min_reps=3, budget_s=8.0)


# ---------------------------------------------------------------------------------------------------- run
def _base(name, shape, provider, threads) -> dict:
    return {"bench": "monai_more", "loss": name, "class": CLASS_NAMES[name], "shape": "x".join(map(str, shape)),
            "dtype": "float32", "provider": provider, "threads": threads, "case": CASE_TEXT[name]}


def run(quick: bool = False, only=None, reps: int = 10, threads: int = 2) -> list:
    todo = cases(quick, only)
    if importlib.util.find_spec("monai") is None:
        return [common.skip_row(_base(n, s, "monai", threads), "MONAI not installed (pip install monai)") for n, s, _, _ in todo]
    rows = []
    bar = common.PROGRESS.begin("monai_more", len(todo))
    for name, shape, target_x, target_mem in todo:
        got = {}
        for provider in ("fastloss", "monai"):
            spec = dict(provider=provider, loss=name, shape=list(shape), threads=threads,
                        **_plan(provider, name, shape, reps))
            try:
                got[provider] = _run_worker(spec)
            except Exception as exc:  # noqa: BLE001 - an error row; the next case still runs
                got[provider] = {"error": common.error_text(exc)}
            got[provider]["plan"] = spec
        fl, mo = got["fastloss"], got["monai"]
        for provider, res in (("monai", mo), ("fastloss", fl)):
            row = _base(name, shape, provider, threads)
            plan = res["plan"]
            row["steps"] = ("1 cold step (timed and memory-measured)" if plan["warmup"] == 0
                            else f"{plan['warmup']} warm-up, timed steps, then the memory step")
            if "error" in res:
                rows.append(common.stamp(dict(row, error=res["error"]), "cpu"))
                continue
            st = common.summarize(res["samples"])
            row.update({"median_ms": round(st["median_ms"], 3), "p20_ms": round(st["p20_ms"], 3),
                        "p80_ms": round(st["p80_ms"], 3), "reps": st["reps"], "spread": st["spread"],
                        "peak_growth_mib": None if res["peak_growth_mib"] is None else round(res["peak_growth_mib"], 1),
                        "value": res["value"]})
            if provider == "fastloss" and "error" not in mo:
                mst = common.summarize(mo["samples"])
                row["x_baseline"] = round(mst["median_ms"] / st["median_ms"], 2)
                row["target_x"] = target_x
                if res["peak_growth_mib"] is not None and mo.get("peak_growth_mib"):
                    row["mem_ratio"] = round(res["peak_growth_mib"] / mo["peak_growth_mib"], 3)
                row["target_mem"] = target_mem
                if abs(res["value"] - mo["value"]) > 1e-4 * max(1.0, abs(mo["value"])):
                    row["error"] = f"loss {res['value']:.7g} != MONAI's {mo['value']:.7g}"
            rows.append(common.stamp(row, "cpu"))
        bar.step(f"{name} {shape[2]}^3")
    bar.end()
    return rows


def verdicts(rows) -> list:
    """Per fastloss row with a baseline: (row, speed met/missed, memory met/missed)."""
    out = []
    for r in rows:
        if r.get("provider") != "fastloss" or "x_baseline" not in r:
            continue
        out.append((r, common.target_status(r["x_baseline"], r["target_x"]),
                    common.target_status(r.get("mem_ratio"), r["target_mem"], at_least=False)))
    return out


def target_notes(rows) -> list:
    v = verdicts(rows)
    if not v:
        return []
    sp = sum(s == "met" for _, s, _ in v)
    me = sum(m == "met" for _, _, m in v)
    missed = [f"{r['loss']} {r['shape']} {what}" for r, s, m in v for what, st in (("speed", s), ("memory", m))
              if st == "missed"]
    text = f"targets speed {sp}/{len(v)} met, memory {me}/{len(v)} met"
    if missed:
        text += "; missed: " + ", ".join(missed)
        if common.LOAD.snapshot()["busy"]:
            text += " (the machine was busy: rerun on a quiet one before reading a miss as the code's)"
    return [text]


def print_table(rows) -> None:
    print(common.LOAD.header())
    print("CPU, float32 logits, integer labels, forward+backward; ms median [p20-p80]; MiB: peak growth of one step")
    head = (f"{'loss':12s} {'shape':14s} {'fastloss':>22s} {'MONAI':>24s}  {'speed (target)':<22s} "
            f"{'MiB fl/MONAI':>14s}  {'mem (target)':<22s}")
    print(head)
    print("-" * len(head))
    by = {(r["loss"], r["shape"], r["provider"]): r for r in rows if not r.get("skipped")}
    for r, _, _ in verdicts(rows):
        b = by.get((r["loss"], r["shape"], "monai"), {})
        cell = lambda x: f"{x['median_ms']:.1f} [{x['p20_ms']:.0f}-{x['p80_ms']:.0f}]" if "median_ms" in x else "-"  # noqa: E731
        mib = f"{r.get('peak_growth_mib') or 0:.0f}/{b.get('peak_growth_mib') or 0:.0f}"
        speed = common.target_cell(r["x_baseline"], r["target_x"], unit="x")
        mem = common.target_cell(r.get("mem_ratio"), r["target_mem"], at_least=False, fmt="{:.3f}", tfmt="{:.1f}")
        flag = " ~" if common.noisy(r) or common.noisy(b) else ""
        print(f"{r['loss']:12s} {r['shape']:14s} {cell(r):>22s} {cell(b):>24s}  {speed:<22s} {mib:>14s}  {mem:<22s}"
              f"{flag}{'  ERROR ' + r['error'] if r.get('error') else ''}")
    for r in rows:
        if r.get("error") and "x_baseline" not in r:
            print(f"{r['loss']:12s} {r['shape']:14s} {r['provider']}: error: {r['error']}")
    common.print_skips(rows)
    print("speed: MONAI median / fastloss median; mem: peak growth fastloss / MONAI; ~: wide p20-p80 spread")
    for line in target_notes(rows):
        print(line)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--quick", action="store_true", help="the (2, 9, 64^3) losses and clDice at 32^3 only")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(CLDICE + OTHERS)}")
    ap.add_argument("--reps", type=int, default=10, help="timed steps per provider (fewer past the budget)")
    ap.add_argument("--threads", type=int, default=2)
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    common.set_record(args.record)
    rows = run(quick=args.quick, only=args.only.split(",") if args.only else None, reps=args.reps, threads=args.threads)
    print_table(rows)
    keep = [r for r in rows if not r.get("skipped")]
    if keep:
        print("->", common.append_csv(CSV, keep))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
