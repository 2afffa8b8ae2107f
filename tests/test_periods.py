"""Issue 28: the backtest scores only horizons the data can tell apart. An aggregated liquidation export's period is
inferred from its times, and a horizon finer than it (or than the bars that trigger liquidations) is refused when
given with --horizons, and left out, said in the log and in data_quality, when it is a default one."""

import datetime as dt
import shutil
import sqlite3
from collections import defaultdict
from pathlib import Path

import pytest
from conftest import daily_file, read_zip_lines, run_build, write_zip_lines

FOUR_HOURS_MS = 4 * 3600 * 1000


def rows(db: Path, sql: str, *params) -> list[tuple]:
    with sqlite3.connect(db) as con:
        return con.execute(sql, params).fetchall()


def snapshot_volumes(demo_dir: Path, period_ms: int) -> dict[tuple[int, str], float]:
    """The simulator's realized liquidations (its liquidationSnapshot files) summed per period and side."""
    volumes = defaultdict(float)
    for path in sorted((demo_dir / "data/futures/um/daily/liquidationSnapshot/BTCUSDT").glob("*.zip")):
        for line in read_zip_lines(path)[1:]:
            f = line.split(",")
            volumes[int(f[0]) // period_ms * period_ms, {"SELL": "long", "BUY": "short"}[f[1]]] += float(f[6]) * float(f[9])
    return volumes


@pytest.fixture(scope="module")
def coarse_export(demo_dir, tmp_path_factory) -> tuple[Path, Path, dict]:
    """The demo's market files without its liquidationSnapshot files, and its realized liquidations as an aggregated
    export with one row per 4 hours, as dashboards export them: (data folder, export, volumes per 4 hours)."""
    root = tmp_path_factory.mktemp("coarse-export")
    data = root / "data"
    shutil.copytree(demo_dir, data, ignore=shutil.ignore_patterns("liquidationSnapshot", "aggTrades"))
    volumes = snapshot_volumes(demo_dir, FOUR_HOURS_MS)
    export = root / "liquidations-4h.csv"
    times = sorted({t for t, _ in volumes})
    export.write_text("time,long_usd,short_usd,symbol\n" + "".join(
        f"{t},{volumes[t, 'long']},{volumes[t, 'short']},BTCUSDT\n" for t in times))
    return data, export, volumes


def test_an_explicit_horizon_finer_than_the_export_is_refused_before_anything_is_written(coarse_export, tmp_path):
    data, export, _ = coarse_export
    db = tmp_path / "out" / "liquidations.db"
    result = run_build("--data", str(data), "--liquidations", str(export), "--db", str(db), "--horizons", "1h,4h,24h", "--no-stored-answers")
    assert result.returncode == 2, result.stderr
    assert "--horizons 1h is finer than the 4h period of liquidations-4h.csv" in result.stderr
    assert "Traceback" not in result.stderr
    # refused before staging: no database, and nothing staged in the cache
    assert not db.exists() and not db.with_suffix(".duckdb").exists()
    assert not list((tmp_path / "out").rglob("*.parquet"))
    # nor is a horizon that is not a whole number of periods (6 hours: one and a half)
    result = run_build("--data", str(data), "--liquidations", str(export), "--db", str(db), "--horizons", "6h", "--no-stored-answers")
    assert result.returncode == 2 and "--horizons 6h is not a whole number of the 4h period" in result.stderr


def test_default_horizons_finer_than_the_export_are_left_out_and_said(coarse_export, tmp_path):
    data, export, volumes = coarse_export
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(data), "--liquidations", str(export), "--db", str(db), "--no-stored-answers")
    assert result.returncode == 0, result.stderr
    assert "backtest horizon 1h is finer than the 4h period of liquidations-4h.csv" in result.stderr
    assert "backtest horizons scored: 4h, 24h" in result.stderr
    # no 1h score nor series, and the 4h ones are there, with values
    assert rows(db, "SELECT DISTINCT horizon FROM backtest_scores ORDER BY horizon_s") == [("4h",), ("24h",)]
    assert rows(db, "SELECT count(*) FROM backtest_series WHERE horizon = '1h'") == [(0,)]
    assert rows(db, "SELECT count(value) > 0 FROM backtest_scores WHERE horizon = '4h' AND metric = 'volume_pearson' "
                    "AND model = 'ensemble'") == [(1,)]
    # every realized USD after the warm-up lands in its own 4-hour window
    first = rows(db, "SELECT min(ts) FROM backtest_series WHERE horizon = '4h'")[0][0]
    scored = sum(v for (t, _), v in volumes.items() if t >= dt.datetime.fromisoformat(first).timestamp() * 1000)
    assert rows(db, "SELECT sum(realized_usd) FROM backtest_series WHERE model = 'ensemble' AND horizon = '4h'")[0][0] \
        == pytest.approx(scored, rel=1e-6)
    # data_quality says which horizon was left out and why, naming the export
    problems = rows(db, "SELECT symbol, data_type, file, severity, detail FROM data_quality_problems "
                        "WHERE problem = 'horizon_not_scored'")
    assert len(problems) == 1, problems
    symbol, data_type, file, severity, detail = problems[0]
    assert (symbol, data_type, severity) == ("BTCUSDT", "liquidationsAggregated", "warning")
    assert file.endswith("liquidations-4h.csv") and "1h is finer than the 4h period" in detail and "4h, 24h" in detail
    # the period is recorded with the build
    info = dict(rows(db, "SELECT key, value FROM build_info"))
    assert info["liquidation_export_periods"] == "BTCUSDT liquidations-4h.csv: 4h"
    assert info["backtest_horizons"] == "4h, 24h"
    assert "realized liquidations every 4 h" in info["source_choices"]


