"""`tools/benchmark.py fanout`: `build --symbols all` on the local Dask cluster against one after another, side by
side on the same simulated files and machine (issue 32).

    .venv/bin/python tools/benchmark.py fanout [--symbols 8] [--days 2] [--trades-per-day 5000] [--workers N]
                                               [--memory-limit 4GB] [--data DIR] [--runs 1]

Simulates `symbols` symbols of `days` days (or reuses --data), then runs, each as a user runs it (its own process,
its own output folder, so its own caches: both stage every file), `build.py build --symbols all --workers 1` (one
after another, no cluster) and `--workers N` (a local cluster of N workers, one build each at a time): the whole
run's seconds (the merge and its stored answers included), the builds' seconds added up, the slowest build and the
largest peak memory of one build (fanout.json). --runs N alternates them N times and prints medians.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
START = dt.date(2024, 9, 1)


def run(data: Path, out: Path, workers: int, memory_limit: str) -> dict:
    """One `build --symbols all`, in its own process: its seconds and its tasks' results."""
    command = [sys.executable, str(ROOT / "build.py"), "build", "--symbols", "all", "--data", str(data),
               "--db", str(out / "liquidations.db"), "--workers", str(workers), "--memory-limit", memory_limit]
    began = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(command)}\n{result.stderr[-3000:]}")
    tasks = json.loads((out / "symbols" / "fanout.json").read_text())["symbols"]
    return {"wall_s": seconds, "builds_s": sum(t["seconds"] for t in tasks),
            "slowest_s": max(t["seconds"] for t in tasks), "peak_gib": max(t["peak_bytes"] for t in tasks) / 2**30}


def main(argv: list[str], machine) -> None:
    """machine(): benchmark.py's line about the machine, as the other benchmarks print it."""
    from liquidation_heatmap import simulate  # (benchmark.py put the checkout on the path)
    parser = argparse.ArgumentParser(prog="benchmark.py fanout", description=__doc__.split("\n")[0])
    parser.add_argument("--symbols", type=int, default=8)
    parser.add_argument("--days", type=int, default=2)
    parser.add_argument("--trades-per-day", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="the local cluster's")
    parser.add_argument("--memory-limit", default="4GB", help="build's --memory-limit (the cluster's builds share it)")
    parser.add_argument("--data", type=Path, help="reuse a folder simulated before")
    parser.add_argument("--runs", type=int, default=1)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark-fanout-") as name:
        tmp = Path(name)
        data = args.data or tmp / "data"
        if not args.data:
            print(f"simulating {args.symbols} symbols x {args.days} days of {args.trades_per_day:,} aggTrades ...",
                  file=sys.stderr)
            for i in range(args.symbols):
                simulate.simulate(data, days=args.days, seed=100 + i, symbol=f"SIM{i:02d}USDT", start=str(START),
                                  trades_per_day=args.trades_per_day, progress=lambda *_: None)
        runs = []
        for n in range(args.runs):
            serial = run(data, tmp / f"serial-{n}", 1, args.memory_limit)
            cluster = run(data, tmp / f"cluster-{n}", args.workers, args.memory_limit)
            runs.append((serial, cluster))

    def median(which: int, key: str) -> float:
        return statistics.median(run[which][key] for run in runs)
    print(f"{args.symbols} symbols x {args.days} days ({args.trades_per_day:,} aggTrades a day), --memory-limit "
          f"{args.memory_limit}; {machine()}; {dt.date.today()}" + (f"; medians of {args.runs} runs" if args.runs > 1 else ""))
    rows = [("", "one after another", f"local cluster, {args.workers} workers", "cluster / one after another")]
    for key, what, unit in (("wall_s", "the whole run (builds, merge, stored answers)", "s"),
                            ("builds_s", "the builds' seconds added up", "s"),
                            ("slowest_s", "the slowest build", "s"), ("peak_gib", "the largest peak of one build", "GiB")):
        serial, cluster = median(0, key), median(1, key)
        digits = 2 if unit == "GiB" else 1
        rows.append((what, f"{serial:.{digits}f} {unit}", f"{cluster:.{digits}f} {unit}", f"{cluster / serial:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    for row in rows:
        print("  ".join(f"{cell:{width}}" for cell, width in zip(row, widths)))
    speedup = median(0, "wall_s") / median(1, "wall_s")
    print(f"the local cluster's speed-up over one after another: {speedup:.2f}x "
          f"({'faster' if speedup > 1 else 'slower'})")
