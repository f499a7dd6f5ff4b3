"""Plots of an odyssey run (matplotlib, imported only here): box plots of the per-case DSC and NSD per
loss and task (the paper's Figs. 2-8 show the same data as violins), and the median training step time
per loss, split into the loss's share and the rest, beside MONAI's loss where it was timed."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

__all__ = ["draw", "box_figure", "step_time_figure"]


def _pyplot():
    try:
        import matplotlib
    except ImportError:
        raise ImportError("plots need matplotlib: pip install matplotlib (or 'fastloss[odyssey]')") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


_MEAN = dict(marker="^", markerfacecolor="white", markeredgecolor="black", markersize=5)
_MEDIAN = dict(color="#ff7f0e", linewidth=1.5)


def box_figure(case_rows: List[dict], metric: str, title: Optional[str] = None):
    """One box per loss and task of the per-case ``metric`` (N/A as 0, as the ranking counts it): the box
    spans the quartiles, the line is the median, the triangle the mean, the whiskers reach 1.5 IQR, circles
    are the cases beyond; a title and a legend say so."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _pyplot()
    tasks = sorted({r["task"] for r in case_rows})
    losses = sorted({r["loss"] for r in case_rows})
    n_cases = {t: len({r["case"] for r in case_rows if r["task"] == t}) for t in tasks}
    fig, axes = plt.subplots(1, len(tasks), figsize=(max(4.0, 0.45 * len(losses) + 1.5) * len(tasks), 4.2),
                             squeeze=False)
    for ax, task in zip(axes[0], tasks):
        data = []
        for loss in losses:
            v = [r["value"] for r in case_rows if r["task"] == task and r["loss"] == loss and r["metric"] == metric]
            data.append([0.0 if math.isnan(x) else x for x in v])  # N/A counts as 0, as in the ranking
        ax.boxplot(data, showmeans=True, meanprops=_MEAN, medianprops=_MEDIAN)
        ax.set_xticks(range(1, len(losses) + 1), losses, rotation=60, ha="right", fontsize=8)
        ax.set_title(f"{task} ({n_cases[task]} test cases)", fontsize=9)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel(f"{metric} per test case")
    fig.suptitle(title or f"{metric} per held-out case, by loss and task (N/A counted as 0)", fontsize=10)
    handles = [Line2D([], [], **_MEDIAN, label="median"),
               Line2D([], [], linestyle="none", **_MEAN, label="mean"),
               Patch(facecolor="white", edgecolor="black", label="quartiles (whiskers: 1.5 IQR)"),
               Line2D([], [], linestyle="none", marker="o", markerfacecolor="none", markeredgecolor="black",
                      label="cases beyond")]
    fig.legend(handles=handles, loc="lower center", ncol=4, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    return fig


def step_time_figure(speed_rows: List[dict], title: Optional[str] = None):
    """Median ms per training step per (task, loss), split into the loss's forward and backward and the rest;
    the side-by-side rows (fastloss and MONAI on the same batches) where there are any. None without rows."""
    plt = _pyplot()
    side = [r for r in speed_rows if r["phase"] == "side_by_side"]
    phase = "side by side, the same batches" if side else "training steps"
    side = side or [r for r in speed_rows if r["phase"] == "train"]
    if not side:
        return None
    labels, loss_ms, rest_ms = [], [], []
    for r in sorted(side, key=lambda r: (r["task"], r["loss"], r["impl"] != "fastloss")):
        labels.append(f"{r['task']} {r['loss']}" + (" (MONAI)" if r["impl"] == "monai" else ""))
        loss_ms.append(r["loss_ms_median"])
        rest_ms.append(max(0.0, r["step_ms_median"] - r["loss_ms_median"]))
    fig, ax = plt.subplots(figsize=(7, 0.22 * len(labels) + 1.6))
    y = range(len(labels))
    ax.barh(y, rest_ms, color="#bbbbbb", label="network forward+backward, optimiser")
    ax.barh(y, loss_ms, left=rest_ms, color="#d62728", label="loss forward+backward")
    ax.set_yticks(list(y), labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("ms per training step (median)")
    ax.set_title(title or f"Training step time ({phase})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def draw(out: Path, case_rows: List[dict], speed_rows: List[dict], run_id: Optional[str] = None) -> List[Path]:
    """Write ``dsc_boxplot.png``, ``nsd_boxplot.png`` and ``step_time.png`` into ``out``; returns the paths."""
    plt = _pyplot()
    paths = []
    tag = f" (run {run_id})" if run_id else ""
    for metric in ("DSC", "NSD"):
        fig = box_figure(case_rows, metric,
                         f"{metric} per held-out case, by loss and task{tag}; N/A counted as 0")
        p = out / f"{metric.lower()}_boxplot.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    fig = step_time_figure(speed_rows)
    if fig is not None:
        if run_id:
            ax = fig.axes[0]
            ax.set_title(ax.get_title() + "\n" + tag.strip(), fontsize=9)
        p = out / "step_time.png"
        fig.savefig(p, dpi=80)
        plt.close(fig)
        paths.append(p)
    return paths
