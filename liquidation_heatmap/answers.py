"""The stored answers: the JSON answers of the views the pages and the API ask for first, rendered by Datasette
itself when the database is built and stored in it (table stored_answers, gzip-compressed), so that the server
sends them as a static file server sends a file, without running the query, even asked afresh. The database is
served immutable: an answer rendered from it stays the answer until the next build writes a new file.

Which views: datasette.yaml, plugins.stored_answers (a list of parameter sets per query; "*" stands for the
empty value and each value plugins.liquidation_params allows). plugins/ready_answers.py sends them."""

import asyncio
import gzip
import itertools
import json
import sqlite3
from pathlib import Path
from urllib.parse import urlencode

import yaml

from .project import ROOT

TABLE = "stored_answers"
# headers the server sets itself when it sends a stored answer (its length, its encoding)
NOT_STORED = {"content-length", "content-encoding", "vary", "x-cache"}
CONCURRENT = 4   # answers rendered at once (Datasette runs their SQL in its threads)


def request_key(path: str, pairs) -> str:
    """A request as stored answers are keyed: its parameters sorted, the empty ones left out (to a stored query an
    empty parameter is one left out). The build writes keys with it and plugins/ready_answers.py looks them up."""
    kept = sorted((name, value) for name, value in pairs if value != "")
    return f"{path}?{urlencode(kept)}" if kept else path


def config() -> dict:
    return yaml.safe_load((ROOT / "datasette.yaml").read_text())


def allowed(con: sqlite3.Connection, checks: dict, query: str, param: str) -> list[str]:
    """The values plugins.liquidation_params allows for a query's parameter, as text."""
    sql = checks.get(f"{query}.{param}", checks.get(param))
    return [str(value) for (value, *_) in con.execute(sql)] if sql else []


def requests(con: sqlite3.Connection, settings: dict, database: str = "liquidations") -> list[str]:
    """Every request to store: path and query string, its parameters sorted and the empty ones left out (as the
    server reads a request: an empty parameter is one left out, to a stored query). A list value is each of its
    values in turn, but for Datasette's own options (_json=a&_json=b): the option repeated."""
    checks = settings["plugins"]["liquidation_params"]
    wanted = settings["plugins"][TABLE]
    found = []
    for query in settings["databases"][database]["queries"]:
        for params in wanted.get("every_query", []) + wanted.get(query, []):
            choices = []
            for name, value in params.items():
                if value == "*":
                    choices.append([(name, v) for v in ["", *allowed(con, checks, query, name)]])
                elif isinstance(value, list) and not name.startswith("_"):
                    choices.append([(name, str(v)) for v in value])
                else:
                    choices.append([[(name, str(v)) for v in (value if isinstance(value, list) else [value])]])
            for combination in itertools.product(*choices):
                found.append(request_key(f"/{database}/{query}.json", [
                    pair for item in combination for pair in (item if isinstance(item, list) else [item])]))
    return list(dict.fromkeys(found))


async def render(db_path: Path, wanted: list[str], database: str) -> list[tuple]:
    """Each request's answer from the Datasette `build.py serve` runs (its config, metadata and plugins), over
    the new file: (request, headers as JSON, gzip-compressed body). An answer other than 200 fails the build."""
    from datasette.app import Datasette
    from datasette.database import Database
    settings = config()
    ds = Datasette(config=settings, metadata=yaml.safe_load((ROOT / "metadata.yml").read_text()),
                   plugins_dir=str(ROOT / "plugins"), template_dir=str(ROOT / "templates"))
    ds.add_database(Database(ds, path=str(db_path), is_mutable=False), name=database)
    await ds.invoke_startup()

    async def one(request: str) -> tuple:
        response = await ds.client.get(request, headers={"Accept-Encoding": "identity", "Cache-Control": "no-cache"})
        if response.status_code != 200:
            raise RuntimeError(f"stored answer {request}: HTTP {response.status_code}: {response.text[:300]}")
        headers = [(name, value) for name, value in response.headers.multi_items() if name not in NOT_STORED]
        # (compressed in a thread, beside the next answers' rendering: zlib lets go of the GIL)
        return request, json.dumps(headers), await asyncio.to_thread(gzip.compress, response.content, 6, mtime=0)
    rendered = []
    for start in range(0, len(wanted), CONCURRENT):
        rendered += await asyncio.gather(*map(one, wanted[start:start + CONCURRENT]))
    return rendered


def drop_answers(db_path: Path) -> None:
    with sqlite3.connect(db_path) as con:
        con.execute(f"DROP TABLE IF EXISTS {TABLE}")
    con.close()


def store_answers(db_path: Path, database: str = "liquidations") -> int:
    """Render the stored answers of the SQLite file at db_path (being built, not yet served) and write them into
    it, replacing those of a previous build (an incremental build starts from a copy). Returns how many."""
    drop_answers(db_path)   # (first: the server rendering them would send the previous build's)
    con = sqlite3.connect(db_path)
    try:
        wanted = requests(con, config(), database)
        rendered = asyncio.run(render(db_path, wanted, database))
        with con:
            con.execute(f"CREATE TABLE {TABLE} (request TEXT PRIMARY KEY, headers TEXT NOT NULL, body_gzip BLOB NOT NULL)")
            con.executemany(f"INSERT INTO {TABLE} VALUES (?, ?, ?)", rendered)
    finally:
        con.close()
    return len(rendered)
