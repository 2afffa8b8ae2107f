"""Incremental builds: a build beside a previous one recomputes only from the first day its new, changed or
removed files hold (build.py rebuild_from), and gives what a full build of the same files gives."""

import datetime as dt
import gzip
import json
import re
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
from conftest import DAYS, START, copy_tree, daily_file, read_zip_lines, run_build, write_zip_lines

import build
from liquidation_heatmap import export, incremental, pipeline, project

LAST_DAY = str(dt.date.fromisoformat(START) + dt.timedelta(days=DAYS - 1))
EARLIER = str(dt.date.fromisoformat(LAST_DAY) - dt.timedelta(days=1))


@pytest.fixture(scope="module")
def all_but_the_last_day(demo_dir, tmp_path_factory) -> Path:
    """The demo's days but the last, built (a full build): its folder (the SQLite and DuckDB files, the cache),
    which the tests that add the last day copy."""
    db = tmp_path_factory.mktemp("earlier") / "liquidations.db"
    first = run_build("--data", str(demo_dir), "--db", str(db), "--end", EARLIER)
    assert first.returncode == 0, first.stderr
    assert recomputed_from(first.stderr) == "a full build"
    return db.parent


def copy_of_build(folder: Path, tmp_path: Path) -> Path:
    """A copy of a built folder, as if it had been built here: its SQLite file's path."""
    return copy_tree(folder, tmp_path / "build") / "liquidations.db"


def tables(db: Path) -> dict[str, list[tuple]]:
    """Every exported table but build_info and SQLite's own (the planner's sqlite_stat1), floats to 9
    significant digits (a sum carried over from the previous build is added in another order than a full
    build adds it), rows sorted."""
    with sqlite3.connect(db) as con:
        names = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
                 if name != "build_info" and not name.startswith("sqlite_")]
        found = {name: sorted((tuple(float(f"{v:.9g}") if isinstance(v, float) else v for v in row)
                               for row in con.execute(f"SELECT * FROM [{name}]")), key=repr) for name in names}
    # the stored answers (answers.py), without the time each query took
    found["stored_answers"] = [(request, headers, answer(body)) for request, headers, body in found["stored_answers"]]
    return found


def answer(body: bytes):
    answered = json.loads(gzip.decompress(body), parse_float=lambda text: float(f"{float(text):.9g}"))
    if isinstance(answered, dict):
        answered.pop("query_ms", None)
    for row in answered["rows"] if isinstance(answered, dict) else answered:
        if isinstance(row, dict):
            row.pop("built_at", None)   # (coverage's: build_info's, left out above)
    return answered


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


def test_adding_a_day_gives_what_a_full_build_gives(demo_dir, demo_db, all_but_the_last_day, tmp_path):
    db = copy_of_build(all_but_the_last_day, tmp_path)
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


def test_an_incremental_export_of_more_rows_than_it_reads_first_streams_them(demo_dir, demo_db, all_but_the_last_day,
                                                                             tmp_path, monkeypatch):
    """An incremental build reads its output rows from DuckDB first and commits beside the writing of
    SQLite, up to PREFETCH_ROWS; past that it streams them and commits after, as a full build does."""
    db = copy_of_build(all_but_the_last_day, tmp_path)
    read_first, real = [], export.prefetch
    monkeypatch.setattr(export, "prefetch", lambda con, plans: read_first.append(real(con, plans)) or read_first[-1])
    monkeypatch.setattr(export, "PREFETCH_ROWS", 100)
    assert build.main(["build", "--data", str(demo_dir), "--db", str(db)]) == 0
    assert read_first == [None]
    assert_same_tables(db, demo_db)


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


def test_nothing_changed_recomputes_nothing_and_other_options_recompute_everything(demo_dir, demo_db, tmp_path):
    db = copy_of_build(demo_db.parent, tmp_path)   # demo_db: a full build of demo_dir
    before = tables(db)
    again = run_build("--data", str(demo_dir), "--db", str(db))
    assert recomputed_from(again.stderr) == "infinity"
    assert tables(db) == before
    other = run_build("--data", str(demo_dir), "--db", str(db), "--param", "price_bucket_usd=50")
    assert other.returncode == 0, other.stderr
    assert recomputed_from(other.stderr) == "a full build"
    assert tables(db)["heatmap_cells"] != before["heatmap_cells"]


def test_the_docs_name_every_persisted_table():
    documented = (project.ROOT / "docs" / "incremental.md").read_text()
    listed = re.search(r"creates with `CREATE TABLE IF NOT EXISTS`:\s(.*?)\.\n", documented, re.DOTALL)[1]
    assert sorted(re.findall(r"`(\w+)`", listed)) == incremental.PERSISTED


def duckdb_contents(duck: Path) -> dict:
    """Every table of a DuckDB file: its rows' count and a checksum of their values."""
    with duckdb.connect(str(duck), read_only=True) as con:
        names = [name for (name,) in con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
        return {name: con.execute(f"SELECT count(*), bit_xor(hash(COLUMNS(*))) FROM {name}").fetchone()
                for name in names}


def test_a_failed_or_killed_build_leaves_the_previous_duckdb_file_whole(demo_dir, demo_db, all_but_the_last_day, tmp_path,
                                                                        monkeypatch):
    """An incremental build writes the previous build's DuckDB file in place, in one transaction (no copy
    of it): a build that fails, is killed or finds the file open elsewhere leaves that file as it was, and
    the next build still adds to it what a full build gives."""
    db = copy_of_build(all_but_the_last_day, tmp_path)
    before = duckdb_contents(db.with_suffix(".duckdb"))
    assert before["heatmap"][0] > 0 and before["build_info"][0] > 0

    def broken_export(*args, **kwargs):   # after every SQL layer has run
        raise RuntimeError("disk full")
    monkeypatch.setattr(pipeline, "export_sqlite", broken_export)
    with pytest.raises(RuntimeError, match="disk full"):
        build.main(["build", "--data", str(demo_dir), "--db", str(db)])
    assert duckdb_contents(db.with_suffix(".duckdb")) == before

    # killed in the middle of the models (SIGKILL: nothing of Python's or DuckDB's own cleanup runs)
    process = subprocess.Popen([sys.executable, str(project.ROOT / "build.py"), "build", "--data", str(demo_dir),
                                "--db", str(db)], stderr=subprocess.PIPE, text=True)
    for line in process.stderr:
        if "ran sql/models/pieces.sql" in line:
            process.kill()
            break
    assert process.wait() == -signal.SIGKILL
    assert duckdb_contents(db.with_suffix(".duckdb")) == before

    # open in another program: DuckDB lets one process write a file, so the build stops and says why
    hold = "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); print('open', flush=True); sys.stdin.read()"
    reader = subprocess.Popen([sys.executable, "-c", hold, str(db.with_suffix(".duckdb"))],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert reader.stdout.readline() == "open\n"
    blocked = run_build("--data", str(demo_dir), "--db", str(db))
    reader.communicate("")
    assert blocked.returncode == 2 and f"cannot write {db.with_suffix('.duckdb')}" in blocked.stderr
    assert "--full" in blocked.stderr and duckdb_contents(db.with_suffix(".duckdb")) == before

    added = run_build("--data", str(demo_dir), "--db", str(db))
    assert added.returncode == 0, added.stderr
    assert recomputed_from(added.stderr) == LAST_DAY
    assert_same_tables(db, demo_db)      # demo_db: the full build of every day
