"""Bad input of every kind a user meets, and what they see: a row of data_quality naming the file (and the
line, where there is one), or an error naming the argument or the file, exit status 2 and the previous
database untouched. Never a crash, never a silent change. docs/data-quality.md's "Bad input" table lists these cases.

The file-level and row-level cases are injected together into one copy of the demo files and built once
(each into its own file, so each report is told apart); the argument-level cases each run a build."""

import datetime as dt
import hashlib
import re
import shutil
import sqlite3
from pathlib import Path

import duckdb
import pytest
from conftest import ROOT, START, daily_file, read_zip_lines, remove, run_build, write_zip_lines

DAY = [str(dt.date.fromisoformat(START) + dt.timedelta(days=i)) for i in range(4)]
MONTHLY = Path("data/futures/um/monthly/fundingRate/BTCUSDT")


def edit(path: Path, index: int, column: int, value: str, count: int = 1) -> None:
    """Set one field of lines[index] (the file's line index + 1), and of the count - 1 lines after it."""
    lines = read_zip_lines(path)
    for i in range(index, index + count):
        fields = lines[i].split(",")
        fields[column] = value(fields) if callable(value) else value
        lines[i] = ",".join(fields)
    write_zip_lines(path, lines)


# name: (what the input is, what the user sees, problem reported, file it names, line, the detail (a regex))
IN_DATA = {
    "checksum mismatch": ("a zip whose sha256 differs from its .CHECKSUM", "file quarantined (error), not read",
                          "checksum_mismatch", f"BTCUSDT-aggTrades-{DAY[3]}.zip", None, "differs from"),
    "damaged zip": ("a truncated zip without a .CHECKSUM", "file quarantined (error), not read",
                    "unreadable_zip", f"BTCUSDT-liquidationSnapshot-{DAY[3]}.zip", None, "liquidationSnapshot"),
    "empty file": ("a Binance-named file with no bytes", "file quarantined (error)",
                   "empty_file", "BTCUSDT-metrics-2024-08-31.csv", None, "holds no rows"),
    "wrong columns": ("a header with other columns than the type has", "file quarantined (error), both counts named",
                      "unexpected_columns", "BTCUSDT-fundingRate-2024-08.csv", None, "has 3"),
    "unparseable row": ("text in a number field", "row left out (error), with its line and text",
                        "unparseable_rows", f"BTCUSDT-1m-{DAY[1]}.zip", 52, "not-a-price"),
    "extra field": ("a row with one field too many", "row left out (error), with its line",
                    "unparseable_rows", f"BTCUSDT-aggTrades-{DAY[1]}.zip", 31, "1 rows could not be read"),
    "zero open interest": ("sum_open_interest 0", "row left out (warning), with its line",
                           "non_positive_open_interest", f"BTCUSDT-metrics-{DAY[0]}.zip", 101, "1 rows"),
    "high below low": ("a bar whose high is under its low", "row left out (warning), with its line",
                       "invalid_price_bar", f"BTCUSDT-1m-{DAY[0]}.zip", 301, "inconsistent"),
    "absurd high": ("a bar whose high is 1e12 (a misplaced digit)", "row left out (warning), with its line; the build does not blow up",
                    "invalid_price_bar",
                    f"markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-{DAY[3]}.zip", 501, "inconsistent"),
    "absurd trade price": ("a trade at 1e12", "row left out (warning), with its line and the day's median",
                           "trade_price_outlier", f"BTCUSDT-aggTrades-{DAY[2]}.zip", 81, "median price"),
    "zero quantity": ("a trade of quantity 0", "row left out (warning), with its line",
                      "non_positive_trade", f"BTCUSDT-aggTrades-{DAY[0]}.zip", 51, "1 rows"),
    "missing time": ("a trade with an empty time field", "row left out (warning), with its line",
                     "non_positive_trade", f"BTCUSDT-aggTrades-{DAY[1]}.zip", 71, "missing"),
    "absurd funding rate": ("a funding rate of 50 %", "row left out (warning), with its line",
                            "invalid_funding_rate", "BTCUSDT-fundingRate-2024-09.zip", 3, "1 rows"),
    "nan price": ("a close of nan", "row left out (warning), with its line", "invalid_price_bar",
                  f"BTCUSDT-1m-{DAY[2]}.zip", 101, "not finite"),
    "infinite open interest": ("sum_open_interest_value of -inf", "row left out (warning), with its line",
                               "non_positive_open_interest", f"BTCUSDT-metrics-{DAY[1]}.zip", 12, "not finite"),
    "row from another day": ("a bar dated 2100-01-01 in a file named for a day of 2024",
                             "row left out (error), with its line and time; the time grid is not stretched",
                             "outside_file_period", f"BTCUSDT-1m-{DAY[3]}.zip", 201, "2100-01-01"),
    "another symbol's rows": ("metrics rows saying ETHUSDT in a BTCUSDT file", "rows left out (error), with the first line",
                              "symbol_mismatch", f"BTCUSDT-metrics-{DAY[2]}.zip", 6, "3 rows for ETHUSDT"),
    "another interval's bars": ("5-minute bars in a file named 1m", "rows left out (error), with the first line",
                                "interval_mismatch", f"markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-{DAY[1]}.zip", 11,
                                "10 bars 300000 ms long"),
    "repeated row": ("the same bar twice in a file", "one kept (warning)",
                     "duplicate_rows", f"BTCUSDT-1m-{DAY[1]}.zip", None, "1 rows appear more than once"),
    "unzipped copy": ("X.csv beside X.zip, the same bytes", "the csv is skipped (info)",
                      "unzipped_copy", f"BTCUSDT-metrics-{DAY[3]}.csv", None, "holds the same CSV"),
    "csv differs from zip": ("X.csv beside X.zip, one value changed", "the csv is skipped (warning): the zip is read",
                             "csv_differs_from_zip", f"markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-{DAY[0]}.csv", None,
                             "differs"),
    "conflicting copies": ("one day's trades in two folders, one price changed",
                           "the first file's row is used (warning), and the file named",
                           "conflicting_duplicates", f"daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{DAY[2]}.zip", None,
                           "1 keys appear with different values"),
    "missing day": ("a day's file absent", "a warning naming the file expected",
                    "missing_day", None, None, f"BTCUSDT-1m-{DAY[2]}.zip"),
    "gap": ("an hour of rows absent in a day", "a warning with the gap's times",
            "gap", f"BTCUSDT-metrics-{DAY[1]}.zip", None, "a gap of 65 min"),
    "price spike": ("a close 20 % up for one bar", "a warning (kept in the models)",
                    "price_outlier", None, None, r"close price changed by (19|20|21)\.\d%"),
    "open interest jump": ("open interest 50 % up for one row", "a warning (kept in the models)",
                           "open_interest_outlier", None, None, r"open interest changed by (49|50|51)\.\d%"),
    "other symbols": ("a forceOrder recording holding other symbols", "their rows left out (info), counted",
                      "other_symbols", "forceOrder-recording.csv", None, "2 rows of 1 symbols"),
    "bad liquidation side": ("a liquidation with side X", "row left out (warning), with its line",
                             "invalid_liquidation", f"BTCUSDT-liquidationSnapshot-{DAY[0]}.zip", 6, "1 rows"),
    "cut last line": ("a forceOrder recording whose last line a killed recorder cut short (`2024-09-03T10:0`)",
                      "that line left out (error), with its line; the file's other rows are kept",
                      "unparseable_rows", "forceOrder-cut.csv", 4, "2024-09-03T10:0"),
    "cut last value": ("a forceOrder recording whose last line, without its line end, ends in a usd_value cut short",
                       "that line left out (error), with its line; the file's other rows are kept",
                       "unparseable_rows", "forceOrder-cut-value.csv", 3, "cut short"),
    "binary garbage": ("bytes that are not a CSV in a Binance-named file", "file quarantined (error)",
                       "unexpected_columns", f"BTCUSDT-trades-{DAY[0]}.csv", None, "header has"),
}


