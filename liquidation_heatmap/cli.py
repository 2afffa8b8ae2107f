"""The command line: `build.py` (or the installed `liquidation-heatmap`) and its commands, a thin layer that
turns arguments into the typed options of options.py and calls the module that does the job.

    python build.py                  simulate demo data if data/raw has none, build, say how to serve
    python build.py demo  [--out DIR] [--days 30] [--seed 1] [--symbol BTCUSDT] [--trades-per-day N]
    python build.py build [--data DIR] [--db data/liquidations.db] [--symbol S] [--start D] [--end D]
    python build.py fetch --symbol BTCUSDT --start D --end D [--types T,..] [--data DIR] [--base-url URL]
    python build.py report [--db DB] [--readme]
    python build.py serve [--db data/liquidations.db] [--port 8001]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import sys
from pathlib import Path

from .fetch import FETCH_TYPES, VISION_URL, fetch
from .files import demo_build_command, has_binance_files
from .options import (
    DEFAULT_HORIZONS,
    BuildOptions,
    DemoOptions,
    FetchOptions,
    ReportOptions,
    ServeOptions,
    default_memory_limit,
)
from .pipeline import build, demo
from .project import DATA_DIR, DEFAULT_DB, DEMO_DIR, HOME, BuildError, command_line, log, shown
from .report import report
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


class DefaultsShown(argparse.ArgumentDefaultsHelpFormatter):
    """--help with every option's default, where it has one its help does not already name."""
    def _get_help_string(self, action):
        empty = action.default in (None, [], False) or action.default is argparse.SUPPRESS
        return action.help if empty or "default" in (action.help or "") else super()._get_help_string(action)


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
    p = add("fetch", help="download Binance files with their CHECKSUMs into the Vision layout")
    p.add_argument("--symbol", action="append", required=True, type=str.upper, help="e.g. BTCUSDT (repeatable)")
    p.add_argument("--start", type=date, required=True, help="first day (YYYY-MM-DD, UTC)")
    p.add_argument("--end", type=date, required=True, help="last day, inclusive (its month for fundingRate)")
    p.add_argument("--types", default=",".join(FETCH_TYPES), help="comma-separated Binance types")
    p.add_argument("--interval", default="1m", help="kline interval of klines and markPriceKlines")
    p.add_argument("--data", type=Path, default=DATA_DIR, help="folder to write (what `build --data` reads)")
    p.add_argument("--base-url", default=VISION_URL, help="data.binance.vision or a mirror with its layout")
    p.add_argument("--jobs", type=int, default=4, help="parallel downloads")
    p.add_argument("--retries", type=int, default=4, help="tries per request on timeouts, dropped connections, 5xx")
    p.add_argument("--retry-delay", type=float, default=1.0, help="first backoff in seconds, doubled each try")
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
    return parser.parse_args(argv)


DESCRIPTION = "Liquidation Heatmap: Binance USD-M futures files -> DuckDB SQL models -> SQLite -> Datasette."
COMMANDS = {"demo": (demo_command, DemoOptions), "build": (build, BuildOptions), "fetch": (fetch, FetchOptions),
            "report": (report, ReportOptions), "serve": (serve, ServeOptions), None: (default_run, None)}


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
