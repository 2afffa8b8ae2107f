"""Binance's files as the build finds them: their names (SYMBOL-TYPE-PERIOD), the Vision layout or a flat
folder, realized-liquidation files known by their header, and what to say when there are none."""

from __future__ import annotations

import datetime as dt
import functools
import re
import zipfile
from dataclasses import replace
from pathlib import Path

from . import archives
from .project import DATA_DIR, DEFAULT_DB, DEMO_DIR, BuildError, command_line, shown
from .source_file import SourceFile
from .stage import KLINE_TYPES, SOURCE_TABLES

# Binance names every file SYMBOL-TYPE-PERIOD, or SYMBOL-INTERVAL-PERIOD for the kline types, whose
# type is then the name of a parent folder.
FILE_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-(?P<kind>[A-Za-z]+|\d+[smhdwM])-(?P<period>\d{4}-\d{2}(?:-\d{2})?)"
    r"(?P<partial>\.partial(?=\.csv$))?\.(?P<ext>zip|csv)$"
)

# What `fetch --today` writes beside the zip Binance will publish (NAME.zip -> NAME.partial.csv): the day so far,
# from Binance's REST API. It is read until Binance's own file (NAME.zip or NAME.csv) is beside it.
PARTIAL_SUFFIX = ".partial.csv"


def partial_path(vision_path: Path) -> Path:
    return vision_path.with_name(vision_path.name.removesuffix(".zip") + PARTIAL_SUFFIX)


# Realized liquidations that are not Binance files, known by their header: a recorded forceOrder
# stream, and aggregated exports with one row per period; and the gaps of a recording (`build.py record`).
LIQUIDATION_HEADERS = {"forceOrder": {"timestamp", "symbol", "side", "avg_price", "filled_qty", "usd_value"},
                       "liquidationsAggregated": {"time", "long_usd", "short_usd"},
                       "recordingGaps": {"from_ts", "to_ts", "reason"}}


# Files of realized liquidations, which the backtest scores against.
REALIZED_TYPES = ("liquidationSnapshot", "forceOrder", "liquidationsAggregated")


def parse_file_name(path: Path) -> SourceFile | None:
    """What a Binance file holds, from its name and folders; None for any other file."""
    match = FILE_NAME.match(path.name)
    if not match:
        return None
    kind, interval = match["kind"], None
    if kind[0].isdigit():  # a kline interval: the type is the nearest kline-type folder
        interval = kind
        kind = next((p for p in reversed(path.parts[:-1]) if p in KLINE_TYPES), "klines")
    if kind not in SOURCE_TABLES:
        return None
    return SourceFile(path=path, symbol=match["symbol"], data_type=kind, kline_interval=interval, period=match["period"])


