"""Speed and memory of builds at real Binance volume, as ratios measured side by side in one run.

    .venv/bin/python tools/benchmark.py [--days 30] [--trades-per-day 2000000] [--data DIR] [--runs N] [--readme]
    .venv/bin/python tools/benchmark.py pages [--db DB] [--clients 8] [--setting NAME VALUE] [--readme]
    .venv/bin/python tools/benchmark.py load [--db DB] [--clients 16] [--seconds 60] [--fresh] [--setting NAME VALUE]
                                                                               (tools/load_benchmark.py)
    .venv/bin/python tools/benchmark.py fanout [--symbols 8] [--days 2] [--workers N]   (tools/fanout_benchmark.py)

The second form (issue 12) serves a built database (default: the 30-day demo, built first) with
`build.py serve`'s own command on loopback and measures, side by side: the p95 latency of every stored
query at 8 clients beside the floor (/-/versions.json, Datasette's cheapest answer), and the heatmap
page's chart drawn in headless Chromium, from a new browser context each time (a first visit). Each
query twice: asked afresh (`Cache-Control: no-cache`, as for a view no one has asked for since the server
started: the answer the build stored when there is one, answers.py, else the query runs) and asked again (the
answer the server keeps, plugins/ready_answers.py); and two views the build does not store, whose query runs.
`--setting NAME VALUE` overrides one of datasette.yaml's settings (Datasette's own --setting), to measure
two settings back to back; `--draws 0` leaves Chromium out.

The third form (issue 13) is a bounded load test of the same server: `clients` clients, each on its own keep-alive
connection, cycle for `seconds` over every stored query (default parameters, JSON), every page, the Plotly
bundle the pages load and two table pages, as browsers (gzip accepted, so repeats get the kept answers;
`--fresh`: every request asked afresh, the query run each time). It prints the requests, the errors (any answer
but a 200, or no answer: it exits 1 if there is one), the latency's p50, p95 and p99 overall and per path,
requests per second, and the server's resident memory (VmRSS) sampled every second: at the start, its peak
and at the end.

The first form:

Simulates days + 1 of BTCUSDT at real aggTrades volume (or reuses --data, a folder simulated before
with at least that many days), then, on the same files and the same machine, one after another:
  bare read     DuckDB's read_csv of the unzipped aggTrades CSVs of the first `days` days, every column
                parsed (a build stages every column): the fastest possible pass over the input, the
                yardstick of everything else. Issue 11's figures imply this read: its full build, 212 s,
                was "about 19x" the bare read, so about 11 s, and on the same machine type every column
                reads in about 11 s, two columns in about 7 s. The read of two columns (price and
                quantity: DuckDB then skips converting the others) is printed too, as a stricter yardstick;
  one day       `build.py build` of the first day alone, from an empty cache;
  full build    `build.py build` of the first `days` days, from an empty cache;
  one more day  the same build with the next day added, its cache kept (the incremental case);
each build in its own process, with its peak resident memory (wait4's ru_maxrss). Machines here are
shared and noisy (a build's seconds vary by up to 1.5x from one hour to the next): the ratios are what
to read, and --runs N repeats everything and prints medians. The targets are issue 11's. Not a test: run it by
hand when staging or the models change (the 30-day run simulates 3.4 GB of CSV and takes ~15 min).
"""

from __future__ import annotations

import argparse
import datetime as dt
import http.client
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]   # the modules, and the tests' server starter it shares
from conftest import start_server

from liquidation_heatmap import simulate

START = dt.date(2024, 9, 1)


def run_build(data: Path, out: Path, days: int) -> tuple[float, int]:
    """Seconds and peak RSS (bytes) of one build of the first `days` days, in a process of its own."""
    command = [sys.executable, str(ROOT / "build.py"), "build", "--data", str(data), "--db", str(out / "liquidations.db"),
               "--end", str(START + dt.timedelta(days=days - 1))]
    began = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - began
    if status != 0:
        sys.exit(f"build failed: {' '.join(command)}\n{stderr[-3000:]}")
    return seconds, usage.ru_maxrss * 1024


# What each bare read computes: every column parsed, or only the two the sum needs.
READS = {"read_s": "count(*), sum(agg_trade_id + first_trade_id + last_trade_id + transact_time), "
                   "sum(price * quantity), count(*) FILTER (WHERE is_buyer_maker)",
         "read_two_s": "count(*), sum(price * quantity)"}


