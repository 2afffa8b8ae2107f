"""A running server follows new builds. `build.py build` writes a new SQLite file and renames it over the old one
(liquidation_heatmap/export.py), so a server that opened the old file would read it for ever. Here, once a second (a
background task), each database served immutable is checked: when another file is at its path, that file is taken up
as a new Database object for the same name and put in place of the old, without a restart:

- One request, one build: every request sees `datasette.databases` as it was when it began (Databases; this is the
  outermost layer, plugins/asgi_stack.py), so each query of a request reads the build it began on, and the requests
  that begin after the swap read the new one. Nothing fails during a swap.
- One Database object, one file: SQLite opens a file by its name, so a connection opened after the file was
  replaced again would read the newer build. A FollowedBuild's connections are opened when it is taken up (one for
  each SQL thread, one for plugins/ready_answers.py), and any other one checks it opened the same file.
- What Datasette keeps of an immutable database is the new build's: the row counts the table pages show (counted
  from the new file, in a thread, before the swap), the hash (the build id, as the inspect file of `build.py serve`
  has it, so ETags change with the build) and the schema in its internal catalog.
- The old build's connections are closed as soon as the last request that read it has finished: no file stays open
  (its disk space is freed) over any number of swaps.

The other plugins' caches follow by their key: a Database object (one per build) or builds(datasette)."""

import asyncio
import contextvars
import os
import sqlite3

from datasette import hookimpl
from datasette.database import Database
from datasette.utils.internal_db import populate_schema_tables

from liquidation_heatmap.project import log
from liquidation_heatmap.serve import row_counts

CHECK_S = 1.0   # how often the files are looked at (datasette.yaml's plugins.fresh_database.check_s): a stat each


class Databases(dict):
    """`datasette.databases` as the running request sees it: the dict that was in place when it began (`pin`, set
    by wrap), else the latest. A swap puts a new dict in place, as Datasette's add_database does, and never changes
    one a request may hold. Datasette reads it with [], get, in, iteration, keys, values, items and len."""

    def __init__(self, items, pin: contextvars.ContextVar):
        super().__init__(items)
        self.pin = pin

    def seen(self) -> dict:
        pinned = self.pin.get()
        return self if pinned is None else pinned

    def __getitem__(self, name):
        return dict.__getitem__(self.seen(), name)

    def get(self, name, default=None):
        return dict.get(self.seen(), name, default)

    def __contains__(self, name):
        return dict.__contains__(self.seen(), name)

    def __iter__(self):
        return dict.__iter__(self.seen())

    def __len__(self):
        return dict.__len__(self.seen())

    def keys(self):
        return dict.keys(self.seen())

    def values(self):
        return dict.values(self.seen())

    def items(self):
        return dict.items(self.seen())

    def copy(self):
        """The latest, as add_database and remove_database copy it before changing the copy."""
        return Databases(dict.items(self), self.pin)


def same_file(a: os.stat_result, b: os.stat_result) -> bool:
    return (a.st_dev, a.st_ino, a.st_mtime_ns, a.st_size) == (b.st_dev, b.st_ino, b.st_mtime_ns, b.st_size)


def open_file(path: str) -> sqlite3.Connection:
    # (as Datasette opens an immutable file; SQLite opens it at once, so the connection holds that file from here)
    return sqlite3.connect(f"file:{path}?immutable=1", uri=True, check_same_thread=False)


class FollowedBuild(Database):
    """One build of an immutable database: every connection reads the file that was at the path when it was taken
    up. Its row counts, hash and size are that file's."""

    def __init__(self, datasette, path: str, file: os.stat_result, opened: list, build: str, counts: dict):
        super().__init__(datasette, path=path, is_mutable=False)
        self.file, self.opened, self.build = file, opened, build
        self.cached_hash, self.cached_size, self._cached_table_counts = build, file.st_size, counts
        self.readers, self.retired = 0, False   # requests reading it now; another build in its place

    def connect(self, write=False):
        try:
            con = self.opened.pop()
        except IndexError:   # (more than were opened ahead: Datasette's isolated connections, rare when read-only)
            con = open_file(self.path)
            if not same_file(os.stat(self.path), self.file):
                con.close()
                raise sqlite3.OperationalError(f"{self.path} was replaced by a newer build while this request read "
                                               "the previous one: ask again") from None
        self._all_connections.append(con)
        return con

    def close(self):
        super().close()
        for con in self.opened:
            con.close()
        self.opened = []


