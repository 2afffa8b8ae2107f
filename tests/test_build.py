"""build.py build: Binance files in, DuckDB and SQLite out, every problem reported."""

import datetime as dt
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest
import yaml
from conftest import DAYS, ROOT, START, daily_file, read_zip_lines, run_build, simulated, write_zip_lines

import build
from liquidation_heatmap import cli, export, files, pipeline, serve, simulate
from liquidation_heatmap.source_file import SourceFile


def rows(db: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql, params).fetchall()


def test_parse_file_name_reads_binance_names():
    vision = Path("data/futures/um/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-2024-09-01.zip")
    assert files.parse_file_name(vision) == SourceFile(
        path=vision, symbol="BTCUSDT", data_type="markPriceKlines", kline_interval="1m", period="2024-09-01")
    assert files.parse_file_name(Path("flat/ETHUSDT-1h-2024-09.csv")).data_type == "klines"
    assert files.parse_file_name(Path("x/BTCUSDT-metrics-2024-09-01.zip")).data_type == "metrics"
    assert files.parse_file_name(Path("x/BTCUSDT-fundingRate-2024-09.zip")).period == "2024-09"
    assert files.parse_file_name(Path("x/BTCUSDT-metrics-2024-09-01.zip.CHECKSUM")) is None
    assert files.parse_file_name(Path("x/BTCUSDT-bookDepth-2024-09-01.zip")) is None
    assert files.parse_file_name(Path("x/notes.csv")) is None


def test_demo_build_exports_every_described_table(demo_db):
    metadata = yaml.safe_load((ROOT / "metadata.yml").read_text())
    tables = metadata["databases"]["liquidations"]["tables"]
    with sqlite3.connect(demo_db) as con:
        present = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        assert set(tables) <= present
        for table, meta in tables.items():
            columns = [c[1] for c in con.execute(f"PRAGMA table_info([{table}])")]
            assert columns == list(meta["columns"]), f"{table}: every column described, in order"
            assert all(str(text).strip() for text in meta["columns"].values())
            assert meta["description"]
        # the heatmap is stored under its key (WITHOUT ROWID): one cell per model, symbol, time and bucket
        keyed = [c[1] for c in sorted(con.execute("PRAGMA table_info(heatmap_cells)"), key=lambda c: c[5]) if c[5]]
        assert keyed == export.output_tables(export.load_metadata())["heatmap_cells"]["key"] == ["model", "symbol", "ts", "price_bucket"]
        assert "WITHOUT ROWID" in con.execute("SELECT sql FROM sqlite_master WHERE name = 'heatmap_cells'").fetchone()[0]
        assert not con.execute("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'heatmap_cells' "
                               "AND sql IS NOT NULL").fetchall()   # the key is the table: no index beside it


def test_demo_build_has_the_simulated_series(demo_db):
    coverage = {(t, i): (n, f, used) for t, i, n, f, used in rows(
        demo_db, "SELECT data_type, kline_interval, rows, files, used_by_models FROM data_coverage")}
    assert coverage[("metrics", None)][:2] == (DAYS * 288 + 1, DAYS)  # day-boundary duplicates removed
    assert coverage[("klines", "1m")][:2] == (DAYS * 1440, DAYS)
    assert coverage[("markPriceKlines", "1m")][:2] == (DAYS * 1440, DAYS)
    assert coverage[("fundingRate", None)][0] == DAYS * 3
    assert coverage[("aggTrades", None)][0] > 0 and coverage[("liquidationSnapshot", None)][0] > 0
    assert all(used for _, _, used in coverage.values())
    # times are ISO-8601 UTC text, the 5-minute cadence is found
    assert rows(demo_db, "SELECT min(ts), max(ts) FROM open_interest")[0] == (
        "2024-09-01T00:00:00Z", "2024-09-05T00:00:00Z")
    assert rows(demo_db, "SELECT cadence_s FROM data_coverage WHERE data_type = 'metrics'") == [(300,)]
    # a clean simulated download has only the expected overlapping-files quirk
    assert rows(demo_db, "SELECT DISTINCT problem, severity FROM data_quality_problems") == [("overlapping_files", "info")]


