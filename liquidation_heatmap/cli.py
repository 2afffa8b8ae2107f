"""The command line: `build.py` (or the installed `liquidation-heatmap`) and its commands, a thin layer that
turns arguments into the typed options of options.py and calls the module that does the job.

    python build.py                  simulate demo data if data/raw has none, build, say how to serve
    python build.py demo  [--out DIR] [--days 30] [--seed 1] [--symbol BTCUSDT] [--trades-per-day N]
    python build.py build [--data DIR] [--db data/liquidations.db] [--symbol S] [--start D] [--end D]
    python build.py build --symbols all|A,B|@FILE [--workers N | --scheduler ADDRESS] [...]
    python build.py fetch --symbol BTCUSDT --start D --end D [--types T,..] [--data DIR] [--base-url URL]
    python build.py fetch --symbol BTCUSDT --today [--start D] [--rest-url URL]
    python build.py report [--db DB] [--readme]
    python build.py serve [--db data/liquidations.db] [--port 8001]
    python build.py record [--out data/recorded] [--symbol S] [--url URL] [--renew-after 23h]
    python build.py follow --symbol BTCUSDT [--data DIR] [--db DB] [--every 5] [--liquidations data/recorded]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys
from pathlib import Path

from .fanout import fan_out, fetch_symbols
from .fetch import FETCH_TYPES, VISION_URL, fetch
from .files import demo_build_command, has_binance_files
from .follow import follow
from .options import (
    DEFAULT_HORIZONS,
    BuildOptions,
    DemoOptions,
    FetchOptions,
    FollowOptions,
    RecordOptions,
    ReportOptions,
    ServeOptions,
    default_memory_limit,
)
from .pipeline import build, demo
from .project import DATA_DIR, DEFAULT_DB, DEMO_DIR, HOME, BuildError, command_line, log, shown
from .record import FORCE_ORDER_URL, duration, record
from .report import report
from .rest import REST_URL, fetch_today
from .serve import serve


def default_run(_: None) -> None:
    """Build the Binance files under data/raw; with none there (a fresh clone), the demo: simulated once into
    data/demo/raw and built into its own database, data/demo/liquidations.db, never mixed with real files."""
    if has_binance_files(DATA_DIR):
        db_path = build(BuildOptions(data=DATA_DIR, db=DEFAULT_DB))
    else:
        log(f"no Binance files under {DATA_DIR}: building the demo (simulated data) in {DEMO_DIR}")
        if not has_binance_files(DEMO_DIR / "raw"):
            demo(DemoOptions(out=DEMO_DIR / "raw"))
        db_path = build(BuildOptions(data=DEMO_DIR / "raw", db=DEMO_DIR / DEFAULT_DB.name))
    print(f"\nBuilt {shown(db_path)}. Browse it:  {command_line('serve')}  ->  http://127.0.0.1:8001/ (the heatmap: /heatmap)")


def demo_command(args: DemoOptions) -> None:
    """`build.py demo`: the files, then the command that builds them."""
    demo(args)
    print(f"\nBuild them:  {demo_build_command(args.out)}")


def fetch_command(args: FetchOptions) -> None:
    """`build.py fetch`: Binance's files of past days, or with --today the days it has not published yet."""
    if args.symbols:
        args.symbol = list(dict.fromkeys([*args.symbol, *fetch_symbols(args)]))
    if not args.symbol:
        raise BuildError("fetch needs --symbol SYMBOL (repeatable) or --symbols all|A,B|@FILE")
    (fetch_today if args.today else fetch)(args)


def build_command(args: BuildOptions) -> None:
    """`build.py build`: one build, or with --symbols one per symbol, merged (fanout.py)."""
    fan_out(args) if args.symbols else build(args)


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every option's default, where it has one its help does not already name."""
    def _get_help_string(self, action):
        empty = action.default in (None, [], False) or action.default is argparse.SUPPRESS
        return action.help if empty or "default" in (action.help or "") else super()._get_help_string(action)