def period_overlaps(period: str, start: dt.date | None, end: dt.date | None) -> bool:
    first = dt.date.fromisoformat(period if len(period) == 10 else period + "-01")
    last = first if len(period) == 10 else (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    return (start is None or last >= start) and (end is None or first <= end)


def liquidation_file(path: Path) -> SourceFile | None:
    """A forceOrder recording or an aggregated liquidation export (csv, or zip of one), by its header."""
    try:
        if path.suffix == ".zip":
            with zipfile.ZipFile(path) as archive, archive.open(archive.namelist()[0]) as f:
                line = f.readline()
        else:
            with path.open("rb") as f:
                line = f.readline()
        columns = set(line.decode(errors="replace").strip().lstrip("\ufeff").lower().split(","))
    except (OSError, zipfile.BadZipFile, IndexError):
        return None
    kind = next((kind for kind, needed in LIQUIDATION_HEADERS.items() if needed <= columns), None)
    return kind and SourceFile(path=path, symbol="*", data_type=kind, kline_interval=None, period="")


def recognise(path: Path) -> SourceFile | None:
    return parse_file_name(path) or (liquidation_file(path) if path.suffix in (".csv", ".zip") else None)


def discover(data_dir: Path, symbols: list[str], start, end, liquidations: list[Path] = ()) -> list[SourceFile]:
    """Every Binance file under data_dir (Vision layout or flat), zip preferred over a same-named csv,
    and every realized-liquidation file there or under --liquidations."""
    if not data_dir.is_dir():
        raise BuildError(no_data_advice(data_dir) or f"data folder {data_dir} does not exist (give one with --data)")
    given = [p for path in map(Path, liquidations)  # a folder's csv and zip files (not its .CHECKSUMs), or a file
             for p in ([q for q in sorted(path.rglob("*")) if q.suffix in (".csv", ".zip")] if path.is_dir() else [path])]
    if unknown := [str(p) for p in given if p.is_file() and not recognise(p) or not p.exists()]:
        raise BuildError(f"--liquidations {unknown[0]}: not a liquidationSnapshot, forceOrder (timestamp,symbol,side,"
                         "avg_price,filled_qty,usd_value), aggregated (time,long_usd,short_usd) or recording gaps "
                         "(from_ts,to_ts,reason) file")
    found: dict[tuple, list[SourceFile]] = {}
    for path in sorted(data_dir.rglob("*")) + [p for p in given if p.is_file()]:
        info = recognise(path) if path.is_file() else None
        if info and (not symbols or info.symbol in (*symbols, "*")) and (
                not info.period or period_overlaps(info.period, start, end)):
            # how files are named in every report
            info.name = str(path.relative_to(data_dir) if path.is_relative_to(data_dir) else path)
            found.setdefault((path.parent.resolve(), path.stem.removesuffix(".partial")), []).append(info)
    files = []
    for zip_first in (sorted(same, key=lambda info: (info.path.suffix != ".zip", info.path.name.endswith(PARTIAL_SUFFIX)))
                      for same in found.values()):
        files.append(zip_first[0])
        for copy in zip_first[1:]:  # X.zip and X.csv side by side (an unzipped download): the zip is read
            if copy.path.name.endswith(PARTIAL_SUFFIX):   # Binance's file for the day is there: it replaces the partial
                files.append(replace(copy, status="skipped", problem="partial_replaced", detail=f"not read: "
                                     f"{zip_first[0].name}, Binance's file of the same period, is read instead"))
                continue
            same = archives.same_as_zip(copy.path, zip_first[0].path)
            files.append(replace(copy, status="skipped", problem="unzipped_copy" if same else "csv_differs_from_zip",
                                 detail=f"not read: {zip_first[0].name} beside it is read, "
                                 + ("and holds the same CSV" if same else "and the CSV inside it differs from this one")))
    check_not_mixed([info for info in files if info.path.is_relative_to(data_dir)])
    return files


@functools.cache
def simulated(folder: Path) -> bool:
    """Whether a folder is inside what `build.py demo` wrote (it writes simulator/params.json at its top)."""
    return (folder / "simulator" / "params.json").is_file() or folder.parent != folder and simulated(folder.parent)


def check_not_mixed(files: list[SourceFile]) -> None:
    """Simulated and real Binance files under one --data would merge into one series (both are BTCUSDT): refuse.
    (Realized-liquidation recordings, known by their header, are not Binance's files, and files given with
    --liquidations are the user's explicit choice: either may go with any build.)"""
    kinds = {simulated(info.path.resolve().parent): info.name for info in files if info.period}
    if len(kinds) == 2:
        raise BuildError(f"refusing to mix simulated files (e.g. {kinds[True]}, written by `build.py demo`) with real "
                         f"ones (e.g. {kinds[False]}) in one build: build each folder apart with --data")


def interval_seconds(name: str) -> int | None:
    """A Binance interval name as seconds ('4h' -> 14400), as sql/sources/macros.sql's interval_seconds; None if none."""
    match = re.fullmatch(r"(\d+)([smhdwM])", name.strip())
    return match and int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000}[match[2]]


def interval_name(seconds: int) -> str:
    """Seconds as a Binance interval name: 14400 -> '4h' (sql/backtest/windows.sql's interval_name)."""
    return next(f"{seconds // n}{unit}" for n, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")) if seconds % n == 0)


def has_binance_files(folder: Path) -> bool:
    return any(parse_file_name(p) for p in folder.rglob("*"))


def demo_build_command(out: Path) -> str:
    """The build of the files `demo --out` wrote, into a database of their own beside them (the demo's:
    data/demo/liquidations.db), apart from the real data's."""
    return command_line("build", "--data", shown(out), "--db", shown(Path(out).absolute().parent / DEFAULT_DB.name))


def no_data_advice(data_dir: Path) -> str | None:
    """What to run when data/raw, the default --data, holds no Binance files (a fresh clone): the demo's build,
    with the exact command; None for any other folder."""
    if data_dir.resolve() != DATA_DIR.resolve() or data_dir.is_dir() and has_binance_files(data_dir):
        return None
    where = f"no Binance files under {shown(DATA_DIR)}, where `fetch` writes them (see `{command_line('fetch', '--help')}`)"
    if has_binance_files(DEMO_DIR / "raw"):
        return (f"{where}. The demo's simulated files are in {shown(DEMO_DIR / 'raw')}: build them, into a database "
                f"of their own, with\n  {demo_build_command(DEMO_DIR / 'raw')}\nor simply\n  {command_line()}")
    return f"{where}. To simulate the demo and build it, into {shown(DEMO_DIR / DEFAULT_DB.name)}, run\n  {command_line()}"
