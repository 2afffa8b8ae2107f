"""The build: arguments checked before any file is read, files staged, the SQL layers run in order in one DuckDB
transaction, the outputs described and exported; and the demo's simulation."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import re
import shutil
import sqlite3
import sys
import tempfile
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from importlib.metadata import version
from pathlib import Path

import duckdb

from . import stage
from .export import describe_outputs, export_sqlite, load_metadata, output_tables
from .files import REALIZED_TYPES, discover, interval_name, interval_seconds, no_data_advice, simulated
from .incremental import build_key, open_build, previous_build, rebuild_from, sqlite_build_id
from .options import DEFAULT_HORIZONS, BuildOptions, DemoOptions
from .project import SQL_DIR, SQL_STAGES, BuildError, log
from .source_file import SourceFile
from .stream_view import write_recording


def run_sql_files(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    for name in names:
        try:
            con.execute((SQL_DIR / name).read_text())
        except duckdb.Error as error:
            raise BuildError(f"sql/{name}: {error}") from error


def set_parameters(con, options: BuildOptions) -> None:
    """Point the SQL at the seed files and record the --param overrides (checked in SQL)."""
    for name in ("maintenance_brackets", "leverage_tiers", "model_parameters"):
        path = Path(getattr(options, name.removeprefix("model_")) or SQL_DIR / "seeds" / f"{name}.csv")
        if not path.is_file():
            raise BuildError(f"{name} file {path} does not exist")
        con.execute(f"SET VARIABLE {name}_file = ?", [str(path)])
    con.execute("SET VARIABLE seeds_dir = ?", [str(SQL_DIR / "seeds")])   # (the seeds a user cannot replace)
    con.execute("SET VARIABLE backtest_horizons = ?", [options.horizons or DEFAULT_HORIZONS])
    # (given: refused where the data cannot score one; the default: those left out, said in data_quality)
    con.execute("SET VARIABLE backtest_horizons_given = ?", [options.horizons is not None])
    for item in options.param:
        name, _, value = item.partition("=")
        try:
            con.execute("INSERT OR REPLACE INTO parameter_overrides VALUES (?, ?)", [name.strip(), float(value)])
        except ValueError:
            raise BuildError(f"--param {item}: expected NAME=NUMBER, e.g. --param price_bucket_usd=50") from None


def write_build_info(con, options: BuildOptions, files: list[SourceFile], key: str, since: str, choices: str) -> None:
    info = {
        "built_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "build_id": uuid.uuid4().hex, "build_key": key, "rebuilt_from": since, "source_choices": choices,
        "data_dir": str(options.data), "symbols": ",".join(options.symbol or []) or "all found",
        "start": str(options.start or ""), "end": str(options.end or ""), "files_found": str(len(files)),
        # (the pages say so: a simulated market is a test bench, not the market)
        "input_data": "simulated: build.py demo" if any(simulated(info.path.resolve().parent) for info in files
                                                         if info.period) else "Binance files",
        "python": sys.version.split()[0], "duckdb": duckdb.__version__,
        "sqlite_utils": version("sqlite-utils"), "datasette": version("datasette"),
        "memory_limit": con.execute("SELECT current_setting('memory_limit')").fetchone()[0],
    }
    con.execute("CREATE OR REPLACE TABLE build_info (key VARCHAR, value VARCHAR)")
    con.executemany("INSERT INTO build_info VALUES (?, ?)", list(info.items()))


def create_sources(con, options: BuildOptions) -> None:
    """The empty source tables, the --start/--end window and the model parameters. (The time from which to
    recompute, sql/sources/macros.sql's rebuild_from, is everything until set_rebuild_from says otherwise.)"""
    run_sql_files(con, SQL_STAGES["sources"])
    con.execute("INSERT INTO build_window VALUES (?, ?)",
                [options.start, options.end + dt.timedelta(days=1) if options.end else None])
    set_parameters(con, options)


def set_rebuild_from(con, since: str) -> None:
    con.execute("SET VARIABLE rebuild_from = CAST(? AS TIMESTAMP)", [since])


def run_stages(con, *stages: str) -> None:
    """The named stages of sql/stages.yml, in order, each file timed (the build prints where its time goes)."""
    for stage_name in stages:
        for name in SQL_STAGES[stage_name]:
            began = time.perf_counter()
            run_sql_files(con, [name])
            log(f"ran sql/{name} ({time.perf_counter() - began:.1f} s)")


AFTER_STAGING = [name for name in SQL_STAGES if name not in ("sources", "staging")]   # the models and what follows


def configure(con, memory_limit: str, spill_dir: Path) -> None:
    """Bound DuckDB's memory (what does not fit spills to disk) and keep its spill files with the build's
    temporary files. ASOF joins always as a sort-merge: DuckDB picks a nested loop when it estimates a small
    input, and misestimates oi_steps' input at 0 rows (a nested loop compares every row with every row)."""
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



def check_arguments(options: BuildOptions) -> None:
    """Every bad argument or combination fails here, naming it, before a file is read or written: the
    parameter layer (--param, --parameters, --leverage-tiers, --maintenance-brackets, --horizons) runs
    on no data, so a typo is found at once rather than after staging a month of files."""
    if options.start and options.end and options.end < options.start:
        raise BuildError(f"--end {options.end} is before --start {options.start}: nothing to build")
    if options.jobs < 1:
        raise BuildError(f"--jobs {options.jobs}: at least one file must be staged at a time")
    if bad := [symbol for symbol in options.symbol if not re.fullmatch(r"[A-Z0-9]+", symbol)]:
        raise BuildError(f"--symbol {bad[0]}: expected a Binance symbol such as BTCUSDT")
    with duckdb.connect() as con:
        create_sources(con, options)
        try:
            run_sql_files(con, SQL_STAGES["parameters"][:1])
        except duckdb.Error as error:
            raise BuildError(str(error).removeprefix("Invalid Input Error: ")) from None


def check_horizons(options: BuildOptions, files: list[SourceFile]) -> None:
    """Horizons given with --horizons that the data cannot score fail here, naming the horizon and the data, before
    anything is staged or written: a forecast window must hold whole bars of the prices that trigger liquidations
    (mark price where present, else trade price; the finest interval of each) and whole periods of every aggregated
    liquidation export (read from its times: stage.export_periods). sql/backtest/windows.sql applies the same rule
    to what was staged: there it leaves out the default horizons that no symbol can score, and says so."""
    if options.horizons is None or not any(info.data_type in REALIZED_TYPES for info in files):
        return
    try:
        exports = stage.export_periods(files)
    except stage.StageError as error:
        raise BuildError(str(error)) from error
    # the symbols with realized liquidations: a recording may hold any, an export without a symbol column the build's
    realized = {info.symbol for info in files if info.data_type == "liquidationSnapshot"} | {
        symbol or "*" for _, symbol, _ in exports} | {"*" for info in files if info.data_type == "forceOrder"}
    limits = [(period_s, f"the {interval_name(period_s)} period of {Path(name).name}") for name, _, period_s in exports]
    bars: dict[str, dict[str, int]] = {}   # symbol -> kline type -> the finest interval's seconds
    for info in files:
        if info.data_type in ("klines", "markPriceKlines") and info.status != "skipped" and (
                info.symbol in realized or "*" in realized):
            kinds = bars.setdefault(info.symbol, {})
            kinds[info.data_type] = min(kinds.get(info.data_type, 1 << 62), interval_seconds(info.kline_interval))
    for symbol, kinds in sorted(bars.items()):
        kind = "markPriceKlines" if "markPriceKlines" in kinds else "klines"
        limits.append((kinds[kind], f"the {interval_name(kinds[kind])} bars of {symbol} ({kind})"))
    for horizon in (h.strip() for h in options.horizons.split(",")):
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


def build(options: BuildOptions) -> Path:
    check_arguments(options)
    db_path = Path(options.db)
    cache = Path(options.cache or db_path.parent / "cache")
    with locked([writable(db_path.parent), writable(cache)]):
        clear_leftovers(db_path, cache)
        try:
            return build_locked(options, db_path, cache)
        except (OSError, sqlite3.OperationalError, duckdb.IOException, duckdb.FatalException) as error:
            raise BuildError(f"the build failed: {error}\n(the database built before, if any, is as it was)") from error


def build_locked(options: BuildOptions, db_path: Path, cache: Path) -> Path:
    duck_path = db_path.with_suffix(".duckdb")
    files = discover(Path(options.data), options.symbol, options.start, options.end, options.liquidations)
    if not files:
        raise BuildError(no_data_advice(Path(options.data)) or
                         f"no Binance futures files (e.g. BTCUSDT-metrics-2024-01-01.zip) found under {options.data}"
                         + (f" for {', '.join(options.symbol)}" if options.symbol else ""))
    log(f"found {len(files)} files under {options.data}")
    check_horizons(options, files)
    tables = output_tables(load_metadata())
    key = build_key(options)
    duck_tmp = duck_path.with_name(duck_path.name + ".tmp")
    with ThreadPoolExecutor(max_workers=1) as pool:
        # Staging reads only the files: the DuckDB file is opened, and the empty sources and the parameters
        # set up, while it runs (none of that waits on the staged files)
        staging = pool.submit(stage.stage_files, files, cache, options.jobs,
                              memory_limit_mb(options.memory_limit), log)
        previous = None if options.full else previous_build(duck_path, key)
        con = open_build(duck_path, duck_tmp, previous)
        try:
            with tempfile.TemporaryDirectory(prefix="spill-", dir=cache) as tmp:   # (on disk: /tmp may be RAM)
                configure(con, options.memory_limit, Path(tmp) / "spill")
                create_sources(con, options)
                try:
                    files = staging.result()
                except stage.StageError as error:
                    raise BuildError(str(error)) from error
                for info in files:
                    if info.status != "loaded":
                        log(f"{info.status} {info.name}: {info.detail}")
                since = rebuild_from(previous, files, options.end) if previous else "-infinity"
                log("a full build" if since == "-infinity" else
                    f"incremental: the previous build's results before {since} are kept, the rest recomputed")
                set_rebuild_from(con, since)
                stage.register(con, files)
                if not con.execute("SELECT count(*) FROM src_files WHERE status = 'loaded'").fetchone()[0]:
                    raise BuildError(f"none of the {len(files)} files under {options.data} could be read (see messages above)")
                run_stages(con, "staging")
                choices = con.execute("SELECT choices FROM source_choices").fetchone()[0]
                if since != "-infinity" and choices != previous[0].get("source_choices"):
                    log(f"a full build after all: the sources the models read changed (now {choices})")
                    since = "-infinity"
                    set_rebuild_from(con, since)
                write_build_info(con, options, files, key, since, choices)
                run_stages(con, *AFTER_STAGING)
                backtest_horizons(con)
                describe_outputs(con, tables)
                summarize(con)
                # (still inside: the export's queries may spill too; a year of the demo's trades sorts 24 M cells)
                appends = previous and since != "-infinity" and sqlite_build_id(db_path) == previous[0].get("build_id")
                export_sqlite(con, tables, db_path, since if appends else None, con.commit, options.stored_answers)
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
    """Say which horizons the backtest scored and which it could not, and why (sql/backtest/windows.sql; each
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


def demo(options: DemoOptions) -> None:
    from . import simulate
    if options.days < 1 or options.trades_per_day < 1:
        raise BuildError(f"--days {options.days} and --trades-per-day {options.trades_per_day}: each must be at least 1")
    if not re.fullmatch(r"[A-Z0-9]+", options.symbol):
        raise BuildError(f"--symbol {options.symbol}: expected a Binance symbol such as BTCUSDT")
    stream = options.force_order_stream
    if stream and Path(stream).resolve().is_relative_to(Path(options.out).resolve()):
        # a build reads every recording under --data: beside the liquidationSnapshot files, each twice
        raise BuildError(f"--force-order-stream {stream} is inside --out {options.out}: a build of --out would read "
                         "its liquidations twice (the liquidationSnapshot files and the recording); give a folder beside it")
    summary = simulate.simulate(options.out, days=options.days, seed=options.seed, symbol=options.symbol,
                                trades_per_day=options.trades_per_day, start=str(options.start), progress=log)
    log(f"demo data written to {options.out}: {summary}")
    if stream:
        snapshots = Path(options.out, "data/futures/um/daily/liquidationSnapshot", options.symbol).glob("*.zip")
        kept = write_recording(snapshots, Path(stream))
        log(f"forceOrder stream's recording written to {stream}: {kept['recorded']} of {kept['liquidations']} "
            f"liquidations, {kept['recorded_volume_share']:.1%} of their USD volume")
