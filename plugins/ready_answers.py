"""Answers sent without running the query: kept in memory after a first run, or stored in the database by the build.
Both rest on one fact: a database served immutable (`build.py serve` serves it so) cannot change while the server
runs, so a GET of it, or of a page that reads only it (the index, templates/pages/), always gets the same answer.
This is the outermost layer (plugins/asgi_stack.py): an answer found here is sent as it is, with no parameter
check, no compression and no SQL.

Kept: the answer is kept, compressed, and sent again without running the query, as a caching proxy in front would
(up to CACHE_BYTES in all, least recently used out first). Not kept: requests with a cookie or an Authorization
header (an actor may see other things), answers other than a whole 200 or that set a cookie, and mutable databases
(and, beside one, the index and the pages). A request that says `Cache-Control: no-cache` gets a fresh answer,
which is kept. Datasette's `query_ms` in a kept JSON answer is the first run's.

Stored: the answers the build rendered and stored in the database (liquidation_heatmap/answers.py, table stored_answers: the views
the pages and the API ask for first) are read from it and sent, asked afresh or not, as a static file server
sends a file: the query does not run (header x-cache: stored). A request is looked up with its parameters
sorted and the empty ones left out, as the build wrote them."""

import gzip
import json
import os
import sqlite3
import weakref
from collections import OrderedDict
from urllib.parse import parse_qsl

from datasette.plugins import pm

from liquidation_heatmap.answers import request_key  # (how the build keyed them)

CACHE_BYTES = 64 * 2**20     # a 30-day heatmap's answer is 145 KB compressed
CACHE_LARGEST = 4 * 2**20


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
    pairs = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
    row = con.execute("SELECT headers, body_gzip FROM stored_answers WHERE request = ?",
                      [request_key(path, pairs)]).fetchone()
    if row is None:
        return None
    body = row[1] if gzipped else gzip.decompress(row[1])
    headers = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in json.loads(row[0])]
    headers += [(b"content-length", str(len(body)).encode()), (b"vary", b"Accept-Encoding"), (b"x-cache", b"stored"),
                *([(b"content-encoding", b"gzip")] if gzipped else [])]
    return {"type": "http.response.start", "status": 200, "headers": headers}, body


_kept = weakref.WeakKeyDictionary()   # one per Datasette, which builds its app anew for each in-process request


def wrap(datasette, app):
    answers = _kept.setdefault(datasette, Kept())
    immutable = pm.get_plugin("read_only.py").immutable   # (what cannot change while the server runs: the same rule)

    async def answer(scope, receive, send):
        headers = dict(scope.get("headers", ()))
        if (scope["type"] != "http" or scope["method"] != "GET" or b"cookie" in headers or b"authorization" in headers
                or not immutable(datasette, scope)):
            return await app(scope, receive, send)
        key = (scope["path"], scope["query_string"], b"gzip" in headers.get(b"accept-encoding", b""))
        if key in answers and b"no-cache" not in headers.get(b"cache-control", b""):
            answers.move_to_end(key)
            start, body = answers[key]
            await send({**start, "headers": [*start["headers"], (b"x-cache", b"hit")]})
            return await send({"type": "http.response.body", "body": body})
        if found := stored(datasette, scope, key[2]):
            await send(found[0])
            return await send({"type": "http.response.body", "body": found[1]})
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
