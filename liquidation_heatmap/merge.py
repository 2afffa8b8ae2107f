"""The symbols' databases (`build --symbols`, fanout.py) as one: a SQLite file holding every output table of each,
which one Datasette serves with every stored query, page and table as they are (datasette.yaml names one database,
"liquidations", and each query takes a symbol).

Every output table has a symbol column but those of the parameters (build_info, leverage_tiers, model_parameters,
heatmap_resolutions, data_quality_kinds), which are the same in every build. So each table gets, from each
symbol's database, that symbol's own rows, then once each the rows no build owns (those of no symbol, or of a
symbol none of the builds is: the maintenance brackets' BTCUSDT, for one). query_defaults keeps the first
symbol's row, as a build of several symbols does; build_info says what was merged. The stored answers are rendered
again over the merged file. Written beside --db and swapped in whole: a running `serve` takes it up."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import uuid
from pathlib import Path

from . import answers
from .export import load_metadata, output_tables
from .project import DATABASE_NAME, BuildError, log

INFO = "build_info"
DEFAULTS = "query_defaults"


def columns(con: sqlite3.Connection, schema: str, table: str) -> list[str]:
    return [row[1] for row in con.execute(f"PRAGMA {schema}.table_info([{table}])")]


def merged_info(infos: dict[str, dict]) -> list[tuple[str, str]]:
    """build_info of the merged file: a key the builds agree on as it is, one they differ on per symbol (the
    files found added up), a new build id (the server's sign of a new file) and the time of the merge."""
    keys = list(dict.fromkeys(key for info in infos.values() for key in info))
    rows = []
    for key in keys:
        values = {symbol: info.get(key, "") for symbol, info in infos.items()}
        if key == "files_found":
            value = str(sum(int(v or 0) for v in values.values()))
        elif len(set(values.values())) == 1:
            value = next(iter(values.values()))
        else:
            value = "; ".join(f"{symbol}: {v}" for symbol, v in values.items())
        rows.append((key, value))
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    fixed = {"build_id": uuid.uuid4().hex, "built_at": now, "symbols": ",".join(infos),
             "merged_from": f"{len(infos)} symbol databases: build.py build --symbols"}
    return [(key, fixed.get(key, value)) for key, value in rows] + [
        (key, value) for key, value in fixed.items() if key not in keys]


def merge_databases(sources: dict[str, Path], target: Path) -> Path:
    """sources (symbol -> its built SQLite file) merged into target, replacing it whole once written."""
    tables = list(output_tables(load_metadata()))
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        # (a new file, swapped in whole after one fsync: no journal, no sync per statement)
        con.execute("PRAGMA journal_mode = OFF")
        con.execute("PRAGMA synchronous = OFF")
        first_symbol, first = next(iter(sources.items()))
        con.execute("ATTACH ? AS src", [str(first)])
        # each table as its build created it (its key, WITHOUT ROWID); its indexes once the rows are in
        schema = dict(con.execute("SELECT name, sql FROM src.sqlite_master WHERE type = 'table'").fetchall())
        if missing := [t for t in tables if t not in schema]:
            raise BuildError(f"{first}: no table {missing[0]}: built by another version? build {first_symbol} again")
        indexes = [sql for (sql,) in con.execute(
            "SELECT sql FROM src.sqlite_master WHERE type = 'index' AND sql IS NOT NULL AND tbl_name IN "
            f"({', '.join('?' * len(tables))})", tables)]
        for table in tables:
            con.execute(schema[table])
        wanted = {table: columns(con, "main", table) for table in tables}
        con.execute("DETACH src")
        infos: dict[str, dict] = {}
        for shared in (False, True):   # every symbol's own rows first, then the rows no build owns, once each
            for symbol, path in sources.items():
                con.execute("ATTACH ? AS src", [str(path)])
                con.execute("BEGIN")
                for table in tables:
                    if table == INFO or shared and table == DEFAULTS:
                        continue
                    if columns(con, "src", table) != wanted[table]:
                        raise BuildError(f"{path}: the columns of {table} differ from {first}'s: built by another "
                                         f"version? build {symbol} again")
                    has_symbol = "symbol" in wanted[table]
                    if not shared and has_symbol:
                        con.execute(f"INSERT INTO main.[{table}] SELECT * FROM src.[{table}] WHERE symbol = ?", [symbol])
                    elif shared:
                        where = " WHERE symbol IS NOT ?" if has_symbol else ""
                        params = [symbol] if has_symbol else []
                        if con.execute(f"SELECT EXISTS (SELECT 1 FROM src.[{table}]{where})", params).fetchone()[0]:
                            con.execute(f"INSERT INTO main.[{table}] SELECT * FROM src.[{table}]{where} "
                                        f"EXCEPT SELECT * FROM main.[{table}]", params)
                if not shared:
                    infos[symbol] = dict(con.execute(f"SELECT key, value FROM src.[{INFO}]").fetchall())
                con.execute("COMMIT")
                con.execute("DETACH src")
        # what an empty symbol parameter stands for: the first symbol, as in a build of several
        con.execute(f"DELETE FROM [{DEFAULTS}] WHERE symbol IS NOT (SELECT min(symbol) FROM [{DEFAULTS}])")
        con.executemany(f"INSERT INTO [{INFO}] VALUES (?, ?)", merged_info(infos))
        for sql in indexes:
            con.execute(sql)
        con.execute("ANALYZE")   # (each build's statistics, for the query planner, as the export writes them)
        con.close()
        log(f"merged {len(sources)} symbols' databases into {tmp.name}; stored "
            f"{answers.store_answers(tmp, DATABASE_NAME)} answers")
        with tmp.open("rb+") as written:
            os.fsync(written.fileno())
        os.replace(tmp, target)
    finally:
        con.close()
        tmp.unlink(missing_ok=True)
    log(f"merged {', '.join(sources)} into {target}")
    return target
