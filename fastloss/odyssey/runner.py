"""The odyssey run: for every task, train one network per loss, evaluate it, time it (beside MONAI's
loss where MONAI has one), then rank the losses with the paper's scheme and write CSV files and plots.

Output folder ``<out>/<run_id>/``:

- ``cases.csv``: ``loss, task, metric, case, value``: the per-case table :mod:`fastloss.ranking`
  reads; ``value`` is the mean over the case's foreground classes (those present in the reference) of
  DSC or NSD; ``N/A`` where a loss failed (the ranking counts it as 0, footnote 10 of the paper).
- ``per_class.csv``: the same per class.
- ``ranking.csv`` and ``ranking.txt``: Rank Score overall (Sec. 3.4: mean significance score over
  every task and metric), per task, and every (task, metric) significance score.
- ``throughput.csv``: ms per training step (median, p20, p80) and the loss's share of it, per task and
  loss; ``phase=train`` over the training steps; ``phase=side_by_side``: a few steps per loss,
  fastloss and MONAI interleaved on the same batches.
- ``training.csv``: the mean training loss and learning rate per epoch.
- ``config.json``: the configuration, versions, device, wall time.
- ``dsc_boxplot.png``, ``nsd_boxplot.png`` (the paper's Figs. 2-8 as box plots), ``step_time.png``
  (with matplotlib).
"""

from __future__ import annotations

import copy
import csv
import datetime as _dt
import json
import math
import os
import platform
import shutil
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..registry import BEYOND_PAPER
from .data import Dataset, load_folder, synthetic_dataset
from .synthetic import TASKS
from .train import (MONAI_EQUIVALENTS, TrainConfig, build_loss, build_network, canonical_name, evaluate,
                    monai_loss, summarize_ms, time_steps, train_one, training_class_counts)

__all__ = ["OdysseyConfig", "MODES", "TABLE2_LOSSES", "BEYOND_LOSSES", "QUICK_LOSSES", "run"]

#: The 20 losses of the paper's Table 2.
TABLE2_LOSSES = ("Asym", "CE", "Dice", "DiceBD", "DiceCE", "DiceFocal", "DiceHD", "DiceTopK", "ELL", "Focal",
                 "FocalTversky", "GDice", "IoU", "Lovász", "pCE", "pGDice", "SS", "TopK", "Tversky", "WCE")
#: The losses after the paper that the odyssey trains too (``--losses beyond``; issue 22 and MONAI's others).
BEYOND_LOSSES = tuple(BEYOND_PAPER)
#: The quick mode's handful: the paper's overall winner, its parts, a plain region loss and a compound one.
QUICK_LOSSES = ("CE", "Dice", "DiceCE", "DiceTopK", "TopK")


@dataclass
class OdysseyConfig:
    """Everything a run depends on (written to ``config.json``).

    Attributes:
        mode: ``"quick"`` or ``"full"`` (the defaults of :data:`MODES`), or ``"custom"``.
        tasks: synthetic task names (:data:`fastloss.odyssey.synthetic.TASKS`); ignored with ``data``.
        losses: loss names (``fastloss.get_loss``): the paper's, or those after it
            (:data:`fastloss.registry.BEYOND_PAPER`, :data:`BEYOND_LOSSES`).
        data: a user dataset folder (nnU-Net raw or images/labels), or None for the synthetic tasks.
        size: synthetic volume shape; ``n_train``/``n_test``: synthetic cases per task.
        test_fraction: the held-out share of a user dataset.
        filters: feature maps per U-Net level.
        train: the training configuration (shared by every loss).
        timing_steps: side-by-side steps per loss for the throughput table (0: none).
        monai: time MONAI's loss beside ours where MONAI has one.
        tolerance: NSD tolerance (spacing units; the paper: 1 mm).
        alpha: significance level of the ranking.
        out: the output root; the run writes into ``out/<run_id>``.
        plots: draw the PNG plots (needs matplotlib).
        progress: show progress (tqdm if installed).
        threads: CPU threads for torch during the run (None: torch's setting). On a shared or busy CPU,
            1 thread can be several times faster than 2 (measured: 108 vs 886 ms per quick-mode step at
            load average 5 on 2 cores).
    """

    mode: str = "quick"
    tasks: Tuple[str, ...] = tuple(TASKS)
    losses: Tuple[str, ...] = QUICK_LOSSES
    data: Optional[str] = None
    size: Tuple[int, int, int] = (32, 32, 32)
    n_train: int = 8
    n_test: int = 8
    test_fraction: float = 0.2
    filters: Tuple[int, ...] = (8, 16, 32, 64)
    train: TrainConfig = field(default_factory=TrainConfig)
    timing_steps: int = 5
    monai: bool = True
    tolerance: float = 1.0
    alpha: float = 0.05
    out: str = "odyssey-runs"
    plots: bool = True
    progress: bool = True
    threads: Optional[int] = None


