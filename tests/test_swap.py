"""A running server follows new builds (plugins/fresh_database.py): a real server over a copy of the demo database,
whose file is replaced (os.replace, as the build does) by another real build while clients ask stored answers, kept
answers, queries, tables and pages: no request fails, each answer is wholly one build's, new requests read the new
build, and no file stays open over many swaps. The second build is the demo's with a recognisable change: its own
build id and build time, one more build_info row, a later klines time in data_coverage and a stored answer that
says so."""

import asyncio
import datetime as dt
import gzip
import json
import os
import re
import shutil
import sqlite3
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml
from conftest import ROOT, start_server
from datasette.app import Datasette
from datasette.plugins import pm

CHECK_S = "0.1"   # (the server looks at its file every CHECK_S seconds; 1 by default)
STORED = "/liquidations/coverage.json?_shape=array"   # a stored answer (stored_answers)
B_BUILT, B_KLINES = "2030-01-02T03:04:05Z", "2024-09-05T00:30:00Z"


def info(db: Path) -> dict:
    with sqlite3.connect(db) as con:
        built = dict(con.execute("SELECT key, value FROM build_info").fetchall())
        klines = con.execute("SELECT max(last_ts) FROM data_coverage WHERE data_type = 'klines'").fetchone()[0]
        count = con.execute("SELECT count(*) FROM build_info").fetchone()[0]
    return {"build_id": built["build_id"], "built_at": built["built_at"], "klines": klines, "count": count}


def second_build(first: Path, out: Path) -> Path:
    """`first` changed as another build would be: its id and time, a row more in build_info, a later klines time,
    and its stored coverage answer saying its own build time."""
    shutil.copyfile(first, out)
    built_at = info(first)["built_at"]
    with sqlite3.connect(out) as con:
        con.execute("UPDATE build_info SET value = 'swap-b' WHERE key = 'build_id'")
        con.execute("UPDATE build_info SET value = ? WHERE key = 'built_at'", [B_BUILT])
        con.execute("INSERT INTO build_info VALUES ('swap_marker', 'b')")
        con.execute("UPDATE data_coverage SET last_ts = ? WHERE data_type = 'klines'", [B_KLINES])
        body = gzip.decompress(con.execute("SELECT body_gzip FROM stored_answers WHERE request = ?", [STORED]).fetchone()[0])
        con.execute("UPDATE stored_answers SET body_gzip = ? WHERE request = ?",
                    [gzip.compress(body.replace(built_at.encode(), B_BUILT.encode())), STORED])
    return out