def four_hour_bars(lines: list[str]) -> list[str]:
    """1-minute klines (header first) as 4-hour bars, volumes summed."""
    out = [lines[0]]
    bars = [line.split(",") for line in lines[1:]]
    for start in range(0, len(bars), 240):
        group = bars[start:start + 240]

        def total(i, group=group):
            return repr(sum(float(b[i]) for b in group))
        out.append(",".join([group[0][0], group[0][1], max((b[2] for b in group), key=float),
                             min((b[3] for b in group), key=float), group[-1][4], total(5),
                             str(int(group[0][0]) + FOUR_HOURS_MS - 1), total(7), str(sum(int(b[8]) for b in group)),
                             total(9), total(10), "0"]))
    return out


@pytest.fixture(scope="module")
def four_hour_data(demo_dir, tmp_path_factory) -> Path:
    """The demo as 4-hour klines (no 1-minute or mark-price bars, no trades) and metrics every 4 hours, with its
    liquidationSnapshot files: realized liquidations event by event, with prices."""
    data = tmp_path_factory.mktemp("four-hours") / "data"
    shutil.copytree(demo_dir, data, ignore=shutil.ignore_patterns("markPriceKlines", "aggTrades", "1m"))
    for minutes in sorted((demo_dir / "data/futures/um/daily/klines/BTCUSDT/1m").glob("*.zip")):
        day = minutes.name.removeprefix("BTCUSDT-1m-").removesuffix(".zip")
        path = daily_file(data, "klines", day, interval="4h")
        path.parent.mkdir(parents=True, exist_ok=True)
        write_zip_lines(path, four_hour_bars(read_zip_lines(minutes)))
    for metrics in sorted((data / "data/futures/um/daily/metrics/BTCUSDT").glob("*.zip")):
        lines = read_zip_lines(metrics)
        write_zip_lines(metrics, [lines[0]] + [line for line in lines[1:]
                                               if int(line[11:13]) % 4 == 0 and line[14:19] == "00:00"])
    return data


def test_four_hour_bars_are_scored_at_the_horizons_they_allow(four_hour_data, tmp_path):
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(four_hour_data), "--db", str(db), "--no-stored-answers")
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT kline_interval, cadence_s FROM data_coverage WHERE data_type = 'klines'") == [("4h", 14400)]
    assert rows(db, "SELECT DISTINCT horizon FROM backtest_scores ORDER BY horizon_s") == [("4h",), ("24h",)]
    assert rows(db, "SELECT count(value) > 0 FROM backtest_scores WHERE horizon = '4h' AND metric = 'volume_pearson' "
                    "AND model = 'ensemble'") == [(1,)]
    # after the warm-up, six windows of 4 hours a day
    windows = dict(rows(db, "SELECT horizon, max(n_periods) FROM backtest_scores WHERE metric = 'volume_pearson' "
                            "GROUP BY 1"))
    assert windows["24h"] >= 1 and windows["4h"] == 6 * windows["24h"], windows
    assert rows(db, "SELECT data_type, kline_interval, detail LIKE '%1h is finer than the 4h bars of BTCUSDT (klines 4h)%' "
                    "FROM data_quality_problems WHERE problem = 'horizon_not_scored'") == [("klines", "4h", 1)]
    assert "backtest horizons scored: 4h, 24h" in result.stderr
    # given explicitly, the same horizon is refused at once, naming the bars
    result = run_build("--data", str(four_hour_data), "--db", str(tmp_path / "x" / "liquidations.db"), "--horizons", "1h", "--no-stored-answers")
    assert result.returncode == 2 and "--horizons 1h is finer than the 4h bars of BTCUSDT (klines)" in result.stderr


def test_a_backtest_with_nothing_to_score_says_why(demo_dir, tmp_path):
    """Realized liquidations of the first day only, the warm-up: no window can be scored, and data_quality says so
    for every horizon rather than leaving empty tables."""
    data = tmp_path / "data"
    shutil.copytree(demo_dir, data, ignore=shutil.ignore_patterns("liquidationSnapshot", "aggTrades"))
    volumes = snapshot_volumes(demo_dir, 3600 * 1000)
    export = tmp_path / "first-day.csv"
    export.write_text("time,long_usd,short_usd\n" + "".join(
        f"{t},{volumes[t, 'long']},{volumes[t, 'short']}\n" for t in sorted({t for t, _ in volumes}) if t < 1725235200000))
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(data), "--liquidations", str(export), "--db", str(db), "--no-stored-answers")
    assert result.returncode == 0, result.stderr
    assert rows(db, "SELECT count(*) FROM backtest_scores") == [(0,)]
    details = [d for (d,) in rows(db, "SELECT detail FROM data_quality_problems WHERE problem = 'horizon_not_scored' "
                                      "ORDER BY detail")]
    assert len(details) == 3 and all("no whole window to score for BTCUSDT" in d for d in details), details
    assert "backtest horizons scored: none" in result.stderr