def bare_read(data: Path, days: int, csvs: Path) -> dict:
    """Seconds of each of DuckDB's READS over the first `days` days of aggTrades (unzipped first), rows, CSV bytes."""
    csvs.mkdir(parents=True)
    wanted = {f"BTCUSDT-aggTrades-{START + dt.timedelta(days=d)}.zip" for d in range(days)}
    for path in data.rglob("*aggTrades*.zip"):
        if path.name in wanted:
            zipfile.ZipFile(path).extractall(csvs)
    out = {"csv_bytes": sum(p.stat().st_size for p in csvs.iterdir())}
    for key, columns in READS.items():
        began = time.perf_counter()
        out["rows"] = duckdb.connect().execute(f"SELECT {columns} FROM read_csv('{csvs}/*.csv')").fetchone()[0]
        out[key] = time.perf_counter() - began
    return out


def measure(data: Path, days: int, tmp: Path) -> dict:
    """One run of every measurement, one after another on the same files."""
    reads = bare_read(data, days, tmp / "csv")
    one_read_s = bare_read(data, 1, tmp / "csv-one-day")["read_s"]
    one_s, one_rss = run_build(data, tmp / "one-day", 1)
    full_s, full_rss = run_build(data, tmp / "full", days)
    more_s, more_rss = run_build(data, tmp / "full", days + 1)   # the same output folder: its cache is kept
    shutil.rmtree(tmp)
    return {**reads, "one_read_s": one_read_s, "one_s": one_s,
            "one_rss": one_rss, "full_s": full_s, "full_rss": full_rss, "more_s": more_s, "more_rss": more_rss}


