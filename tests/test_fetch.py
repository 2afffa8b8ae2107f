"""build.py fetch: Binance files from a mirror (a real HTTP server on 127.0.0.1) into the Vision layout.

The mirror is the simulator's output: 3 days from 2024-09-01. Fetching 2024-09-01 .. 2024-09-04 asks
for 4 days of the 4 daily types and one fundingRate month: 17 files, of which day 4's are missing.
"""

import datetime as dt
import http.server
import shutil
import sqlite3
import threading
from pathlib import Path

import pytest
from conftest import run_build, simulated

import build
from liquidation_heatmap import archives, files
from liquidation_heatmap import fetch as fetching

START, END = "2024-09-01", "2024-09-04"
REQUESTED, PRESENT = 17, 13
DAILY = "data/futures/um/daily"
METRICS_DAY2 = f"{DAILY}/metrics/BTCUSDT/BTCUSDT-metrics-2024-09-02.zip"
AGGTRADES_DAY1 = f"{DAILY}/aggTrades/BTCUSDT/BTCUSDT-aggTrades-2024-09-01.zip"
FUNDING = "data/futures/um/monthly/fundingRate/BTCUSDT/BTCUSDT-fundingRate-2024-09.zip"
FETCHED_TYPES = ("metrics", "fundingRate", "klines", "markPriceKlines", "aggTrades")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mirror")
    return simulated(root, days=3, seed=5, trades_per_day=1000)


