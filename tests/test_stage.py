"""The staging cache: each file read once into Parquet, keyed by its checksum (stage.py)."""

import re
import sqlite3
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from conftest import copy_tree, daily_file, read_zip_lines, remove, run_build, write_zip_lines

from liquidation_heatmap import stage
from liquidation_heatmap.source_file import SourceFile


def staged_files(cache: Path) -> dict[str, float]:
    """Every staged Parquet in the cache, with its modification time."""
    return {str(p.relative_to(cache)): p.stat().st_mtime_ns for p in cache.rglob("*.parquet")}


def to_stage(stderr: str) -> tuple[int, int]:
    """(already staged, to stage) from a build's log."""
    match = re.search(r"(\d+) already staged, (\d+) to stage", stderr)
    return int(match[1]), int(match[2])


def table(db: Path, sql: str, *params) -> list[tuple]:
    """Rows, floats to 6 significant digits: sums in parallel may differ in the last of their 15."""
    with sqlite3.connect(db) as con:
        return [tuple(float(f"{v:.6g}") if isinstance(v, float) else v for v in row)
                for row in con.execute(sql, params).fetchall()]


def test_a_file_is_staged_once_restaged_when_changed_and_dropped_when_gone(demo_dir, tmp_path):
    data, db = copy_tree(demo_dir, tmp_path / "data"), tmp_path / "out" / "liquidations.db"
    cache = db.parent / "cache"
    first = run_build("--data", str(data), "--db", str(db))
    assert first.returncode == 0, first.stderr
    n_files = len(list(data.rglob("*.zip")))
    assert to_stage(first.stderr) == (0, n_files)
    staged = staged_files(cache)
    assert len(staged) == n_files and all("/BTCUSDT/" in name for name in staged)
    outputs = {name: table(db, f"SELECT * FROM {name} ORDER BY 1, 2, 3") for name in ("open_interest", "heatmap_cells")}

    # unchanged: nothing is read again, and the outputs are the same
    answers = "SELECT count(*) FROM sqlite_master WHERE name = 'stored_answers'"
    assert table(db, answers) == [(1,)]
    second = run_build("--data", str(data), "--db", str(db), "--no-stored-answers")
    assert second.returncode == 0 and to_stage(second.stderr) == (n_files, 0)
    assert table(db, answers) == [(0,)]   # (the previous build's, in the copy it started from, dropped: never stale)
    assert staged_files(cache) == staged
    assert {name: table(db, f"SELECT * FROM {name} ORDER BY 1, 2, 3") for name in outputs} == outputs

    # a changed file is staged again, and only it; the build sees its new rows
    metrics = daily_file(data, "metrics", "2024-09-02")
    lines = read_zip_lines(metrics)
    fields = lines[5].split(",")
    fields[2] = str(float(fields[2]) * 1.5)
    lines[5] = ",".join(fields)
    write_zip_lines(metrics, lines)
    changed = run_build("--data", str(data), "--db", str(db), "--no-stored-answers")
    assert changed.returncode == 0 and to_stage(changed.stderr) == (n_files - 1, 1)
    assert "removed 1 staged files from the cache" in changed.stderr   # the earlier bytes' copy
    assert len(staged_files(cache)) == n_files
    assert table(db, "SELECT open_interest FROM open_interest WHERE ts = ?", fields[0].replace(" ", "T") + "Z") \
        == [(float(f"{float(fields[2]):.6g}"),)]

    # a removed file drops out of the build, and its staged copy out of the cache
    remove(daily_file(data, "metrics", "2024-09-03"))
    gone = run_build("--data", str(data), "--db", str(db), "--no-stored-answers")
    assert gone.returncode == 0 and to_stage(gone.stderr) == (n_files - 1, 0)
    assert len(staged_files(cache)) == n_files - 1 and not any("2024-09-03" in name and "metrics" in name
                                                               for name in staged_files(cache))
    assert table(db, "SELECT count(*) FROM open_interest WHERE ts > '2024-09-03T00:00:00Z' AND ts < '2024-09-04'") == [(0,)]
    assert table(db, "SELECT count(*) FROM data_quality_problems WHERE problem = 'missing_day' "
                     "AND data_type = 'metrics'") == [(1,)]


