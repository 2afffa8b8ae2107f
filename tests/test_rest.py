"""build.py fetch --today: today's rows so far from Binance's REST API (a real HTTP server on 127.0.0.1 answering
its endpoints in Binance's shapes, from the demo's simulated files) into .partial.csv files in the Vision layout.

The server's clock says 2024-09-02 06:00:30 UTC; it enforces each endpoint's limits, reports the request weight
used, and answers once with a 429 and once with a 503. Page sizes are made small so that six hours take pages."""

import datetime as dt
import functools
import http.server
import json
import shutil
import sqlite3
import threading
import time
import urllib.parse
from pathlib import Path

import pytest
from conftest import read_zip_lines, run_build

import build
from liquidation_heatmap import files, rest

DAY = "2024-09-02"
DAY_MS = int(dt.datetime.fromisoformat(DAY).replace(tzinfo=dt.UTC).timestamp() * 1000)   # (utc_ms, below)
NOW_MS = DAY_MS + 6 * 3_600_000 + 30_000          # 06:00:30: the 06:00 bar is still open
LATER_MS = DAY_MS + 12 * 3_600_000 + 30_000
UM = "data/futures/um"
PARTIALS = {"klines": f"{UM}/daily/klines/BTCUSDT/1m/BTCUSDT-1m-{DAY}.partial.csv",
            "markPriceKlines": f"{UM}/daily/markPriceKlines/BTCUSDT/1m/BTCUSDT-1m-{DAY}.partial.csv",
            "aggTrades": f"{UM}/daily/aggTrades/BTCUSDT/BTCUSDT-aggTrades-{DAY}.partial.csv",
            "metrics": f"{UM}/daily/metrics/BTCUSDT/BTCUSDT-metrics-{DAY}.partial.csv",
            "fundingRate": f"{UM}/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-09.partial.csv"}
MAX_LIMITS = {"/fapi/v1/klines": 1500, "/fapi/v1/markPriceKlines": 1500, "/fapi/v1/aggTrades": 1000,
              "/fapi/v1/fundingRate": 1000, "/futures/data/": 500, "/fapi/v1/": 1000}
RATIOS = {"/futures/data/topLongShortAccountRatio": (4, "longShortRatio"),
          "/futures/data/topLongShortPositionRatio": (5, "longShortRatio"),
          "/futures/data/globalLongShortAccountRatio": (6, "longShortRatio"),
          "/futures/data/takerlongshortRatio": (7, "buySellRatio")}
UNAVAILABLE = "/futures/data/takerlongshortRatio"   # answered 400, as an endpoint without the symbol: an empty column


def vision_rows(root: Path, kind: str) -> list[list[str]]:
    """The fields of each row of the demo's Vision file of `kind` (fundingRate: the month's), header left out."""
    return [line.split(",") for line in read_zip_lines(root / PARTIALS[kind].replace(".partial.csv", ".zip"))[1:]]


def utc_ms(text: str) -> int:
    return int(dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC).timestamp() * 1000)


def expected(root: Path, kind: str, now_ms: int) -> list[str]:
    """The lines a partial file holds at now_ms: the Vision file's rows before then (bars closed by then), with
    the metrics' taker ratio empty (UNAVAILABLE)."""
    time_of = {"klines": 6, "markPriceKlines": 6, "aggTrades": 5, "fundingRate": 0}
    if kind == "metrics":
        return [",".join([*r[:7], ""]) for r in vision_rows(root, kind) if utc_ms(r[0]) < now_ms]
    return [",".join(r) for r in vision_rows(root, kind) if int(r[time_of[kind]]) < now_ms]


def max_limit(path: str) -> int:
    return next(n for prefix, n in MAX_LIMITS.items() if path.startswith(prefix))


