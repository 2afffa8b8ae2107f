"""Answers sent without running the query: kept in memory after a first run, or stored in the database by the build.
Both rest on one fact: a build served immutable (`build.py serve` serves it so) cannot change, so a GET of it, or of
a page that reads only it (the index, templates/pages/), always gets the same answer. A newer build is put in place
as another Database object, and a request reads one build to its end (plugins/fresh_database.py): the answers kept
are those of the builds in place, dropped at the first request that reads newer ones, and a stored answer is read
from the request's own build.
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
import weakref
from collections import OrderedDict
from urllib.parse import parse_qsl

from datasette.plugins import pm

from liquidation_heatmap.answers import request_key  # (how the build keyed them)

CACHE_BYTES = 64 * 2**20     # a 30-day heatmap's answer is 145 KB compressed
CACHE_LARGEST = 4 * 2**20


class Kept(OrderedDict):
    """(path, query string, gzip?) -> (start message, body), least recently used first, CACHE_BYTES in all, of the
    builds `builds` (plugins/fresh_database.py builds())."""
    size = 0
    builds = None

    def renew(self, builds: tuple) -> None:
        self.clear()
        self.size, self.builds = 0, builds

    def keep(self, key, start, body: bytes) -> None:
        if key in self:   # (asked afresh: the new answer replaces the old)
            self.size -= len(self.pop(key)[1])
        self[key], self.size = (start, body), self.size + len(body)
        while self.size > CACHE_BYTES:
            self.size -= len(self.popitem(last=False)[1][1])


_stored = weakref.WeakKeyDictionary()   # Database (one build) -> a connection to it, or None: no stored answers


def stored(datasette, scope, gzipped: bool) -> tuple[dict, bytes] | None:
    """The stored answer to a GET of a JSON answer of an immutable database, as (start message, body)."""
    path = scope["path"]
    database = datasette.databases.get(path.split("/")[1])
    if database is None or database.is_mutable or not database.path or not path.endswith(".json"):
        return None
    if database not in _stored:
        con = database.connect()   # (to the request's own build, and closed with it: plugins/fresh_database.py)
        found = con.execute("SELECT 1 FROM sqlite_master WHERE name = 'stored_answers'").fetchone()
        _stored[database] = con if found else None
    if (con := _stored[database]) is None:
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
    following = pm.get_plugin("fresh_database.py")

    async def answer(scope, receive, send):
        headers = dict(scope.get("headers", ()))
        if (scope["type"] != "http" or scope["method"] != "GET" or b"cookie" in headers or b"authorization" in headers
                or not immutable(datasette, scope)):
            return await app(scope, receive, send)
        builds = following.builds(datasette)
        if builds != answers.builds and builds == following.builds(datasette, newest=True):
            answers.renew(builds)   # (a request of an older build, still running, neither reads nor keeps)
        key = (scope["path"], scope["query_string"], b"gzip" in headers.get(b"accept-encoding", b""))
        if builds == answers.builds and key in answers and b"no-cache" not in headers.get(b"cache-control", b""):
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
        if (builds == answers.builds and len(sent) == 2 and sent[0].get("status") == 200 and not sent[1].get("more_body")
                and not any(name.lower() == b"set-cookie" for name, _ in sent[0].get("headers", ()))
                and len(body := sent[1].get("body", b"")) <= CACHE_LARGEST):
            answers.keep(key, sent[0], body)
    return answer
