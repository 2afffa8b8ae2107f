"""Staging: every source file read once into typed, deduplicated Parquet, kept in a cache by checksum.

A batch of files is staged on a DuckDB connection of its own. Each file is verified against Binance's
.CHECKSUM, read with read_csv (in the columns of its src_* table, sql/sources/sources.sql) straight into a
Parquet of its rows, and checked through the staging views over that Parquet by
sql/staging/files.sql (unparseable rows, invalid values, keys repeated in the file). Its valid rows,
one per key, become CACHE/<version>/<type>/<symbol>/<period>-<sha256>.parquet, with a JSON file beside
it that holds what staging found. A build reads only the files it has not seen (a new or changed file
has a new checksum); a file that is gone is not read, and its staged copy is removed; deleting the
cache stages everything again. The version is a digest of the SQL and options that shape the Parquet,
so a change to them restages every file."""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import replace
from pathlib import Path

import duckdb

from .archives import Checksums, checksum_status, unpack, write_atomic
from .project import ROOT, SQL_DIR, SQL_STAGES
from .source_file import SourceFile

STAGE_SQL = [*SQL_STAGES["sources"], *SQL_STAGES["staging"]]  # the tables and views a file is read into
CHECK_SQL = SQL_DIR / "staging" / "files.sql"
# Parquet 2's encodings write trades faster than Parquet 1's, half as large, and read faster
PARQUET_OPTIONS = "FORMAT parquet, COMPRESSION zstd, PARQUET_VERSION V2"
BATCH_BYTES = 8 << 20  # small files are staged many at a time, a large one alone
KLINE_TYPES = ("klines", "markPriceKlines", "indexPriceKlines", "premiumIndexKlines")
SOURCE_TABLES = {"metrics": "src_metrics", "fundingRate": "src_funding_rate", "aggTrades": "src_agg_trades",
                 "trades": "src_trades", "liquidationSnapshot": "src_liquidation_snapshot",
                 "forceOrder": "src_force_orders", "liquidationsAggregated": "src_liquidations_aggregated",
                 "recordingGaps": "src_recording_gaps",
                 **{kind: "src_klines" for kind in KLINE_TYPES}}
BY_NAME = ("forceOrder", "liquidationsAggregated", "recordingGaps")  # their columns vary: read by header name, as text
LOADED_STATS = ("rows_read", "rows_staged", "first_ts", "last_ts")
QUALITY_COLUMNS = ("symbol", "data_type", "kline_interval", "line", "problem", "severity", "detail", "rows_affected",
                   "first_ts::VARCHAR", "last_ts::VARCHAR")


class StageError(Exception):
    """A file or the cache could not be used; build.py reports it like any build error."""


def version() -> str:
    """Digest of the SQL that decides what a staged file holds: any change to it restages every file."""
    digest = hashlib.sha256(PARQUET_OPTIONS.encode())
    for path in [SQL_DIR / name for name in STAGE_SQL] + [CHECK_SQL]:
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


# ---------------------------------------------------------------- staging one file


# Columns of the src_* tables that a build takes from src_files, not from the files' rows.
FILE_COLUMNS = {"file_id": "file_id", "file_last_ts": "last_ts"}


def source_columns(con, table: str) -> dict[str, str]:
    """The columns of a src_* table that its files' rows hold, in order."""
    rows = con.execute("SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? "
                       "ORDER BY column_index", [table]).fetchall()
    return {name: kind for name, kind in rows if name not in FILE_COLUMNS}


def run_sql(con, path: Path) -> None:
    try:
        con.execute(path.read_text())
    except duckdb.Error as error:
        raise StageError(f"{path.relative_to(ROOT)}: {error}") from error


