"""Surface metrics: NSD at 1 mm and HD95 of a (2, 9, n^3) pair of label maps, fastloss vs MONAI.

Two kinds of label maps, one-hot encoded as both libraries take them, metrics without the background
(16 (batch, class) pairs), the prediction a perturbed copy of the reference; n = 128 by default, 64
with --quick (and 3 repetitions of the slow baselines instead of 5):

- ``organs``: background and 8 compact ellipsoids of random size and place (an abdominal multi-organ
  map is like this: each organ fills a small box of the volume); the prediction's surfaces are moved
  by smooth noise of a few voxels;
- ``scattered``: smooth random partitions of the whole volume (every class has surface everywhere),
  the worst case for anything that crops to a class's bounding box.

Two memory layouts of the one-hot maps: ``contiguous`` (what MONAI's ``one_hot`` and
``AsDiscrete(to_onehot=...)`` produce) and ``channels_last`` (what ``F.one_hot(...).movedim(-1, 1)``
produces); every provider gets the same tensors.

Providers: fastloss on the CPU (compiled EDT, all threads), fastloss on the GPU when one is present,
MONAI 1.6 on the CPU (its default, KD-tree surface distances), and DeepMind's ``surface-distance``
package on the CPU when it is installed. Cases: ``nsd@1`` (compute_surface_dice /
surface_dice), ``hd95`` (compute_hausdorff_distance(percentile=95) / hausdorff_distance) and
``nsd+hd95`` (both, per repetition) and, for fastloss, ``nsd+hd95 one call`` (``surface_metrics``). Before timing, fastloss's values are checked against MONAI's.

Median/p20/p80 wall ms (GPU: synchronized) and "x MONAI" (MONAI's median / the row's); rows with a wide
p20-p80 spread are marked ``~``. Rows go to benchmarks/results/local/metrics.csv (with --record: the
committed benchmarks/results/metrics.csv).

    python benchmarks/bench_metrics.py [--quick] [--record]

``run(quick)`` is the entry point for the main benchmark (benchmarks/run.py).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402

from fastloss.metrics import hausdorff_distance, surface_dice, surface_metrics  # noqa: E402

B, C = 2, 9
TOL = 1.0


def label_pair(n: int, seed: int = 0, kind: str = "organs"):
    """One-hot (reference, prediction), float32 (B, C, n, n, n) on the CPU."""
    g = torch.Generator().manual_seed(seed)
    size = (n, n, n)
    coarse = max(4, n // 10)

    def smooth(scale):
        z = torch.randn(B, C, coarse, coarse, coarse, generator=g)
        return scale * F.interpolate(z, size=size, mode="trilinear", align_corners=False)

    def onehot(x):
        return F.one_hot(x.argmax(1), C).movedim(-1, 1).float()

    if kind == "scattered":
        z = smooth(1.0)
        z[:, 0] += 0.8  # a larger background
        return onehot(z), onehot(z + smooth(0.35))
    # organs: score_c = 1 - |(x - centre_c) / radii_c|^2 inside ellipsoid c, background 0
    axes = torch.stack(torch.meshgrid(*[torch.arange(n, dtype=torch.float32)] * 3, indexing="ij"))  # (3, n, n, n)
    centre = (0.2 + 0.6 * torch.rand(B, C, 3, generator=g)) * n
    radii = (0.06 + 0.12 * torch.rand(B, C, 3, generator=g)) * n
    d = ((axes[None, None] - centre[..., None, None, None]) / radii[..., None, None, None]).pow(2).sum(2)
    score = 1.0 - d
    score[:, 0] = 0.0
    noise = smooth(0.25)
    noise[:, 0] = 0.0
    return onehot(score), onehot(score + noise)


def _providers(y, p, deepmind: bool = True):
    tol = [TOL] * (C - 1)
    out = {}

    def fl(dev):
        yd, pd = y.to(dev), p.to(dev)
        return (
            lambda: surface_dice(pd, yd, TOL, spacing=(1.0, 1.0, 1.0)),
            lambda: hausdorff_distance(pd, yd, percentile=95, spacing=(1.0, 1.0, 1.0)),
            # both in one call (borders and distances once)
            lambda: surface_metrics(pd, yd, TOL, percentile=95, spacing=(1.0, 1.0, 1.0)),
        )

    out[("fastloss", "cpu")] = fl("cpu")
    if torch.cuda.is_available():
        out[("fastloss", "cuda")] = fl("cuda")
    try:
        from monai.metrics import compute_hausdorff_distance, compute_surface_dice

        out[("monai", "cpu")] = (
            lambda: compute_surface_dice(p, y, tol, spacing=(1.0, 1.0, 1.0)),
            lambda: compute_hausdorff_distance(p, y, percentile=95, spacing=(1.0, 1.0, 1.0)),
        )
    except ImportError:
        out[("monai", "cpu")] = "MONAI not installed (pip install -e '.[bench]')"
    try:
        if not deepmind:
            return out
        import surface_distance as sd  # DeepMind's package (surfel-area weighted; differs by design)

        pn, yn = p.bool().numpy(), y.bool().numpy()

        def dm(kind):
            res = torch.empty(B, C - 1)
            for b in range(B):
                for c in range(1, C):
                    d = sd.compute_surface_distances(yn[b, c], pn[b, c], (1.0, 1.0, 1.0))
                    if kind == "nsd":
                        res[b, c - 1] = sd.compute_surface_dice_at_tolerance(d, TOL)
                    else:
                        res[b, c - 1] = sd.compute_robust_hausdorff(d, 95)
            return res

        out[("surface-distance", "cpu")] = (lambda: dm("nsd"), lambda: dm("hd95"))
    except ImportError:
        out[("surface-distance", "cpu")] = "DeepMind's surface-distance package not installed"
    return out


def _check(providers, case: str = "") -> dict:
    """fastloss must agree with MONAI on the benchmark input before anything is timed: returns
    ``{provider key: exception}`` for each fastloss provider that differs or raises (error rows, not
    timed), or ``{("monai", "cpu"): exception}`` when MONAI itself raises (nothing is checked then)."""
    bad: dict = {}
    monai = providers.get(("monai", "cpu"))
    if not isinstance(monai, tuple):
        return bad
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = [f().cpu() for f in monai]
    except Exception as exc:  # noqa: BLE001
        return {("monai", "cpu"): exc}
    for key in (("fastloss", "cpu"), ("fastloss", "cuda")):
        if key in providers:
            f_nsd, f_hd, f_both = providers[key]
            try:
                got = [f_nsd().cpu(), f_hd().cpu()]
                got_both = [t.cpu() for t in f_both()]
                for name, g, w in zip(("nsd", "hd95", "nsd (one call)", "hd95 (one call)"), got + got_both, want + want):
                    if not torch.allclose(g, w, rtol=1e-5, atol=0, equal_nan=True):
                        raise AssertionError(
                            f"{key} {name} differs from MONAI on {case}: max |diff| {(g - w).abs().max().item()}"
                        )
            except Exception as exc:  # noqa: BLE001
                bad[key] = exc
    if not bad:
        common.PROGRESS.write(f"checked: fastloss NSD/HD95 equal MONAI's on {case} (rtol 1e-5)")
    return bad


def run(
    quick: bool = False, reps: int | None = None, kinds=("organs", "scattered"), layouts=("contiguous", "channels_last")
) -> list[dict]:
    """Time every provider on each (layout, kind); prints the table and returns the rows (not yet written).

    ``quick``: 64^3 volumes instead of 128^3."""
    import importlib.util

    per_kind = 1 + torch.cuda.is_available() + (importlib.util.find_spec("monai") is not None)
    deepmind = importlib.util.find_spec("surface_distance") is not None and "contiguous" in layouts
    bar = common.PROGRESS.begin("metrics", len(layouts) * len(kinds) * per_kind + deepmind * len(kinds))
    rows = []
    for layout in layouts:
        for kind in kinds:
            rows += _run_kind(kind, quick, reps, layout, bar)
    bar.end()
    print_table(rows)
    return rows


def _run_kind(kind: str, quick: bool, reps, layout: str = "contiguous", bar=None) -> list[dict]:
    n = 64 if quick else 128
    reps = reps or 10  # fastloss; the slow baselines (a second or more a call) get half, 3 when quick
    slow_reps = 3 if quick else max(3, reps // 2)
    y, p = label_pair(n, kind=kind)  # channels-last, as F.one_hot(...).movedim(-1, 1) makes them
    if layout == "contiguous":  # the layout of MONAI's one_hot / AsDiscrete(to_onehot=...)
        y, p = y.contiguous(), p.contiguous()
    # DeepMind's package converts to numpy bool first (outside the timing): the layout is irrelevant
    # to it, so it runs with the contiguous maps only (it takes about a second per (b, c) row)
    providers = _providers(y, p, deepmind=layout == "contiguous")
    shape = f"{B}x{C}x{n}x{n}x{n}"
    bad = _check(providers, f"{layout} {kind} {shape}")
    rows = []
    for (provider, dev), fns in providers.items():
        base = {"bench": "metrics", "case": "nsd@1, hd95", "maps": kind, "shape": shape, "provider": provider,
                "layout": layout}
        if isinstance(fns, str):
            rows.append(common.skip_row(dict(base, device=dev), fns))
            continue
        if (provider, dev) in bad:
            rows.append(common.stamp(common.error_row(base, bad[(provider, dev)], f"metrics {provider} {dev} {layout} {kind}"), dev))
        else:
            try:
                rows += _time_provider(provider, dev, fns, reps, base, slow_reps)
            except Exception as exc:  # noqa: BLE001 - an error row; the next provider still runs
                rows.append(common.stamp(common.error_row(base, exc, f"metrics {provider} {dev} {layout} {kind}"), dev))
        if bar is not None:
            bar.step(f"{provider} {layout} {kind}")
    return rows


def _time_provider(provider, dev, fns, reps, base_row, slow_reps=None) -> list:
    """Rows (nsd@1, hd95, their sum and, for fastloss, the one call) of one provider."""
    f_nsd, f_hd, *f_both = fns
    slow = provider != "fastloss"
    r = (slow_reps or max(3, reps // 2)) if slow else reps
    t_nsd, t_hd, t_both = [], [], []
    peak = ""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if not slow:  # warm-up (extension load, CUDA context, allocator)
            f_nsd(), f_hd(), [f() for f in f_both]
        common.sync(dev)
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
            mem0 = torch.cuda.memory_allocated()
        for _ in range(r):
            t0 = time.perf_counter()
            f_nsd()
            common.sync(dev)
            t1 = time.perf_counter()
            f_hd()
            common.sync(dev)
            t2 = time.perf_counter()
            t_nsd.append((t1 - t0) * 1e3)
            t_hd.append((t2 - t1) * 1e3)
            if f_both:
                f_both[0]()
                common.sync(dev)
                t_both.append((time.perf_counter() - t2) * 1e3)
        if dev == "cuda":
            peak = round((torch.cuda.max_memory_allocated() - mem0) / 2**20, 1)
    cases = [("nsd@1", t_nsd), ("hd95", t_hd), ("nsd+hd95", [a + b for a, b in zip(t_nsd, t_hd)])]
    if t_both:
        cases.append(("nsd+hd95 one call", t_both))
    rows = []
    for case, samples in cases:
        s = common.summarize(samples)
        row = dict(base_row, case=case)
        row.update({k: round(s[k], 3) for k in ("median_ms", "p20_ms", "p80_ms")})
        row["peak_mem_mib"] = peak
        rows.append(common.stamp(row, dev))
    return rows


def print_table(rows) -> None:
    """Median/p20/p80 ms, "x MONAI" (MONAI's median on the same case / the row's) and ``~`` on rows
    whose p20-p80 spread is wide."""
    # the one-call case (fastloss.metrics.surface_metrics) compares with MONAI's two calls
    key = lambda r: (r.get("layout"), r["maps"], r["shape"], r["case"].replace(" one call", ""))  # noqa: E731
    skipped = [r for r in rows if r.get("skipped")]
    errors = [r for r in rows if r.get("error")]
    rows = [r for r in rows if not r.get("skipped") and not r.get("error")]
    base = {key(r): r["median_ms"] for r in rows if r["provider"] == "monai"}
    print(common.LOAD.header())
    print(
        f"{'layout':14} {'maps':10} {'shape':16} {'case':18} {'provider':17} {'device':26} {'median ms':>10} "
        f"{'p20':>9} {'p80':>9} {'x MONAI':>8}"
    )
    flagged = 0
    for r in rows:
        mark = "~" if common.noisy(r) else " "
        flagged += mark == "~"
        print(
            f"{r.get('layout', ''):14} {r['maps']:10} {r['shape']:16} {r['case']:18} {r['provider']:17} "
            f"{r['device'][:26]:26} {r['median_ms']:10.1f} {r['p20_ms']:9.1f} {r['p80_ms']:9.1f} "
            f"{common.ratio(base.get(key(r)), r['median_ms']):>8} {mark}"
        )
    for r in errors:
        print(f"{r.get('layout', ''):14} {r['maps']:10} {r['shape']:16} {r['case']:18} {r['provider']:17} error: {r['error']}")
    common.print_skips(skipped)
    if flagged:
        print(f"~ {flagged} row(s) with p80 - p20 over {common.NOISY_SPREAD:.0%} of the median: noisy, rerun before quoting.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="64^3 volumes and fewer repetitions")
    ap.add_argument("--reps", type=int, default=None)
    ap.add_argument("--layouts", default="contiguous,channels_last", help="one-hot memory layouts to time")
    ap.add_argument("--kinds", default="organs,scattered", help="label-map kinds to time")
    common.add_record_argument(ap)
    args = ap.parse_args(argv)
    common.set_record(args.record)
    rows = run(quick=args.quick, reps=args.reps, kinds=args.kinds.split(","), layouts=args.layouts.split(","))
    print("->", common.append_csv("metrics.csv", [r for r in rows if not r.get("skipped")]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
