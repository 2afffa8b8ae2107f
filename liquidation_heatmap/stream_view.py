"""What a recorder of Binance's all-market liquidation stream (!forceOrder@arr) would have written for the
liquidations of liquidationSnapshot files: `build.py demo --force-order-stream DIR` writes it for the simulated
market, so the backtest can be scored against an undercounted recording as it would be on real recorded data.

The stream is a snapshot, not every liquidation: per symbol, Binance pushes only the latest liquidation within
each 1000 ms. Here the windows are whole UTC seconds (ms // 1000) and "latest" is the largest trade time, the
later row of the file on a tie (the files are in time order). The recording format is the one the build reads
(files.py LIQUIDATION_HEADERS): `timestamp,symbol,side,avg_price,filled_qty,usd_value`, one file per UTC day,
forceOrder-YYYY-MM-DD.csv; timestamp is the trade time, naive UTC with microseconds; side as Binance's (SELL =
a long liquidated); usd_value = avg_price x filled_qty, exact. Rows of one day sort by time, then symbol.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import zipfile
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import NamedTuple

from .files import parse_file_name
from .recording import HEADER, day_file_name, from_ms, iso

WINDOW_MS = 1000                   # the stream pushes one liquidation per symbol per this many ms


class Liquidation(NamedTuple):
    trade_ms: int
    symbol: str
    side: str           # SELL = a long liquidated, BUY = a short
    avg_price: str      # as the file writes it (exact decimal text)
    filled_qty: str

    @property
    def usd_value(self) -> Decimal:
        return Decimal(self.avg_price) * Decimal(self.filled_qty)


def snapshot_liquidations(path: Path) -> list[Liquidation]:
    """One liquidationSnapshot file's rows (zip of one CSV, or the CSV), in file order: each filled at its
    average price (the order's price where Binance left it 0), its accumulated filled quantity."""
    info = parse_file_name(path)
    if info is None or info.data_type != "liquidationSnapshot":
        raise ValueError(f"{path}: not a liquidationSnapshot file (SYMBOL-liquidationSnapshot-YYYY-MM-DD.zip)")
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            text = archive.read(archive.namelist()[0]).decode()
    else:
        text = path.read_text()
    return [Liquidation(int(row["time"]), info.symbol, row["side"],
                        row["average_price"] if Decimal(row["average_price"]) else row["price"],
                        row["accumulated_fill_quantity"] if Decimal(row["accumulated_fill_quantity"])
                        else row["original_quantity"])
            for row in csv.DictReader(io.StringIO(text))]


def stream_snapshot(liquidations: Iterable[Liquidation]) -> list[Liquidation]:
    """What the stream pushes of these liquidations: per symbol and 1000 ms window, only the latest; in time order."""
    latest: dict[tuple[str, int], Liquidation] = {}
    for liquidation in liquidations:
        key = (liquidation.symbol, liquidation.trade_ms // WINDOW_MS)
        if key not in latest or liquidation.trade_ms >= latest[key].trade_ms:
            latest[key] = liquidation
    return sorted(latest.values(), key=lambda row: (row.trade_ms, row.symbol))


def recording_lines(liquidations: Iterable[Liquidation]) -> dict[dt.date, list[str]]:
    """The recording's lines (without header) per UTC day of the trade time, in the given order."""
    days: dict[dt.date, list[str]] = {}
    for row in liquidations:
        moment = from_ms(row.trade_ms)   # (as `record` writes an event: recording.py)
        days.setdefault(moment.date(), []).append(
            f"{iso(moment)},{row.symbol},{row.side},{row.avg_price},{row.filled_qty},{row.usd_value}\n")
    return days


def write_recording(snapshot_files: Iterable[Path], out_dir: Path) -> dict:
    """Write what a recorder of the stream would have written for these liquidationSnapshot files into
    out_dir/forceOrder-YYYY-MM-DD.csv (a day's file replaced whole); returns what it kept of the full stream."""
    full = [row for path in sorted(snapshot_files) for row in snapshot_liquidations(path)]
    kept = stream_snapshot(full)
    out_dir.mkdir(parents=True, exist_ok=True)
    days = recording_lines(kept)
    for day, lines in days.items():
        (out_dir / day_file_name(day)).write_text(HEADER + "".join(lines))
    full_usd, kept_usd = sum(row.usd_value for row in full), sum(row.usd_value for row in kept)
    return {"liquidations": len(full), "recorded": len(kept), "days": len(days),
            "volume_usd": float(full_usd), "recorded_volume_usd": float(kept_usd),
            "recorded_volume_share": float(kept_usd / full_usd) if full_usd else 1.0}
