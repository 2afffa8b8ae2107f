"""build.py follow: each cycle fetches Binance's published files of the last days and today so far from its REST API
(real HTTP servers on loopback: test_fetch's mirror of data.binance.vision, test_rest's REST API), builds
incrementally, and a running server (a real `build.py serve` process) takes up each new build while a reader asks
it: every answer is the old build's or the new one's, never an error."""

import json
import re
import shutil
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import start_server
from test_fetch import Mirror
from test_rest import LATER_MS, BinanceServer

import build

PUBLISHED = "2024-09-01"   # the day before the REST server's today (2024-09-02): on the mirror already


@pytest.fixture
def vision(demo_dir, tmp_path):
    """data.binance.vision as it stands on 2024-09-02: the daily files of 2024-09-01 (the month's funding comes
    when the month ends)."""
    root = tmp_path / "vision"
    for path in demo_dir.rglob(f"*-{PUBLISHED}.zip*"):
        target = root / path.relative_to(demo_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, target)
    server = Mirror(root)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def binance(demo_dir):
    """Binance's REST API on 2024-09-02 at 06:00:30 (test_rest's server)."""
    server = BinanceServer(demo_dir)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def follow_once(vision: Mirror, binance: BinanceServer, data: Path, db: Path) -> int:
    return build.main(["follow", "--symbol", "BTCUSDT", "--data", str(data), "--db", str(db), "--days-back", "1",
                       "--cycles", "1", "--base-url", f"http://127.0.0.1:{vision.server_port}",
                       "--rest-url", f"http://127.0.0.1:{binance.server_port}", "--retry-delay", "0.01"])


def latest_bar(url: str) -> str:
    with urllib.request.urlopen(f"{url}/liquidations/price_klines.json?_sort_desc=ts&_size=1&_shape=array",
                                timeout=10) as response:
        return json.load(response)[0]["ts"]


def test_a_follow_cycle_adds_the_new_minutes_and_a_running_server_shows_them(vision, binance, tmp_path, capsys):
    data, db = tmp_path / "data", tmp_path / "out" / "liquidations.db"
    assert follow_once(vision, binance, data, db) == 0
    first = capsys.readouterr().err
    assert "a full build" in first and "follow: cycle 1 done" in first
    # Binance's file of the published day, the REST API's partial files of today
    assert (data / f"data/futures/um/daily/klines/BTCUSDT/1m/BTCUSDT-1m-{PUBLISHED}.zip").exists()
    assert sorted(p.name for p in data.rglob("*.partial.csv")) == [
        "BTCUSDT-1m-2024-09-02.partial.csv", "BTCUSDT-1m-2024-09-02.partial.csv", "BTCUSDT-aggTrades-2024-09-02.partial.csv",
        "BTCUSDT-fundingRate-2024-09.partial.csv", "BTCUSDT-metrics-2024-09-02.partial.csv"]

    process, url = start_server(db)
    try:
        before = latest_bar(url)
        assert before == "2024-09-02T05:59:00Z"   # the last bar closed by 06:00:30, the REST server's clock
        answers, stop = [], threading.Event()

        def read() -> None:   # a reader asking all along the next cycle and the swap
            while not stop.is_set():
                try:
                    answers.append(latest_bar(url))
                except OSError as error:   # (urllib's HTTPError and connection errors alike)
                    answers.append(f"error: {error}")
        reader = threading.Thread(target=read)
        reader.start()
        binance.now_ms = LATER_MS   # six hours later
        try:
            assert follow_once(vision, binance, data, db) == 0
            second = capsys.readouterr().err
            assert re.search(r"incremental: the previous build's results before 2024-09-02", second), second[-2000:]
            deadline = time.monotonic() + 30
            while latest_bar(url) == before and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            stop.set()
            reader.join()
    finally:
        process.terminate()
        process.wait(timeout=10)
    after = "2024-09-02T11:59:00Z"
    assert set(answers) <= {before, after} and answers[0] == before and answers[-1] == after, set(answers)


def test_a_failed_cycle_keeps_the_database_and_the_next_one_goes_on(vision, binance, tmp_path, capsys):
    data, db = tmp_path / "data", tmp_path / "liquidations.db"
    binance.faults = {"/fapi/v1/time": ["418"]}
    binance.retry_after = "7200"   # banned for two hours: the cycle stops at once, and says so
    assert follow_once(vision, binance, data, db) == 2   # (its last cycle failed: a cron job sees it)
    assert "follow: cycle 1 failed" in capsys.readouterr().err and not db.exists()
    assert follow_once(vision, binance, data, db) == 0 and db.exists()