@pytest.fixture(scope="module")
def messy(demo_dir, tmp_path_factory) -> tuple[Path, Path, str]:
    """The demo's files with every IN_DATA case injected, built: (data folder, database, the build's stderr)."""
    root = shutil.copytree(demo_dir, tmp_path_factory.mktemp("messy") / "data")
    klines = [daily_file(root, "klines", day, interval="1m") for day in DAY]
    mark = [daily_file(root, "markPriceKlines", day, interval="1m") for day in DAY]
    metrics = [daily_file(root, "metrics", day) for day in DAY]
    trades = [daily_file(root, "aggTrades", day) for day in DAY]
    snapshots = [daily_file(root, "liquidationSnapshot", day) for day in DAY]
    funding = root / MONTHLY / "BTCUSDT-fundingRate-2024-09.zip"
    # files
    trades[3].with_name(trades[3].name + ".CHECKSUM").write_text("0" * 64 + f"  {trades[3].name}\n")
    half = snapshots[3].read_bytes()
    remove(snapshots[3])
    snapshots[3].write_bytes(half[:len(half) // 2])
    metrics[0].with_name("BTCUSDT-metrics-2024-08-31.csv").write_text("")
    (root / MONTHLY / "BTCUSDT-fundingRate-2024-08.csv").write_text("calc_time,rate\n1725148800000,0.0001\n")
    (root / "data/futures/um/daily/trades/BTCUSDT").mkdir(parents=True)
    (root / f"data/futures/um/daily/trades/BTCUSDT/BTCUSDT-trades-{DAY[0]}.csv").write_bytes(b"\x00\xff\xfe\x01,\x02\n\x03")
    # rows
    lines = read_zip_lines(klines[1])
    write_zip_lines(klines[1], lines[:50] + [lines[49], "1725235200000,not-a-price,1,1,1,1,1,1,1,1,1,0"] + lines[50:])
    edit(trades[1], 30, 6, lambda f: f[6] + ",1")
    edit(metrics[0], 100, 2, "0")
    edit(klines[0], 300, 2, lambda f: f"{float(f[3]) * 0.9:.1f}")
    edit(mark[3], 500, 2, "1000000000000")
    edit(trades[0], 50, 2, "0")
    edit(trades[2], 80, 1, "1000000000000")
    edit(trades[1], 70, 5, "")
    edit(funding, 2, 2, "0.5")
    edit(klines[2], 100, 4, "nan")
    edit(metrics[1], 11, 3, "-inf")
    edit(klines[3], 200, 0, "4102444800000")
    edit(klines[3], 200, 6, "4102444859999")
    edit(metrics[2], 5, 1, "ETHUSDT", count=3)
    edit(mark[1], 10, 6, lambda f: str(int(f[0]) + 299_999), count=10)
    edit(snapshots[0], 5, 1, "X")
    # copies
    metrics[3].with_suffix(".csv").write_text("\n".join(read_zip_lines(metrics[3])) + "\n")
    changed = read_zip_lines(mark[0])
    changed[5] = changed[5].replace(",", ",1", 1)
    mark[0].with_suffix(".csv").write_text("\n".join(changed) + "\n")
    copy = read_zip_lines(trades[2])
    fields = copy[10].split(",")
    fields[1] = f"{float(fields[1]) + 1:.1f}"
    copy[10] = ",".join(fields)
    (root / "extra").mkdir()
    (root / "extra" / trades[2].with_suffix(".csv").name).write_text("\n".join(copy) + "\n")
    # series
    remove(mark[2])
    write_zip_lines(metrics[1], [line for line in read_zip_lines(metrics[1]) if " 13:" not in line])
    edit(klines[0], 600, 4, lambda f: f"{float(f[4]) * 1.2:.1f}")
    edit(klines[0], 600, 2, lambda f: f[4])
    edit(metrics[0], 200, 2, lambda f: str(float(f[2]) * 1.5))
    (root / "liquidations").mkdir()
    (root / "liquidations" / "forceOrder-recording.csv").write_text(
        "timestamp,symbol,side,avg_price,filled_qty,usd_value\n"
        f"{DAY[1]}T10:00:00,ETHUSDT,SELL,2500,1,2500\n{DAY[1]}T10:01:00,ETHUSDT,BUY,2501,2,5002\n"
        f"{DAY[1]}T10:02:00,BTCUSDT,SELL,58000,0.1,5800\n")
    # recordings a recorder killed mid-write left: the last line cut, without its line end
    (root / "liquidations" / "forceOrder-cut.csv").write_text(
        "timestamp,symbol,side,avg_price,filled_qty,usd_value\n"
        f"{DAY[2]}T10:00:00,BTCUSDT,SELL,57000,0.2,11400\n{DAY[2]}T10:01:00,BTCUSDT,BUY,57100,0.1,5710\n{DAY[2]}T10:0")
    (root / "liquidations" / "forceOrder-cut-value.csv").write_text(
        "timestamp,symbol,side,avg_price,filled_qty,usd_value\n"
        f"{DAY[2]}T11:00:00,BTCUSDT,SELL,57200,0.5,28600\n{DAY[2]}T11:01:00,BTCUSDT,SELL,57300,0.3,171")
    db = root.parent / "liquidations.db"
    result = run_build("--data", str(root), "--db", str(db))
    assert result.returncode == 0, result.stderr
    return root, db, result.stderr


def test_every_case_is_in_the_docs_table():
    table = re.search(r"<!-- bad inputs: tests/test_bad_inputs.py -->\n(.*?)<!-- end of bad inputs -->",
                      (ROOT / "docs" / "data-quality.md").read_text(), re.DOTALL)[1]
    named = [line.split("|")[1].strip() for line in table.splitlines()[2:] if line.startswith("|")]
    assert named == [*IN_DATA, *ARGUMENTS, *OTHER_COMMANDS] and len(named) >= 25


@pytest.mark.parametrize("case", IN_DATA)
def test_bad_data_is_reported_with_its_file_and_line(messy, case):
    _, db, _ = messy
    _, _, problem, file, line, detail = IN_DATA[case]
    with sqlite3.connect(db) as con:
        found = con.execute("SELECT file, line, detail FROM data_quality_problems WHERE problem = ?", [problem]).fetchall()
    match = [row for row in found if (file is None or (row[0] or "").endswith(file)) and re.search(detail, row[2])]
    assert len(match) == 1, found
    assert match[0][1] == line, match


def test_nothing_bad_reaches_the_models(messy):
    """No row the cases made is left in the staged series: the year 2100, nan, ETHUSDT, the 5-minute bars,
    the changed copy's price; and the time grid spans the files' four days."""
    _, db, stderr = messy
    with duckdb.connect(str(db.with_suffix(".duckdb")), read_only=True) as con:
        one = lambda sql: con.execute(sql).fetchone()
        assert one("SELECT max(ts) < DATE '2024-09-05', count(*) FILTER (NOT isfinite(close)) FROM stg_klines_all") == (
            True, 0)
        assert one("SELECT count(*) FROM time_grid WHERE end_ts > DATE '2024-09-05'") == (0,)
        assert one("SELECT count(*) FROM stg_open_interest WHERE NOT isfinite(open_interest_usd)") == (0,)
        assert one("SELECT count(*) FROM stg_mark_price_klines WHERE ts BETWEEN TIMESTAMP '2024-09-02 00:08:00' "
                   "AND TIMESTAMP '2024-09-02 00:19:00'") == (2,)   # 00:08 and 00:19: the 5-minute bars are out
        assert one("SELECT count(DISTINCT symbol) FROM stg_open_interest") == (1,)
        assert one("SELECT count(*) FROM src_files WHERE status = 'skipped'") == (2,)
        # the cut recordings' whole lines are kept, their cut ones not
        assert con.execute("SELECT ts::VARCHAR, volume_usd FROM realized_liquidations WHERE source = 'forceOrder' "
                           "ORDER BY ts").fetchall() == [(f"{DAY[1]} 10:02:00", 5800), (f"{DAY[2]} 10:00:00", 11400),
                                                         (f"{DAY[2]} 10:01:00", 5710), (f"{DAY[2]} 11:00:00", 28600)]
    assert "skipped " in stderr and "quarantined " in stderr


# name: (what is wrong, what the user sees, arguments after `build`, text in the error)
ARGUMENTS = {
    "end before start": ("--start after --end", "error naming both, nothing written",
                         ["--start", "2024-09-20", "--end", "2024-09-10"], "--end 2024-09-10 is before --start 2024-09-20"),
    "no data folder": ("--data that does not exist", "error naming the folder", ["--data", "{tmp}/nope"],
                       "does not exist"),
    "no Binance files": ("a folder without Binance-named files", "error naming the folder",
                         ["--data", "{tmp}"], "no Binance futures files"),
    "every file unreadable": ("only damaged files", "error after staging, each file named",
                              ["--data", "{junk}"], "BTCUSDT-metrics-2024-09-01.zip"),
    "simulated and real": ("demo files and real ones under one --data", "error naming one of each",
                           ["--data", "{mixed}"], "refusing to mix simulated files"),
    "bad memory limit": ("--memory-limit lots", "error naming it", ["--memory-limit", "lots"], "--memory-limit 'lots'"),
    "unknown parameter": ("--param foo=1", "error listing the known ones", ["--param", "foo=1"],
                          "unknown model parameter(s): foo; known: backtest_resamples"),
    "parameter not a number": ("--param price_bucket_usd=x", "error naming it", ["--param", "price_bucket_usd=x"],
                               "--param price_bucket_usd=x: expected NAME=NUMBER"),
    "parameter out of range": ("--param time_bucket_s=7", "error naming the rule", ["--param", "time_bucket_s=7"],
                               "time_bucket_s >= 60"),
    "bad horizon": ("--horizons 7m (not whole time buckets)", "error naming it", ["--horizons", "7m"], "--horizons"),
    "no jobs": ("--jobs 0", "error naming it", ["--jobs", "0"], "--jobs 0"),
    "bad symbol": ("--symbol BTC-USDT", "error naming it", ["--symbol", "BTC-USDT"], "--symbol BTC-USDT"),
    "missing parameters file": ("--parameters that does not exist", "error naming the file",
                                ["--parameters", "{tmp}/nope.csv"], "nope.csv does not exist"),
    "leverage weights": ("a --leverage-tiers file whose weights add up to 0.5", "error naming the rule",
                         ["--leverage-tiers", "{tiers}"], "leverage tier weights must add up to 1"),
    "not a liquidation file": ("--liquidations of a CSV with other columns", "error naming the file and the formats",
                               ["--liquidations", "{notes}"], "notes.csv: not a liquidationSnapshot"),
}


@pytest.fixture(scope="module")
def previous(demo_db, tmp_path_factory) -> Path:
    """A built database, which no failing build may touch."""
    db = tmp_path_factory.mktemp("previous") / "liquidations.db"
    shutil.copy(demo_db, db)
    return db


@pytest.mark.parametrize("case", ARGUMENTS)
def test_bad_arguments_fail_naming_them_and_write_nothing(case, previous, demo_dir, tmp_path):
    _, _, args, message = ARGUMENTS[case]
    before = hashlib.sha256(previous.read_bytes()).hexdigest()
    junk, mixed = tmp_path / "junk", tmp_path / "mixed"
    junk.mkdir()
    (junk / "BTCUSDT-metrics-2024-09-01.zip").write_bytes(b"not a zip")
    (tmp_path / "tiers.csv").write_text("leverage,weight,typical_notional_usd\n10,0.5,1000\n")
    (tmp_path / "notes.csv").write_text("a,b\n1,2\n")
    if case == "simulated and real":
        shutil.copytree(demo_dir, mixed / "demo")
        real = mixed / "real" / daily_file(Path(), "metrics", "2024-10-01")
        real.parent.mkdir(parents=True)
        shutil.copy(daily_file(demo_dir, "metrics", DAY[0]), real)
    args = [arg.format(tmp=tmp_path / "empty", junk=junk, mixed=mixed, tiers=tmp_path / "tiers.csv",
                       notes=tmp_path / "notes.csv") for arg in args]
    (tmp_path / "empty").mkdir()
    if "--data" not in args:
        args += ["--data", str(demo_dir)]
    result = run_build(*args, "--db", str(previous))
    assert result.returncode == 2, result.stderr
    assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert hashlib.sha256(previous.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in previous.parent.iterdir()) in (["liquidations.db"], ["cache", "liquidations.db"])


# name: (what is wrong, what the user sees, the command line, text in the error)
OTHER_COMMANDS = {
    "no days to simulate": ("demo --days 0", "error naming it, nothing written", ["demo", "--days", "0"], "--days 0"),
    "a day that does not exist": ("demo --start 2024-13-01", "usage error naming it", ["demo", "--start", "2024-13-01"],
                                  "argument --start: invalid fromisoformat value: '2024-13-01'"),
    "no such port": ("serve --port 99999", "usage error naming it", ["serve", "--port", "99999"],
                     "argument --port: '99999' is no TCP port (1-65535)"),
    "no database to serve": ("serve --db of a file not built", "error saying how to build it",
                             ["serve", "--db", "{tmp}/nope.db"], "build it first with"),
    "not a stream URL": ("record --url of an http:// address", "error naming it, nothing written",
                         ["record", "--url", "http://127.0.0.1:9/ws", "--out", "{tmp}/recorded"],
                         "--url http://127.0.0.1:9/ws"),
    "no such duration": ("record --renew-after 0", "usage error naming it", ["record", "--renew-after", "0"],
                         "argument --renew-after: '0' is no duration"),
}


@pytest.mark.parametrize("case", OTHER_COMMANDS)
def test_the_other_commands_refuse_bad_arguments(case, tmp_path):
    _, _, (command, *args), message = OTHER_COMMANDS[case]
    args = [arg.format(tmp=tmp_path) for arg in args]
    result = run_build(*args, *(["--out", str(tmp_path / "demo")] if command == "demo" else []), command=command)
    assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr, result.stderr
    assert list(tmp_path.iterdir()) == []
