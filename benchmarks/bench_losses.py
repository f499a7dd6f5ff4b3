"""Forward+backward of every paper loss: fastloss against what users run today, in one run.

Providers (each where it applies):

- ``fastloss``: ``fastloss.get_loss(name)`` with the default backend (Triton kernels for CUDA tensors);
- ``fastloss-torch``: the same loss on the torch backend (``FASTLOSS_BACKEND=torch``; GPU only, on the
  CPU it is the same code as ``fastloss``);
- ``torch.compile``: ``torch.compile`` of the torch backend (GPU, ``--compile``);
- ``monai``: MONAI's class in the paper's configuration, where MONAI has the loss;
- ``torch``: what a user writes by hand (``F.cross_entropy``, nnU-Net-style TopK), where it exists;
- ``reference`` (only with ``--reference``): ``fastloss.reference``, the naive float64 oracle the tests
  compare against. It is slow by design (seconds per step) and no baseline anyone trains with.

The table's "x baseline" column is how many times faster a row is than the baseline of its loss
(MONAI where MONAI has the loss, else the hand-written torch); rows whose p20-p80 spread exceeds 25 % of
the median are marked ``~`` (noisy: rerun, or trust the ratio less).

On the GPU every row has the GPU time (the step captured in a CUDA graph and replayed, when it can be
captured), the eager wall time (one step then a synchronize), kernel launches and host syncs per step
(torch.profiler) and the peak extra memory; the HBM floor (read the logits twice, write the gradient
once, read the labels twice, at the measured copy bandwidth) is printed beside each row.

``python benchmarks/bench_losses.py [--device cuda] [--full] [--compile] [--reference] [--record] [--losses Dice,DiceCE]``
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

TABLE2 = [
    "CE", "WCE", "TopK", "Focal", "pCE", "SS", "Dice", "IoU", "Lovász", "Tversky", "GDice",
    "FocalTversky", "Asym", "pGDice", "BD", "HD", "DiceCE", "ELL", "DiceFocal", "DiceTopK", "DiceBD", "DiceHD",
]
# Losses whose MONAI baseline computes distance maps with scipy on the CPU: skipped at full size on the
# GPU unless --full (MONAI HausdorffDTLoss takes ~32 s per (2, 9, 128^3) step).
SLOW_BASELINES = {"HD", "DiceHD", "BD", "DiceBD"}


def monai_loss(name: str):
    """MONAI's class in the paper's configuration (softmax, batch Dice without background), or None."""
    try:
        import monai.losses as ml
    except ImportError:
        return None
    common_kw = dict(to_onehot_y=True, softmax=True, include_background=False, batch=True, smooth_nr=1e-5, smooth_dr=1e-5)
    table = {
        "Dice": lambda: ml.DiceLoss(**common_kw),
        "IoU": lambda: ml.DiceLoss(jaccard=True, **common_kw),
        "DiceCE": lambda: ml.DiceCELoss(**common_kw),
        "DiceFocal": lambda: ml.DiceFocalLoss(gamma=2.0, **common_kw),
        "Focal": lambda: ml.FocalLoss(to_onehot_y=True, use_softmax=True, gamma=2.0),
        "Tversky": lambda: ml.TverskyLoss(alpha=0.3, beta=0.7, **common_kw),
        "GDice": lambda: ml.GeneralizedDiceLoss(to_onehot_y=True, softmax=True, include_background=False, batch=True),
        "HD": lambda: ml.HausdorffDTLoss(to_onehot_y=True, softmax=True, include_background=False),
        "BD": lambda: ml.BoundaryLoss(to_onehot_y=True, softmax=True, include_background=False),
    }
    if name == "DiceHD":
        dice, hd = table["Dice"](), table["HD"]()
        return lambda x, y: dice(x, y) + hd(x, y)
    if name == "DiceBD":  # alpha = 0.5, as fastloss's DiceBD at epoch 50 below
        dice, bd = table["Dice"](), table["BD"]()
        return lambda x, y: 0.5 * dice(x, y) + 0.5 * bd(x, y)
    make = table.get(name)
    return make() if make else None


def plain_torch_loss(name: str):
    """What a user writes by hand: torch's CE, nnU-Net-style TopK (torch.topk)."""
    import torch.nn.functional as F

    if name == "CE":
        return lambda x, y: F.cross_entropy(x, y[:, 0])
    if name == "TopK":
        def topk(x, y):
            ce = F.cross_entropy(x, y[:, 0], reduction="none").flatten()
            k = max(1, int(ce.numel() * 10 / 100))
            return ce.topk(k, sorted=False).values.mean()
        return topk
    return None


