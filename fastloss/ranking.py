"""The ranking scheme of Ma et al. (Section 3.4), after the Medical Segmentation Decathlon's.

Input: a tidy table with one row per (loss, task, metric, case) and its ``value``.

Step 1. For each task ``t`` and metric ``j``, every ordered pair of losses ``(a, b)`` is compared with
a one-sided Wilcoxon signed-rank test on the paired per-case differences ``m(a, k) - m(b, k)``
(``scipy.stats.wilcoxon(..., alternative="greater")``; zero differences are dropped, as scipy's
default ``zero_method="wilcox"`` does; the p-value is exact for up to 50 untied differences and
from the tie-corrected normal approximation otherwise). The significance score ``score_tj(a)`` is the number of losses ``b`` that
``a`` beats with ``p < alpha`` (``alpha = 0.05``).

Step 2. ``Rank Score(a)`` is the mean of ``score_tj(a)`` over all (task, metric) pairs in the table.

N/A values (None, NaN, an empty cell, ``"N/A"``, ``"NA"``, ``"nan"``) count as the worst possible
value: 0 for metrics where higher is better, as footnote 10 of the paper prescribes for DSC and NSD
(a case with no prediction); ``+inf`` for metrics where lower is better (distances such as HD95,
which the paper's Section 5.1 ranks by too). Lower-is-better metrics are recognised by name
(:data:`LOWER_IS_BETTER`, case-insensitive) or named with ``lower_is_better=``; their values are
negated before testing, so "better" always means "significantly larger after orientation".

Command line: ``python -m fastloss.ranking TABLE.csv [--alpha 0.05] [--lower-is-better METRIC ...]``
prints the losses sorted by rank score with their per-task, per-metric significance scores.
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import sys
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = ["LOWER_IS_BETTER", "read_table", "significance_scores", "rank_scores", "main"]

COLUMNS = ("loss", "task", "metric", "case", "value")

#: Metric names (lower-cased) ranked with lower values better unless ``lower_is_better`` says otherwise.
LOWER_IS_BETTER = frozenset(
    {"hd", "hd95", "hd_95", "hausdorff", "hausdorff95", "hausdorff_distance", "asd", "assd", "masd", "asssd"}
)

_NA_STRINGS = {"", "na", "n/a", "nan", "none", "null"}

Key = Tuple[str, str]  # (task, metric)


def _wilcoxon():
    try:
        from scipy.stats import wilcoxon
    except ImportError:
        raise ImportError(
            "fastloss.ranking needs scipy for the Wilcoxon signed-rank test: pip install scipy"
        ) from None
    return wilcoxon


def _parse_value(v, where: str) -> float:
    """A float, or NaN for N/A; anything else non-numeric is a ValueError."""
    if v is None:
        return math.nan
    if isinstance(v, bool):
        raise ValueError(f"{where}: value must be a number or N/A, got the bool {v!r}")
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, str):
        s = v.strip()
        if s.lower() in _NA_STRINGS:
            return math.nan
        try:
            return float(s)
        except ValueError:
            raise ValueError(f"{where}: value must be a number or N/A, got {v!r}") from None
    try:  # numpy scalars, 0-d tensors
        return float(v)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: value must be a number or N/A, got {v!r} ({type(v).__name__})") from None


def read_table(rows) -> Dict[Key, Dict[str, Dict[str, float]]]:
    """Validate a tidy table and index it as ``{(task, metric): {loss: {case: value}}}``.

    ``rows``: a CSV path (``str`` or ``os.PathLike``) with a header naming at least the columns
    ``loss, task, metric, case, value``; or an iterable of mappings with those keys; or a pandas
    DataFrame. N/A values become NaN here.

    Raises:
        ValueError: an empty table, missing columns, a non-numeric value, a duplicated
            (loss, task, metric, case), or a loss whose cases for a (task, metric) differ from the
            other losses' (every loss must have every case of every task and metric).
    """
    if isinstance(rows, (str, os.PathLike)):
        path = os.fspath(rows)
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise ValueError(f"{path}: missing column(s) {missing}; expected at least {list(COLUMNS)}, got {header}")
            records = [{(k or "").strip(): v for k, v in r.items()} for r in reader]
        source = path
    else:
        if hasattr(rows, "to_dict") and hasattr(rows, "columns"):  # pandas DataFrame
            rows = rows.to_dict("records")
        if isinstance(rows, Mapping):
            raise TypeError("rows must be an iterable of records (dicts) or a CSV path, got a single mapping")
        records = list(rows)
        source = "table"
    if not records:
        raise ValueError(f"{source}: the table is empty; expected rows with columns {list(COLUMNS)}")

    table: Dict[Key, Dict[str, Dict[str, float]]] = {}
    for i, r in enumerate(records):
        where = f"{source} row {i + 1}"
        if not isinstance(r, Mapping):
            raise TypeError(f"{where}: expected a mapping with keys {list(COLUMNS)}, got {type(r).__name__}")
        missing = [c for c in COLUMNS if c not in r]
        if missing:
            raise ValueError(f"{where}: missing column(s) {missing}; expected {list(COLUMNS)}, got {sorted(r)}")
        loss, task, metric, case = (str(r[c]).strip() for c in ("loss", "task", "metric", "case"))
        for name, s in (("loss", loss), ("task", task), ("metric", metric), ("case", case)):
            if not s:
                raise ValueError(f"{where}: empty {name}")
        value = _parse_value(r["value"], where)
        cases = table.setdefault((task, metric), {}).setdefault(loss, {})
        if case in cases:
            raise ValueError(f"{where}: duplicate entry for loss={loss!r}, task={task!r}, metric={metric!r}, case={case!r}")
        cases[case] = value

    losses = sorted({loss for group in table.values() for loss in group})
    for (task, metric), group in table.items():
        all_cases = set().union(*(set(c) for c in group.values()))
        for loss in losses:
            have = set(group.get(loss, {}))
            if have != all_cases:
                absent = sorted(all_cases - have)
                raise ValueError(
                    f"loss {loss!r} is missing {len(absent)} of {len(all_cases)} case(s) for task={task!r}, "
                    f"metric={metric!r} (e.g. {absent[:5]}); every loss needs a value (or N/A) for every case"
                )
    return table


def _method(d) -> str:
    """The exact null distribution for up to 50 untied differences, else the normal approximation
    with tie correction (scipy's classic choice; scipy >= 1.15's "auto" would run a slow
    permutation test whenever |differences| tie, which N/A zeros and rounded metrics make common)."""
    import numpy as np

    a = np.abs(d)
    return "exact" if d.size <= 50 and np.unique(a).size == a.size else "approx"


def _is_lower_better(metric: str, lower_is_better) -> bool:
    if lower_is_better is None:
        return metric.lower() in LOWER_IS_BETTER
    return metric in lower_is_better or metric.lower() in {m.lower() for m in lower_is_better}


def significance_scores(
    rows,
    *,
    alpha: float = 0.05,
    lower_is_better: Optional[Iterable[str]] = None,
) -> Dict[Key, Dict[str, int]]:
    """Step 1: ``{(task, metric): {loss: number of losses significantly worse}}``.

    Args:
        rows: see :func:`read_table`.
        alpha: significance level (the paper: 0.05); a loss beats another when the one-sided
            Wilcoxon p-value is below it.
        lower_is_better: metric names where lower values are better; default :data:`LOWER_IS_BETTER`.
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if lower_is_better is not None and isinstance(lower_is_better, str):
        lower_is_better = [lower_is_better]
    table = read_table(rows)
    wilcoxon = _wilcoxon()
    import numpy as np

    scores: Dict[Key, Dict[str, int]] = {}
    for (task, metric), group in sorted(table.items()):
        lower = _is_lower_better(metric, lower_is_better)
        cases = sorted(next(iter(group.values())))
        losses = sorted(group)
        # orient so that larger is better; N/A -> the worst value (footnote 10: 0 for DSC/NSD)
        oriented = {}
        for loss in losses:
            v = np.array([group[loss][c] for c in cases], dtype=np.float64)
            if lower:
                v = np.where(np.isnan(v), -np.inf, -v)
            else:
                v = np.where(np.isnan(v), 0.0, v)
            oriented[loss] = v
        score = {loss: 0 for loss in losses}
        for a in losses:
            for b in losses:
                if a == b:
                    continue
                x, y = oriented[a], oriented[b]
                d = np.where(x == y, 0.0, x - y)  # equal infinities are a tie, not NaN
                d = d[d != 0]  # zero_method="wilcox": zero differences carry no sign
                if d.size == 0:
                    continue  # identical results: nothing to test (p = 1)
                p = wilcoxon(d, alternative="greater", method=_method(d)).pvalue
                if p < alpha:
                    score[a] += 1
        scores[(task, metric)] = score
    return scores