def stage_connection(threads: int, memory_limit: str, spill: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(f"SET threads = {threads}")
    con.execute(f"SET memory_limit = '{memory_limit}'")
    con.execute("SET temp_directory = ?", [str(spill)])
    con.execute("SET preserve_insertion_order = true")  # rowid = order in the file: the first copy of a key wins
    return con


def read_file(con, info: SourceFile, file_id: int, tmp: Path) -> dict:
    """Read one file into a Parquet of its rows as they are (tmp/<file_id>.parquet, in file order); rows
    DuckDB cannot parse go to DuckDB's reject tables. Straight from read_csv to Parquet: holding a day of
    trades in a table first, then writing it, cost a pass more."""
    table = SOURCE_TABLES[info.data_type]
    by_name = info.data_type in BY_NAME
    columns = source_columns(con, table)
    info = unpack(info, tmp, None if by_name else len(columns))
    raw = tmp / f"{file_id}.parquet"
    try:
        if info.status == "loaded" and by_name:   # (small files whose columns vary: matched to the table's by name)
            # (the delimiter named: sniffed, a last line cut short by a recorder killed mid-write, one field without a
            # comma, made DuckDB take the whole header for one column and refuse the file; named, that line is a
            # reject, reported with its line, and the file's other rows are read)
            con.execute(f"INSERT INTO {table} BY NAME SELECT *, {file_id} AS file_id FROM read_csv(?, header = true, "
                        "all_varchar = true, delim = ',', quote = '\"', store_rejects = true)", [info.csv_path])
            if info.data_type == "forceOrder":
                reject_cut_value(con, info.csv_path, file_id)
            names = ", ".join(f'"{name}"' for name in columns)
            con.execute(f"COPY (SELECT {names} FROM {table} WHERE file_id = {file_id}) TO '{raw}' ({PARQUET_OPTIONS})")
        elif info.status == "loaded":
            con.execute(f"COPY (SELECT * FROM read_csv(?, header = ?, auto_detect = false, delim = ',', quote = '\"', "
                        "columns = ?, timestampformat = '%Y-%m-%d %H:%M:%S', store_rejects = true)) "
                        f"TO '{raw}' ({PARQUET_OPTIONS})", [info.csv_path, info.has_header, columns])
    except duckdb.Error as error:
        info = replace(info, status="quarantined", problem="unreadable_csv", detail=f"{info.name}: {error}")
    con.execute("INSERT INTO src_files (file_id, path, symbol, data_type, kline_interval, period, has_header, checksum, "
                "status, csv_path, staged_path) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [file_id, info.name, info.symbol, info.data_type, info.kline_interval, info.period,
                 info.has_header, info.checksum, info.status, info.csv_path,
                 str(raw) if info.status == "loaded" else None])   # (the src_* views join on it)
    return replace(info, raw_path=raw if info.status == "loaded" else None)