def reference_loss(name: str):
    """``fastloss.reference`` (the naive oracle, float64 loops) in the paper's configuration."""
    from fastloss import reference as R

    region = dict(activation="softmax", include_background=False, batch=True)
    table = {
        "CE": lambda x, g: R.ce(x, g),
        "TopK": lambda x, g: R.topk(x, g, k=10.0),
        "Dice": lambda x, g: R.dice(x, g, **region),
        "IoU": lambda x, g: R.iou(x, g, **region),
        "Tversky": lambda x, g: R.tversky(x, g, alpha=0.3, beta=0.7, **region),
        "DiceCE": lambda x, g: R.dice_ce(x, g, **region),
        "DiceTopK": lambda x, g: R.dice_topk(x, g, k=10.0, **region),
    }
    fn = table.get(name)
    if fn is None:
        return None

    def call(x, y):
        onehot = torch.nn.functional.one_hot(y[:, 0], x.shape[1]).movedim(-1, 1).to(torch.float64)
        return fn(x.double(), onehot)

    return call


@contextlib.contextmanager
def backend(name: str):
    old = os.environ.get("FASTLOSS_BACKEND")
    os.environ["FASTLOSS_BACKEND"] = name
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("FASTLOSS_BACKEND", None)
        else:
            os.environ["FASTLOSS_BACKEND"] = old


