"""One input file as the build carries it: what its name says (files.py), then what checking and staging it
found (stage.py), then its row in src_files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class SourceFile:
    path: Path
    symbol: str                      # "*" for a realized-liquidation file that may hold any symbol
    data_type: str                   # Binance's type (metrics, klines, ...) or forceOrder / liquidationsAggregated
    kline_interval: str | None       # klines and mark-price klines: 1m, 1h, ...
    period: str                      # YYYY-MM-DD or YYYY-MM; "" for a realized-liquidation file
    name: str = ""                   # as reports name it: relative to --data where it is under it
    # found by checking and staging
    status: str | None = None        # loaded, quarantined or skipped
    problem: str | None = None       # a data_quality problem kind, when not loaded
    detail: str | None = None
    sha256: str | None = None
    checksum: str | None = None      # ok, mismatch or absent (Binance's .CHECKSUM beside a zip)
    target: Path | None = None       # its place in the staging cache (without suffix)
    has_header: bool | None = None
    csv_path: str | None = None      # while staged: the CSV read out of the zip
    raw_path: Path | None = None     # while staged: the Parquet as read, before the checks
    staged_path: str | None = None   # the Parquet the build reads
    quality: list[dict] = field(default_factory=list)   # stage_quality rows
    file_id: int | None = None
    rows_read: int | None = None
    rows_staged: int | None = None
    first_ts: str | None = None
    last_ts: str | None = None