def test_duckdb_file_keeps_macros_views_and_descriptions(demo_db):
    con = duckdb.connect(str(demo_db.with_suffix(".duckdb")), read_only=True)
    assert con.execute("SELECT count(*) FROM stg_open_interest").fetchone()[0] == DAYS * 288 + 1
    assert con.execute("SELECT ts_from_epoch(1725148800000), ts_from_epoch(1725148800000000)").fetchone()[0] \
        == con.execute("SELECT TIMESTAMP '2024-09-01 00:00:00'").fetchone()[0]
    comment = con.execute("SELECT comment FROM duckdb_views() WHERE view_name = 'data_quality_problems'").fetchone()[0]
    assert "problem" in comment


def problems(db: Path) -> dict[str, list[tuple]]:
    found: dict[str, list[tuple]] = {}
    for problem, file, line, detail, n, first_ts in rows(
            db, "SELECT problem, file, line, detail, rows_affected, first_ts FROM data_quality_problems"):
        found.setdefault(problem, []).append((file, line, detail, n, first_ts))
    return found


def test_every_injected_problem_is_reported(broken_db):
    found = problems(broken_db)
    missing = [d for d in found["missing_day"] if "metrics" in d[2]]
    assert [d[4] for d in missing] == ["2024-09-03T00:00:00Z"]
    assert "BTCUSDT-metrics-2024-09-03.zip" in missing[0][2]
    gaps = {(d[4], d[3]) for d in found["gap"]}
    assert ("2024-09-02T12:55:00Z", 12) in gaps  # the twelve rows 13:00 .. 13:55
    zero = found["non_positive_open_interest"]
    assert zero[0][0].endswith("BTCUSDT-metrics-2024-09-01.zip") and zero[0][3] == 2
    duplicate = found["duplicate_rows"]
    assert duplicate[0][0].endswith("BTCUSDT-1m-2024-09-02.zip") and duplicate[0][3] == 1
    unparseable = found["unparseable_rows"]
    assert unparseable[0][0].endswith("BTCUSDT-1m-2024-09-02.zip")
    assert unparseable[0][1] == 52  # header, 49 rows, the duplicate, then the bad line
    assert "not-a-price" in unparseable[0][2]
    bad = found["checksum_mismatch"]
    assert bad[0][0].endswith("BTCUSDT-aggTrades-2024-09-04.zip")
    # an outlier is reported where it jumps and where it comes back (the neighbours differ a little)

    def jumps(problem: str, what: str) -> list[float]:
        return sorted(float(re.match(f"{what} changed by (-?[\\d.]+)% in one step", d[2])[1]) for d in found[problem])
    assert jumps("open_interest_outlier", "open interest") == pytest.approx([-33.3, 50.0], abs=1)
    assert jumps("price_outlier", "close price") == pytest.approx([-16.7, 20.0], abs=1)


def test_quarantined_files_are_not_ingested(broken_db):
    status = rows(broken_db, "SELECT status, problem, rows_read FROM source_files WHERE file LIKE '%aggTrades-2024-09-04%'")
    assert status == [("quarantined", "checksum_mismatch", 0)]
    days = rows(broken_db, "SELECT count(*) FROM data_coverage WHERE data_type = 'aggTrades' AND last_ts < '2024-09-04'")
    assert days == [(1,)]


def test_header_or_no_header_gives_the_same_rows(broken_db, demo_db):
    query = "SELECT ts, open, high, low, close, volume FROM price_klines WHERE ts LIKE '2024-09-03%' ORDER BY ts"
    assert rows(broken_db, query) == rows(demo_db, query)
    assert rows(broken_db, "SELECT has_header FROM source_files WHERE data_type = 'klines' AND period = '2024-09-03'") == [(0,)]


def test_invalid_rows_are_left_out_of_staging(broken_db):
    assert rows(broken_db, "SELECT count(*) FROM open_interest WHERE open_interest <= 0") == [(0,)]


