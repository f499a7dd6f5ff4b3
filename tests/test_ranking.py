"""fastloss.ranking on synthetic tables whose ranking is known by construction."""

import csv
import math
import random
import sys

import pytest

pytest.importorskip("scipy")

from fastloss.ranking import main, rank_scores, read_table, significance_scores  # noqa: E402


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
    assert rank_scores(renamed) == {"A": 0.0, "B": 1.0, "C": 2.0}  # unknown name: higher is better
    assert rank_scores(renamed, lower_is_better=["dist"]) == {"A": 2.0, "B": 1.0, "C": 0.0}
    # N/A on a lower-is-better metric is the worst value (+inf): 6 N/A cases make A lose to B
    na = [dict(r, value=None) if r["loss"] == "A" and int(r["case"][1:]) < 6 else r for r in rows]
    s = significance_scores(na)[("t", "HD95")]
    assert s["B"] >= 1 and s["C"] == 0


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
    assert [line.split()[1] for line in out[1:]] == ["DiceTopK", "Dice", "CE"]
    assert out[1].split()[2:] == ["2.000", "2", "2", "2", "2"]


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