class BinanceHandler(http.server.BaseHTTPRequestHandler):
    """Binance's REST answers for BTCUSDT up to the server's clock: at most `limit` rows, ascending."""

    def do_GET(self):
        server, url = self.server, urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        with server.lock:
            server.requests.append((url.path, query))
            queue = server.faults.get(url.path)
            fault = queue.pop(0) if queue else None
        limit = int(query.get("limit", 500))
        weight = rest.kline_weight(limit) if "lines" in url.path else 20 if "aggTrades" in url.path else 1
        if fault in ("429", "418"):
            return self.answer(int(fault), {"code": -1003, "msg": "Too many requests"}, weight,
                               {"Retry-After": server.retry_after})
        if fault == "503":
            return self.answer(503, {"code": -1001, "msg": "Service unavailable"}, weight)
        if url.path == UNAVAILABLE:
            return self.answer(400, {"code": -1121, "msg": "Invalid symbol."}, weight)
        if limit > max_limit(url.path):
            return self.answer(400, {"code": -1130, "msg": f"limit {limit} is not valid"}, weight)
        start, end = int(query.get("startTime", 0)), int(query.get("endTime", server.now_ms))
        if "aggTrades" in url.path and "fromId" not in query and end - start > 3_600_000:
            return self.answer(400, {"code": -1127, "msg": "More than 1 hours between startTime and endTime."}, weight)
        if url.path.startswith("/futures/data/") and start < server.now_ms - 30 * 86_400_000:
            return self.answer(400, {"code": -1130, "msg": "startTime is older than 30 days"}, weight)
        if url.path == "/fapi/v1/time":
            return self.answer(200, {"serverTime": server.now_ms}, weight)
        if url.path == "/fapi/v1/fundingInfo":
            return self.answer(200, [], weight)   # BTCUSDT's interval was never changed: 8 h
        rows, time_key = server.rows(url.path)
        if "fromId" in query:
            rows = [r for r in rows if r["a"] >= int(query["fromId"])]
        else:
            rows = [r for r in rows if start <= int(r[time_key]) <= end]
        self.answer(200, rows[:limit], weight)

    def answer(self, status: int, body, weight: int, headers: dict | None = None):
        server = self.server
        with server.lock:
            window = int(time.time() // rest.WEIGHT_WINDOW_S)
            server.used = (server.used if server.window == window else 0) + server.extra_weight + weight
            server.window, server.extra_weight = window, 0
            server.max_used = max(server.max_used, server.used)
            used = server.used
        data = json.dumps(body).encode()
        self.send_response(status)
        for name, value in {"Content-Type": "application/json", "X-MBX-USED-WEIGHT-1M": str(used),
                            "Content-Length": str(len(data)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


class BinanceServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), BinanceHandler)
        self.lock, self.now_ms, self.retry_after = threading.Lock(), NOW_MS, "1"
        self.requests: list[tuple[str, dict]] = []
        self.faults: dict[str, list[str | None]] = {}
        self.used, self.window, self.extra_weight, self.max_used = 0, -1, 0, 0
        kline = lambda r: [int(r[0]), *r[1:6], int(r[6]), r[7], int(r[8]), *r[9:12]]
        metrics = [(utc_ms(r[0]), r) for r in vision_rows(root, "metrics")]
        self.data = {
            "/fapi/v1/klines": ([kline(r) for r in vision_rows(root, "klines")], 0),
            "/fapi/v1/markPriceKlines": ([kline(r) for r in vision_rows(root, "markPriceKlines")], 0),
            "/fapi/v1/aggTrades": ([{"a": int(r[0]), "p": r[1], "q": r[2], "f": int(r[3]), "l": int(r[4]), "T": int(r[5]),
                                     "m": r[6] == "true"} for r in vision_rows(root, "aggTrades")], "T"),
            "/fapi/v1/fundingRate": ([{"symbol": "BTCUSDT", "fundingTime": int(r[0]), "fundingRate": r[2],
                                       "markPrice": "60000.00000000"} for r in vision_rows(root, "fundingRate")],
                                     "fundingTime"),
            "/futures/data/openInterestHist": ([{"symbol": "BTCUSDT", "sumOpenInterest": r[2],
                                                 "sumOpenInterestValue": r[3], "timestamp": ts} for ts, r in metrics],
                                               "timestamp"),
            **{path: ([{"symbol": "BTCUSDT", field: r[column], "timestamp": ts} for ts, r in metrics], "timestamp")
               for path, (column, field) in RATIOS.items()}}

    def rows(self, path: str) -> tuple[list, str | int]:
        """The rows known at the server's clock: a bar once open, the rest once their time has come."""
        rows, key = self.data[path]
        return [r for r in rows if int(r[key]) <= self.now_ms], key

    def asked(self, path: str) -> list[dict]:
        return [query for p, query in self.requests if p == path]


@pytest.fixture
def binance(demo_dir, monkeypatch):
    # pages of six hours: 4 of klines, several of trades and metrics, one per funding rate
    monkeypatch.setattr(rest, "PAGE_LIMITS", {"klines": 100, "aggTrades": 200, "fundingRate": 1, "metrics": 20})
    monkeypatch.setattr(rest, "FETCH_TIMEOUT_S", 5)
    server = BinanceServer(demo_dir)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def fetch_today(server: BinanceServer, out: Path, *extra: str) -> int:
    return build.main(["fetch", "--today", "--symbol", "BTCUSDT", "--data", str(out), "--rest-url",
                       f"http://127.0.0.1:{server.server_port}", "--retry-delay", "0.01", "--retries", "3", *extra])


def lines(out: Path, kind: str) -> list[str]:
    return (out / PARTIALS[kind]).read_text().splitlines()


def test_today_arrives_once_page_by_page_with_429_and_5xx_retried(binance, demo_dir, tmp_path, capsys):
    binance.faults = {"/fapi/v1/klines": ["429"], "/fapi/v1/aggTrades": [None, "503"]}
    assert fetch_today(binance, tmp_path) == 0
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file()) == sorted(PARTIALS.values())
    for kind in PARTIALS:   # every row up to the server's clock, each once, in order, as Binance's file has it
        header, *rows = lines(tmp_path, kind)
        assert header == read_zip_lines(demo_dir / PARTIALS[kind].replace(".partial.csv", ".zip"))[0]
        assert rows == expected(demo_dir, kind, NOW_MS), kind
    assert len(lines(tmp_path, "klines")) - 1 == 360 and lines(tmp_path, "metrics")[-1].startswith(f"{DAY} 06:00:00")
    # funding: the month so far, the first rate's interval from fundingInfo, the others from the rates' times
    assert [line.split(",")[1] for line in lines(tmp_path, "fundingRate")[1:]] == ["8"] * 4
    klines = binance.asked("/fapi/v1/klines")
    assert klines[0] == klines[1] and len(klines) == 1 + 4   # the 429 retried after its Retry-After, then 4 pages
    trades = binance.asked("/fapi/v1/aggTrades")
    assert trades[1] == trades[2] and len(trades) > 4   # the 503 retried; the trades came in pages, by id
    assert all(int(q["limit"]) <= 200 for q in trades) and binance.max_used < rest.WEIGHT_LIMIT
    assert "HTTP 429" in capsys.readouterr().err