#: Mode defaults. quick: about 10 minutes on a 2-core CPU; full: all 20 losses of Table 2 on a GPU.
MODES: Dict[str, OdysseyConfig] = {
    "quick": OdysseyConfig(),
    "full": OdysseyConfig(
        mode="full",
        losses=TABLE2_LOSSES,
        size=(96, 96, 96),
        n_train=40,
        n_test=20,
        filters=(32, 64, 128, 256, 320),
        train=TrainConfig(epochs=40, steps_per_epoch=50, patch=(64, 64, 64), patience=4, device="cuda"),
        timing_steps=20,
    ),
}


def new_run_id() -> str:
    return _dt.datetime.now().strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


def _check(cfg: OdysseyConfig) -> OdysseyConfig:
    cfg.train.validate()
    if not cfg.losses:
        raise ValueError("no losses to train; give at least one name of fastloss.PAPER_LOSSES or "
                         "fastloss.registry.BEYOND_PAPER")
    canon = [canonical_name(name) for name in cfg.losses]  # ValueError listing the known names
    if len(set(canon)) != len(canon):
        raise ValueError(f"losses repeat a name: {list(cfg.losses)}")
    if cfg.data is None:
        unknown = [t for t in cfg.tasks if t not in TASKS]
        if unknown or not cfg.tasks:
            raise ValueError(f"unknown synthetic task(s) {unknown or '(none given)'}; expected names from {sorted(TASKS)}")
    if cfg.threads is not None and (isinstance(cfg.threads, bool) or not isinstance(cfg.threads, int) or cfg.threads < 1):
        raise ValueError(f"threads must be an int >= 1 or None, got {cfg.threads!r}")
    if len(cfg.filters) < 3:
        raise ValueError(f"filters must give at least 3 U-Net levels, got {tuple(cfg.filters)}")
    factor = 2 ** (len(cfg.filters) - 1)
    if any(p % factor for p in cfg.train.patch):
        raise ValueError(f"patch {tuple(cfg.train.patch)} must be divisible by {factor} ({len(cfg.filters)} U-Net levels)")
    return replace(cfg, losses=tuple(canon))


def _write_csv(path: Path, rows: List[dict]) -> None:
    fields: List[str] = []
    for r in rows:
        for k in r:
            if k not in fields:
                fields.append(k)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _fmt(r.get(k, "")) for k in fields})


def _fmt(v):
    if isinstance(v, float):
        return "N/A" if math.isnan(v) else f"{v:.6g}"
    return v


def _nanmean(values: Sequence[float]) -> float:
    ok = [v for v in values if not math.isnan(v)]
    return sum(ok) / len(ok) if ok else math.nan