def test_flat_folder_microseconds_and_symbol_filter(demo_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    for path in demo_dir.rglob("*-2024-09-0[12].zip"):
        if "markPriceKlines" not in path.parts:  # same name as the klines: only a folder tells them apart
            shutil.copy(path, flat / path.name)
    # spot-style microsecond timestamps (Binance switched spot files in 2025) in one klines file
    path = flat / "BTCUSDT-1m-2024-09-02.zip"
    lines = read_zip_lines(path)
    fixed = [lines[0]] + [",".join([f[0] + "000", *f[1:6], f[6] + "000", *f[7:]])
                          for f in (line.split(",") for line in lines[1:])]
    write_zip_lines(path, fixed, checksum=False)
    (flat / "ETHUSDT-metrics-2024-09-01.csv").write_text(read_zip_lines(flat / "BTCUSDT-metrics-2024-09-01.zip")[0])
    db = tmp_path / "flat.db"
    result = run_build("--data", str(flat), "--db", str(db), "--symbol", "BTCUSDT", "--start", "2024-09-02",
                       "--end", "2024-09-02", "--memory-limit", "700MB")
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT value FROM build_info WHERE key = 'memory_limit'") == [("667.5 MiB",)]  # 700 MB
    assert rows(db, "SELECT min(ts), max(ts), count(*) FROM price_klines") == [
        ("2024-09-02T00:00:00Z", "2024-09-02T23:59:00Z", 1440)]
    assert rows(db, "SELECT DISTINCT symbol FROM data_coverage") == [("BTCUSDT",)]
    assert rows(db, "SELECT checksum FROM source_files WHERE file = 'BTCUSDT-1m-2024-09-02.zip'") == [("absent",)]


def test_coarser_intervals_are_accepted_and_the_finest_used(demo_dir, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    one_minute = read_zip_lines(daily_file(data, "klines", "2024-09-01", interval="1m"))
    hourly = daily_file(data, "klines", "2024-09-01", interval="1h")
    hourly.parent.mkdir(parents=True)
    # (an hour's bar closes 3,599,999 ms after it opens: a 1m bar in a 1h file would be an interval_mismatch)
    bars = [line.split(",") for line in one_minute[1::60]]
    write_zip_lines(hourly, one_minute[:1] + [",".join([*f[:6], str(int(f[0]) + 3_599_999), *f[7:]]) for f in bars])
    db = tmp_path / "x.db"
    assert run_build("--data", str(data), "--db", str(db)).returncode == 0
    assert rows(db, "SELECT kline_interval, used_by_models, cadence_s FROM data_coverage WHERE data_type = 'klines' "
                    "ORDER BY 1") == [("1h", 0, 3600), ("1m", 1, 60)]
    assert rows(db, "SELECT DISTINCT kline_interval FROM price_klines") == [("1m",)]


def test_bad_input_exits_non_zero_and_keeps_the_previous_database(demo_dir, demo_db, tmp_path):
    db = tmp_path / "liquidations.db"
    shutil.copy(demo_db, db)
    before = db.read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_build("--data", str(empty), "--db", str(db))
    assert result.returncode == 2 and "no Binance futures files" in result.stderr and str(empty) in result.stderr
    assert run_build("--data", str(tmp_path / "nope"), "--db", str(db)).returncode == 2
    # every file unreadable: the build fails after starting, and the old database is untouched
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "BTCUSDT-metrics-2024-09-01.zip").write_bytes(b"not a zip")
    result = run_build("--data", str(junk), "--db", str(db))
    assert result.returncode == 2 and "BTCUSDT-metrics-2024-09-01.zip" in result.stderr
    assert db.read_bytes() == before
    result = run_build("--data", str(empty.parent / "junk"), "--db", str(db), "--memory-limit", "lots")
    assert result.returncode == 2 and "--memory-limit 'lots'" in result.stderr and db.read_bytes() == before
    result = run_build("--data", str(demo_dir), "--db", str(db), "--start", "2024-09-20", "--end", "2024-09-10")
    assert result.returncode == 2 and "--end 2024-09-10 is before --start 2024-09-20" in result.stderr
    assert db.read_bytes() == before
    # nothing left behind but the staging cache (which remembers the junk file as quarantined)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "empty", "junk", "liquidations.db"]


def test_a_failing_export_keeps_the_previous_database(demo_dir, demo_db, tmp_path, monkeypatch):
    db = tmp_path / "liquidations.db"
    shutil.copy(demo_db, db)
    before = db.read_bytes()

    def broken_index(*args, **kwargs):
        raise RuntimeError("disk full")
    monkeypatch.setattr(export.sqlite_utils.db.Table, "create_index", broken_index)
    with pytest.raises(RuntimeError):
        build.main(["build", "--data", str(demo_dir), "--db", str(db)])
    assert db.read_bytes() == before
    assert not list(tmp_path.glob("*.tmp*"))   # nor the DuckDB file's write-ahead log


def test_the_export_can_spill_to_disk(demo_dir, tmp_path, monkeypatch):
    """The export's queries run while DuckDB's spill folder can be made (DuckDB makes it when it first
    spills): at a year of data, sorting the heatmap's 24 M cells for the SQLite file spilled, and the
    build failed, its temporary folder already removed."""
    real_export, seen = export.export_sqlite, []

    def export_and_look(con, *args, **kwargs):
        seen.append(Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0]).parent.is_dir())
        return real_export(con, *args, **kwargs)
    monkeypatch.setattr(pipeline, "export_sqlite", export_and_look)
    assert build.main(["build", "--data", str(demo_dir), "--db", str(tmp_path / "liquidations.db"), "--end",
                       START]) == 0
    assert seen == [True]


