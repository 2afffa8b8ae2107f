"""What a build can keep of the previous one: its key (the code, SQL, seeds and options), the files it read,
and from which day the SQL recomputes."""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import sqlite3
from pathlib import Path

import duckdb

from .files import PARTIAL_SUFFIX
from .options import BuildOptions
from .project import SQL_DIR, BuildError
from .source_file import SourceFile

# Tables the SQL keeps from one build to the next (`CREATE TABLE IF NOT EXISTS`): an incremental
# build recomputes only their rows from rebuild_from on.
PERSISTED = sorted({name for path in SQL_DIR.rglob("*.sql")
                    for name in re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", path.read_text())})


# Files no model reads, only data_quality (rebuilt whole by every build): one that changed recomputes nothing.
UNMODELLED_TYPES = ("recordingGaps",)


def build_key(options: BuildOptions) -> str:
    """What a build's results depend on besides its files: the SQL and seeds, the code, the options. A
    build whose key differs from the previous build's recomputes everything."""
    digest = hashlib.sha256()
    for path in sorted(SQL_DIR.rglob("*.*")) + sorted(Path(__file__).parent.glob("*.py")) + [
            Path(getattr(options, name)) for name in ("parameters", "leverage_tiers", "maintenance_brackets")
            if getattr(options, name)]:
        digest.update(path.name.encode() + path.read_bytes())
    # (not --end: a later end is like a day's files added, and rebuild_from treats it so)
    digest.update(repr([options.start, sorted(options.symbol), options.param, options.horizons]).encode())
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
            return info, con.execute("SELECT path, sha256, status, period, first_ts::VARCHAR, last_ts::VARCHAR FROM src_files "
                                     f"WHERE data_type NOT IN {UNMODELLED_TYPES!r}").fetchall()
    except duckdb.Error:
        return None


def period_start(period: str, first_ts: str | None) -> dt.datetime | None:
    """The first time a file can hold: the start of its day or month, or of its first row if earlier."""
    starts = [dt.datetime.fromisoformat(first_ts)] if first_ts else []
    if period:
        starts.append(dt.datetime.fromisoformat(period if len(period) == 10 else period + "-01"))
    return min(starts) if starts else None


def rebuild_from(previous: tuple[dict, list], files: list[SourceFile], end: dt.date | None) -> str:
    """The UTC day from which the SQL recomputes: the first day any new, changed or removed file holds,
    or the day after the earlier --end if it moved ('infinity' when nothing did; '-infinity', everything,
    when such a file has no time at all). Everything the SQL computes is causal (a row at time t reads
    nothing after t), so what lies before that day is what the previous build computed.

    A partial file of `fetch --today` (rest.py) is only ever extended, so a new version of one holds the
    previous version's rows and then new ones: it changes nothing before the previous version's last row (a
    month's funding rates so far would otherwise recompute the month at every new rate)."""
    previous_info, previous_files = previous
    before = {(path, digest, status): (period, first) for path, digest, status, period, first, _ in previous_files}
    now = {(info.name, info.sha256, info.status): (info.period, info.first_ts) for info in files
           if info.data_type not in UNMODELLED_TYPES}
    rewritten = {path for path, _, status in now.keys() - before.keys() if status == "loaded"}
    extended = {path: dt.datetime.fromisoformat(last) for path, _, status, _, _, last in previous_files
                if path in rewritten and path.endswith(PARTIAL_SUFFIX) and status == "loaded" and last}
    starts = [extended.get(key[0]) or period_start(*(before | now)[key]) for key in before.keys() ^ now.keys()]
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
    previous build's file stays whole with no copy of it first (a copy writes every byte). Otherwise a new
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
