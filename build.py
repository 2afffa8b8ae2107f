#!/usr/bin/env python3
"""Liquidation Heatmap: Binance USD-M futures files -> DuckDB SQL models -> SQLite -> Datasette.

    python build.py                  simulate demo data if data/raw has none, build, say how to serve
    python build.py demo  [--out DIR] [--days 30] [--seed 1] [--symbol BTCUSDT] [--trades-per-day N]
    python build.py build [--data DIR] [--db data/liquidations.db] [--symbol S] [--start D] [--end D]
    python build.py fetch --symbol BTCUSDT --start D --end D [--types T,..] [--data DIR] [--base-url URL]
    python build.py serve [--db data/liquidations.db] [--port 8001]

The logic lives in sql/ (run in file-name order); this script finds files, loads them, runs the SQL
and writes the outputs. Each step is a small function; the build is linear and idempotent.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import datetime as dt
import errno
import fcntl
import functools
import hashlib
import http.client
import json
import os
import random
import re
import shlex
import shutil
import signal
import socket
import sqlite3
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from importlib.metadata import version
from pathlib import Path

import duckdb
import sqlite_utils
import yaml

import answers
import stage
from stage import KLINE_TYPES, SOURCE_TABLES, checksum_status, sha256

ROOT = Path(__file__).resolve().parent
SQL_DIR = ROOT / "sql"
SQL_FILES = sorted(p.name for p in SQL_DIR.glob("*.sql"))  # 00_macros.sql, 01_sources.sql, then the layers
DATA_DIR = ROOT / "data" / "raw"                 # real Binance files (what `fetch` writes)
DEFAULT_DB = ROOT / "data" / "liquidations.db"
DEMO_DIR = ROOT / "data" / "demo"                # the simulated demo, apart: its files in raw/, its own database
DATABASE_NAME = "liquidations"  # Datasette names the database after the file's stem

# Binance names every file SYMBOL-TYPE-PERIOD, or SYMBOL-INTERVAL-PERIOD for the kline types, whose
# type is then the name of a parent folder.
FILE_NAME = re.compile(
    r"^(?P<symbol>[A-Z0-9]+)-(?P<kind>[A-Za-z]+|\d+[smhdwM])-(?P<period>\d{4}-\d{2}(?:-\d{2})?)\.(?P<ext>zip|csv)$"
)
# Realized liquidations that are not Binance files, known by their header: a recorded forceOrder
# stream, and aggregated exports with one row per period.
LIQUIDATION_HEADERS = {"forceOrder": {"timestamp", "symbol", "side", "avg_price", "filled_qty", "usd_value"},
                       "liquidationsAggregated": {"time", "long_usd", "short_usd"}}
# The backtest's horizons unless --horizons says otherwise; those the data cannot score are left out (issue 28).
DEFAULT_HORIZONS = "1h,4h,24h"
# Files of realized liquidations, which the backtest scores against.
REALIZED_TYPES = ("liquidationSnapshot", "forceOrder", "liquidationsAggregated")
# Indexes on every column a stored query or a page filters on.
INDEXES = {"data_quality_problems": [["symbol"], ["problem"], ["severity"], ["data_type"]],
           "data_coverage": [["symbol"], ["data_type"]], "source_files": [["symbol"], ["data_type"], ["status"]],
           "price_klines": [["symbol", "ts"]], "open_interest": [["symbol", "ts"]], "funding_rates": [["symbol", "ts"]],
           "levels_latest": [["model", "symbol", "side", "leverage"]],
           "predicted_liquidations": [["model", "symbol", "ts"]], "liquidation_map_latest": [["model", "symbol"]],
           "model_comparison": [["symbol"]], "realized_liquidations": [["symbol", "side", "ts"]],
           "backtest_scores": [["symbol", "model"]], "backtest_skill": [["symbol", "horizon"]],
           "backtest_series": [["symbol", "model", "horizon", "ts"]],
           # the heatmap's rows by their key, with the cumulative cells the heatmap query chooses its resolution by.
           # (Rowid tables, not WITHOUT ROWID ones under KEYS: a row's JSON array of up to 2 KB is more than such a
           # table keeps in its page, and the rest took a page of its own: at 30 days heatmap_rows took 46 MB
           # instead of 24 MB, the rows by leverage 134 MB instead of 76 MB, with their indexes.)
           "heatmap_rows": [["model", "symbol", "time_bucket_s", "price_bucket_usd", "ts", "cumulative_cells"]],
           "heatmap_rows_by_leverage": [["model", "symbol", "leverage", "time_bucket_s", "price_bucket_usd", "ts"]]}
# Output tables stored under their natural key, WITHOUT ROWID and written in key order: the key is the
# table, with no index beside it (the heatmap: 89 MB instead of 149 MB at 29 days, in the same time).
KEYS = {"heatmap_cells": ["model", "symbol", "ts", "price_bucket"],
        "map_levels": ["model", "symbol", "ts", "side", "leverage"], "models_compared": ["symbol", "ts", "model"]}
# Output tables whose rows an incremental build appends instead of rewriting: their rows before the
# first time the SQL recomputed (column, DuckDB expression) are the previous build's, unchanged (the
# series from the staged files: those before rebuild_from come from the files the previous build read).
APPENDED = {**{table: ("ts", "first_bucket_rebuilt()")
               for table in ("heatmap_cells", "predicted_liquidations", "map_levels", "models_compared")},
            **{table: ("ts", "page_rows_from()") for table in ("heatmap_rows", "heatmap_rows_by_leverage")},
            **{table: ("ts", "rebuild_from()")
               for table in ("price_klines", "open_interest", "funding_rates", "realized_liquidations")}}
# Tables the SQL keeps from one build to the next (`CREATE TABLE IF NOT EXISTS`): an incremental
# build recomputes only their rows from rebuild_from on.
PERSISTED = sorted({name for path in SQL_DIR.glob("*.sql")
                    for name in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", path.read_text())})


class BuildError(Exception):
    """A problem the user must fix; printed without a traceback, exit status 2."""


def log(message: str) -> None:
    print(f"[{time.perf_counter() - STARTED:6.1f}s] {message}", file=sys.stderr, flush=True)


STARTED = time.perf_counter()


# ---------------------------------------------------------------- finding files


def parse_file_name(path: Path) -> dict | None:
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
    return {"path": path, "symbol": match["symbol"], "data_type": kind,
            "kline_interval": interval, "period": match["period"]}


def period_overlaps(period: str, start: dt.date | None, end: dt.date | None) -> bool:
    first = dt.date.fromisoformat(period if len(period) == 10 else period + "-01")
    last = first if len(period) == 10 else (first + dt.timedelta(days=32)).replace(day=1) - dt.timedelta(days=1)
    return (start is None or last >= start) and (end is None or first <= end)


def liquidation_file(path: Path) -> dict | None:
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
    return kind and {"path": path, "symbol": "*", "data_type": kind, "kline_interval": None, "period": ""}


def recognise(path: Path) -> dict | None:
    return parse_file_name(path) or (liquidation_file(path) if path.suffix in (".csv", ".zip") else None)


def discover(data_dir: Path, symbols: list[str], start, end, liquidations: list[Path] = ()) -> list[dict]:
    """Every Binance file under data_dir (Vision layout or flat), zip preferred over a same-named csv,
    and every realized-liquidation file there or under --liquidations."""
    if not data_dir.is_dir():
        raise BuildError(no_data_advice(data_dir) or f"data folder {data_dir} does not exist (give one with --data)")
    given = [p for path in map(Path, liquidations)  # a folder's csv and zip files (not its .CHECKSUMs), or a file
             for p in ([q for q in sorted(path.rglob("*")) if q.suffix in (".csv", ".zip")] if path.is_dir() else [path])]
    if unknown := [str(p) for p in given if p.is_file() and not recognise(p) or not p.exists()]:
        raise BuildError(f"--liquidations {unknown[0]}: not a liquidationSnapshot, forceOrder (timestamp,symbol,side,"
                         "avg_price,filled_qty,usd_value) or aggregated (time,long_usd,short_usd) file")
    found: dict[tuple, list[dict]] = {}
    for path in sorted(data_dir.rglob("*")) + [p for p in given if p.is_file()]:
        info = recognise(path) if path.is_file() else None
        if info and (not symbols or info["symbol"] in (*symbols, "*")) and (
                not info["period"] or period_overlaps(info["period"], start, end)):
            # how files are named in every report
            info["name"] = str(path.relative_to(data_dir) if path.is_relative_to(data_dir) else path)
            found.setdefault((path.parent.resolve(), path.stem), []).append(info)
    files = []
    for zip_first in (sorted(same, key=lambda info: info["path"].suffix != ".zip") for same in found.values()):
        files.append(zip_first[0])
        for copy in zip_first[1:]:  # X.zip and X.csv side by side (an unzipped download): the zip is read
            same = stage.same_as_zip(copy["path"], zip_first[0]["path"])
            files.append({**copy, "status": "skipped", "problem": "unzipped_copy" if same else "csv_differs_from_zip",
                          "detail": f"not read: {zip_first[0]['name']} beside it is read, "
                                    + ("and holds the same CSV" if same else "and the CSV inside it differs from this one")})
    check_not_mixed([info for info in files if info["path"].is_relative_to(data_dir)])
    return files


@functools.cache
def simulated(folder: Path) -> bool:
    """Whether a folder is inside what `build.py demo` wrote (it writes simulator/params.json at its top)."""
    return (folder / "simulator" / "params.json").is_file() or folder.parent != folder and simulated(folder.parent)


def check_not_mixed(files: list[dict]) -> None:
    """Simulated and real Binance files under one --data would merge into one series (both are BTCUSDT): refuse.
    (Realized-liquidation recordings, known by their header, are not Binance's files, and files given with
    --liquidations are the user's explicit choice: either may go with any build.)"""
    kinds = {simulated(info["path"].resolve().parent): info["name"] for info in files if info["period"]}
    if len(kinds) == 2:
        raise BuildError(f"refusing to mix simulated files (e.g. {kinds[True]}, written by `build.py demo`) with real "
                         f"ones (e.g. {kinds[False]}) in one build: build each folder apart with --data")


# ---------------------------------------------------------------- DuckDB


def run_sql_files(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    for name in names:
        try:
            con.execute((SQL_DIR / name).read_text())
        except duckdb.Error as error:
            raise BuildError(f"sql/{name}: {error}") from error


def set_parameters(con, args) -> None:
    """Point the SQL at the seed files and record --param / --params overrides (checked in SQL)."""
    for name in ("maintenance_brackets", "leverage_tiers", "model_parameters"):
        path = Path(getattr(args, name.removeprefix("model_")) or SQL_DIR / "seeds" / f"{name}.csv")
        if not path.is_file():
            raise BuildError(f"{name} file {path} does not exist")
        con.execute(f"SET VARIABLE {name}_file = ?", [str(path)])
    con.execute("SET VARIABLE backtest_horizons = ?", [args.horizons or DEFAULT_HORIZONS])
    # (given: refused where the data cannot score one; the default: those left out, said in data_quality)
    con.execute("SET VARIABLE backtest_horizons_given = ?", [args.horizons is not None])
    for item in args.param:
        name, _, value = item.partition("=")
        try:
            con.execute("INSERT OR REPLACE INTO parameter_overrides VALUES (?, ?)", [name.strip(), float(value)])
        except ValueError:
            raise BuildError(f"--param {item}: expected NAME=NUMBER, e.g. --param price_bucket_usd=50") from None


def write_build_info(con, args, files: list[dict], key: str, since: str, choices: str) -> None:
    info = {
        "built_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_id": uuid.uuid4().hex, "build_key": key, "rebuilt_from": since, "source_choices": choices,
        "data_dir": str(args.data), "symbols": ",".join(args.symbol or []) or "all found",
        "start": str(args.start or ""), "end": str(args.end or ""), "files_found": str(len(files)),
        # (the pages say so: a simulated market is a test bench, not the market)
        "input_data": "simulated: build.py demo" if any(simulated(info["path"].resolve().parent) for info in files
                                                         if info["period"]) else "Binance files",
        "python": sys.version.split()[0], "duckdb": duckdb.__version__,
        "sqlite_utils": version("sqlite-utils"), "datasette": version("datasette"),
        "memory_limit": con.execute("SELECT current_setting('memory_limit')").fetchone()[0],
    }
    con.execute("CREATE OR REPLACE TABLE build_info (key VARCHAR, value VARCHAR)")
    con.executemany("INSERT INTO build_info VALUES (?, ?)", list(info.items()))


# ---------------------------------------------------------------- SQLite


def load_metadata() -> dict:
    # libyaml's loader where PyYAML has it: 0.006 s instead of 0.06 s, in every build
    return yaml.load((ROOT / "metadata.yml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def output_tables(metadata: dict) -> dict[str, dict]:
    """The tables metadata.yml describes are the ones exported: it is the export manifest."""
    return metadata["databases"][DATABASE_NAME]["tables"]


SQLITE_TYPES = {"BIGINT": int, "INTEGER": int, "HUGEINT": int, "UBIGINT": int, "BOOLEAN": int,
                "DOUBLE": float, "FLOAT": float, "DECIMAL": float}


# An export of at most this many rows (an incremental build's, usually) is read from DuckDB first, so that
# DuckDB's commit runs beside the writing of SQLite (DuckDB lets go of the GIL): a day added at 30 days
# writes about 0.1 M rows, and its 0.4 s commit then costs no time of its own. More rows stream.
PREFETCH_ROWS = 500_000


def export_sqlite(con, tables: dict[str, dict], db_path: Path, since: str | None, commit) -> None:
    """Write the output tables to a new SQLite file, then swap it in: a failed build leaves the old one.
    With `since` (an incremental build, whose previous SQLite file matches its previous DuckDB file), the
    new file starts as a copy of the previous one: the APPENDED tables keep their rows before `since` and
    get only the rows from then on; every other table is written whole. `commit` (the DuckDB build's) runs
    once every row is read, and the new file replaces the old one only after it succeeded."""
    tmp_path = db_path.with_name(db_path.name + ".tmp")   # (a stopped build's is gone: clear_leftovers)
    try:
        if since:
            shutil.copyfile(db_path, tmp_path)
        db = sqlite_utils.Database(tmp_path)
        # No journal and no sync per table: the file is new and swapped in whole, after one fsync below.
        db.execute("PRAGMA journal_mode = OFF")
        db.execute("PRAGMA synchronous = OFF")
        plans = [export_plan(con, db, table, since) for table in tables]
        prefetched = prefetch(con, plans) if since else None
        with ThreadPoolExecutor(max_workers=1) as pool:
            if prefetched:
                plans = [{**plan, "rows": rows} for plan, rows in zip(plans, prefetched)]
                committed = pool.submit(commit)
            for plan in plans:
                write_table(con, db, plan)
            db.close()   # (no VACUUM: a new file has no free pages, and it took 1.9 s at 30 days)
            log(f"stored {answers.store_answers(tmp_path, DATABASE_NAME)} answers (the views pages ask for first)")
            with tmp_path.open("rb+") as written:
                os.fsync(written.fileno())   # on disk before it replaces the old file
            committed.result() if prefetched else commit()
        os.replace(tmp_path, db_path)
    except sqlite3.OperationalError as error:   # ("disk I/O error", "database or disk is full": which file?)
        raise sqlite3.OperationalError(f"{tmp_path}: {error}") from error
    finally:
        tmp_path.unlink(missing_ok=True)


def prefetch(con, plans: list[dict]) -> list[list[tuple]] | None:
    """Every plan's rows, read from DuckDB, or None once they pass PREFETCH_ROWS (then they stream)."""
    out, left = [], PREFETCH_ROWS
    for plan in plans:
        rows = con.execute(plan["select"]).fetchmany(left + 1)
        if len(rows) > left:
            return None
        out.append(rows)
        left -= len(rows)
    return out


def export_plan(con, db, table: str, since: str | None) -> dict:
    """How one table is exported: its SQLite columns, the query of its rows and, for an APPENDED table of
    an incremental build, the first time it rewrites."""
    relation = con.table(table)
    columns = {name: SQLITE_TYPES.get(str(kind).split("(")[0], str) for name, kind in zip(relation.columns, relation.types)}
    appended = bool(since) and table in APPENDED and table in db.table_names()
    where = f" WHERE {APPENDED[table][0]} >= {APPENDED[table][1]}" if appended else ""
    order = " ORDER BY " + ", ".join(f'"{name}"' for name in KEYS[table]) if table in KEYS else ""
    # (times are ISO-8601 text in SQLite; 'infinity' sorts after every one)
    first = con.execute(f"SELECT coalesce(iso_utc({APPENDED[table][1]}), 'infinity')").fetchone()[0] if appended else None
    return {"table": table, "columns": columns, "first": first,
            "select": f"SELECT {export_columns(relation)} FROM {table}{where}{order}"}


def write_table(con, db, plan: dict) -> None:
    """One table into the SQLite file: its rows from plan['first'] on replaced, or the whole table, from the
    rows read already (plan['rows']) or streamed from DuckDB."""
    table, columns, first = plan["table"], plan["columns"], plan["first"]
    if first:
        db.conn.execute(f"DELETE FROM [{table}] WHERE [{APPENDED[table][0]}] >= ?", [first])
    else:
        db[table].drop(ignore=True)
        create = db.create_table_sql(table, columns, pk=KEYS.get(table)).rstrip().rstrip(";")
        db.execute(create + (" WITHOUT ROWID" if table in KEYS else ""))
    insert = f"INSERT INTO [{table}] VALUES ({', '.join('?' * len(columns))})"
    if "rows" in plan:
        db.conn.executemany(insert, plan["rows"])
    else:
        cursor = con.execute(plan["select"])
        while batch := cursor.fetchmany(50_000):
            db.conn.executemany(insert, batch)
    for index in INDEXES.get(table, []):
        db[table].create_index(index, if_not_exists=True)
    if table in APPENDED and not first:
        # SQLite's statistics let the next build's delete of the rows from `since` on skip-scan the
        # key (model, symbol, ts, ...) instead of reading every row: 0.11 s -> 0.003 s at 30 days
        db.execute(f"ANALYZE [{table}]")
    db.conn.commit()
    log(f"exported {table}: {db[table].count:,} rows" + (f" (from {first} on)" if first else ""))


def export_columns(relation) -> str:
    """Times as ISO-8601 UTC text, floats rounded (no 0.30000000000000004 in the API)."""
    def one(name, kind):
        kind = str(kind)
        if kind.startswith("TIMESTAMP"):
            return f'iso_utc("{name}") AS "{name}"'
        return f'round("{name}", 8) AS "{name}"' if kind in ("DOUBLE", "FLOAT") else f'"{name}"'
    return ", ".join(one(n, k) for n, k in zip(relation.columns, relation.types))


def describe_outputs(con, tables: dict[str, dict]) -> None:
    """Copy metadata.yml's descriptions onto the DuckDB tables, for users of the .duckdb file (in the
    build's transaction: a commit per comment cost 0.15 s a build, one commit 0.07 s)."""
    views = {name for (name,) in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}
    comments = []
    for table, meta in tables.items():
        differ = set(meta.get("columns", {})) ^ set(con.table(table).columns)
        if differ:
            raise BuildError(f"metadata.yml and sql/ disagree on the columns of {table}: {sorted(differ)}")
        comments.append(f"COMMENT ON {'VIEW' if table in views else 'TABLE'} {table} IS '{_quote(meta.get('description', ''))}'")
        comments += [f"COMMENT ON COLUMN {table}.{column} IS '{_quote(text)}'" for column, text in meta.get("columns", {}).items()]
    con.execute(";\n".join(comments))


def _quote(text: str) -> str:
    return str(text).strip().replace("'", "''")


# ---------------------------------------------------------------- fetching Binance files


VISION_URL = "https://data.binance.vision"
# The types the models read, and how Binance publishes each (fundingRate only as monthly files).
FETCH_TYPES = {"metrics": "daily", "fundingRate": "monthly", "klines": "daily", "markPriceKlines": "daily",
               "aggTrades": "daily"}
FETCH_TIMEOUT_S = 30
SUMMARY_LABELS = {"fetched": "fetched", "skipped": "skipped (already there)", "missing": "missing (404)",
                  "bad": "bad (checksum)", "failed": "failed"}


def fetch_paths(symbols: list[str], types: list[str], interval: str, start: dt.date, end: dt.date) -> list[str]:
    """The Vision path (under the base URL, and under --data) of every file the window needs."""
    days = [(start + dt.timedelta(days=i)).isoformat() for i in range((end - start).days + 1)]
    paths = []
    for symbol in symbols:
        for kind in types:
            folder, tag = (f"{symbol}/{interval}", interval) if kind in KLINE_TYPES else (symbol, kind)
            periods = sorted({day[:7] for day in days}) if FETCH_TYPES[kind] == "monthly" else days
            paths += [f"data/futures/um/{FETCH_TYPES[kind]}/{kind}/{folder}/{symbol}-{tag}-{p}.zip" for p in periods]
    return paths


def with_retries(action, tries: int, delay_s: float):
    """Run action, retrying timeouts, dropped connections and 5xx with exponential backoff and jitter."""
    for attempt in range(1, tries + 1):
        try:
            return action()
        except (OSError, http.client.HTTPException) as error:  # URLError, HTTPError and timeouts are OSErrors
            if attempt == tries or isinstance(error, urllib.error.HTTPError) and error.code < 500:
                raise
            time.sleep(delay_s * 2 ** (attempt - 1) * random.uniform(0.5, 1.5))


def download(url: str, part: Path) -> int:
    """Get url into part, continuing what an earlier attempt left there with a Range request."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing after `have`: part is whole (its checksum will tell)
            return 0
        raise
    with response, part.open("ab" if response.status == 206 else "wb") as out:  # 200: Range ignored, start over
        expected, got = int(response.headers.get("Content-Length", -1)), 0
        while block := response.read(1 << 16):
            out.write(block)
            got += len(block)
    if got < expected:  # urllib returns a short body without complaint when the server hangs up
        raise ConnectionError(f"connection closed after {got:,} of {expected:,} bytes")
    return got


def read_url(url: str) -> str:
    with urllib.request.urlopen(url, timeout=FETCH_TIMEOUT_S) as response:
        return response.read().decode(errors="replace")


def fetch_file(url: str, dest: Path, tries: int, delay_s: float) -> tuple[str, str, int]:
    """Fetch one zip and its CHECKSUM into dest: (outcome as in SUMMARY_LABELS, detail, bytes received)."""
    if dest.exists() and checksum_status(dest) == "ok":
        return "skipped", "", 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    part, got = dest.with_name(dest.name + ".part"), 0
    try:
        for attempt in (1, 2):  # a zip that fails its CHECKSUM is downloaded once more before it is called bad
            got += with_retries(lambda: download(url, part), tries, delay_s)
            checksum = with_retries(lambda: read_url(url + ".CHECKSUM"), tries, delay_s)
            if checksum.lower().split()[:1] == [sha256(part)]:
                dest.with_name(dest.name + ".CHECKSUM").write_text(checksum)
                os.replace(part, dest)
                return "fetched", "", got
            if attempt == 1:
                part.unlink()
        # Out of build's sight (it reads only .zip and .csv), together with any older unverified copy.
        os.replace(part, dest.with_name(dest.name + ".bad"))
        dest.unlink(missing_ok=True)
        return "bad", f"sha256 differs from its CHECKSUM twice; kept as {dest.name}.bad", got
    except urllib.error.HTTPError as error:
        return ("missing", "", got) if error.code == 404 else ("failed", f"HTTP {error.code}", got)
    except (OSError, http.client.HTTPException) as error:
        return "failed", str(error) or type(error).__name__, got


def fetch_types(args) -> list[str]:
    """The --types asked for, after checking every argument (BuildError for the first bad one)."""
    types = [kind.strip() for kind in args.types.split(",") if kind.strip()]
    if not types or set(types) - set(FETCH_TYPES):
        unknown = ", ".join(sorted(set(types) - set(FETCH_TYPES))) or "none given"
        raise BuildError(f"--types {args.types!r}: unknown type ({unknown}); choose from {','.join(FETCH_TYPES)}")
    if args.end < args.start:
        raise BuildError(f"--end {args.end} is before --start {args.start}")
    if bad := [symbol for symbol in args.symbol if not re.fullmatch(r"[A-Z0-9]+", symbol)]:
        raise BuildError(f"--symbol {bad[0]}: expected a Binance symbol such as BTCUSDT")
    if not re.fullmatch(r"\d+[smhdwM]", args.interval):
        raise BuildError(f"--interval {args.interval}: expected a Binance interval such as 1m, 5m, 1h")
    if args.jobs < 1 or args.retries < 1 or args.retry_delay < 0:
        raise BuildError("--jobs and --retries must be at least 1, --retry-delay not negative")
    if not args.base_url.startswith(("http://", "https://")):
        raise BuildError(f"--base-url {args.base_url}: expected http://... or https://...")
    return types


def fetch(args) -> None:
    """Download the window's files with their CHECKSUMs into the Vision layout under --data."""
    paths = fetch_paths(args.symbol, fetch_types(args), args.interval, args.start, args.end)
    base, outcomes, total, began = args.base_url.rstrip("/"), {k: [] for k in SUMMARY_LABELS}, 0, time.perf_counter()
    log(f"fetching {len(paths)} files from {base} into {args.data}")
    pool = ThreadPoolExecutor(args.jobs)
    try:
        jobs = {pool.submit(fetch_file, f"{base}/{path}", Path(args.data, path), args.retries, args.retry_delay):
                path.removeprefix("data/futures/um/") for path in paths}  # kline names alone are ambiguous
        for done, job in enumerate(as_completed(jobs), 1):
            outcome, detail, size = job.result()
            outcomes[outcome].append(jobs[job] + (f" ({detail})" if detail else ""))
            total += size
            rate = total / max(time.perf_counter() - began, 1e-3)
            log(f"{done}/{len(paths)} files, {total / 1e6:.1f} MB at {rate / 1e6:.1f} MB/s: {outcome} {jobs[job]}")
    finally:  # on Ctrl-C, drop the files not yet started rather than wait for all of them
        pool.shutdown(cancel_futures=True)
    log("summary: " + ", ".join(f"{len(outcomes[k])} {label}" for k, label in SUMMARY_LABELS.items()))
    for name in sorted(outcomes["missing"]):
        log(f"missing (Binance has no such file): {name}")
    if failures := sorted(outcomes["bad"] + outcomes["failed"]):
        raise BuildError(f"{len(failures)} of {len(paths)} files not fetched: " + "; ".join(failures))


# ---------------------------------------------------------------- commands


def create_sources(con, args) -> None:
    """The empty source tables, the --start/--end window and the model parameters. (The time from which to
    recompute, sql/00_macros.sql's rebuild_from, is everything until set_rebuild_from says otherwise.)"""
    run_sql_files(con, SQL_FILES[:2])
    con.execute("INSERT INTO build_window VALUES (?, ?)",
                [args.start, args.end + dt.timedelta(days=1) if args.end else None])
    set_parameters(con, args)


def set_rebuild_from(con, since: str) -> None:
    con.execute("SET VARIABLE rebuild_from = CAST(? AS TIMESTAMP)", [since])


def run_models(con, names: list[str] = SQL_FILES[2:]) -> None:
    """SQL layers after the sources (by default all: staging, parameters, models, data quality, outputs)."""
    for name in names:
        began = time.perf_counter()
        run_sql_files(con, [name])
        log(f"ran sql/{name} ({time.perf_counter() - began:.1f} s)")


def configure(con, memory_limit: str, spill_dir: Path) -> None:
    """Bound DuckDB's memory (what does not fit spills to disk) and keep its spill files with the build's
    temporary files. ASOF joins always as a sort-merge: DuckDB picks a nested loop when it estimates a small
    input, and misestimates oi_steps' input at 0 rows (186 M intermediate rows at 30 days: issue 11)."""
    try:
        con.execute(f"SET memory_limit = '{memory_limit}'")
    except duckdb.Error as error:
        raise BuildError(f"--memory-limit {memory_limit!r} is no size DuckDB knows (e.g. 4GB, 512MB): {error}") from error
    con.execute("SET temp_directory = ?", [str(spill_dir)])
    con.execute("SET asof_loop_join_threshold = 0")
    # DuckDB's progress bar, on a terminal, for a statement that runs over 2 s (it writes to stdout)
    con.execute(f"SET enable_progress_bar = {str(sys.stdout.isatty()).lower()}")


def memory_megabytes(con) -> int:
    """DuckDB's memory limit in MB, as it understood --memory-limit (it reports e.g. '667.5 MiB')."""
    number, unit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0].split()
    return int(float(number) * 1024 ** "KMGTP".index(unit[0]) // 1024 if unit[0] in "KMGTP" else float(number) / 2**20)


def memory_limit_mb(memory_limit: str) -> int:
    """--memory-limit in MB as DuckDB understands it (a BuildError when it understands none)."""
    with duckdb.connect() as probe:
        configure(probe, memory_limit, Path(tempfile.gettempdir()))
        return memory_megabytes(probe)


def default_memory_limit() -> str:
    """A quarter of the machine's RAM, so a build leaves room for everything else on a laptop."""
    return f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 4 // 2**20}MB"


def build_key(args) -> str:
    """What a build's results depend on besides its files: the SQL and seeds, the code, the options. A
    build whose key differs from the previous build's recomputes everything."""
    digest = hashlib.sha256()
    for path in sorted(SQL_DIR.rglob("*.*")) + [ROOT / "build.py", ROOT / "stage.py"] + [
            Path(getattr(args, name)) for name in ("parameters", "leverage_tiers", "maintenance_brackets")
            if getattr(args, name)]:
        digest.update(path.name.encode() + path.read_bytes())
    # (not --end: a later end is like a day's files added, and rebuild_from treats it so)
    digest.update(repr([args.start, sorted(args.symbol), args.param, args.horizons]).encode())
    return digest.hexdigest()[:24]


def previous_build(duck_path: Path, key: str) -> tuple[dict, list] | None:
    """The previous build's info and files (path, sha256, status, period, first_ts), when its DuckDB file
    was built with the same key; None otherwise (no previous build, other options or code)."""
    try:
        with duckdb.connect(str(duck_path), read_only=True) as con:
            info = dict(con.execute("SELECT key, value FROM build_info").fetchall())
            tables = {name for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall()}
            if info.get("build_key") != key or not tables >= set(PERSISTED):
                return None
            return info, con.execute("SELECT path, sha256, status, period, first_ts::VARCHAR FROM src_files").fetchall()
    except duckdb.Error:
        return None


def period_start(period: str, first_ts: str | None) -> dt.datetime | None:
    """The first time a file can hold: the start of its day or month, or of its first row if earlier."""
    starts = [dt.datetime.fromisoformat(first_ts)] if first_ts else []
    if period:
        starts.append(dt.datetime.fromisoformat(period if len(period) == 10 else period + "-01"))
    return min(starts) if starts else None


def rebuild_from(previous: tuple[dict, list], files: list[dict], end: dt.date | None) -> str:
    """The UTC day from which the SQL recomputes: the first day any new, changed or removed file holds,
    or the day after the earlier --end if it moved ('infinity' when nothing did; '-infinity', everything,
    when such a file has no time at all). Everything the SQL computes is causal (a row at time t reads
    nothing after t), so what lies before that day is what the previous build computed."""
    previous_info, previous_files = previous
    before = {(path, digest, status): (period, first) for path, digest, status, period, first in previous_files}
    now = {(info["name"], info["sha256"], info["status"]): (info["period"], info.get("first_ts")) for info in files}
    starts = [period_start(*(before | now)[key]) for key in before.keys() ^ now.keys()]
    ends = {previous_info["end"], str(end or "")}
    if len(ends) > 1:
        starts.append(dt.datetime.fromisoformat(min(ends - {""})) + dt.timedelta(days=1))
    if not starts:
        return "infinity"
    if None in starts:
        return "-infinity"
    return str(dt.datetime.combine(min(starts).date(), dt.time()))


def open_build(duck_path: Path, duck_tmp: Path, previous) -> duckdb.DuckDBPyConnection:
    """The DuckDB file a build writes, with the build's one transaction begun (build commits it when
    everything has run, the export included). After a previous build with the same key, that file itself,
    holding only its PERSISTED tables (the SQL recomputes their rows from rebuild_from on, and everything
    else): DuckDB drops an uncommitted transaction, at a failure and on recovery after a crash, so the
    previous build's file stays whole (copying it first took 12 s at a year of data). Otherwise a new
    file beside it, which replaces it when done (a stopped build's is gone: clear_leftovers)."""
    try:
        con = duckdb.connect(str(duck_path if previous else duck_tmp))
    except duckdb.IOException as error:   # (another process has the file open: DuckDB lets one process write)
        duck_tmp.unlink(missing_ok=True)
        if "lock" not in str(error):
            raise
        raise BuildError(f"cannot write {duck_path}: {error}\nClose the program that has it open, or build "
                         "with --full (which writes a new file in its place).") from error
    con.begin()
    if previous:
        for (name,) in con.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall():
            con.execute(f'DROP VIEW "{name}"')
        for (name,) in con.execute("SELECT table_name FROM duckdb_tables()").fetchall():
            if name not in PERSISTED:
                con.execute(f'DROP TABLE "{name}"')
    return con


def sqlite_build_id(db_path: Path) -> str | None:
    try:
        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
            return dict(db.execute("SELECT key, value FROM build_info").fetchall()).get("build_id")
    except sqlite3.Error:
        return None


def check_arguments(args) -> None:
    """Every bad argument or combination fails here, naming it, before a file is read or written: the
    parameter layer (--param, --parameters, --leverage-tiers, --maintenance-brackets, --horizons) runs
    on no data, so a typo is found at once rather than after staging a month of files."""
    if args.start and args.end and args.end < args.start:
        raise BuildError(f"--end {args.end} is before --start {args.start}: nothing to build")
    if args.jobs < 1:
        raise BuildError(f"--jobs {args.jobs}: at least one file must be staged at a time")
    if bad := [symbol for symbol in args.symbol if not re.fullmatch(r"[A-Z0-9]+", symbol)]:
        raise BuildError(f"--symbol {bad[0]}: expected a Binance symbol such as BTCUSDT")
    with duckdb.connect() as con:
        create_sources(con, args)
        try:
            con.execute((SQL_DIR / "10_parameters.sql").read_text())
        except duckdb.Error as error:
            raise BuildError(str(error).removeprefix("Invalid Input Error: ")) from None


def interval_seconds(name: str) -> int | None:
    """A Binance interval name as seconds ('4h' -> 14400), as sql/00_macros.sql's interval_seconds; None if none."""
    match = re.fullmatch(r"(\d+)([smhdwM])", name.strip())
    return match and int(match[1]) * {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "M": 2592000}[match[2]]


def interval_name(seconds: int) -> str:
    """Seconds as a Binance interval name: 14400 -> '4h' (sql/25_backtest_windows.sql's interval_name)."""
    return next(f"{seconds // n}{unit}" for n, unit in ((86400, "d"), (3600, "h"), (60, "m"), (1, "s")) if seconds % n == 0)


def check_horizons(args, files: list[dict]) -> None:
    """Horizons given with --horizons that the data cannot score fail here, naming the horizon and the data, before
    anything is staged or written: a forecast window must hold whole bars of the prices that trigger liquidations
    (mark price where present, else trade price; the finest interval of each) and whole periods of every aggregated
    liquidation export (read from its times: stage.export_periods). sql/25_backtest_windows.sql applies the same rule
    to what was staged: there it leaves out the default horizons that no symbol can score, and says so."""
    if args.horizons is None or not any(info["data_type"] in REALIZED_TYPES for info in files):
        return
    try:
        exports = stage.export_periods(files)
    except stage.StageError as error:
        raise BuildError(str(error)) from error
    # the symbols with realized liquidations: a recording may hold any, an export without a symbol column the build's
    realized = {info["symbol"] for info in files if info["data_type"] == "liquidationSnapshot"} | {
        symbol or "*" for _, symbol, _ in exports} | {"*" for info in files if info["data_type"] == "forceOrder"}
    limits = [(period_s, f"the {interval_name(period_s)} period of {Path(name).name}") for name, _, period_s in exports]
    bars: dict[str, dict[str, int]] = {}   # symbol -> kline type -> the finest interval's seconds
    for info in files:
        if info["data_type"] in ("klines", "markPriceKlines") and info.get("status") != "skipped" and (
                info["symbol"] in realized or "*" in realized):
            kinds = bars.setdefault(info["symbol"], {})
            kinds[info["data_type"]] = min(kinds.get(info["data_type"], 1 << 62), interval_seconds(info["kline_interval"]))
    for symbol, kinds in sorted(bars.items()):
        kind = "markPriceKlines" if "markPriceKlines" in kinds else "klines"
        limits.append((kinds[kind], f"the {interval_name(kinds[kind])} bars of {symbol} ({kind})"))
    for horizon in (h.strip() for h in args.horizons.split(",")):
        for period_s, what in limits:
            seconds = interval_seconds(horizon) or 0
            if seconds % period_s:
                relation = "finer than" if seconds < period_s else "not a whole number of"
                raise BuildError(f"--horizons {horizon} is {relation} {what}: a backtest window must hold whole periods "
                                 "of the data (leave --horizons out to score the horizons the data allows)")


def writable(folder: Path) -> Path:
    """The folder, made if need be, once a file could be written in it: an unwritable --db or --cache fails
    here, naming it, before anything is read."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            return folder
    except OSError as error:
        raise BuildError(f"cannot write in {folder}: {error.strerror or error}") from None


@contextlib.contextmanager
def locked(folders: list[Path]):
    """Hold each folder (the build's --db folder, its cache) for this build alone. The lock is the kernel's
    (flock) on the folder itself: a second build there fails at once, naming it; the lock leaves no file behind
    and goes with its process, kill -9 included, so it is never stale."""
    with contextlib.ExitStack() as held:
        for folder in dict.fromkeys(folders):
            fd = os.open(folder, os.O_RDONLY)
            held.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise BuildError(f"another build is writing in {folder}: wait for it to end, or build with "
                                 "another --db (and --cache)") from None
        yield


def clear_leftovers(db_path: Path, cache: Path) -> None:
    """What a build stopped by force (kill -9, power cut) leaves: its unfinished files beside the databases and
    its scratch folders in the cache. Only under the lock: no other build can be writing them."""
    duck_tmp = db_path.with_suffix(".duckdb.tmp")
    leftovers = [db_path.with_name(db_path.name + ".tmp"), duck_tmp, duck_tmp.with_name(duck_tmp.name + ".wal"),
                 *cache.glob("spill-*"), *cache.glob("*/stage-*"), *cache.glob("**/.*.tmp")]
    for path in (path for path in leftovers if path.exists()):
        shutil.rmtree(path) if path.is_dir() else path.unlink()
        log(f"removed {path}, left by a build that was stopped")


def build(args) -> Path:
    check_arguments(args)
    db_path = Path(args.db)
    cache = Path(args.cache or db_path.parent / "cache")
    with locked([writable(db_path.parent), writable(cache)]):
        clear_leftovers(db_path, cache)
        try:
            return build_locked(args, db_path, cache)
        except (OSError, sqlite3.OperationalError, duckdb.IOException, duckdb.FatalException) as error:
            raise BuildError(f"the build failed: {error}\n(the database built before, if any, is as it was)") from error


def build_locked(args, db_path: Path, cache: Path) -> Path:
    duck_path = db_path.with_suffix(".duckdb")
    files = discover(Path(args.data), args.symbol, args.start, args.end, args.liquidations)
    if not files:
        raise BuildError(no_data_advice(Path(args.data)) or
                         f"no Binance futures files (e.g. BTCUSDT-metrics-2024-01-01.zip) found under {args.data}"
                         + (f" for {', '.join(args.symbol)}" if args.symbol else ""))
    log(f"found {len(files)} files under {args.data}")
    check_horizons(args, files)
    tables = output_tables(load_metadata())
    key = build_key(args)
    duck_tmp = duck_path.with_name(duck_path.name + ".tmp")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Staging reads only the files: the DuckDB file is opened, and the empty sources and the parameters
        # set up, while it runs (about 0.1 s of a day added's 3.3 s at 30 days)
        staging = pool.submit(stage.stage_files, files, cache, args.jobs,
                              memory_limit_mb(args.memory_limit), log)
        previous = None if getattr(args, "full", False) else previous_build(duck_path, key)
        con = open_build(duck_path, duck_tmp, previous)
        try:
            with tempfile.TemporaryDirectory(prefix="spill-", dir=cache) as tmp:   # (on disk: /tmp may be RAM)
                configure(con, args.memory_limit, Path(tmp) / "spill")
                create_sources(con, args)
                try:
                    files = staging.result()
                except stage.StageError as error:
                    raise BuildError(str(error)) from error
                for info in files:
                    if info["status"] != "loaded":
                        log(f"{info['status']} {info['name']}: {info['detail']}")
                since = rebuild_from(previous, files, args.end) if previous else "-infinity"
                log("a full build" if since == "-infinity" else
                    f"incremental: the previous build's results before {since} are kept, the rest recomputed")
                set_rebuild_from(con, since)
                stage.register(con, files)
                if not con.execute("SELECT count(*) FROM src_files WHERE status = 'loaded'").fetchone()[0]:
                    raise BuildError(f"none of the {len(files)} files under {args.data} could be read (see messages above)")
                run_models(con, SQL_FILES[2:3])
                choices = con.execute("SELECT choices FROM source_choices").fetchone()[0]
                if since != "-infinity" and choices != previous[0].get("source_choices"):
                    log(f"a full build after all: the sources the models read changed (now {choices})")
                    since = "-infinity"
                    set_rebuild_from(con, since)
                write_build_info(con, args, files, key, since, choices)
                run_models(con, SQL_FILES[3:])
                backtest_horizons(con)
                describe_outputs(con, tables)
                summarize(con)
                # (still inside: the export's queries may spill too; a year of the demo's trades sorts 24 M cells)
                appends = previous and since != "-infinity" and sqlite_build_id(db_path) == previous[0].get("build_id")
                export_sqlite(con, tables, db_path, since if appends else None, con.commit)
                con.close()
            if not previous:
                os.replace(duck_tmp, duck_path)
        finally:
            con.close()
            duck_tmp.unlink(missing_ok=True)
            duck_tmp.with_name(duck_tmp.name + ".wal").unlink(missing_ok=True)   # a failed build's write-ahead log
    log(f"built {db_path} and {duck_path}")
    return db_path


def backtest_horizons(con) -> None:
    """Say which horizons the backtest scored and which it could not, and why (sql/25_backtest_windows.sql; each
    also a horizon_not_scored row of data_quality), and keep both, and the periods of aggregated exports, in
    build_info."""
    scored = ", ".join(h for h, _ in con.execute("SELECT DISTINCT horizon, horizon_s FROM backtest_windows WHERE scored "
                                                  "ORDER BY horizon_s").fetchall())
    periods = "; ".join(f"{symbol} {name}: {interval_name(seconds)}" for symbol, name, seconds in con.execute(
        "SELECT coalesce(p.symbol, '*'), regexp_extract(f.path, '[^/]*$'), p.period_s "
        "FROM liquidation_periods p JOIN src_files f USING (file_id) ORDER BY ALL").fetchall())
    not_scored = [detail for (detail,) in con.execute("SELECT detail FROM backtest_not_scored ORDER BY ALL").fetchall()]
    for detail in not_scored:
        log(f"{detail} (data_quality: horizon_not_scored)")
    if con.execute("SELECT count(*) FROM realized_liquidations").fetchone()[0]:
        log(f"backtest horizons scored: {scored or 'none'}")
    con.executemany("INSERT INTO build_info VALUES (?, ?)", [
        ("backtest_horizons", scored), ("backtest_horizons_not_scored", "; ".join(not_scored)),
        ("liquidation_export_periods", periods)])


def summarize(con) -> None:
    for symbol, data_type, interval, rows, first, last, used in con.execute(
            "SELECT symbol, data_type, kline_interval, rows, first_ts, last_ts, used_by_models "
            "FROM coverage ORDER BY ALL").fetchall():
        log(f"{symbol} {data_type} {interval or ''}: {rows:,} rows {first} .. {last}"
            + ("" if used else " (not used: a finer interval is present)"))
    for severity, n in con.execute("SELECT severity, count(*) FROM data_quality GROUP BY 1 ORDER BY 1").fetchall():
        log(f"data_quality: {n} {severity} rows")


def demo(args) -> None:
    import simulate
    if args.days < 1 or args.trades_per_day < 1:
        raise BuildError(f"--days {args.days} and --trades-per-day {args.trades_per_day}: each must be at least 1")
    if not re.fullmatch(r"[A-Z0-9]+", args.symbol):
        raise BuildError(f"--symbol {args.symbol}: expected a Binance symbol such as BTCUSDT")
    summary = simulate.simulate(args.out, days=args.days, seed=args.seed, symbol=args.symbol,
                                trades_per_day=args.trades_per_day, start=str(args.start), progress=log)
    log(f"demo data written to {args.out}: {summary}")


REPORT_METRICS = ("volume_pearson", "volume_spearman", "location_gain_bits", "precision")
README_BLOCKS = {name: re.compile(rf"(<!-- {name}: python build.py report --readme -->\n).*?(<!-- end of {name} -->)",
                                  re.DOTALL) for name in ("backtest report", "skill before and after")}
SKILL_COLUMNS = ("dataset", "horizon", "model", "side", "metric", "value", "skill", "best_baseline")


def backtest_report(db_path: Path) -> str:
    """The backtest as a Markdown table: per horizon, model and side, each metric's score and its skill
    against the best position-free baseline (the README's table is this, written by `report --readme`)."""
    with sqlite3.connect(db_path) as db:
        skill = {tuple(r[:5]): r[5:] for r in db.execute(
            "SELECT symbol, horizon, model, side, metric, value, skill, best_baseline, verdict LIKE 'beats%' "
            "FROM backtest_skill")}
        calibration = {(s, h, m, side): v for s, h, m, side, v in db.execute(
            "SELECT symbol, horizon, model, side, value FROM backtest_scores WHERE metric = 'calibration'")}
        keys = db.execute("SELECT DISTINCT symbol, horizon, model, side FROM backtest_skill "
                          "ORDER BY symbol, horizon_s, model, side").fetchall()
    lines = ["| symbol | horizon | model | side | " + " | ".join(REPORT_METRICS) + " | calibration |",
             "|---" * (len(REPORT_METRICS) + 5) + "|"]
    for key in keys:
        # (in bold where the skill's 90 % interval lies above 0: sql/72_backtest_scores.sql)
        cells = [("**{}**" if skill[(*key, m)][3] else "{}").format(
                     f"{skill[(*key, m)][0]:.2f} ({skill[(*key, m)][1]:+.2f} vs {skill[(*key, m)][2]})")
                 if (*key, m) in skill else "" for m in REPORT_METRICS]
        lines.append("| " + " | ".join([*key, *cells, f"{calibration.get(key) or 0:.1f}"]) + " |")
    wins = sum(bool(value[3]) for value in skill.values())
    ahead = sum(value[1] > 0 for value in skill.values())
    return "\n".join(lines) + (f"\n\n{wins} of {len(skill)} model scores beat the best baseline with their 90 % interval "
                                f"above 0 (in bold); {ahead} are ahead of it on the point estimate.\n")


def skill_rows(dataset: str, db_path: Path) -> list[dict]:
    """Every model's skill in a built database, as rows of the skills CSV."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as db:
        return [dict(zip(SKILL_COLUMNS, (dataset, *row), strict=True)) for row in db.execute(
            "SELECT horizon, model, side, metric, value, skill, best_baseline FROM backtest_skill "
            "ORDER BY horizon_s, model, side, metric")]


def seed_db(args, seed: int) -> Path:
    """A simulator seed's build under --seeds-dir: simulated and built when missing (or --rebuild)."""
    folder = args.seeds_dir / f"seed-{seed}"
    if args.rebuild or not (folder / "liquidations.db").exists():
        shutil.rmtree(folder / "raw", ignore_errors=True)
        demo(parse_args(["demo", "--out", str(folder / "raw"), "--days", str(args.seed_days), "--seed", str(seed)]))
        build(parse_args(["build", "--data", str(folder / "raw"), "--db", str(folder / "liquidations.db")]))
    return folder / "liquidations.db"


def signed(skill) -> str:
    return "–" if skill in (None, "") else f"{float(skill):+.2f}"  # "" or None: no such row, or no score


def skill_table(after: list[dict], before: list[dict]) -> str:
    """One row per dataset, horizon and model; per metric the skill before -> after, long / short."""
    skill = [{tuple(r[c] for c in SKILL_COLUMNS[:5]): r["skill"] for r in rows} for rows in (before, after)]
    datasets, horizons = (list(dict.fromkeys(r[c] for r in after + before)) for c in ("dataset", "horizon"))
    shown = {r["dataset"] for r in after}  # the before file's other datasets are left out
    keys = sorted({key[:3] for key in skill[0] | skill[1] if key[0] in shown},
                  key=lambda k: (datasets.index(k[0]), horizons.index(k[1]), k[2]))

    def cell(key, metric) -> str:  # "+0.07 → +0.10 / +0.14 → +0.12": before → after, long / short
        return " / ".join(" → ".join(signed(s.get((*key, side, metric))) for s in skill) for side in ("long", "short"))

    lines = ["| dataset | horizon | model | " + " | ".join(REPORT_METRICS) + " |", "|---" * 7 + "|"]
    lines += ["| " + " | ".join([*key, *(cell(key, m) for m in REPORT_METRICS)]) + " |" for key in keys]
    return "\n".join(lines) + "\n"


def report(args) -> None:
    args.db = built_db(args.db)
    if not args.db.exists():
        raise BuildError(f"no database at {args.db}: run `python build.py` (or `python build.py build`) first")
    text = backtest_report(args.db)
    rows = skill_rows("demo", args.db) + [
        row for seed in args.seeds for row in skill_rows(f"seed {seed}", seed_db(args, seed))]
    args.csv.parent.mkdir(parents=True, exist_ok=True)
    with open(args.csv, "w", newline="") as f:
        writer = csv.DictWriter(f, SKILL_COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with open(args.before if args.before.exists() else os.devnull) as f:  # no file: no skills before
        table = skill_table(rows, list(csv.DictReader(f)))
    if args.readme:
        readme = ROOT / "README.md"
        new = readme.read_text()
        for (name, block), body in zip(README_BLOCKS.items(), (text, table), strict=True):
            if not block.search(new):
                raise BuildError(f"README.md has no {name} block to replace")
            new = block.sub(lambda m, body=body: m[1] + body + m[2], new)
        readme.write_text(new)
        log(f"wrote the backtest report of {args.db} and the skill before and after into {readme}")
    print(text + "\n" + table, end="")


def serve_command(db_path: Path, port: int, host: str = "127.0.0.1") -> list[str]:
    """`datasette serve` of the built file, immutable, with exact row counts (Datasette's own stop at 10,000)."""
    return [sys.executable, "-m", "datasette", "serve", "-i", str(db_path), "--host", host, "--port", str(port),
            "--inspect-file", str(inspect_file(db_path)),
            "--metadata", str(ROOT / "metadata.yml"), "--config", str(ROOT / "datasette.yaml"),
            "--template-dir", str(ROOT / "templates"), "--plugins-dir", str(ROOT / "plugins")]


def inspect_file(db_path: Path) -> Path:
    """What `datasette inspect` writes, counted from the file itself just now (so it cannot be stale), without
    hashing the whole file: the build's id stands for the hash, which Datasette only shows."""
    with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as con:
        names = [name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        counts = {name: {"count": con.execute(f"SELECT count(*) FROM [{name}]").fetchone()[0]} for name in names}
    data = {db_path.stem: {"hash": sqlite_build_id(db_path) or "", "size": db_path.stat().st_size,
                           "file": str(db_path), "tables": counts}}
    path = inspect_path(db_path)
    path.write_text(json.dumps(data))
    return path


def inspect_path(db_path: Path) -> Path:
    return Path(tempfile.gettempdir()) / f"liquidation-heatmap-{os.getpid()}-{db_path.stem}.inspect.json"


def check_port_free(host: str, port: int) -> None:
    """Fail before anything is served when Datasette could not listen: uvicorn would start the application, say
    so, and only then fail to bind. Binds every address the host names as asyncio's server does (SO_REUSEADDR,
    IPv6 alone on IPv6), so a port held only by closed connections in TIME_WAIT counts as free, as for uvicorn.
    (Another program may still take the port in the instant between this check and Datasette's bind: uvicorn's
    own error then stands.)"""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as error:
        raise BuildError(f"--host {host}: {error.strerror}") from None
    for family, kind, proto, _, address in addresses:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(address)
            except OSError as error:
                if error.errno == errno.EADDRINUSE:
                    raise BuildError(f"port {port} on {host} is already in use (another server, perhaps another "
                                     f"`serve`?): stop it, or serve on another port with --port") from None
                raise BuildError(f"cannot listen on port {port} on {host}: {error.strerror}"
                                 + (" (ports below 1024 need privileges: choose another with --port)"
                                    if error.errno == errno.EACCES else "")) from None


def serve(args) -> None:
    db_path = built_db(args.db)
    if not db_path.exists():
        raise BuildError(f"no database at {shown(db_path)}: build it first with\n  " + (
            command_line("build", "--data", "FOLDER", "--db", shown(db_path)) if args.db else
            f"{command_line()}\n(which builds the Binance files under {shown(DATA_DIR)}, or the demo without them)"))
    check_port_free(args.host, args.port)
    # Datasette runs in this process, not exec'd, so that the inspect file it reads at start is removed however
    # it ends: stopped (Ctrl-C and SIGTERM, which uvicorn turns into a graceful shutdown and then raises again,
    # reaching the handler set here; SIGHUP, a closed terminal, is taken as SIGTERM) or failed (uvicorn and
    # click exit through here).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    signal.signal(signal.SIGHUP, lambda signum, frame: signal.raise_signal(signal.SIGTERM))
    try:
        command = serve_command(db_path, args.port, args.host)
        address = f"[{args.host}]" if ":" in args.host else args.host   # (an IPv6 address in a URL: bracketed)
        log(f"serving {db_path} at http://{address}:{args.port}/ (the heatmap: /heatmap; Ctrl-C to stop)")
        from datasette.cli import cli
        cli.main(args=command[command.index("serve"):], prog_name="datasette")
    except KeyboardInterrupt:   # (Ctrl-C before Datasette has set up its own handling)
        raise SystemExit(128 + signal.SIGINT) from None
    finally:
        inspect_path(db_path).unlink(missing_ok=True)


def shown(path: Path) -> str:
    """A path as the user can type it where they are: from the current folder if it is under it."""
    path = Path(path).absolute()
    return str(path.relative_to(Path.cwd())) if path.is_relative_to(Path.cwd()) else str(path)


def command_line(*words: str) -> str:
    """A command of this program as the user can type it where they are: the installed `liquidation-heatmap` if
    that is what they ran, else this script with the Python running it (plain `python` if that is the one on
    PATH, as in an activated venv)."""
    if Path(sys.argv[0]).name == "liquidation-heatmap":
        return shlex.join(["liquidation-heatmap", *words])
    on_path = shutil.which("python")
    python = "python" if on_path and Path(on_path).absolute() == Path(sys.executable).absolute() else shown(sys.executable)
    return shlex.join([python, shown(ROOT / "build.py"), *words])


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


def default_run(args) -> None:
    """Build the Binance files under data/raw; with none there (a fresh clone), the demo: simulated once into
    data/demo/raw and built into its own database, data/demo/liquidations.db, never mixed with real files."""
    if has_binance_files(DATA_DIR):
        db_path = build(parse_args(["build"]))
    else:
        log(f"no Binance files under {DATA_DIR}: building the demo (simulated data) in {DEMO_DIR}")
        if not has_binance_files(DEMO_DIR / "raw"):
            demo(parse_args(["demo"]))
        db_path = build(parse_args(["build", "--data", str(DEMO_DIR / "raw"), "--db", str(DEMO_DIR / DEFAULT_DB.name)]))
    print(f"\nBuilt {shown(db_path)}. Browse it:  {command_line('serve')}  ->  http://127.0.0.1:8001/ (the heatmap: /heatmap)")


def demo_command(args) -> None:
    """`build.py demo`: the files, then the command that builds them."""
    demo(args)
    print(f"\nBuild them:  {demo_build_command(args.out)}")


def built_db(db: Path | None) -> Path:
    """--db, or the database `python build.py` built: the real data's, else the demo's."""
    if db:
        return db
    return next((path for path in (DEFAULT_DB, DEMO_DIR / DEFAULT_DB.name) if path.exists()), DEFAULT_DB)


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
    parser = argparse.ArgumentParser(prog=Path(sys.argv[0]).name or "build.py", description=__doc__.split("\n")[0] + " With no command: "
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
    p.add_argument("--readme", action="store_true", help="also write both tables into README.md's blocks")
    p.add_argument("--seeds", default="101,102,103", type=lambda text: [int(n) for n in text.split(",") if n],
                   help="simulator seeds to score beside the demo (comma-separated; '' for none)")
    p.add_argument("--seed-days", type=int, default=10, help="days simulated for a seed that is not built yet")
    p.add_argument("--seeds-dir", type=Path, default=ROOT / "data" / "seeds", help="the seeds' builds: DIR/seed-N/")
    p.add_argument("--rebuild", action="store_true", help="simulate and build the seeds again")
    p.add_argument("--csv", type=Path, default=ROOT / "data" / "backtest_skill.csv", help="skills CSV to write")
    p.add_argument("--before", type=Path, default=ROOT / "data" / "backtest_skill_before.csv",
                   help="skills CSV of the models before, compared in the table")
    p = add("serve", help="run Datasette on the built SQLite file (read only: served immutable)")
    p.add_argument("--db", type=Path, help=BUILT_DB_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface, "
                   "so other machines can reach it)")
    p.add_argument("--port", type=port, default=8001, help="port to listen on")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        {"demo": demo_command, "build": build, "fetch": fetch, "report": report, "serve": serve,
         None: default_run}[args.command](args)
    except BuildError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