def machine() -> str:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} cores ({cpu}), {ram:.0f} GiB RAM, Python {platform.python_version()}, DuckDB {duckdb.__version__}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days of the full build (one more is simulated)")
    parser.add_argument("--trades-per-day", type=int, default=2_000_000)
    parser.add_argument("--data", type=Path, help="reuse a folder simulated before (days + 1 days at least)")
    parser.add_argument("--readme", action="store_true", help="also write the table into docs/performance.md's benchmark block")
    parser.add_argument("--runs", type=int, default=1,
                        help="measure this many times, one run after another, and print each figure's median "
                             "(the ratios: their median and range)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="benchmark-") as name:
        tmp = Path(name)
        data = args.data or tmp / "data"
        if not args.data:
            print(f"simulating {args.days + 1} days of {args.trades_per_day:,} aggTrades ...", file=sys.stderr)
            simulate.simulate(data, days=args.days + 1, trades_per_day=args.trades_per_day, start=str(START),
                              progress=lambda *_: None)
        runs = [measure(data, args.days, tmp / f"run-{run}") for run in range(args.runs)]
    rows, csv_bytes = runs[0]["rows"], runs[0]["csv_bytes"]
    m = {key: statistics.median(run[key] for run in runs) for key in runs[0]}

    def ratio(of, to, scale=1.0, digits=1, unit="x") -> str:
        values = sorted(scale * run[of] / run[to] for run in runs)
        spread = f" (runs: {values[0]:.{digits}f}-{values[-1]:.{digits}f})" if len(runs) > 1 else ""
        return f"{scale * statistics.median(run[of] / run[to] for run in runs):.{digits}f}{unit}{spread}"

    gb = 2**30
    table = [
        ("what", "measured", "ratio", "target"),
        (f"{args.days} days: peak RSS of the full build", f"{m['full_rss'] / gb:.2f} GiB",
         f"{ratio('full_rss', 'one_rss', digits=2)} the one-day build's ({m['one_rss'] / gb:.2f} GiB)",
         "<= 3 GiB and <= 1.5x"),
        (f"{args.days} days: full build vs bare read_csv (every column)", f"{m['full_s']:.1f} s vs {m['read_s']:.1f} s",
         ratio("full_s", "read_s"), "<= 6x"),
        ("the same vs a read of two columns only", f"{m['full_s']:.1f} s vs {m['read_two_s']:.1f} s",
         ratio("full_s", "read_two_s"), "(stricter)"),
        (f"adding day {args.days + 1} vs the full build", f"{m['more_s']:.1f} s (peak {m['more_rss'] / gb:.2f} GiB)",
         ratio("more_s", "full_s", scale=100, digits=1, unit=" %"), "<= 10 %"),
        ("one day, whole build", f"{m['one_s']:.2f} s (bare read {m['one_read_s']:.2f} s)",
         f"{ratio('one_s', 'one_read_s')} the bare read", "<= 2.5 s"),
    ]
    header = (f"{rows:,} aggTrades in {args.days} days ({csv_bytes / 1e9:.2f} GB of CSV); {machine()}; {dt.date.today()}"
              + (f"; medians of {len(runs)} runs" if len(runs) > 1 else ""))
    print(header)
    for row in table:
        print(f"{row[0]:58}{row[1]:38}{row[2]:64}{row[3]}")
    if args.readme:
        write_readme_table("benchmark: python tools/benchmark.py --readme", "end of benchmark", header, table)


DOCS = ROOT / "docs" / "performance.md"   # where --readme writes the measured tables


def write_readme_table(start: str, end: str, header: str, table: list[tuple]) -> None:
    """The table, as Markdown under its header, between docs/performance.md's comments <!-- start --> and <!-- end -->."""
    markdown = "\n".join("| " + " | ".join(row) + " |" for row in table[:1] + [("---",) * len(table[0])] + table[1:])
    block = re.compile(f"(<!-- {re.escape(start)} -->\n).*?(<!-- {re.escape(end)} -->)", re.DOTALL)
    text = DOCS.read_text()
    if not block.search(text):   # a block renamed or lost: say so, not write nothing silently
        raise SystemExit(f"{DOCS} has no <!-- {start} --> block to replace")
    DOCS.write_text(block.sub(lambda m: f"{m[1]}{header}\n\n{markdown}\n{m[2]}", text))


# ---------------------------------------------------------------- pages (issue 12)


def load(url: str, path: str, clients: int, requests: int, fresh: bool = False) -> dict:
    """`clients` threads, each sending `requests` GETs of one path on its own keep-alive connection, as a
    browser does (gzip accepted; `fresh`: no kept answer): every latency, the p95 and the bytes of one response."""
    headers = {"Accept-Encoding": "gzip", **({"Cache-Control": "no-cache"} if fresh else {})}
    def client(_) -> list[float]:
        connection, took = http.client.HTTPConnection(url.split("//")[1], timeout=120), []
        for _ in range(requests):
            began = time.perf_counter()
            connection.request("GET", path, headers=headers)
            response = connection.getresponse()
            body = response.read()
            if response.status != 200:
                sys.exit(f"{path}: HTTP {response.status}: {body[:300]!r}")
            took.append(time.perf_counter() - began)
            client.bytes = len(body)
        connection.close()
        return took
    with ThreadPoolExecutor(clients) as pool:
        took = sorted(t for times in pool.map(client, range(clients)) for t in times)
    return {"p95_s": took[int(0.95 * (len(took) - 1))], "median_s": statistics.median(took), "bytes": client.bytes}


def chart_drawn(url: str, runs: int) -> list[float]:
    """Seconds from navigation to the chart drawn (#chart[data-drawn]) in headless Chromium, each run in a new
    browser context (an empty cache, as a first visit)."""
    from playwright.sync_api import sync_playwright
    times = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=shutil.which("chromium"), args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        for _ in range(runs):
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e, errors=errors: errors.append(str(e)))
            page.goto(url)
            page.wait_for_selector("#chart[data-drawn=true]", timeout=60_000)
            # from the navigation's start to the page's own mark (reading performance.now() here instead added
            # Playwright's round trip, 0.1-0.2 s, to every run)
            times.append(page.evaluate("performance.getEntriesByName('chart drawn')[0].startTime") / 1000)
            if errors:
                sys.exit(f"{url}: JavaScript errors: {errors}")
            context.close()
        browser.close()
    return times


# views whose answers the build does not store (answers.py): asked afresh, their query runs
NOT_STORED = {"heatmap, one tier (runs its query)": "/liquidations/heatmap.json?_shape=array&leverage=10",
              "levels, one side (runs its query)": "/liquidations/levels.json?_shape=array&side=long"}
