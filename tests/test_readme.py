"""Every number in docs/backtest.md's tables comes from `build.py report` on fresh builds of the demo and
the seeds, but the skills before, which come from data/backtest_skill_before.csv."""

import csv
import re
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import ROOT, run_build

import build
from liquidation_heatmap import cli, report

NUMBER = re.compile(r"[-+]?\d+\.\d+")
CELL = re.compile(r"(\S+) → (\S+)")  # a skill before → after
BACKTEST_DOC = ROOT / "docs" / "backtest.md"   # the generated backtest blocks live there, not in the README


def test_the_readme_backtest_table_is_what_a_fresh_build_reports(month_db):
    written = report.README_BLOCKS["backtest report"].search(BACKTEST_DOC.read_text())
    assert written, "docs/backtest.md lost its backtest report block"
    fresh = report.backtest_report(month_db)
    table = written[0].split("\n", 1)[1].rsplit("\n", 1)[0] + "\n"
    # the same rows, baselines and words; the numbers equal to their last printed digit (sums of floats
    # in another order may move the 15th)
    assert NUMBER.sub("#", table) == NUMBER.sub("#", fresh)
    for old, new in zip(NUMBER.findall(table), NUMBER.findall(fresh), strict=True):
        assert abs(float(old) - float(new)) <= 0.0101, (old, new)


def test_the_readme_fitted_stop_loss_share_is_the_demo_fit(month_db):
    """docs/models.md quotes how many of the demo's walk-forward fits chose which stop-loss share."""
    with sqlite3.connect(month_db) as con:
        share, chosen, fits = con.execute(
            "SELECT value, count(*), sum(count(*)) OVER () FROM fitted_parameters WHERE parameter = 'stop_loss_share' "
            "GROUP BY value ORDER BY count(*) DESC LIMIT 1").fetchone()
    assert f"on the demo {chosen} of the {fits} fits choose {share * 100:.0f} %," in " ".join((ROOT / "docs" / "models.md").read_text().split())


@pytest.fixture(scope="session")
def seeds(month_db, tmp_path_factory) -> Path:
    """docs/backtest.md's seeds exactly: `report` simulates and builds each (10 days), then writes skill.csv."""
    out = tmp_path_factory.mktemp("seeds")

    def seed(n: int) -> None:   # what `report` does for a seed it lacks, done for the three at once beforehand
        folder = out / f"seed-{n}"
        for command, args in (("demo", ["--out", str(folder / "raw"), "--days", "10", "--seed", str(n)]),
                              ("build", ["--data", str(folder / "raw"), "--db", str(folder / "liquidations.db"),
                                         "--no-stored-answers"])):
            assert run_build(*args, command=command, traced=command == "build").returncode == 0, (n, command)
    with ThreadPoolExecutor(3) as pool:
        list(pool.map(seed, (101, 102, 103)))
    result = run_build("--db", str(month_db), "--seeds-dir", str(out), "--csv", str(out / "skill.csv"), command="report")
    assert result.returncode == 0, result.stderr
    return out


def read_skills(path: Path) -> list[dict]:
    with path.open() as f:
        return list(csv.DictReader(f))


def test_the_readme_skill_before_and_after_is_what_fresh_builds_report(seeds):
    """"after" from fresh builds of the demo and the seeds (to the last digit); "before" from the committed CSV."""
    written = report.README_BLOCKS["skill before and after"].search(BACKTEST_DOC.read_text())
    assert written, "docs/backtest.md lost its skill before and after block"
    fresh = report.skill_table(read_skills(seeds / "skill.csv"), read_skills(ROOT / "data/backtest_skill_before.csv"))
    rows, fresh_rows = written[0].splitlines()[1:-1], fresh.splitlines()
    assert len(rows) == len(fresh_rows) >= 2 + 4 * 3 * 4  # demo and 3 seeds, 3 horizons, 4 models at least
    for row, fresh_row in zip(rows, fresh_rows, strict=True):
        assert NUMBER.sub("#", row) == NUMBER.sub("#", fresh_row)  # the same datasets, horizons, models, dashes
        for old, new in zip(CELL.findall(row), CELL.findall(fresh_row), strict=True):
            assert old[0] == new[0], (row, "before differs from data/backtest_skill_before.csv")
            assert old[1] == new[1] == "–" or abs(float(old[1]) - float(new[1])) <= 0.0101, (row, old, new)


def test_report_writes_the_readme_blocks(month_db, seeds, tmp_path, monkeypatch, capsys):
    doc = tmp_path / "docs" / "backtest.md"   # where `report --readme` writes, under the ROOT set below
    doc.parent.mkdir()
    shutil.copy(BACKTEST_DOC, doc)
    monkeypatch.setattr(report, "ROOT", tmp_path)   # the file written
    monkeypatch.setattr(cli, "HOME", tmp_path)      # and --before's default, tmp_path/data/..., which is missing
    text = doc.read_text()
    text = report.README_BLOCKS["backtest report"].sub(lambda m: m[1] + "stale" + m[2], text)
    doc.write_text(report.README_BLOCKS["skill before and after"].sub(lambda m: m[1] + "stale" + m[2], text))
    command = ["report", "--db", str(month_db), "--seeds-dir", str(seeds), "--csv", str(tmp_path / "skill.csv")]
    assert build.main([*command, "--readme"]) == 0
    detailed, table = capsys.readouterr().out.split("\n\n| dataset ")
    written = doc.read_text()
    assert detailed in written and "| dataset " + table in written and "stale" not in written
    assert "| – → +" in table or "| – → -" in table  # no skills before: a dash
    assert (tmp_path / "skill.csv").read_text() == (seeds / "skill.csv").read_text()  # the seeds were not rebuilt
    doc.write_text("no block here\n")
    assert build.main([*command, "--readme"]) == 2
    assert build.main(["report", "--db", str(tmp_path / "none.db")]) == 2 and not (tmp_path / "none.db").exists()