class MirrorHandler(http.server.BaseHTTPRequestHandler):
    """GET of a file under the server's root, with Range, and the fault queued for that path if any."""

    def do_GET(self):
        server, path, wanted = self.server, self.path.lstrip("/"), self.headers.get("Range")
        with server.lock:
            server.requests.append((path, wanted))
            queue = server.faults.get(path)
            fault = queue.pop(0) if queue else None
        if fault == "503":
            return self.send_error(503)
        file = server.root / path
        if not file.is_file():
            return self.send_error(404)
        body = file.read_bytes()
        start = int(wanted.removeprefix("bytes=").rstrip("-")) if wanted and server.honour_range else 0
        if start >= len(body) > 0:
            return self.send_error(416)
        self.send_response(206 if start else 200)
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        # "cut": promise the whole body, send half of the file, hang up (HTTP/1.0 closes after the response)
        self.wfile.write(body[start:len(body) // 2] if fault == "cut" else body[start:])

    def log_message(self, *args):
        pass


class Mirror(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path, honour_range: bool = True):
        super().__init__(("127.0.0.1", 0), MirrorHandler)
        self.root, self.honour_range, self.lock = root, honour_range, threading.Lock()
        self.requests: list[tuple[str, str | None]] = []  # (path, Range header) of every GET
        self.faults: dict[str, list[str]] = {}  # path -> "503" / "cut", one used per request

    def count(self, path: str) -> int:
        return sum(p == path for p, _ in self.requests)


@pytest.fixture
def serve(mirror, monkeypatch):
    monkeypatch.setattr(fetching, "FETCH_TIMEOUT_S", 5)  # a hung test fails in seconds, not minutes
    servers = []

    def start(root: Path = mirror, honour_range: bool = True) -> Mirror:
        server = Mirror(root, honour_range)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def fetch(server: Mirror, out: Path, *extra: str) -> int:
    return build.main(["fetch", "--symbol", "BTCUSDT", "--start", START, "--end", END, "--data", str(out),
                       "--base-url", f"http://127.0.0.1:{server.server_port}/", "--retry-delay", "0.01",
                       "--retries", "3", *extra])


def fetchable(root: Path) -> list[Path]:
    """The mirror's zips of the fetched types, relative to root."""
    return sorted(p.relative_to(root) for p in root.rglob("*.zip") if p.parts[-3] in FETCHED_TYPES
                  or p.parts[-4] in FETCHED_TYPES)


def test_fetch_writes_the_vision_layout_and_reports_missing_days(serve, mirror, tmp_path, capsys):
    server = serve()
    assert fetch(server, tmp_path) == 0
    err = capsys.readouterr().err
    wanted = fetchable(mirror)
    assert len(wanted) == PRESENT
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.zip")) == wanted
    for rel in wanted:
        assert (tmp_path / rel).read_bytes() == (mirror / rel).read_bytes()
        checksum = Path(f"{tmp_path / rel}.CHECKSUM")
        assert checksum.read_text() == Path(f"{mirror / rel}.CHECKSUM").read_text()
    assert not list(tmp_path.rglob("*.part")) and not list(tmp_path.rglob("*.bad"))
    # progress (files done/total, bytes, rate) and the summary
    assert f"{REQUESTED}/{REQUESTED} files" in err and "MB/s" in err
    assert (f"summary: {PRESENT} fetched, 0 skipped (already there), 4 missing (404), 0 bad (checksum), "
            "0 failed") in err
    assert "missing (Binance has no such file): daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-09-04.zip" in err
    # a 404 is asked once, not retried
    assert server.count(f"{DAILY}/metrics/BTCUSDT/BTCUSDT-metrics-2024-09-04.zip") == 1
    assert "error:" not in err


def test_files_already_there_are_skipped_and_unverified_ones_fetched_again(serve, tmp_path, capsys):
    assert fetch(serve(), tmp_path) == 0
    again = serve()
    assert fetch(again, tmp_path) == 0
    # only the 4 missing days are asked again: nothing already verified is downloaded twice
    assert sorted(path for path, _ in again.requests) == sorted(
        f"{DAILY}/{kind}/BTCUSDT/{sub}BTCUSDT-{tag}-2024-09-04.zip" for kind, sub, tag in (
            ("metrics", "", "metrics"), ("aggTrades", "", "aggTrades"), ("klines", "1m/", "1m"),
            ("markPriceKlines", "1m/", "1m")))
    assert "0 fetched, 13 skipped (already there), 4 missing (404)" in capsys.readouterr().err
    # a local copy that no longer matches its CHECKSUM is not skipped
    local = tmp_path / METRICS_DAY2
    local.write_bytes(local.read_bytes()[:-10])
    third = serve()
    assert fetch(third, tmp_path, "--types", "metrics") == 0
    assert third.count(METRICS_DAY2) == 1 and archives.checksum_status(local) == "ok"
    assert "1 fetched, 2 skipped (already there), 1 missing (404)" in capsys.readouterr().err


def test_a_bad_checksum_is_retried_once_kept_aside_and_not_built(serve, mirror, tmp_path, capsys):
    bad_mirror = shutil.copytree(mirror, tmp_path / "mirror")
    Path(f"{bad_mirror / METRICS_DAY2}.CHECKSUM").write_text("0" * 64 + "  BTCUSDT-metrics-2024-09-02.zip\n")
    server, out = serve(bad_mirror), tmp_path / "raw"
    (out / METRICS_DAY2).parent.mkdir(parents=True)
    (out / METRICS_DAY2).write_bytes(b"an older copy, never verified")  # must not stay where build reads
    assert fetch(server, out) == 2
    err = capsys.readouterr().err
    assert server.count(METRICS_DAY2) == 2  # downloaded, failed its checksum, downloaded once more
    assert "1 bad (checksum)" in err
    assert (f"error: 1 of {REQUESTED} files not fetched: daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-09-02.zip "
            "(sha256 differs from its CHECKSUM twice") in err
    assert not (out / METRICS_DAY2).exists()
    assert Path(f"{out / METRICS_DAY2}.bad").read_bytes() == (mirror / METRICS_DAY2).read_bytes()
    # build reads the fetched folder as it is and ingests exactly the good files
    db = tmp_path / "liquidations.db"
    result = run_build("--data", str(out), "--db", str(db))
    assert result.returncode == 0, result.stderr
    with sqlite3.connect(db) as con:
        files = con.execute("SELECT file, status, checksum FROM source_files ORDER BY file").fetchall()
    good = sorted(str(p) for p in fetchable(mirror) if str(p) != METRICS_DAY2)
    assert files == [(name, "loaded", "ok") for name in good]


def test_a_server_error_is_retried_with_backoff(serve, tmp_path, capsys):
    server = serve()
    server.faults = {METRICS_DAY2: ["503"], f"{FUNDING}.CHECKSUM": ["503", "503"]}
    assert fetch(server, tmp_path) == 0
    assert server.count(METRICS_DAY2) == 2 and server.count(f"{FUNDING}.CHECKSUM") == 3
    assert archives.checksum_status(tmp_path / METRICS_DAY2) == archives.checksum_status(tmp_path / FUNDING) == "ok"
    assert f"{PRESENT} fetched" in capsys.readouterr().err


def test_a_server_error_that_persists_fails_the_run_naming_the_file(serve, tmp_path, capsys):
    server = serve()
    server.faults = {METRICS_DAY2: ["503"] * 3}
    assert fetch(server, tmp_path, "--types", "metrics") == 2
    err = capsys.readouterr().err
    assert server.count(METRICS_DAY2) == 3  # --retries 3
    assert "1 failed" in err
    assert "error: 1 of 4 files not fetched: daily/metrics/BTCUSDT/BTCUSDT-metrics-2024-09-02.zip (HTTP 503)" in err
    assert not (tmp_path / METRICS_DAY2).exists()


@pytest.mark.parametrize("honour_range", [True, False], ids=["resumed", "server-ignores-range"])
def test_a_connection_cut_mid_file_is_resumed(serve, mirror, tmp_path, honour_range, capsys):
    server = serve(honour_range=honour_range)
    server.faults = {AGGTRADES_DAY1: ["cut"]}
    assert fetch(server, tmp_path, "--types", "aggTrades") == 0
    size = (mirror / AGGTRADES_DAY1).stat().st_size
    asked = [wanted for path, wanted in server.requests if path == AGGTRADES_DAY1]
    assert asked == [None, f"bytes={size // 2}-"]  # the second request continues where the first stopped
    assert (tmp_path / AGGTRADES_DAY1).read_bytes() == (mirror / AGGTRADES_DAY1).read_bytes()
    assert not list(tmp_path.rglob("*.part"))
    assert "3 fetched" in capsys.readouterr().err


def test_fetch_paths_follow_the_vision_layout():
    paths = fetching.fetch_paths(["ETHUSDT"], ["fundingRate", "markPriceKlines"], "5m",
                              dt.date(2024, 9, 30), dt.date(2024, 10, 1))
    assert paths == ["data/futures/um/monthly/fundingRate/ETHUSDT/ETHUSDT-fundingRate-2024-09.zip",
                     "data/futures/um/monthly/fundingRate/ETHUSDT/ETHUSDT-fundingRate-2024-10.zip",
                     "data/futures/um/daily/markPriceKlines/ETHUSDT/5m/ETHUSDT-5m-2024-09-30.zip",
                     "data/futures/um/daily/markPriceKlines/ETHUSDT/5m/ETHUSDT-5m-2024-10-01.zip"]
    assert all(files.parse_file_name(Path(p)) for p in paths)  # build discovers what fetch writes


@pytest.mark.parametrize("args, message", [
    (["--end", "2024-08-31"], "error: --end 2024-08-31 is before --start 2024-09-01"),
    (["--types", "metrics,bookDepth"], "unknown type (bookDepth)"),
    (["--symbol", "BTC-USDT"], "error: --symbol BTC-USDT: expected a Binance symbol"),
    (["--interval", "1x"], "error: --interval 1x"),
    (["--jobs", "0"], "error: --jobs and --retries must be at least 1"),
    (["--base-url", "ftp://example"], "error: --base-url ftp://example"),
])
def test_bad_arguments_are_clear_errors(args, message, tmp_path, capsys):
    argv = ["fetch", "--symbol", "BTCUSDT", "--start", START, "--end", END, "--data", str(tmp_path),
            "--base-url", "http://127.0.0.1:9/", *args]  # never the internet, even if a check were missing
    assert build.main(argv) == 2
    assert message in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing written, nothing asked