PAGES = {"heatmap": "/heatmap"}   # chart pages timed in Chromium: name -> path


def served_db(db: Path | None, folder: str) -> Path:
    """--db, or the 30-day demo simulated and built in `folder`."""
    if db is not None:
        return db
    print("simulating and building the 30-day demo ...", file=sys.stderr)
    for command in (["demo", "--out", f"{folder}/raw"], ["build", "--data", f"{folder}/raw", "--db", f"{folder}/l.db"]):
        subprocess.run([sys.executable, str(ROOT / "build.py"), *command], check=True, capture_output=True)
    return Path(folder) / "l.db"


def stored_queries() -> list[str]:
    import yaml
    return list(yaml.safe_load((ROOT / "datasette.yaml").read_text())["databases"]["liquidations"]["queries"])


def add_server_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", type=Path, help="a built SQLite file (default: build the 30-day demo first)")
    parser.add_argument("--setting", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="override one of datasette.yaml's settings, e.g. --setting num_sql_threads 0")


def pages_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="benchmark.py pages", description="The served pages and stored queries: "
                                     "latency under load beside the floor, and the heatmap drawn in Chromium.")
    add_server_arguments(parser)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=25, help="requests per client and path")
    parser.add_argument("--draws", type=int, default=5, help="page loads timed in Chromium (0: none)")
    parser.add_argument("--readme", action="store_true", help="also write the table into docs/performance.md's pages block")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="benchmark-pages-") as name:
        process, url = start_server(served_db(args.db, name), args.setting)
        try:
            floor = load(url, "/-/versions.json", args.clients, args.requests)
            rows = [("floor: /-/versions.json", floor, floor)]
            rows += [(f"stored query {q}", *(load(url, f"/liquidations/{q}.json?_shape=array", args.clients, args.requests,
                                                  fresh) for fresh in (True, False))) for q in stored_queries()]
            rows += [(what, *(load(url, path, args.clients, args.requests, fresh) for fresh in (True, False)))
                     for what, path in NOT_STORED.items()]
            draws = {page: chart_drawn(url + path, args.draws) for page, path in PAGES.items()} if args.draws else {}
        finally:
            process.terminate()
            process.wait(timeout=10)
    settings = "".join(f"; {name} {value}" for name, value in args.setting)
    header = (f"{args.clients} clients x {args.requests} requests per path on loopback{settings}; {machine()}; "
              f"{dt.date.today()}")
    table = [("what", "p95 asked afresh", "vs the floor", "p95 asked again", "vs the floor", "bytes sent (gzip)", "target")]
    table += [(what, f"{1000 * fresh['p95_s']:.1f} ms", f"{fresh['p95_s'] / floor['p95_s']:.1f}x",
               f"{1000 * again['p95_s']:.1f} ms", f"{again['p95_s'] / floor['p95_s']:.1f}x", f"{fresh['bytes']:,}",
               "<= 3x the floor" if what.endswith(" heatmap") else
               ("" if what.startswith("floor") or "runs its query" in what else "<= 100 ms"))
              for what, fresh, again in rows]
    table += [(f"{page} page: chart drawn in Chromium (median of {len(times)})", f"{statistics.median(times):.2f} s",
               "", "runs: " + ", ".join(f"{t:.2f}" for t in times), "", "", "<= 1 s") for page, times in draws.items()]
    print(header)
    for row in table:
        print(f"{row[0]:52}{row[1]:>17}{row[2]:>9}{row[3]:>28}{row[4]:>9}{row[5]:>12}  {row[6]}")
    if args.readme:
        write_readme_table("pages benchmark: python tools/benchmark.py pages", "end of pages benchmark", header, table)



def load_main(argv: list[str]) -> None:
    """A bounded load test of the server (issue 13): tools/load_benchmark.py."""
    from load_benchmark import main as load
    load(argv)


def fanout_main(argv: list[str]) -> None:
    """`build --symbols all` on the local cluster against one after another (issue 32): tools/fanout_benchmark.py."""
    from fanout_benchmark import main as fanout
    fanout(argv, machine)


if __name__ == "__main__":
    mode = {"pages": pages_main, "load": load_main, "fanout": fanout_main}.get(sys.argv[1] if len(sys.argv) > 1 else "")
    mode(sys.argv[2:]) if mode else main()