def rank_scores(
    rows,
    *,
    alpha: float = 0.05,
    lower_is_better: Optional[Iterable[str]] = None,
) -> Dict[str, float]:
    """Step 2: ``{loss: Rank Score}``, the mean significance score over every (task, metric).

    ``rows``: tidy records ``(loss, task, metric, case, value)`` as an iterable of dicts, a CSV path
    or a pandas DataFrame (see :func:`read_table`). Needs scipy. Raises ``ValueError`` on bad tables.

    Example::

        >>> rank_scores([{"loss": "Dice", "task": "liver", "metric": "DSC", "case": k, "value": v} ...])
        {'Dice': 1.0, 'CE': 0.0}
    """
    scores = significance_scores(rows, alpha=alpha, lower_is_better=lower_is_better)
    losses = sorted({loss for s in scores.values() for loss in s})
    return {loss: sum(s[loss] for s in scores.values()) / len(scores) for loss in losses}


def format_ranking(scores: Dict[Key, Dict[str, int]]) -> str:
    """A text table: losses sorted by rank score (then name) with each (task, metric) score."""
    keys = sorted(scores)
    losses = sorted({loss for s in scores.values() for loss in s})
    rank = {loss: sum(scores[k][loss] for k in keys) / len(keys) for loss in losses}
    order = sorted(losses, key=lambda loss: (-rank[loss], loss))
    header = ["#", "loss", "rank_score"] + [f"{t}/{m}" for t, m in keys]
    body = [
        [str(i + 1), loss, f"{rank[loss]:.3f}"] + [str(scores[k][loss]) for k in keys]
        for i, loss in enumerate(order)
    ]
    widths = [max(len(r[j]) for r in [header] + body) for j in range(len(header))]
    lines = []
    for r in [header] + body:
        cells = [r[j].ljust(widths[j]) if j == 1 else r[j].rjust(widths[j]) for j in range(len(r))]
        lines.append("  ".join(cells))
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fastloss.ranking",
        description="Rank losses with the significance scheme of Ma et al. (2021), Section 3.4.",
    )
    parser.add_argument("table", help="CSV with columns loss, task, metric, case, value (N/A allowed)")
    parser.add_argument("--alpha", type=float, default=0.05, help="significance level (default 0.05)")
    parser.add_argument(
        "--lower-is-better",
        action="append",
        metavar="METRIC",
        default=None,
        help=f"a metric where lower is better; repeat for several (default: {', '.join(sorted(LOWER_IS_BETTER))})",
    )
    args = parser.parse_args(argv)
    try:
        scores = significance_scores(args.table, alpha=args.alpha, lower_is_better=args.lower_is_better)
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(format_ranking(scores))
    return 0


if __name__ == "__main__":
    sys.exit(main())
