"""Speed and memory of a build at real Binance volume, as ratios measured side by side in one run.

    .venv/bin/python tests/benchmark.py [--days 1] [--trades-per-day 2500000]

Simulates days of BTCUSDT at real aggTrades volume (2-3 million a day), then times, on the same
files and the same machine, (a) the fastest possible pass over them: DuckDB reading the unzipped
aggTrades CSVs once, and (b) the whole `build.py build`, with its peak memory. Machines here are
shared and noisy, so only the ratios mean much. The targets guard against regressions: the build
does far more than one pass (staging, four models, data quality, the backtest, the SQLite export),
and measured 23x the raw pass and 8.2x the CSV bytes on 2026-11-24 (1 day, 2.5 M trades, 2 cores).
Not a test: run it by hand when the loader or the models change.
"""

import argparse
import resource
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import simulate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=1)
    parser.add_argument("--trades-per-day", type=int, default=2_500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data, csvs = Path(tmp, "data"), Path(tmp, "csv")
        began = time.perf_counter()
        simulate.simulate(data, days=args.days, trades_per_day=args.trades_per_day, progress=lambda *_: None)
        simulated_s = time.perf_counter() - began
        csvs.mkdir()
        for path in data.rglob("*aggTrades*.zip"):
            zipfile.ZipFile(path).extractall(csvs)
        csv_bytes = sum(p.stat().st_size for p in csvs.iterdir())

        began = time.perf_counter()
        rows, volume = duckdb.connect().execute(
            f"SELECT count(*), sum(price * quantity) FROM read_csv('{csvs}/*.csv')").fetchone()
        raw_s = time.perf_counter() - began

        began = time.perf_counter()
        subprocess.run([sys.executable, str(ROOT / "build.py"), "build", "--data", str(data),
                        "--db", str(Path(tmp, "out", "liquidations.db"))], check=True, capture_output=True)
        build_s = time.perf_counter() - began
        peak_bytes = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024

    print(f"simulated {args.days} day(s), {rows:,} aggTrades ({csv_bytes / 1e6:,.0f} MB of CSV, "
          f"{volume / 1e9:,.1f} bn USDT) in {simulated_s:.1f} s")
    print(f"{'':28}{'seconds':>10}{'MB/s':>10}{'ratio':>10}")
    print(f"{'raw DuckDB pass (baseline)':28}{raw_s:10.2f}{csv_bytes / 1e6 / raw_s:10.0f}{1:10.1f}")
    print(f"{'build.py build':28}{build_s:10.2f}{csv_bytes / 1e6 / build_s:10.0f}{build_s / raw_s:10.1f}"
          f"   target <= 30")
    print(f"peak memory of the build: {peak_bytes / 1e6:,.0f} MB = {peak_bytes / csv_bytes:.1f} x the CSV bytes"
          f"   target <= 10")


if __name__ == "__main__":
    main()
