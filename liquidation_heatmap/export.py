"""DuckDB -> SQLite: the output tables metadata.yml describes, written to a new file that replaces the old one
only when whole (an incremental build appends where it can), with their keys and indexes, and the stored answers."""

from __future__ import annotations

import os
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import sqlite_utils
import yaml

from . import answers
from .project import DATABASE_NAME, ROOT, BuildError, log


def load_metadata() -> dict:
    # libyaml's C loader where PyYAML has it: every build parses metadata.yml, and the pure-Python one is slow
    return yaml.load((ROOT / "metadata.yml").read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))


def output_tables(metadata: dict) -> dict[str, dict]:
    """The tables metadata.yml describes are the ones exported: it is the export manifest."""
    return metadata["databases"][DATABASE_NAME]["tables"]


SQLITE_TYPES = {"BIGINT": int, "INTEGER": int, "HUGEINT": int, "UBIGINT": int, "BOOLEAN": int,
                "DOUBLE": float, "FLOAT": float, "DECIMAL": float}


# An export of at most this many rows (an incremental build's, usually) is read from DuckDB first, so that
# DuckDB's commit runs beside the writing of SQLite (DuckDB lets go of the GIL) and costs no time of its
# own: a day added writes far fewer rows than this. More rows stream.
PREFETCH_ROWS = 500_000


def export_sqlite(con, tables: dict[str, dict], db_path: Path, since: str | None, commit,
                  stored_answers: bool = True) -> None:
    """Write the output tables to a new SQLite file, then swap it in: a failed build leaves the old one.
    With `since` (an incremental build, whose previous SQLite file matches its previous DuckDB file), the
    new file starts as a copy of the previous one: the appended tables (appended_from) keep their rows before `since` and
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
        plans = [export_plan(con, db, table, meta, since) for table, meta in tables.items()]
        prefetched = prefetch(con, plans) if since else None
        with ThreadPoolExecutor(max_workers=1) as pool:
            if prefetched:
                plans = [{**plan, "rows": rows} for plan, rows in zip(plans, prefetched)]
                committed = pool.submit(commit)
            for plan in plans:
                write_table(con, db, plan)
            db.close()   # (no VACUUM: a new file has no free pages, and it rewrites the whole file)
            if stored_answers:
                log(f"stored {answers.store_answers(tmp_path, DATABASE_NAME)} answers (the views pages ask for first)")
            else:   # (an incremental build's copy may hold the previous build's: never served stale)
                answers.drop_answers(tmp_path)
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


def export_plan(con, db, table: str, meta: dict, since: str | None) -> dict:
    """How one table is exported: its SQLite columns, the query of its rows and, for an appended table of
    an incremental build, the first time it rewrites."""
    relation = con.table(table)
    columns = {name: SQLITE_TYPES.get(str(kind).split("(")[0], str) for name, kind in zip(relation.columns, relation.types)}
    appended = bool(since) and "appended_from" in meta and table in db.table_names()
    where = f" WHERE ts >= {meta['appended_from']}" if appended else ""
    order = " ORDER BY " + ", ".join(f'"{name}"' for name in meta["key"]) if "key" in meta else ""
    # (times are ISO-8601 text in SQLite; 'infinity' sorts after every one)
    first = con.execute(f"SELECT coalesce(iso_utc({meta['appended_from']}), 'infinity')").fetchone()[0] if appended else None
    return {"table": table, "columns": columns, "first": first, "meta": meta,
            "select": f"SELECT {export_columns(relation)} FROM {table}{where}{order}"}


def write_table(con, db, plan: dict) -> None:
    """One table into the SQLite file: its rows from plan['first'] on replaced, or the whole table, from the
    rows read already (plan['rows']) or streamed from DuckDB."""
    table, columns, first, meta = plan["table"], plan["columns"], plan["first"], plan["meta"]
    if first:
        db.conn.execute(f"DELETE FROM [{table}] WHERE ts >= ?", [first])
    else:
        db[table].drop(ignore=True)
        create = db.create_table_sql(table, columns, pk=meta.get("key")).rstrip().rstrip(";")
        db.execute(create + (" WITHOUT ROWID" if "key" in meta else ""))
    insert = f"INSERT INTO [{table}] VALUES ({', '.join('?' * len(columns))})"
    if "rows" in plan:
        db.conn.executemany(insert, plan["rows"])
    else:
        cursor = con.execute(plan["select"])
        while batch := cursor.fetchmany(50_000):
            db.conn.executemany(insert, batch)
    for index in meta.get("indexes", []):
        db[table].create_index(index, if_not_exists=True)
    if "appended_from" in meta and not first:
        # SQLite's statistics let the next build's delete of the rows from `since` on skip-scan the
        # key (model, symbol, ts, ...) instead of reading every row
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
    build's transaction: one commit, where a commit per comment writes to the file once a comment)."""
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
