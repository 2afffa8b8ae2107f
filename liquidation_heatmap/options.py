"""What each command is asked to do, typed: the command line (cli.py) fills these, and so does any caller
(a report building its seeds, the default run building the demo) without going through argument parsing.
The defaults are the command line's."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fetch import FETCH_TYPES, VISION_URL
from .project import DATA_DIR, DEFAULT_DB, DEMO_DIR, HOME, ROOT
from .record import FORCE_ORDER_URL
from .rest import REST_URL

DEFAULT_HORIZONS = "1h,4h,24h"   # the backtest's horizons unless --horizons says otherwise


def default_memory_limit() -> str:
    """A quarter of the machine's RAM, so a build leaves room for everything else on a laptop."""
    return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 4 // 2**20}MB"


@dataclass
class DemoOptions:
    out: Path = DEMO_DIR / "raw"
    days: int = 30
    seed: int = 1
    symbol: str = "BTCUSDT"
    start: dt.date = dt.date(2024, 9, 1)
    trades_per_day: int = 20_000
    force_order_stream: Path | None = None   # also write what a recorder of !forceOrder@arr would have, here


@dataclass
class BuildOptions:
    data: Path = DATA_DIR
    db: Path = DEFAULT_DB
    symbol: list[str] = field(default_factory=list)
    start: dt.date | None = None
    end: dt.date | None = None
    liquidations: list[Path] = field(default_factory=list)
    param: list[str] = field(default_factory=list)   # NAME=VALUE overrides of model parameters
    parameters: str | None = None                     # CSV files replacing the seeds
    leverage_tiers: str | None = None
    maintenance_brackets: str | None = None
    horizons: str | None = None                       # None: DEFAULT_HORIZONS, those the data cannot score left out
    memory_limit: str = field(default_factory=default_memory_limit)
    cache: Path | None = None                         # None: cache/ beside db
    jobs: int = os.cpu_count() or 1
    full: bool = False
    stored_answers: bool = True                       # False: a database scored or queried, never served
    symbols: str | None = None                        # build --symbols all|A,B|@FILE: a build per symbol (fanout.py)
    scheduler: str | None = None                      # a running Dask scheduler's address (None: a local cluster)
    workers: int | None = None                        # the local cluster's workers (None: one per core)


@dataclass
class FetchOptions:
    symbol: list[str]
    start: dt.date | None = None                      # None: --today's day (required without --today)
    end: dt.date | None = None
    types: str = ",".join(FETCH_TYPES)                # comma-separated Binance types
    interval: str = "1m"
    data: Path = DATA_DIR
    base_url: str = VISION_URL
    jobs: int = 4
    retries: int = 4
    retry_delay: float = 1.0
    today: bool = False                               # from Binance's REST API up to now, into .partial.csv files
    rest_url: str = REST_URL
    symbols: str | None = None                        # all (Binance's exchangeInfo), A,B or @FILE: added to symbol


@dataclass
class ReportOptions:
    db: Path | None = None
    readme: bool = False
    seeds: list[int] = field(default_factory=lambda: [101, 102, 103])
    seed_days: int = 10
    seeds_dir: Path = ROOT / "data" / "seeds"
    rebuild: bool = False
    csv: Path = ROOT / "data" / "backtest_skill.csv"
    before: Path = ROOT / "data" / "backtest_skill_before.csv"


@dataclass
class ServeOptions:
    db: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8001


@dataclass
class RecordOptions:
    out: Path = HOME / "data" / "recorded"
    symbol: list[str] = field(default_factory=list)     # empty: every symbol
    url: str = FORCE_ORDER_URL
    renew_after: float = 23 * 3600                      # seconds: before Binance closes a connection at 24 hours
    heartbeat: float = 10.0                             # seconds between pings (and state file writes)
    retry_delay: float = 1.0                            # the first backoff, seconds, doubled at each failure
    max_retry_delay: float = 60.0


@dataclass
class FollowOptions:
    symbol: list[str]
    data: Path = DATA_DIR
    db: Path = DEFAULT_DB
    every_min: float = 5.0                            # minutes from the start of a cycle to the start of the next
    days_back: int = 2                                # the days before today whose Binance files are asked for again
    start: dt.date | None = None                      # the build's first day (None: every file under data)
    liquidations: list[Path] = field(default_factory=list)   # e.g. `record`'s folder
    base_url: str = VISION_URL
    rest_url: str = REST_URL
    interval: str = "1m"
    retries: int = 4
    retry_delay: float = 1.0
    memory_limit: str = field(default_factory=default_memory_limit)
    cycles: int = 0                                   # 0: for ever