def _duration(seconds: float) -> str:
    """``42 s``, ``6 min 05 s``, ``1 h 02 min``."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class _Eta:
    """The time left, from measured training steps only.

    A step's time is the wall time between two consecutive steps of one loss: the first step of every loss
    (which also pays for building its network and loss) is never one. The estimate is the median of the
    last ``window`` step times times the steps left, plus the rest of the run's time (data, evaluation,
    side-by-side timing: everything that is not a measured step) per finished loss, times the losses left.
    None until ``min_steps`` step times are measured.
    """

    def __init__(self, total_steps: int, total_losses: int, clock=time.perf_counter, window: int = 100,
                 min_steps: int = 3):
        self.total_steps, self.total_losses = total_steps, total_losses
        self.clock, self.window, self.min_steps = clock, window, min_steps
        self.t0 = clock()
        self.steps: List[float] = []
        self.done = 0
        self.losses_done = 0
        self._last: Optional[float] = None
        self._other_per_loss: Optional[float] = None

    def start_loss(self) -> None:
        self._last = None

    def step(self) -> None:
        now = self.clock()
        if self._last is not None:
            self.steps.append(now - self._last)
        self._last = now
        self.done += 1

    def end_loss(self) -> None:
        """After a loss's training and evaluation."""
        self.losses_done += 1
        self._last = None
        other = (self.clock() - self.t0) - sum(self.steps)
        self._other_per_loss = max(0.0, other) / self.losses_done

    def seconds_left(self) -> Optional[float]:
        if len(self.steps) < self.min_steps:
            return None
        left = statistics.median(self.steps[-self.window:]) * max(0, self.total_steps - self.done)
        if self._other_per_loss is not None:
            left += self._other_per_loss * max(0, self.total_losses - self.losses_done)
        return left

    def text(self) -> str:
        left = self.seconds_left()
        return "ETA after the first steps" if left is None else f"ETA {_duration(left)}"


class _Progress:
    """A progress bar (tqdm, if installed and enabled) whose time left is :class:`_Eta`'s, never tqdm's own
    guess from the first steps (which include building the network: a 7-minute run once showed 3 h 53 m)."""

    def __init__(self, total: int, total_losses: int, enabled: bool, desc: str):
        self.eta = _Eta(total, total_losses)
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=total, desc=desc, unit="step", leave=False, file=sys.stderr,
                                bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} steps "
                                           "[{elapsed}{postfix}]")
                self.bar.set_postfix_str(self.eta.text(), refresh=False)
            except ImportError:
                pass

    def __call__(self, n: int) -> None:
        for _ in range(n):
            self.eta.step()
        if self.bar is not None:
            self.bar.set_postfix_str(self.eta.text(), refresh=False)
            self.bar.update(n)

    def describe(self, text: str) -> None:
        self.eta.start_loss()
        if self.bar is not None:
            self.bar.set_description(text)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _datasets(cfg: OdysseyConfig) -> List[Dataset]:
    if cfg.data is not None:
        return [load_folder(cfg.data, cfg.test_fraction, seed=cfg.train.seed)]
    return [synthetic_dataset(t, cfg.size, cfg.n_train, cfg.n_test, seed=cfg.train.seed) for t in cfg.tasks]


def _print(*args) -> None:
    print(*args, flush=True)


def run(cfg: Optional[OdysseyConfig] = None, *, run_id: Optional[str] = None, log=_print) -> Path:
    """Run the experiment of ``cfg`` and write its tables and plots; returns the run's folder.

    Args:
        cfg: the configuration (default: the quick mode).
        run_id: the run's name (default: date, time and a random suffix).
        log: where progress lines go (stdout, flushed, by default; ``lambda *a: None`` for silence).

    Raises:
        ValueError: unknown losses or tasks, a bad dataset folder, bad training settings.
        ImportError: MONAI missing (the network), nibabel missing for NIfTI data.

    Example:
        >>> from fastloss.odyssey import MODES, run
        >>> from dataclasses import replace
        >>> folder = run(replace(MODES["quick"], losses=("Dice", "DiceCE")))  # doctest: +SKIP
    """
    cfg = _check(cfg or MODES["quick"])
    run_id = run_id or new_run_id()
    root = Path(cfg.out)
    out = root / run_id
    if out.exists():
        raise FileExistsError(f"the run folder {out} exists already; choose another --run-id")
    log(opening_line(cfg, run_id, out))
    threads_before = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(cfg.threads)
    made_root = not root.exists()
    try:
        if made_root:
            root.mkdir(parents=True)
            (root / ".gitignore").write_text("# written by python -m fastloss.odyssey: keep runs out of git\n*\n")
        out.mkdir(parents=True, exist_ok=False)
        return _run(cfg, run_id, out, log)
    except BaseException:
        _remove_if_empty(out, root if made_root else None)
        raise
    finally:
        torch.set_num_threads(threads_before)