def test_metadata_and_sql_must_agree(demo_dir, tmp_path, monkeypatch):
    metadata = export.load_metadata()
    metadata["databases"]["liquidations"]["tables"]["data_coverage"]["columns"]["no_such_column"] = "x"
    monkeypatch.setattr(pipeline, "load_metadata", lambda: metadata)
    assert build.main(["build", "--data", str(demo_dir), "--db", str(tmp_path / "x.db")]) == 2


def test_real_binance_trades_parse(tmp_path):
    """A real Binance trades file (tests/samples, MIT): parsed, typed and counted like the simulator's."""
    data = tmp_path / "real"
    data.mkdir()
    shutil.copy(ROOT / "tests/samples/BTCUSDT-trades-2024-08-08.csv", data)
    db = tmp_path / "real.db"
    result = run_build("--data", str(data), "--db", str(db))
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT data_type, rows, first_ts, last_ts FROM data_coverage") == [
        ("trades", 2000, "2024-08-08T23:54:16Z", "2024-08-08T23:55:05Z")]
    assert rows(db, "SELECT value FROM build_info WHERE key = 'input_data'") == [("Binance files",)]
    lines = (ROOT / "tests/samples/BTCUSDT-trades-2024-08-08.csv").read_text().splitlines()[1:]
    quote_usd = round(sum(float(line.split(",")[3]) for line in lines), 4)
    taker_buys = sum(line.endswith("false") for line in lines)  # the buyer was not the maker
    con = duckdb.connect(str(db.with_suffix(".duckdb")), read_only=True)
    assert con.execute("SELECT round(sum(notional_usd), 4), count(*) FILTER (taker_side = 'buy') FROM stg_trades"
                       ).fetchone() == (quote_usd, taker_buys)


def test_several_symbols_build_at_once(demo_dir, tmp_path):
    data = tmp_path / "two"
    shutil.copytree(demo_dir, data)
    simulated(data, days=2, seed=3, symbol="ETHUSDT", start=START, trades_per_day=1000)
    db = tmp_path / "two.db"
    assert run_build("--data", str(data), "--db", str(db)).returncode == 0
    assert rows(db, "SELECT DISTINCT symbol FROM data_coverage ORDER BY 1") == [("BTCUSDT",), ("ETHUSDT",)]
    assert rows(db, "SELECT symbol, count(DISTINCT model) FROM heatmap_cells GROUP BY 1 ORDER BY 1") == [
        ("BTCUSDT", 5), ("ETHUSDT", 5)]
    # each symbol's series stands alone: ETHUSDT's two days, BTCUSDT's four, no gap between them
    assert rows(db, "SELECT symbol, max(ts) FROM price_klines GROUP BY 1 ORDER BY 1") == [
        ("BTCUSDT", "2024-09-04T23:59:00Z"), ("ETHUSDT", "2024-09-02T23:59:00Z")]
    assert rows(db, "SELECT count(*) FROM data_quality_problems WHERE problem IN ('gap', 'missing_day')") == [(0,)]


def test_no_arguments_on_a_fresh_clone_simulates_then_builds(tmp_path, monkeypatch, capsys):
    """`python build.py`: demo data when data/raw holds no Binance files, then the build, into the demo's own
    folder and database; again, no new demo; `serve` and `report` then find the demo's database."""
    for name, path in (("DATA_DIR", tmp_path / "raw"), ("DEFAULT_DB", tmp_path / "liquidations.db"),
                       ("DEMO_DIR", tmp_path / "demo")):
        for module in (cli, files, serve):   # (each module that names the folder)
            if hasattr(module, name):
                monkeypatch.setattr(module, name, path)
    real = simulate.simulate
    calls = []

    def two_days(out, **kwargs):  # the real simulator, shortened: 30 days take too long for a test
        calls.append(out)
        return real(out, **{**kwargs, "days": 2, "trades_per_day": 1000})
    monkeypatch.setattr(simulate, "simulate", two_days)
    assert build.main([]) == 0
    assert calls == [tmp_path / "demo" / "raw"]
    assert "python build.py serve" in capsys.readouterr().out
    demo_db = tmp_path / "demo" / "liquidations.db"
    assert rows(demo_db, "SELECT count(DISTINCT symbol) FROM data_coverage") == [(1,)]
    assert rows(demo_db, "SELECT value FROM build_info WHERE key = 'input_data'") == [("simulated: build.py demo",)]
    assert not (tmp_path / "liquidations.db").exists() and not (tmp_path / "raw").exists()
    assert serve.built_db(None) == demo_db
    assert build.main([]) == 0 and len(calls) == 1  # data is there now: build only


