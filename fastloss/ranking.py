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
which the paper's Section 5.1 ranks by too). Two losses both N/A on a case tie there.

The direction of every metric is known or stated, never guessed: names are matched without case,
spaces, punctuation, units and tolerances (``HD95 (mm)``, ``hd_95`` and ``Hausdorff 95`` are HD95;
``NSD@1mm`` and ``NSD (2 mm)`` are NSD) against :data:`LOWER_IS_BETTER` and :data:`HIGHER_IS_BETTER`;
any other metric must be named in ``lower_is_better=``/``higher_is_better=`` (which also override the
known names), else a ``ValueError`` lists the metrics that need a direction. Lower-is-better values
are negated before testing, so "better" always means "significantly larger after orientation".

Command line: ``python -m fastloss.ranking TABLE.csv [--alpha 0.05] [--lower-is-better METRIC]
[--higher-is-better METRIC]`` prints the losses sorted by rank score with their per-task, per-metric
significance scores, and the direction used for each metric; on stderr it warns when a (task, metric) has
fewer cases than :func:`min_cases` needs at the chosen alpha (every score there is then 0 by construction).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import re
import sys
from typing import Dict, Iterable, List, Mapping, Optional, Tuple

__all__ = [
    "LOWER_IS_BETTER", "HIGHER_IS_BETTER", "normalize_metric_name", "metric_directions", "read_table",
    "significance_scores", "rank_scores", "format_ranking", "min_cases", "main",
]

COLUMNS = ("loss", "task", "metric", "case", "value")

#: Normalised metric names (see :func:`normalize_metric_name`) where lower values are better.
LOWER_IS_BETTER = frozenset(
    {
        "hd", "hd95", "hd99", "hausdorff", "hausdorff95", "hausdorffdistance", "hausdorffdistance95",
        "asd", "assd", "masd", "asssd", "msd", "avgsurfacedistance", "averagesurfacedistance",
        "meansurfacedistance", "surfacedistance", "avd", "absolutevolumedifference",
    }
)
#: Normalised metric names where higher values are better.
HIGHER_IS_BETTER = frozenset(
    {
        "dsc", "dice", "dicescore", "dicecoefficient", "meandice", "nsd", "surfacedice", "normalizedsurfacedice",
        "normalisedsurfacedice", "iou", "jaccard", "miou", "sensitivity", "recall", "tpr", "specificity", "tnr",
        "precision", "ppv", "f1", "accuracy", "acc", "auc",
    }
)

# units (and "at" for tolerances written out) dropped when normalising a metric name
_UNITS = frozenset({"mm", "cm", "um", "px", "pixel", "pixels", "vox", "voxel", "voxels", "percent", "pct"})

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


def normalize_metric_name(metric: str) -> str:
    """The key a metric name is looked up by: lower case, without units, tolerances and punctuation.

    Example::

        >>> [normalize_metric_name(m) for m in ("HD95 (mm)", "hd_95", "NSD@1mm", "Dice [%]")]
        ['hd95', 'hd95', 'nsd', 'dice']
    """
    s = str(metric).lower()
    s = re.sub(r"\([^)]*\)|\[[^\]]*\]", " ", s)  # "(mm)", "[%]": units or tolerances in brackets
    s = s.split("@", 1)[0]  # "NSD@1mm": a tolerance
    units = "|".join(sorted(_UNITS, key=len, reverse=True))
    # "NSD_1mm", "NSD 1.0 mm": a tolerance (a number attached to letters, as in "HD95 mm", is part of the name)
    s = re.sub(rf"(?<![a-z0-9.])\d+(?:\.\d+)?[\s_-]*(?:{units})(?![a-z])", " ", s)
    tokens = [t for t in re.split(r"[^0-9a-z]+", s) if t and t not in _UNITS]
    tokens = [re.sub(rf"(?<=\d)(?:{units})$", "", t) for t in tokens]  # "hd95mm"
    return "".join(tokens)


def _as_list(names, what: str) -> List[str]:
    if names is None:
        return []
    if isinstance(names, str):
        return [names]
    out = list(names)
    for n in out:
        if not isinstance(n, str):
            raise TypeError(f"{what} must hold metric names (str), got {n!r} ({type(n).__name__})")
    return out


def metric_directions(
    metrics: Iterable[str],
    *,
    lower_is_better: Optional[Iterable[str]] = None,
    higher_is_better: Optional[Iterable[str]] = None,
) -> Dict[str, Tuple[bool, str]]:
    """The direction of each metric: ``{metric: (lower_is_better, why)}``.

    A metric named in ``lower_is_better``/``higher_is_better`` (exactly or after
    :func:`normalize_metric_name`) takes that direction; otherwise its normalised name must be in
    :data:`LOWER_IS_BETTER` or :data:`HIGHER_IS_BETTER`. ``why`` says which rule decided
    (``"known name"`` or ``"stated"``).

    Args:
        metrics: the metric names of a table.
        lower_is_better: metric names where lower values are better (a str is one name).
        higher_is_better: metric names where higher values are better (a str is one name).

    Raises:
        ValueError: a metric stated both ways, a stated name matching no metric of the table, or
            metrics whose direction is neither known nor stated (all of them listed).
        TypeError: a stated name that is not a str.

    Example::

        >>> metric_directions(["DSC", "HD95 (mm)", "time"], higher_is_better=["time"])
        {'DSC': (False, 'known name'), 'HD95 (mm)': (True, 'known name'), 'time': (False, 'stated')}
    """
    metrics = list(dict.fromkeys(metrics))
    lower = _as_list(lower_is_better, "lower_is_better")
    higher = _as_list(higher_is_better, "higher_is_better")
    lower_keys = {normalize_metric_name(n) for n in lower} | set(lower)
    higher_keys = {normalize_metric_name(n) for n in higher} | set(higher)
    for stated, flag in ((lower, "--lower-is-better"), (higher, "--higher-is-better")):
        for n in stated:
            if not any(m == n or normalize_metric_name(m) == normalize_metric_name(n) for m in metrics):
                raise ValueError(f"{flag} {n!r} matches no metric of the table; its metrics are {metrics}")
    out: Dict[str, Tuple[bool, str]] = {}
    unknown = []
    for m in metrics:
        key = normalize_metric_name(m)
        says_lower = m in lower_keys or key in lower_keys
        says_higher = m in higher_keys or key in higher_keys
        if says_lower and says_higher:
            raise ValueError(f"metric {m!r} is stated both lower-is-better and higher-is-better")
        if says_lower or says_higher:
            out[m] = (says_lower, "stated")
        elif key in LOWER_IS_BETTER:
            out[m] = (True, "known name")
        elif key in HIGHER_IS_BETTER:
            out[m] = (False, "known name")
        else:
            unknown.append(m)
    if unknown:
        raise ValueError(
            f"the direction of metric(s) {unknown} is unknown: name each with --lower-is-better or "
            f"--higher-is-better (lower_is_better=/higher_is_better= in Python); known lower-is-better names: "
            f"{', '.join(sorted(LOWER_IS_BETTER))}; known higher-is-better names: {', '.join(sorted(HIGHER_IS_BETTER))}"
        )
    return out


def significance_scores(
    rows,
    *,
    alpha: float = 0.05,
    lower_is_better: Optional[Iterable[str]] = None,
    higher_is_better: Optional[Iterable[str]] = None,
) -> Dict[Key, Dict[str, int]]:
    """Step 1: ``{(task, metric): {loss: number of losses significantly worse}}``.

    Args:
        rows: see :func:`read_table`.
        alpha: significance level (the paper: 0.05); a loss beats another when the one-sided
            Wilcoxon p-value is below it.
        lower_is_better: metric names where lower values are better, beyond (or overriding) the
            known names of :data:`LOWER_IS_BETTER`.
        higher_is_better: metric names where higher values are better, beyond (or overriding) the
            known names of :data:`HIGHER_IS_BETTER`.

    Raises:
        ValueError: a bad table (see :func:`read_table`), ``alpha`` outside (0, 1), or a metric whose
            direction is neither known nor stated (see :func:`metric_directions`).
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    table = read_table(rows)
    directions = metric_directions(
        [m for _, m in sorted(table)], lower_is_better=lower_is_better, higher_is_better=higher_is_better
    )
    wilcoxon = _wilcoxon()
    import numpy as np

    scores: Dict[Key, Dict[str, int]] = {}
    for (task, metric), group in sorted(table.items()):
        lower = directions[metric][0]
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
                # both N/A on a lower-is-better metric: -inf - -inf would be NaN (and one NaN makes
                # the whole test NaN); equal values, infinities included, are a tie
                d = np.subtract(x, y, out=np.zeros_like(x), where=x != y)
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
    higher_is_better: Optional[Iterable[str]] = None,
) -> Dict[str, float]:
    """Step 2: ``{loss: Rank Score}``, the mean significance score over every (task, metric).

    Args:
        rows: tidy records ``(loss, task, metric, case, value)`` as an iterable of dicts, a CSV path
            or a pandas DataFrame (see :func:`read_table`).
        alpha: significance level of the one-sided Wilcoxon tests (the paper: 0.05).
        lower_is_better: metric names where lower values are better (see :func:`metric_directions`).
        higher_is_better: metric names where higher values are better.

    Raises:
        ValueError: a bad table, or a metric whose direction is neither known nor stated.
        ImportError: scipy is not installed.

    Example::

        >>> rank_scores([{"loss": "Dice", "task": "liver", "metric": "DSC", "case": k, "value": v} ...])
        {'Dice': 1.0, 'CE': 0.0}
    """
    scores = significance_scores(rows, alpha=alpha, lower_is_better=lower_is_better, higher_is_better=higher_is_better)
    losses = sorted({loss for s in scores.values() for loss in s})
    return {loss: sum(s[loss] for s in scores.values()) / len(scores) for loss in losses}


def format_ranking(scores: Dict[Key, Dict[str, int]], directions: Optional[Dict[str, Tuple[bool, str]]] = None) -> str:
    """A text table: losses sorted by rank score (then name) with each (task, metric) score.

    With ``directions`` (from :func:`metric_directions`), a second header line says for each
    column whether lower or higher values were ranked better, and a last line says why.
    """
    keys = sorted(scores)
    losses = sorted({loss for s in scores.values() for loss in s})
    rank = {loss: sum(scores[k][loss] for k in keys) / len(keys) for loss in losses}
    order = sorted(losses, key=lambda loss: (-rank[loss], loss))
    header = [["#", "loss", "rank_score"] + [f"{t}/{m}" for t, m in keys]]
    if directions is not None:
        header.append(["", "", "better:"] + [("lower" if directions[m][0] else "higher") for _, m in keys])
    body = [
        [str(i + 1), loss, f"{rank[loss]:.3f}"] + [str(scores[k][loss]) for k in keys]
        for i, loss in enumerate(order)
    ]
    widths = [max(len(r[j]) for r in header + body) for j in range(len(header[0]))]
    lines = []
    for r in header + body:
        cells = [r[j].ljust(widths[j]) if j == 1 else r[j].rjust(widths[j]) for j in range(len(r))]
        lines.append("  ".join(cells).rstrip())
    if directions is not None:
        why = "; ".join(
            f"{m}: {'lower' if low else 'higher'} is better ({how})" for m, (low, how) in directions.items()
        )
        lines.append(f"directions: {why}")
    return "\n".join(lines)


def min_cases(alpha: float = 0.05, *, ties: bool = True) -> int:
    """The fewest paired cases with which one loss can beat another at ``alpha``; below it no pair can
    differ significantly, so every significance score and Rank Score is 0 by construction.

    With ``n`` untied differences the one-sided Wilcoxon test is exact and its smallest p-value is ``2^-n``
    (5 cases at the paper's 0.05, 7 at 0.01: ``ties=False``). Tied differences take the normal
    approximation, whose tie correction lets ``n`` equal differences reach ``1 - Φ(√n)`` (3 cases at 0.05,
    6 at 0.01): the default counts that too, so it is the true minimum. Decided by
    :func:`significance_scores` itself on tables where one loss is better on every case (untied, and all
    tied), so it follows the same rule.

    Raises:
        ValueError: ``alpha`` outside (0, 1).
    """
    if not (isinstance(alpha, (int, float)) and 0 < alpha < 1):
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    for n in range(1, 64):
        for tied in ((False, True) if ties else (False,)):
            rows = [{"loss": loss, "task": "t", "metric": "m", "case": str(k),
                     "value": (1.0 if tied else k + 1.0) * (loss == "a")} for loss in ("a", "b") for k in range(n)]
            if significance_scores(rows, alpha=alpha, higher_is_better="m")[("t", "m")]["a"]:
                return n
    raise ValueError(f"alpha={alpha!r} is too small for any case count up to 63")  # pragma: no cover


def _too_few_cases(table, alpha: float) -> List[str]:
    """Warnings for the (task, metric) pairs whose case count cannot reach significance at ``alpha``
    (or only through tied differences)."""
    need, need_untied = min_cases(alpha), min_cases(alpha, ties=False)
    never, tied_only = [], []
    for (task, metric), group in sorted(table.items()):
        n = len(next(iter(group.values())))
        if len(group) > 1 and n < need_untied:
            (never if n < need else tied_only).append(f"{task}/{metric}: {n} case(s)")
    lines = []
    if never:
        lines.append(
            f"warning: too few cases for significance at alpha={alpha:g}: a loss can beat another only with at "
            f"least {need} paired cases (the one-sided Wilcoxon test's smallest p-value is 2^-n for n untied "
            f"differences), so every significance score of {', '.join(never)} is 0 by construction, whatever the "
            "values. Add cases or raise --alpha."
        )
    if tied_only:
        lines.append(
            f"warning: few cases for alpha={alpha:g}: untied differences need at least {need_untied} paired cases "
            f"(smallest p-value 2^-n); with {', '.join(tied_only)} a loss can beat another only where all its "
            "differences tie (the normal approximation's tie correction)."
        )
    return lines


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
        help="a metric where lower is better (repeat for several); needed for names that are not known "
        f"(known: {', '.join(sorted(LOWER_IS_BETTER))})",
    )
    parser.add_argument(
        "--higher-is-better",
        action="append",
        metavar="METRIC",
        default=None,
        help="a metric where higher is better (repeat for several); needed for names that are not known "
        f"(known: {', '.join(sorted(HIGHER_IS_BETTER))})",
    )
    args = parser.parse_args(argv)
    try:
        table = read_table(args.table)
        directions = metric_directions(
            [m for _, m in sorted(table)], lower_is_better=args.lower_is_better, higher_is_better=args.higher_is_better
        )
        scores = significance_scores(
            args.table, alpha=args.alpha, lower_is_better=args.lower_is_better, higher_is_better=args.higher_is_better
        )
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for line in _too_few_cases(table, args.alpha):
        print(line, file=sys.stderr)
    print(format_ranking(scores, directions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