def opening_line(cfg: OdysseyConfig, run_id: str, out: Path) -> str:
    """What a run will do, said before it starts: tasks, losses, steps, sizes, device, output folder."""
    tc = cfg.train
    per_loss = tc.epochs * tc.steps_per_epoch
    threads = cfg.threads if cfg.threads is not None else torch.get_num_threads()
    if cfg.data is not None:
        what = f"your data {cfg.data} ({cfg.test_fraction:g} held out)"
        n_tasks = 1
    else:
        n_tasks = len(cfg.tasks)
        what = (f"{n_tasks} synthetic task{'s' * (n_tasks != 1)} ({', '.join(cfg.tasks)}; "
                f"{'x'.join(map(str, cfg.size))} volumes, {cfg.n_train} train / {cfg.n_test} test cases each)")
    n = len(cfg.losses)
    return (f"[odyssey] run {run_id} ({cfg.mode} mode): {what} x {n} loss{'es' * (n != 1)} ({', '.join(cfg.losses)}); "
            f"{per_loss} training steps per loss ({tc.epochs} epochs x {tc.steps_per_epoch}, batch {tc.batch_size}, "
            f"{'x'.join(map(str, tc.patch))} patches), {n_tasks * n * per_loss} in all; {tc.device}, "
            f"{threads} thread{'s' * (threads != 1)}; writing to {out}{os.sep}")


def _remove_if_empty(out: Path, root: Optional[Path]) -> None:
    """After an error: no empty run folder left behind (nor an output root this run made for nothing)."""
    try:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if root is not None and root.is_dir() and {p.name for p in root.iterdir()} <= {".gitignore"}:
            shutil.rmtree(root)
    except OSError:  # pragma: no cover - best effort; the original error matters more
        pass


def _load_average() -> Optional[List[float]]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):  # pragma: no cover - not on every platform
        return None