@pytest.fixture(scope="module")
def builds(demo_db, tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("swap")
    a = folder / "a.db"
    shutil.copyfile(demo_db, a)
    b = second_build(a, folder / "b.db")
    (folder / "served").mkdir()
    served = folder / "served" / "liquidations.db"   # (Datasette names the database after the file)
    shutil.copyfile(a, served)
    return {"a": a, "b": b, "served": served, "info": {"a": info(a), "b": info(b)}}


def put_in_place(build: Path, served: Path) -> None:
    """Another build renamed over the served file, as the build renames its new file (export.py): here a hard link
    of a build made before, so that swapping costs no copy."""
    new = served.with_name("new.db")
    os.link(build, new)
    os.replace(new, served)


def get(url: str) -> tuple[int, str, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read().decode(), dict(response.headers)
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(), dict(error.headers)


def one_build(labels: set, what: str) -> str:
    """The one build an answer's values name, or an error naming the mix."""
    if len(labels) != 1 or None in labels:
        raise AssertionError(f"{what}: values of builds {labels}")
    return labels.pop()


def freshness(body: str) -> str:
    return re.search(r'class="freshness">([^<]*)<', body)[1]


def answers(builds: dict) -> dict:
    """path -> what its answer says of the build it read ('a' or 'b'): each from two or more values read by
    different queries of the request where it has them."""
    a, b = builds["info"]["a"], builds["info"]["b"]
    built = {a["built_at"]: "a", b["built_at"]: "b"}
    klines = {a["klines"]: "a", b["klines"]: "b"}

    def said(when: str) -> str:   # (as the freshness line writes a time: 4 Sep 2024 23:59, or 23:59 after that day)
        t = dt.datetime.fromisoformat(when)
        return f"{t.day} {t:%b %Y %H:%M}"

    def page(body: str) -> str:
        line = freshness(body)
        return one_build({next((k for w, k in klines.items() if said(w) + " UTC (klines)" in line), None),
                          next((k for w, k in built.items() if f"built {said(w)} UTC" in line), None)}, line)

    def ran(body: str) -> str:
        rows = json.loads(body)
        return one_build({built.get(rows[0]["built_at"]), *(klines.get(r["last_ts"]) for r in rows
                                                             if r["data_type"] == "klines")}, "coverage")

    def counted(body: str) -> str:
        count = next(t["count"] for t in json.loads(body)["tables"] if t["name"] == "build_info")
        return {a["count"]: "a", b["count"]: "b"}[count]
    return {
        STORED: lambda body: one_build({built.get(json.loads(body)[0]["built_at"])}, "stored"),
        "/liquidations/coverage.json?_shape=array&symbol=BTCUSDT": ran,   # run, then kept
        "/liquidations.json": counted,   # the row counts (an immutable database's: the inspect data's)
        "/heatmap?model=ensemble": page,
        "/": page,
    }


def test_requests_during_swaps_read_one_build_each_and_new_ones_the_new_build(builds):
    process, url = start_server(builds["served"], settings=[("plugins.fresh_database.check_s", CHECK_S)])
    checks, seen, failures, stop = answers(builds), [], [], threading.Event()

    def client():
        while not stop.is_set():
            for path, build_of in checks.items():
                status, body, _ = get(url + path)
                try:
                    assert status == 200, f"{path}: {status} {body[:300]}"
                    seen.append((path, build_of(body)))
                except AssertionError as error:
                    failures.append(str(error))

    def served() -> dict:
        """What each kind of answer says now (after the swap): each asked twice, the second kept where it is."""
        now = {}
        for path, build_of in checks.items():
            for _ in range(2):
                status, body, headers = get(url + path)
                assert status == 200, body
                now[path] = (build_of(body), headers.get("x-cache"))
        return now
    try:
        assert {build for build, _ in served().values()} == {"a"}
        clients = [threading.Thread(target=client) for _ in range(3)]
        for thread in clients:
            thread.start()
        for build in ("b", "a", "b", "a", "b"):
            put_in_place(builds[build], builds["served"])
            deadline = time.monotonic() + 20
            while checks[STORED](get(url + STORED)[1]) != build:
                assert time.monotonic() < deadline, f"build {build} not served after 20 s"
                time.sleep(0.05)
            time.sleep(0.3)   # (the clients ask across the swap)
            now = served()
            assert {path: found for path, (found, _) in now.items()} == dict.fromkeys(checks, build)
            assert now[STORED][1] == "stored" and now["/heatmap?model=ensemble"][1] == "hit"   # kept anew
        stop.set()
        for thread in clients:
            thread.join(timeout=60)
    finally:
        stop.set()
        process.terminate()
        process.wait(timeout=10)
    assert failures == []
    assert {build for _, build in seen} == {"a", "b"} and len(seen) > 50


def open_files(pid: int, served: Path) -> tuple[int, int]:
    """The files process `pid` holds open: all, and the builds at `served` (whatever replaced the file since)."""
    names = [os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")]
    return len(names), sum(name.removesuffix(" (deleted)") == str(served) for name in names)


def test_no_file_stays_open_over_many_swaps(builds):
    """The old builds' connections are closed once unread: over 20 swaps the server holds one build's connections
    (one per SQL thread and one for the stored answers), and no more files in all than before."""
    put_in_place(builds["a"], builds["served"])
    process, url = start_server(builds["served"], settings=[("plugins.fresh_database.check_s", CHECK_S)])
    checks = answers(builds)
    try:
        counts = []
        for i, build in enumerate(["b", "a"] * 10):
            put_in_place(builds[build], builds["served"])
            deadline = time.monotonic() + 20
            while checks[STORED](get(url + STORED)[1]) != build:
                assert time.monotonic() < deadline, f"swap {i + 1}: build {build} not served after 20 s"
                time.sleep(0.05)
            for path in ("/liquidations.json", "/liquidations/coverage.json?_shape=array&symbol=BTCUSDT"):
                assert get(url + path)[0] == 200   # (each build read: its connections used)
            time.sleep(0.2)   # (the old build is closed in a thread once its last request is done)
            counts.append(open_files(process.pid, builds["served"]))
    finally:
        process.terminate()
        process.wait(timeout=10)
    assert {builds_open for _, builds_open in counts} == {3 + 1}, counts   # (datasette.yaml: num_sql_threads 3)
    # (Datasette's own internal database opens a connection in each thread as it first reads it: early on)
    assert counts[-1][0] <= max(total for total, _ in counts[:10]), counts


CONFIG = yaml.safe_load((ROOT / "datasette.yaml").read_text())


async def test_a_request_reads_the_build_it_began_on_to_its_end(builds, tmp_path):
    """In process: a request that began on one build reads it to its end, though a newer build is put in place while
    it runs; the next request reads the newer one; the older build's connections are closed once it is done."""
    served = tmp_path / "liquidations.db"
    shutil.copyfile(builds["a"], served)
    config = {**CONFIG, "plugins": {**CONFIG["plugins"], "fresh_database": {"check_s": 0.05}}}
    ds = Datasette(immutables=[str(served)], config=config, template_dir=str(ROOT / "templates"),
                   plugins_dir=str(ROOT / "plugins"))
    await ds.client.get("/-/versions.json")   # (starts it: the check's background task runs from here)
    following = pm.get_plugin("fresh_database.py")
    build_id = "SELECT value FROM build_info WHERE key = 'build_id'"
    read, old = [], ds.get_database("liquidations")

    async def answer(scope, receive, send):   # a request's handler: reads, a new build comes, reads again
        read.append((await ds.get_database("liquidations").execute(build_id)).single_value())
        put_in_place(builds["b"], served)
        while following.builds(ds, newest=True) == following.builds(ds):
            await asyncio.sleep(0.02)
        read.append((await ds.databases["liquidations"].execute(build_id)).single_value())
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def receive():
        return {"type": "http.request"}
    sent = []

    async def send(message):
        sent.append(message)
    await following.wrap(ds, answer)({"type": "http", "method": "GET", "path": "/", "headers": []}, receive, send)
    assert read == [builds["info"]["a"]["build_id"]] * 2 and sent[0]["status"] == 204
    assert (await ds.client.get("/liquidations/build_info.json?key=build_id&_shape=array")).json()[0]["value"] \
        == "swap-b"
    for _ in range(100):
        if old._closed:
            break
        await asyncio.sleep(0.02)
    assert old._closed and ds.get_database("liquidations") is not old
