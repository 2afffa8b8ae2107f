"""How responses leave the server, as from a static file server.

Compressed: asgi-gzip (the middleware datasette-gzip wraps) at level 1, not datasette-gzip's 9, because it
compresses in the event loop: on the 30-day heatmap's 336 KB of JSON, level 9 took 40 ms a request and level 1
6 ms, for a body 15 % larger.

Kept: a database served immutable (`build.py serve` serves it so) cannot change while the server runs, so a
GET of it, or of a page that reads only it (the index, templates/pages/), always gets the same answer. The
answer is kept, compressed, and sent again without running the query, as a caching proxy in front would (up to
CACHE_BYTES in all, least recently used out first). Not kept: requests with a cookie or an Authorization header
(an actor may see other things), answers other than a whole 200 or that set a cookie, and mutable databases
(and, beside one, the index and the pages). A request that says `Cache-Control: no-cache` gets a fresh answer,
which is kept. Datasette's `query_ms` in a kept JSON answer is the first run's.

Stored: the answers the build rendered and stored in the database (answers.py, table stored_answers: the views
the pages and the API ask for first) are read from it and sent, asked afresh or not, as a static file server
sends a file: the query does not run (header x-cache: stored). A request is looked up with its parameters
sorted and the empty ones left out, as the build wrote them.

Read-only: a request other than GET, HEAD or OPTIONS to an immutable database is refused, 405, as a static file
server would, before Datasette sees it. Datasette refuses each write itself (403), all but one: a POST to
/{db}/-/query is a 500 in 1.0a41 (its view looks for a table in the URL).

Plotly: the partial bundle in plugins/plotly/ (1.2 MB, never a CDN), compressed once, at level 9, when the
server starts, and served from memory under a URL named by its content, which browsers may cache for good."""

import asyncio
import gzip
import hashlib
import json
import os
import sqlite3
import weakref
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from asgi_gzip import GZipMiddleware
from datasette import hookimpl
from datasette.utils.asgi import Response

PLOTLY_JS = Path(__file__).parent / "plotly" / "plotly-liquidation.min.js"
PLOTLY_URL = f"/assets/plotly-{hashlib.sha256(PLOTLY_JS.read_bytes()).hexdigest()[:12]}.min.js"
_plotly = {}


@hookimpl
def startup(datasette):
    async def compress():
        raw = PLOTLY_JS.read_bytes()
        _plotly.update(raw=raw, gzip=await asyncio.to_thread(gzip.compress, raw, 9, mtime=0))
    return compress


async def plotly_js(request):
    gzipped = "gzip" in request.headers.get("accept-encoding", "")
    # (lower case, as ASGI has them: asgi-gzip then sees the body is compressed already)
    headers = {"cache-control": "public, max-age=31536000, immutable", "vary": "Accept-Encoding",
               **({"content-encoding": "gzip"} if gzipped else {})}
    return Response(_plotly["gzip" if gzipped else "raw"], headers=headers,
                    content_type="application/javascript; charset=utf-8")


@hookimpl
def register_routes():
    return [(PLOTLY_URL.replace(".", r"\."), plotly_js)]


@hookimpl
def extra_template_vars():
    return {"plotly_url": PLOTLY_URL}


CACHE_BYTES = 64 * 2**20     # a 30-day heatmap's answer is 145 KB compressed
CACHE_LARGEST = 4 * 2**20


def immutable(datasette, scope) -> bool:
    """Whether the request's path is under a database served immutable, or is the index or a page of templates/
    pages/ (which read only the databases) while every database is served immutable."""
    first = scope["path"].split("/")[1]
    database = first.split(".")[0]
    if database in datasette.databases:
        return not datasette.databases[database].is_mutable
    return first != "-" and not any(db.is_mutable for db in datasette.databases.values())


def cacheable(datasette, scope, headers: dict) -> bool:
    return (scope["method"] == "GET" and b"cookie" not in headers and b"authorization" not in headers
            and immutable(datasette, scope))