def _run(cfg: OdysseyConfig, run_id: str, out: Path, log) -> Path:
    t_run = time.perf_counter()
    load_start = _load_average()
    datasets = _datasets(cfg)
    device = torch.device(cfg.train.device)
    from ..ranking import min_cases

    need = min_cases(cfg.alpha)
    for ds in datasets:
        if len(ds.test) < need and len(cfg.losses) > 1:
            log(f"[odyssey] warning: {ds.name} has {len(ds.test)} test case(s); at alpha={cfg.alpha:g} a loss can "
                f"beat another only with at least {need}, so its significance scores will all be 0")

    case_rows: List[dict] = []
    class_rows: List[dict] = []
    speed_rows: List[dict] = []
    train_rows: List[dict] = []
    failures: List[str] = []
    tc = cfg.train
    total_steps = len(datasets) * len(cfg.losses) * tc.epochs * tc.steps_per_epoch
    bar = _Progress(total_steps, len(datasets) * len(cfg.losses), cfg.progress, "odyssey")
    for ds in datasets:
        def make_model(ds=ds):
            return build_network(ds.in_channels, ds.num_classes, tc.patch, cfg.filters)

        torch.manual_seed(tc.seed)  # the same initialisation for every loss
        init_state = copy.deepcopy(make_model().state_dict())
        for name in cfg.losses:
            bar.describe(f"{ds.name}: {name}")
            t0 = time.perf_counter()
            try:
                res = train_one(name, init_state, make_model, ds, tc, progress=bar)
            except FloatingPointError as e:
                failures.append(f"{ds.name}/{name}: {e}")
                bar.eta.end_loss()
                log(f"[odyssey] {ds.name:12s} {name:12s} FAILED: {e}  ({bar.eta.text()})")
                for case in ds.test:
                    for metric in ("DSC", "NSD"):
                        case_rows.append({"loss": name, "task": ds.name, "metric": metric, "case": case.name, "value": math.nan})
                continue
            for e, (v, lr) in enumerate(zip(res.epoch_loss, res.lr)):
                train_rows.append({"task": ds.name, "loss": name, "epoch": e, "train_loss": v, "lr": lr})
            rows = evaluate(res.model, ds.test, ds.num_classes, tc.patch, tc.device, cfg.tolerance)
            per_case: Dict[Tuple[str, str], List[float]] = {}
            for r in rows:
                class_rows.append({"loss": name, "task": ds.name, "metric": r["metric"], "case": r["case"],
                                   "class": r["class"], "class_name": ds.class_names[r["class"]], "value": r["value"]})
                per_case.setdefault((r["case"], r["metric"]), []).append(r["value"])
            for (case, metric), vals in per_case.items():
                case_rows.append({"loss": name, "task": ds.name, "metric": metric, "case": case, "value": _nanmean(vals)})
            s, l = summarize_ms(res.step_ms), summarize_ms(res.loss_ms)
            speed_rows.append(_speed_row(ds.name, name, "fastloss", "train", res.step_ms, res.loss_ms))
            dsc = _nanmean([r["value"] for r in case_rows if r["task"] == ds.name and r["loss"] == name and r["metric"] == "DSC"])
            nsd = _nanmean([r["value"] for r in case_rows if r["task"] == ds.name and r["loss"] == name and r["metric"] == "NSD"])
            bar.eta.end_loss()
            log(f"[odyssey] {ds.name:12s} {name:12s} DSC {dsc:.4f}  NSD {nsd:.4f}  step {s['median']:7.1f} ms "
                f"(loss {l['median']:6.2f} ms)  {time.perf_counter() - t0:6.1f} s  ({bar.eta.text()})")
        # Side-by-side timing: fastloss and MONAI (where MONAI has the loss), interleaved, same batches.
        if cfg.timing_steps > 0:
            fns = {}
            for name in cfg.losses:
                fn = build_loss(name, tc.epochs, training_class_counts(ds))
                if hasattr(fn, "set_epoch"):  # DiceBD: time the schedule's end (both terms), not α = 1
                    fn.set_epoch(tc.epochs)
                fns[("fastloss", name)] = fn
                if cfg.monai and name in MONAI_EQUIVALENTS:
                    fns[("monai", name)] = monai_loss(name)
            times = time_steps(fns, init_state, make_model, ds, tc, cfg.timing_steps)
            for (impl, name), (st, lt) in times.items():
                speed_rows.append(_speed_row(ds.name, name, impl, "side_by_side", st, lt))
    bar.close()

    _write_csv(out / "cases.csv", case_rows)
    _write_csv(out / "per_class.csv", class_rows)
    _write_csv(out / "throughput.csv", [dict(r, device=_device_name(device), torch=torch.__version__,
                                             threads=torch.get_num_threads(), run_id=run_id) for r in speed_rows])
    _write_csv(out / "training.csv", train_rows)
    ranking_text = _rank(case_rows, out, cfg.alpha)
    log("[odyssey] " + ranking_text)
    wall = time.perf_counter() - t_run
    info = {
        "run_id": run_id,
        "config": _jsonable(asdict(cfg)),
        "tasks": {ds.name: {"classes": list(ds.class_names), "train": [c.name for c in ds.train],
                            "test": [c.name for c in ds.test], **{k: v for k, v in ds.meta.items()}} for ds in datasets},
        "failures": failures,
        "wall_seconds": round(wall, 1),
        "load_average": {"start": load_start, "end": _load_average()},  # 1, 5, 15 min (other work on the machine)
        "device": _device_name(device),
        "threads": torch.get_num_threads(),
        "versions": _versions(),
        "host": platform.node(),
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
    }
    (out / "config.json").write_text(json.dumps(info, indent=2, ensure_ascii=False) + "\n")
    drawn = False
    if cfg.plots:
        try:
            from . import plots

            drawn = bool(plots.draw(out, case_rows, speed_rows, run_id=run_id))
        except ImportError as e:
            log(f"[odyssey] no plots: {e}")
    log(f"[odyssey] run {run_id}: {_duration(wall)}; tables{' and plots' if drawn else ''} in {out}")
    return out