def make_inputs(shape, dtype, device, seed=0):
    g = torch.Generator(device="cpu").manual_seed(seed)
    B, C = shape[:2]
    logits = torch.randn(shape, generator=g).to(device=device, dtype=dtype)
    # blobby labels: a coarse random label field upsampled, so distance maps are not degenerate
    coarse = torch.randint(0, C, (B, 1) + tuple(max(1, s // 8) for s in shape[2:]), generator=g)
    labels = torch.nn.functional.interpolate(coarse.float(), size=shape[2:], mode="nearest").long().to(device)
    return logits, labels


def hbm_floor_ms(shape, dtype, bw_gbs: float) -> float:
    n = 1
    for s in shape:
        n *= s
    esz = torch.empty((), dtype=dtype).element_size()
    vox = n // shape[1]
    bytes_moved = 2 * n * esz + n * esz + 2 * vox * 8
    return bytes_moved / (bw_gbs * 1e9) * 1e3


MONAI_HAS = {"Dice", "IoU", "DiceCE", "DiceFocal", "Focal", "Tversky", "GDice", "HD", "BD", "DiceHD", "DiceBD"}
TORCH_HAS = {"CE", "TopK"}
REFERENCE_HAS = {"CE", "TopK", "Dice", "IoU", "Tversky", "DiceCE", "DiceTopK"}


def providers(name: str, device: str, compile_: bool, reference: bool = False):
    """``[(provider, callable | Exception | str)]`` for one loss: a callable to time, the exception that
    building it raised (an error row), or the reason it cannot run here (a skipped row)."""
    import importlib.util

    cuda = device.startswith("cuda")
    out = []

    def wrap_backend(fn, be):
        def call(x, y):
            with backend(be):
                return fn(x, y)
        return call

    def make():
        import fastloss

        with warnings.catch_warnings():
            # DiceBD/DiceHD warn that their epoch schedule has not moved: set_epoch below moves it
            warnings.filterwarnings("ignore", message=".*epoch schedule.*")
            loss = fastloss.get_loss(name)
        if name == "DiceBD":
            loss.set_epoch(50)  # alpha = 0.5: both parts (and the distance maps) are computed
        return loss

    def add(prov, build):
        try:
            fn = build()
        except Exception as exc:  # noqa: BLE001 - an error row; the other providers still run
            fn = exc
        out.append((prov, f"{prov} has no {name} here" if fn is None else fn))

    add("fastloss", lambda: wrap_backend(make(), "auto"))
    if cuda:
        # the one host sync of the default path is the label-range check; without it, no sync at all
        def nocheck_build():
            nocheck = wrap_backend(make(), "auto")

            def call_nocheck(x, y, fn=nocheck):
                old = os.environ.get("FASTLOSS_CHECK_LABELS")
                os.environ["FASTLOSS_CHECK_LABELS"] = "0"
                try:
                    return fn(x, y)
                finally:
                    os.environ.pop("FASTLOSS_CHECK_LABELS") if old is None else os.environ.__setitem__("FASTLOSS_CHECK_LABELS", old)
            return call_nocheck

        add("fastloss-nocheck", nocheck_build)
        add("fastloss-torch", lambda: wrap_backend(make(), "torch"))
    if compile_ and name in ("DiceCE", "DiceTopK", "DiceFocal", "Dice"):
        if not cuda:
            out.append(("torch.compile", "GPU-only provider (--compile times torch.compile on CUDA); no GPU here"))
        elif importlib.util.find_spec("triton") is None:
            out.append(("torch.compile", "triton not installed: torch.compile's CUDA code generator needs it"))
        else:
            def compiled_build():
                with backend("torch"):
                    compiled = torch.compile(make())
                return wrap_backend(compiled, "torch")

            add("torch.compile", compiled_build)
    if name in MONAI_HAS:
        if importlib.util.find_spec("monai") is None:
            out.append(("monai", "MONAI not installed (pip install -e '.[bench]')"))
        else:
            add("monai", lambda: monai_loss(name))
    if name in TORCH_HAS:
        add("torch", lambda: plain_torch_loss(name))
    if reference and name in REFERENCE_HAS:
        add("reference", lambda: reference_loss(name))
    return out


def run(quick: bool = True, device: str | None = None, losses=None, full: bool = False, compile_: bool = False,
        dtypes=None, reference: bool = False) -> list:
    """Time every loss's forward+backward for each provider; returns stamped rows (not yet written).

    ``quick``: on the CPU a (2, 4, 24^3) case and a short time budget per row, else (2, 9, 48^3);
    ``reference``: also time the naive oracle (slow)."""
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    if cuda:
        cases = [("multi9", (2, 9, 128, 128, 128)), ("binary", (2, 2, 128, 128, 128))]
        dtypes = dtypes or [torch.float32, torch.bfloat16]
        bw = common.copy_bandwidth_gbs(device)
    else:
        cases = [("multi4", (2, 4, 24, 24, 24))] if quick else [("multi9", (2, 9, 48, 48, 48))]
        dtypes = dtypes or [torch.float32]
        bw = None
    names = losses or TABLE2
    jobs = [(c, d, n) for c in cases for d in dtypes for n in names]
    bar = common.PROGRESS.begin("losses", len(jobs))
    rows = []
    for (case, shape), dtype, name in jobs:
        x0, y = make_inputs(shape, dtype, device)
        floor = hbm_floor_ms(shape, dtype, bw) if cuda else None
        for prov, fn in providers(name, device, compile_, reference):
            # MONAI's distance-map losses run scipy on the CPU (~30 s a step at (2, 9, 128^3)): one
            # timed call, float32 multi-class only, no graph capture or profiling.
            slow = cuda and prov == "monai" and name in SLOW_BASELINES
            if slow and not full and (case != "multi9" or dtype != torch.float32):
                continue
            x = x0.detach().clone().requires_grad_(True)

            def step(fn=fn, x=x):
                loss = fn(x, y)
                (grad,) = torch.autograd.grad(loss, x)
                return grad

            row = {"bench": "loss", "loss": name, "case": case, "shape": "x".join(map(str, shape)),
                   "dtype": str(dtype).replace("torch.", ""), "provider": prov}
            if isinstance(fn, str):
                rows.append(common.skip_row(row, fn))
                continue
            if isinstance(fn, Exception):
                rows.append(common.stamp(common.error_row(row, fn, f"losses {name} {case} {prov} (building the loss)"), device))
                continue
            try:
                naive = prov == "reference" or slow  # python loops / scipy: a call or two is enough
                # >= 10 samples where a call is cheap, so p20/p80 are samples, not interpolations
                # quick on the CPU: 10 calls or 2 s a row, so that a busy machine does not stretch the job
                wall = common.time_wall(step, device, reps=(1 if slow else 3) if naive else (30 if cuda else (10 if quick else 25)),
                                        warmup=0 if naive else 2, budget_s=(5 if cuda else 2) if quick else 30)
                row.update({f"wall_{k}": v for k, v in wall.items()})
                if cuda and not slow:
                    g = common.time_cuda_graph(step)
                    if g is not None:
                        row.update({f"gpu_{k}": v for k, v in g.items()})
                    row.update(common.count_launches(step))
                    row["peak_extra_mib"] = common.peak_extra_mib(step)
                    row["hbm_floor_ms"] = floor
            except Exception as exc:  # noqa: BLE001 - a failing row is recorded, not fatal
                row = common.error_row(row, exc, f"losses {name} {case} {row['dtype']} {prov}")
            rows.append(common.stamp(row, device))
        bar.step(f"{name} {case} {row['dtype']}")
    bar.end()
    return rows


BASELINES = ("monai", "torch")  # the "x baseline" column divides by the first of these a loss has


def print_table(rows) -> None:
    """One line per row: shape, median wall (and GPU) ms with p20-p80, "x baseline" (times faster than
    MONAI, else the hand-written torch), ``~`` on rows with a wide spread."""
    gpu = any(r.get("gpu_median_ms") not in (None, "") for r in rows)
    key = "gpu_median_ms" if gpu else "wall_median_ms"

    def ms(r):
        v = r.get(key)
        return v if v not in (None, "") else r.get("wall_median_ms")

    skipped = [r for r in rows if r.get("skipped")]
    rows = [r for r in rows if not r.get("skipped")]
    base = {}
    for r in rows:
        if "error" in r or r["provider"] not in BASELINES:
            continue
        k = (r["loss"], r["case"], r["dtype"])
        if k not in base or BASELINES.index(r["provider"]) < BASELINES.index(base[k][0]):
            base[k] = (r["provider"], ms(r))
    head = f"{'loss':<13}{'case':<8}{'shape':<18}{'dtype':<9}{'provider':<17}{'wall ms':>10}{'p20-p80':>17}"
    head += f"{'gpu ms':>9}{'floor':>8}{'launch':>7}{'sync':>5}{'MiB':>8}" if gpu else ""
    head += f"{'x baseline':>17}"
    print(common.LOAD.header())
    print(head)
    flagged = 0
    for r in rows:
        lead = f"{r['loss']:<13}{r['case']:<8}{r['shape']:<18}{r['dtype']:<9}{r['provider']:<17}"
        if "error" in r:
            print(f"{lead} error: {r['error']}")
            continue
        mark = "~" if common.noisy(r, "wall_") or (gpu and common.noisy(r, "gpu_")) else " "
        flagged += mark == "~"
        spread = f"{r['wall_p20_ms']:.3f}-{r['wall_p80_ms']:.3f}"
        line = f"{lead}{r['wall_median_ms']:>10.3f}{spread:>17}"
        if gpu:
            gm = r.get("gpu_median_ms")
            line += f"{gm:>9.3f}" if gm not in (None, "") else f"{'-':>9}"
            line += f"{r.get('hbm_floor_ms') or 0:>8.3f}{r.get('launches', 0):>7}{r.get('host_syncs', 0):>5}{r.get('peak_extra_mib', 0):>8.0f}"
        b = base.get((r["loss"], r["case"], r["dtype"]))
        line += f"{(common.ratio(b[1], ms(r)) + ' ' + b[0]) if b else '-':>17}"
        print(line + " " + mark)
    common.print_skips(skipped)
    what = "GPU" if gpu else "wall"
    print(f"x baseline: the baseline's median {what} ms / the row's (above 1: faster than MONAI, else hand-written torch).")
    if flagged:
        print(f"~ {flagged} row(s) with p80 - p20 over {common.NOISY_SPREAD:.0%} of the median: noisy, rerun before quoting.")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default=None)
    ap.add_argument("--full", action="store_true", help="larger CPU case; slow GPU baselines (MONAI HD) too")
    ap.add_argument("--compile", action="store_true", help="add torch.compile of the torch backend (GPU)")
    ap.add_argument("--reference", action="store_true", help="also time fastloss.reference, the naive test oracle")
    ap.add_argument("--losses", default=None, help="comma-separated paper names")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    common.set_record(args.record)
    rows = run(quick=not args.full, device=args.device, losses=args.losses.split(",") if args.losses else None,
               full=args.full, compile_=args.compile, reference=args.reference)
    print_table(rows)
    path = common.append_csv("losses.csv", [r for r in rows if not r.get("skipped")])
    print(f"\n{len(rows)} rows appended to {path}")


if __name__ == "__main__":
    main()
