"""Plots of an odyssey run (matplotlib, imported only here): box plots of the per-case DSC and NSD per
loss and task (the paper's Figs. 2-8 show the same data as violins), and the median training step time
per loss, split into the loss's share and the rest, beside MONAI's loss where it was timed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

__all__ = ["draw"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or 'fastloss[odyssey]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def draw(out: Path, case_rows: List[dict], speed_rows: List[dict]) -> List[Path]:
    """Write ``dsc_boxplot.png``, ``nsd_boxplot.png`` and ``step_time.png`` into ``out``; returns the paths."""
    plt = _pyplot()
    paths = []
    tasks = sorted({r["task"] for r in case_rows})
    losses = sorted({r["loss"] for r in case_rows})
    for metric in ("DSC", "NSD"):
        fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 0.45 * len(losses) + 1.5) * len(tasks), 3.6), squeeze=False)
        for ax, task in zip(axes[0], tasks):
            data = []
            for loss in losses:
                v = [r["value"] for r in case_rows if r["task"] == task and r["loss"] == loss and r["metric"] == metric]
                data.append([0.0 if math.isnan(x) else x for x in v])  # N/A counts as 0, as in the ranking
            ax.boxplot(data, showmeans=True, meanprops=dict(marker="^", markerfacecolor="white", markersize=4))
            ax.set_xticks(range(1, len(losses) + 1), losses, rotation=60, ha="right", fontsize=8)
            ax.set_title(task)
            ax.set_ylim(-0.02, 1.02)
            ax.grid(axis="y", alpha=0.3)
        axes[0][0].set_ylabel(f"{metric} per test case")
        fig.tight_layout()
        p = out / f"{metric.lower()}_boxplot.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)

    side = [r for r in speed_rows if r["phase"] == "side_by_side"] or [r for r in speed_rows if r["phase"] == "train"]
    if side:
        labels, loss_ms, rest_ms = [], [], []
        for r in sorted(side, key=lambda r: (r["task"], r["loss"], r["impl"] != "fastloss")):
            labels.append(f"{r['task']} {r['loss']}" + (" (MONAI)" if r["impl"] == "monai" else ""))
            loss_ms.append(r["loss_ms_median"])
            rest_ms.append(max(0.0, r["step_ms_median"] - r["loss_ms_median"]))
        fig, ax = plt.subplots(figsize=(7, 0.22 * len(labels) + 1.2))
        y = range(len(labels))
        ax.barh(y, rest_ms, color="#bbbbbb", label="network forward+backward, optimiser")
        ax.barh(y, loss_ms, left=rest_ms, color="#d62728", label="loss forward+backward")
        ax.set_yticks(list(y), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("ms per training step (median)")
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        p = out / "step_time.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths
