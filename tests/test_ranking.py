"""fastloss.ranking on synthetic tables whose ranking is known by construction."""

import csv
import math
import random
import sys

import pytest

pytest.importorskip("scipy")

from fastloss.ranking import (  # noqa: E402
    main,
    metric_directions,
    normalize_metric_name,
    rank_scores,
    read_table,
    significance_scores,
)


def _table(offsets, tasks=("liver", "kidney"), metrics=("DSC", "NSD"), n_cases=12, noise=0.01, seed=0):
    """Rows where loss L scores 0.5 + offsets[L] (+ task/metric specific offsets) plus small noise."""
    rng = random.Random(seed)
    rows = []
    for t in tasks:
        for m in metrics:
            base = [rng.uniform(0.3, 0.7) for _ in range(n_cases)]
            for loss, off in offsets.items():
                o = off(t, m) if callable(off) else off
                for k in range(n_cases):
                    rows.append(
                        {"loss": loss, "task": t, "metric": m, "case": f"c{k}", "value": base[k] + o + rng.gauss(0, noise)}
                    )
    return rows


def test_strict_order_gives_scores_2_1_0():
    rows = _table({"A": 0.2, "B": 0.1, "C": 0.0})
    scores = significance_scores(rows)
    assert set(scores) == {("liver", "DSC"), ("liver", "NSD"), ("kidney", "DSC"), ("kidney", "NSD")}
    for s in scores.values():
        assert s == {"A": 2, "B": 1, "C": 0}
    assert rank_scores(rows) == {"A": 2.0, "B": 1.0, "C": 0.0}


def test_mean_over_tasks_and_metrics():
    # liver: A > B on both metrics; kidney: B > A on DSC only, NSD indistinguishable (identical values).
    def a_off(t, m):
        return 0.2 if t == "liver" else (0.0 if m == "DSC" else 0.1)

    def b_off(t, m):
        return 0.0 if t == "liver" else 0.1

    rows = _table({"A": a_off, "B": b_off}, noise=0.0)
    scores = significance_scores(rows)
    assert scores[("liver", "DSC")] == {"A": 1, "B": 0}
    assert scores[("liver", "NSD")] == {"A": 1, "B": 0}
    assert scores[("kidney", "DSC")] == {"A": 0, "B": 1}
    assert scores[("kidney", "NSD")] == {"A": 0, "B": 0}
    assert rank_scores(rows) == {"A": 0.5, "B": 0.25}


def test_too_few_cases_are_never_significant():
    # Four cases: the smallest one-sided exact Wilcoxon p-value is 1/16 > 0.05.
    rows = _table({"A": 0.5, "B": 0.0}, n_cases=4)
    assert rank_scores(rows) == {"A": 0.0, "B": 0.0}
    # Five cases all in A's favour: p = 1/32 < 0.05.
    rows = _table({"A": 0.5, "B": 0.0}, n_cases=5)
    assert rank_scores(rows) == {"A": 1.0, "B": 0.0}


@pytest.mark.parametrize("na", [None, math.nan, "", "N/A", "nan"])
def test_na_counts_as_zero(na):
    """Footnote 10: N/A is 0. D equals A except on 5 cases where D is N/A: those 5 differences are
    all in A's favour (the only non-zero ones), so A beats D, and the table equals one with zeros."""
    rows = _table({"A": 0.0}, tasks=("t",), metrics=("DSC",), n_cases=10, noise=0.0)
    na_rows = [dict(r, loss="D", value=(na if int(r["case"][1:]) < 5 else r["value"])) for r in rows]
    zero_rows = [dict(r, loss="D", value=(0.0 if int(r["case"][1:]) < 5 else r["value"])) for r in rows]
    assert significance_scores(rows + na_rows) == {("t", "DSC"): {"A": 1, "D": 0}}
    assert significance_scores(rows + na_rows) == significance_scores(rows + zero_rows)


def test_lower_is_better_metrics():
    rows = _table({"A": 0.0, "B": 1.0, "C": 2.0}, tasks=("t",), metrics=("HD95",))
    # HD95 is lower-is-better by default: A (smallest distances) ranks first
    assert rank_scores(rows) == {"A": 2.0, "B": 1.0, "C": 0.0}
    renamed = [dict(r, metric="dist") for r in rows]
    with pytest.raises(ValueError, match=r"direction of metric\(s\) \['dist'\] is unknown"):
        rank_scores(renamed)  # an unknown name is never guessed
    assert rank_scores(renamed, lower_is_better=["dist"]) == {"A": 2.0, "B": 1.0, "C": 0.0}
    assert rank_scores(renamed, higher_is_better="dist") == {"A": 0.0, "B": 1.0, "C": 2.0}
    # a stated direction overrides a known name
    assert rank_scores(rows, higher_is_better=["HD95"]) == {"A": 0.0, "B": 1.0, "C": 2.0}
    # N/A on a lower-is-better metric is the worst value (+inf). With A N/A on 6 of 12 cases, B - A
    # (oriented) is +inf on those 6 and -1 on the other 6: W+ = 7 + ... + 12 = 57 of 78, one-sided
    # p = 0.073 by the tie-corrected normal approximation, not significant; likewise C - A. A's own
    # wins have W+ = 21. So A, the clear winner without the N/A, now beats nobody; B still beats C.
    na = [dict(r, value=None) if r["loss"] == "A" and int(r["case"][1:]) < 6 else r for r in rows]
    assert significance_scores(na)[("t", "HD95")] == {"A": 0, "B": 1, "C": 0}


@pytest.mark.parametrize(
    "name, lower",
    [
        ("HD95 (mm)", True), ("hd_95", True), ("HD 95", True), ("Hausdorff 95 [mm]", True), ("ASSD (mm)", True),
        ("hd", True), ("HD95 mm", True), ("NSD@1mm", False), ("NSD 1.0 mm", False), ("NSD (2 mm)", False), ("nsd_1mm", False), ("DSC", False),
        ("Dice (%)", False), ("dice score", False), ("IoU", False),
    ],
)
def test_known_names_without_case_spaces_and_units(name, lower):
    """The column of the new-user report, ``HD95 (mm)``, was ranked higher-is-better (Focal first)."""
    rows = _table({"A": 0.0, "B": 1.0, "C": 2.0}, tasks=("t",), metrics=(name,))
    want = {"A": 2.0, "B": 1.0, "C": 0.0} if lower else {"A": 0.0, "B": 1.0, "C": 2.0}
    assert rank_scores(rows) == want
    assert metric_directions([name]) == {name: (lower, "known name")}


def test_normalize_metric_name():
    assert [normalize_metric_name(m) for m in ("HD95 (mm)", "hd_95", "NSD@1mm", "Dice [%]", " Surface Dice ")] == [
        "hd95", "hd95", "nsd", "dice", "surfacedice"
    ]


def test_direction_errors_list_what_is_needed():
    rows = _table({"A": 0.0, "B": 1.0}, tasks=("t",), metrics=("DSC", "time", "volume error"), n_cases=5)
    with pytest.raises(ValueError, match=r"\['time', 'volume error'\] is unknown.*--lower-is-better"):
        rank_scores(rows)
    with pytest.raises(ValueError, match=r"\['volume error'\] is unknown"):
        rank_scores(rows, lower_is_better=["time"])
    assert set(rank_scores(rows, lower_is_better=["time", "Volume Error"])) == {"A", "B"}
    with pytest.raises(ValueError, match="'time' is stated both"):
        rank_scores(rows, lower_is_better=["time", "volume error"], higher_is_better=["time"])
    with pytest.raises(ValueError, match=r"--lower-is-better 'tme' matches no metric"):
        rank_scores(rows, lower_is_better=["tme", "time", "volume error"])
    with pytest.raises(TypeError, match="metric names"):
        rank_scores(rows, lower_is_better=[1])


def test_both_na_on_a_lower_is_better_case_is_a_tie():
    """Issue 14 item 3: A's HD95 is lower than B's on 6 cases and both are N/A on the other 2. The
    two N/A cases must tie (not give -inf - -inf = NaN, which makes scipy's p-value NaN): the 6
    remaining differences all favour A, exact one-sided p = 1/2^6 < 0.05, so A scores exactly 1."""
    rows = []
    for k in range(8):
        a, b = (1.0 + k, 3.0 + 2 * k) if k < 6 else (None, "N/A")
        rows += [
            {"loss": "A", "task": "t", "metric": "HD95", "case": f"c{k}", "value": a},
            {"loss": "B", "task": "t", "metric": "HD95", "case": f"c{k}", "value": b},
        ]
    assert significance_scores(rows) == {("t", "HD95"): {"A": 1, "B": 0}}
    assert rank_scores(rows) == {"A": 1.0, "B": 0.0}


def test_csv_input_and_cli(tmp_path, capsys):
    rows = _table({"CE": 0.0, "DiceTopK": 0.2, "Dice": 0.1})
    path = tmp_path / "table.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["loss", "task", "metric", "case", "value", "extra"])
        w.writeheader()
        for r in rows:
            w.writerow(dict(r, extra="ignored"))
    assert rank_scores(str(path)) == rank_scores(rows) == {"DiceTopK": 2.0, "Dice": 1.0, "CE": 0.0}
    assert main([str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["#", "loss", "rank_score"]
    assert "kidney/DSC" in out[0] and "liver/NSD" in out[0]
    assert out[1].split() == ["better:", "higher", "higher", "higher", "higher"]
    assert [line.split()[1] for line in out[2:5]] == ["DiceTopK", "Dice", "CE"]
    assert out[2].split()[2:] == ["2.000", "2", "2", "2", "2"]
    assert out[5] == "directions: DSC: higher is better (known name); NSD: higher is better (known name)"


def test_cli_directions(tmp_path, capsys):
    rows = _table({"A": 0.0, "B": 1.0}, tasks=("t",), metrics=("HD95 (mm)", "dist"), n_cases=6)
    path = tmp_path / "table.csv"
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    assert main([str(path)]) == 2
    assert "['dist'] is unknown" in capsys.readouterr().err
    assert main([str(path), "--lower-is-better", "dist"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[3:] == ["t/HD95", "(mm)", "t/dist"]
    assert out[1].split() == ["better:", "lower", "lower"]
    assert [line.split()[1] for line in out[2:4]] == ["A", "B"]
    assert out[-1] == "directions: HD95 (mm): lower is better (known name); dist: lower is better (stated)"


def test_cli_reports_bad_table(tmp_path, capsys):
    path = tmp_path / "bad.csv"
    path.write_text("loss,task,case,value\nA,t,c1,0.5\n")
    assert main([str(path)]) == 2
    assert "missing column(s) ['metric']" in capsys.readouterr().err


def test_bad_inputs():
    good = _table({"A": 0.1, "B": 0.0}, tasks=("t",), metrics=("DSC",), n_cases=6)
    with pytest.raises(ValueError, match="empty"):
        rank_scores([])
    with pytest.raises(ValueError, match=r"missing column\(s\) \['value'\]"):
        rank_scores([{k: v for k, v in r.items() if k != "value"} for r in good])
    with pytest.raises(ValueError, match="must be a number or N/A, got 'abc'"):
        rank_scores([dict(good[0], value="abc")] + good[1:])
    with pytest.raises(ValueError, match="missing 1 of 6 case"):
        rank_scores(good[:-1])
    with pytest.raises(ValueError, match="loss 'C' is missing 6 of 6"):
        rank_scores(good + [dict(good[0], task="other", loss="C")] + [dict(r, task="other") for r in good])
    with pytest.raises(ValueError, match="duplicate"):
        rank_scores(good + [good[0]])
    with pytest.raises(ValueError, match="alpha"):
        rank_scores(good, alpha=1.5)
    with pytest.raises(TypeError, match="mapping"):
        rank_scores([1, 2, 3])


def test_read_table_shape():
    t = read_table(_table({"A": 0.0, "B": 0.1}, tasks=("t",), metrics=("DSC", "NSD"), n_cases=3))
    assert set(t) == {("t", "DSC"), ("t", "NSD")}
    assert sorted(t[("t", "DSC")]) == ["A", "B"] and sorted(t[("t", "DSC")]["A"]) == ["c0", "c1", "c2"]


def test_missing_scipy_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy.stats", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        rank_scores(_table({"A": 0.0, "B": 0.1}, n_cases=5))


# ------------------------------------------------------------------ issue 25: too few cases for significance
def _csv(tmp_path, rows):
    path = tmp_path / "t.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["loss", "task", "metric", "case", "value"])
        w.writeheader()
        w.writerows(rows)
    return str(path)


def test_min_cases_follows_the_scoring_rule():
    from fastloss.ranking import min_cases

    assert [min_cases(a, ties=False) for a in (0.05, 0.01, 0.001, 0.5, 0.6)] == [5, 7, 10, 2, 1]  # 2^-n < alpha
    assert [min_cases(a) for a in (0.05, 0.01)] == [3, 6]  # n tied differences: 1 - Phi(sqrt(n)) < alpha

    def wins(n, alpha, tied):
        rows = [{"loss": loss, "task": "t", "metric": "DSC", "case": str(k),
                 "value": 0.5 + (0.2 if tied else 0.01 * (k + 1)) * (loss == "B")} for loss in "AB" for k in range(n)]
        return rank_scores(rows, alpha=alpha)["B"]

    for alpha in (0.05, 0.01):
        n, u = min_cases(alpha), min_cases(alpha, ties=False)
        assert (wins(u, alpha, False), wins(u - 1, alpha, False)) == (1, 0)
        assert (wins(n, alpha, True), wins(n - 1, alpha, True), wins(n - 1, alpha, False)) == (1, 0, 0)
    with pytest.raises(ValueError, match="alpha"):
        min_cases(0)


def test_cli_warns_when_the_case_count_cannot_reach_significance(tmp_path, capsys):
    from fastloss.ranking import main

    few = _table({"A": 0.0, "B": 0.2}, tasks=("liver",), metrics=("DSC",), n_cases=2)
    assert main([_csv(tmp_path, few)]) == 0
    out, err = capsys.readouterr()
    assert "too few cases for significance at alpha=0.05" in err and "at least 3 paired cases" in err
    assert "liver/DSC: 2 case(s)" in err and "0 by construction" in err and "rank_score" in out
    tied_only = _table({"A": 0.0, "B": 0.2}, tasks=("liver",), metrics=("DSC",), n_cases=4)
    assert main([_csv(tmp_path, tied_only)]) == 0
    err = capsys.readouterr().err
    assert "too few" not in err and "untied differences need at least 5" in err and "liver/DSC: 4 case(s)" in err
    # enough cases: no warning; a smaller alpha needs more
    enough = _table({"A": 0.0, "B": 0.2}, tasks=("liver",), metrics=("DSC",), n_cases=6)
    assert main([_csv(tmp_path, enough)]) == 0
    assert "warning" not in capsys.readouterr().err
    assert main([_csv(tmp_path, enough), "--alpha", "0.01"]) == 0
    assert "untied differences need at least 7" in capsys.readouterr().err


def test_a_p_value_equal_to_alpha_is_not_significant():
    # five cases, every one better, no ties: the exact one-sided Wilcoxon p-value is 1/32. Significance is
    # p < alpha (strict, the paper's "p < 0.05"), so at alpha = 1/32 nothing wins and just above it B does.
    rows = [{"loss": loss, "task": "t", "metric": "DSC", "case": str(k),
             "value": 0.5 + 0.01 * (k + 1) * (loss == "B")} for loss in "AB" for k in range(5)]
    assert significance_scores(rows, alpha=1 / 32)[("t", "DSC")] == {"A": 0, "B": 0}
    assert significance_scores(rows, alpha=1 / 32 + 1e-12)[("t", "DSC")] == {"A": 0, "B": 1}
    assert rank_scores(rows, alpha=1 / 32) == {"A": 0.0, "B": 0.0}