def test_help_names_every_default_and_serve_listens_on_loopback_unless_told(demo_db):
    helps = {command: run_build("--help", command=command) for command in ("demo", "build", "fetch", "report", "serve")}
    assert all(result.returncode == 0 for result in helps.values())
    assert "(default: 30)" in helps["demo"].stdout and "(default: 1h,4h,24h)" in helps["build"].stdout
    assert "(default: 4)" in helps["fetch"].stdout and "(default: 101,102,103)" in helps["report"].stdout
    assert "(default: None)" not in "".join(result.stdout for result in helps.values())
    served = run_build("--help", command="serve").stdout
    assert "--host HOST" in served and "(default: 127.0.0.1)" in served and "(default: 8001)" in served
    command = serve.serve_command(demo_db, 8001)
    assert command[command.index("--host") + 1] == "127.0.0.1" and "-i" in command   # immutable: read only
    assert serve.serve_command(demo_db, 8001, "0.0.0.0")[command.index("--host") + 1] == "0.0.0.0"


@pytest.mark.parametrize("data_type, interval, line, column, value, problem", [
    # (klines' nan close and metrics' -inf are among tests/test_bad_inputs.py's cases)
    ("aggTrades", None, 50, 1, "inf", "non_positive_trade"),    # the price
    ("aggTrades", None, 60, 2, "NaN", "non_positive_trade"),    # the quantity
])
def test_numbers_that_are_not_finite_are_left_out_and_reported(demo_dir, tmp_path, data_type, interval, line,
                                                                column, value, problem):
    """DuckDB reads nan and inf as numbers (and orders NaN above every number: nan > 0), so without a check
    they passed as valid rows: one NaN close made every level's price NaN downstream."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data)
    day = str(dt.date.fromisoformat(START) + dt.timedelta(days=1))
    path = daily_file(data, data_type, day, interval=interval)
    lines = read_zip_lines(path)
    fields = lines[line].split(",")
    fields[column] = value
    write_zip_lines(path, lines[:line] + [",".join(fields)] + lines[line + 1:])
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(data), "--db", str(db))
    assert result.returncode == 0, result.stderr
    reported = [r for r in problems(db).get(problem, []) if r[0].endswith(path.name)]
    assert len(reported) == 1 and reported[0][3] == 1 and "not finite" in reported[0][2], problems(db).get(problem)
    with duckdb.connect(str(db.with_suffix(".duckdb")), read_only=True) as con:
        bad = con.execute("""SELECT (SELECT count(*) FROM stg_klines_all WHERE NOT isfinite(open + high + low + close))
                                  + (SELECT count(*) FROM stg_trades WHERE NOT isfinite(price * quantity))
                                  + (SELECT count(*) FROM stg_open_interest
                                     WHERE NOT isfinite(open_interest + open_interest_usd))""").fetchone()[0]
    assert bad == 0


def test_the_installed_command_runs_build_py_from_anywhere(tmp_path):
    """`pip install -e .` installs `liquidation-heatmap`, the same commands as `python build.py`."""
    command = Path(sys.executable).with_name("liquidation-heatmap")
    assert command.exists(), "pip install -e . makes it: [project.scripts] in pyproject.toml"
    helped = subprocess.run([str(command), "build", "--help"], cwd=tmp_path, capture_output=True, text=True, check=False)
    assert helped.returncode == 0 and "usage: liquidation-heatmap build" in helped.stdout
    failed = subprocess.run([str(command), "build", "--data", "nope"], cwd=tmp_path, capture_output=True, text=True,
                            check=False)
    assert failed.returncode == 2 and "data folder nope does not exist" in failed.stderr