def seconds(text: str) -> float:
    try:
        return duration(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def port(text: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is no TCP port (1-65535)")
    return int(text)


BUILT_DB_HELP = "built SQLite file (default: data/liquidations.db, or the demo's data/demo/liquidations.db without it)"


def parse_args(argv: list[str]) -> argparse.Namespace:
    date = dt.date.fromisoformat
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name or "build.py", description=DESCRIPTION + " With no command: "
                                     "build the Binance files under data/raw (simulating the demo if there are none).")
    commands = parser.add_subparsers(dest="command")
    add = functools.partial(commands.add_parser, formatter_class=DefaultsShown)
    p = add("demo", help="write simulated Binance files (deterministic for a seed)")
    p.add_argument("--out", type=Path, default=DEMO_DIR / "raw", help="folder to write the Binance files into")
    p.add_argument("--days", type=int, default=30, help="days to simulate")
    p.add_argument("--seed", type=int, default=1, help="the simulator's seed: the same seed, the same files")
    p.add_argument("--symbol", default="BTCUSDT", help="symbol the files are named for")
    p.add_argument("--start", type=date, default="2024-09-01", help="first simulated day (YYYY-MM-DD)")
    p.add_argument("--trades-per-day", type=int, default=20_000, help="aggTrades per day (real: 2-3 million)")
    p.add_argument("--force-order-stream", type=Path, metavar="DIR",
                   help="also write what a recorder of Binance's liquidation stream would have (per symbol, the latest "
                   "liquidation of each second) into DIR, outside --out: build it with --liquidations DIR")
    p = add("build", help="ingest Binance files, run the SQL models, write SQLite")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="folder of Binance files (Vision layout or flat)")
    p.add_argument("--db", type=Path, default=DEFAULT_DB, help="SQLite file to write (DuckDB file beside it)")
    p.add_argument("--symbol", action="append", default=[], type=str.upper, help="only this symbol (repeatable)")
    p.add_argument("--start", type=date, help="first day to use (YYYY-MM-DD, UTC)")
    p.add_argument("--end", type=date, help="last day to use, inclusive")
    p.add_argument("--liquidations", action="append", default=[], metavar="PATH",
                   help="realized liquidations: liquidationSnapshot, forceOrder or aggregated CSV (file or folder)")
    p.add_argument("--param", action="append", default=[], metavar="NAME=VALUE",
                   help="override one model parameter (see the model_parameters table)")
    p.add_argument("--parameters", metavar="CSV", help="model parameters file (default sql/seeds/model_parameters.csv)")
    p.add_argument("--leverage-tiers", metavar="CSV", help="leverage tiers file (leverage,weight,typical_notional_usd)")
    p.add_argument("--maintenance-brackets", metavar="CSV", help="maintenance bracket table (default: BTCUSDT's)")
    p.add_argument("--horizons", help="backtest forecast horizons; one finer than the data's bars or its liquidation "
                   f"export's period is refused, and left out of the default (default: {DEFAULT_HORIZONS})")
    p.add_argument("--memory-limit", default=default_memory_limit(),
                   help="DuckDB's memory limit, e.g. 4GB (the default is a quarter of RAM); beyond it, work spills to disk")
    p.add_argument("--cache", type=Path, help="staged Parquet of every file read (default: cache/ beside --db)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                   help="files staged in parallel (the default is one per core)")
    p.add_argument("--full", action="store_true",
                   help="recompute everything (default: only what new, changed or removed files change)")
    p.add_argument("--no-stored-answers", dest="stored_answers", action="store_false",
                   help="leave out the stored answers (the views pages ask for first, rendered by Datasette at the end "
                   "of a build, a few seconds): for a database only scored or queried, never served")
    p.add_argument("--symbols", metavar="all|A,B|@FILE", help="a build per symbol, as tasks of a Dask cluster "
                   "(pip install -e '.[cluster]'; without it one after another), each into DB_FOLDER/symbols/SYMBOL/, "
                   "then all merged into --db: 'all' (every symbol with files under --data), a comma list, or a file "
                   "of one a line; --memory-limit is shared by the local cluster's builds")
    p.add_argument("--workers", type=int, help="--symbols: the local cluster's workers, each building one symbol at a "
                   "time (default: one per core; 1: one after another)")
    p.add_argument("--scheduler", metavar="ADDRESS", help="--symbols: a running Dask cluster's scheduler (e.g. "
                   "tcp://10.0.0.5:8786) instead of a local one; its workers must see --data and --db at the same paths")
    p = add("fetch", help="download Binance files with their CHECKSUMs into the Vision layout")
    p.add_argument("--symbol", action="append", default=[], type=str.upper, help="e.g. BTCUSDT (repeatable)")
    p.add_argument("--symbols", metavar="all|A,B|@FILE", help="symbols as `build --symbols` takes them; 'all': every "
                   "USD-M perpetual Binance trades now (its exchangeInfo, from --rest-url)")
    p.add_argument("--start", type=date, help="first day (YYYY-MM-DD, UTC); required but with --today, where it "
                   "defaults to today")
    p.add_argument("--end", type=date, help="last day, inclusive (its month for fundingRate); required, but not with --today "
                   "(which ends now)")
    p.add_argument("--types", default=",".join(FETCH_TYPES), help="comma-separated Binance types")
    p.add_argument("--interval", default="1m", help="kline interval of klines and markPriceKlines")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="folder to write (what `build --data` reads)")
    p.add_argument("--base-url", default=VISION_URL, help="data.binance.vision or a mirror with its layout")
    p.add_argument("--jobs", type=int, default=4, help="parallel downloads")
    p.add_argument("--retries", type=int, default=4, help="tries per request on timeouts, dropped connections, 5xx")
    p.add_argument("--retry-delay", type=float, default=1.0, help="first backoff in seconds, doubled each try")
    p.add_argument("--today", action="store_true",
                   help="the days Binance has not published yet: today so far (or from --start) from its REST API, "
                   "into NAME.partial.csv files that the build reads and reports as partial until `fetch` gets "
                   "Binance's own file; run again to add what is new")
    p.add_argument("--rest-url", default=REST_URL, help="Binance's USD-M futures REST API (--today), or a server "
                   "answering like it")
    p = add("report", help="print the backtest's scores and skill as a Markdown table")
    p.add_argument("--db", type=Path, help=BUILT_DB_HELP)
    p.add_argument("--readme", action="store_true", help="also write both tables into their blocks in docs/backtest.md")
    p.add_argument("--seeds", default="101,102,103", type=lambda text: [int(n) for n in text.split(",") if n],
                   help="simulator seeds to score beside the demo (comma-separated; '' for none)")
    p.add_argument("--seed-days", type=int, default=10, help="days simulated for a seed that is not built yet")
    p.add_argument("--seeds-dir", type=Path, default=HOME / "data" / "seeds", help="the seeds' builds: DIR/seed-N/")
    p.add_argument("--rebuild", action="store_true", help="simulate and build the seeds again")
    p.add_argument("--csv", type=Path, default=HOME / "data" / "backtest_skill.csv", help="skills CSV to write")
    p.add_argument("--before", type=Path, default=HOME / "data" / "backtest_skill_before.csv",
                   help="skills CSV of the models before, compared in the table")
    p = add("serve", help="run Datasette on the built SQLite file (read only: served immutable)")
    p.add_argument("--db", type=Path, help=BUILT_DB_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, "
                   "so other machines can reach it)")
    p.add_argument("--port", type=port, default=8001, help="port to listen on")
    p = add("record", help="record Binance's realized liquidations (the forceOrder stream) into daily CSV files, "
            "until stopped")
    p.add_argument("--out", type=Path, default=HOME / "data" / "recorded",
                   help="folder of the daily forceOrder-YYYY-MM-DD.csv files and the gaps (what `build --liquidations` reads)")
    p.add_argument("--symbol", action="append", default=[], type=str.upper, help="only this symbol (repeatable; "
                   "default: every symbol)")
    p.add_argument("--url", default=FORCE_ORDER_URL, help="the all-market forceOrder stream, or a server with its messages")
    p.add_argument("--renew-after", type=seconds, default="23h", help="open a new connection (before closing the old) "
                   "this often: Binance closes every connection after 24 hours")
    p.add_argument("--heartbeat", type=seconds, default="10s", help="ping this often; no pong within three "
                   "heartbeats is a dropped connection; the state file learns the recorder is connected")
    p.add_argument("--retry-delay", type=seconds, default="1s", help="first backoff after a failed connect, doubled "
                   "each failure (with jitter)")
    p.add_argument("--max-retry-delay", type=seconds, default="60s", help="the backoff's cap")
    p = add("follow", help="every few minutes: fetch what is new (Binance's files of the last days, today so far from "
            "its REST API) and build it incrementally, until stopped; a running `serve` shows each new build")
    p.add_argument("--symbol", action="append", required=True, type=str.upper, help="e.g. BTCUSDT (repeatable)")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="folder of the files, fetched and built")
    p.add_argument("--db", type=Path, default=DEFAULT_DB, help="SQLite file to write (and `serve`)")
    p.add_argument("--every", dest="every_min", type=float, default=5.0, help="minutes from one cycle's start to the next's")
    p.add_argument("--days-back", type=int, default=2, help="days before today whose Binance files are asked for "
                   "again until they come (they appear hours after a day ends, at no set hour)")
    p.add_argument("--start", type=date, help="the build's first day (default: every file under --data)")
    p.add_argument("--liquidations", type=Path, action="append", default=[],
                   help="realized liquidations to score against, e.g. `record`'s folder (repeatable)")
    p.add_argument("--base-url", default=VISION_URL, help="Binance's public data site, or a mirror of it")
    p.add_argument("--rest-url", default=REST_URL, help="Binance's USD-M futures REST API, or a server answering like it")
    p.add_argument("--interval", default="1m", help="kline interval of klines and markPriceKlines")
    p.add_argument("--retries", type=int, default=4, help="tries per request on timeouts, dropped connections, 5xx")
    p.add_argument("--retry-delay", type=float, default=1.0, help="first backoff in seconds, doubled each try")
    p.add_argument("--memory-limit", default=default_memory_limit(), help="DuckDB's memory limit for each build")
    p.add_argument("--cycles", type=int, default=0, help="stop after this many cycles (0: never)")
    return parser.parse_args(argv)


DESCRIPTION = "Liquidation Heatmap: Binance USD-M futures files -> DuckDB SQL models -> SQLite -> Datasette."
COMMANDS = {"demo": (demo_command, DemoOptions), "build": (build_command, BuildOptions), "fetch": (fetch_command, FetchOptions),
            "report": (report, ReportOptions), "serve": (serve, ServeOptions), "record": (record, RecordOptions),
            "follow": (follow, FollowOptions), None: (default_run, None)}


def options(args: argparse.Namespace):
    """The parsed arguments as the command's typed options (None for the default run, which has none)."""
    kind = COMMANDS[args.command][1]
    return kind and kind(**{name: value for name, value in vars(args).items() if name != "command"})


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        COMMANDS[args.command][0](options(args))
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
