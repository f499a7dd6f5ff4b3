"""Plots of one benchmark run: one PNG per loss family (forward+backward time of every provider), one for
the EDT and one for the metrics (a panel per case). Titles name the shape, the device and the run id;
every plot is a time, lower is better.

Reads and writes ``benchmarks/results/local/`` (a user's runs, ignored by git), or with ``--record``
the committed ``benchmarks/results/``. ``python benchmarks/plot.py [--run RUN_ID] [--record]``
(default: the newest run of each CSV).

Needs matplotlib (``pip install -e ".[bench]"``)."""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

FAMILIES = {
    "distribution": ["CE", "WCE", "TopK", "Focal", "pCE"],
    "region": ["SS", "Dice", "IoU", "Lovász", "Tversky", "GDice", "FocalTversky", "Asym", "pGDice"],
    "boundary": ["BD", "HD"],
    "compound": ["DiceCE", "ELL", "DiceFocal", "DiceTopK", "DiceBD", "DiceHD"],
}


def _rows(name: str, run: str | None, where: Path, strict: bool = False):
    """Rows of run ``run`` in ``where/name`` (the newest run when ``run`` is None, or absent there and not
    ``strict``)."""
    path = where / name
    if not path.exists():
        return [], None
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not r.get("error") and not r.get("skipped")]
    runs = [r.get("run_id") for r in rows if r.get("run_id")]
    if run not in runs:
        if strict and run is not None:
            return [], run
        run = runs[-1] if runs else None
    return [r for r in rows if r.get("run_id") == run], run


def _bar(ax, labels, groups, values, ylabel, colors=None):
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        color = colors.get(g) if colors else None  # one colour per provider across panels
        ax.bar(x + i * width, [values.get((lab, g), 0.0) for lab in labels], width, label=g, color=color)
    ax.set_xticks(x + 0.4 - width / 2, labels, rotation=30 if max(map(len, labels), default=0) > 6 else 0,
                  ha="right" if max(map(len, labels), default=0) > 6 else "center", fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)


