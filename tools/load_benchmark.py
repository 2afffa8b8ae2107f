"""`tools/benchmark.py load`: a bounded load test of the server on loopback (issue 13): `clients` clients, each on its
own keep-alive connection, cycle for `seconds` over every stored query, page, the Plotly bundle and two table pages;
errors (none allowed), latency percentiles and the server's memory. benchmark.py's docstring says more."""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import re
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmark import add_server_arguments, machine, served_db, start_server, stored_queries, write_readme_table

SERVED_PAGES = ["/", "/liquidations", "/heatmap", "/liquidation_map", "/compare_models", "/backtest"]
TABLE_PAGES = ["/liquidations/data_coverage", "/liquidations/heatmap_cells"]   # a small table and the largest


def load_paths(url: str) -> list[str]:
    """Every stored query (default parameters, JSON), every page, the Plotly bundle the pages load, the table pages."""
    with urllib.request.urlopen(url + "/heatmap", timeout=60) as response:
        plotly = re.search(r'src="(/assets/plotly-[^"]+)"', response.read().decode())[1]
    return [*(f"/liquidations/{q}.json" for q in stored_queries()), *SERVED_PAGES, plotly, *TABLE_PAGES]


def client_cycle(url: str, paths: list[str], first: int, until: float, headers: dict) -> list[tuple]:
    """One client on its own keep-alive connection: GETs of `paths` in turn, from the `first`, until the clock
    (time.monotonic) reads `until` and every path was asked once (on a slow machine a short run would leave some
    unasked): (path, seconds, error or None) each. An error is any answer but a 200 with a body, or none (the
    connection is then opened anew)."""
    host, done, i = url.split("//")[1], [], first
    connection = http.client.HTTPConnection(host, timeout=60)
    while time.monotonic() < until or i - first < len(paths):
        path, i = paths[i % len(paths)], i + 1
        began, error = time.perf_counter(), None
        try:
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200 or not body:
                error = f"HTTP {response.status}: {body[:200]!r}"
        except (OSError, http.client.HTTPException) as e:
            error = f"{type(e).__name__}: {e}"
            connection.close()
            connection = http.client.HTTPConnection(host, timeout=60)
        done.append((path, time.perf_counter() - began, error))
    connection.close()
    return done


def rss_mib(pid: int) -> float:
    """A process's resident memory now (VmRSS), MiB."""
    line = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def sample_rss(pid: int, stop: threading.Event) -> list[float]:
    """rss_mib every second until `stop` is set, and once more then."""
    samples = [rss_mib(pid)]
    while not stop.wait(1.0):
        samples.append(rss_mib(pid))
    return [*samples, rss_mib(pid)]


def run_load(url: str, pid: int, clients: int, seconds: float, fresh: bool = False) -> dict:
    """`clients` clients cycling over load_paths for `seconds` (each starting at a path of its own), the server's
    memory sampled meanwhile: every request's (path, seconds, error), the memory samples, the seconds it took."""
    paths = load_paths(url)
    headers = {"Accept-Encoding": "gzip", **({"Cache-Control": "no-cache"} if fresh else {})}
    stop = threading.Event()
    with ThreadPoolExecutor(clients + 1) as pool:
        memory = pool.submit(sample_rss, pid, stop)
        began = time.monotonic()
        cycles = [pool.submit(client_cycle, url, paths, i * len(paths) // clients, began + seconds, headers)
                  for i in range(clients)]
        requests = [request for cycle in cycles for request in cycle.result()]
        took = time.monotonic() - began
        stop.set()
        return {"paths": paths, "requests": requests, "memory": memory.result(), "seconds": took}


def percentiles(times: list[float]) -> list[str]:
    """p50, p95, p99 and max of some seconds, in ms."""
    ordered = sorted(times)
    return [f"{1000 * t:.1f}" for t in [ordered[int(q * (len(ordered) - 1))] for q in (0.5, 0.95, 0.99)] + ordered[-1:]]


def load_report(result: dict) -> tuple[list[str], list[tuple]]:
    """What load_main reports: the totals, errors (the first five) and memory; the latency table, overall and per
    path."""
    requests, memory = result["requests"], result["memory"]
    errors = [(path, error) for path, _, error in requests if error]
    lines = [(f"requests: {len(requests):,} in {result['seconds']:.1f} s ({len(requests) / result['seconds']:.1f}/s); "
             f"errors: {len(errors)}"), *(f"  error: {path}: {error}" for path, error in errors[:5]),
             (f"server memory (VmRSS, every 1 s): start {memory[0]:.0f} MiB, peak {max(memory):.0f} MiB, "
             f"end {memory[-1]:.0f} MiB")]
    table = [("latency, ms", "requests", "p50", "p95", "p99", "max"),
             ("overall", f"{len(requests):,}", *percentiles([t for _, t, _ in requests]))]
    for path in result["paths"]:
        times = [t for p, t, _ in requests if p == path]
        table.append((path, f"{len(times):,}", *(percentiles(times) if times else ["", "", "", ""])))
    return lines, table


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmark.py load", description="A bounded load test of the server on "
                                     "loopback: errors (none allowed), latency percentiles and the server's memory.")
    add_server_arguments(parser)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--fresh", action="store_true", help="ask every request afresh (Cache-Control: no-cache)")
    parser.add_argument("--readme", action="store_true", help="also write the figures into docs/performance.md's load block")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark-load-") as name:
        process, url = start_server(served_db(args.db, name), args.setting)
        try:
            result = run_load(url, process.pid, args.clients, args.seconds, args.fresh)
        finally:
            process.terminate()
            process.wait(timeout=10)
    settings = "".join(f"; {name} {value}" for name, value in args.setting)
    header = (f"{args.clients} clients for {args.seconds:g} s over {len(result['paths'])} paths on loopback, "
              f"{'every request asked afresh' if args.fresh else 'as browsers (gzip; repeats get kept answers)'}"
              f"{settings}; {machine()}; {dt.date.today()}")
    lines, table = load_report(result)
    print(f"load: {header}", *lines, sep="\n")
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print("\n".join(f"{row[0]:{widths[0]}}" + "".join(f"  {cell:>{w}}" for cell, w in zip(row[1:], widths[1:]))
                    for row in table))
    if any(error for *_, error in result["requests"]):
        sys.exit(1)
    if args.readme:
        write_readme_table("load benchmark: python tools/benchmark.py load", "end of load benchmark",
                           f"{header}\n\n" + "; ".join(lines), table)
