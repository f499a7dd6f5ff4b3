"""The README's passage about a recorded odyssey run, written from the run's own files, so that the text cannot
drift from the rows: ``python -m fastloss.odyssey readme-table RUN_DIR [--write README.md]``.

:func:`readme_block` reads ``config.json``, ``ranking.csv``, ``cases.csv`` and ``throughput.csv`` and returns the
Markdown passage (a sentence on the run, a table of Rank Scores, mean DSC/NSD per task and step times);
:func:`write_readme` replaces the passage between :data:`BEGIN` and :data:`END` in a README. The tests compare the
README's passage with :func:`readme_block` of the run it names.
"""

from __future__ import annotations

import csv
import json
import math
import re
import statistics
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

__all__ = ["BEGIN", "END", "readme_block", "write_readme", "find_block"]

BEGIN = "<!-- odyssey-example: begin (written by `python -m fastloss.odyssey readme-table {run_dir} --write README.md` " \
        "from the run's CSV files; tests/test_odyssey_readme.py checks it) -->"
END = "<!-- odyssey-example: end -->"
_BEGIN_RE = re.compile(r"<!-- odyssey-example: begin \(written by `python -m fastloss\.odyssey readme-table (?P<dir>\S+) "
                       r"--write README\.md` from the run's CSV files; tests/test_odyssey_readme\.py checks it\) -->")


def _read(path: Path) -> List[dict]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _num(v: str) -> float:
    return math.nan if v in ("", "N/A") else float(v)


def _mean(values: List[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s} s" if s < 60 else f"{s // 60} min {s % 60:02d} s"


def _ms(v: float) -> str:
    return "—" if math.isnan(v) else (f"{v:.0f}" if v >= 100 else f"{v:.1f}" if v >= 10 else f"{v:.2f}")


def readme_block(run_dir: Union[str, Path], display_dir: Optional[str] = None) -> str:
    """The README passage for the run in ``run_dir``, markers included (``display_dir``: how the passage names
    the folder, default ``run_dir`` as given).

    Raises:
        FileNotFoundError: a file of the run is missing.
        ValueError: the files do not describe one run (no ranking rows).
    """
    run_dir = Path(run_dir)
    shown = display_dir if display_dir is not None else run_dir.as_posix()
    info = json.loads((run_dir / "config.json").read_text())
    ranking = _read(run_dir / "ranking.csv")
    cases = _read(run_dir / "cases.csv")
    speed = _read(run_dir / "throughput.csv")
    if not ranking:
        raise ValueError(f"{run_dir / 'ranking.csv'} has no rows")
    cfg = info["config"]
    tc = cfg["train"]
    tasks = sorted({r["task"] for r in cases})

    # mean per-case value per (loss, task, metric), N/A counted as 0 (as the ranking and the plots count it)
    per: Dict[Tuple[str, str, str], List[float]] = {}
    for r in cases:
        v = _num(r["value"])
        per.setdefault((r["loss"], r["task"], r["metric"]), []).append(0.0 if math.isnan(v) else v)

    def cell(loss: str, task: str) -> str:
        return f"{_mean(per.get((loss, task, 'DSC'), [])):.2f} / {_mean(per.get((loss, task, 'NSD'), [])):.2f}"

    def median_over_tasks(loss: str, impl: str, phase: str, column: str) -> float:
        vals = [_num(r[column]) for r in speed if r["loss"] == loss and r["impl"] == impl and r["phase"] == phase]
        vals = [v for v in vals if not math.isnan(v)]
        return statistics.median(vals) if vals else math.nan

    load = info.get("load_average") or {}
    load_text = ""
    if load.get("start") and load.get("end"):
        load_text = f", load average {load['start'][0]:.1f} at the start and {load['end'][0]:.1f} at the end"
    threads = info.get("threads")
    lines = [
        BEGIN.format(run_dir=shown),
        f"The committed example is the {cfg['mode']} mode's run `{info['run_id']}` (`{shown}/`, CSV and plots as "
        f"written): {len(tasks)} tasks x {len(ranking)} losses, {tc['epochs'] * tc['steps_per_epoch']} training steps "
        f"each, {cfg['n_test']} test cases per task; {_duration(info['wall_seconds'])} wall on "
        f"{info['device']} with {threads} thread{'s' * (threads != 1)} (torch {info['versions']['torch']}"
        f"{load_text}). Rank Score as the paper's Sec. 3.4 (the mean over the {2 * len(tasks)} task/metric columns "
        f"of how many other losses a loss beats, one-sided Wilcoxon, p < {cfg['alpha']:g}); DSC / NSD the mean over "
        f"the test cases (N/A as 0); times are medians over the tasks of each task's median step, and of the loss's "
        "forward and backward inside it; the last column times the loss alone in steps interleaved with MONAI's on "
        "the same batches.",
        "",
        "| # | loss | Rank Score | " + " | ".join(f"{t} DSC / NSD" for t in tasks)
        + " | step ms | loss ms (share) | loss ms side by side: fastloss / MONAI |",
        "|---|---|---:|" + "---:|" * len(tasks) + "---:|---:|---:|",
    ]
    for r in ranking:
        loss = r["loss"]
        step = median_over_tasks(loss, "fastloss", "train", "step_ms_median")
        lms = median_over_tasks(loss, "fastloss", "train", "loss_ms_median")
        share = f" ({100 * lms / step:.0f} %)" if step > 0 and not math.isnan(lms) else ""
        side_f = median_over_tasks(loss, "fastloss", "side_by_side", "loss_ms_median")
        side_m = median_over_tasks(loss, "monai", "side_by_side", "loss_ms_median")
        side = f"{_ms(side_f)} / {_ms(side_m)}" if not math.isnan(side_m) else f"{_ms(side_f)} / (none)"
        lines.append(f"| {r['rank']} | {loss} | {float(r['rank_score']):.3f} | "
                     + " | ".join(cell(loss, t) for t in tasks)
                     + f" | {_ms(step)} | {_ms(lms)}{share} | {side} |")
    failures = info.get("failures") or []
    if failures:
        lines += ["", "Failed (recorded as N/A): " + "; ".join(failures) + "."]
    lines.append(END)
    return "\n".join(lines)


def find_block(text: str) -> Optional[Tuple[int, int, str]]:
    """``(start, end, run folder)`` of the passage in a README's text, or None."""
    m = _BEGIN_RE.search(text)
    if m is None:
        return None
    end = text.find(END, m.end())
    if end < 0:
        return None
    return m.start(), end + len(END), m.group("dir")


def write_readme(readme: Union[str, Path], run_dir: Union[str, Path], display_dir: Optional[str] = None) -> str:
    """Replace the passage between the markers in ``readme`` with :func:`readme_block` of ``run_dir``; returns it.

    Raises:
        ValueError: the README has no passage between the markers.
    """
    path = Path(readme)
    text = path.read_text()
    found = find_block(text)
    if found is None:
        raise ValueError(f"{path} has no odyssey passage between {BEGIN.split('(')[0].strip()} ... and {END}")
    block = readme_block(run_dir, display_dir)
    path.write_text(text[: found[0]] + block + text[found[1]:])
    return block