def test_a_deleted_cache_or_parallel_staging_gives_the_same_build(demo_dir, demo_db, tmp_path):
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(demo_dir), "--db", str(db), "--cache", str(tmp_path / "elsewhere"), "--jobs", "1")
    assert result.returncode == 0, result.stderr
    assert not (tmp_path / "cache").exists() and (tmp_path / "elsewhere").is_dir()
    for name in ("open_interest", "heatmap_cells", "backtest_scores", "data_quality_problems", "source_files"):
        assert table(db, f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4") == table(demo_db, f"SELECT * FROM {name} ORDER BY 1, 2, 3, 4")


def test_files_that_overlap_are_deduplicated_and_reported(demo_dir, demo_db, tmp_path):
    """The same day's trades twice (a second copy in another folder): one of each trade is used."""
    data = copy_tree(demo_dir, tmp_path / "data")
    trades = daily_file(data, "aggTrades", "2024-09-02")
    (data / "again").mkdir()
    (data / "again" / trades.name).write_bytes(trades.read_bytes())
    db = tmp_path / "liquidations.db"
    assert run_build("--data", str(data), "--db", str(db)).returncode == 0
    coverage = "SELECT rows FROM data_coverage WHERE data_type = 'aggTrades'"
    assert table(db, coverage) == table(demo_db, coverage)
    overlap = table(db, "SELECT severity, rows_affected FROM data_quality_problems "
                        "WHERE problem = 'overlapping_files' AND data_type = 'aggTrades'")
    assert overlap == [("info", len(read_zip_lines(trades)) - 1)]   # every row of the day, less the header
    openings = "SELECT count(*), round(sum(volume_usd), 2) FROM predicted_liquidations WHERE model = 'trade_flow'"
    assert table(db, openings) == table(demo_db, openings)


def test_staged_parquet_holds_the_valid_rows_once(demo_dir, tmp_path):
    """A repeated key and an invalid row are left out of a file's Parquet and reported with the file."""
    data = copy_tree(demo_dir, tmp_path / "data")
    klines = daily_file(data, "klines", "2024-09-02", interval="1m")
    lines = read_zip_lines(klines)
    bad = lines[3].split(",")
    bad[2], bad[3] = "0", "0"                 # high and low of 0: not a price
    write_zip_lines(klines, lines[:3] + [",".join(bad)] + lines[4:] + [lines[10]])
    info = SourceFile(path=klines, name=klines.name, symbol="BTCUSDT", data_type="klines", kline_interval="1m",
                      period="2024-09-02")
    metrics = daily_file(data, "metrics", "2024-09-02")   # staged in the same batch, from another src_* table
    other = SourceFile(path=metrics, name=metrics.name, symbol="BTCUSDT", data_type="metrics", kline_interval=None,
                       period="2024-09-02")
    assert stage.batches([info, other]) == [[info, other]]
    staged, staged_metrics = stage.stage_files([info, other], tmp_path / "cache", 1, 512, lambda message: None)
    assert staged_metrics.quality == [] and duckdb.sql(f"SELECT count(*) FROM '{staged_metrics.staged_path}'").fetchall()[0][0] \
        == staged_metrics.rows_staged == len(read_zip_lines(metrics)) - 1   # every row but the header
    assert staged.status == "loaded" and staged.rows_read == len(lines)   # every data row, plus the repeat
    problems = {row["problem"]: row["rows_affected"] for row in staged.quality}
    assert problems == {"invalid_price_bar": 1, "duplicate_rows": 1}
    [rows] = duckdb.sql(f"SELECT count(*), count(DISTINCT open_time) FROM '{staged.staged_path}'").fetchall()
    assert rows == (len(lines) - 2, len(lines) - 2)   # less the header and the invalid row, the repeat once


def test_the_order_check_reads_scan_order_and_looks_up_each_break_in_file_order():
    """stage_unordered (sql/staging/files.sql) compares each row with the one scanned before it; where
    scan order leaves file order (a block moved), the row is compared with its predecessor in the file.
    Only files whose keys fall or repeat in file order are marked, however their rows were scanned."""
    con = duckdb.connect()
    con.execute("CREATE TABLE dq_rows (file_id INTEGER, src_rowid BIGINT, order_key BIGINT, symbol VARCHAR, "
                "data_type VARCHAR, kline_interval VARCHAR, row_key UBIGINT, row_hash UBIGINT, ts TIMESTAMP, is_valid BOOLEAN)")
    scans = {1: [(0, 10), (1, 20), (4, 50), (5, 60), (2, 30), (3, 40), (6, 70)],   # rising; a block moved
             2: [(0, 10), (1, 20), (3, 25), (2, 30)],                             # falls at row 3, seen only at a break
             3: [(0, 10), (1, 20), (2, 20)],                                      # repeats, in order
             4: [(0, 10), (1, None)],                                             # a missing key
             5: [(0, 10), (1, 20)]}                                               # rising, in order
    for file_id, rows in scans.items():
        for rowid, key in rows:
            con.execute("INSERT INTO dq_rows VALUES (?, ?, ?, 'X', 'klines', '', hash(?), 0, NULL, true)",
                        [file_id, rowid, key, key])
    statement = (stage.CHECK_SQL.read_text().split("CREATE OR REPLACE TABLE stage_unordered")[1]).split(";")[0]
    con.execute("CREATE TABLE stage_unordered" + statement)
    assert sorted(con.execute("SELECT file_id FROM stage_unordered").fetchall()) == [(2,), (3,), (4,)]


def test_a_zip_vouched_for_by_its_checksum_is_read_as_gzip_and_any_other_is_unzipped_and_crc_checked(demo_dir, tmp_path,
                                                                                                    monkeypatch):
    """With a matching CHECKSUM, DuckDB reads the zip's deflate stream as gzip (DuckDB checks no CRC: the
    sha256 did); without one, zipfile unzips it and checks its CRC, so a damaged byte is never a row."""
    klines = daily_file(demo_dir, "klines", "2024-09-02", interval="1m")
    staged, csv_paths = {}, []
    monkeypatch.setattr(stage, "read_file", lambda *args, read=stage.read_file: csv_paths.append(
        (info := read(*args)).csv_path) or info)
    for case in ("checksum", "no checksum", "damaged"):
        folder = tmp_path / case.replace(" ", "-")
        folder.mkdir()
        path = folder / klines.name
        data = bytearray(klines.read_bytes())
        if case == "checksum":
            path.with_name(path.name + ".CHECKSUM").write_bytes(klines.with_name(klines.name + ".CHECKSUM").read_bytes())
        if case == "damaged":
            data[len(data) // 2] ^= 0x01   # one bit in the middle of the compressed CSV
        path.write_bytes(data)
        info = SourceFile(path=path, name=path.name, symbol="BTCUSDT", data_type="klines", kline_interval="1m",
                          period="2024-09-02")
        [staged[case]] = stage.stage_files([info], folder / "cache", 1, 512, lambda message: None)
    assert [Path(p or "").name.split(".", 1)[-1] for p in csv_paths] == ["csv.gz", "csv", ""]   # (the last not read)
    assert staged["checksum"].checksum == "ok" and staged["no checksum"].checksum == "absent"
    assert duckdb.sql(f"SELECT * FROM '{staged['checksum'].staged_path}' EXCEPT ALL "
                      f"SELECT * FROM '{staged['no checksum'].staged_path}'").fetchall() == []
    assert staged["checksum"].rows_staged == staged["no checksum"].rows_staged == 1440
    assert staged["damaged"].status == "quarantined" and staged["damaged"].problem == "unreadable_zip"
    assert "CRC" in staged["damaged"].detail or "decompress" in staged["damaged"].detail


def test_changed_staging_sql_restages(demo_dir, tmp_path, monkeypatch):
    path = daily_file(demo_dir, "metrics", "2024-09-01")
    info = SourceFile(path=path, name=path.name, symbol="BTCUSDT", data_type="metrics", kline_interval=None, period="2024-09-01")
    messages: list[str] = []
    stage.stage_files([replace(info)], tmp_path, 1, 512, messages.append)
    monkeypatch.setattr(stage, "version", lambda: "0123456789ab")
    stage.stage_files([replace(info)], tmp_path, 1, 512, messages.append)
    assert any("removed the cache of older staging SQL" in m for m in messages)
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == ["0123456789ab"]


def test_trade_flow_reads_every_trade_only_for_its_portion_filter(demo_dir, tmp_path):
    """With the "portion" filter on, trade_flow ranks all trades per side and hour (a full scan of them);
    off, it reads only the large ones. Both from the staged Parquet."""
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(demo_dir), "--db", str(db), "--param", "trade_flow_min_notional_usd=0",
                       "--param", "trade_flow_portion=0.01")
    assert result.returncode == 0, result.stderr
    con = duckdb.connect(str(db.with_suffix(".duckdb")), read_only=True)
    [(opened, expected)] = con.execute("""
        SELECT (SELECT sum(volume_usd) FROM openings_trade_flow WHERE signal <> 0),
               (SELECT sum(notional_usd) FROM (
                    SELECT notional_usd, row_number() OVER w AS rank, count(*) OVER (PARTITION BY taker_side, hour) AS n
                    FROM (SELECT *, time_bucket(INTERVAL 1 HOUR, ts) AS hour FROM stg_trades)
                    WINDOW w AS (PARTITION BY taker_side, hour ORDER BY notional_usd DESC, ts))
                WHERE rank <= ceil(0.01 * n))""").fetchall()
    total = con.execute("SELECT sum(notional_usd) FROM stg_trades").fetchone()[0]
    assert opened == pytest.approx(expected) and expected < 0.5 * total   # the top 1 % of trades by value
