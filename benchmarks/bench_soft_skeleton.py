"""clDice's soft skeleton and the two clDice losses, forward + backward: fastloss against MONAI 1.6.1 on one device.

Rows (``iter_=10``, float32, shapes (2, 3, S^3) for each ``--sizes`` S, MONAI in the same run):

- ``soft_skeleton``: ``fastloss.ops.soft_skeleton.soft_skeleton`` (on a CUDA tensor the Triton op of
  fastloss/ops/triton_soft_skeleton.py, on a CPU tensor the compiled C++ op) against MONAI's ``soft_skel`` of a
  softmax map, the gradient of ``(skel * w).sum()``;
- ``SoftclDiceLoss`` / ``SoftDiceclDiceLoss``: softmax logits, integer labels for fastloss, MONAI's one-hot
  target (built outside the timed call), ``loss.backward()``.

Before timing, each fastloss row checks itself against MONAI on the same input (the skeleton's values bitwise,
the losses to 1e-5 relative): a row that differs is an error row, not a time. Median/p20/p80 wall ms, "x MONAI",
and on CUDA the peak memory growth of one call (``torch.cuda.max_memory_allocated`` over what was allocated
before; on the CPU the column is empty). Appends to benchmarks/results/local/soft_skeleton.csv (with --record:
the committed benchmarks/results/soft_skeleton.csv) and prints a table.

    python benchmarks/bench_soft_skeleton.py [--device cuda] [--sizes 48,96] [--reps 10] [--threads 2] [--record]
"""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import fastloss  # noqa: E402
from fastloss.ops.soft_skeleton import soft_skeleton  # noqa: E402

ITERS = 10
# issue 21: at least 10x MONAI's speed and at most 0.1x its peak memory growth (clDice losses)
TARGET_SPEEDUP = 10.0
TARGET_MEMORY = 0.1


def _inputs(size: int, device: str, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shape = (2, 3, size, size, size)
    logits = torch.randn(shape, generator=g)
    labels = torch.randint(0, 3, (2, 1, size, size, size), generator=g)
    onehot = torch.nn.functional.one_hot(labels[:, 0], 3).movedim(-1, 1).float()
    w = torch.randn(shape, generator=g)
    return logits.to(device), labels.to(device), onehot.to(device), w.to(device)


def _cases(size: int, device: str):
    """``(part, provider, fn, check)``: ``fn`` is one timed forward + backward; ``check`` (fastloss only) raises
    where fastloss differs from MONAI."""
    from monai.losses import SoftclDiceLoss as MSoftclDice, SoftDiceclDiceLoss as MSoftDiceclDice
    from monai.losses.cldice import soft_skel as monai_soft_skel

    logits, labels, onehot, w = _inputs(size, device)
    prob = torch.softmax(logits, 1)

    def skel_step(op):
        def fn():
            x = prob.detach().requires_grad_()
            (op(x, ITERS) * w).sum().backward()
            return x.grad
        return fn

    def skel_check():
        with torch.no_grad():
            if not torch.equal(soft_skeleton(prob, ITERS), monai_soft_skel(prob, ITERS)):
                raise AssertionError("fastloss's soft skeleton differs from MONAI's soft_skel")

    yield "soft_skeleton", "MONAI soft_skel", skel_step(monai_soft_skel), None
    yield "soft_skeleton", "fastloss", skel_step(soft_skeleton), skel_check

    for name, theirs_cls, kw in [("SoftclDiceLoss", MSoftclDice, {}), ("SoftDiceclDiceLoss", MSoftDiceclDice, {})]:
        ours = getattr(fastloss.losses.cldice, name)(iter_=ITERS, softmax=True, to_onehot_y=True, **kw)
        theirs = theirs_cls(iter_=ITERS, softmax=True, **kw)

        def step(loss, target):
            def fn():
                x = logits.detach().requires_grad_()
                loss(x, target).backward()
                return x.grad
            return fn

        def check(ours=ours, theirs=theirs):
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                a, b = ours(logits, labels), theirs(logits, onehot)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)

        yield name, "MONAI", step(theirs, onehot), None
        yield name, "fastloss", step(ours, labels), check


def run(sizes, device: str, reps: int):
    rows = []
    for size in sizes:
        shape = f"(2, 3, {size}^3)"
        base = {}
        for part, provider, fn, check in _cases(size, device):
            row = {"bench": "soft_skeleton", "part": part, "shape": shape, "iter_": ITERS, "provider": provider,
                   "threads": torch.get_num_threads() if device == "cpu" else ""}
            try:
                if check is not None:
                    check()
                t = common.time_wall(fn, device, reps=reps, warmup=2, budget_s=60.0)
                mem = round(common.peak_extra_mib(fn), 1) if device.startswith("cuda") else ""
                row.update(t)
                row["peak_extra_mib"] = mem
                if provider.startswith("MONAI"):
                    base[part] = (t["median_ms"], mem)
                else:
                    b_ms, b_mem = base.get(part, (None, None))
                    row["x_monai"] = common.ratio(b_ms, t["median_ms"])
                    if mem != "" and b_mem:
                        row["memory_vs_monai"] = round(mem / b_mem, 3)
            except Exception as exc:  # noqa: BLE001 - an error row says what failed, the next row still runs
                row = common.error_row(row, exc, f"soft_skeleton {part} {shape} {provider}")
            rows.append(common.stamp(row, device))
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    return rows


def print_table(rows) -> None:
    print(f"{'part':<20} {'shape':<14} {'provider':<18} {'median ms':>10} {'p20':>9} {'p80':>9} "
          f"{'peak MiB':>9} {'x MONAI':>9} {'mem/MONAI':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['part']:<20} {r['shape']:<14} {r['provider']:<18} ERROR {r['error']}")
            continue
        speed = r.get("x_monai", "")
        sp = common.target_cell(str(speed).rstrip("x") if speed not in ("", "-") else "", TARGET_SPEEDUP, fmt="{:.1f}",
                                unit="x") if r["provider"] == "fastloss" and r["part"] != "soft_skeleton" else speed
        print(f"{r['part']:<20} {r['shape']:<14} {r['provider']:<18} {r['median_ms']:>10.2f} {r['p20_ms']:>9.2f} "
              f"{r['p80_ms']:>9.2f} {str(r.get('peak_extra_mib', '')):>9} {sp:>9} {str(r.get('memory_vs_monai', '')):>9}")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--sizes", default="48,96", help="comma-separated S of the (2, 3, S^3) inputs")
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2, help="torch threads on the CPU (the issue's targets: 2)")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    common.set_record(args.record)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_soft_skeleton: --device cuda needs a CUDA GPU (torch.cuda.is_available() is False)")
        return 2
    if args.device == "cpu":
        torch.set_num_threads(args.threads)
    watch = common.LoadWatch().begin("soft_skeleton")
    rows = run([int(s) for s in args.sizes.split(",") if s], args.device, args.reps)
    print(watch.header())
    print_table(rows)
    path = common.append_csv("soft_skeleton.csv", rows)
    print(f"rows appended to {path}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