def _legend_outside(fig, ax):
    """One legend for the figure, right of the panels, never over a bar."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)


def _title(what: str, shape: str, device: str, run: str) -> str:
    return f"{what}, shape {shape}, lower is better\n{device}, run {run}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", default=None, help="run_id to plot (default: the newest of each CSV)")
    ap.add_argument("--record", action="store_true",
                    help="plot the committed benchmarks/results/ (default: the run's own place, results/local/ "
                    "unless FASTLOSS_BENCH_RECORD=1)")
    args = ap.parse_args(argv)
    if args.record:
        common.set_record(True)
    for out in make_plots(args.run):
        print(out)
    return 0


def make_plots(run: str | None = None, strict: bool = False) -> list:
    """Draw the PNGs of run ``run`` (the newest run of each CSV when None) into ``common.results_dir()``;
    returns their paths. ``strict``: only the CSVs that have rows of ``run`` (the main job's own plots)."""
    where = common.results_dir()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches  # noqa: F401
    import matplotlib.pyplot as plt

    out_files = []
    rows, loss_run = _rows("losses.csv", run, where, strict)
    all_provs = sorted({r["provider"] for r in rows}, key=lambda p: (not p.startswith("fastloss"), p))
    colors = {p: f"C{i % 10}" for i, p in enumerate(all_provs)}
    for family, names in FAMILIES.items():
        sub = [r for r in rows if r["loss"] in names]
        if not sub:
            continue
        cases = sorted({(r["case"], r["shape"], r["dtype"]) for r in sub})
        fig, axes = plt.subplots(1, len(cases), figsize=(1.2 + 4.5 * len(cases), 4.2), squeeze=False)
        for ax, (case, shape, dtype) in zip(axes[0], cases):
            part = [r for r in sub if (r["case"], r["shape"], r["dtype"]) == (case, shape, dtype)]
            key = "gpu_median_ms" if any(r.get("gpu_median_ms") for r in part) else "wall_median_ms"
            vals = {(r["loss"], r["provider"]): float(r.get(key) or r["wall_median_ms"]) for r in part}
            provs = sorted({r["provider"] for r in part}, key=lambda p: (not p.startswith("fastloss"), p))
            labels = [n for n in names if any(r["loss"] == n for r in part)]
            kind = "GPU" if key.startswith("gpu") else "wall"
            _bar(ax, labels, provs, vals, f"{kind} ms per fwd+bwd (median, log)", colors)
            ax.set_title(_title(f"{family} losses, {dtype}", shape, part[0]["device"], loss_run), fontsize=8)
        _legend_outside(fig, axes[0][-1])
        fig.tight_layout()
        out = where / f"losses_{family}.png"
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out_files.append(out)

    # EDT: one panel per shape, providers (with their thread counts) side by side
    rows, edt_run = _rows("edt.csv", run, where, strict)
    if rows:
        shapes = list(dict.fromkeys((r["case"], r["shape"]) for r in rows))
        fig, axes = plt.subplots(1, len(shapes), figsize=(1.5 + 3.2 * len(shapes), 4.0), squeeze=False)
        for ax, (case, shape) in zip(axes[0], shapes):
            part = [r for r in rows if (r["case"], r["shape"]) == (case, shape)]
            labels = [r["provider"] + (f" x{r['threads']}" if r.get("threads") else "") for r in part]
            ax.bar(range(len(part)), [float(r["median_ms"]) for r in part], color=[f"C{i}" for i in range(len(part))])
            ax.set_xticks(range(len(part)), labels, rotation=30, ha="right", fontsize=8)
            ax.set_yscale("log")
            ax.set_ylabel("ms (median, log)")
            ax.set_title(_title(f"EDT, {case}", shape, part[0].get("device", ""), edt_run), fontsize=8)
        fig.tight_layout()
        out = where / "edt.png"
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out_files.append(out)

    # metrics: one panel per case (nsd@1, hd95, ...); bars are (maps, layout), groups are providers
    rows, met_run = _rows("metrics.csv", run, where, strict)
    if rows:
        cases = list(dict.fromkeys(r["case"] for r in rows))
        shape = rows[0].get("shape", "")
        fig, axes = plt.subplots(1, len(cases), figsize=(1.5 + 3.6 * len(cases), 4.2), squeeze=False)
        groups = defaultdict(dict)
        for r in rows:
            prov = r.get("provider", "") + (" GPU" if "cpu" not in r.get("device", "cpu").lower() else "")
            short = {"contiguous": "contig", "channels_last": "ch-last"}.get(r.get("layout", ""), r.get("layout", ""))
            label = "\n".join(v for v in (r.get("maps"), short) if v)
            groups[(r["case"], prov)][label] = float(r["median_ms"])
        provs = list(dict.fromkeys(p for _, p in groups))
        colors = {p: f"C{i}" for i, p in enumerate(provs)}
        for ax, case in zip(axes[0], cases):
            labels = list(dict.fromkeys(lab for (c, _), d in groups.items() if c == case for lab in d))
            vals = {(lab, p): v for (c, p), d in groups.items() if c == case for lab, v in d.items()}
            _bar(ax, labels, [p for p in provs if (case, p) in groups], vals, "ms (median, log)", colors)
            ax.set_title(f"{case}", fontsize=9)
        fig.suptitle(_title("surface metrics (one-hot maps, no background)", shape, rows[0].get("device", ""), met_run),
                     fontsize=9)
        handles = [matplotlib.patches.Patch(color=colors[p], label=p) for p in provs]
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
        fig.tight_layout()
        out = where / "metrics.png"
        fig.savefig(out, dpi=110, bbox_inches="tight")
        plt.close(fig)
        out_files.append(out)
    return out_files


if __name__ == "__main__":
    sys.exit(main())
