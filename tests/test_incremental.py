"""Incremental builds: a build beside a previous one recomputes only from the first day its new, changed or
removed files hold (build.py rebuild_from), and gives what a full build of the same files gives."""

import datetime as dt
import re
import sqlite3
from pathlib import Path

from conftest import DAYS, START, copy_tree, daily_file, read_zip_lines, run_build, write_zip_lines

import build

LAST_DAY = str(dt.date.fromisoformat(START) + dt.timedelta(days=DAYS - 1))


def tables(db: Path) -> dict[str, list[tuple]]:
    """Every exported table but build_info, floats to 9 significant digits (a sum carried over from the
    previous build is added in another order than a full build adds it), rows sorted."""
    with sqlite3.connect(db) as con:
        names = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                 if name != "build_info"]
        return {name: sorted((tuple(float(f"{v:.9g}") if isinstance(v, float) else v for v in row)
                              for row in con.execute(f"SELECT * FROM [{name}]")), key=repr) for name in names}


def assert_same_tables(db: Path, reference: Path) -> None:
    mine, theirs = tables(db), tables(reference)
    assert sorted(mine) == sorted(theirs)
    for name in theirs:
        assert len(mine[name]) == len(theirs[name]), name
        assert mine[name] == theirs[name], f"{name}: first difference at row " + str(
            next(i for i, (a, b) in enumerate(zip(mine[name], theirs[name])) if a != b))


def recomputed_from(stderr: str) -> str:
    match = re.search(r"incremental: the previous build's results before (\S+)", stderr)
    return match[1] if match else "a full build" if "a full build" in stderr else stderr[-2000:]


def test_adding_a_day_gives_what_a_full_build_gives(demo_dir, demo_db, tmp_path):
    db = tmp_path / "liquidations.db"
    first = run_build("--data", str(demo_dir), "--db", str(db), "--end", str(dt.date.fromisoformat(LAST_DAY) - dt.timedelta(days=1)))
    assert first.returncode == 0, first.stderr
    assert recomputed_from(first.stderr) == "a full build"
    heatmap_rows = tables(db)["heatmap_cells"]
    added = run_build("--data", str(demo_dir), "--db", str(db))
    assert added.returncode == 0, added.stderr
    assert recomputed_from(added.stderr) == LAST_DAY
    appended = re.search(r"exported heatmap_cells: [\d,]+ rows \(from (\S+T23:00:00Z) on\)", added.stderr)
    assert appended, added.stderr

    def kept(rows: list[tuple]) -> list[tuple]:   # the cells before the first one recomputed
        return [row for row in rows if row[2] < appended[1]]
    assert kept(tables(db)["heatmap_cells"]) == kept(heatmap_rows) != []
    assert_same_tables(db, demo_db)      # demo_db: the full build of every day


def test_a_changed_day_in_the_middle_is_recomputed_from_that_day(demo_dir, tmp_path):
    data = copy_tree(demo_dir, tmp_path / "data")
    db, full = tmp_path / "inc" / "liquidations.db", tmp_path / "full" / "liquidations.db"
    assert run_build("--data", str(data), "--db", str(db)).returncode == 0
    day = str(dt.date.fromisoformat(START) + dt.timedelta(days=2))
    klines = daily_file(data, "klines", day, interval="1m")
    lines = read_zip_lines(klines)
    fields = lines[600].split(",")                              # 10:00 that day: the close 1 % higher
    fields[4] = f"{float(fields[4]) * 1.01:.1f}"
    fields[2] = str(max(float(fields[2]), float(fields[4])))
    write_zip_lines(klines, lines[:600] + [",".join(fields)] + lines[601:])
    changed = run_build("--data", str(data), "--db", str(db))
    assert changed.returncode == 0, changed.stderr
    assert recomputed_from(changed.stderr) == day
    assert run_build("--data", str(data), "--db", str(full), "--full").returncode == 0
    assert_same_tables(db, full)


def test_nothing_changed_recomputes_nothing_and_other_options_recompute_everything(demo_dir, tmp_path):
    db = tmp_path / "liquidations.db"
    assert run_build("--data", str(demo_dir), "--db", str(db)).returncode == 0
    before = tables(db)
    again = run_build("--data", str(demo_dir), "--db", str(db))
    assert recomputed_from(again.stderr) == "infinity"
    assert tables(db) == before
    other = run_build("--data", str(demo_dir), "--db", str(db), "--param", "price_bucket_usd=50")
    assert other.returncode == 0, other.stderr
    assert recomputed_from(other.stderr) == "a full build"
    assert tables(db)["heatmap_cells"] != before["heatmap_cells"]


def test_the_readme_names_every_persisted_table():
    readme = (build.ROOT / "README.md").read_text()
    listed = re.search(r"creates with `CREATE TABLE IF NOT EXISTS`: (.*?)\.\n", readme, re.DOTALL)[1]
    assert sorted(re.findall(r"`(\w+)`", listed)) == build.PERSISTED
