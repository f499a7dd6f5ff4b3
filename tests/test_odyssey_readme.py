"""The README's odyssey example is written from the recorded run's files (issue 25): the passage between the
markers equals what `python -m fastloss.odyssey readme-table RUN_DIR` writes from the committed CSVs, so the
quoted numbers cannot drift from the rows."""

import csv
import json
from pathlib import Path

import pytest

from fastloss.odyssey.report import END, find_block, readme_block, write_readme

ROOT = Path(__file__).resolve().parents[1]


def test_readme_quotes_the_committed_run_exactly():
    text = (ROOT / "README.md").read_text()
    found = find_block(text)
    assert found is not None, "README.md has no odyssey passage between the readme-table markers"
    start, end, run_dir = found
    assert (ROOT / run_dir / "cases.csv").is_file(), f"the README quotes {run_dir}, which is not committed"
    assert text[start:end] == readme_block(ROOT / run_dir, display_dir=run_dir)


def test_the_passage_numbers_are_the_csv_numbers():
    """Independently of the writer: every Rank Score and mean DSC in the passage read back from the CSVs."""
    start, end, run_dir = find_block((ROOT / "README.md").read_text())
    block = (ROOT / "README.md").read_text()[start:end]
    folder = ROOT / run_dir
    with open(folder / "ranking.csv", newline="") as fh:
        ranking = list(csv.DictReader(fh))
    with open(folder / "cases.csv", newline="") as fh:
        cases = list(csv.DictReader(fh))
    rows = {line.split("|")[2].strip(): [c.strip() for c in line.split("|")[1:-1]]
            for line in block.splitlines() if line.startswith("| ") and not line.startswith("| #")}
    assert list(rows) == [r["loss"] for r in ranking]
    tasks = sorted({r["task"] for r in cases})
    for r in ranking:
        row = rows[r["loss"]]
        assert row[0] == r["rank"] and float(row[2]) == pytest.approx(float(r["rank_score"]), abs=5e-4)
        for j, task in enumerate(tasks):
            dsc = [float(c["value"]) if c["value"] != "N/A" else 0.0 for c in cases
                   if c["loss"] == r["loss"] and c["task"] == task and c["metric"] == "DSC"]
            assert float(row[3 + j].split("/")[0]) == pytest.approx(sum(dsc) / len(dsc), abs=5e-3)
    info = json.loads((folder / "config.json").read_text())
    assert f"`{info['run_id']}`" in block


def _fake_run(folder: Path) -> None:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "run_id": "r1", "config": {"mode": "quick", "n_test": 2, "alpha": 0.05, "train": {"epochs": 2, "steps_per_epoch": 3}},
        "wall_seconds": 75.2, "device": "cpu (x86_64, 2 cores)", "threads": 1, "versions": {"torch": "2.x"},
        "load_average": {"start": [1.3, 1, 1], "end": [2.5, 2, 2]}, "failures": ["t/B: diverged"]}))
    rows = [{"loss": loss, "task": "t", "metric": m, "case": f"c{k}", "value": v}
            for loss, v in (("A", "0.5"), ("B", "N/A")) for m in ("DSC", "NSD") for k in range(2)]
    with open(folder / "cases.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    (folder / "ranking.csv").write_text("rank,loss,rank_score\n1,A,1\n2,B,0\n")
    (folder / "throughput.csv").write_text(
        "task,loss,impl,phase,step_ms_median,loss_ms_median\nt,A,fastloss,train,50,2\nt,A,fastloss,side_by_side,51,2.5\n"
        "t,A,monai,side_by_side,52,3.5\nt,B,fastloss,train,40,N/A\n")


def test_readme_table_cli_writes_only_the_passage(tmp_path, capsys):
    from fastloss.odyssey.__main__ import main

    _fake_run(tmp_path / "runs" / "r1")
    block = readme_block(tmp_path / "runs" / "r1", display_dir="runs/r1")
    assert "1 min 15 s wall on cpu (x86_64, 2 cores) with 1 thread" in block
    assert "load average 1.3 at the start and 2.5 at the end" in block
    assert "| 1 | A | 1.000 | 0.50 / 0.50 | 50.0 | 2.00 (4 %) | 2.50 / 3.50 |" in block
    assert "| 2 | B | 0.000 | 0.00 / 0.00 | 40.0 | — | — / (none) |" in block
    assert "Failed (recorded as N/A): t/B: diverged." in block
    readme = tmp_path / "README.md"
    readme.write_text("# title\n\nbefore\n\n" + block.replace("1.000", "9.999") + "\n\nafter\n")
    assert main(["readme-table", str(tmp_path / "runs" / "r1"), "--write", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# title\n\nbefore\n\n") and text.endswith(END + "\n\nafter\n")
    assert "9.999" not in text and "| 1 | A | 1.000 |" in text
    assert main(["readme-table", str(tmp_path / "nope")]) == 2
    assert "error:" in capsys.readouterr().err
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="no odyssey passage"):
        write_readme(readme, tmp_path / "runs" / "r1")