def test_a_second_run_adds_only_the_new_rows(binance, demo_dir, tmp_path):
    assert fetch_today(binance, tmp_path) == 0
    before = {kind: lines(tmp_path, kind)[-1].split(",") for kind in PARTIALS}
    binance.requests.clear()
    binance.now_ms = LATER_MS
    assert fetch_today(binance, tmp_path) == 0
    for kind in PARTIALS:
        assert lines(tmp_path, kind)[1:] == expected(demo_dir, kind, LATER_MS), kind
    # each series asked from just past the row it had: by time, or trades by the id after the last one
    first = lambda path: binance.asked(path)[0]
    assert int(first("/fapi/v1/klines")["startTime"]) == int(before["klines"][0]) + 1
    assert int(first("/fapi/v1/fundingRate")["startTime"]) == int(before["fundingRate"][0]) + 1
    assert int(first("/futures/data/openInterestHist")["startTime"]) == NOW_MS - 30_000 + 1
    assert [q.get("fromId") for q in binance.asked("/fapi/v1/aggTrades")][:1] == [str(int(before["aggTrades"][0]) + 1)]
    assert all("startTime" not in q for q in binance.asked("/fapi/v1/aggTrades"))


def test_partial_files_build_and_are_reported_partial(binance, tmp_path):
    data = tmp_path / "raw"
    assert fetch_today(binance, data) == 0
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(data), "--db", str(db))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as con:
        partial = con.execute("SELECT data_type, file, severity, detail FROM data_quality_problems "
                              "WHERE problem = 'partial_day' ORDER BY data_type").fetchall()
        bars = con.execute("SELECT count(*), max(ts) FROM price_klines").fetchone()
    assert [(kind, file) for kind, file, _, _ in partial] == sorted(PARTIALS.items())
    assert {severity for _, _, severity, _ in partial} == {"info"}
    assert f"BTCUSDT klines {DAY} so far, from Binance's REST API up to {DAY} 05:59:00" in {
        kind: detail for kind, _, _, detail in partial}["klines"]
    assert bars[0] == 360 and bars[1].startswith(f"{DAY}T05:59")