def _speed_row(task, loss, impl, phase, step_ms, loss_ms) -> dict:
    s, l = summarize_ms(step_ms), summarize_ms(loss_ms)
    return {"task": task, "loss": loss, "impl": impl, "phase": phase, "steps": len(step_ms),
            "step_ms_median": s["median"], "step_ms_p20": s["p20"], "step_ms_p80": s["p80"],
            "loss_ms_median": l["median"], "loss_ms_p20": l["p20"], "loss_ms_p80": l["p80"],
            "loss_share": (l["median"] / s["median"]) if s["median"] > 0 else math.nan}


def _rank(case_rows: List[dict], out: Path, alpha: float) -> str:
    """Write ranking.csv / ranking.txt; returns the text table."""
    from ..ranking import format_ranking, metric_directions, significance_scores

    # DSC and NSD: higher is better (stated, not left to the ranking's name lists)
    scores = significance_scores(case_rows, alpha=alpha, higher_is_better=("DSC", "NSD"))
    keys = sorted(scores)
    losses = sorted({loss for s in scores.values() for loss in s})
    tasks = sorted({t for t, _ in keys})
    overall = {loss: sum(scores[k][loss] for k in keys) / len(keys) for loss in losses}
    per_task = {t: {loss: _nanmean([scores[k][loss] for k in keys if k[0] == t]) for loss in losses} for t in tasks}
    order = sorted(losses, key=lambda loss: (-overall[loss], loss))
    rows = []
    for i, loss in enumerate(order):
        row = {"rank": i + 1, "loss": loss, "rank_score": overall[loss]}
        for t in tasks:
            row[f"rank_score[{t}]"] = per_task[t][loss]
        for t, m in keys:
            row[f"score[{t}/{m}]"] = scores[(t, m)][loss]
        rows.append(row)
    _write_csv(out / "ranking.csv", rows)
    text = format_ranking(scores, metric_directions(["DSC", "NSD"], higher_is_better=("DSC", "NSD")))
    text = rank_explanation(len(losses), len(keys), alpha) + "\n\n" + text
    (out / "ranking.txt").write_text(text + "\n")
    return text


def rank_explanation(n_losses: int, n_columns: int, alpha: float) -> str:
    """What the ranking's columns mean (printed above the table on the console and in ranking.txt)."""
    return (
        f"Rank Score (Ma et al. 2021, Sec. 3.4). Each task/metric column counts the other losses a loss beats "
        f"there (0 to {max(0, n_losses - 1)}): a one-sided Wilcoxon signed-rank test on the paired per-case "
        f"values, p < {alpha:g}; a case without a prediction (N/A) counts as 0. rank_score is the mean of the "
        f"{n_columns} columns; 'better: higher' means higher values were ranked better. The same in ranking.csv, "
        "with rank_score[task], the mean of a task's columns."
    )


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def _versions() -> dict:
    import fastloss

    out = {"python": platform.python_version(), "torch": torch.__version__, "fastloss": fastloss.__version__}
    try:
        import monai

        out["monai"] = monai.__version__
    except ImportError:
        out["monai"] = ""
    return out


def _jsonable(x):
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    return x
