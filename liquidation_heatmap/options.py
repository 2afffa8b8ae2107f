"""What each command is asked to do, typed: the command line (cli.py) fills these, and so does any caller
(a report building its seeds, the default run building the demo) without going through argument parsing.
The defaults are the command line's."""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from pathlib import Path

from .fetch import FETCH_TYPES, VISION_URL
from .project import DATA_DIR, DEFAULT_DB, DEMO_DIR, ROOT

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


@dataclass
class FetchOptions:
    symbol: list[str]
    start: dt.date
    end: dt.date
    types: str = ",".join(FETCH_TYPES)                # comma-separated Binance types
    interval: str = "1m"
    data: Path = DATA_DIR
    base_url: str = VISION_URL
    jobs: int = 4
    retries: int = 4
    retry_delay: float = 1.0


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
