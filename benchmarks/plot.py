"""Plots of the newest run in ``benchmarks/results/``: one PNG per loss family (forward+backward time of
every provider), one for the EDT and one for the metrics. ``python benchmarks/plot.py [--run RUN_ID]``.

Needs matplotlib (``pip install -e ".[bench]"``)."""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
FAMILIES = {
    "distribution": ["CE", "WCE", "TopK", "Focal", "pCE"],
    "region": ["SS", "Dice", "IoU", "Lovász", "Tversky", "GDice", "FocalTversky", "Asym", "pGDice"],
    "boundary": ["BD", "HD"],
    "compound": ["DiceCE", "ELL", "DiceFocal", "DiceTopK", "DiceBD", "DiceHD"],
}


def _rows(name: str, run: str | None):
    path = RESULTS / name
    if not path.exists():
        return [], None
    with path.open(newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if not r.get("error")]
    runs = [r.get("run_id") for r in rows if r.get("run_id")]
    run = run or (runs[-1] if runs else None)
    return [r for r in rows if r.get("run_id") == run], run


def _bar(ax, labels, groups, values, ylabel):
    import numpy as np

    x = np.arange(len(labels))
    width = 0.8 / max(1, len(groups))
    for i, g in enumerate(groups):
        ax.bar(x + i * width, [values.get((lab, g), 0.0) for lab in labels], width, label=g)
    ax.set_xticks(x + 0.4 - width / 2, labels, rotation=30, ha="right")
    ax.set_yscale("log")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--run", default=None, help="run_id to plot (default: the newest)")
    args = ap.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows, run = _rows("losses.csv", args.run)
    if rows:
        for family, names in FAMILIES.items():
            sub = [r for r in rows if r["loss"] in names]
            if not sub:
                continue
            cases = sorted({(r["case"], r["dtype"]) for r in sub})
            fig, axes = plt.subplots(1, len(cases), figsize=(5 * len(cases), 4), squeeze=False)
            for ax, (case, dtype) in zip(axes[0], cases):
                part = [r for r in sub if r["case"] == case and r["dtype"] == dtype]
                key = "gpu_median_ms" if any(r.get("gpu_median_ms") for r in part) else "wall_median_ms"
                vals = {(r["loss"], r["provider"]): float(r.get(key) or r["wall_median_ms"]) for r in part}
                provs = sorted({r["provider"] for r in part}, key=lambda p: (p != "fastloss", p))
                labels = [n for n in names if any(r["loss"] == n for r in part)]
                _bar(ax, labels, provs, vals, f"{key.replace('_median_ms', '')} ms (median, log)")
                ax.set_title(f"{family}: {case} {dtype}\n{part[0]['device']}", fontsize=8)
            fig.tight_layout()
            out = RESULTS / f"losses_{family}.png"
            fig.savefig(out, dpi=110)
            plt.close(fig)
            print(out)
    for name, label_key in (("edt.csv", "case"), ("metrics.csv", "case")):
        rows, _ = _rows(name, None)
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(12 if name == "metrics.csv" else 8, 4))
        groups = defaultdict(dict)
        for r in rows:
            prov = r.get("provider", "") + (f" x{r['threads']}" if r.get("threads") else "")
            label = " ".join(v for v in (r.get("layout"), r.get("maps"), r.get(label_key), r.get("shape")) if v)
            groups[prov][label] = float(r["median_ms"])
        labels = sorted({k for g in groups.values() for k in g})
        vals = {(lab, g): v for g, d in groups.items() for lab, v in d.items()}
        _bar(ax, labels, sorted(groups), vals, "ms (median, log)")
        ax.set_title(f"{name[:-4]}: {rows[0].get('device', '')}", fontsize=8)
        fig.tight_layout()
        out = RESULTS / f"{name[:-4]}.png"
        fig.savefig(out, dpi=110)
        plt.close(fig)
        print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