def reject_cut_value(con, csv_path: str, file_id: int) -> None:
    """A recording's last line without its line end was cut short where its writer stopped. With a field
    missing, read_csv rejects it; with all six fields, its last value may still be cut (usd_value 171 for
    17190): a value that is not avg_price x filled_qty there is that, and the line is rejected as read_csv
    would, into src_rejects with its line. (A last line whose values agree is whole but for its line end: kept.)"""
    with gzip.open(csv_path) if csv_path.endswith(".gz") else open(csv_path, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return
    first, last = (data[:data.find(b"\n")], data[data.rfind(b"\n") + 1:])
    header, fields = (next(csv.reader([line.decode(errors="replace").lstrip("\ufeff")])) for line in (first, last))
    values = dict(zip([name.strip().lower() for name in header], fields))
    try:
        price, quantity, usd = (float(values[name]) for name in ("avg_price", "filled_qty", "usd_value"))
    except (KeyError, ValueError):   # a field missing (rejected by read_csv already) or not a number (invalid)
        return
    if len(fields) != len(header) or math.isclose(usd, price * quantity, rel_tol=1e-9):
        return
    con.execute("DELETE FROM src_force_orders WHERE rowid = (SELECT max(rowid) FROM src_force_orders WHERE file_id = ?)",
                [file_id])
    why = (f"the file's last line has no line end and its usd_value {values['usd_value']} is not avg_price x filled_qty "
           f"({price * quantity:g}): cut short where its writer stopped")
    con.execute("INSERT INTO src_rejects VALUES (?, ?, 'usd_value', 'CUT LINE', ?, ?)",
                [file_id, data.count(b"\n") + 1, last.decode(errors="replace"), why])


def stage_batch(con, batch: list[SourceFile], tmp: Path) -> list[SourceFile]:
    """Stage a batch of files: each to its target (.parquet, with .json beside it)."""
    for name in STAGE_SQL:
        run_sql(con, SQL_DIR / name)
    infos = [read_file(con, info, file_id, tmp) for file_id, info in enumerate(batch, 1)]
    source_views(con, infos, "raw_path")   # the checks read the files' Parquet as a build does
    if con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'reject_errors'").fetchone()[0]:
        con.execute("""INSERT INTO src_rejects
            SELECT f.file_id, e.line, e.column_name, e.error_type, e.csv_line, e.error_message
            FROM reject_errors e JOIN reject_scans s USING (scan_id, file_id) JOIN src_files f ON f.csv_path = s.file_path""")
    run_sql(con, CHECK_SQL)
    dropped = {file_id for (file_id,) in con.execute("SELECT DISTINCT file_id FROM stage_dropped").fetchall()}
    records = []
    for file_id, info in enumerate(infos, 1):
        record = {key: getattr(info, key) for key in ("status", "problem", "detail", "has_header")}
        if info.status == "loaded":
            stats = con.execute("SELECT rows_read, rows_staged, first_ts::VARCHAR, last_ts::VARCHAR FROM stage_stats "
                                "WHERE file_id = ?", [file_id]).fetchone()
            record.update(zip(LOADED_STATS, stats or (0, 0, None, None)))
            record["quality"] = [dict(zip(QUALITY_COLUMNS, row)) for row in con.execute(
                f"SELECT {', '.join(QUALITY_COLUMNS)} FROM stage_quality WHERE file_id = ?", [file_id]).fetchall()]
            target = info.target.with_suffix(".parquet")
            if file_id in dropped:   # (rarely: the file's Parquet is written again without them)
                part = target.with_name(f".{target.name}.tmp")
                con.execute(f"COPY (SELECT * EXCLUDE (file_row_number) FROM read_parquet(?, file_row_number = true) "
                            f"WHERE file_row_number NOT IN (SELECT src_rowid FROM stage_dropped WHERE file_id = {file_id})) "
                            f"TO '{part}' ({PARQUET_OPTIONS})", [str(info.raw_path)])
                os.replace(part, target)
            else:
                os.replace(info.raw_path, target)
        write_atomic(info.target.with_suffix(".json"), json.dumps(record))
        records.append(record)
    return records


# ---------------------------------------------------------------- staging every file


def cache_target(cache: Path, info: SourceFile) -> Path:
    """Where a file's Parquet and JSON live: by type, symbol and period, named by checksum."""
    folder = cache / info.data_type / info.symbol.replace("*", "all-symbols")
    return folder / f"{info.period or 'any'}{'-' + info.kline_interval if info.kline_interval else ''}" \
                    f"-{info.sha256[:24]}"


def stage_files(files: list[SourceFile], cache_root: Path, jobs: int, memory_limit_mb: int, log) -> list[SourceFile]:
    """Stage every file the cache lacks, `jobs` at a time; return each file with what staging found."""
    cache = cache_root / version()
    for stale in (p for p in cache_root.glob("*") if p.is_dir() and p != cache and len(p.name) == 12):
        shutil.rmtree(stale, ignore_errors=True)   # staged by other SQL: never read again
        log(f"removed the cache of older staging SQL: {stale}")
    cache.mkdir(parents=True, exist_ok=True)
    checksums = Checksums(cache_root / "checksums.json")
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:   # (hashlib lets go of the GIL: one file per core)
        digests = list(pool.map(checksums.of, [info.path for info in files]))
    for info, digest in zip(files, digests, strict=True):
        info.sha256 = digest
        info.checksum = checksum_status(info.path, info.sha256) if info.path.suffix == ".zip" else "absent"
        info.target = cache_target(cache, info)
    if removed := checksums.prune(cache):
        log(f"removed {removed} staged files from the cache: their source files are gone or changed")
    checksums.save()
    todo = [info for info in files if info.checksum != "mismatch" and info.status != "skipped"
            and not info.target.with_suffix(".json").exists()]
    log(f"checksums of {len(files)} files in {time.perf_counter() - started:.1f} s; "
        f"{len(files) - len(todo)} already staged, {len(todo)} to stage in {cache}")
    todo_batches = batches(todo)
    # The cores shared among the large files staged at once: one large file alone gets them all (DuckDB
    # reads and writes one file in parallel), and many large files one core each (more threads than
    # cores only contend: the files are parallel already).
    large = sum(1 for batch in todo_batches if batch[0].path.stat().st_size > BATCH_BYTES)
    threads = max(1, (os.cpu_count() or 1) // max(1, min(jobs, large)))
    memory_mb = max(256, memory_limit_mb // max(1, jobs))

    def work(batch: list[SourceFile]) -> tuple[list[SourceFile], float]:
        began = time.perf_counter()
        for info in batch:
            info.target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="stage-", dir=cache) as tmp, \
                stage_connection(threads, f"{memory_mb}MB", Path(tmp) / "spill") as con:
            return stage_batch(con, batch, Path(tmp)), time.perf_counter() - began

    done = 0
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {pool.submit(work, batch): batch for batch in todo_batches}
        for future in as_completed(futures):
            batch = futures[future]
            try:
                records, seconds = future.result()
            except (duckdb.Error, OSError) as error:
                raise StageError(f"{batch[0].name}: staging failed: {error}") from error
            done += len(batch)
            rows = sum(record.get("rows_read") or 0 for record in records)
            log(f"staged {done}/{len(todo)} files: {batch[0].name}" + (f" and {len(batch) - 1} more" if len(batch) > 1
                else "") + f" ({rows:,} rows, {seconds:.1f} s)")
    return [replace(info, **staged(info)) for info in files]


def batches(files: list[SourceFile]) -> list[list[SourceFile]]:
    """Files up to BATCH_BYTES together (a connection and the checks cost once a batch); a large file
    alone. Largest first, so that the small ones fill in beside it. Files read by header name stay among
    their own kind: which symbol an aggregated export without one is for depends on the other files."""
    out: list[tuple[int, str, list[SourceFile]]] = []   # (bytes, kind, files)
    for info in sorted(files, key=lambda info: (SOURCE_TABLES[info.data_type], info.name)):
        size = info.path.stat().st_size
        kind = info.data_type if info.data_type in BY_NAME else "typed"
        if out and out[-1][1] == kind and out[-1][0] + size <= BATCH_BYTES:
            out[-1] = (out[-1][0] + size, kind, out[-1][2] + [info])
        else:
            out.append((size, kind, [info]))
    return [batch for _, _, batch in sorted(out, key=lambda entry: -entry[0])]


def staged(info: SourceFile) -> dict:
    """What the cache says of a file (a checksum mismatch is never staged: it is quarantined as it is; a file
    skipped when it was found, a CSV beside its zip, is not read)."""
    if info.status == "skipped":
        return {"has_header": None, "quality": []}
    if info.checksum == "mismatch":
        return {"status": "quarantined", "problem": "checksum_mismatch", "has_header": None, "quality": [],
                "detail": f"sha256 of {info.path.name} differs from {info.path.name}.CHECKSUM; file not ingested"}
    record = json.loads(info.target.with_suffix(".json").read_text())
    return {"quality": [], "staged_path": str(info.target.with_suffix(".parquet"))
            if record["status"] == "loaded" else None, **record}


def export_periods(files: list[SourceFile]) -> list[tuple[str, str | None, int]]:
    """(name, symbol, period in seconds) of each aggregated liquidation export, by sql/staging/staging.sql's
    liquidation_periods over the files themselves, read in memory: build.py checks --horizons against them
    before anything is staged or written. (The symbols of the kline files are named too, unread: an export
    without a symbol column belongs to the only symbol whose klines are found, as in a build.)"""
    exports = [info for info in files if info.data_type == "liquidationsAggregated" and info.status != "skipped"]
    if not exports:
        return []
    with tempfile.TemporaryDirectory(prefix="liquidation-periods-") as tmp, duckdb.connect() as con:
        for name in STAGE_SQL:
            run_sql(con, SQL_DIR / name)
        for file_id, info in enumerate(exports, 1):
            read_file(con, replace(info, checksum="absent", sha256=f"export-{file_id}"), file_id, Path(tmp))
        symbols = sorted({info.symbol for info in files if info.data_type in ("klines", "markPriceKlines")})
        insert_rows(con, "src_files", [(len(exports) + i, "", symbol, "klines", None, "", None, "absent", "loaded",
                                        *[None] * 11) for i, symbol in enumerate(symbols, 1)])
        return con.execute("SELECT f.path, p.symbol, p.period_s FROM liquidation_periods p JOIN src_files f USING (file_id) "
                           "ORDER BY ALL").fetchall()


# ---------------------------------------------------------------- a build reads the cache


def register(con, files: list[SourceFile]) -> None:
    """Fill src_files and stage_quality, and turn each src_* table with staged files into a view over them."""
    for file_id, info in enumerate(files, 1):
        info.file_id = file_id
    insert_rows(con, "src_files", [
        (file_id, info.name, info.symbol, info.data_type, info.kline_interval, info.period,
         info.has_header, info.checksum, info.status, info.problem, info.detail, None,
         info.staged_path, info.sha256, *(getattr(info, key) for key in LOADED_STATS), None, None)
        for file_id, info in enumerate(files, 1)])
    insert_rows(con, "stage_quality", [(info.file_id, *row.values()) for info in files for row in info.quality])
    source_views(con, files, "staged_path")


def source_views(con, files: list[SourceFile], path_key: str) -> None:
    """Turn each src_* table with files into a view over their Parquet (the path_key attribute), joined to
    src_files (whose staged_path names it) for the file's columns. Used by staging and by a build alike."""
    for table in sorted(set(SOURCE_TABLES.values())):
        # (two files with the same bytes share one Parquet: each row then comes once per file, as it would unstaged)
        paths = sorted({str(getattr(info, path_key)) for info in files
                        if getattr(info, path_key) and SOURCE_TABLES[info.data_type] == table})
        if paths:
            present = {name for (name,) in con.execute(
                "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [table]).fetchall()}
            columns = [f'p."{name}"' for name in source_columns(con, table)] + [
                f"f.{column} AS {name}" for name, column in FILE_COLUMNS.items() if name in present]
            con.execute(f"DROP TABLE {table}")
            # rowid: the row's place in its Parquet, which the staging views read as each row's identity
            con.execute(f"CREATE VIEW {table} AS SELECT {', '.join(columns)}, p.file_row_number AS rowid "
                        f"FROM read_parquet({paths!r}, filename = true, file_row_number = true, hive_partitioning = false) p "
                        "JOIN src_files f ON f.staged_path = p.filename")


def insert_rows(con, table: str, rows: list[tuple]) -> None:
    """Many rows in one statement (a statement a row is parsed and planned once for each row)."""
    for start in range(0, len(rows), 1000):
        chunk = rows[start:start + 1000]
        values = ", ".join(["(" + ", ".join("?" * len(chunk[0])) + ")"] * len(chunk))
        con.execute(f"INSERT INTO {table} VALUES {values}", [value for row in chunk for value in row])