def test_binance_file_replaces_the_partial_one(binance, demo_dir, tmp_path):
    assert fetch_today(binance, tmp_path) == 0
    # Binance's daily klines file appears beside the partial one: discovery reads it, and not the partial one
    zipped = PARTIALS["klines"].replace(".partial.csv", ".zip")
    for name in (zipped, zipped + ".CHECKSUM"):
        shutil.copy(demo_dir / name, tmp_path / name)
    found = {info.name: info for info in files.discover(tmp_path, [], None, None)}
    assert found[zipped].status is None and found[PARTIALS["klines"]].status == "skipped"
    assert found[PARTIALS["klines"]].problem == "partial_replaced"
    assert found[PARTIALS["aggTrades"]].status is None   # the other types' days are still the partial ones
    # `fetch` of Binance's files removes the partial file of each file it gets (or already has)
    mirror = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(demo_dir)))
    threading.Thread(target=mirror.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        assert build.main(["fetch", "--symbol", "BTCUSDT", "--start", DAY, "--end", DAY, "--data", str(tmp_path),
                           "--types", "klines,aggTrades", "--base-url", f"http://127.0.0.1:{mirror.server_port}"]) == 0
    finally:
        mirror.shutdown()
        mirror.server_close()
    assert not (tmp_path / PARTIALS["klines"]).exists() and not (tmp_path / PARTIALS["aggTrades"]).exists()
    assert (tmp_path / PARTIALS["metrics"]).exists()
    # and `fetch --today` no longer asks for a day whose file Binance's is there
    binance.requests.clear()
    assert fetch_today(binance, tmp_path, "--types", "klines,metrics") == 0
    assert not binance.asked("/fapi/v1/klines") and binance.asked("/futures/data/openInterestHist")


def test_a_ban_stops_with_the_url_and_the_weight_is_kept_under_the_budget(binance, tmp_path, monkeypatch, capsys):
    binance.faults = {"/fapi/v1/klines": ["418"]}
    binance.retry_after = "7200"   # banned for two hours: no use waiting
    began = time.perf_counter()
    assert fetch_today(binance, tmp_path, "--types", "klines") == 2
    err = capsys.readouterr().err
    assert f"http://127.0.0.1:{binance.server_port}/fapi/v1/klines?symbol=BTCUSDT" in err and "HTTP 418" in err
    assert "Retry-After 7200 s" in err and time.perf_counter() - began < 5
    # another program on the address has used 2300 of this minute's weight: the next request waits for the next one
    monkeypatch.setattr(rest, "WEIGHT_WINDOW_S", 1.0)
    client = rest.RestClient(f"http://127.0.0.1:{binance.server_port}", 3, 0.01)
    binance.extra_weight = 2300
    client.get("/fapi/v1/time")
    window = int(time.time())
    client.get("/fapi/v1/klines", 10, symbol="BTCUSDT", interval="1m", startTime=DAY_MS, endTime=NOW_MS, limit=100)
    assert int(time.time()) > window and "2301 of Binance's 2400 request weight used" in capsys.readouterr().err


def test_wrong_arguments_and_a_server_that_is_not_there_fail_naming_them(tmp_path, capsys):
    out = ["--symbol", "BTCUSDT", "--data", str(tmp_path)]
    assert build.main(["fetch", *out]) == 2 and "--start and --end are needed (or --today" in capsys.readouterr().err
    assert build.main(["fetch", "--today", "--end", DAY, *out]) == 2 and "--end does not go with --today" in (
        capsys.readouterr().err)
    assert build.main(["fetch", "--today", *out, "--rest-url", "http://127.0.0.1:9", "--retries", "2",
                       "--retry-delay", "0.01"]) == 2
    assert "http://127.0.0.1:9/fapi/v1/time" in capsys.readouterr().err and not list(tmp_path.iterdir())