def take_up(datasette, path: str, known: tuple[str | None, dict] | None = None) -> FollowedBuild | None:
    """The file at `path` as a FollowedBuild (run in a thread: it may count rows), with the row counts `known`
    gives, (build id, counts), if they are this build's (the inspect file of `build.py serve`; None: any build),
    else counted; None when the file changed while it was opened (the next check takes up the newest)."""
    file = os.stat(path)
    opened = [open_file(path) for _ in range(max(1, datasette.setting("num_sql_threads")) + 1)]
    try:
        if not same_file(os.stat(path), file):
            raise FileExistsError
        con = opened[0]
        has_info = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'build_info'").fetchone()
        row = has_info and con.execute("SELECT value FROM build_info WHERE key = 'build_id'").fetchone()
        build = row[0] if row else f"file {file.st_ino} of {file.st_mtime_ns}"
        counts = known[1] if known and known[0] in (None, build) else row_counts(con)
    except BaseException as error:
        for con in opened:
            con.close()
        if isinstance(error, FileExistsError):
            return None
        raise
    return FollowedBuild(datasette, path, file, opened, build, counts)


def latest(datasette) -> dict:
    """The databases in place now, whatever the running request sees."""
    return dict(dict.items(datasette.databases))


def builds(datasette, newest: bool = False) -> tuple:
    """The builds the running request reads (newest: the builds in place now): each followed database's build id,
    the others' names."""
    databases = latest(datasette) if newest else datasette.databases
    return tuple(getattr(db, "build", name) for name, db in databases.items())


def put(datasette, new: Database, old: Database) -> None:
    databases = datasette.databases.copy()
    dict.__setitem__(databases, new.name, new)
    datasette.databases = databases
    retire(old)


def retire(db: Database) -> None:
    db.retired = True
    if not getattr(db, "readers", 0):
        close_soon(db)


def release(db: FollowedBuild) -> None:
    db.readers -= 1
    if db.retired and not db.readers:
        close_soon(db)


def close_soon(db: Database) -> None:
    # (in a thread of its own: close waits for any query of it still running, which must not hold up the others)
    asyncio.get_running_loop().run_in_executor(None, db.close)


async def catalog(datasette, db: Database) -> None:
    """Datasette's internal catalog of the database's tables and columns, the new build's (Datasette refreshes it
    only when the schema version differs, which two builds' may not)."""
    version = (await db.execute("PRAGMA schema_version")).first()[0]
    await populate_schema_tables(datasette.get_internal_database(), db, version)


async def follow(datasette) -> None:
    refused = {}   # path -> the file at it that could not be taken up: not tried again until it changes
    check_s = float((datasette.plugin_config("fresh_database") or {}).get("check_s", CHECK_S))
    while True:
        await asyncio.sleep(check_s)
        for old in latest(datasette).values():
            if not isinstance(old, FollowedBuild):
                continue
            try:
                now = os.stat(old.path)
                if same_file(now, old.file) or (old.path in refused and same_file(now, refused[old.path])):
                    continue
                new = await asyncio.to_thread(take_up, datasette, old.path)
            except FileNotFoundError:   # (gone for now: the build renames a new file into place at once)
                continue
            except (OSError, sqlite3.Error) as error:
                refused[old.path] = now
                log(f"{old.path} changed but cannot be served ({error}): still serving build {old.build}")
                continue
            if new is not None:
                new.name, new.route = old.name, old.route
                await catalog(datasette, new)
                put(datasette, new, old)
                refused.pop(old.path, None)
                log(f"serving the new build {new.build} of {old.path} (was {old.build})")


@hookimpl
def startup(datasette):
    async def take_up_served():
        pin = contextvars.ContextVar(f"databases seen by a request of {id(datasette)}", default=None)
        datasette.databases = Databases(latest(datasette).items(), pin)
        for name, db in latest(datasette).items():
            if db.is_mutable or db.is_memory or not db.path or isinstance(db, FollowedBuild):
                continue
            # the counts Datasette has: the inspect file's (of the build it names), else its own, counted at start
            inspected = (datasette.inspect_data or {}).get(name, {}).get("hash")
            new = await asyncio.to_thread(take_up, datasette, db.path, (inspected, await db.table_counts()))
            if new is not None:
                new.name, new.route = db.name, db.route
                put(datasette, new, db)
        datasette.add_background_task(follow, name="fresh_database")
    return take_up_served


def wrap(datasette, app):
    """Each request reads the builds in place when it began, to its end (plugins/asgi_stack.py: outermost)."""
    async def pinned(scope, receive, send):
        databases = datasette.databases
        if scope["type"] != "http" or not isinstance(databases, Databases) or databases.pin.get() is not None:
            return await app(scope, receive, send)   # (not followed, or a request made within a request)
        held = [db for db in dict.values(databases) if isinstance(db, FollowedBuild)]
        token = databases.pin.set(databases)
        for db in held:
            db.readers += 1
        try:
            await app(scope, receive, send)
        finally:
            databases.pin.reset(token)
            for db in held:
                release(db)
    return pinned