READ_ONLY = Response.json({"ok": False, "error": "This database is served read-only", "status": 405}, status=405,
                          headers={"Allow": "GET, HEAD, OPTIONS"})


class Kept(OrderedDict):
    """(path, query string, gzip?) -> (start message, body), least recently used first, CACHE_BYTES in all."""
    size = 0

    def keep(self, key, start, body: bytes) -> None:
        if key in self:   # (asked afresh: the new answer replaces the old)
            self.size -= len(self.pop(key)[1])
        self[key], self.size = (start, body), self.size + len(body)
        while self.size > CACHE_BYTES:
            self.size -= len(self.popitem(last=False)[1][1])


_stored = {}   # (database file, inode, mtime) -> a read-only connection, or None when it has no stored answers


def stored(datasette, scope, gzipped: bool) -> tuple[dict, bytes] | None:
    """The stored answer to a GET of a JSON answer of an immutable database, as (start message, body)."""
    path = scope["path"]
    database = datasette.databases.get(path.split("/")[1])
    if database is None or database.is_mutable or not database.path or not path.endswith(".json"):
        return None
    file = os.stat(database.path)   # (a new build is a new file at the same path: its own answers)
    if (where := (database.path, file.st_ino, file.st_mtime_ns)) not in _stored:
        con = sqlite3.connect(f"file:{database.path}?immutable=1", uri=True, check_same_thread=False)
        found = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'stored_answers'").fetchone()
        _stored[where] = con if found else con.close()
    if (con := _stored[where]) is None:
        return None
    pairs = sorted((k, v) for k, v in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True) if v)
    row = con.execute("SELECT headers, body_gzip FROM stored_answers WHERE request = ?",
                      [f"{path}?{urlencode(pairs)}" if pairs else path]).fetchone()
    if row is None:
        return None
    body = row[1] if gzipped else gzip.decompress(row[1])
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(row[0])]
    headers += [(b"content-length", str(len(body)).encode()), (b"vary", b"Accept-Encoding"), (b"x-cache", b"stored"),
                *([(b"content-encoding", b"gzip")] if gzipped else [])]
    return {"type": "http.response.start", "status": 200, "headers": headers}, body


_kept = weakref.WeakKeyDictionary()   # one per Datasette, which builds its app anew for each in-process request


def kept(datasette, app):
    answers = _kept.setdefault(datasette, Kept())

    async def answer(scope, receive, send):
        headers = dict(scope.get("headers", ()))
        if scope["type"] == "http" and scope["method"] not in ("GET", "HEAD", "OPTIONS") and immutable(datasette, scope):
            return await READ_ONLY.asgi_send(send)
        if scope["type"] != "http" or not cacheable(datasette, scope, headers):
            return await app(scope, receive, send)
        key = (scope["path"], scope["query_string"], b"gzip" in headers.get(b"accept-encoding", b""))
        if key in answers and b"no-cache" not in headers.get(b"cache-control", b""):
            answers.move_to_end(key)
            start, body = answers[key]
            await send({**start, "headers": [*start["headers"], (b"x-cache", b"hit")]})
            return await send({"type": "http.response.body", "body": body})
        if answer := stored(datasette, scope, key[2]):
            await send(answer[0])
            return await send({"type": "http.response.body", "body": answer[1]})
        sent = []

        async def keep(message):
            sent.append(message)
            await send(message)
        await app(scope, receive, keep)
        if (len(sent) == 2 and sent[0].get("status") == 200 and not sent[1].get("more_body")
                and not any(name.lower() == b"set-cookie" for name, _ in sent[0].get("headers", ()))
                and len(body := sent[1].get("body", b"")) <= CACHE_LARGEST):
            answers.keep(key, sent[0], body)
    return answer


@hookimpl(trylast=True)
def asgi_wrapper(datasette):
    return lambda app: kept(datasette, GZipMiddleware(app, minimum_size=1000, compresslevel=1))
